"""Source distance in scenes (`scenes --distance`, bast/pipeline/render/distance.py) and the
DCASE 2025 stereo export (`--stereo-dcase2025`); docs/scenes.md."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from helpers import split_pool
from scipy.signal import correlate, hilbert, resample_poly
from typer.testing import CliRunner

from bast.cli import app
from bast.datasets.procedural import DefaultCorpus
from bast.dcase.dcase2025 import fold_azimuth
from bast.dcase.files import format_dcase2025_rows
from bast.errors import ConfigError
from bast.pipeline.irs.acoustics import drr_db
from bast.pipeline.irs.hall import SPEED_OF_SOUND, build_hall
from bast.pipeline.irs.rooms import RoomRanges
from bast.pipeline.irs.sources import load_hrirs, parse_direction_options
from bast.pipeline.render import dcase_export as dcase
from bast.pipeline.render import scenes as scenes_mod
from bast.pipeline.render.conditions import layout
from bast.pipeline.render.distance import (
    distance_grid,
    grid_error,
    hrir_distance,
    room_reach_m,
)
from bast.pipeline.render.moving import Lookup, Trajectory
from bast.pipeline.render.scenemodel import (
    LABEL_SAMPLES,
    Event,
    draw_events,
    label_rows,
)
from bast.pipeline.render.scenes import (
    ScenesConfig,
    draw_scene,
    load_event,
    load_lookup,
    mix,
    render_scenes,
    scene_irs,
)

FS = 16000
DATA = Path(__file__).resolve().parents[2] / "data" / "scenes"
# A small generated room that builds in about a second (2,000 rays, RT60 0.3-0.4 s); its
# listener is at least 1.5 m from every wall, so any range up to 1 m fits it.
FAST = RoomRanges(width_m=(5.0, 6.0), length_m=(6.0, 7.0), height_m=(2.5, 2.6), rt60_s=(0.3, 0.4),
                  listener_height_m=(1.6, 1.7), distance_m=(1.0, 1.2), n_rays=2000)


@pytest.fixture(scope="module")
def kemar():
    return load_hrirs()


def _heard(dry, trajectory, lookup, onset=4000, n=FS):
    return mix([Event("x", "c", onset, len(dry), trajectory)], {"x": dry}.__getitem__, lookup, n)


def _lag(a: np.ndarray, b: np.ndarray, up: int = 8) -> float:
    """Samples by which `b` lags `a` (cross-correlation of the ears' sum, on a grid `up` times finer)."""
    a, b = (resample_poly(x.sum(axis=0), up, 1) for x in (a, b))
    return (int(np.argmax(correlate(b, a, mode="full"))) - (len(a) - 1)) / up


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x**2))


# --------------------------------------------------------------------------- anechoic physics


def test_anechoic_level_falls_as_one_over_r_and_arrives_later_by_the_path(kemar):
    """White noise at 1, 2 and 4 m through MIT KEMAR (measured at 1.4 m): -6.02 dB per
    doubling of distance (to 0.2 dB: the fractional-delay kernel's gain ripple is far below
    that), and a click arrives (r2 - r1) / c later (to a sample). At the HRIRs' own distance
    the render is the plain one (delay 0, gain 1)."""
    lookup = Lookup(kemar, None, "free")
    noise = np.random.default_rng(0).standard_normal(8000) * 0.1
    click = np.zeros(400)
    click[0] = 1.0
    level = {r: _rms_db(_heard(noise, Trajectory(60.0, distance_m=r), lookup)) for r in (1.0, 2.0, 4.0)}
    assert abs(level[2.0] - level[1.0] + 6.02) < 0.2 and abs(level[4.0] - level[2.0] + 6.02) < 0.2
    heard = {r: _heard(click, Trajectory(300.0, distance_m=r), lookup) for r in (1.0, 2.0, 4.0)}
    for r1, r2 in ((1.0, 2.0), (2.0, 4.0), (1.0, 4.0)):
        assert abs(_lag(heard[r1], heard[r2]) - (r2 - r1) / SPEED_OF_SOUND * FS) <= 1.0
    at_hrir = _heard(noise, Trajectory(60.0, distance_m=hrir_distance(kemar, Trajectory(60.0))), lookup)
    np.testing.assert_allclose(at_hrir, _heard(noise, Trajectory(60.0), kemar), atol=1e-12)


