"""The SELD target: multi-ACCDOA with the ADPIT loss, as in the DCASE 2023 baseline (docs/seld.md).

Per 100 ms label frame, for each of T tracks and C classes, a 3-D vector (x, y, z) whose
direction is the event's and whose length is 1 when the event is active, 0 when not
(multi-ACCDOA, Shimada et al. 2022). Tensors are laid out (..., frames, T, C, 3).

- `encode(rows, n_frames, n_classes)`: label rows of a window -> the target tensor; the
  events of one class in one frame fill tracks 0, 1, ... in row order.
- `adpit_loss(output, target)`: the mean squared error under auxiliary duplicating
  permutation invariant training: per frame and class, the least error over every way of
  giving the k events of that class to the T tracks with each event used at least once
  (for T = 3: 1 + 6 + 6 = 13 targets, the baseline's `MSELoss_ADPIT`).
- `duplicate(target)`: the ideal output for a target, each event repeated over the
  tracks as ADPIT expects (loss 0).
- `decode(output)`: model output -> DCASE rows; a track is active when its vector is longer
  than 0.5, and active tracks of one class closer than 15 degrees are merged into their
  mean, as the baseline's inference does (`determine_similar_location`, thresh_unify).

Rows are (n, 5+) arrays: frame, class, source/track, azimuth_deg, elevation_deg; the
azimuth counter-clockwise from ahead in any range. The directions follow bast.sphere.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch

from bast.conventions import LABEL_SAMPLES
from bast.errors import ConfigError
from bast.sphere import azimuth_elevation, unit_vector

N_TRACKS = 3  # as the DCASE 2022-2024 baselines: up to 3 simultaneous events of one class
ACTIVITY_THRESHOLD = 0.5  # vector length above which a track counts as active
UNIFY_DEG = 15.0  # same-class tracks closer than this are one event (baseline: thresh_unify)
_HOP, _NPERSEG = 128, 256  # the spectrogram's (bast.pipeline.features.stft)


def n_label_frames(n_frames: int) -> int:
    """The 100 ms label frames that `n_frames` spectrogram frames span: 61 frames (500 ms)
    -> 5, 624 (5 s) -> 50."""
    if n_frames < 1:
        raise ConfigError(f"a window needs at least one frame, not {n_frames}")
    return max(1, round(((n_frames - 1) * _HOP + _NPERSEG) / LABEL_SAMPLES))


def encode(rows, n_frames: int, n_classes: int, *, n_tracks: int = N_TRACKS) -> torch.Tensor:
    """The multi-ACCDOA target (n_frames, n_tracks, n_classes, 3) float32 of label rows
    whose frames count from the window's first label frame. Rows outside [0, n_frames)
    are left out; past n_tracks events of one class in one frame, the first n_tracks are
    kept (as the baseline keeps three)."""
    if n_tracks < 1 or n_classes < 1:
        raise ConfigError(f"tracks and classes must be positive, not {n_tracks} and {n_classes}")
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        rows = np.zeros((0, 5))
    if rows.ndim != 2 or rows.shape[1] < 5:
        raise ConfigError(f"label rows are (n, 5+) arrays (frame, class, track, azimuth, elevation), not {rows.shape}")
    target = np.zeros((n_frames, n_tracks, n_classes, 3), dtype=np.float32)
    filled = np.zeros((n_frames, n_classes), dtype=np.int64)
    if len(rows) and (rows[:, 1].min() < 0 or rows[:, 1].max() >= n_classes):
        raise ConfigError(f"label rows hold classes {int(rows[:, 1].min())}..{int(rows[:, 1].max())}, "
                          f"but there are {n_classes} classes")
    vectors = unit_vector(rows[:, 3], rows[:, 4]) if len(rows) else np.zeros((0, 3))
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


def adpit_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ADPIT mean squared error of output and target (..., frames, T, C, 3).

    Per frame and class, with k events of that class in the target (in tracks 0..k-1, as
    `encode` puts them), the error is the least over the targets that give each track one
    of the k events, every event at least once: a permutation of same-class events costs
    nothing, and a track left over learns a duplicate, not silence. The mean over the
    T x 3 values, then over frames, classes and the batch, as `MSELoss_ADPIT`."""
    if output.shape != target.shape or output.shape[-1] != 3 or output.dim() < 4:
        raise ConfigError(f"output {tuple(output.shape)} and target {tuple(target.shape)} must both be "
                          f"(..., frames, tracks, classes, 3)")
    n_tracks = target.shape[-3]
    patterns, ks = adpit_patterns(n_tracks)
    patterns, ks = patterns.to(target.device), ks.to(target.device)
    events = (target.norm(dim=-1) > ACTIVITY_THRESHOLD).sum(dim=-2)  # (..., frames, C)
    # (..., frames, P, T, C, 3): for each pattern, track t takes event patterns[p, t]
    candidates = target.index_select(-3, patterns.flatten()).unflatten(-3, patterns.shape)
    errors = (output.unsqueeze(-4) - candidates).square().mean(dim=(-3, -1))  # (..., frames, P, C)
    # a frame and class without events: the one-event pattern, whose target is all zeros
    allowed = ks[:, None] == events.clamp(min=1).unsqueeze(-2)
    return errors.masked_fill(~allowed, float("inf")).amin(dim=-2).mean()


