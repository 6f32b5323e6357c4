"""The SELD target (bast.model.targets.adpit): multi-ACCDOA encoding, the ADPIT loss, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bast.errors import ConfigError
from bast.model.targets.adpit import adpit_loss, adpit_patterns, decode, duplicate, encode, n_label_frames
from bast.sphere import great_circle_deg

# Frame 0: one event of class 0; frame 1: two of class 0, one of class 1; frame 2: three
# of class 1 and one of class 0; frame 3: none. Azimuths counter-clockwise, any range.
ROWS = np.array([[0, 0, 0, 30, 0], [1, 0, 0, 90, 10], [1, 0, 1, -60, -20], [1, 1, 0, 180, 45],
                 [2, 1, 0, 10, 0], [2, 1, 1, 130, 5], [2, 1, 2, 250, -30], [2, 0, 0, 300, 60]], dtype=float)
L, T, C = 4, 3, 2
# MSELoss_ADPIT of the DCASE 2023 baseline (sharathadavanne/seld-dcase2023 at 24d14c9, seldnet_model.py)
# on OUTPUT below, laid out as its (1, 4, track * axis * class) output, against the target
# cls_feature_class.FeatureClass.get_adpit_labels_for_file made of ROWS (unit vectors in
# float64), computed in float64 outside this repository.
REFERENCE_LOSS = 0.4264456517913877
OUTPUT = (torch.sin(torch.arange(L * T * C * 3, dtype=torch.float64) * 0.37) * 0.8).reshape(1, L, T, C, 3)


def _same_rows(a, b, tol=1e-4):
    """Rows equal as sets of (frame, class, direction), the track number aside."""
    assert len(a) == len(b)
    unused = list(range(len(b)))
    for x in a:
        match = [j for j in unused if b[j][0] == x[0] and b[j][1] == x[1]
                 and great_circle_deg(x[3], x[4], b[j][3], b[j][4]) < tol]
        assert match, f"no row like {x}"
        unused.remove(match[0])


def test_label_frames_of_windows():
    assert n_label_frames(61) == 5 and n_label_frames(124) == 10 and n_label_frames(624) == 50
    with pytest.raises(ConfigError):
        n_label_frames(0)


def test_encode_puts_unit_vectors_in_tracks_in_row_order():
    t = encode(ROWS, L, C)
    assert t.shape == (L, T, C, 3) and t.dtype == torch.float32
    active = t.norm(dim=-1) > 0.5
    assert active.sum() == len(ROWS)
    np.testing.assert_allclose(t.norm(dim=-1)[active], 1.0, atol=1e-6)
    assert active[1, :, 0].tolist() == [True, True, False] and not active[3].any()
    np.testing.assert_allclose(t[1, 1, 0], [np.cos(np.radians(20)) * 0.5, -np.cos(np.radians(20)) * np.sqrt(3) / 2,
                                            -np.sin(np.radians(20))], atol=1e-6)


def test_encode_keeps_the_first_tracks_and_the_window_frames():
    rows = np.array([[0, 0, k, 40 * k, 0] for k in range(5)] + [[7, 0, 0, 0, 0], [-1, 0, 0, 0, 0]], dtype=float)
    t = encode(rows, 2, 1)
    assert (t.norm(dim=-1) > 0.5).sum() == 3
    _same_rows(decode(t), rows[:3])
    with pytest.raises(ConfigError, match="classes"):
        encode(ROWS, L, 1)


def test_adpit_loss_equals_the_baselines_mseloss_adpit():
    got = adpit_loss(OUTPUT, encode(ROWS, L, C).double()[None]).item()
    assert got == pytest.approx(REFERENCE_LOSS, abs=1e-7)  # the target is float32 here


def test_adpit_patterns_are_the_baselines_thirteen():
    patterns, ks = adpit_patterns(3)
    assert patterns.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0],
                                 [0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]
    assert ks.tolist() == [1] + [2] * 6 + [3] * 6
    assert len(adpit_patterns(4)[0]) == 1 + 14 + 36 + 24  # surjections onto 1..4 events


def test_the_exact_target_costs_nothing_under_any_same_class_track_permutation():
    target = encode(ROWS, L, C).double()[None]
    ideal = duplicate(target)
    assert adpit_loss(ideal, target).item() == 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        shuffled = ideal.clone()
        for frame in range(L):
            for cls in range(C):
                shuffled[0, frame, :, cls] = ideal[0, frame, torch.randperm(T, generator=g), cls]
        assert adpit_loss(shuffled, target).item() == 0.0
    # but not across classes, nor an event's direction changed, nor silence where one sounds
    wrong = ideal.clone()
    wrong[0, 1, :, [0, 1]] = ideal[0, 1, :, [1, 0]]
    assert adpit_loss(wrong, target).item() > 0.01
    moved = ideal.clone()
    moved[0, 0, :, 0] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert adpit_loss(moved, target).item() > 0.01
    assert adpit_loss(torch.zeros_like(target), target).item() > 0.01


def test_adpit_loss_has_gradients_and_checks_shapes():
    out = torch.zeros(2, L, T, C, 3, requires_grad=True)
    target = torch.stack([encode(ROWS, L, C), encode(ROWS[::-1], L, C)])
    loss = adpit_loss(out, target)
    loss.backward()
    assert loss.item() > 0 and out.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        adpit_loss(out[..., :2], target[..., :2])


def test_decoded_rows_round_trip_the_encoded_ones():
    target = encode(ROWS, L, C)
    _same_rows(decode(target), ROWS)
    _same_rows(decode(duplicate(target[None])[0]), ROWS)
    rows = decode(target, first_frame=100)
    assert rows[:, 0].min() == 100 and np.all((rows[:, 3] >= -180) & (rows[:, 3] < 180))


def test_decode_merges_close_same_class_tracks_and_reads_activity():
    def one_frame(*tracks):
        out = np.zeros((1, T, 1, 3))
        for k, (length, az) in enumerate(tracks):
            out[0, k, 0] = length * np.array([np.cos(np.radians(az)), np.sin(np.radians(az)), 0.0])
        return out

    merged = decode(one_frame((1.0, 0.0), (1.0, 10.0), (0.0, 0.0)))
    assert len(merged) == 1 and merged[0, 3] == pytest.approx(5.0)
    assert len(decode(one_frame((1.0, 0.0), (1.0, 20.0), (1.0, 100.0)))) == 3
    # 0-1 near and 1-2 near: all three are one event, as the baseline's two-flag case
    assert len(decode(one_frame((1.0, 0.0), (1.0, 12.0), (1.0, 24.0)))) == 1
    # a track of length 0.4 is silent
    rows = decode(one_frame((0.4, 0.0), (0.9, 90.0), (0.0, 0.0)))
    assert len(rows) == 1 and rows[0, 2] == 1 and rows[0, 3] == pytest.approx(90.0)
    assert decode(np.zeros((3, T, 2, 3))).shape == (0, 5)
