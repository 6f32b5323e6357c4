"""The conditions of Stage 1 (spatialize and scenes alike): the configuration, the split of
the sounds, which environment, head and room each split is rendered in, the impulse
responses of each condition and what a manifest records of them (docs/transfer-study.md).

    config = SpatializeConfig(hrir=("a.sofa", "b.sofa"), rooms=3)
    the_layout = layout(config)  # split -> Conditions; head label -> SOFA path; rooms
    condition_sets = condition_irs(config, client, the_layout)  # IR key -> (Condition, IRSet, how)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bast import options
from bast.conventions import DEFAULT_AZIMUTHS, ENVIRONMENTS
from bast.datasets.base import ClipRef
from bast.errors import ConfigError
from bast.pipeline.render import noise as noise_mod
from bast.pipeline.render.clips import ClipPolicy
from bast.pipeline.irs.hall import HallSpec
from bast.pipeline.irs.sources import check_azimuths, default_hrir_path, direction_grid, unique_directions
from bast.pipeline.irs.rooms import MAX_ROOMS, BankTask, RoomRanges, build_banks, draw_rooms, room_record
from bast.pipeline.stage.shards import SPLITS, StageError
from bast.pipeline.irs.sofa import IRSet, read_sofa


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
    def hrir_paths(self) -> tuple[str, ...]:
        """The training heads' SOFA paths."""
        return (self.hrir,) if isinstance(self.hrir, str) else self.hrir or (str(default_hrir_path()),)

    @property
    def brir_paths(self) -> tuple[str, ...]:
        return (self.brir,) if isinstance(self.brir, str) else self.brir or ()


# Most samples one shard may hold: a shard is written whole by one worker (64 KB a sample).
MAX_SAMPLES_PER_SHARD = 100_000


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


@dataclass(frozen=True)
class Condition:
    """What one shard is rendered in: environment class, head and room (the labels), the
    IR file stem under irs/, and the HRIR set its noise goes through."""

    env: str
    head: str
    room: str
    key: str
    hrir: str


# --------------------------------------------------------------------------- splits and layout


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
    head_paths: dict  # head label -> SOFA path, training heads then test-only heads
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
    _check_rooms_and_noise(config)
    train_head_paths, test_only_paths = _head_paths(config)
    measured = _labelled(config.brir_paths, "--brir")
    simulated, test_simulated = _simulated_rooms(config, measured)
    others = {n for n, _ in simulated + test_simulated} | {"anechoic"} | set(train_head_paths) | set(test_only_paths)
    clash = set(measured) & others
    if clash:
        raise ConfigError(f"--brir {', '.join(sorted(clash))}: a measured BRIR file is labelled by its name, "
                          "which must differ from the other rooms' and heads'")
    single_head = len(train_head_paths) + len(test_only_paths) == 1
    first_hrir = next(iter(train_head_paths.values()))
    train = split_conditions(config.environments, train_head_paths, simulated, measured, single_head, first_hrir)
    test = split_conditions(config.environments, test_only_paths or train_head_paths, test_simulated,
                            {} if (test_only_paths or config.test_rooms) else measured, single_head, first_hrir)
    if not test:
        raise ConfigError("the test split has no condition to render: with --test-hrir and only measured BRIRs "
                          "(--brir), add anechoic to --env or give --test-rooms")
    rooms = {**dict(simulated), **dict(test_simulated), **measured}
    return Layout(splits={"train": train, "val": train, "test": test},
                  head_paths={**train_head_paths, **test_only_paths}, test_heads=tuple(test_only_paths), rooms=rooms,
                  test_rooms=tuple(n for n, _ in test_simulated) if config.test_rooms else ())


def _check_rooms_and_noise(config: SpatializeConfig) -> None:
    """Rooms only with the hall environment, and a known kind of noise."""
    if config.rooms < 0 or config.test_rooms < 0:
        raise ConfigError("--rooms and --test-rooms must be 0 or more")
    if (config.rooms or config.test_rooms or config.brir_paths) and "hall" not in config.environments:
        raise ConfigError("--rooms, --test-rooms and --brir render reverberant rooms: include the hall "
                          "environment (--env hall or RI)")
    if config.snr_db is not None and config.noise not in noise_mod.NOISE_KINDS:
        raise ConfigError(f"--noise {config.noise!r}: choose {' or '.join(noise_mod.NOISE_KINDS)}")


