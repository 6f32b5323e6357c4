"""The lecture hall: a bank of binaural room impulse responses (BRIRs), one per direction.

A 10 m x 14 m x 4 m shoebox simulated with pyroomacoustics, heard through an HRIR set:

* early part (until the mixing time): pyroomacoustics' image sources, each arriving at
  both ears through the HRIR pair of its direction (the HRIR already holds the interaural
  delay, so one receiver at the head centre suffices);
* late part: pyroomacoustics' hybrid simulation (image sources + ray tracing) of an omni
  receiver at the head centre gives the decay rate and level per octave band; the
  binaural tail is synthesised as many arrivals from random directions, each through the
  HRIR pair of its direction, shaped band by band to that decay. Interaural coherence then
  comes from the head itself (high at low frequencies, near zero above 1 kHz), which
  pyroomacoustics' own tail, drawn independently for each ear, lacks.

Wall absorption starts at Eyring's value for the target RT60 and is corrected from the
measured decay of the simulation, so the bank meets the RT60 it was asked for.
Sources sit on a sphere of radius `distance_m` around the listener's head (on its
horizontal circle at elevation 0); `fitted` shrinks the sphere where the floor or the
ceiling would cut it. The bank is stored as a SOFA file (GeneralFIR) and cached by its
parameters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyroomacoustics as pra
from scipy.signal import fftconvolve

from bast import __version__, options
from bast.conventions import FS
from bast.errors import ConfigError
from bast.pipeline.irs import acoustics
from bast.pipeline.irs.sofa import IRSet, read_sofa, write_sofa
from bast.sphere import unit_vector

SPEED_OF_SOUND = 343.0
# pyroomacoustics' names of a shoebox's walls, in the order of HallSpec.wall_factors.
WALLS = ("west", "east", "south", "north", "floor", "ceiling")
# Bump when the algorithm changes, so cached banks are rebuilt.
ALGORITHM_VERSION = 1
# A source on the sphere stays this far from the floor and the ceiling (`HallSpec.fitted`).
SURFACE_MARGIN_M = 0.3
# RT60s a simulated room may have: below 0.1 s the "hall" is nearly anechoic and the
# calibration's absorption saturates; above 10 s the bank (1.25 x RT60 long) outgrows memory.
MIN_RT60_S, MAX_RT60_S = 0.1, 10.0


@dataclass(frozen=True)
class HallSpec:
    """Everything that determines a BRIR bank (and so its cache key)."""

    size_m: tuple[float, float, float] = (10.0, 14.0, 4.0)
    listener_m: tuple[float, float, float] = (3.8, 5.5, 1.2)  # off centre, seated ear height
    view: tuple[float, float, float] = (0.0, 1.0, 0.0)  # facing the front wall (+y)
    rt60_s: float = 0.8
    scattering: float = 0.3
    distance_m: float = 1.0
    mixing_time_s: float = 0.05
    crossfade_s: float = 0.02
    length_s: float | None = None  # default: 1.25 x RT60, at least 0.5 s
    arrivals_per_s: float = 4000.0  # density of the synthetic tail's arrivals
    n_rays: int = 20000
    seed: int = 0
    # Per-wall factors on the calibrated absorption, walls in the order WALLS (x = 0, x = max,
    # y = 0, y = max, floor, ceiling); None = every wall alike (the default hall). The
    # calibration scales the common absorption so the decay still meets rt60_s.
    wall_factors: tuple[float, ...] | None = None

    def __post_init__(self):
        options.number(self.rt60_s, "--rt60", lo=MIN_RT60_S, hi=MAX_RT60_S, unit="s")
        options.seed(self.seed)

    @property
    def volume_m3(self) -> float:
        return float(np.prod(self.size_m))

    @property
    def surface_m2(self) -> float:
        x, y, z = self.size_m
        return 2.0 * (x * y + x * z + y * z)

    @property
    def n_samples(self) -> int:
        length = self.length_s if self.length_s is not None else max(0.5, 1.25 * self.rt60_s)
        return int(round(length * FS))

    def eyring_absorption(self) -> float:
        """Energy absorption coefficient that gives rt60_s by Eyring's formula (the common
        value before the wall factors, so that their area-weighted mean meets it)."""
        alpha = float(1.0 - np.exp(-0.161 * self.volume_m3 / (self.surface_m2 * self.rt60_s)))
        if self.wall_factors is None:
            return alpha
        x, y, z = self.size_m
        areas = np.array([y * z, y * z, x * z, x * z, x * y, x * y])
        return alpha / float(np.sum(areas * np.asarray(self.wall_factors)) / np.sum(areas))

    def materials(self, alpha: float):
        """pyroomacoustics materials for the common absorption `alpha`: one for every wall,
        or one per wall (alpha x its factor, at most 0.99) when the walls differ."""
        if self.wall_factors is None:
            return pra.Material(alpha, self.scattering)
        if len(self.wall_factors) != len(WALLS):
            raise ConfigError(f"wall_factors needs {len(WALLS)} values ({', '.join(WALLS)})")
        return {w: pra.Material(min(alpha * f, 0.99), self.scattering) for w, f in zip(WALLS, self.wall_factors)}

    def source_positions(self, azimuths_deg, elevations_deg=0.0, distances_m=None) -> np.ndarray:
        """Room coordinates (A, 3) of sources at the directions (head frame, degrees) on the
        sphere of radius `distance_m` around the listener (or at `distances_m`, one per
        direction: a bank built at several distances)."""
        ahead, left = self._head_axes()
        x, y, z = np.moveaxis(unit_vector(np.atleast_1d(azimuths_deg), elevations_deg), -1, 0)
        radius = self.distance_m if distances_m is None else np.asarray(distances_m, dtype=float)[:, None]
        return np.asarray(self.listener_m) + radius * (x[:, None] * ahead + y[:, None] * left
                                                       + z[:, None] * np.array([0.0, 0.0, 1.0]))

    def fitted(self, elevations_deg, margin_m: float = SURFACE_MARGIN_M) -> HallSpec:
        """This room with the sources' sphere shrunk, when needed, so that sources at
        `elevations_deg` stay `margin_m` from the floor and the ceiling. One radius for every
        direction: a radius that changed with the direction would make the direct-to-
        reverberant ratio a cue to elevation. Unchanged at elevation 0."""
        up = np.sin(np.radians(np.max(elevations_deg, initial=0.0)))
        down = -np.sin(np.radians(np.min(elevations_deg, initial=0.0)))
        ear = self.listener_m[2]
        radius = self.distance_m
        if up > 1e-9:
            radius = min(radius, (self.size_m[2] - margin_m - ear) / up)
        if down > 1e-9:
            radius = min(radius, (ear - margin_m) / down)
        if radius <= 0.1:
            raise ConfigError(f"a room {self.size_m[2]:g} m high with the ear at {ear:g} m cannot hold sources at "
                              f"elevations {np.min(elevations_deg):g}..{np.max(elevations_deg):g} deg")
        radius = np.floor(radius * 1000) / 1000  # to the mm below, as rooms are drawn: the margin holds
        return self if radius >= self.distance_m else dataclasses.replace(self, distance_m=float(radius))

    def _head_axes(self) -> tuple[np.ndarray, np.ndarray]:
        ahead = np.asarray(self.view, dtype=float)
        ahead = ahead / np.linalg.norm(ahead)
        left = np.cross([0.0, 0.0, 1.0], ahead)  # counter-clockwise seen from above
        return ahead, left

    def to_head(self, room_vectors: np.ndarray) -> np.ndarray:
        """Room-frame vectors (K, 3) in the head frame (x ahead, y left, z up)."""
        ahead, left = self._head_axes()
        return np.stack([room_vectors @ ahead, room_vectors @ left, room_vectors[:, 2]], axis=-1)


def cache_dir() -> Path:
    root = os.environ.get("BAST_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "bast")
    return Path(root) / "brir"


def cache_key(spec: HallSpec, azimuths_deg, hrirs: IRSet, elevations_deg=None, distances_m=None) -> str:
    """Hash of everything the bank depends on: hall, directions, distances, HRIR data, algorithm."""
    h = hashlib.sha256()
    fields = dataclasses.asdict(spec)
    if fields["wall_factors"] is None:  # so the default hall keeps the key it always had
        del fields["wall_factors"]
    h.update(json.dumps(fields, sort_keys=True).encode())
    h.update(np.asarray(azimuths_deg, dtype=np.float64).tobytes())
    if elevations_deg is not None and np.any(np.asarray(elevations_deg) != 0):  # banks on the plane keep their key
        h.update(np.broadcast_to(np.asarray(elevations_deg, dtype=np.float64), np.shape(azimuths_deg)).tobytes())
    h.update(np.ascontiguousarray(hrirs.ir).tobytes())
    h.update(np.asarray(hrirs.azimuth_deg).tobytes() + np.asarray(hrirs.elevation_deg).tobytes())
    h.update(f"alg{ALGORITHM_VERSION}".encode())
    if distances_m is not None:  # banks at the sphere's one radius keep their key
        h.update(b"distances" + np.asarray(distances_m, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def hall_brirs(azimuths_deg, hrirs: IRSet, spec: HallSpec = HallSpec(), cache: bool = True,
               elevations_deg=None, distances_m=None) -> IRSet:
    """The hall's BRIRs at `azimuths_deg` (and `elevations_deg`: one, or one per
    azimuth; default 0), at `distances_m` when given (`build_hall`), from the cache when
    built before."""
    path = cache_dir() / f"hall-{cache_key(spec, azimuths_deg, hrirs, elevations_deg, distances_m)}.sofa"
    if cache and path.exists():
        try:
            return read_sofa(path)
        except ValueError:
            path.unlink()  # a damaged cache entry is rebuilt, not trusted
    bank = build_hall(azimuths_deg, hrirs, spec, elevations_deg, distances_m)
    if cache:
        save_bank(path, bank, spec)
    return bank


def save_bank(path, bank: IRSet, spec: HallSpec) -> Path:
    attrs = {
        "Title": "bast lecture hall BRIRs (pyroomacoustics image sources + HRIR-shaped diffuse tail)",
        "Comment": f"HRIRs: {bank.attrs.get('HRIRSource', '')}",
        "History": f"built by bast {__version__}, algorithm {ALGORITHM_VERSION}",
        "BastHallSpec": json.dumps(dataclasses.asdict(spec)),
        **{k: v for k, v in bank.attrs.items() if k.startswith("Bast")},
    }
    return write_sofa(
        path,
        bank,
        conventions="GeneralFIR",
        attrs=attrs,
        source_positions=spec.source_positions(bank.azimuth_deg, bank.elevation_deg,
                                               bank.distance_m if np.ptp(bank.distance_m) > 1e-6 else None),
        listener_position=spec.listener_m,
        listener_view=spec.view,
        room={"corner_a": (0.0, 0.0, 0.0), "corner_b": spec.size_m},
    )


# --------------------------------------------------------------------------- simulation


def _omni_rir(spec: HallSpec, absorption: float, source: np.ndarray) -> np.ndarray:
    """Hybrid (image sources + ray tracing) RIR of an omni receiver at the head centre."""
    pra.random.seed(spec.seed)
    room = pra.ShoeBox(
        list(spec.size_m), fs=FS, max_order=3,
        materials=spec.materials(absorption),
        air_absorption=False, ray_tracing=True,
    )
    room.set_ray_tracing(n_rays=spec.n_rays)
    room.add_source(list(source))
    room.add_microphone(list(spec.listener_m))
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=float)


def calibrate_absorption(spec: HallSpec, iterations: int = 4, tolerance: float = 0.02):
    """Absorption for which the simulated decay (T20, 500 Hz and 1 kHz) meets rt60_s,
    and that simulation's omni RIR. Starts from Eyring and scales -ln(1 - alpha), which
    is inversely proportional to the decay time."""
    source = spec.source_positions([0.0])[0]
    alpha = spec.eyring_absorption()
    for _ in range(iterations):
        rir = _omni_rir(spec, alpha, source)
        measured = np.mean([acoustics.decay_time(acoustics.octave_filter(rir, fc, FS), FS) for fc in (500.0, 1000.0)])
        if abs(measured / spec.rt60_s - 1) <= tolerance:
            break
        alpha = float(1.0 - (1.0 - alpha) ** (measured / spec.rt60_s))
        alpha = min(max(alpha, 1e-3), 0.99)
    return alpha, rir


def late_decay(rir: np.ndarray, spec: HallSpec, centres=acoustics.OCTAVES_HZ) -> tuple[np.ndarray, np.ndarray]:
    """Per band of `acoustics.band_split`: decay time (s) and the energy after the mixing
    time (sum of squares), both from the omni RIR."""
    bands = acoustics.band_split(rir, FS, centres)
    start = int(round(spec.mixing_time_s * FS))
    t60 = np.array([acoustics.decay_time(b[start:], FS, (-5.0, -25.0)) for b in bands])
    t60 = np.where(np.isfinite(t60), t60, spec.rt60_s)
    energy = np.array([np.sum(b[start:] ** 2) for b in bands])
    return t60, energy


def _nearest(dirs_head: np.ndarray, hrirs: IRSet) -> np.ndarray:
    """Index of the HRIR nearest to each direction (K, 3)."""
    unit = dirs_head / np.linalg.norm(dirs_head, axis=-1, keepdims=True)
    return np.argmax(unit @ hrirs.directions().T, axis=1)


def fractional_delays(delays: np.ndarray, taps: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Integer start sample (K,) and Hann-windowed sinc kernels (K, taps) that delay by
    `delays` (in samples, fractional): band-limited, without the pre-ringing of a bare
    sinc (as pyroomacoustics renders its image sources)."""
    start = np.floor(delays).astype(int) - taps // 2
    x = np.arange(taps)[None, :] - (delays - start)[:, None]
    window = 0.5 + 0.5 * np.cos(np.pi * x / (taps // 2))
    return start, np.sinc(x) * np.where(np.abs(x) < taps // 2, window, 0.0)


def _add_at(out: np.ndarray, start: np.ndarray, pulses: np.ndarray) -> None:
    """out[c, start[k] + j] += pulses[k, c, j], for out (C, n); what falls outside is cut."""
    n, length = out.shape[-1], pulses.shape[-1]
    idx = start[:, None] + np.arange(length)[None, :]  # (K, L)
    ok = (idx >= 0) & (idx < n)
    for c in range(out.shape[0]):
        out[c] += np.bincount(idx[ok], pulses[:, c, :][ok], minlength=n)[:n]


def _early(spec: HallSpec, azimuths_deg, elevations_deg, alpha: float, hrirs: IRSet, exact: np.ndarray,
           n: int) -> np.ndarray:
    """Binaural early part (A, 2, n) from pyroomacoustics' image sources.

    Each image arrives at delay d/c with gain damping/d (pyroomacoustics' scale: 1 at 1 m)
    through the HRIR pair nearest its 3-D direction in the head's frame; the direct sound
    uses the exact HRIR of its direction. Images are taken without the hybrid model's scattering loss: until the mixing
    time they carry all the reflected energy.
    """
    horizon = spec.mixing_time_s + spec.crossfade_s
    max_order = int(np.ceil(horizon * SPEED_OF_SOUND / min(spec.size_m))) + 1
    room = pra.ShoeBox(list(spec.size_m), fs=FS, max_order=max_order,
                       materials=spec.materials(alpha), air_absorption=False)
    sources = spec.source_positions(azimuths_deg, elevations_deg)
    for s in sources:
        room.add_source(list(s))
    room.add_microphone(list(spec.listener_m))
    room.image_source_model()

    out = np.zeros((len(sources), 2, n))
    for a, src in enumerate(room.sources):
        vec = src.images.T - np.asarray(spec.listener_m)  # (K, 3)
        dist = np.linalg.norm(vec, axis=-1)
        keep = dist <= horizon * SPEED_OF_SOUND
        vec, dist = vec[keep], dist[keep]
        gain = np.asarray(src.damping)[:, keep].mean(axis=0) / dist
        which = _nearest(spec.to_head(vec), hrirs)
        which[np.argmin(dist)] = exact[a]  # the direct path
        start, kernels = fractional_delays(dist / SPEED_OF_SOUND * FS)
        pulses = fftconvolve((gain[:, None] * kernels)[:, None, :], hrirs.ir[which], axes=-1)  # (K, 2, L)
        _add_at(out[a], start, pulses)
    return out


def _tail(rng: np.random.Generator, spec: HallSpec, hrirs: IRSet, t60: np.ndarray, energy: np.ndarray,
          n: int, centres=acoustics.OCTAVES_HZ) -> np.ndarray:
    """Binaural late tail (2, n): random arrivals from uniformly random directions, each
    through its HRIR pair, shaped per band to the omni RIR's decay from the mixing time on.

    The same arrivals through an omni receiver (plain impulses) give the reference power
    per band, so the tail has the omni decay's energy as heard through the head."""
    taps = hrirs.ir.shape[-1]
    count = rng.poisson(spec.arrivals_per_s * (n + taps) / FS)
    times = rng.integers(0, n + taps, count)  # shifted by -taps below: dense from sample 0
    signs = rng.choice([-1.0, 1.0], count)
    dirs = rng.normal(size=(count, 3))  # isotropic
    which = _nearest(dirs, hrirs)
    ears = np.zeros((2, n))
    _add_at(ears, times - taps, signs[:, None, None] * hrirs.ir[which])
    omni = np.zeros((1, n))
    _add_at(omni, times - taps, signs[:, None, None])
    omni = omni[0]

    ear_bands = acoustics.band_split(ears, FS, centres)  # (B, 2, n)
    omni_power = np.mean(acoustics.band_split(omni, FS, centres) ** 2, axis=-1)  # (B,)
    start = int(round(spec.mixing_time_s * FS))
    k = np.arange(n) - start
    tail = np.zeros((2, n))
    for b in range(len(centres)):
        delta = acoustics.LN_1E6 / (t60[b] * FS)  # energy decay per sample
        e0 = energy[b] * (1.0 - np.exp(-delta))  # power at the mixing time: sum over k>=0 = energy
        envelope = np.sqrt(e0 * np.exp(-delta * k) / omni_power[b])
        tail += ear_bands[b] * envelope
    return tail


def build_hall(azimuths_deg, hrirs: IRSet, spec: HallSpec = HallSpec(), elevations_deg=None,
               distances_m=None) -> IRSet:
    """Simulate the hall's BRIRs at `azimuths_deg` and `elevations_deg` (one, or one per
    azimuth; default 0), on the sphere of radius `spec.distance_m`.

    With `distances_m` (G,): the bank at every direction at each of those distances,
    distance-major (G x A entries, `distance_m` per entry). The room is calibrated once and
    each direction has one late tail whatever the distance: diffuse-field theory's late
    energy, independent of where the source stands; the early part (direct sound and
    reflections until the mixing time) is the image-source model with the source at each
    distance, so the direct-to-reverberant ratio falls with distance as in the room."""
    azimuths = np.atleast_1d(np.asarray(azimuths_deg, dtype=float))
    elevations = np.broadcast_to(np.asarray(0.0 if elevations_deg is None else elevations_deg, dtype=float),
                                 azimuths.shape).copy()
    exact = hrirs.indices(azimuths, elevations)  # the direct sound needs the set's own directions
    alpha, rir = calibrate_absorption(spec)
    t60, energy = late_decay(rir, spec)
    n = spec.n_samples
    radii = [spec.distance_m] if distances_m is None else [float(d) for d in np.atleast_1d(distances_m)]

    t = np.arange(n) / FS
    ramp = np.clip((t - spec.mixing_time_s) / spec.crossfade_s, 0.0, 1.0)
    fade_in, fade_out = np.sin(0.5 * np.pi * ramp), np.cos(0.5 * np.pi * ramp)  # power-complementary
    rng = np.random.default_rng(spec.seed)
    tails = [_tail(rng, spec, hrirs, t60, energy, n) * fade_in for _ in azimuths]  # the draws of one radius
    out = np.empty((len(radii) * len(azimuths), 2, n), dtype=np.float32)
    for g, radius in enumerate(radii):
        early = _early(dataclasses.replace(spec, distance_m=radius), azimuths, elevations, alpha, hrirs, exact, n)
        for a in range(len(azimuths)):
            out[g * len(azimuths) + a] = early[a] * fade_out + tails[a]
    attrs = {
        "HRIRSource": hrirs.attrs.get("Title") or hrirs.source,
        "BastAbsorption": f"{alpha:.5f}",
        "BastLateT60": json.dumps(dict(zip(map(str, acoustics.OCTAVES_HZ), np.round(t60, 4).tolist()))),
    }
    return IRSet(
        ir=out, fs=FS, azimuth_deg=np.tile(azimuths % 360.0, len(radii)), elevation_deg=np.tile(elevations, len(radii)),
        distance_m=np.repeat(np.asarray(radii, dtype=float), len(azimuths)), conventions="GeneralFIR",
        source="lecture hall (simulated)", attrs=attrs,
    )