def test_a_source_nearer_than_the_hrirs_is_heard_before_its_onset(kemar):
    """At 0.5 m a click arrives (1.4 - 0.5) / c = 42 samples before the render at 1.4 m,
    so before the labelled onset; it is not cut (its energy is 1/r^2 more, not less)."""
    click = np.zeros(200)
    click[0] = 1.0
    lookup = Lookup(kemar, None, "free")
    near, far = (_heard(click, Trajectory(90.0, distance_m=r), lookup) for r in (0.5, 1.4))
    assert abs(_lag(near, far) - 0.9 / SPEED_OF_SOUND * FS) <= 1.0
    assert np.abs(near[:, :4000]).max() > 0.5 * np.abs(near).max()  # its direct sound is before the onset
    assert not np.abs(far[:, :4000 - 16]).any()  # at 1.4 m nothing is (but the kernel's 1 ms)
    assert abs(_rms_db(near) - _rms_db(far) - 20 * np.log10(1.4 / 0.5)) < 0.2


@pytest.mark.parametrize(("start", "end"), [(1.0, 3.0), (3.0, 0.5)])
def test_a_source_changing_distance_is_doppler_shifted(kemar, start, end):
    """A 1 kHz tone going from `start` to `end` metres in one second (v = end - start m/s:
    receding at 2 m/s, approaching at 2.5 m/s through the HRIRs' 1.4 m) is heard at
    f (1 - v / c) (the delay line reads the distance at the time of hearing: within 0.05 Hz
    of the exact f c / (c + v)), and its level follows 1/r."""
    n = FS
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(n) / FS)
    trajectory = Trajectory(0.0, distance_m=start, distance_rate=(end - start) * FS / (n - 1))
    y = _heard(tone, trajectory, Lookup(kemar, None, "free"), onset=0, n=n + 400)[0]
    phase = np.unwrap(np.angle(hilbert(y)[2000:14000]))
    heard = np.polyfit(np.arange(phase.size) / FS, phase, 1)[0] / (2 * np.pi)
    v = trajectory.distance_rate
    assert abs(heard - 1000.0 * SPEED_OF_SOUND / (SPEED_OF_SOUND + v)) < 0.5  # the shift is 5.8 and 7.3 Hz
    early, late = (_rms_db(y[s]) for s in (slice(500, 1500), slice(n - 1500, n - 500)))
    r_early, r_late = trajectory.distance_at([1000 / FS, (n - 1000) / FS])  # the windows' centres
    assert abs(early - late - 20 * np.log10(r_late / r_early)) < 0.3


def test_a_still_distance_is_the_changing_distance_delay_line_at_rate_zero(kemar):
    """Two ways through `propagate`: one convolution with the kernel (a still distance) and
    a kernel per sample from a table (a changing one) give the same samples for the same
    distance (to 1e-5 of unit-variance noise: the table is within 1e-6 of the kernel)."""
    from bast.pipeline.irs.hall import fractional_delays
    from bast.pipeline.render.distance import propagate, tabled_kernels

    delays = np.random.default_rng(1).uniform(16.0, 300.0, 20000)
    (s1, k1), (s2, k2) = fractional_delays(delays, 32), tabled_kernels(delays)
    assert np.array_equal(s1, s2) and np.abs(k1 - k2).max() < 1e-6

    wet = np.random.default_rng(2).standard_normal((2, 3000))
    for r in (0.5, 1.4, 2.3):
        lead, still = propagate(wet, Trajectory(0.0, distance_m=r), 1.4, 2800)
        lead2, varying = propagate(wet, Trajectory(0.0, distance_m=r, distance_rate=1e-12), 1.4, 2800)
        n = min(still.shape[-1], varying.shape[-1])  # at 1.4 m the tiny rate adds a sample of room at the end
        assert lead == lead2 and not varying[:, n:].any() and not still[:, n:].any()
        np.testing.assert_allclose(still[:, :n], varying[:, :n], atol=1e-5)