def _head_paths(config: SpatializeConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(training heads, test-only heads), each label -> SOFA path; no head in both."""
    train_head_paths = _labelled(config.hrir_paths, "--hrir")
    test_only_paths = _labelled(config.test_hrir, "--test-hrir")
    if both := sorted(set(train_head_paths) & set(test_only_paths)):
        raise ConfigError(f"--test-hrir {', '.join(both)}: also a training head (--hrir); a held-out head "
                          "must be another file")
    return train_head_paths, test_only_paths


def _simulated_rooms(config: SpatializeConfig, measured: dict) -> tuple[list, list]:
    """(training rooms, test rooms), each [(label, HallSpec)]: the generated rooms, else the
    default hall unless measured BRIRs replace it; the test rooms are the training rooms
    unless --test-rooms draws others. Off the horizontal plane each room is fitted to hold
    the grid's elevations."""
    simulated: list[tuple[str, HallSpec]] = []
    if "hall" in config.environments:
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
    return simulated, test_simulated


def split_conditions(environments: tuple[str, ...], head_paths: dict[str, str], simulated: list, measured: dict,
                     single_head: bool, first_hrir: str) -> tuple[Condition, ...]:
    """The conditions of one split, environment by environment: each head (label -> SOFA
    path) in anechoic and in each simulated room, then each measured BRIR file (its own head).
    IR keys are the room's label, or room--head when the layout has several heads."""
    def key(room: str, head: str) -> str:
        return room if single_head else f"{room}--{head}"

    out = []
    for env in environments:
        if env == "anechoic":
            out += [Condition(env, h, "anechoic", key("anechoic", h), p) for h, p in head_paths.items()]
        else:
            out += [Condition(env, h, room, key(room, h), p) for room, _ in simulated for h, p in head_paths.items()]
            # A measured BRIR's noise goes through the first training head's HRIRs.
            out += [Condition(env, stem, stem, stem, first_hrir) for stem in measured]
    return tuple(out)


# --------------------------------------------------------------------------- impulse responses


def assemble_irs(the_layout: Layout, *, bank_directions: Callable[[IRSet], np.ndarray], tolerance_deg: float,
                 interpolate: bool, fit: Callable[[Condition, IRSet, str], IRSet],
                 client=None, distances: tuple[float, ...] = ()) -> dict[str, tuple[Condition, IRSet, dict]]:
    """IR key -> (condition, the IR set it renders with, how to save it: {"spec": HallSpec}
    for a simulated room): the one assembly of both Stage 1 stages (clips and scenes).

    Each head is read once; a simulated room gets a bank per head (one BankTask each, at
    `bank_directions(head_set)`, (D, 2) azimuth and elevation pairs: bast/pipeline/irs/rooms.py),
    built in parallel on `client` and cached; a measured BRIR file is read whole. `fit(
    condition, set, kind)` (kind "head", "bank" or "measured") makes each condition's set
    the one its stage renders with, or refuses it. With `distances` (scenes with --distance)
    each simulated room's bank holds every direction at each of those distances."""
    head_sets = {label: read_sofa(path) for label, path in the_layout.head_paths.items()}
    conds = the_layout.conditions()
    simulated = [c for c in conds.values() if isinstance(the_layout.rooms.get(c.room), HallSpec)]
    tasks = [_bank_task(the_layout, c, bank_directions(head_sets[c.head]), tolerance_deg, interpolate, distances)
             for c in simulated]
    built = dict(zip((c.key for c in simulated), build_banks(tasks, client)))
    out = {}
    for k, c in conds.items():
        if c.env == "anechoic":
            irs, how, kind = head_sets[c.head], {}, "head"
        elif k in built:
            irs, how, kind = built[k], {"spec": the_layout.rooms[c.room]}, "bank"
        else:
            irs, how, kind = read_sofa(the_layout.rooms[c.room]), {}, "measured"
        out[k] = (c, fit(c, irs, kind), how)
    return out


def _bank_task(the_layout: Layout, cond: Condition, directions: np.ndarray, tolerance_deg: float,
               interpolate: bool, distances: tuple[float, ...] = ()) -> BankTask:
    """The bank of a simulated room heard by the condition's head at `directions` (D, 2);
    on the horizontal plane no elevations, as banks were keyed before elevations existed."""
    return BankTask(the_layout.rooms[cond.room], the_layout.head_paths[cond.head], tuple(directions[:, 0].tolist()),
                    tolerance_deg, tuple(directions[:, 1].tolist()) if np.any(directions[:, 1]) else (), interpolate,
                    tuple(float(d) for d in distances))


def condition_irs(config: SpatializeConfig, client=None,
                  the_layout: Layout | None = None) -> dict[str, tuple[Condition, IRSet, dict]]:
    """`assemble_irs` for clips: every set at the requested directions. With `interpolate`,
    heads and simulated rooms render at exactly those directions; a measured BRIR set
    still takes its nearest direction within the tolerance."""
    az, el = config.grid()

    def fit(cond: Condition, irs: IRSet, kind: str) -> IRSet:
        if kind == "head" and config.interpolate:
            from bast.pipeline.irs.interpolate import interpolated_set

            return interpolated_set(irs, az, el)
        if kind == "bank" and config.interpolate:  # built at exactly the directions asked for
            return irs
        return irs.at(az, el, config.tolerance_deg)  # the nearest within the tolerance

    return assemble_irs(the_layout or layout(config), bank_directions=lambda head_set: np.stack([az, el], axis=-1),
                        tolerance_deg=config.tolerance_deg, interpolate=config.interpolate, fit=fit, client=client)


def environment_irs(config: SpatializeConfig, client=None) -> dict[str, tuple[IRSet, dict]]:
    """IR key -> (IR set at the requested directions, how it is saved). With one head and the
    default rooms the keys are the environments, as before conditions existed."""
    return {k: (irs, how) for k, (_, irs, how) in condition_irs(config, client).items()}


def conditions_record(the_layout, ir_paths: dict, out_dir: Path, config) -> dict:
    """What a Stage 1 manifest records of its conditions (spatialize and scenes alike): the
    IR files, each split's conditions, the heads, the rooms and the noise."""
    return {"irs": {k: str(Path(p).relative_to(out_dir)) for k, p in ir_paths.items()},
            "conditions": {split: [{"env": c.env, "head": c.head, "room": c.room, "irs": c.key}
                                   for c in the_layout.splits[split]] for split in SPLITS},
            "heads": {label: {"path": path, "listener": irs_listener(path), "test_only": label in the_layout.test_heads}
                      for label, path in the_layout.head_paths.items()},
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
