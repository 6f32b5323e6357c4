"""Time-varying binaural rendering: a source that moves, heard through a measured IR set.

Method (docs/scenes.md, "Moving sources"): overlapping blocks with crossfades, grouped by
direction. The dry signal is cut into blocks of `BLOCK` samples (32 ms) at a hop of half a
block, each weighted by a periodic Hann window; at a hop of half its length these windows
sum to exactly 1, so the blocks add back up to the dry signal. Each block is heard from the
IR set's direction nearest the trajectory at the block's centre. A run of consecutive
blocks with the same direction is one segment: the dry signal times a gain that is 1 inside
the run and a half-Hann ramp over its first and last half block, and the segment is
convolved (whole, FFT) with that direction's IR pair; the segments' outputs overlap-add.
So a change of direction is a 16 ms crossfade on the input side, and every segment keeps
its full reverberant tail: no click, in anechoic and room conditions alike, and a still
source is one segment, i.e. exactly the plain convolution.

Limits: the direction heard is the measured direction nearest the trajectory (at most
half the grid spacing away: 2.5 deg on MIT KEMAR's horizontal plane); the direction
changes at most once per hop (16 ms), so a source faster than one grid step per hop (about
300 deg/s on a 5 deg grid) skips directions, still without clicks. Room IRs are the
room's response for a source standing still at each direction; a moving source's Doppler
shift and its changing reflection paths are approximated by the crossfade of still
responses, as in block-wise room rendering generally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from bast.conventions import FS
from bast.sphere import unit_vector, wrap_azimuth

BLOCK = 512  # samples (32 ms at 16 kHz); the crossfade between two directions is half of it
HOP = BLOCK // 2
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

    @property
    def moving(self) -> bool:
        return self.azimuth_rate != 0.0 or self.elevation_rate != 0.0

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


def nearest_directions(directions: np.ndarray, azimuth_deg, elevation_deg) -> np.ndarray:
    """Index into `directions` ((M, 3) unit vectors, e.g. `IRSet.directions()`) of the
    direction nearest (great circle) to each requested (azimuth, elevation).

    The one IR lookup of scenes: a later HRIR interpolation can replace it here."""
    want = unit_vector(azimuth_deg, elevation_deg)
    return np.argmax(want @ np.asarray(directions).T, axis=-1)


def segments(n: int, trajectory: Trajectory, directions: np.ndarray) -> list[tuple[int, int, int]]:
    """The (start, stop, direction index) runs of a signal of `n` samples: consecutive
    blocks heard from the same direction. Starts and stops may reach half a block beyond
    [0, n); `segment_gain` crops them."""
    count = -(-n // HOP) + 1
    starts = np.arange(count) * HOP - HOP  # the first block starts half a block before the signal
    centres = np.clip(starts + HOP, 0, n) / FS
    idx = nearest_directions(directions, *trajectory.at(centres)) if trajectory.moving else \
        np.full(count, nearest_directions(directions, *trajectory.at(0.0)))
    runs = []
    first = 0
    for k in range(1, count + 1):
        if k == count or idx[k] != idx[first]:
            runs.append((int(starts[first]), int(starts[k - 1] + BLOCK), int(idx[first])))
            first = k
    return runs


def segment_gain(start: int, stop: int, n: int) -> tuple[int, np.ndarray]:
    """(first sample, gain) of a run cropped to [0, n): half-Hann ramps over its first and
    last half block, 1 between. The gains of all runs sum to 1 on [0, n)."""
    gain = np.ones(stop - start)
    gain[:HOP] = _RAMP
    gain[-HOP:] = 1.0 - _RAMP
    lo, hi = max(start, 0), min(stop, n)
    return lo, gain[lo - start:hi - start]


def render(dry: np.ndarray, trajectory: Trajectory, irs: np.ndarray, directions: np.ndarray,
           n_out: int | None = None) -> np.ndarray:
    """(2, n_out) float64: the mono `dry` signal moving along `trajectory`, through the IR
    pairs `irs` (M, 2, L) whose unit vectors are `directions` (M, 3). `n_out` defaults to
    the full convolution's length; a shorter one drops the tail after it."""
    dry = np.asarray(dry, dtype=np.float64)
    n, taps = dry.shape[0], irs.shape[-1]
    n_out = n + taps - 1 if n_out is None else n_out
    out = np.zeros((2, n_out))
    for start, stop, g in segments(n, trajectory, directions):
        lo, gain = segment_gain(start, stop, n)
        if lo >= n_out:
            continue
        seg = dry[lo:lo + gain.size] * gain
        keep = min(seg.size + taps - 1, n_out - lo)  # samples of this segment's output that fit
        h = irs[g][:, :keep].astype(np.float64)
        nfft = sfft.next_fast_len(seg.size + h.shape[-1] - 1, real=True)
        y = sfft.irfft(sfft.rfft(seg, nfft) * sfft.rfft(h, nfft, axis=-1), nfft, axis=-1)
        out[:, lo:lo + keep] += y[:, :keep]
    return out


def render_naive(dry: np.ndarray, trajectory: Trajectory, irs: np.ndarray, directions: np.ndarray,
                 n_out: int | None = None) -> np.ndarray:
    """The same output block by block: every windowed block convolved on its own with its
    direction's IR pair (the way moving sources are usually rendered by hand). For the
    benchmark and the tests; `render` groups blocks into runs and is faster."""
    from scipy.signal import fftconvolve

    dry = np.asarray(dry, dtype=np.float64)
    n, taps = dry.shape[0], irs.shape[-1]
    n_out = n + taps - 1 if n_out is None else n_out
    out = np.zeros((2, n_out + BLOCK + taps))
    window = np.concatenate([_RAMP, 1.0 - _RAMP])
    count = -(-n // HOP) + 1
    for k in range(count):
        start = k * HOP - HOP
        t = min(max(start + HOP, 0), n) / FS
        g = int(nearest_directions(directions, *trajectory.at(t)))
        lo, hi = max(start, 0), min(start + BLOCK, n)
        if lo >= hi or lo >= n_out:
            continue
        block = dry[lo:hi] * window[lo - start:hi - start]
        y = fftconvolve(block[None, :], irs[g].astype(np.float64), axes=-1)
        out[:, lo:lo + y.shape[-1]] += y
    return out[:, :n_out]
