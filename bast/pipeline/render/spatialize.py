"""Stage 1: mono clips to binaural clips at every direction in every environment.

    refs = FileCorpus("sounds/").list_clips()          # or DefaultCorpus(...).list_clips()
    with open_client(workers=2) as client:
        summary = spatialize(refs, "out/stage1", SpatializeConfig(), client=client)

Directions: the grid of `azimuths` x `elevations` (elevation 0 by default), or an explicit
list of (azimuth, elevation) pairs (`directions`: every direction a head measured, or a
CSV); each is the head's own nearest direction within `tolerance_deg`, or with
`interpolate` an HRIR interpolated at exactly that direction (docs/sphere.md).

The plan is deterministic from the clip list and the parameters: clips are split into
train/val/test by source clip (stratified by category, seeded), grouped into shards of a
few thousand samples, one shard per (split, condition, group of clips). A condition is an
environment class (`env`: anechoic or hall, any reverberant room), a head (`head`: an HRIR
set) and a room (`room`); see `conditions`. Each group of clips is one task: it loads its
clips, applies the clip policy, renders them in each condition of its split, adds noise when
asked (bast/pipeline/render/noise.py) and writes one shard per condition. A re-run with the same
parameters skips the shards already written. Designing studies with several heads, rooms
and SNRs: docs/transfer-study.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bast import __version__, options
from bast.conventions import CLIP_SAMPLES, DEFAULT_AZIMUTHS, ENVIRONMENTS, FS
from bast.datasets.base import ClipRef, load_clip
from bast.errors import ClipError, ConfigError
from bast.fileio import atomic_path
from bast.pipeline.render import noise as noise_mod
from bast.pipeline.render.clips import ClipPolicy, prepare
from bast.pipeline.irs.hall import HallSpec, save_bank
from bast.pipeline.irs.sources import check_azimuths, default_hrir_path, direction_grid, unique_directions
from bast.pipeline.render.static import Renderer
from bast.pipeline.irs.rooms import MAX_ROOMS, BankTask, RoomRanges, build_banks, draw_rooms, room_record
from bast.pipeline.stage.runner import Stage, StageSummary, run_stage
from bast.pipeline.stage.shards import ENV_NAMES, OWNED, SPLITS, ShardInfo, StageError, shard_name, write_shard
from bast.pipeline.irs.sofa import IRSet, read_sofa, write_sofa


def _paths(value) -> str | tuple[str, ...] | None:
    """One path stays a string (as older configs and params.json have it), several a tuple."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    value = tuple(str(v) for v in value)
    return None if not value else value[0] if len(value) == 1 else value