# --------------------------------------------------------------------------- rooms


def _room_config(**kw) -> ScenesConfig:
    base = {"count": 3, "duration_s": 1.0, "events": (2, 3), "directions": parse_direction_options("0:360:90"),
            "environments": ("hall",), "rooms": 1, "room_ranges": FAST, "seed": 3, "test_fraction": 0.34,
            "distance": (0.5, 1.0)}
    return ScenesConfig(**{**base, **kw})


def test_in_a_room_the_direct_to_reverberant_ratio_falls_with_distance():
    """The room's bank at --distance 0.5:1 (8 grid distances, 1 dB apart): a click at each
    grid distance, rendered through the scenes' lookup, has a DRR that falls at every step,
    by 6 dB +- 2 over the doubling (diffuse field: direct energy 1/r^2, late energy the
    same everywhere; the early reflections change with the position, hence the margin)."""
    config = _room_config()
    (_, bank, _), = scene_irs(config).values()
    grid = distance_grid(*config.distance)
    assert len(grid) == 8 and bank.ir.shape[0] == 8 * 4
    np.testing.assert_allclose(np.unique(np.round(bank.distance_m, 9)), grid)
    lookup = Lookup(bank, None, "grid")
    click = np.zeros(8)
    click[0] = 1.0
    for azimuth in (0.0, 90.0):
        drr = [drr_db(_heard(click, Trajectory(azimuth, distance_m=float(r)), lookup, onset=100), FS) for r in grid]
        assert np.all(np.diff(drr) < 0), drr
        assert 4.0 < drr[0] - drr[-1] < 8.0, drr
    # a source receding from 0.5 to 1 m passes through every grid distance, in order
    idx, _ = lookup(Trajectory(0.0, distance_m=0.5, distance_rate=0.5), np.linspace(0.0, 1.0, 200))
    heard = bank.distance_m[idx]
    assert np.all(np.diff(heard) >= 0) and np.allclose(np.unique(np.round(heard, 9)), grid)
    assert np.all(np.abs(np.log(heard / np.linspace(0.5, 1.0, 200))) <= np.log1p(grid_error()) + 1e-9)


def test_a_bank_at_the_rooms_own_distance_is_the_bank_without_a_grid(kemar):
    """One calibration and one tail per direction whatever the distances: at the room's own
    radius the grid's BRIRs are exactly the plain bank's."""
    spec = layout(_room_config().spatialize_config()).rooms["room-00"]
    plain = build_hall([0.0, 90.0], kemar, spec)
    gridded = build_hall([0.0, 90.0], kemar, spec, distances_m=[0.6, spec.distance_m])
    np.testing.assert_array_equal(gridded.ir[2:], plain.ir)
    assert gridded.distance_m.tolist() == [0.6, 0.6, spec.distance_m, spec.distance_m]
    assert not np.array_equal(gridded.ir[:2], plain.ir)


