"""Sound scenes: moving sources, overlapping events, labels, DCASE export, splits, resume,
and Stage 2 on scenes (docs/scenes.md)."""

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import fftconvolve
from typer.testing import CliRunner

from bast.cli import app
from bast.errors import ConfigError
from bast.datasets.procedural import DefaultCorpus
from bast.dcase import files as dcase_files
from bast.errors import DataError
from bast.pipeline.render import dcase_export as dcase
from bast.pipeline.features.stft import spectrogram_and_phase, spectrogram_db
from bast.pipeline.features.featurize import featurize
from bast.pipeline.irs.sources import load_hrirs, parse_direction_options
from bast.pipeline.render.moving import BLOCK, Trajectory, nearest_directions, render, render_naive, segments
from bast.pipeline.features.scenes import cut_window, stft_label_frames
from bast.pipeline.render.scenemodel import LABEL_SAMPLES, Event, draw_events, label_rows, scene_counts
from bast.pipeline.render.scenes import ScenesConfig, mix, render_scenes
from bast.sphere import great_circle_deg
from helpers import cli_killed_at_shard, split_pool

FS = 16000


@pytest.fixture(scope="module")
def kemar():
    return load_hrirs()


def itd_ms(left: np.ndarray, right: np.ndarray, max_lag: int = 16) -> float:
    """Interaural time difference by cross-correlation (positive: the left ear leads), with
    a parabola through the peak for sub-sample precision."""
    lags = np.arange(-max_lag, max_lag + 1)
    c = np.array([np.dot(left[max(0, -k):len(left) - max(0, k)], right[max(0, k):len(right) - max(0, -k)])
                  for k in lags])
    i = int(np.clip(np.argmax(c), 1, len(c) - 2))
    a, b, d = c[i - 1], c[i], c[i + 1]
    shift = 0.5 * (a - d) / (a - 2 * b + d) if (a - 2 * b + d) != 0 else 0.0
    return 1000.0 * (lags[i] + shift) / FS


def max_step(y: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(y, axis=-1)).max(axis=-1)


# --------------------------------------------------------------------------- moving sources