@dataclass(frozen=True)
class SpatializeConfig:
    azimuths: tuple[float, ...] = tuple(DEFAULT_AZIMUTHS.tolist())
    environments: tuple[str, ...] = ENVIRONMENTS
    policy: ClipPolicy = ClipPolicy()
    seed: int = 0
    val_fraction: float = 0.25  # of the training sounds (the paper's 75/25)
    test_fraction: float = 0.1  # of all sounds, used only when no sound is pinned to test
    samples_per_shard: int = 2500
    hrir: str | tuple[str, ...] | None = None  # SOFA HRIR set(s), the training heads; None = bundled MIT KEMAR
    brir: str | tuple[str, ...] | None = None  # measured BRIR SOFA file(s) for the hall; None = simulated
    rt60_s: float = 0.8
    tolerance_deg: float = 0.0
    test_hrir: tuple[str, ...] = ()  # heads only the test split hears (else the training heads)
    rooms: int = 0  # generated rooms for train/val (replace the default hall)
    test_rooms: int = 0  # generated rooms only the test split hears (else the training rooms)
    snr_db: tuple[float, float] | None = None  # (low, high) dB, drawn per sample; None = no noise
    noise: str = "diffuse"  # diffuse or directional
    room_ranges: RoomRanges = RoomRanges()
    elevations: tuple[float, ...] = (0.0,)  # the grid azimuths x elevations, unless `directions` is given
    directions: tuple[tuple[float, float], ...] | None = None  # explicit (azimuth, elevation) pairs
    interpolate: bool = False  # HRIRs interpolated at the requested directions (else nearest within tolerance)

    def __post_init__(self):
        object.__setattr__(self, "hrir", _paths(self.hrir))
        object.__setattr__(self, "brir", _paths(self.brir))
        object.__setattr__(self, "test_hrir", tuple(str(p) for p in (
            (self.test_hrir,) if isinstance(self.test_hrir, (str, os.PathLike)) else self.test_hrir or ())))
        if self.snr_db is not None:
            object.__setattr__(self, "snr_db", noise_mod.parse_snr(self.snr_db))
        object.__setattr__(self, "elevations", tuple(float(e) for e in np.atleast_1d(self.elevations)))
        if self.directions is not None:
            pairs = np.asarray(self.directions, dtype=float).reshape(-1, 2)
            if not len(pairs):
                raise ConfigError("no directions to render")
            object.__setattr__(self, "directions", tuple((float(a), float(e)) for a, e in pairs))
        if any(abs(e) > 90 for e in self.elevations) or any(abs(e) > 90 for _, e in self.directions or ()):
            raise ConfigError("elevations lie in [-90, 90] deg")

        _check(self)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The requested directions: (azimuths, elevations), each (D,) in degrees."""
        pairs = (unique_directions(np.array(self.directions)) if self.directions is not None
                 else direction_grid(self.azimuths, self.elevations))
        return pairs[:, 0], pairs[:, 1]

    @property
    def n_directions(self) -> int:
        return len(self.grid()[0])

    @property
    def flat(self) -> bool:
        """Every direction on the horizontal plane (as every data set before elevations)."""
        return not np.any(self.grid()[1])

    @property
    def heads(self) -> tuple[str, ...]:
        """The training heads' SOFA paths."""
        return (self.hrir,) if isinstance(self.hrir, str) else self.hrir or (str(default_hrir_path()),)

    @property
    def brirs(self) -> tuple[str, ...]:
        return (self.brir,) if isinstance(self.brir, str) else self.brir or ()


# Most samples one shard may hold: a shard is written whole by one worker (64 KB a sample).
MAX_SAMPLES_PER_SHARD = 100_000
MAX_EXAMPLES = 1000  # example clips to write as WAV (x 4 azimuths x conditions): for listening


def _check(config: SpatializeConfig) -> None:
    """Every setting in its range, named by its command-line option."""
    check_azimuths(config.azimuths, "--azimuths")
    if not config.environments:
        raise ConfigError("--env: name at least one environment (anechoic, hall, RI01, RI02, RI)")
    options.seed(config.seed)
    options.fraction(config.val_fraction, "--val-fraction")
    options.fraction(config.test_fraction, "--test-fraction")
    options.count(config.samples_per_shard, "--samples-per-shard", 1, MAX_SAMPLES_PER_SHARD)
    options.number(config.tolerance_deg, "--ir-tolerance", lo=0, hi=180, unit="deg")
    options.count(config.rooms, "--rooms", 0, MAX_ROOMS)
    options.count(config.test_rooms, "--test-rooms", 0, MAX_ROOMS)
    HallSpec(rt60_s=config.rt60_s)  # its own range check


# Fields added after the first release: left out of params.json at their defaults, so an
# output made before them still resumes.
_NEW_FIELDS = {"test_hrir": (), "rooms": 0, "test_rooms": 0, "snr_db": None, "elevations": (0.0,),
               "directions": None, "interpolate": False}