def test_room_scenes_at_distance_are_their_events_through_the_written_bank(tmp_path):
    """A run in a generated room with moving sources changing distance: the bank under
    irs/ holds every direction at every grid distance (read back from the SOFA source
    positions), each scene is its events re-rendered through it, and the labels carry each
    event's distance, linear in time, within the range."""
    config = _room_config(moving=0.5, speed=(30.0, 60.0))
    refs = DefaultCorpus(n_clips=12, seed=3, speech=False).list_clips()
    render_scenes(refs, tmp_path / "s1", config)
    bank = load_lookup(str(tmp_path / "s1" / "irs" / "room-00.sofa"), distance="grid")
    np.testing.assert_allclose(bank.grid_m, distance_grid(0.5, 1.0), atol=1e-6)
    manifest = json.loads((tmp_path / "s1" / "manifest.json").read_text())
    assert manifest["totals"]["distance"]["room_grid_max_relative_error"] == pytest.approx(grid_error(), abs=1e-4)
    by_id = {r.clip_id: r for r in refs}
    changing = 0
    for sh in _shards(tmp_path / "s1"):
        for i, sid in enumerate(sh["scene_id"]):
            pool = split_pool(refs, config, sh["split"][i])
            events = draw_scene(sid, config, pool, lambda c: len(load_event(by_id[c], config.policy, FS)[0]))
            sounds = {e.clip_id: load_event(by_id[e.clip_id], config.policy, FS)[0] for e in events}
            np.testing.assert_allclose(mix(events, sounds.__getitem__, bank, FS), sh["audio"][i], atol=1e-5)
            rows = sh["labels"][sh["label_offsets"][i]:sh["label_offsets"][i + 1]]
            _check_label_distances(rows, events)
            changing += sum(e.trajectory.distance_rate != 0 for e in events)
    assert changing >= 1


def _check_label_distances(rows: np.ndarray, events: list[Event], lo: float = 0.5, hi: float = 1.0) -> None:
    for track, e in enumerate(events):
        mine = rows[rows[:, 2] == track]
        t = np.clip((mine[:, 0] + 0.5) * LABEL_SAMPLES - e.onset, 0, e.length - 1) / FS
        np.testing.assert_allclose(mine[:, 5], e.trajectory.distance_m + e.trajectory.distance_rate * t, rtol=1e-6)
        assert np.all((mine[:, 5] >= lo - 1e-6) & (mine[:, 5] <= hi + 1e-6))


