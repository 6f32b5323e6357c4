"""Source distance in scenes: `bast-cli scenes --distance LO:HI` (docs/scenes.md, "Distance").

Each event draws a distance uniformly from [LO, HI] metres; a moving event draws a start
and an end distance and goes from one to the other linearly in time
(`Trajectory.distance_m`, `distance_rate`). How a distance is heard:

* anechoic (`propagate`): the HRIRs stand for their measured distance r_h (1.4 m for MIT
  KEMAR). The event's binaural signal goes through a variable delay line: delay
  (r - r_h) / c, gain r_h / r, read between samples by the windowed-sinc kernel the room
  banks render their image sources with (32 taps, `hall.fractional_delays`; tabulated at
  1/1024 sample for a changing distance). A source whose distance changes so gets its
  Doppler shift (from the distance at the time of hearing rather than of emission: a
  relative error of (v/c)^2, 5e-5 at 2.5 m/s). A source nearer than r_h arrives earlier than
  its labelled onset (by at most (r_h - LO) / c: 3.5 ms from 1.4 m to 0.2 m); the near
  field's larger ILD is not modelled (the HRIRs are far-field measurements).
* rooms (simulated: the hall, generated rooms): the bank is built at a geometric grid of
  distances from LO to HI (`distance_grid`), each grid distance's BRIRs the image-source
  model with the source there (bast/pipeline/irs/hall.py `build_hall`), and an event is
  heard from the grid distance nearest its own (in log distance). Neighbouring grid
  distances differ by GRID_STEP_DB of direct level, so the distance heard is within
  `grid_error()` (5.9 %) of the label and the direct level within half a step (0.5 dB).
  A range must fit every room (`check_rooms`); measured BRIRs (--brir) have one distance
  and are refused with --distance.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.signal import fftconvolve

from bast.conventions import FS
from bast.errors import ConfigError
from bast.pipeline.irs.hall import (
    SPEED_OF_SOUND,
    SURFACE_MARGIN_M,
    HallSpec,
    fractional_delays,
)
from bast.pipeline.render.moving import nearest_directions
from bast.pipeline.render.scenemodel import parse_range

MIN_DISTANCE_M = 0.2  # twice the head's radius: nearer, the head and the source are not apart
MAX_DISTANCE_M = 50.0  # 146 ms of propagation; rooms allow far less (check_rooms)
GRID_STEP_DB = 1.0  # neighbouring grid distances differ by this much direct level (20 log10 of their ratio)
WALL_MARGIN_M = 0.5  # a source stays this far from every wall (as generated rooms keep their listener)
DIRECT_GUARD_S = 0.01  # a room's direct sound (and the HRIR's 12 ms) arrives this long before its mixing time
KERNEL_TAPS = 32  # the fractional-delay kernel (hall.fractional_delays)
_CHUNK = 8192  # output samples per step of the delay line (8192 x 32 taps x 2 ears: 4 MB)


def check_range(distance, option: str = "--distance") -> tuple[float, float]:
    """(lo, hi) metres from 'LO:HI', 'R' or a pair: finite, low before high, within
    [MIN_DISTANCE_M, MAX_DISTANCE_M]."""
    lo, hi = parse_range(distance, option, low=MIN_DISTANCE_M)
    if hi > MAX_DISTANCE_M:
        raise ConfigError(f"{option} {distance!r}: at most {MAX_DISTANCE_M:g} m (the propagation delay alone would "
                          f"be {1000 * hi / SPEED_OF_SOUND:.0f} ms of a scene)")
    return lo, hi


def distance_grid(lo: float, hi: float) -> np.ndarray:
    """The distances (m) a room bank is built at: geometric from `lo` to `hi` (both
    included), neighbours at most GRID_STEP_DB of direct level apart; one point when lo = hi."""
    if hi <= lo:
        return np.array([float(lo)])
    steps = math.ceil(20.0 * math.log10(hi / lo) / GRID_STEP_DB - 1e-9)
    return lo * (hi / lo) ** (np.arange(steps + 1) / steps)


def grid_error() -> float:
    """The largest relative difference between a distance in the grid's range and the grid
    distance nearest it (in log distance): half a step, sqrt(ratio) - 1."""
    return 10.0 ** (GRID_STEP_DB / 40.0) - 1.0


# --------------------------------------------------------------------------- rooms


def room_reach_m(spec: HallSpec, elevations_deg) -> float:
    """The farthest a source may stand from the head in `spec`, in any azimuth and at any
    elevation between the lowest and highest of `elevations_deg`, WALL_MARGIN_M from the
    walls and SURFACE_MARGIN_M from floor and ceiling; and its direct sound must arrive
    DIRECT_GUARD_S before the room's mixing time (the bank's early part ends there)."""
    lo, hi = float(np.min(elevations_deg)), float(np.max(elevations_deg))
    (x, y, z), (width, length, height) = spec.listener_m, spec.size_m
    walls = min(x, width - x, y, length - y) - WALL_MARGIN_M
    flat = 1.0 if lo <= 0.0 <= hi else math.cos(math.radians(min(abs(lo), abs(hi))))  # the widest circle
    reach = walls / flat if flat > 1e-9 else math.inf
    up, down = math.sin(math.radians(hi)), -math.sin(math.radians(lo))
    if up > 1e-9:
        reach = min(reach, (height - SURFACE_MARGIN_M - z) / up)
    if down > 1e-9:
        reach = min(reach, (z - SURFACE_MARGIN_M) / down)
    return max(0.0, min(reach, SPEED_OF_SOUND * (spec.mixing_time_s - DIRECT_GUARD_S)))


def check_rooms(distance: tuple[float, float], rooms: dict, elevations_deg, option: str = "--distance") -> None:
    """Refuse a range a room cannot hold (`room_reach_m`), naming the room and what it holds;
    measured BRIR files (paths in `rooms`) have one distance and are refused."""
    lo, hi = distance
    for label, spec in rooms.items():
        if not isinstance(spec, HallSpec):
            raise ConfigError(f"{option} {lo:g}:{hi:g}: the measured BRIRs {label} ({spec}) have one source distance; "
                              "--distance needs simulated rooms (the hall, --rooms) or anechoic")
        reach = room_reach_m(spec, elevations_deg)
        if hi > reach:
            w, l_, h = spec.size_m
            raise ConfigError(f"{option} {lo:g}:{hi:g}: room {label} ({w:g} x {l_:g} x {h:g} m, listener at "
                              f"{', '.join(f'{v:g}' for v in spec.listener_m)} m) holds sources up to {reach:.2f} m "
                              f"from the head ({WALL_MARGIN_M:g} m from its walls, {SURFACE_MARGIN_M:g} m from floor "
                              f"and ceiling); give a range within it")


# --------------------------------------------------------------------------- anechoic


def hrir_distance(irs, trajectory) -> float:
    """The distance the HRIRs heard at the trajectory's start were measured at (m)."""
    return float(np.asarray(irs.distance_m)[nearest_directions(irs, *trajectory.at(0.0))[0]])