@dataclass(frozen=True)
class Condition:
    """What one shard is rendered in: environment class, head and room (the labels), the
    IR file stem under irs/, and the HRIR set its noise goes through."""

    env: str
    head: str
    room: str
    key: str
    hrir: str


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs for one group of clips: paths and small specs, no
    arrays. The group is rendered in each condition of `shards` ((index, Condition, IR file)
    triples), one shard per condition, so each clip is loaded once."""

    split: str
    refs: tuple[ClipRef, ...]
    shards: tuple[tuple[int, Condition, str], ...]
    policy: ClipPolicy
    out_dir: str
    attrs: tuple = ()  # root attributes of the shards, as (key, value) pairs
    noise: tuple = ()  # (kind, (snr low, snr high), seed, azimuths, elevations), or () for none


# --------------------------------------------------------------------------- planning


def assign_splits(refs: list[ClipRef], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Split by source clip: clip_id -> train/val/test, deterministic from the seed.

    Clips pinned to a split (a --test folder, a CSV split column) keep it. The others are
    shuffled within each category, so every kind of sound is in every split; a test share
    is drawn only when no clip is pinned to test.
    """
    out = {r.clip_id: r.split for r in refs if r.split}
    unknown = {s for s in out.values() if s not in SPLITS}
    if unknown:
        raise StageError(f"unknown split name(s) {sorted(unknown)}; use train, val or test")
    draw_test = "test" not in out.values()
    rng = np.random.default_rng([seed, 0x5B1])
    free: dict[str, list[str]] = {}
    for r in refs:
        if not r.split:
            free.setdefault(r.category, []).append(r.clip_id)
    # Deal the clips out category by category (each shuffled, the categories in a shuffled
    # order), so that any leading share of the deal is stratified, however small the set.
    groups = [[ids[i] for i in rng.permutation(len(ids))] for ids in (sorted(free[c]) for c in sorted(free))]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    deal = [g[k] for k in range(max(map(len, groups), default=0)) for g in groups if k < len(g)]
    n_test = int(round(len(deal) * test_fraction)) if draw_test else 0
    n_val = int(round((len(deal) - n_test) * val_fraction))
    for k, clip_id in enumerate(deal):
        out[clip_id] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


@dataclass(frozen=True)
class Layout:
    """Which conditions each split is rendered in, and where heads and rooms come from."""

    splits: dict  # split -> tuple of Conditions
    heads: dict  # head label -> SOFA path, training heads then test-only heads
    test_heads: tuple[str, ...]  # labels of the heads only the test split hears
    rooms: dict  # room label -> HallSpec (simulated) or SOFA path (measured BRIRs)
    test_rooms: tuple[str, ...]  # labels of the rooms only the test split hears

    def conditions(self) -> dict[str, Condition]:
        """Every condition once, by IR key, in the order of first use."""
        return {c.key: c for split in SPLITS for c in self.splits[split]}