def _shards(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    shards = []
    for s in manifest["shards"]:
        with h5py.File(out / s["path"], "r") as f:
            shards.append({k: (d.asstr()[()] if d.dtype.kind == "O" else d[()]) for k, d in f.items()}
                          | {"params": json.loads(f.attrs["params"])})
    return shards




def test_grid_distances_are_a_db_apart_and_the_nearest_within_the_stated_error():
    grid = distance_grid(0.7, 3.0)
    assert grid[0] == pytest.approx(0.7) and grid[-1] == pytest.approx(3.0)
    assert np.all(20 * np.log10(grid[1:] / grid[:-1]) <= 1.0 + 1e-9)
    r = np.linspace(0.7, 3.0, 2001)
    nearest = grid[np.argmin(np.abs(np.log(r[:, None] / grid[None, :])), axis=1)]
    assert np.max(np.abs(nearest / r - 1)) <= grid_error() + 1e-9 and grid_error() == pytest.approx(0.0593, abs=1e-4)
    assert distance_grid(2.0, 2.0).tolist() == [2.0]


# --------------------------------------------------------------------------- drawing and labels


def test_each_event_draws_its_distance_and_the_labels_carry_it():
    pool = {"x": [f"x{i}" for i in range(10)], "y": [f"y{i}" for i in range(10)]}
    lengths = {c: 4000 + 300 * i for i, c in enumerate(pool["x"] + pool["y"])}
    grid = [tuple(p) for p in parse_direction_options("0:360:90").tolist()]
    kemar = load_hrirs()
    moved = still = 0
    for seed in range(10):
        kw = {"n_samples": 5 * FS, "n_events": 8, "max_overlap": 2, "grid": grid, "moving": 0.5,
              "speed": (10, 60)}
        events = draw_events(np.random.default_rng(seed), pool, lengths.get, distance=(0.5, 4.0), **kw)
        plain = draw_events(np.random.default_rng(seed), pool, lengths.get, **kw)
        assert all(e.trajectory.distance_m is None for e in plain)
        for e in events:
            ends = e.trajectory.distance_at([0.0, (e.length - 1) / FS])
            assert np.all((ends >= 0.5) & (ends <= 4.0))
            moved += e.trajectory.distance_rate != 0
            still += not e.trajectory.moving and e.trajectory.distance_rate == 0
            turns = e.trajectory.azimuth_rate != 0 or e.trajectory.elevation_rate != 0
            assert turns or e.trajectory.distance_rate == 0  # only a moving event changes distance
        _check_label_distances(label_rows(events, {"x": 0, "y": 1}, 5 * FS, irs=kemar), events, 0.5, 4.0)
    assert moved >= 5 and still >= 5


def test_the_same_seed_draws_the_same_scene_with_distance():
    config = ScenesConfig(count=4, distance=(1.0, 2.0), moving=0.5, seed=5)
    pool = {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}
    length = {"a1": 9000, "a2": 7000, "a3": 12000, "b1": 5000, "b2": 16000}.get
    one, two = (draw_scene("train-00001", config, pool, length) for _ in range(2))
    assert one == two and all(e.trajectory.distance_m is not None for e in one)
    other = draw_scene("train-00001", ScenesConfig(count=4, distance=(1.0, 2.0), moving=0.5, seed=6), pool, length)
    assert [e.trajectory.distance_m for e in other] != [e.trajectory.distance_m for e in one]


@pytest.fixture(scope="module")
def anechoic_run(tmp_path_factory):
    """A small anechoic run at --distance 1:3 (half the events moving), rendered twice."""
    out = tmp_path_factory.mktemp("distance")
    refs = DefaultCorpus(n_clips=16, seed=4, speech=False).list_clips()
    config = ScenesConfig(count=4, duration_s=1.0, events=(2, 3), moving=0.5, speed=(30, 60),
                          directions=parse_direction_options("0:360:45"), environments=("anechoic",), seed=4,
                          test_fraction=0.25, distance=(1.0, 3.0))
    for name in ("a", "b"):
        render_scenes(refs, out / name, config)
    return out, config


def test_the_same_seed_renders_the_same_scenes_and_labels(anechoic_run):
    out, _ = anechoic_run
    a, b = _shards(out / "a"), _shards(out / "b")
    for x, y in zip(a, b, strict=True):
        for key in ("audio", "labels", "event_distance_m", "event_distance_rate", "event_azimuth_deg"):
            np.testing.assert_array_equal(x[key], y[key])
    rows = np.concatenate([s["labels"] for s in a])
    assert len(np.unique(np.round(rows[:, 5], 3))) > 10 and rows[:, 5].min() >= 1.0 and rows[:, 5].max() <= 3.0
    assert a[0]["params"]["distance"] == [1.0, 3.0]


def test_scenes_without_distance_are_what_they_were():
    """The run of tests/data/scenes/no_distance_reference.npz, made by bast before --distance
    existed (main at cf15978): anechoic and a generated room, still and moving events. Its
    draws and labels are exact; its audio (every 53rd sample) equal to float32 rounding
    (1e-6: FFTs may round differently on another machine); no parameter names a distance."""
    import tempfile

    reference = np.load(DATA / "no_distance_reference.npz")
    refs = DefaultCorpus(n_clips=16, seed=3, speech=False).list_clips()
    config = ScenesConfig(count=4, duration_s=1.0, events=(2, 4), moving=0.5, speed=(30, 90),
                          directions=parse_direction_options("0:360:90"), environments=("anechoic", "hall"), rooms=1,
                          room_ranges=FAST, seed=3, scenes_per_shard=2, test_fraction=0.25)
    with tempfile.TemporaryDirectory() as tmp:
        render_scenes(refs, Path(tmp) / "s1", config)
        manifest = json.loads((Path(tmp) / "s1" / "manifest.json").read_text())
        assert "distance" not in manifest["params"] and "distance" not in manifest["totals"]
        seen = set()
        for s in manifest["shards"]:
            name = Path(s["path"]).stem
            with h5py.File(Path(tmp) / "s1" / s["path"], "r") as f:
                assert "event_distance_m" not in f and "distance" not in json.loads(f.attrs["params"])
                for key in reference:
                    if key.startswith(name + "/"):
                        seen.add(key)
                        column = key.split("/", 1)[1]
                        got = f[column].asstr()[()] if column in ("scene_id", "room") else f[column][()]
                        if column == "audio":
                            np.testing.assert_allclose(got[:, :, ::53], reference[key], atol=1e-6, err_msg=key)
                        else:
                            np.testing.assert_array_equal(got, reference[key], err_msg=key)
    assert seen == set(reference)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("distance", "words"), [
    ("3:1", "low before high"), ("0:1", "at least 0.2"), ("-1", "at least 0.2"), ("far", "LO:HI"),
    ("1:80", "at most 50 m"), ("1:5", "room hall"),
])
def test_cli_refuses_a_distance_out_of_range_inverted_or_not_fitting_the_room(tmp_path, distance, words):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["scenes", "default", str(out), "--sounds", "12", "--no-speech", "--count", "2",
                                 "--distance", distance, "--workers", "0"], env={"COLUMNS": "300"})
    lines = [line for line in r.output.splitlines() if line.startswith("error")]
    assert r.exit_code == 1 and len(lines) == 1 and "--distance" in lines[0] and words in lines[0], r.output
    assert not out.exists()