def duplicate(target: torch.Tensor) -> torch.Tensor:
    """The output that scores an ADPIT loss of 0 on `target` (..., frames, T, C, 3): per
    frame and class, the k events spread over all T tracks by the first ADPIT pattern
    (for 3 tracks: a a a, a a b, a b c). `decode` turns it back into the label rows."""
    patterns, ks = adpit_patterns(target.shape[-3])
    first = torch.stack([patterns[ks == k][0] for k in range(1, target.shape[-3] + 1)])  # (T, T) by k - 1
    events = (target.norm(dim=-1) > ACTIVITY_THRESHOLD).sum(dim=-2).clamp(min=1)  # (..., frames, C)
    index = first.to(target.device)[events - 1].movedim(-1, -2)  # (..., frames, T, C)
    return target.gather(-3, index.unsqueeze(-1).expand(target.shape))


def decode(output, *, threshold: float = ACTIVITY_THRESHOLD, unify_deg: float = UNIFY_DEG,
           first_frame: int = 0) -> np.ndarray:
    """DCASE rows (n, 5): frame, class, track, azimuth in [-180, 180), elevation (degrees)
    of one recording's multi-ACCDOA output (frames, T, C, 3), frames numbered from
    `first_frame`. Active same-class tracks linked by distances under `unify_deg` become
    one row at their mean vector, numbered by the lowest of their tracks (for 3 tracks,
    exactly the baseline's three cases)."""
    out = output.detach().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)
    if out.ndim != 4 or out.shape[-1] != 3:
        raise ConfigError(f"multi-ACCDOA output of one recording is (frames, tracks, classes, 3), not {out.shape}")
    out = out.astype(np.float64)
    active = np.linalg.norm(out, axis=-1) > threshold  # (frames, T, C)
    rows = []
    for frame, cls in zip(*np.nonzero(active.any(axis=1))):
        tracks = np.flatnonzero(active[frame, :, cls])
        vecs = out[frame, tracks, cls]
        unit = vecs / np.linalg.norm(vecs, axis=-1, keepdims=True)
        near = np.degrees(np.arccos(np.clip(unit @ unit.T, -1.0, 1.0))) < unify_deg
        group = np.arange(len(tracks))  # connected components of `near`, by label propagation
        for _ in range(len(tracks)):
            group = np.array([group[near[i]].min() for i in range(len(tracks))])
        for g in np.unique(group):
            mean = vecs[group == g].mean(axis=0)
            az, el = azimuth_elevation(mean)
            rows.append((first_frame + frame, cls, tracks[group == g][0], (az + 180.0) % 360.0 - 180.0, el))
    return np.array(rows, dtype=np.float64).reshape(-1, 5)
