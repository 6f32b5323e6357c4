"""The SELD target: multi-ACCDOA with the ADPIT loss, as in the DCASE 2023 baseline (docs/seld.md).

Per 100 ms label frame, for each of T tracks and C classes, a 3-D vector (x, y, z) whose
direction is the event's and whose length is 1 when the event is active, 0 when not
(multi-ACCDOA, Shimada et al. 2022). Tensors are laid out (..., frames, T, C, 3).

With distance (`distance=True`; the `seld-distance` target), each track and class holds a
fourth value, the event's distance in metres (0 where no event sounds), as the DCASE 2024
baseline does it (partha2409/DCASE2024_seld_baseline, MIT): its labels hold the distance in
metres (cm / 100, cls_feature_class.py `get_adpit_labels_for_file`), multiplied by the
activity like x, y and z, and its `MSELoss_ADPIT` takes the mean squared error over all
four values of the three tracks alike (no separate weight: the distance is a quarter of
the per-track error, in m^2) and the permutation that minimises that joint error: ADPIT
over direction and distance together. Tensors are then (..., frames, T, C, 4).

- `encode(rows, n_frames, n_classes)`: label rows of a window -> the target tensor; the
  events of one class in one frame fill tracks 0, 1, ... in row order.
- `adpit_loss(output, target)`: the mean squared error under auxiliary duplicating
  permutation invariant training: per frame and class, the least error over every way of
  giving the k events of that class to the T tracks with each event used at least once
  (for T = 3: 1 + 6 + 6 = 13 targets, the baseline's `MSELoss_ADPIT`).
- `duplicate(target)`: the ideal output for a target, each event repeated over the
  tracks as ADPIT expects (loss 0).
- `decode(output)`: model output -> DCASE rows; a track is active when its (x, y, z) is
  longer than 0.5, and active tracks of one class closer than 15 degrees are merged into
  their mean, as the baseline's inference does (`determine_similar_location`,
  thresh_unify); with distance, the merged tracks' distances are averaged after negative
  ones are set to 0, as the 2024 baseline's `get_multi_accdoa_labels` and test_epoch do.

Rows are (n, 5+) arrays: frame, class, source/track, azimuth_deg, elevation_deg, and with
distance distance_m; the azimuth counter-clockwise from ahead in any range. The directions
follow bast.sphere.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch

from bast.conventions import LABEL_SAMPLES
from bast.errors import ConfigError, DataError
from bast.sphere import azimuth_elevation, unit_vector

N_TRACKS = 3  # as the DCASE 2022-2024 baselines: up to 3 simultaneous events of one class
DIRECTION = 3  # x, y, z: the values of a track that say whether and where it sounds
ACTIVITY_THRESHOLD = 0.5  # vector length above which a track counts as active
UNIFY_DEG = 15.0  # same-class tracks closer than this are one event (baseline: thresh_unify)
_HOP, _NPERSEG = 128, 256  # the spectrogram's (bast.pipeline.features.stft)


def n_label_frames(n_frames: int) -> int:
    """The 100 ms label frames that `n_frames` spectrogram frames span: 61 frames (500 ms)
    -> 5, 624 (5 s) -> 50."""
    if n_frames < 1:
        raise ConfigError(f"a window needs at least one frame, not {n_frames}")
    return max(1, round(((n_frames - 1) * _HOP + _NPERSEG) / LABEL_SAMPLES))


def encode(rows, n_frames: int, n_classes: int, *, n_tracks: int = N_TRACKS, distance: bool = False) -> torch.Tensor:
    """The multi-ACCDOA target (n_frames, n_tracks, n_classes, 3) float32 of label rows
    whose frames count from the window's first label frame; with `distance`, (..., 4):
    each event's unit vector and its distance in metres (the rows' sixth column). Rows
    outside [0, n_frames) are left out; past n_tracks events of one class in one frame,
    the first n_tracks are kept (as the baseline keeps three)."""
    if n_tracks < 1 or n_classes < 1:
        raise ConfigError(f"tracks and classes must be positive, not {n_tracks} and {n_classes}")
    width = 6 if distance else 5
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        rows = np.zeros((0, width))
    if rows.ndim != 2 or rows.shape[1] < width:
        raise ConfigError(f"label rows are (n, {width}+) arrays (frame, class, track, azimuth, elevation"
                          f"{', distance' if distance else ''}), not {rows.shape}")
    target = np.zeros((n_frames, n_tracks, n_classes, DIRECTION + distance), dtype=np.float32)
    filled = np.zeros((n_frames, n_classes), dtype=np.int64)
    if len(rows) and (rows[:, 1].min() < 0 or rows[:, 1].max() >= n_classes):
        raise ConfigError(f"label rows hold classes {int(rows[:, 1].min())}..{int(rows[:, 1].max())}, "
                          f"but there are {n_classes} classes")
    vectors = unit_vector(rows[:, 3], rows[:, 4]) if len(rows) else np.zeros((0, 3))
    if distance:
        if not np.all(np.isfinite(rows[:, 5]) & (rows[:, 5] >= 0)):
            raise DataError("label rows without a finite distance >= 0 (metres): a distance target needs scenes "
                            "whose labels hold each event's distance (bast-cli scenes)")
        vectors = np.concatenate([vectors, rows[:, 5:6]], axis=1)
    for (frame, cls), v in zip(rows[:, :2].astype(np.int64), vectors):
        if 0 <= frame < n_frames and filled[frame, cls] < n_tracks:
            target[frame, filled[frame, cls], cls] = v
            filled[frame, cls] += 1
    return torch.from_numpy(target)


@lru_cache(maxsize=None)
def adpit_patterns(n_tracks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every surjective assignment of tracks to k events, k = 1..n_tracks: (P, n_tracks)
    event indices and (P,) k. For 3 tracks the baseline's 13: A0A0A0; B0B0B1 ... B1B1B0;
    C0C1C2 ... C2C1C0."""
    patterns, ks = [], []
    for k in range(1, n_tracks + 1):
        for p in itertools.product(range(k), repeat=n_tracks):
            if len(set(p)) == k:
                patterns.append(p)
                ks.append(k)
    return torch.tensor(patterns, dtype=torch.long), torch.tensor(ks, dtype=torch.long)


