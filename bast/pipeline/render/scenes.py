"""Stage 1 for sound scenes: mono sounds to binaural scenes with overlapping, moving events.

    refs = DefaultCorpus(n_clips=200).list_clips()
    summary = render_scenes(refs, "out/scenes", ScenesConfig(count=100, moving=0.5))

The same stage runner as `spatialize` (bast/pipeline/stage/runner.py: lock, pinned parameters,
resume, dask, failures file, manifest) and the same conditions (bast/pipeline/render/conditions.py
`layout`: heads, the hall or generated rooms, measured BRIRs, test-only heads and rooms)
and split by sound (`assign_splits`): a scene of a split draws its events only from that
split's sounds, so no sound of a test scene is in a training scene. Each scene is rendered
in every condition of its split (the same events in each), and the scenes of a split are
grouped into shards of `scenes_per_shard`, one shard per (group, condition).

The scene model and labels: bast/pipeline/render/scenemodel.py; rendering moving sources:
bast/pipeline/render/moving.py; the shard layout: docs/scenes.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bast import __version__, options
from bast.conventions import ENVIRONMENTS, FS, LABEL_HOP_S
from bast.datasets.base import ClipRef, load_clip
from bast.errors import ClipError, ConfigError, SofaError
from bast.pipeline.render import distance as distance_mod
from bast.pipeline.render import noise as noise_mod
from bast.pipeline.render.clips import ClipPolicy, prepare
from bast.pipeline.irs.hall import HallSpec
from bast.pipeline.irs.interpolate import Interpolator
from bast.pipeline.irs.sources import unique_directions
from bast.pipeline.render.moving import Lookup, render
from bast.pipeline.irs.rooms import RoomRanges
from bast.pipeline.stage.runner import Stage, StageSummary, run_stage
from bast.pipeline.render.scenemodel import LABEL_COLUMNS, Event, draw_events, label_rows, parse_range, scene_counts
from bast.pipeline.stage.shards import ENV_NAMES, SPLITS, ShardInfo, StageError, shard_name, write_shard
from bast.pipeline.irs.sofa import IRSet, read_sofa
from bast.pipeline.render.conditions import (Condition, SpatializeConfig, assemble_irs, assign_splits, conditions_record,
                                             layout)
from bast.pipeline.render.outputs import check_output, summarise_shards, write_irs

STAGE = "scenes"


# Bounds of what one number may ask of a scenes run (bast.options.budget names the size).
MAX_SCENES = 1_000_000
SCENE_PLAN_BYTES = 4096  # a scene's id, events and label rows while the run is planned and drawn
MAX_EVENTS = 1000  # per scene
EVENT_BYTES = 1024
MAX_SPEED = 360.0  # deg/s
# BRIRs one room's bank may hold with --distance (directions x grid distances): each is an
# image-source simulation (about 2 ms) and 2 x its length in float32 (128 KB in the default
# hall) in every worker.
MAX_ROOM_BRIRS = 50_000


@dataclass(frozen=True)
class ScenesConfig:
    count: int = 100  # scenes over all splits
    duration_s: float = 5.0
    max_overlap: int = 2  # events at once, per 100 ms label frame
    events: tuple[int, int] = (2, 8)  # events drawn per scene (fewer when they do not fit)
    max_event_s: float = 2.0  # a longer sound is cut to its loudest window of this length
    directions: tuple[tuple[float, float], ...] = tuple((float(a), 0.0) for a in range(0, 360, 10))
    moving: float = 0.0  # share of moving events
    speed: tuple[float, float] = (10.0, 60.0)  # deg/s
    environments: tuple[str, ...] = ENVIRONMENTS
    policy: ClipPolicy = ClipPolicy()  # loading: min_ms, normalize (to its RMS target), silence
    seed: int = 0
    val_fraction: float = 0.25
    test_fraction: float = 0.1
    scenes_per_shard: int = 20
    hrir: str | tuple[str, ...] | None = None
    brir: str | tuple[str, ...] | None = None
    test_hrir: tuple[str, ...] = ()
    rooms: int = 0
    test_rooms: int = 0
    rt60_s: float = 0.8
    tolerance_deg: float = 0.0
    snr_db: tuple[float, float] | None = None
    noise: str = "diffuse"
    room_ranges: RoomRanges = RoomRanges()
    interpolate: bool = False  # HRIRs interpolated at the sources' directions (else the nearest measured)
    distance: tuple[float, float] | None = None  # m, drawn per event (None: the IR set's one distance)

    def __post_init__(self):
        if self.snr_db is not None:
            object.__setattr__(self, "snr_db", noise_mod.parse_snr(self.snr_db))
        events = parse_range(self.events, "--events")
        if any(v != int(v) for v in events) or events[1] < 1:  # 0 events: a scene of silence, not a plan
            raise ConfigError(f"--events {self.events!r}: whole numbers of events per scene, N or LO:HI, at least "
                              "one at the most (LO may be 0)")
        options.budget(events[1], EVENT_BYTES, f"--events {self.events!r}", "events per scene", most=MAX_EVENTS)
        object.__setattr__(self, "events", tuple(int(v) for v in events))
        speed = parse_range(self.speed, "--speed")
        if speed[1] > MAX_SPEED:
            raise ConfigError(f"--speed {self.speed!r}: at most {MAX_SPEED:g} deg/s (one turn around the head a "
                              "second; DCASE's moving sources go 10-40 deg/s)")
        object.__setattr__(self, "speed", speed)
        if self.distance is not None:
            object.__setattr__(self, "distance", distance_mod.check_range(self.distance))
            if self.brir:
                raise ConfigError(f"--distance {self.distance[0]:g}:{self.distance[1]:g}: measured BRIRs (--brir) "
                                  "have one source distance; --distance needs simulated rooms (the hall, --rooms) "
                                  "or anechoic")
        pairs = np.asarray(self.directions, dtype=float).reshape(-1, 2)
        if not len(pairs) or not np.all(np.isfinite(pairs)) or np.any(np.abs(pairs[:, 1]) > 90.0):
            raise ConfigError("directions: give at least one, with finite azimuths and elevations in [-90, 90] deg")
        object.__setattr__(self, "directions", tuple((float(a % 360.0), float(e)) for a, e in unique_directions(pairs)))
        options.count(self.count, "--count", 1)
        options.budget(self.count, SCENE_PLAN_BYTES, f"--count {self.count}", "scenes", most=MAX_SCENES)
        options.number(self.duration_s, "--duration", lo=0.1, hi=600, unit="s")
        options.count(self.max_overlap, "--max-overlap", 1, MAX_EVENTS)  # label track slots per frame
        if not 0 <= self.moving <= 1:
            raise ConfigError(f"--moving {self.moving:g}: a share between 0 and 1")
        if not 0 < self.max_event_s:
            raise ConfigError(f"--max-event {self.max_event_s:g}: a positive length in seconds")
        if self.max_event_s * 1000 < self.policy.min_ms:
            raise ConfigError(f"--max-event {self.max_event_s:g} s is shorter than --min-ms {self.policy.min_ms:g}")
        options.count(self.scenes_per_shard, "--scenes-per-shard", 1)
        # one shard's audio is held at once while it renders: float32, 2 ears
        options.budget(self.scenes_per_shard, self.n_samples * 2 * 4, f"--scenes-per-shard {self.scenes_per_shard} "
                       f"of {self.duration_s:g} s", "scenes in memory at once")

    @property
    def n_samples(self) -> int:
        return int(round(self.duration_s * FS))

    def spatialize_config(self) -> SpatializeConfig:
        """The Stage 1 configuration whose conditions (heads, rooms: their sphere of sources
        fitted to the grid's elevations) the scenes use."""
        return SpatializeConfig(environments=self.environments, seed=self.seed, hrir=self.hrir, brir=self.brir,
                                test_hrir=self.test_hrir, rooms=self.rooms, test_rooms=self.test_rooms,
                                rt60_s=self.rt60_s, tolerance_deg=self.tolerance_deg, room_ranges=self.room_ranges,
                                directions=self.directions, interpolate=self.interpolate)

    def distance_grid(self) -> tuple[float, ...]:
        """The distances rooms' banks are built at (bast/pipeline/render/distance.py); () without --distance."""
        return () if self.distance is None else tuple(distance_mod.distance_grid(*self.distance).tolist())


@dataclass(frozen=True)
class SceneTask:
    """One group of scenes of one split, rendered in each condition of `shards` ((index,
    Condition, IR file) triples). `pool` is the split's sounds: paths, no arrays."""

    split: str
    scene_ids: tuple[str, ...]
    pool: tuple[ClipRef, ...]
    shards: tuple[tuple[int, Condition, str], ...]
    config: ScenesConfig
    categories: tuple[str, ...]
    out_dir: str
    attrs: tuple = ()


# --------------------------------------------------------------------------- impulse responses


def scene_irs(config: ScenesConfig, client=None, the_layout=None) -> dict[str, tuple[Condition, IRSet, dict]]:
    """`assemble_irs` (bast/pipeline/render/conditions.py) for scenes: IR key -> (condition,
    the IR set its scenes render with, how to save it).

    Anechoic: the head's whole HRIR set (the nearest measured direction is heard, or with
    `interpolate` HRIRs interpolated from it). A measured BRIR file: its whole set (nearest;
    never interpolated). A simulated room: Stage 1's bank (bast/pipeline/irs/rooms.py: the
    source on a sphere around the head, each image source through the HRIR of its own 3-D
    direction) at `bank_directions`, and with --distance at each distance of the grid
    (`ScenesConfig.distance_grid`). Every grid direction must be in every set (within
    --ir-tolerance), or interpolable from the head."""
    grid = np.asarray(config.directions)
    the_layout = the_layout or layout(config.spatialize_config())
    distances = config.distance_grid()
    longest = max((r.n_samples for r in the_layout.rooms.values() if isinstance(r, HallSpec)), default=0)

    def fit(cond: Condition, irs: IRSet, kind: str) -> IRSet:
        check_grid(irs, grid, config.tolerance_deg, cond.key, interpolated=config.interpolate and kind == "head")
        return irs

    def where(head_set: IRSet) -> np.ndarray:
        directions = bank_directions(head_set, grid, config.moving > 0, config.interpolate)
        if distances:  # a room's bank: every direction at every distance, float32, both ears
            options.budget(len(directions) * len(distances), 2 * 4 * longest,
                           f"--distance {config.distance[0]:g}:{config.distance[1]:g}",
                           f"BRIRs per room ({len(directions)} directions x {len(distances)} distances)",
                           most=MAX_ROOM_BRIRS)
        return directions

    return assemble_irs(the_layout, bank_directions=where, tolerance_deg=config.tolerance_deg,
                        interpolate=config.interpolate, fit=fit, client=client, distances=distances)


def check_scene_layout(config: ScenesConfig, the_layout) -> None:
    """With --distance, every room of the layout holds the range (distance.check_rooms)."""
    if config.distance is not None:
        distance_mod.check_rooms(config.distance, the_layout.rooms, np.asarray(config.directions)[:, 1])


def bank_directions(head_set: IRSet, grid: np.ndarray, moving: bool, interpolate: bool) -> np.ndarray:
    """(D, 2) directions a simulated room's bank is built at: the grid (still events stand
    there) and, when events move, every direction the head measured within the grid's
    elevations (a moving source is heard from the nearest of them). Without `interpolate`
    Stage 1 maps each to the head's nearest within the tolerance; with it, the direct sound
    of a grid direction is interpolated there."""
    if not moving:
        return grid
    lo, hi = grid[:, 1].min() - 1e-6, grid[:, 1].max() + 1e-6
    band = (head_set.elevation_deg >= lo) & (head_set.elevation_deg <= hi)
    measured = np.stack([head_set.azimuth_deg[band], np.round(head_set.elevation_deg[band], 6)], axis=-1)
    return unique_directions(np.concatenate([measured, grid]) if interpolate or not len(measured) else measured)


def check_grid(irs: IRSet, grid: np.ndarray, tolerance_deg: float, key: str, interpolated: bool = False) -> None:
    """Refuse a grid the set cannot render: Stage 1's lookup (`IRSet.indices`, within the
    tolerance), or with `interpolated` the interpolation's reach."""
    try:
        if interpolated:
            Interpolator(irs).weights(grid[:, 0], grid[:, 1])
        else:
            irs.indices(grid[:, 0], grid[:, 1], tolerance_deg)
    except SofaError as exc:
        raise ConfigError(f"{key}: {exc}") from None


@functools.lru_cache(maxsize=16)
def _irset(path: str, mtime_ns: int) -> IRSet:
    return read_sofa(path)


@functools.lru_cache(maxsize=4)
def _interpolator(path: str, mtime_ns: int) -> Interpolator:
    return Interpolator(_irset(path, mtime_ns))


def load_lookup(path: str, interpolate: bool = False, distance: str | None = None) -> Lookup:
    """The IR lookup of an IR file under irs/ (with `interpolate`: HRIRs interpolated from
    it; `distance`: how sources' own distances are heard, moving.Lookup), kept for the
    worker's lifetime."""
    mtime = os.stat(path).st_mtime_ns
    return Lookup(_irset(path, mtime), _interpolator(path, mtime) if interpolate else None, distance)


# --------------------------------------------------------------------------- one scene


def load_event(ref: ClipRef, policy: ClipPolicy, max_samples: int) -> tuple[np.ndarray, list[str]]:
    """A sound as an event: loaded and prepared by the clip policy (down-mix, resampling,
    checks, its loudest `max_samples` when longer), without padding (the zeros around a
    sound are trimmed), at the policy's RMS target over its own length."""
    audio, fs = load_clip(ref)
    pieces, notes = prepare(audio, fs, dataclasses.replace(policy, samples=max_samples, normalize="none",
                                                           min_ms=min(policy.min_ms, 1000.0 * max_samples / policy.fs)))
    x = pieces[0].astype(np.float64)
    nz = np.flatnonzero(x)
    x = x[nz[0]:nz[-1] + 1]
    notes = [n for n in notes if not n.startswith("zero-padded")]
    if policy.normalize == "rms":
        x *= 10.0 ** (policy.target_rms_dbfs / 20.0) / np.sqrt(np.mean(x**2))
    elif policy.normalize == "peak":
        x *= policy.target_peak / np.max(np.abs(x))
    return x, notes


def scene_rng(seed: int, *parts) -> np.random.Generator:
    """A generator from the seed and names (a scene id, a condition): independent of how
    scenes are grouped into shards."""
    digest = hashlib.sha256("\x1f".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def draw_scene(scene_id: str, config: ScenesConfig, pool: dict[str, list[str]],
               length_of: Callable[[str], int | None]) -> list[Event]:
    """The events of one scene, from the seed and the scene's id alone."""
    rng = scene_rng(config.seed, "scene", scene_id)
    n_events = int(rng.integers(config.events[0], config.events[1] + 1))
    return draw_events(rng, pool, length_of, n_samples=config.n_samples, n_events=n_events,
                       max_overlap=config.max_overlap, grid=config.directions, moving=config.moving,
                       speed=config.speed, distance=config.distance)


def mix(events: list[Event], audio_of: Callable[[str], np.ndarray], irs: IRSet | Lookup, n_samples: int) -> np.ndarray:
    """(2, n_samples) float64: the events heard through `irs` (an IRSet: its nearest
    measured directions; or a moving.Lookup) and summed; tails past the scene's end are cut.
    Through a Lookup of distance "free" (anechoic with --distance) an event with a distance
    of its own gets its propagation (distance.propagate), heard from `lead` samples before
    its onset."""
    out = np.zeros((2, n_samples))
    free = isinstance(irs, Lookup) and irs.distance == "free"
    for e in events:
        wet = render(audio_of(e.clip_id)[:e.length], e.trajectory, irs, n_out=n_samples - e.onset)
        if not (free and e.trajectory.distance_m is not None):
            out[:, e.onset:] += wet
            continue
        wet = wet[:, :e.length + irs.taps - 1]  # the rest is silence: not worth delaying
        lead, wet = distance_mod.propagate(wet, e.trajectory, distance_mod.hrir_distance(irs.irs, e.trajectory),
                                           e.length)
        start = e.onset - lead
        wet = wet[:, max(0, -start):n_samples - start]  # what falls before the scene or after it is cut
        out[:, max(0, start):max(0, start) + wet.shape[-1]] += wet
    return out


def scene_noise(bank: np.ndarray, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(2, n) noise from a head's noise bank (bast/pipeline/render/noise.py), windows taken with
    wrap-around (the diffuse bank wraps seamlessly); directional: one to three sources."""
    def window(x):  # (2, L) -> (2, n) from a random start
        return np.take(x, int(rng.integers(0, x.shape[-1])) + np.arange(n), axis=-1, mode="wrap")

    if kind == "diffuse":
        return window(bank).astype(np.float64)
    count = int(rng.integers(1, min(3, bank.shape[0]) + 1))
    return sum(window(bank[s]).astype(np.float64) for s in rng.choice(bank.shape[0], count, replace=False))


def add_scene_noise(scene: np.ndarray, kind: str, bank: np.ndarray, snr_range, seed: int, scene_id: str,
                    condition: str) -> float:
    """Add noise to `scene` (2, n) in place at an SNR drawn from (seed, scene id) over the
    whole scene (both ears); returns it (+inf for a silent scene: no noise added)."""
    level = scene_rng(seed, "snr", scene_id).uniform(*snr_range) if snr_range[1] > snr_range[0] else snr_range[0]
    noise = scene_noise(bank, kind, scene.shape[-1], scene_rng(seed, "noise", scene_id, condition))
    e_clean, e_noise = float(np.sum(scene**2)), float(np.sum(noise**2))
    if e_clean <= 0 or e_noise <= 0:
        return noise_mod.NO_NOISE
    scene += noise * np.sqrt(e_clean / e_noise / 10 ** (level / 10))
    return float(level)


# --------------------------------------------------------------------------- one task (a worker)


def _ragged(parts: list[np.ndarray], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)
    empty = np.zeros((0,) if width is None else (0, width))
    return (np.concatenate(parts) if parts else empty), offsets


class _EventSounds:
    """The pool's sounds as events (`load_event`), each loaded on its first use; a sound that
    fails to load is None, its failure recorded once, and the warnings are counted by kind."""

    def __init__(self, pool: tuple[ClipRef, ...], policy: ClipPolicy, max_samples: int):
        self.refs = {r.clip_id: r for r in pool}
        self.policy, self.max_samples = policy, max_samples
        self.audio: dict[str, np.ndarray | None] = {}
        self.failures: list[dict] = []
        self.warnings: Counter = Counter()

    def length_of(self, clip_id: str) -> int | None:
        if clip_id not in self.audio:
            ref = self.refs[clip_id]
            try:
                self.audio[clip_id], notes = load_event(ref, self.policy, self.max_samples)
                self.warnings.update(re.sub(r"\d+(\.\d+)?", "N", n) for n in notes)
            except ClipError as exc:
                self.audio[clip_id] = None
                self.failures.append({"clip_id": clip_id, "path": ref.locator, "reason": str(exc)})
            except Exception as exc:  # an unforeseen library error is one sound's problem, not the run's
                self.audio[clip_id] = None
                self.failures.append({"clip_id": clip_id, "path": ref.locator,
                                      "reason": f"unexpected error: {type(exc).__name__}: {exc}"})
        return None if self.audio[clip_id] is None else len(self.audio[clip_id])


def event_arrays(scene_ids: tuple[str, ...], scenes: dict[str, list[Event]],
                 distance: bool = False) -> dict[str, np.ndarray]:
    """The events of the scenes, in scene order, as the shard's event_* columns (ragged:
    scene i's events are rows event_offsets[i] to event_offsets[i + 1]); with `distance`
    (scenes with --distance) their start distance (m) and its rate (m/s) too."""
    events = [e for sid in scene_ids for e in scenes[sid]]
    extra = {"event_distance_m": np.array([e.trajectory.distance_m for e in events], dtype=np.float32),
             "event_distance_rate": np.array([e.trajectory.distance_rate for e in events], dtype=np.float32),
             } if distance else {}
    return {**extra,
        "event_clip_id": np.array([e.clip_id for e in events], dtype=object),
        "event_category": np.array([e.category for e in events], dtype=object),
        "event_onset_s": np.array([e.onset / FS for e in events], dtype=np.float64),
        "event_duration_s": np.array([e.length / FS for e in events], dtype=np.float64),
        "event_azimuth_deg": np.array([e.trajectory.azimuth_deg for e in events], dtype=np.float32),
        "event_elevation_deg": np.array([e.trajectory.elevation_deg for e in events], dtype=np.float32),
        "event_azimuth_rate": np.array([e.trajectory.azimuth_rate for e in events], dtype=np.float32),
        "event_elevation_rate": np.array([e.trajectory.elevation_rate for e in events], dtype=np.float32),
        "event_offsets": np.cumsum([0] + [len(scenes[s]) for s in scene_ids]).astype(np.int64),
    }


def render_condition(task: SceneTask, cond: Condition, ir_path: str, scenes: dict[str, list[Event]],
                     audio_of: Callable[[str], np.ndarray], category_index: dict[str, int]) -> dict[str, np.ndarray]:
    """The task's scenes heard in one condition, noise added when asked: the shard's audio,
    snr_db, labels and label_offsets columns."""
    config = task.config
    n, s = len(task.scene_ids), config.n_samples
    lookup = load_lookup(ir_path, config.interpolate and cond.env == "anechoic",
                         None if config.distance is None else "free" if cond.env == "anechoic" else "grid")
    audio = np.empty((n, 2, s), dtype=np.float32)
    snr = np.full(n, noise_mod.NO_NOISE, dtype=np.float32)
    labels = []
    grid = np.asarray(config.directions)
    bank = (noise_mod.noise_bank(config.noise, cond.hrir, grid[:, 0], config.seed,
                                 grid[:, 1] if np.any(grid[:, 1]) else ())
            if config.snr_db is not None else None)
    for i, sid in enumerate(task.scene_ids):
        scene = mix(scenes[sid], audio_of, lookup, s)
        if bank is not None:
            snr[i] = add_scene_noise(scene, config.noise, bank, config.snr_db, config.seed, sid,
                                     f"{cond.head}/{cond.room}")
        audio[i] = scene
        labels.append(label_rows(scenes[sid], category_index, s, irs=lookup.irs))
    rows, offsets = _ragged(labels, len(LABEL_COLUMNS))
    return {"audio": audio, "snr_db": snr, "labels": rows.astype(np.float32), "label_offsets": offsets}


def run_task(task: SceneTask) -> list[ShardInfo]:
    """Draw the task's scenes, render each in every condition of the task, write one shard
    per condition."""
    t0 = time.perf_counter()
    config = task.config
    sounds = _EventSounds(task.pool, config.policy, int(round(min(config.max_event_s, config.duration_s) * FS)))
    pool: dict[str, list[str]] = {}
    for r in task.pool:
        pool.setdefault(r.category, []).append(r.clip_id)
    scenes = {sid: draw_scene(sid, config, pool, sounds.length_of) for sid in task.scene_ids}
    category_index = {c: i for i, c in enumerate(task.categories)}
    events = event_arrays(task.scene_ids, scenes, config.distance is not None)
    n = len(task.scene_ids)
    infos = []
    for index, cond, ir_path in task.shards:
        rendered = render_condition(task, cond, ir_path, scenes, sounds.audio.__getitem__, category_index)
        arrays = {
            "audio": rendered["audio"],
            "scene_id": np.array(task.scene_ids, dtype=object),
            "split": np.full(n, task.split, dtype=object),
            "env": np.full(n, ENV_NAMES.index(cond.env), dtype=np.uint8),
            "head": np.full(n, cond.head, dtype=object),
            "room": np.full(n, cond.room, dtype=object),
            "snr_db": rendered["snr_db"],
            "labels": rendered["labels"],
            "label_offsets": rendered["label_offsets"],
            **events,
        }
        attrs = dict(task.attrs)
        attrs.update(env_names=json.dumps(list(ENV_NAMES)), environment=cond.env, split=task.split, head=cond.head,
                     room=cond.room)
        info = ShardInfo(index=index, path=f"shards/{shard_name(index)}", split=task.split, env=cond.env,
                         samples=n, clips=len(events["event_clip_id"]), sha256="", failures=sounds.failures,
                         warnings=dict(sounds.warnings), seconds=time.perf_counter() - t0, head=cond.head,
                         room=cond.room)
        infos.append(write_shard(Path(task.out_dir), info, arrays, attrs))
        t0 = time.perf_counter()
    return infos


# --------------------------------------------------------------------------- the stage


def scene_tasks(refs: list[ClipRef], config: ScenesConfig, conditions_by_split: dict, ir_paths: dict[str, str],
                out_dir: Path, attrs: dict) -> list[SceneTask]:
    """Scene tasks: the scenes of each split (ids train-00000, ...) in groups of
    scenes_per_shard, one shard per condition of the split."""
    splits = assign_splits(refs, config.seed, config.val_fraction, config.test_fraction)
    categories = category_list(refs)
    by_split = {s: tuple(r for r in refs if splits[r.clip_id] == s) for s in SPLITS}
    counts = scene_counts(config.count, {s: len(by_split[s]) for s in SPLITS})
    tasks, index = [], 0
    for split in SPLITS:
        ids = [f"{split}-{i:05d}" for i in range(counts[split])]
        for start in range(0, len(ids), config.scenes_per_shard):
            shards = tuple((index + k, c, ir_paths[c.key]) for k, c in enumerate(conditions_by_split[split]))
            index += len(shards)
            tasks.append(SceneTask(split, tuple(ids[start:start + config.scenes_per_shard]), by_split[split], shards,
                                   config, categories, str(out_dir), tuple(sorted(attrs.items()))))
    return tasks


def category_list(refs: list[ClipRef]) -> tuple[str, ...]:
    """The data set's classes, sorted: the category index of a label is a position here."""
    return tuple(sorted({r.category for r in refs}))


def _digest(irs: IRSet) -> str:
    h = hashlib.sha256(np.ascontiguousarray(irs.ir).tobytes())
    h.update(np.asarray(irs.azimuth_deg, dtype=np.float64).tobytes())
    h.update(np.asarray(irs.elevation_deg, dtype=np.float64).tobytes())
    return h.hexdigest()


def stage_params(refs: list[ClipRef], config: ScenesConfig, condition_sets: dict, source: dict) -> dict:
    clips = hashlib.sha256("\n".join(f"{r.clip_id}\t{r.recipe}\t{r.locator}\t{r.category}\t{r.split}"
                                     for r in refs).encode()).hexdigest()
    params = dataclasses.asdict(config)
    if not (config.rooms or config.test_rooms):
        del params["room_ranges"]
    if config.snr_db is None:
        del params["noise"]
    if config.distance is None:  # so runs without it keep their parameters (and shards) as they were
        del params["distance"]
    params.update(stage=STAGE, fs=FS, source=source, clips=len(refs), clips_sha256=clips,
                  label_hop_s=LABEL_HOP_S, ir_sha256={k: _digest(s) for k, (_, s, _) in condition_sets.items()},
                  bast_version=__version__)
    return json.loads(json.dumps(params))


def render_scenes(refs: list[ClipRef], out_dir, config: ScenesConfig = ScenesConfig(), *, client=None,
                  source: dict | None = None, overwrite: bool = False,
                  on_start: Callable[[int, int], None] | None = None,
                  on_shard: Callable[[ShardInfo, int], None] | None = None) -> StageSummary:
    """Render `config.count` scenes from `refs` into `out_dir` (docs/scenes.md); resumable.
    Progress counts scenes."""
    if not refs:
        raise StageError("no input sounds found")
    # OUT a folder that is no input nor inside one (as for spatialize), before any work
    check_output(out_dir, refs, config.spatialize_config(), source or {})
    the_layout = layout(config.spatialize_config())
    check_scene_layout(config, the_layout)
    condition_sets = scene_irs(config, client, the_layout)
    params = stage_params(refs, config, condition_sets, source or {})
    categories = category_list(refs)
    ir_paths: dict[str, str] = {}
    out_dir = Path(out_dir)

    def plan_tasks(out_dir: Path) -> list[SceneTask]:
        ir_paths.update(write_irs(out_dir, condition_sets))
        attrs = {"stage": STAGE, "fs": FS, "seed": config.seed, "bast_version": __version__,
                 "params": json.dumps(params, sort_keys=True), "categories": json.dumps(list(categories)),
                 "label_columns": json.dumps(list(LABEL_COLUMNS)), "label_hop_s": LABEL_HOP_S}
        return scene_tasks(refs, config, the_layout.splits, ir_paths, out_dir, attrs)

    def manifest_extra(summary: StageSummary, shards: list[ShardInfo]) -> dict:
        return {"categories": list(categories), "scene_seconds": config.duration_s, "label_hop_s": LABEL_HOP_S,
                "label_columns": list(LABEL_COLUMNS), "events": summary.clips, "inputs": len(refs),
                "inputs_failed": len(summary.failures), "warnings": summary.warnings,
                **conditions_record(the_layout, ir_paths, out_dir, config), **distance_record(config)}

    stage = Stage(
        name=STAGE, params=params, plan=plan_tasks, run_task=run_task,
        shards_of=lambda t: [(i, len(t.scene_ids)) for i, _, _ in t.shards],
        pending=lambda t, todo: dataclasses.replace(t, shards=kept) if (
            kept := tuple(s for s in t.shards if s[0] in todo)) else None,
        describe=lambda t: "shard " + ", ".join(f"{i} ({t.split}, {c.env}, {c.head}, {c.room})" for i, c, _ in t.shards),
        totals=summarise_shards, manifest_extra=manifest_extra,  # scenes count as spatialize's clips
        key_prefix=f"bast-scenes-{params['clips_sha256'][:8]}")
    return run_stage(stage, out_dir, client=client, overwrite=overwrite, on_start=on_start, on_shard=on_shard)


def distance_record(config: ScenesConfig) -> dict:
    """What a manifest records of --distance: the range, the rooms' grid and its error."""
    if config.distance is None:
        return {}
    return {"distance": {"range_m": list(config.distance), "room_grid_m": [round(d, 6) for d in config.distance_grid()],
                         "room_grid_step_db": distance_mod.GRID_STEP_DB,
                         "room_grid_max_relative_error": round(distance_mod.grid_error(), 4)}}


def read_scenes(directory, reader: str = "reading scenes", verify: bool = True) -> dict:
    """The manifest of a finished `bast-cli scenes` output; with `verify`, every shard
    checked as the manifest lists it (check_scene_shard) before the reader uses any."""
    from bast.errors import DataError
    from bast.pipeline.stage.shards import read_manifest

    directory = Path(directory)
    manifest = read_manifest(directory, STAGE, reader)
    if verify:
        try:
            listed = [(s["path"], int(s["samples"]), s.get("sha256")) for s in manifest["shards"]]
            duration = float(manifest["params"]["duration_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{directory / 'manifest.json'}: malformed manifest ({type(exc).__name__}: {exc}); "
                            f"re-run bast-cli scenes into {directory} to rewrite it") from None
        for rel, samples, sha256 in listed:
            check_scene_shard(directory / rel, samples, sha256, int(round(duration * FS)))
    return manifest


SCENE_LABELS = ("scene_id", "split", "env", "head", "room")  # one per scene


def check_scene_shard(path, samples: int, sha256: str | None, scene_samples: int) -> None:
    """One scene shard as its manifest lists it, as clip shards are checked
    (bast.pipeline.stage.shards.check_listed_shard: a regular file, the manifest's sha256,
    readable): `samples` scenes of 2 x `scene_samples` audio at 16 kHz, every per-scene
    label as long, label rows of the 6 LABEL_COLUMNS indexed by label_offsets, events by
    event_offsets. Errors name the shard as corrupt and how to rewrite it."""
    from bast.errors import DataError
    from bast.pipeline.stage.shards import check_listed_shard, check_ragged, rewrite_hint

    path = Path(path)
    layout = check_listed_shard(path, sha256, STAGE, ragged=("label_offsets", "event_offsets"))
    hint = rewrite_hint(path, STAGE)
    missing = [n for n in ("audio", "labels", "label_offsets") + SCENE_LABELS if n not in layout.shapes]
    if missing:
        raise DataError(f"{path}: corrupt, not a scene shard (missing {', '.join(missing)}); {hint}")
    if layout.shapes["audio"] != (samples, 2, scene_samples) or layout.attrs.get("fs") != FS:
        raise DataError(f"{path}: corrupt: audio of shape {layout.shapes['audio']} at {layout.attrs.get('fs')} Hz, "
                        f"the manifest lists ({samples}, 2, {scene_samples}) at {FS} Hz; {hint}")
    short = {n: layout.shapes[n][0] if layout.shapes[n] else 0 for n in SCENE_LABELS + ("snr_db",)
             if n in layout.shapes and (layout.shapes[n][0] if layout.shapes[n] else 0) != samples}
    if short:
        raise DataError(f"{path}: corrupt: label(s) {', '.join(f'{k} ({n} rows)' for k, n in short.items())} do "
                        f"not match its {samples} scenes; {hint}")
    if len(layout.shapes["labels"]) != 2 or layout.shapes["labels"][1] != len(LABEL_COLUMNS):
        raise DataError(f"{path}: corrupt: labels of shape {layout.shapes['labels']}, not (rows, "
                        f"{len(LABEL_COLUMNS)}); {hint}")
    check_ragged(path, layout, samples, "label_offsets", "labels", STAGE)
    if "event_offsets" in layout.shapes:
        check_ragged(path, layout, samples, "event_offsets", "event_clip_id", STAGE)