def test_white_noise_moving_from_left_through_front_to_right_follows_its_labels(kemar):
    """90 deg -> 0 -> 270 deg in 3 s (60 deg/s) in the anechoic KEMAR: the ITD measured by
    cross-correlation in 50 ms windows follows the ITD of the HRIRs at the labelled
    direction, and no sample step exceeds what the same noise has through the head standing still."""
    irs = kemar
    n = 3 * FS
    dry = np.random.default_rng(0).standard_normal(n) * 0.1
    event = Event("noise", "white_noise", 0, n, Trajectory(90.0, 0.0, -60.0, 0.0))
    scene = mix([event], {"noise": dry}.__getitem__, irs, n)
    rows = label_rows([event], {"white_noise": 0}, n, irs=irs)
    assert rows[0, 3] == pytest.approx(87.0) and rows[-1, 3] == pytest.approx(273.0)  # frame centres
    assert np.all(rows[:, 5] == pytest.approx(1.4))
    hrir_itd = {}
    measured, expected = [], []
    win = FS // 20
    for start in range(0, n - win + 1, win):
        frame = (start + win // 2) // LABEL_SAMPLES
        az, el = rows[rows[:, 0] == frame][0, 3:5]
        g = int(nearest_directions(irs, az, el)[0])
        if g not in hrir_itd:
            hrir_itd[g] = itd_ms(*irs.ir[g].astype(float), max_lag=20)
        measured.append(itd_ms(scene[0, start:start + win], scene[1, start:start + win]))
        expected.append(hrir_itd[g])
    measured, expected = np.array(measured), np.array(expected)
    assert measured[0] > 0.55 and measured[-1] < -0.55  # left ear leads at 90 deg, right ear at 270
    assert np.abs(measured - expected).max() < 0.1  # ms: under 2 samples, while the ITD swings 1.4 ms
    assert np.corrcoef(measured, expected)[0, 1] > 0.99
    passed = sorted({g for *_, g in segments(n, event.trajectory, irs)[0]})
    still = max(max_step(np.stack([fftconvolve(dry, irs.ir[g, c])[:n] for c in (0, 1)])).max() for g in passed)
    assert max_step(scene).max() <= still


def _tone(n: int) -> np.ndarray:
    return 0.1 * np.sin(2 * np.pi * 200.0 * np.arange(n) / FS)


def _switched(dry, trajectory, irs, n):
    """The click-prone way: the output of one still render switched to the next at each
    change of direction."""
    out = np.zeros((2, n))
    runs, irs = segments(n, trajectory, irs)
    for k, (a, b, g) in enumerate(runs):
        full = np.stack([fftconvolve(dry, irs[g, c])[:n] for c in (0, 1)])
        lo = 0 if k == 0 else max(a + BLOCK // 2, 0)
        hi = n if k == len(runs) - 1 else min(b - BLOCK // 2, n)
        out[:, lo:hi] = full[:, lo:hi]
    return out


@pytest.mark.parametrize("room", ["anechoic", "hall"])
def test_a_moving_tone_has_no_click_where_switching_outputs_would(room, kemar, hall_bank):
    """A 200 Hz tone moving at 90 deg/s: its largest sample step stays within the largest
    step of the tone rendered still at any direction it passes; switching between still
    renders instead breaks that bound (so the check can fail)."""
    irs = kemar if room == "anechoic" else hall_bank
    n = FS
    dry = _tone(n)
    trajectory = Trajectory(80.0, 0.0, 90.0, 0.0)
    y = render(dry, trajectory, irs, n)
    passed = sorted({g for *_, g in segments(n, trajectory, irs)[0]})
    assert len(passed) >= 8
    still = max(max_step(np.stack([fftconvolve(dry, irs.ir[g, c])[:n] for c in (0, 1)])[:, 2000:]).max()
                for g in passed)
    assert max_step(y[:, 2000:]).max() <= still * 1.05
    assert max_step(_switched(dry, trajectory, irs, n)[:, 2000:]).max() > still * 1.5


def test_grouped_rendering_equals_block_by_block_and_still_equals_convolution(kemar):
    irs = kemar
    dry = np.random.default_rng(1).standard_normal(9000)
    moving = Trajectory(10.0, 0.0, -120.0, 0.0)
    np.testing.assert_allclose(render(dry, moving, irs), render_naive(dry, moving, irs), atol=1e-10)
    g = int(nearest_directions(irs, 30.0, 0.0)[0])
    still = render(dry, Trajectory(30.0), irs)
    np.testing.assert_allclose(still, np.stack([fftconvolve(dry, irs.ir[g, c].astype(float)) for c in (0, 1)]),
                               atol=1e-9)


def test_interpolated_hrirs_move_a_source_in_finer_steps_than_the_measured_grid(kemar):
    """A click every 100 ms moving 20 -> 50 deg at 10 deg/s: heard through the nearest
    measured HRIR, the ITD of the clicks (acoustics.itd_ms) jumps by a 5 deg grid step at a
    time and stays put between; through HRIRs interpolated along the path it changes at
    almost every click (1 deg apart), in steps at most half the largest nearest-grid jump,
    and follows the azimuth."""
    from bast.pipeline.irs.acoustics import itd_ms
    from bast.pipeline.irs.interpolate import Interpolator, interpolate
    from bast.pipeline.render.moving import Lookup

    n = 3 * FS
    clicks = np.arange(1200, n, FS // 10)  # 75 ms, 175 ms, ...: 30 clicks
    dry = np.zeros(n)
    dry[clicks] = 1.0
    trajectory = Trajectory(20.0, 0.0, 10.0, 0.0)
    interpolated = Lookup(kemar, Interpolator(kemar))
    itd = {}
    for name, lookup in (("nearest", kemar), ("interpolated", interpolated)):
        y = render(dry, trajectory, lookup, n)
        itd[name] = 1000.0 * np.array([itd_ms(y[:, c:c + 512], FS, upsample=32) for c in clicks])
    centres = 20.0 + 10.0 * clicks / FS
    jumps = {k: np.abs(np.diff(v)) for k, v in itd.items()}
    assert jumps["nearest"].max() > 25.0 and np.sum(jumps["nearest"] == 0) >= 15  # a staircase of 5 deg steps
    assert jumps["interpolated"].max() < 0.5 * jumps["nearest"].max()
    assert np.sum(jumps["interpolated"] == 0) <= 5  # a new direction at (almost) every click
    assert np.corrcoef(itd["interpolated"], centres)[0, 1] > 0.99
    # The interpolated render's blocks are heard within half a path step of the trajectory,
    # through the interpolated HRIR there.
    runs, pairs = segments(n, trajectory, interpolated)
    assert len(pairs) == 31  # 20, 21, ..., 50 deg
    np.testing.assert_allclose(pairs, interpolate(kemar, np.arange(20.0, 51.0), 0.0), atol=1e-7)
    for start, stop, g in runs:
        centre_deg = 20.0 + 10.0 * np.clip(np.arange(start, stop - 256, 256) + 256, 0, n) / FS
        assert np.abs(centre_deg - (20.0 + g)).max() <= 0.5 + 1e-9


def test_interpolated_still_source_is_the_plain_convolution_with_the_interpolated_hrir(kemar):
    from bast.pipeline.irs.interpolate import Interpolator, interpolate
    from bast.pipeline.render.moving import Lookup

    dry = np.random.default_rng(5).standard_normal(4000)
    lookup = Lookup(kemar, Interpolator(kemar))
    for az, el in ((33.0, 7.0), (30.0, 0.0)):  # between measured directions; a measured one
        pair = interpolate(kemar, az, el)[0].astype(float)
        expect = np.stack([fftconvolve(dry, pair[c]) for c in (0, 1)])
        np.testing.assert_allclose(render(dry, Trajectory(az, el), lookup), expect, atol=1e-9)
    g = int(nearest_directions(kemar, 30.0, 0.0)[0])
    np.testing.assert_array_equal(interpolate(kemar, 30.0, 0.0)[0], kemar.ir[g])


def test_elevation_reflects_off_the_grid_range():
    t = Trajectory(0.0, 0.0, 0.0, 20.0, el_min=-10.0, el_max=30.0)
    az, el = t.at(np.array([0.0, 1.0, 1.5, 2.0, 3.5, 4.0]))
    np.testing.assert_allclose(el, [0.0, 20.0, 30.0, 20.0, -10.0, 0.0], atol=1e-9)
    assert np.all(az == 0.0)


# --------------------------------------------------------------------------- the scene model


def test_two_overlapping_events_sum_to_the_scene_and_are_both_labelled(kemar):
    irs = kemar
    rng = np.random.default_rng(4)
    sounds = {"a": rng.standard_normal(12000) * 0.1, "b": np.sin(np.arange(9000) * 0.3) * 0.2}
    events = [Event("a", "white_noise", 1600, 12000, Trajectory(30.0)),
              Event("b", "harmonic", 6400, 9000, Trajectory(270.0))]
    n = 2 * FS
    scene = mix(events, sounds.__getitem__, irs, n)
    parts = [mix([e], sounds.__getitem__, irs, n) for e in events]
    np.testing.assert_allclose(parts[0] + parts[1], scene, atol=1e-12)
    assert np.abs(parts[0]).max() > 0 and np.abs(parts[1]).max() > 0
    rows = label_rows(events, {"harmonic": 0, "white_noise": 1}, n, irs=irs)
    both = sorted(set(range(1, 9)) & set(range(4, 10)))  # frames 1-8 and 4-9 (onset 6400 + 9000 samples)
    for k in both:
        at = rows[rows[:, 0] == k]
        assert at[:, 1].tolist() == [1, 0] and at[:, 2].tolist() == [0, 1]
        assert at[:, 3].tolist() == [30.0, 270.0]
    assert set(rows[:, 0].astype(int)) == set(range(1, 10))  # frame 0 and 10- are silent: no row


def test_draw_events_respects_the_overlap_limit_and_the_pool():
    pool = {"x": [f"x{i}" for i in range(10)], "y": [f"y{i}" for i in range(10)]}  # never used up
    lengths = {c: 4000 + 300 * i for i, c in enumerate(pool["x"] + pool["y"])}
    grid = [tuple(p) for p in parse_direction_options("0:360:90").tolist()]
    for seed in range(20):
        events = draw_events(np.random.default_rng(seed), pool, lengths.get, n_samples=5 * FS, n_events=10,
                             max_overlap=2, grid=grid, moving=0.5, speed=(10, 60))
        busy = np.zeros(50, int)
        for e in events:
            busy[list(e.frames)] += 1
            assert e.clip_id[0] == e.category and 0 <= e.onset <= 5 * FS - e.length
            assert (e.trajectory.azimuth_deg, e.trajectory.elevation_deg) in grid
        assert busy.max() <= 2
        assert len({e.clip_id for e in events}) == len(events)


def test_scene_counts_follow_the_sound_split():
    assert scene_counts(10, {"train": 60, "val": 20, "test": 20}) == {"train": 6, "val": 2, "test": 2}
    assert sum(scene_counts(7, {"train": 5, "val": 3, "test": 1}).values()) == 7
    assert scene_counts(5, {"train": 4, "val": 0, "test": 1})["val"] == 0


def test_scene_directions_are_parsed_as_spatialize_parses_them(tmp_path):
    """The scenes grid comes from Stage 1's parsing (irs.parse_direction_options): a grid,
    --directions all limited by --elevations LO:HI, a CSV; ScenesConfig wraps azimuths."""
    grid = parse_direction_options("0:360:90")
    assert ScenesConfig(directions=grid).directions == ((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0))
    assert parse_direction_options("0,90", "-10:20:30").tolist() == [[0, -10], [90, -10], [0, 20], [90, 20]]
    kemar = load_hrirs()
    every = parse_direction_options(directions="all", elevations="-10:10")
    assert len(every) == 216 and set(every[:, 1]) == {-10.0, 0.0, 10.0}
    assert len(parse_direction_options(directions="all")) == len(kemar) == 710
    # a CSV takes azimuths as --azimuths does, in [0, 360) (docs/conventions.md); ScenesConfig wraps
    (tmp_path / "d.csv").write_text("azimuth,elevation\n270,30\n0,0\n")
    assert ScenesConfig(directions=parse_direction_options(directions=str(tmp_path / "d.csv"))).directions == (
        (270.0, 30.0), (0.0, 0.0))
    assert ScenesConfig(directions=((-90.0, 30.0), (0.0, 0.0))).directions == ((270.0, 30.0), (0.0, 0.0))
    with pytest.raises(ConfigError, match="LO:HI limits"):
        parse_direction_options("0:360:90", "-10:10")
    with pytest.raises(ConfigError, match="CSV"):
        parse_direction_options(directions="0/0,90/30")  # the old scenes-only syntax is gone


# --------------------------------------------------------------------------- the stage


def read_scene_shards(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    shards = []
    for s in manifest["shards"]:
        with h5py.File(out / s["path"], "r") as f:
            shards.append({k: (d.asstr()[()] if d.dtype.kind == "O" else d[()]) for k, d in f.items()})
    return shards


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    refs = DefaultCorpus(n_clips=40, seed=6, speech=False).list_clips()
    config = ScenesConfig(count=10, duration_s=2.0, events=(3, 5), max_overlap=2, moving=0.5, speed=(30, 90),
                          directions=parse_direction_options("0:360:90"), environments=("anechoic",), seed=6,
                          scenes_per_shard=3, test_fraction=0.25)
    summary = render_scenes(refs, out / "s1", config)
    return out, refs, config, summary


def test_scene_shards_hold_audio_labels_and_the_class_list(scene_run):
    out, refs, config, summary = scene_run
    manifest = json.loads((out / "s1" / "manifest.json").read_text())
    assert manifest["stage"] == "scenes" and summary.samples == 10
    assert manifest["totals"]["categories"] == sorted({r.category for r in refs})
    n_rows = 0
    for sh in read_scene_shards(out / "s1"):
        assert sh["audio"].shape[1:] == (2, 2 * FS) and np.isfinite(sh["audio"]).all()
        off, ev = sh["label_offsets"], sh["event_offsets"]
        for i in range(len(sh["scene_id"])):
            rows = sh["labels"][off[i]:off[i + 1]]
            cats = sh["event_category"][ev[i]:ev[i + 1]]
            n_rows += len(rows)
            for r in rows:  # each row names the class of the event it comes from
                assert manifest["totals"]["categories"][int(r[1])] == cats[int(r[2])]
            per_frame = np.bincount(rows[:, 0].astype(int), minlength=20)
            assert per_frame.max() <= config.max_overlap
    assert n_rows > 0


def test_each_event_rendered_alone_sums_to_the_shard_scene(scene_run):
    """Re-render every event of the shards alone (same seed: the same draw) and sum."""
    from bast.pipeline.render.scenes import draw_scene, load_event, load_lookup

    out, refs, config, _ = scene_run
    irs = load_lookup(str(out / "s1" / "irs" / "anechoic.sofa"))
    by_id = {r.clip_id: r for r in refs}
    checked = 0
    for sh in read_scene_shards(out / "s1"):
        for i, sid in enumerate(sh["scene_id"]):
            ids = sh["event_clip_id"][sh["event_offsets"][i]:sh["event_offsets"][i + 1]]
            sounds = {c: load_event(by_id[c], config.policy, 2 * FS)[0] for c in ids}
            events = draw_scene(sid, config, split_pool(refs, config, sh["split"][i]),
                                lambda c: len(load_event(by_id[c], config.policy, 2 * FS)[0]))
            assert [e.clip_id for e in events] == list(ids)
            parts = [mix([e], sounds.__getitem__, irs, 2 * FS) for e in events]
            np.testing.assert_allclose(sum(parts), sh["audio"][i], atol=1e-5)
            checked += len(parts) > 1
    assert checked >= 3




def test_scenes_are_split_by_sound(scene_run):
    out, *_ = scene_run
    used = {}
    for sh in read_scene_shards(out / "s1"):
        for i, split in enumerate(sh["split"]):
            used.setdefault(split, set()).update(sh["event_clip_id"][sh["event_offsets"][i]:sh["event_offsets"][i + 1]])
    assert used.get("test") and used.get("train")
    assert not used["test"] & used["train"] and not used["test"] & used.get("val", set())
    assert not used["train"] & used.get("val", set())


def test_dcase_export_round_trips_into_the_shard_labels(scene_run):
    out, *_ = scene_run
    summary = dcase.export_dcase(out / "s1", out / "dcase")
    index = (out / "dcase" / "bast_index.csv").read_text().splitlines()[1:]
    assert summary["files"] == len(index) == 10
    shards = read_scene_shards(out / "s1")
    by_scene = {sid: (sh, i) for sh in shards for i, sid in enumerate(sh["scene_id"])}
    for line in index:
        wav, split, sid = line.split(",")[:3]
        sh, i = by_scene[sid]
        assert wav.startswith(f"stereo_dev/dev-{split}-bast/fold{dcase.FOLDS[split]}_room1_mix")
        audio, fs = sf.read(out / "dcase" / wav)
        assert fs == 24000 and audio.shape == (48000, 2)
        meta = out / "dcase" / wav.replace("stereo_dev", "metadata_dev").replace(".wav", ".csv")
        text = meta.read_text()
        assert not text or text[0].isdigit()  # no header line
        parsed = dcase_files.parse_dcase_csv(text)
        back = dcase_files.from_dcase_rows(parsed)
        rows = sh["labels"][sh["label_offsets"][i]:sh["label_offsets"][i + 1]].astype(float)
        assert len(back) == len(rows)
        np.testing.assert_array_equal(back[:, :3], rows[:, :3])
        assert great_circle_deg(back[:, 3], back[:, 4], rows[:, 3], rows[:, 4]).max() <= 0.71  # integer rounding
        np.testing.assert_allclose(back[:, 5], rows[:, 5], atol=0.005)
        assert np.all((parsed[:, 3] >= -180) & (parsed[:, 3] < 180))
        # frames without an active event have no row
        ev = slice(sh["event_offsets"][i], sh["event_offsets"][i + 1])
        active = set()
        for onset, dur in zip(sh["event_onset_s"][ev], sh["event_duration_s"][ev]):
            a = int(round(onset * FS))
            active |= set(range(a // LABEL_SAMPLES, (a + int(round(dur * FS)) - 1) // LABEL_SAMPLES + 1))
        assert set(parsed[:, 0].tolist()) == active


def test_dcase_rows_in_its_conventions():
    rows = np.array([[3, 1, 0, 90.0, 10.0, 1.4], [3, 2, 1, 270.0, 0.0, 1.0], [4, 0, 2, 179.6, -5.2, 2.346]])
    d = dcase_files.to_dcase_rows(rows)
    assert d.tolist() == [[3, 1, 0, 90, 10, 140], [3, 2, 1, -90, 0, 100], [4, 0, 2, -180, -5, 235]]
    assert dcase_files.label_rows_csv(rows).splitlines()[1] == "3,2,1,-90,0,100"
    five = dcase_files.parse_dcase_csv("3,1,0,90,10\n")
    assert five.shape == (1, 6) and np.isnan(five[0, 5]) and np.isnan(dcase_files.from_dcase_rows(five)[0, 5])
    with pytest.raises(DataError, match=r"DCASE CSV:2: not a number"):
        dcase_files.parse_dcase_csv("1,2,3,4,5,6\n1,2,x,4,5,6\n")


def test_featurized_scene_windows_equal_the_clip_spectrogram(scene_run):
    out, *_ = scene_run
    featurize(out / "s1", out / "s2", phase=True, dtype="float32")
    manifest = json.loads((out / "s2" / "manifest.json").read_text())
    assert manifest["totals"]["scenes"] and manifest["totals"]["spec_shape"] == [2, 129, 249]
    s1 = read_scene_shards(out / "s1")[0]
    with h5py.File(out / "s2" / "shards" / "shard-00000.h5", "r") as f:
        spec, phase = f["spec"][0], f["phase"][0]
        tracks = {k: f[k][0] for k in f if k.startswith("track_")}
        rows = f["labels"][f["label_offsets"][0]:f["label_offsets"][1]]
    np.testing.assert_array_equal(rows, s1["labels"][s1["label_offsets"][0]:s1["label_offsets"][1]])
    frames = stft_label_frames(249)
    for t in (0, 100, 248):  # the tracks list the events of the STFT frame's label frame
        want = rows[rows[:, 0] == frames[t]]
        got = tracks["track_category"][t]
        assert sorted(got[got >= 0].tolist()) == sorted(want[:, 1].astype(int).tolist())
    for start in (0, 37, 188):
        w = cut_window(spec, tracks, rows, start, phase=phase)
        clip = s1["audio"][0][:, 128 * start:128 * start + 8000]
        np.testing.assert_allclose(w.spec, spectrogram_db(clip), atol=1e-3)
        np.testing.assert_allclose(w.phase, spectrogram_and_phase(clip)[1], atol=1e-3)
        assert w.spec.shape == (2, 129, 61) and w.tracks["track_category"].shape == (61, 2)
        centres = (w.rows[:, 0] + (128 * start + 799) // 1600 + 0.5) * 1600
        assert np.all((centres >= 128 * start) & (centres < 128 * start + 60 * 128 + 256))
    with pytest.raises(ValueError):
        cut_window(spec, tracks, rows, 189)


def test_elevated_still_events_in_a_generated_room_are_spatialize_renderings(tmp_path):
    """Scenes in a generated room with sources above and below the head: the room's bank
    is Stage 1's (the same room, fitted to the elevations, and the same BRIRs as
    `spatialize` with the same options; its direct sound is tested against physics in
    test_directions.py), and each scene is its events' dry sounds convolved with
    spatialize's BRIR of their direction."""
    from bast.pipeline.irs.rooms import RoomRanges
    from bast.pipeline.render.scenes import load_event
    from bast.pipeline.irs.sofa import read_sofa
    from bast.pipeline.render.spatialize import SpatializeConfig, spatialize

    fast = RoomRanges(width_m=(5.0, 6.0), length_m=(6.0, 7.0), height_m=(2.5, 2.6), rt60_s=(0.3, 0.4),
                      listener_height_m=(1.6, 1.7), distance_m=(1.0, 1.2), n_rays=2000)
    grid = ((45.0, 60.0), (200.0, -25.0))
    refs = DefaultCorpus(n_clips=12, seed=2, speech=False).list_clips()
    config = ScenesConfig(count=3, duration_s=1.0, events=(2, 2), directions=grid, interpolate=True,
                          environments=("hall",), rooms=1, room_ranges=fast, seed=2, test_fraction=0.25)
    render_scenes(refs, tmp_path / "scenes", config)
    spatialize(refs[:2], tmp_path / "s1", SpatializeConfig(directions=grid, interpolate=True, environments=("hall",),
                                                            rooms=1, room_ranges=fast, seed=2))
    rooms = [json.loads((tmp_path / d / "manifest.json").read_text())["totals"]["rooms"] for d in ("scenes", "s1")]
    assert rooms[0] == rooms[1]
    theirs = read_sofa(tmp_path / "s1" / "irs" / "room-00.sofa")
    ours = read_sofa(tmp_path / "scenes" / "irs" / "room-00.sofa")
    np.testing.assert_array_equal(ours.ir, theirs.ir)
    np.testing.assert_allclose(np.stack([ours.azimuth_deg, ours.elevation_deg], -1), grid, atol=1e-9)
    by_id = {r.clip_id: r for r in refs}
    checked = 0
    for sh in read_scene_shards(tmp_path / "scenes"):
        for i, sid in enumerate(sh["scene_id"]):
            ev = slice(sh["event_offsets"][i], sh["event_offsets"][i + 1])
            expect = np.zeros((2, FS))
            for clip, onset, az, el in zip(sh["event_clip_id"][ev], sh["event_onset_s"][ev],
                                           sh["event_azimuth_deg"][ev], sh["event_elevation_deg"][ev]):
                dry = load_event(by_id[clip], config.policy, FS)[0]
                pair = theirs.select([az], el)[0].astype(float)
                a = int(round(onset * FS))
                wet = np.stack([fftconvolve(dry, pair[c])[:FS - a] for c in (0, 1)])
                expect[:, a:a + wet.shape[-1]] += wet
            np.testing.assert_allclose(sh["audio"][i], expect, atol=1e-5)
            rows = sh["labels"][sh["label_offsets"][i]:sh["label_offsets"][i + 1]]
            assert {(float(a), float(e)) for a, e in rows[:, 3:5]} <= set(grid)
            checked += ev.stop - ev.start
    assert checked >= 4


def test_room_banks_cover_the_grid_and_every_measured_direction_a_moving_source_may_pass(kemar):
    from bast.pipeline.render.scenes import bank_directions

    flat = parse_direction_options("0:360:90")
    assert bank_directions(kemar, flat, False, False).tolist() == flat.tolist()
    moving = bank_directions(kemar, flat, True, False)
    assert len(moving) == 72 and not np.any(moving[:, 1])  # the head's horizontal ring
    band = bank_directions(kemar, parse_direction_options("0:360:90", "0,20"), True, False)
    assert sorted(set(band[:, 1])) == [0.0, 10.0, 20.0] and len(band) == 216
    off = parse_direction_options("33", "7")
    assert [33.0, 7.0] in bank_directions(kemar, off, True, True).tolist()  # interpolated there


def test_cli_scenes_at_unmeasured_directions_need_interpolate(tmp_path):
    (tmp_path / "d.csv").write_text("azimuth,elevation\n33,7\n300,-15\n")
    args = ["scenes", "default", "--sounds", "12", "--count", "2", "--duration", "1", "--env", "anechoic",
            "--moving", "0.5", "--directions", str(tmp_path / "d.csv"), "--workers", "0"]
    r = CliRunner().invoke(app, args[:2] + [str(tmp_path / "a")] + args[2:])
    assert r.exit_code == 1 and "no impulse response at azimuth 33" in r.output
    r = CliRunner().invoke(app, args[:2] + [str(tmp_path / "b")] + args[2:] + ["--interpolate"])
    assert r.exit_code == 0, r.output
    params = json.loads((tmp_path / "b" / "params.json").read_text())
    assert params["interpolate"] and params["directions"] == [[33.0, 7.0], [300.0, -15.0]]
    rows = np.concatenate([sh["labels"] for sh in read_scene_shards(tmp_path / "b")])
    assert len(rows) and np.all((rows[:, 4] >= -15.0) & (rows[:, 4] <= 7.0))


def test_cli_max_event_cuts_every_event_to_that_length(tmp_path):
    """--max-event S: no event lasts longer than S seconds, in the events' record and in
    their label frames; the same scenes with the default (2 s) hold longer events."""
    args = ["default", "--sounds", "12", "--no-speech", "--seed", "7", "--count", "6", "--duration", "3",
            "--env", "anechoic", "--azimuths", "0:360:90", "--workers", "0"]
    longest = {}
    for max_event in ("2", "0.4"):
        out = tmp_path / f"max-{max_event}"
        r = CliRunner().invoke(app, ["scenes", args[0], str(out), *args[1:], "--max-event", max_event])
        assert r.exit_code == 0, r.output
        shards = read_scene_shards(out)
        durations = np.concatenate([sh["event_duration_s"] for sh in shards])
        assert len(durations) > 0
        longest[max_event] = durations.max()
        frames = 0
        for sh in shards:  # label rows per event of a scene: 100 ms frames it is active in
            off = sh["label_offsets"]
            for i in range(len(sh["scene_id"])):
                rows = sh["labels"][off[i]:off[i + 1]]
                frames = max([frames, *np.unique(rows[:, 2], return_counts=True)[1]])
        longest[max_event, "frames"] = frames
    assert longest["0.4"] <= 0.4 + 1 / FS and longest["2"] > 0.4
    assert longest["0.4", "frames"] <= 5 < longest["2", "frames"]  # 0.4 s spans at most 5 frames of 100 ms


def test_cli_refuses_a_speed_range_upside_down(tmp_path):
    r = CliRunner().invoke(app, ["scenes", "default", str(tmp_path / "y"), "--speed", "60:10", "--workers", "0"])
    assert r.exit_code == 1 and "--speed" in r.output


@pytest.mark.slow
def test_killed_scenes_run_resumes_to_byte_identical_shards(tmp_path):
    args = ["default", "--sounds", "30", "--seed", "7", "--count", "24", "--duration", "1", "--env", "anechoic",
            "--moving", "0.5", "--azimuths", "0:360:45", "--scenes-per-shard", "1"]
    cmd = [sys.executable, "-m", "bast.cli", "scenes"]
    killed = tmp_path / "killed"
    # killed with its dask workers once the third shard is reported done
    proc = cli_killed_at_shard("bast.pipeline.render.scenes", 3,
                               ["scenes", args[0], killed, *args[1:], "--workers", "2"], timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (killed / "manifest.json").exists()
    assert 3 <= len(list((killed / "shards").glob("*.h5"))) < 24
    resumed = subprocess.run(cmd + [args[0], str(killed)] + args[1:] + ["--workers", "2"], capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "resuming" in resumed.stdout
    whole = tmp_path / "whole"
    subprocess.run(cmd + [args[0], str(whole)] + args[1:] + ["--workers", "0"], check=True, capture_output=True)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    a = sorted((killed / "shards").glob("*.h5"))
    b = sorted((whole / "shards").glob("*.h5"))
    assert [p.name for p in a] == [p.name for p in b] and len(a) == 24
    assert [digest(p) for p in a] == [digest(p) for p in b]


def test_cli_on_a_folder_records_a_broken_sound_and_exports(tmp_path):
    """Class folders become categories; an unreadable sound is skipped with its reason
    (exit 3) and never drawn; export-dcase writes the DCASE layout of the result."""
    rng = np.random.default_rng(9)
    for cls in ("dog", "bell"):
        (tmp_path / "sounds" / cls).mkdir(parents=True)
        for i in range(6):
            sf.write(tmp_path / "sounds" / cls / f"{cls}{i}.wav", 0.1 * rng.standard_normal(4000 + 500 * i), FS)
    (tmp_path / "sounds" / "dog" / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    out = tmp_path / "s1"
    r = CliRunner().invoke(app, ["scenes", str(tmp_path / "sounds"), str(out), "--count", "4", "--duration", "1",
                                 "--env", "anechoic", "--events", "4", "--test-fraction", "0.2", "--workers", "0"])
    assert r.exit_code == 3, r.output
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["categories"] == ["bell", "dog"]
    used = {c for sh in read_scene_shards(out) for c in sh["event_clip_id"]}
    assert all(f["clip_id"] not in used for f in failures)
    assert [f["clip_id"] for f in failures] == ["dog/broken.wav"] and "corrupt" in failures[0]["reason"]
    r = CliRunner().invoke(app, ["export-dcase", str(out), str(tmp_path / "dcase")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "dcase" / "metadata_dev").rglob("*.csv"))) == 4