def _labelled(paths, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in paths:
        label = Path(path).stem
        if label in out:
            raise ConfigError(f"{option}: two files are named {label!r} ({out[label]}, {path}); "
                              "a head or room is labelled by its file name, so the names must differ")
        out[label] = str(path)
    return out


def layout(config: SpatializeConfig) -> Layout:
    """The conditions of each split (docs/transfer-study.md).

    train and val: every training head (--hrir) in anechoic (when in the environments) and
    in every training room: the default hall, or the generated rooms (--rooms N), plus the
    measured BRIR files (--brir), which carry their own head (label head = room = file stem)
    and are not crossed with the HRIR heads. test: the test heads (--test-hrir, else the
    training heads) in anechoic and the test rooms (--test-rooms M, else the training
    rooms; measured BRIRs only when neither test heads nor test rooms are given, since
    their head is a training head).
    """
    envs = config.environments
    if config.rooms < 0 or config.test_rooms < 0:
        raise ConfigError("--rooms and --test-rooms must be 0 or more")
    if (config.rooms or config.test_rooms or config.brirs) and "hall" not in envs:
        raise ConfigError("--rooms, --test-rooms and --brir render reverberant rooms: include the hall "
                          "environment (--env hall or RI)")
    if config.snr_db is not None and config.noise not in noise_mod.NOISE_KINDS:
        raise ConfigError(f"--noise {config.noise!r}: choose {' or '.join(noise_mod.NOISE_KINDS)}")
    train_heads = _labelled(config.heads, "--hrir")
    test_only = _labelled(config.test_hrir, "--test-hrir")
    if both := sorted(set(train_heads) & set(test_only)):
        raise ConfigError(f"--test-hrir {', '.join(both)}: also a training head (--hrir); a held-out head "
                          "must be another file")
    test_heads = test_only or train_heads
    measured = _labelled(config.brirs, "--brir")
    simulated: list[tuple[str, HallSpec]] = []
    if "hall" in envs:
        if config.rooms:
            simulated = [(r.name, r.spec) for r in draw_rooms(config.rooms, config.seed, config.room_ranges)]
        elif not measured:
            simulated = [("hall", HallSpec(rt60_s=config.rt60_s, seed=config.seed))]
    test_simulated = ([(r.name, r.spec) for r in draw_rooms(config.test_rooms, config.seed, config.room_ranges, test=True)]
                      if config.test_rooms else simulated)
    if not config.flat:  # sources on a sphere that the room's floor and ceiling do not cut
        elevations = config.grid()[1]
        simulated = [(name, spec.fitted(elevations)) for name, spec in simulated]
        test_simulated = [(name, spec.fitted(elevations)) for name, spec in test_simulated]
    test_measured = {} if (test_only or config.test_rooms) else measured
    clash = set(measured) & ({n for n, _ in simulated + test_simulated} | {"anechoic"} | set(train_heads) | set(test_only))
    if clash:
        raise ConfigError(f"--brir {', '.join(sorted(clash))}: a measured BRIR file is labelled by its name, "
                          "which must differ from the other rooms' and heads'")
    single_head = len(train_heads) + len(test_only) == 1
    first_head = next(iter(train_heads.values()))

    def key(room: str, head: str) -> str:
        return room if single_head else f"{room}--{head}"

    def conditions(heads: dict, sims: list, meas: dict) -> tuple[Condition, ...]:
        out = []
        for env in envs:
            if env == "anechoic":
                out += [Condition(env, h, "anechoic", key("anechoic", h), p) for h, p in heads.items()]
            else:
                out += [Condition(env, h, room, key(room, h), p) for room, _ in sims for h, p in heads.items()]
                # A measured BRIR's noise goes through the first training head's HRIRs.
                out += [Condition(env, stem, stem, stem, first_head) for stem in meas]
        return tuple(out)

    train = conditions(train_heads, simulated, measured)
    test = conditions(test_heads, test_simulated, test_measured)
    if not test:
        raise ConfigError("the test split has no condition to render: with --test-hrir and only measured BRIRs "
                          "(--brir), add anechoic to --env or give --test-rooms")
    rooms = {**dict(simulated), **dict(test_simulated), **measured}
    return Layout(splits={"train": train, "val": train, "test": test}, heads={**train_heads, **test_only},
                  test_heads=tuple(test_only), rooms=rooms,
                  test_rooms=tuple(n for n, _ in test_simulated) if config.test_rooms else ())


def plan(refs: list[ClipRef], config: SpatializeConfig, ir_paths: dict[str, str], out_dir: Path,
         attrs: dict, split_conditions: dict | None = None) -> list[ShardTask]:
    """Shard tasks: for each split, the clips in a seeded order, in groups of
    samples_per_shard / directions, one task per group, one shard per condition of the split."""
    splits = assign_splits(refs, config.seed, config.val_fraction, config.test_fraction)
    split_conditions = split_conditions or layout(config).splits
    az, el = config.grid()
    per_shard = max(1, config.samples_per_shard // len(az))
    rng = np.random.default_rng([config.seed, 0x5B2])
    by_id = {r.clip_id: r for r in refs}
    noise = ((config.noise, config.snr_db, config.seed, tuple(az.tolist()), () if config.flat else tuple(el.tolist()))
             if config.snr_db is not None else ())
    tasks: list[ShardTask] = []
    index = 0
    for split in SPLITS:
        ids = sorted(c for c, s in splits.items() if s == split)
        ids = [ids[i] for i in rng.permutation(len(ids))]  # shards mix the kinds of sound
        for start in range(0, len(ids), per_shard):
            group = tuple(by_id[c] for c in ids[start:start + per_shard])
            shards = tuple((index + k, cond, ir_paths[cond.key]) for k, cond in enumerate(split_conditions[split]))
            index += len(shards)
            tasks.append(ShardTask(split, group, shards, config.policy, str(out_dir), tuple(sorted(attrs.items())),
                                   noise))
    return tasks


# --------------------------------------------------------------------------- one shard (runs on a worker)


def _renderer(ir_path: str) -> tuple[Renderer, np.ndarray, np.ndarray]:
    """The renderer of an IR file and its azimuths and elevations, kept for the worker's lifetime:
    the IR spectra are computed once per worker, not once per shard."""
    stat = os.stat(ir_path)
    # One per thread too: a Renderer reuses its output buffer, and `dask worker` on an
    # existing cluster runs several threads per process.
    return _cached_renderer(ir_path, stat.st_mtime_ns, stat.st_size, threading.get_ident())


@functools.lru_cache(maxsize=64)
def _cached_renderer(ir_path: str, mtime_ns: int, size: int, thread: int) -> tuple[Renderer, np.ndarray, np.ndarray]:
    irs = read_sofa(ir_path)
    return Renderer(irs.ir, n_out=CLIP_SAMPLES), irs.azimuth_deg.astype(np.float32), irs.elevation_deg.astype(np.float32)


_local = threading.local()


def _output(shape: tuple) -> np.ndarray:
    """One reused output buffer per thread for every renderer: the shards of a group are
    rendered and written one after another, and a buffer per renderer (one per condition)
    would hold 100-200 MB each (see Renderer._buffer)."""
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        buf = _local.buffer = np.empty(shape, dtype=np.float32)
    return buf[:shape[0]]


def run_shard(task: ShardTask) -> list[ShardInfo]:
    """Load and prepare the clips of one group, render them in each condition (adding
    noise when the task asks), and write one shard per condition."""
    t0 = time.perf_counter()
    clips, ids, categories, failures, warnings = [], [], [], [], Counter()
    for ref in task.refs:
        try:
            audio, fs = load_clip(ref)
            pieces, notes = prepare(audio, fs, task.policy)
        except ClipError as exc:
            failures.append({"clip_id": ref.clip_id, "path": ref.locator, "reason": str(exc)})
            continue
        except Exception as exc:  # an unforeseen library error is one clip's problem, not the run's
            failures.append({"clip_id": ref.clip_id, "path": ref.locator,
                             "reason": f"unexpected error: {type(exc).__name__}: {exc}"})
            continue
        warnings.update(re.sub(r"\d+(\.\d+)?", "N", note) for note in notes)  # count kinds, not values
        for k, piece in enumerate(pieces):
            clips.append(piece)
            ids.append(ref.clip_id if len(pieces) == 1 else f"{ref.clip_id}#{k}")
            categories.append(ref.category)
    mono = np.stack(clips) if clips else np.zeros((0, CLIP_SAMPLES), dtype=np.float32)

    infos = []
    for index, cond, ir_path in task.shards:
        renderer, azimuths, elevations = _renderer(ir_path)
        n_az = len(azimuths)  # directions
        audio = renderer.render(mono, out=_output((len(clips), n_az, 2, renderer.n_out))).reshape(-1, 2, renderer.n_out)
        n = audio.shape[0]
        if task.noise:
            kind, snr_range, seed, grid, grid_el = task.noise
            bank = noise_mod.noise_bank(kind, cond.hrir, grid, seed, grid_el)
            snr = noise_mod.add_noise(audio, ids, n_az, kind=kind, bank=bank, snr_range=snr_range, seed=seed,
                                      condition=f"{cond.head}/{cond.room}")
        else:
            snr = np.full(n, noise_mod.NO_NOISE, dtype=np.float32)
        arrays = {
            "audio": audio,
            "azimuth_deg": np.tile(azimuths, len(clips)),
            "elevation_deg": np.tile(elevations, len(clips)),
            "env": np.full(n, ENV_NAMES.index(cond.env), dtype=np.uint8),
            "clip_id": np.repeat(np.array(ids, dtype=object), n_az),
            "split": np.full(n, task.split, dtype=object),
            "category": np.repeat(np.array(categories, dtype=object), n_az),
            "head": np.full(n, cond.head, dtype=object),
            "room": np.full(n, cond.room, dtype=object),
            "snr_db": snr,
        }
        attrs = dict(task.attrs)
        attrs.update(env_names=json.dumps(list(ENV_NAMES)), environment=cond.env, split=task.split, head=cond.head,
                     room=cond.room)
        info = ShardInfo(index=index, path=f"shards/{shard_name(index)}", split=task.split, env=cond.env,
                         samples=n, clips=len(clips), sha256="", failures=failures, warnings=dict(warnings),
                         seconds=time.perf_counter() - t0,  # loading + rendering, before writing
                         head=cond.head, room=cond.room)
        infos.append(write_shard(Path(task.out_dir), info, arrays, attrs))
        t0 = time.perf_counter()
    return infos


# --------------------------------------------------------------------------- the stage


def _at(full: IRSet, config: SpatializeConfig, interpolate: bool = False) -> IRSet:
    """`full` at the requested directions: interpolated, or the nearest within the tolerance."""
    az, el = config.grid()
    if interpolate:
        from bast.pipeline.irs.interpolate import interpolated_set

        return interpolated_set(full, az, el)
    return full.at(az, el, config.tolerance_deg)


def condition_irs(config: SpatializeConfig, client=None, plan: Layout | None = None) -> dict[str, tuple[Condition, IRSet, dict]]:
    """IR key -> (condition, the IR set it renders with at the requested directions, how to
    save it: {"spec": HallSpec} for a simulated room). Simulated banks (one per room and
    head) are built in parallel on `client` and cached (bast/pipeline/irs/hall.py). With
    `interpolate`, heads and simulated rooms render at exactly the requested directions;
    a measured BRIR set still takes its nearest direction within the tolerance."""
    plan = plan or layout(config)
    conds = plan.conditions()
    az, el = config.grid()
    tol = config.tolerance_deg
    heads = {label: read_sofa(path) for label, path in plan.heads.items()}
    simulated = [c for c in conds.values() if isinstance(plan.rooms.get(c.room), HallSpec)]
    banks = build_banks([BankTask(plan.rooms[c.room], plan.heads[c.head], tuple(az.tolist()), tol,
                                  () if config.flat else tuple(el.tolist()), config.interpolate)
                         for c in simulated], client)
    built = dict(zip((c.key for c in simulated), banks))
    out = {}
    for k, c in conds.items():
        if c.env == "anechoic":
            out[k] = (c, _at(heads[c.head], config, config.interpolate), {})
        elif k in built:  # built at the directions asked for (or the head's nearest)
            bank = built[k] if config.interpolate else built[k].at(az, el, tol)
            out[k] = (c, bank, {"spec": plan.rooms[c.room]})
        else:
            out[k] = (c, _at(read_sofa(plan.rooms[c.room]), config), {})
    return out


def environment_irs(config: SpatializeConfig, client=None) -> dict[str, tuple[IRSet, dict]]:
    """IR key -> (IR set at the requested directions, how it is saved). With one head and the
    default rooms the keys are the environments, as before conditions existed."""
    return {k: (irs, how) for k, (_, irs, how) in condition_irs(config, client).items()}


def _ir_digest(irs: IRSet) -> str:
    h = hashlib.sha256(np.ascontiguousarray(irs.ir).tobytes())
    h.update(np.asarray(irs.azimuth_deg, dtype=np.float64).tobytes())
    if np.any(np.round(irs.elevation_deg, 6)):  # sets on the horizontal plane keep the digest they had
        h.update(np.asarray(irs.elevation_deg, dtype=np.float64).tobytes())
    return h.hexdigest()


def stage_params(refs: list[ClipRef], config: SpatializeConfig, irs: dict, source: dict) -> dict:
    """The parameters that determine the output; a re-run must match them to resume."""
    clips = hashlib.sha256("\n".join(f"{r.clip_id}\t{r.recipe}\t{r.locator}\t{r.category}\t{r.split}"
                                     for r in refs).encode()).hexdigest()
    params = dataclasses.asdict(config)
    for name, default in _NEW_FIELDS.items():
        if params[name] == default or (isinstance(default, tuple) and not params[name]):
            del params[name]
    if "snr_db" not in params:
        del params["noise"]
    if not (config.rooms or config.test_rooms):
        del params["room_ranges"]
    params.update(
        stage="spatialize",
        fs=FS,
        source=source,
        clips=len(refs),
        clips_sha256=clips,
        ir_sha256={key: _ir_digest(s) for key, (_, s, _) in irs.items()},
        bast_version=__version__,
    )
    return json.loads(json.dumps(params))  # plain JSON types, as read back from params.json


def spatialize(refs: list[ClipRef], out_dir, config: SpatializeConfig = SpatializeConfig(), *,
               client=None, source: dict | None = None, overwrite: bool = False,
               on_start: Callable[[int, int], None] | None = None,
               on_shard: Callable[[ShardInfo, int], None] | None = None) -> StageSummary:
    """Render `refs` into `out_dir` (the shard contract of docs/conventions.md); resumable.

    `client`: a dask Client (None runs in this process). `on_start(total_samples,
    resumed_samples)` and `on_shard(info, planned_samples)` report progress.
    """
    if not refs:
        raise StageError("no input clips found")
    check_output(out_dir, refs, config, source or {})
    the_layout = layout(config)
    irs = condition_irs(config, client, the_layout)
    params = stage_params(refs, config, irs, source or {})
    n_dir = config.n_directions
    ir_paths: dict[str, str] = {}

    def plan_tasks(out_dir: Path) -> list[ShardTask]:
        ir_paths.update(write_irs(out_dir, irs))
        attrs = {"stage": "spatialize", "fs": FS, "seed": config.seed, "bast_version": __version__,
                 "params": json.dumps(params, sort_keys=True)}
        return plan(refs, config, ir_paths, out_dir, attrs, the_layout.splits)

    def manifest_extra(summary: StageSummary, shards: list[ShardInfo]) -> dict:
        first = next(iter(irs.values()))[1]
        return {"clips_rendered": summary.clips, "inputs": len(refs), "inputs_failed": len(summary.failures),
                "warnings": summary.warnings,
                "azimuths_deg": [float(a) for a in first.azimuth_deg],
                **conditions_record(the_layout, ir_paths, out_dir, config)}

    def manifest_keys(summary: StageSummary, shards: list[ShardInfo]) -> dict:
        first = next(iter(irs.values()))[1]
        failed = {f["clip_id"] for f in summary.failures}
        return {"directions": [[float(a), float(e)] for a, e in zip(first.azimuth_deg, np.round(first.elevation_deg, 6))],
                "categories": sorted({r.category for r in refs if r.clip_id not in failed})}

    out_dir = Path(out_dir)
    stage = Stage(
        name="spatialize", params=params, plan=plan_tasks, run_task=run_shard,
        shards_of=lambda t: [(i, len(t.refs) * n_dir) for i, _, _ in t.shards],
        # A group is redone only in the conditions whose shard is missing.
        pending=lambda t, todo: dataclasses.replace(t, shards=kept) if (
            kept := tuple(s for s in t.shards if s[0] in todo)) else None,
        describe=lambda t: "shard " + ", ".join(f"{i} ({t.split}, {c.env}, {c.head}, {c.room})" for i, c, _ in t.shards),
        totals=summarise_shards, manifest_extra=manifest_extra, manifest_keys=manifest_keys,
        key_prefix=f"bast-spatialize-{params['clips_sha256'][:8]}")
    return run_stage(stage, out_dir, client=client, overwrite=overwrite, on_start=on_start, on_shard=on_shard)


def check_output(out_dir, refs: list[ClipRef], config: SpatializeConfig, source: dict) -> None:
    """OUT is a folder (new or existing) that is no input nor inside one, and no input
    (a sound, a SOFA file) lies where the stage writes or --overwrite clears."""
    inputs = [("--hrir", p) for p in config.heads] + [("--brir", p) for p in config.brirs]
    inputs += [("--test-hrir", p) for p in config.test_hrir]
    inputs += [(name, source[key]) for key, name in (("source", "the sound source"), ("test", "--test"))
               if source.get(key)]
    inputs += [("sound", r.locator) for r in refs if r.recipe == "files"]
    options.output_dir(out_dir, "OUT", inputs=inputs, owned=OWNED)


def conditions_record(the_layout, ir_paths: dict, out_dir: Path, config) -> dict:
    """What a Stage 1 manifest records of its conditions (spatialize and scenes alike): the
    IR files, each split's conditions, the heads, the rooms and the noise."""
    return {"irs": {k: str(Path(p).relative_to(out_dir)) for k, p in ir_paths.items()},
            "conditions": {split: [{"env": c.env, "head": c.head, "room": c.room, "irs": c.key}
                                   for c in the_layout.splits[split]] for split in SPLITS},
            "heads": {label: {"path": path, "listener": irs_listener(path), "test_only": label in the_layout.test_heads}
                      for label, path in the_layout.heads.items()},
            "rooms": {label: ({"simulated": room_record(r), "test_only": label in the_layout.test_rooms}
                              if isinstance(r, HallSpec) else {"measured": r})
                      for label, r in the_layout.rooms.items()},
            "noise": ({"kind": config.noise, "snr_db": list(config.snr_db)} if config.snr_db is not None else None)}


def irs_listener(path: str) -> str:
    """The SOFA file's listener name (ListenerShortName, else DatabaseName), or ''."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            for name in ("ListenerShortName", "DatabaseName"):
                value = f.attrs.get(name)
                if value is not None:
                    value = value.decode() if isinstance(value, bytes) else str(value)
                    if value.strip():
                        return value.strip()
    except OSError:
        pass
    return ""


def summarise_shards(summary: StageSummary, shards: list[ShardInfo]) -> None:
    """Totals over shards; a clip (a scene, for `bast-cli scenes`) is in one shard per
    condition, so its failure and its warnings are counted once (from the shards of its
    split's first condition)."""
    seen: set[str] = set()
    warnings: Counter = Counter()
    first: dict[str, tuple] = {}
    for s in shards:  # in index order: a split's first shard is in its first condition
        first.setdefault(s.split, (s.env, s.head, s.room))
    for s in shards:
        summary.samples += s.samples
        if (s.env, s.head, s.room) == first[s.split]:
            summary.clips += s.clips
            warnings.update(s.warnings)
        for f in s.failures:
            if f["clip_id"] not in seen:
                seen.add(f["clip_id"])
                summary.failures.append(f)
    summary.failures.sort(key=lambda f: f["clip_id"])
    summary.warnings = dict(warnings)


def write_irs(out_dir: Path, irs: dict) -> dict[str, str]:
    """Save the exact IR pairs each condition renders with beside the data (provenance,
    and what workers on any machine load): irs/<key>.sofa."""
    paths = {}
    for key, (cond, irset, how) in irs.items():
        path = out_dir / "irs" / f"{key}.sofa"
        attrs = {"Title": f"bast {cond.env} impulse responses (head {cond.head}, room {cond.room}) used for this data set",
                 "Comment": f"from {irset.source}"}
        if "spec" in how:
            save_bank(path, irset, how["spec"])
        else:
            write_sofa(path, irset, conventions="SimpleFreeFieldHRIR" if cond.env == "anechoic" else "GeneralFIR",
                       attrs=attrs)
        paths[key] = str(path)
    return paths


def check_examples(n_clips: int) -> int:
    return options.count(n_clips, "--examples", 0, MAX_EXAMPLES)


def write_examples(out_dir, n_clips: int = 3, azimuths=(0.0, 90.0, 180.0, 270.0)) -> list[Path]:
    """WAV files of a few rendered clips, for listening: the first `n_clips` clips of the
    test split (or the first split there is), at `azimuths` on the horizontal plane, in every
    environment."""
    import h5py
    import soundfile as sf

    check_examples(n_clips)
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    shards = manifest["shards"]
    splits = [s["split"] for s in shards if s["samples"]]
    if not splits:
        return []
    split = "test" if "test" in splits else splits[0]
    written = []
    # One folder per environment, or per room and head when an environment has several.
    conds = list(dict.fromkeys((s["env"], s.get("head", ""), s.get("room", "")) for s in shards))
    per_env = Counter(env for env, _, _ in conds)
    for env, head, room in conds:
        folder = env if per_env[env] == 1 else f"{room}--{head}" if room != head else room
        wanted: list[str] = []
        for s in (s for s in shards if s["split"] == split and (s["env"], s.get("head", ""), s.get("room", ""))
                  == (env, head, room) and s["samples"]):
            with h5py.File(out_dir / s["path"], "r") as f:
                ids = f["clip_id"].asstr()[()]
                az = f["azimuth_deg"][()]
                el = f["elevation_deg"][()] if "elevation_deg" in f else np.zeros_like(az)
                for i, (clip, a, e) in enumerate(zip(ids, az, el)):
                    if clip not in wanted and len(wanted) < n_clips:
                        wanted.append(clip)
                    if clip in wanted and np.any(np.isclose(a, azimuths)) and abs(e) < 1e-3:
                        name = f"{clip.replace('/', '_').replace('#', '-')}_az{int(round(a)):03d}.wav"
                        path = out_dir / "examples" / folder / name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with atomic_path(path) as tmp:
                            sf.write(tmp, f["audio"][i].T, FS, subtype="FLOAT")
                        written.append(path)
            if len(wanted) >= n_clips:
                break
    return written
