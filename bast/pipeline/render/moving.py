"""Time-varying binaural rendering: a source that moves, heard through a measured IR set.

Method (docs/scenes.md, "Moving sources"): overlapping blocks with crossfades, grouped by
direction. The dry signal is cut into blocks of `BLOCK` samples (32 ms) at a hop of half a
block, each weighted by a periodic Hann window; at a hop of half its length these windows
sum to exactly 1, so the blocks add back up to the dry signal. Each block is heard from the
IR set's direction nearest the trajectory at the block's centre (`Lookup`; with HRIR
interpolation, the interpolated HRIR at the trajectory's point nearest it). A run of consecutive
blocks with the same direction is one segment: the dry signal times a gain that is 1 inside
the run and a half-Hann ramp over its first and last half block, and the segment is
convolved (whole, FFT) with that direction's IR pair; the segments' outputs overlap-add.
So a change of direction is a 16 ms crossfade on the input side, and every segment keeps
its full reverberant tail: no click, in anechoic and room conditions alike, and a still
source is one segment, i.e. exactly the plain convolution.

Limits: the direction heard is the measured direction nearest the trajectory (at most
half the grid spacing away: 2.5 deg on MIT KEMAR's horizontal plane); the direction
changes at most once per hop (16 ms), so a source faster than one grid step per hop (about
300 deg/s on a 5 deg grid) skips directions, still without clicks. With interpolation the
direction heard is the trajectory's own, sampled every PATH_STEP_DEG (1 deg): at most half
a degree behind or ahead of it, and the step between blocks is the source's speed x 16 ms
(1 deg at 60 deg/s), not the grid spacing. Room IRs are the
room's response for a source standing still at each direction; a moving source's Doppler
shift and its changing reflection paths are approximated by the crossfade of still
responses, as in block-wise room rendering generally. With --distance a room's bank holds
each direction at a grid of distances, and a block is heard from the grid distance nearest
the source's (Lookup "grid"); in anechoic scenes the distance is a delay line after this
rendering (bast/pipeline/render/distance.py), which does give a Doppler shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from bast.conventions import FS
from bast.pipeline.irs.sofa import IRSet
from bast.sphere import wrap_azimuth

BLOCK = 512  # samples (32 ms at 16 kHz); the crossfade between two directions is half of it
HOP = BLOCK // 2
PATH_STEP_DEG = 1.0  # with interpolation: the spacing of the trajectory's points that blocks are heard from
# Periodic Hann: w[n] + w[n + BLOCK/2] = 1 exactly, so blocks at half-block hops sum to 1.
_RAMP = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(HOP) / BLOCK)  # the rising half; the falling half is 1 - it


@dataclass(frozen=True)
class Trajectory:
    """A direction that starts at (azimuth_deg, elevation_deg) and moves at constant rates
    (deg/s) of azimuth and elevation; the elevation reflects off [el_min, el_max] (the
    grid's range), so a source moving in elevation stays where the IR set has directions.
    A still source has both rates 0."""

    azimuth_deg: float
    elevation_deg: float = 0.0
    azimuth_rate: float = 0.0
    elevation_rate: float = 0.0
    el_min: float = -90.0
    el_max: float = 90.0
    distance_m: float | None = None  # None: the IR set's own distance (scenes without --distance)
    distance_rate: float = 0.0  # m/s: a moving source's distance changes linearly in time

    @property
    def moving(self) -> bool:
        return self.azimuth_rate != 0.0 or self.elevation_rate != 0.0 or self.distance_rate != 0.0

    def distance_at(self, t_s) -> np.ndarray:
        """The distance (m) at times `t_s` (s since the onset); needs `distance_m`."""
        if self.distance_m is None:
            raise ValueError("this trajectory has no distance of its own (the IR set's is heard)")
        return self.distance_m + self.distance_rate * np.asarray(t_s, dtype=np.float64)

    def at(self, t_s) -> tuple[np.ndarray, np.ndarray]:
        """(azimuth in [0, 360), elevation) in degrees at times `t_s` (s since the onset)."""
        t = np.asarray(t_s, dtype=np.float64)
        az = wrap_azimuth(self.azimuth_deg + self.azimuth_rate * t)
        el = np.full_like(t, self.elevation_deg)
        if self.elevation_rate:
            span = self.el_max - self.el_min
            if span <= 0:
                el = np.full_like(t, self.el_min)
            else:  # a triangle wave between the limits
                u = np.mod(self.elevation_deg - self.el_min + self.elevation_rate * t, 2 * span)
                el = self.el_min + np.where(u > span, 2 * span - u, u)
        return az, el


def nearest_directions(irs: IRSet, azimuth_deg, elevation_deg) -> np.ndarray:
    """Index into `irs` of its measured direction nearest (great circle) each requested
    (azimuth, elevation): Stage 1's lookup (`IRSet.indices`) without a tolerance, since a
    moving source passes between the measured directions."""
    return irs.indices(np.atleast_1d(azimuth_deg), elevation_deg, tolerance_deg=180.0)


class Lookup:
    """The IR pairs the blocks of a source are heard through: the one IR lookup of scenes.

    Without `interpolator`: the measured direction of `irs` nearest the trajectory at each
    block's centre. With one (bast.pipeline.irs.interpolate.Interpolator of the same head): HRIRs
    interpolated at points of the trajectory `PATH_STEP_DEG` apart (in azimuth and in
    elevation, whichever changes faster), each block taking the point nearest it in time; a
    still source is heard at exactly its direction.

    `distance` says how a trajectory's own distance (scenes with --distance) is heard:
    None, the IR set's (scenes without it); "free", an anechoic head whose HRIRs stand for
    their measured distance: the lookup is by direction alone and `mix` adds the
    propagation (bast/pipeline/render/distance.py); "grid", a room bank built at a grid of
    distances (`irs.distance_m` per entry): each block takes the grid distance nearest the
    trajectory's (in log distance), then the direction nearest it among that distance's."""

    def __init__(self, irs: IRSet, interpolator=None, distance: str | None = None):
        if distance not in (None, "free", "grid") or (distance == "grid" and interpolator is not None):
            raise ValueError(f"distance {distance!r}: None, 'free', or 'grid' (without an interpolator)")
        self.irs = irs
        self.interpolator = interpolator
        self.distance = distance
        self.taps = irs.ir.shape[-1]
        if distance == "grid":
            rounded = np.round(np.asarray(irs.distance_m, dtype=np.float64), 6)  # as read back from SOFA positions
            self.grid_m = np.unique(rounded)
            self._members = [np.flatnonzero(rounded == g) for g in self.grid_m]
            # directions only (no IR data copied): the nearest-direction search of each grid distance
            self._rings = [IRSet(np.zeros((len(m), 2, 0), np.float32), irs.fs, irs.azimuth_deg[m],
                                 irs.elevation_deg[m], irs.distance_m[m]) for m in self._members]

    def __call__(self, trajectory: Trajectory, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index per time (B,), IR pairs (K, 2, L)): time b is heard through pairs[index[b]]."""
        t = np.asarray(t_s, dtype=np.float64)
        if self.distance == "grid":
            return self._on_grid(trajectory, t), self.irs.ir
        rate = max(abs(trajectory.azimuth_rate), abs(trajectory.elevation_rate))
        if self.interpolator is None:
            idx = (nearest_directions(self.irs, *trajectory.at(t)) if trajectory.moving
                   else np.full(t.shape, int(nearest_directions(self.irs, *trajectory.at(0.0))[0])))
            return idx, self.irs.ir
        step = np.round(t * rate / PATH_STEP_DEG).astype(np.int64) if rate else np.zeros(t.shape, np.int64)
        points, idx = np.unique(step, return_inverse=True)
        az, el = trajectory.at(points * PATH_STEP_DEG / rate if rate else np.zeros(1))
        return idx.reshape(t.shape), self.interpolator(az, el)

    def _on_grid(self, trajectory: Trajectory, t: np.ndarray) -> np.ndarray:
        """Index into the bank per time: the nearest grid distance, then the nearest direction there."""
        times = t if trajectory.moving else np.zeros(1)
        az, el = trajectory.at(times)
        which = nearest_grid(self.grid_m, trajectory.distance_at(times))
        idx = np.empty(times.shape, np.int64)
        for k in np.unique(which):
            sel = which == k
            idx[sel] = self._members[k][nearest_directions(self._rings[k], az[sel], el[sel])]
        return idx if trajectory.moving else np.full(t.shape, idx[0])


def nearest_grid(grid_m: np.ndarray, distance_m) -> np.ndarray:
    """Index of the grid distance nearest each distance, in log distance (the grid is
    geometric: bast/pipeline/render/distance.py `distance_grid`)."""
    r = np.atleast_1d(np.asarray(distance_m, dtype=np.float64))
    return np.argmin(np.abs(np.log(r[:, None] / np.asarray(grid_m)[None, :])), axis=1)


def _lookup(irs) -> Lookup:
    return irs if isinstance(irs, Lookup) else Lookup(irs)


def segments(n: int, trajectory: Trajectory, irs: IRSet | Lookup) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """The (start, stop, IR index) runs of a signal of `n` samples (consecutive blocks heard
    through the same IR pair) and the IR pairs (K, 2, L) the indices point into. Starts and
    stops may reach half a block beyond [0, n); `segment_gain` crops them."""
    count = -(-n // HOP) + 1
    starts = np.arange(count) * HOP - HOP  # the first block starts half a block before the signal
    centres = np.clip(starts + HOP, 0, n) / FS
    idx, pairs = _lookup(irs)(trajectory, centres)
    runs = []
    first = 0
    for k in range(1, count + 1):
        if k == count or idx[k] != idx[first]:
            runs.append((int(starts[first]), int(starts[k - 1] + BLOCK), int(idx[first])))
            first = k
    return runs, pairs


def segment_gain(start: int, stop: int, n: int) -> tuple[int, np.ndarray]:
    """(first sample, gain) of a run cropped to [0, n): half-Hann ramps over its first and
    last half block, 1 between. The gains of all runs sum to 1 on [0, n)."""
    gain = np.ones(stop - start)
    gain[:HOP] = _RAMP
    gain[-HOP:] = 1.0 - _RAMP
    lo, hi = max(start, 0), min(stop, n)
    return lo, gain[lo - start:hi - start]


def render(dry: np.ndarray, trajectory: Trajectory, irs: IRSet | Lookup, n_out: int | None = None) -> np.ndarray:
    """(2, n_out) float64: the mono `dry` signal moving along `trajectory`, heard through
    `irs` (an IRSet: its nearest measured directions; or a `Lookup`). `n_out` defaults to
    the full convolution's length; a shorter one drops the tail after it."""
    dry = np.asarray(dry, dtype=np.float64)
    lookup = _lookup(irs)
    n, taps = dry.shape[0], lookup.taps
    n_out = n + taps - 1 if n_out is None else n_out
    out = np.zeros((2, n_out))
    runs, pairs = segments(n, trajectory, lookup)
    for start, stop, g in runs:
        lo, gain = segment_gain(start, stop, n)
        if lo >= n_out:
            continue
        seg = dry[lo:lo + gain.size] * gain
        keep = min(seg.size + taps - 1, n_out - lo)  # samples of this segment's output that fit
        h = pairs[g][:, :keep].astype(np.float64)
        nfft = sfft.next_fast_len(seg.size + h.shape[-1] - 1, real=True)
        y = sfft.irfft(sfft.rfft(seg, nfft) * sfft.rfft(h, nfft, axis=-1), nfft, axis=-1)
        out[:, lo:lo + keep] += y[:, :keep]
    return out


def render_naive(dry: np.ndarray, trajectory: Trajectory, irs: IRSet | Lookup, n_out: int | None = None) -> np.ndarray:
    """The same output block by block: every windowed block convolved on its own with its
    IR pair (the way moving sources are usually rendered by hand). For the benchmark and
    the tests; `render` groups blocks into runs and is faster."""
    from scipy.signal import fftconvolve

    dry = np.asarray(dry, dtype=np.float64)
    lookup = _lookup(irs)
    n, taps = dry.shape[0], lookup.taps
    n_out = n + taps - 1 if n_out is None else n_out
    out = np.zeros((2, n_out + BLOCK + taps))
    window = np.concatenate([_RAMP, 1.0 - _RAMP])
    count = -(-n // HOP) + 1
    starts = np.arange(count) * HOP - HOP
    idx, pairs = lookup(trajectory, np.clip(starts + HOP, 0, n) / FS)
    for k, start in enumerate(starts):
        lo, hi = max(start, 0), min(start + BLOCK, n)
        if lo >= hi or lo >= n_out:
            continue
        block = dry[lo:hi] * window[lo - start:hi - start]
        y = fftconvolve(block[None, :], pairs[idx[k]].astype(np.float64), axes=-1)
        out[:, lo:lo + y.shape[-1]] += y
    return out[:, :n_out]