def propagate(wet: np.ndarray, trajectory, r_hrir: float, length: int) -> tuple[int, np.ndarray]:
    """(lead, out (2, n)): `wet` (2, W), an event of `length` samples heard through HRIRs
    measured at `r_hrir` from its onset on, heard at the trajectory's distance r(t):
    out[m] = r_hrir / r(t) * wet(m - lead - (r(t) - r_hrir) / c * FS), t = (m - lead) / FS
    (clamped to the event), read between samples by the windowed-sinc kernel. Sample m of
    `out` is `lead` samples before the onset: a source nearer than r_hrir is heard early.
    A still distance is one convolution with the kernel; a changing one, a kernel per sample."""
    wet = np.asarray(wet, dtype=np.float64)
    ends = trajectory.distance_at(np.array([0.0, max(length - 1, 0) / FS]))  # linear: extremes at the ends
    half = KERNEL_TAPS // 2
    lead = half + max(0, math.ceil((r_hrir - ends.min()) / SPEED_OF_SOUND * FS))
    late = half + max(0, math.ceil((ends.max() - r_hrir) / SPEED_OF_SOUND * FS))
    width = wet.shape[-1]
    n = width + lead + late
    if trajectory.distance_rate == 0.0:
        start, kernel = fractional_delays(np.array([lead + (ends[0] - r_hrir) / SPEED_OF_SOUND * FS]), KERNEL_TAPS)
        out = np.zeros((2, n))
        y = fftconvolve(wet, kernel * (r_hrir / ends[0]), axes=-1)  # kernel (1, taps) against (2, W)
        out[:, start[0]:start[0] + y.shape[-1]] = y[:, :n - start[0]]
        return lead, out
    # wet is read from -(lead + late) to W + lead + late (the delay spans [half, lead + late - half]):
    # zeros there, so every read lands inside (a negative index would wrap around)
    pad = lead + late
    padded = np.pad(wet, ((0, 0), (pad, pad)))
    out = np.empty((2, n))
    for a in range(0, n, _CHUNK):
        m = np.arange(a, min(a + _CHUNK, n))
        r = trajectory.distance_at(np.clip((m - lead) / FS, 0.0, max(length - 1, 0) / FS))
        start, kernels = tabled_kernels(lead + (r - r_hrir) / SPEED_OF_SOUND * FS)
        src = m - start + pad
        acc = np.zeros((2, len(m)))
        for j in range(KERNEL_TAPS):  # out[m] = sum_j k[m, j] wet[m - start[m] - j], a tap at a time
            acc += padded[:, src - j] * kernels[:, j]
        out[:, a:a + len(m)] = acc * (r_hrir / r)
    return lead, out


_PHASES = 1024  # the kernel tabulated at fractions of a sample 1/1024 apart, linear between


@functools.cache
def _kernel_table() -> np.ndarray:
    """(_PHASES + 1, KERNEL_TAPS): `hall.fractional_delays`' kernel for the delays
    KERNEL_TAPS / 2 + k / _PHASES, all with the same start sample (0)."""
    frac = np.arange(_PHASES + 1) / _PHASES
    x = np.arange(KERNEL_TAPS)[None, :] - (KERNEL_TAPS // 2 + frac)[:, None]
    window = 0.5 + 0.5 * np.cos(np.pi * x / (KERNEL_TAPS // 2))
    return np.sinc(x) * np.where(np.abs(x) < KERNEL_TAPS // 2, window, 0.0)


def tabled_kernels(delays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`hall.fractional_delays(delays, KERNEL_TAPS)` from the table, linear between its
    phases: within 1e-6 of the kernel computed at the delay (tested), 6x faster (a sine and
    a cosine per tap and sample were two thirds of a moving source's propagation)."""
    whole = np.floor(delays)
    phase = (delays - whole) * _PHASES
    k = np.minimum(phase.astype(np.int64), _PHASES - 1)
    w = (phase - k)[:, None]
    table = _kernel_table()
    return whole.astype(np.int64) - KERNEL_TAPS // 2, (1.0 - w) * table[k] + w * table[k + 1]
