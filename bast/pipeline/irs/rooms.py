"""Generated rooms: shoeboxes drawn from documented ranges, each built like the hall.

    rooms = draw_rooms(3, seed=0)                       # [Room("room-00", HallSpec(...)), ...]
    test = draw_rooms(1, seed=0, test=True)             # ["testroom-00"]: another stream
    banks = build_banks([BankTask(r.spec, hrir_path, azimuths) for r in rooms], client=client)

A room is a `HallSpec` (bast/pipeline/irs/hall.py): its bank is made by the hall's method
(image sources through the HRIRs until the mixing time, a coherent diffuse tail through
the HRIRs after it, absorption calibrated to the room's RT60 target) and cached by the
hall's cache key. `draw_rooms` is a pure function of (n, seed, ranges, test): the first k
rooms of a draw do not depend on n, and test rooms come from another random stream, so they
never coincide with training rooms. Ranges and their reasons: docs/transfer-study.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bast import options
from bast.errors import ConfigError, StageError
from bast.pipeline.stage.cluster import run_tasks
from bast.pipeline.irs.hall import WALLS, HallSpec, hall_brirs
from bast.pipeline.irs.sofa import IRSet, read_sofa

TRAIN_STREAM, TEST_STREAM = 0x400D5, 0x7E57
MAX_ROOMS = 1000  # generated rooms per split: each is a ray-traced bank of BRIRs (seconds to build)


@dataclass(frozen=True)
class RoomRanges:
    """Ranges rooms are drawn from, uniformly unless stated (metres, seconds)."""

    width_m: tuple[float, float] = (4.0, 20.0)  # floor, x
    length_m: tuple[float, float] = (5.0, 30.0)  # floor, y
    height_m: tuple[float, float] = (2.5, 8.0)  # at most the room's shorter floor side
    rt60_s: tuple[float, float] = (0.3, 1.2)  # target of the absorption calibration
    listener_height_m: tuple[float, float] = (1.1, 1.8)  # seated to standing ear height
    distance_m: tuple[float, float] = (1.0, 2.5)  # radius of the sources' sphere (HallSpec.fitted may shrink it)
    wall_margin_m: float = 0.5  # the listener is at least distance + this from every wall
    wall_spread: float = 2.0  # each wall's absorption factor: log-uniform in [1/spread, spread]
    n_rays: int = 20000  # ray tracing of the calibration (fewer: faster, noisier)

    def check(self) -> None:
        for name in ("width_m", "length_m", "height_m", "rt60_s", "listener_height_m", "distance_m"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"RoomRanges.{name} = {(lo, hi)}: need 0 < low <= high")
        if min(self.width_m[0], self.length_m[0]) < 2 * (self.distance_m[0] + self.wall_margin_m):
            raise ConfigError("RoomRanges: the smallest floor cannot hold the shortest source distance "
                             "plus the wall margin on both sides")
        if self.height_m[0] <= self.listener_height_m[1]:
            raise ConfigError("RoomRanges: the lowest ceiling must be above the highest ear")
        if self.wall_spread < 1:
            raise ConfigError("RoomRanges.wall_spread must be at least 1")


@dataclass(frozen=True)
class Room:
    name: str  # the `room` label of the samples rendered in it
    spec: HallSpec


def draw_rooms(n: int, seed: int, ranges: RoomRanges = RoomRanges(), test: bool = False) -> list[Room]:
    """`n` shoebox rooms drawn from `ranges`, deterministic from `seed`; `test=True` draws
    from another stream (names testroom-NN instead of room-NN)."""
    ranges.check()
    options.count(n, "--test-rooms" if test else "--rooms", 0, MAX_ROOMS)
    options.seed(seed)
    rng = np.random.default_rng([seed, TEST_STREAM if test else TRAIN_STREAM])
    prefix = "testroom" if test else "room"
    rooms = []
    for i in range(n):
        width, length = rng.uniform(*ranges.width_m), rng.uniform(*ranges.length_m)
        height = rng.uniform(ranges.height_m[0], max(ranges.height_m[0], min(ranges.height_m[1], width, length)))
        rt60 = rng.uniform(*ranges.rt60_s)
        # Every source on the circle is inside the room, `wall_margin_m` from the walls at least.
        most = min(width, length) / 2 - ranges.wall_margin_m
        distance = rng.uniform(ranges.distance_m[0], min(ranges.distance_m[1], most))
        margin = distance + ranges.wall_margin_m
        x, y = rng.uniform(margin, width - margin), rng.uniform(margin, length - margin)
        ear = rng.uniform(*ranges.listener_height_m)
        facing = rng.uniform(0.0, 2 * np.pi)
        factors = np.exp(rng.uniform(-1.0, 1.0, len(WALLS)) * np.log(ranges.wall_spread))
        tail_seed = int(rng.integers(0, 2**31 - 1))
        r3 = lambda v: float(np.round(v, 3))  # noqa: E731  (specs print and hash as short decimals)
        spec = HallSpec(size_m=(r3(width), r3(length), r3(height)), listener_m=(r3(x), r3(y), r3(ear)),
                        view=(r3(np.cos(facing)), r3(np.sin(facing)), 0.0), rt60_s=r3(rt60),
                        distance_m=r3(distance), n_rays=ranges.n_rays, seed=tail_seed,
                        wall_factors=tuple(r3(f) for f in factors))
        rooms.append(Room(f"{prefix}-{i:02d}", spec))
    return rooms


@dataclass(frozen=True)
class BankTask:
    spec: HallSpec
    hrir: str  # SOFA path of the head
    azimuths: tuple[float, ...]
    tolerance_deg: float = 0.0
    elevations: tuple[float, ...] = ()  # one per azimuth; () = all at elevation 0
    interpolate: bool = False  # direct sound at the requested directions, interpolated (bast.pipeline.irs.interpolate)
    distances: tuple[float, ...] = ()  # () = the spec's one radius; else the bank at each (hall.build_hall)


def bank_hrirs(task: BankTask) -> tuple[IRSet, np.ndarray, np.ndarray | None]:
    """The head's HRIRs a bank is built with and the bank's directions: the head's own
    directions nearest the request, or with `interpolate` the requested directions, whose
    interpolated HRIRs join the measured ones (the direct sound takes them; reflections
    take the HRIR nearest their own direction, measured or interpolated)."""
    hrirs = read_sofa(task.hrir)
    az = np.asarray(task.azimuths, dtype=float)
    el = np.asarray(task.elevations, dtype=float) if task.elevations else np.zeros_like(az)
    if task.interpolate:
        from bast.pipeline.irs.interpolate import interpolated_set

        extra = interpolated_set(hrirs, az, el)
        joined = IRSet(np.concatenate([hrirs.ir, extra.ir]), hrirs.fs,
                       np.concatenate([hrirs.azimuth_deg, extra.azimuth_deg]),
                       np.concatenate([hrirs.elevation_deg, extra.elevation_deg]),
                       np.concatenate([hrirs.distance_m, extra.distance_m]), hrirs.conventions, hrirs.source,
                       hrirs.attrs)
        return joined, extra.azimuth_deg, extra.elevation_deg
    idx = hrirs.indices(az, el, tolerance_deg=task.tolerance_deg)
    return hrirs, hrirs.azimuth_deg[idx], (hrirs.elevation_deg[idx] if task.elevations else None)


def build_bank(task: BankTask) -> IRSet:
    """One room's BRIRs through one head, at the directions of `bank_hrirs` (from the cache
    when built before; runs on a worker)."""
    hrirs, az, el = bank_hrirs(task)
    bank = hall_brirs(az, hrirs, task.spec, elevations_deg=el, distances_m=task.distances or None)
    x, y, z = task.spec.size_m
    return dataclasses.replace(bank, source=f"simulated room {x:g} x {y:g} x {z:g} m, RT60 {task.spec.rt60_s:g} s, "
                                            f"head {Path(task.hrir).stem}")


def build_banks(tasks: list[BankTask], client=None) -> list[IRSet]:
    """Build the banks of `tasks` in parallel on `client` (a dask Client; None: here), in
    the order of `tasks`. A failure raises, naming the room's parameters."""
    results: dict[int, IRSet] = {}
    keyed = list(enumerate(tasks))
    for (i, task), bank, error in run_tasks(lambda it: build_bank(it[1]), keyed, client):
        if error is not None:
            raise StageError(f"building a room bank ({Path(task.hrir).name}, {task.spec}) failed: {error}") from error
        results[i] = bank
    return [results[i] for i in range(len(tasks))]


def room_record(spec: HallSpec) -> dict:
    """A room's parameters as plain JSON (for manifests and `bast-cli irs`)."""
    d = dataclasses.asdict(spec)
    d["volume_m3"] = round(spec.volume_m3, 2)
    return d