def test_a_range_that_does_not_fit_names_what_the_room_holds(tmp_path):
    hall = layout(ScenesConfig().spatialize_config()).rooms["hall"]
    assert room_reach_m(hall, [0.0]) == pytest.approx(3.8 - 0.5)  # the listener is 3.8 m from the west wall
    assert room_reach_m(hall, [0.0, 60.0]) == pytest.approx(min(3.3, (4.0 - 0.3 - 1.2) / np.sin(np.radians(60))))
    with pytest.raises(ConfigError, match=r"holds sources up to 3\.30 m"):
        render_scenes(DefaultCorpus(n_clips=8, seed=1, speech=False).list_clips(), tmp_path / "out",
                      ScenesConfig(distance=(1.0, 3.5)))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="measured BRIRs"):
        ScenesConfig(distance=(1.0, 2.0), brir="room.sofa")


def test_a_grid_too_large_for_a_bank_is_refused_before_it_is_built(monkeypatch, tmp_path):
    monkeypatch.setattr(scenes_mod, "MAX_ROOM_BRIRS", 20)
    with pytest.raises(ConfigError, match=r"--distance 0\.5:1: 32 BRIRs per room \(4 directions x 8 distances\)"):
        scene_irs(_room_config())


# --------------------------------------------------------------------------- DCASE 2025 stereo


def test_folding_to_the_front_is_dcase_2025s():
    """The baseline's fold_az_angle: wrap into [-180, 180), then 180 - a above 90 and
    -180 - a below -90 (a rear source mirrored across the interaural axis); the export's
    rows are label rows folded so, written by the one DCASE 2025 writer (bast.dcase.files)."""
    az = np.array([0, 30, 90, 91, 135, 180, 200, 269, 270, 300, -91, -180, 359.6, 450])
    np.testing.assert_allclose(fold_azimuth(az),
                               [0, 30, 90, 89, 45, 0, -20, -89, -90, -60, -89, 0, -0.4, 90], atol=1e-9)
    rows = np.array([[2, 1, 0, 135.4, 20.0, 1.234], [1, 0, 1, 250.0, -10.0, 2.0], [1, 0, 0, 10.0, 0.0, 0.5]])
    assert format_dcase2025_rows(dcase.dcase2025_rows(rows)).splitlines() == [
        "frame,class,source,azimuth,distance,onscreen", "1,0,0,10,50,0", "1,0,1,-70,200,0", "2,1,0,45,123,0"]