def active(target: torch.Tensor) -> torch.Tensor:
    """Where a track of a target or output (..., 3 or 4) sounds: its (x, y, z) longer than 0.5
    (a distance, the fourth value, says nothing about activity)."""
    return target[..., :DIRECTION].norm(dim=-1) > ACTIVITY_THRESHOLD


def adpit_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ADPIT mean squared error of output and target (..., frames, T, C, 3), or (..., 4) with
    the distance in metres.

    Per frame and class, with k events of that class in the target (in tracks 0..k-1, as
    `encode` puts them), the error is the least over the targets that give each track one
    of the k events, every event at least once: a permutation of same-class events costs
    nothing, and a track left over learns a duplicate, not silence. The mean over the
    T x 3 (or T x 4) values, then over frames, classes and the batch, as `MSELoss_ADPIT`
    of the 2023 baseline (of the 2024 one with distance: the same mean over four values)."""
    if output.shape != target.shape or output.shape[-1] not in (3, 4) or output.dim() < 4:
        raise ConfigError(f"output {tuple(output.shape)} and target {tuple(target.shape)} must both be "
                          f"(..., frames, tracks, classes, 3 or 4)")
    n_tracks = target.shape[-3]
    patterns, ks = adpit_patterns(n_tracks)
    patterns, ks = patterns.to(target.device), ks.to(target.device)
    events = active(target).sum(dim=-2)  # (..., frames, C)
    # (..., frames, P, T, C, 3 or 4): for each pattern, track t takes event patterns[p, t]
    candidates = target.index_select(-3, patterns.flatten()).unflatten(-3, patterns.shape)
    errors = (output.unsqueeze(-4) - candidates).square().mean(dim=(-3, -1))  # (..., frames, P, C)
    # a frame and class without events: the one-event pattern, whose target is all zeros
    allowed = ks[:, None] == events.clamp(min=1).unsqueeze(-2)
    return errors.masked_fill(~allowed, float("inf")).amin(dim=-2).mean()


def duplicate(target: torch.Tensor) -> torch.Tensor:
    """The output that scores an ADPIT loss of 0 on `target` (..., frames, T, C, 3 or 4): per
    frame and class, the k events spread over all T tracks by the first ADPIT pattern
    (for 3 tracks: a a a, a a b, a b c). `decode` turns it back into the label rows."""
    patterns, ks = adpit_patterns(target.shape[-3])
    first = torch.stack([patterns[ks == k][0] for k in range(1, target.shape[-3] + 1)])  # (T, T) by k - 1
    events = active(target).sum(dim=-2).clamp(min=1)  # (..., frames, C)
    index = first.to(target.device)[events - 1].movedim(-1, -2)  # (..., frames, T, C)
    return target.gather(-3, index.unsqueeze(-1).expand(target.shape))


def decode(output, *, threshold: float = ACTIVITY_THRESHOLD, unify_deg: float = UNIFY_DEG,
           first_frame: int = 0) -> np.ndarray:
    """DCASE rows (n, 5): frame, class, track, azimuth in [-180, 180), elevation (degrees)
    of one recording's multi-ACCDOA output (frames, T, C, 3), frames numbered from
    `first_frame`; of an output with distance (frames, T, C, 4), rows (n, 6) with the
    distance in metres last. Active same-class tracks linked by distances under
    `unify_deg` become one row at their mean vector (and mean distance), numbered by the
    lowest of their tracks (for 3 tracks, exactly the baseline's three cases)."""
    out = output.detach().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
    if out.ndim != 4 or out.shape[-1] not in (3, 4):
        raise ConfigError(f"multi-ACCDOA output of one recording is (frames, tracks, classes, 3 or 4), "
                          f"not {out.shape}")
    out = out.astype(np.float64)
    width = out.shape[-1] + 2  # frame, class, track, azimuth, elevation[, distance]
    on = np.linalg.norm(out[..., :DIRECTION], axis=-1) > threshold  # (frames, T, C)
    rows = []
    for frame, cls in zip(*np.nonzero(on.any(axis=1))):
        tracks = np.flatnonzero(on[frame, :, cls])
        vecs = out[frame, tracks, cls, :DIRECTION]
        unit = vecs / np.linalg.norm(vecs, axis=-1, keepdims=True)
        near = np.degrees(np.arccos(np.clip(unit @ unit.T, -1.0, 1.0))) < unify_deg
        group = np.arange(len(tracks))  # connected components of `near`, by label propagation
        for _ in range(len(tracks)):
            group = np.array([group[near[i]].min() for i in range(len(tracks))])
        for g in np.unique(group):
            az, el = azimuth_elevation(vecs[group == g].mean(axis=0))
            row = (first_frame + frame, cls, tracks[group == g][0], (az + 180.0) % 360.0 - 180.0, el)
            if width == 6:  # a negative distance is 0 (the 2024 baseline: dist[dist < 0] = 0), then the mean
                row += (np.maximum(out[frame, tracks[group == g], cls, DIRECTION], 0.0).mean(),)
            rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, width)
