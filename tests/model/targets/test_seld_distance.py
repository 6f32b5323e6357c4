"""The SELD target with distance (`seld-distance`, DCASE 2024): multi-ACCDOA plus a distance
per track and class, ADPIT over both, decoding to rows with distance, the seldnet output,
and the relative distance error (DCASE 2024's, bast.dcase.dcase2024)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bast.dcase import dcase2024
from bast.errors import ConfigError, DataError
from bast.model.evaluation.seld import as_dcase, metrics_of
from bast.model.nets.seldnet import SELDNET_PRESETS, SELDnet, SELDnetConfig
from bast.model.targets.adpit import adpit_loss, decode, duplicate, encode
from bast.model.targets.core import TargetSettings, make_target
from bast.sphere import great_circle_deg

# The rows of test_seld_target.py with a distance (metres) each: frame 1 holds two events
# of class 0, frame 2 three of class 1.
ROWS = np.array([[0, 0, 0, 30, 0, 1.5], [1, 0, 0, 90, 10, 2.0], [1, 0, 1, -60, -20, 0.8], [1, 1, 0, 180, 45, 3.1],
                 [2, 1, 0, 10, 0, 1.2], [2, 1, 1, 130, 5, 2.7], [2, 1, 2, 250, -30, 4.0], [2, 0, 0, 300, 60, 0.5]])
L, T, C = 4, 3, 2
# MSELoss_ADPIT of the DCASE 2024 baseline (partha2409/DCASE2024_seld_baseline at 0b07887,
# seldnet_model.py) on OUTPUT below, laid out as its (1, 4, track * axis * class) output with
# axes x, y, z, distance, against the target its cls_feature_class.FeatureClass
# .get_adpit_labels_for_file makes of ROWS (distance given in cm, as its metadata holds it;
# unit vectors in float64); computed in float64 outside this repository.
REFERENCE_LOSS = 1.072568514299949
OUTPUT = (torch.sin(torch.arange(L * T * C * 4, dtype=torch.float64) * 0.37) * 0.8 + 0.5).reshape(1, L, T, C, 4)


def _same_rows(a, b, tol_deg=1e-4, tol_m=1e-6):
    """Rows equal as sets of (frame, class, direction, distance), the track number aside."""
    assert len(a) == len(b) and a.shape[1] == b.shape[1] == 6
    unused = list(range(len(b)))
    for x in a:
        match = [j for j in unused if b[j][0] == x[0] and b[j][1] == x[1]
                 and great_circle_deg(x[3], x[4], b[j][3], b[j][4]) < tol_deg and abs(b[j][5] - x[5]) < tol_m]
        assert match, f"no row like {x}"
        unused.remove(match[0])


def test_encode_puts_each_events_distance_beside_its_unit_vector():
    t = encode(ROWS, L, C, distance=True)
    assert t.shape == (L, T, C, 4) and t.dtype == torch.float32
    np.testing.assert_array_equal(t[..., :3], encode(ROWS[:, :5], L, C))  # the directions as without distance
    on = t[..., :3].norm(dim=-1) > 0.5
    assert on.sum() == len(ROWS)
    # each active track holds its row's distance, every silent one 0 (the baseline's act * dist)
    assert t[1, 0, 0, 3] == pytest.approx(2.0) and t[1, 1, 0, 3] == pytest.approx(0.8)
    assert t[2, :, 1, 3].tolist() == pytest.approx([1.2, 2.7, 4.0])
    assert torch.all(t[..., 3][~on] == 0)


def test_encode_with_distance_refuses_rows_without_one():
    with pytest.raises(ConfigError, match="distance"):
        encode(ROWS[:, :5], L, C, distance=True)
    no_distance = ROWS.copy()
    no_distance[3, 5] = np.nan  # a DCASE 2023 file read by from_dcase_rows
    with pytest.raises(DataError, match="distance"):
        encode(no_distance, L, C, distance=True)


def test_adpit_loss_with_distance_equals_the_2024_baselines_mseloss_adpit():
    got = adpit_loss(OUTPUT, encode(ROWS, L, C, distance=True).double()[None]).item()
    assert got == pytest.approx(REFERENCE_LOSS, abs=1e-7)  # the target is float32 here


def test_adpit_permutes_direction_and_distance_together():
    target = encode(ROWS, L, C, distance=True).double()[None]
    ideal = duplicate(target)
    assert adpit_loss(ideal, target).item() == 0.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # whole tracks (direction and distance) of one class swapped: free
        shuffled = ideal.clone()
        for frame in range(L):
            for cls in range(C):
                shuffled[0, frame, :, cls] = ideal[0, frame, torch.randperm(T, generator=g), cls]
        assert adpit_loss(shuffled, target).item() == 0.0
    # frame 1, class 0: events at 90 deg, 2.0 m and -60 deg, 0.8 m; their distances swapped
    # between the tracks while the directions stay: each track's distance is 1.2 m off, and
    # no permutation of whole tracks undoes that
    swapped = ideal.clone()
    swapped[0, 1, :, 0, 3] = torch.where(ideal[0, 1, :, 0, 3] == 2.0, 0.8, 2.0).double()
    dist_error = 1.2 ** 2 * T / (T * 4) / (L * C)  # in that one frame and class, over the mean
    assert adpit_loss(swapped, target).item() == pytest.approx(dist_error, rel=1e-5)
    # a distance wrong by 1 m on one silent track costs too: silence is distance 0
    loud = ideal.clone()
    loud[0, 3, 0, 0, 3] = 1.0
    assert adpit_loss(loud, target).item() == pytest.approx(1.0 / (T * 4) / (L * C))


def test_decoded_rows_round_trip_with_distance():
    target = encode(ROWS, L, C, distance=True)
    _same_rows(decode(target), ROWS)
    _same_rows(decode(duplicate(target[None])[0]), ROWS)
    assert decode(target[..., :3]).shape == (len(ROWS), 5)  # without distance: 5 columns, as before
    assert decode(torch.zeros(3, T, C, 4)).shape == (0, 6)
    # in the DCASE rows of the files, the distance is whole cm
    cm = as_dcase(decode(target))
    assert cm.shape == (len(ROWS), 6) and sorted(cm[:, 5]) == sorted(np.rint(ROWS[:, 5] * 100))


def test_decode_merges_distances_of_merged_tracks_and_never_gives_a_negative_one():
    out = np.zeros((1, T, 1, 4))
    out[0, 0, 0] = [1.0, 0.0, 0.0, 2.0]
    out[0, 1, 0] = [np.cos(np.radians(10)), np.sin(np.radians(10)), 0.0, 3.0]  # 10 deg away: merged
    out[0, 2, 0] = [0.0, 1.0, 0.0, -0.5]  # 90 deg away: its own event, at distance 0
    rows = decode(out)
    assert len(rows) == 2
    assert rows[0, 3] == pytest.approx(5.0) and rows[0, 5] == pytest.approx(2.5)
    assert rows[1, 3] == pytest.approx(90.0) and rows[1, 5] == 0.0


def test_the_distance_target_sizes_every_model_output():
    seld = make_target("seld", TargetSettings(classes=("a", "b", "c")))
    target = make_target("seld-distance", TargetSettings(classes=("a", "b", "c")))
    assert target.scenes and target.distance and not seld.distance
    assert target.label_shape == (5, 3, 3, 4) and target.outputs == 180 and seld.outputs == 135
    assert target.model_settings({"outputs", "out_tokens", "n_time"}) == {"outputs": 180, "out_tokens": 5,
                                                                          "n_time": 61}
    assert target.model_settings({"classes", "tracks", "label_frames", "distance", "outputs"}) == {
        "classes": 3, "tracks": 3, "label_frames": 5, "distance": True}
    y = encode(ROWS, 5, 3, distance=True)[None].expand(2, -1, -1, -1, -1)
    assert float(target.loss(duplicate(y).flatten(1), y)) == 0.0


def test_seldnet_with_distance_outputs_one_more_value_per_track_and_class():
    cfg = dict(SELDNET_PRESETS["tiny"], classes=3, dropout=0.0)
    plain, with_distance = SELDnet(SELDnetConfig(**cfg)), SELDnet(SELDnetConfig(**cfg, distance=True))
    x = torch.randn(2, 2, 129, 61)
    out = with_distance.eval()(x)
    assert plain.eval()(x).shape == (2, 5, 3, 3, 3) and out.shape == (2, 5, 3, 3, 4)
    # the output layer grows by tracks x classes outputs: one weight per hidden unit and a bias each
    extra = sum(p.numel() for p in with_distance.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 3 * 3 * (SELDNET_PRESETS["tiny"]["fnn_size"] + 1)
    assert out[..., :3].abs().max() <= 1.0  # the direction under tanh
    with torch.no_grad():  # the distance is linear: it reaches any number of metres
        with_distance.fnn_list[-1].bias.view(3, 4, 3)[:, 3, :] = 7.0
    assert with_distance(x)[..., 3].mean() > 5.0


def test_the_loss_falls_when_seldnet_overfits_one_distance_target():
    torch.manual_seed(0)
    model = SELDnet(SELDnetConfig(**dict(SELDNET_PRESETS["tiny"], classes=2, dropout=0.0), distance=True))
    x = torch.randn(4, 2, 129, 61)
    rows = np.array([[f, 0, 0, 60.0, 0.0, 2.5] for f in range(5)] + [[f, 1, 0, -90.0, 20.0, 1.0] for f in range(2, 5)])
    target = encode(rows, 5, 2, distance=True).expand(4, -1, -1, -1, -1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = adpit_loss(model(x), target).item()
    for _ in range(40):
        opt.zero_grad()
        loss = adpit_loss(model(x), target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.02 * first
    got = decode(model.eval()(x)[0])
    assert len(got) == len(rows)  # every event found, nothing else
    # and each at its distance, to within 0.2 m of 2.5 and 1.0
    np.testing.assert_allclose(got[got[:, 1] == 0, 5], 2.5, atol=0.2)
    np.testing.assert_allclose(got[got[:, 1] == 1, 5], 1.0, atol=0.2)


def _rde(recordings, n_classes: int) -> tuple[float, np.ndarray]:
    """The relative distance error, overall and per class, of the scorer a seld-distance
    run is scored by (its evaluation's metrics_of: DCASE 2024, bast.dcase.dcase2024)."""
    results = {"names": [str(i) for i in range(len(recordings))], "envs": ["anechoic"] * len(recordings),
               "ref": [r for r, _ in recordings], "pred": [p for _, p in recordings], "loss_sum": 0.0, "windows": 1}
    m = metrics_of(results, [f"c{k}" for k in range(n_classes)], edition="2024")
    return m["rde"], np.array([c["RDE"] for c in m["classes"]])


def test_relative_distance_error_pairs_by_direction_and_averages_per_class():
    """DCASE 2024's RDE, by hand, as a seld-distance run's evaluation gives it: frame 0
    holds two class-0 events, predicted in the other order (the Hungarian pairing on angle
    finds them); class 1 is predicted once at 150 cm for 100 cm; class 2 is never predicted
    (no pair: NaN, left out of the mean)."""
    ref = np.array([[0, 0, 0, 90, 0, 200], [0, 0, 1, -90, 0, 400], [1, 1, 0, 0, 0, 100], [1, 2, 0, 45, 0, 300],
                    [2, 0, 0, 0, 0, 100]], dtype=float)
    pred = np.array([[0, 0, 0, -80, 0, 300], [0, 0, 1, 85, 0, 100], [1, 1, 0, 170, 0, 150]], dtype=float)
    overall, per_class = _rde([(ref, pred)], 3)
    # class 0: |100 - 200| / 200 and |300 - 400| / 400; class 1: |150 - 100| / 100 (any angle counts)
    assert per_class[0] == pytest.approx((0.5 + 0.25) / 2) and per_class[1] == pytest.approx(0.5)
    assert math.isnan(per_class[2]) and overall == pytest.approx((0.375 + 0.5) / 2)
    # the same as the edition's own scorer gives (seld-metrics --edition 2024 on the files)
    s = dcase2024.score_recordings([(ref, pred)], 3)
    assert s.relative_distance_error == overall
    np.testing.assert_array_equal(s.per_class["relative_distance_error"], per_class)
    # a perfect prediction: 0; no prediction at all: no pair, NaN (never a number pretending)
    assert _rde([(ref, ref)], 3)[0] == 0.0
    assert math.isnan(_rde([(ref, np.zeros((0, 6)))], 3)[0])
    # the reference's last frame (index 2, its largest) is not scored, as DCASE's tool counts frames
    late = np.array([[2, 0, 0, 0, 0, 900]], dtype=float)
    assert _rde([(ref, np.vstack([pred, late]))], 3)[0] == pytest.approx(overall)


def test_the_notes_of_a_run_name_the_2024_edition_s_undefined_errors_in_its_words():
    """names.py keeps the note of an undefined DOA or distance error as text (it stays
    light for the CLI); it must say what bast.dcase says."""
    from bast.dcase.frames import NO_PAIR_NOTE
    from bast.model.targets.names import METRIC_NOTES

    assert all(METRIC_NOTES[k] == NO_PAIR_NOTE for k in ("le_deg", "rde", "distance_error_m", "RDE"))