def test_stereo_dcase2025_export_round_trips_the_labels(anechoic_run, tmp_path):
    """Every scene as a 24 kHz stereo WAV (left first) and a 2025 metadata CSV, read as the
    DCASE 2025 baseline reads it (skip the header, split on commas); back to the shard's
    label rows: frame, class and source exact, azimuth the folded label's to half a degree,
    distance to half a centimetre."""
    out, _ = anechoic_run
    summary = dcase.export_dcase(out / "a", tmp_path / "d25", stereo2025=True)
    assert summary["format"] == "dcase2025-stereo" and summary["files"] == 4 and summary["fs"] == 24000
    by_scene = {sid: (sh, i) for sh in _shards(out / "a") for i, sid in enumerate(sh["scene_id"])}
    for line in (tmp_path / "d25" / "bast_index.csv").read_text().splitlines()[1:]:
        wav, _, sid = line.split(",")[:3]
        sh, i = by_scene[sid]
        audio, fs = sf.read(tmp_path / "d25" / wav)
        assert fs == 24000 and audio.shape == (24000, 2)
        lines = (tmp_path / "d25" / wav.replace("stereo_dev", "metadata_dev").replace(".wav", ".csv")).read_text()
        header, *body = lines.splitlines()
        assert header == "frame,class,source,azimuth,distance,onscreen"
        back = np.array([[int(v) for v in b.split(",")] for b in body]).reshape(-1, 6)
        rows = sh["labels"][sh["label_offsets"][i]:sh["label_offsets"][i + 1]].astype(np.float64)
        rows = rows[np.lexsort((rows[:, 2], rows[:, 0]))]
        assert len(back) == len(rows) > 0
        np.testing.assert_array_equal(back[:, :3], rows[:, :3])
        assert np.all(np.abs(back[:, 3]) <= 90)
        assert np.abs(back[:, 3] - fold_azimuth(rows[:, 3])).max() <= 0.5 + 1e-9
        assert np.abs(back[:, 4] / 100.0 - rows[:, 5]).max() <= 0.005 + 1e-6
        assert not back[:, 5].any()


def test_cli_stereo_dcase2025_export(anechoic_run, tmp_path):
    """The export from the CLI, and its metadata scored against itself by `seld-metrics
    --edition 2025` (which reads only files with the 2025 header): perfect, F 1 and no DOA or distance error
    for every class that occurs (micro-averaged, as classes absent from 4 short scenes
    would count F 0 in the macro average)."""
    out, _ = anechoic_run
    r = CliRunner().invoke(app, ["export-dcase", str(out / "a"), str(tmp_path / "x"), "--stereo-dcase2025"])
    assert r.exit_code == 0, r.output
    first = min((tmp_path / "x" / "metadata_dev").rglob("*.csv")).read_text().splitlines()[0]
    assert first == "frame,class,source,azimuth,distance,onscreen"
    meta = tmp_path / "x" / "metadata_dev"
    r = CliRunner().invoke(app, ["seld-metrics", str(meta), str(meta), "--edition", "2025", "--average", "micro",
                                 "--json", str(tmp_path / "self.json")])
    assert r.exit_code == 0, r.output
    assert "edition: DCASE 2025" in r.output
    d = json.loads((tmp_path / "self.json").read_text())
    assert d["edition"] == "2025" and d["f_score"] == pytest.approx(1.0)
    assert d["doa_error_deg"] == 0.0 and d["relative_distance_error"] == 0.0 and d["distance_error_m"] == 0.0
    scored = [c for c in d["classes"] if c["TP"]]
    assert scored and all(c["FP"] == c["FN"] == 0 for c in d["classes"])
    r = CliRunner().invoke(app, ["scenes", "default", str(tmp_path / "y"), "--stereo-dcase2025", "--workers", "0"])
    assert r.exit_code == 1 and "--export-dcase" in r.output and not (tmp_path / "y").exists()
