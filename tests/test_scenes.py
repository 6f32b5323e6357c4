"""Sound scenes: moving sources, overlapping events, labels, DCASE export, splits, resume,
and Stage 2 on scenes (docs/scenes.md)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import fftconvolve
from typer.testing import CliRunner

from bast.cli import app
from bast.corpora.procedural import DefaultCorpus
from bast.pipeline import dcase
from bast.pipeline.features import spectrogram_and_phase, spectrogram_db
from bast.pipeline.featurize import featurize
from bast.pipeline.irs import load_hrirs
from bast.pipeline.moving import BLOCK, Trajectory, nearest_directions, render, render_naive, segments
from bast.pipeline.scenefeatures import cut_window, stft_label_frames
from bast.pipeline.scenemodel import LABEL_SAMPLES, Event, draw_events, label_rows, parse_directions, scene_counts
from bast.pipeline.scenes import ScenesConfig, mix, render_scenes
from bast.sphere import great_circle_deg

FS = 16000


@pytest.fixture(scope="module")
def kemar():
    h = load_hrirs()
    return h, h.directions()


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
    irs, dirs = kemar
    n = 3 * FS
    dry = np.random.default_rng(0).standard_normal(n) * 0.1
    event = Event("noise", "white_noise", 0, n, Trajectory(90.0, 0.0, -60.0, 0.0))
    scene = mix([event], {"noise": dry}.__getitem__, irs.ir, dirs, n)
    rows = label_rows([event], {"white_noise": 0}, n, directions=dirs, distances=irs.distance_m)
    assert rows[0, 3] == pytest.approx(87.0) and rows[-1, 3] == pytest.approx(273.0)  # frame centres
    assert np.all(rows[:, 5] == pytest.approx(1.4))
    hrir_itd = {}
    errors, measured, expected = [], [], []
    win = FS // 20
    for start in range(0, n - win + 1, win):
        frame = (start + win // 2) // LABEL_SAMPLES
        az, el = rows[rows[:, 0] == frame][0, 3:5]
        g = int(nearest_directions(dirs, az, el))
        if g not in hrir_itd:
            hrir_itd[g] = itd_ms(*irs.ir[g].astype(float), max_lag=20)
        measured.append(itd_ms(scene[0, start:start + win], scene[1, start:start + win]))
        expected.append(hrir_itd[g])
    measured, expected = np.array(measured), np.array(expected)
    assert measured[0] > 0.55 and measured[-1] < -0.55  # left ear leads at 90 deg, right ear at 270
    assert np.abs(measured - expected).max() < 0.1  # ms: under 2 samples, while the ITD swings 1.4 ms
    assert np.corrcoef(measured, expected)[0, 1] > 0.99
    passed = sorted({g for *_, g in segments(n, event.trajectory, dirs)})
    still = max(max_step(np.stack([fftconvolve(dry, irs.ir[g, c])[:n] for c in (0, 1)])).max() for g in passed)
    assert max_step(scene).max() <= still


def _tone(n: int) -> np.ndarray:
    return 0.1 * np.sin(2 * np.pi * 200.0 * np.arange(n) / FS)


def _switched(dry, trajectory, irs, dirs, n):
    """The click-prone way: the output of one still render switched to the next at each
    change of direction."""
    out = np.zeros((2, n))
    runs = segments(n, trajectory, dirs)
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
    irs, dirs = kemar if room == "anechoic" else (hall_bank, hall_bank.directions())
    n = FS
    dry = _tone(n)
    trajectory = Trajectory(80.0, 0.0, 90.0, 0.0)
    y = render(dry, trajectory, irs.ir, dirs, n)
    passed = sorted({g for *_, g in segments(n, trajectory, dirs)})
    assert len(passed) >= 8
    still = max(max_step(np.stack([fftconvolve(dry, irs.ir[g, c])[:n] for c in (0, 1)])[:, 2000:]).max()
                for g in passed)
    assert max_step(y[:, 2000:]).max() <= still * 1.05
    assert max_step(_switched(dry, trajectory, irs.ir, dirs, n)[:, 2000:]).max() > still * 1.5


def test_grouped_rendering_equals_block_by_block_and_still_equals_convolution(kemar):
    irs, dirs = kemar
    dry = np.random.default_rng(1).standard_normal(9000)
    moving = Trajectory(10.0, 0.0, -120.0, 0.0)
    np.testing.assert_allclose(render(dry, moving, irs.ir, dirs), render_naive(dry, moving, irs.ir, dirs), atol=1e-10)
    g = int(nearest_directions(dirs, 30.0, 0.0))
    still = render(dry, Trajectory(30.0), irs.ir, dirs)
    np.testing.assert_allclose(still, np.stack([fftconvolve(dry, irs.ir[g, c].astype(float)) for c in (0, 1)]),
                               atol=1e-9)


def test_elevation_reflects_off_the_grid_range():
    t = Trajectory(0.0, 0.0, 0.0, 20.0, el_min=-10.0, el_max=30.0)
    az, el = t.at(np.array([0.0, 1.0, 1.5, 2.0, 3.5, 4.0]))
    np.testing.assert_allclose(el, [0.0, 20.0, 30.0, 20.0, -10.0, 0.0], atol=1e-9)
    assert np.all(az == 0.0)


# --------------------------------------------------------------------------- the scene model


def test_two_overlapping_events_sum_to_the_scene_and_are_both_labelled(kemar):
    irs, dirs = kemar
    rng = np.random.default_rng(4)
    sounds = {"a": rng.standard_normal(12000) * 0.1, "b": np.sin(np.arange(9000) * 0.3) * 0.2}
    events = [Event("a", "white_noise", 1600, 12000, Trajectory(30.0)),
              Event("b", "harmonic", 6400, 9000, Trajectory(270.0))]
    n = 2 * FS
    scene = mix(events, sounds.__getitem__, irs.ir, dirs, n)
    parts = [mix([e], sounds.__getitem__, irs.ir, dirs, n) for e in events]
    np.testing.assert_allclose(parts[0] + parts[1], scene, atol=1e-12)
    assert np.abs(parts[0]).max() > 0 and np.abs(parts[1]).max() > 0
    rows = label_rows(events, {"harmonic": 0, "white_noise": 1}, n, directions=dirs, distances=irs.distance_m)
    both = sorted(set(range(1, 9)) & set(range(4, 10)))  # frames 1-8 and 4-9 (onset 6400 + 9000 samples)
    for k in both:
        at = rows[rows[:, 0] == k]
        assert at[:, 1].tolist() == [1, 0] and at[:, 2].tolist() == [0, 1]
        assert at[:, 3].tolist() == [30.0, 270.0]
    assert set(rows[:, 0].astype(int)) == set(range(1, 10))  # frame 0 and 10- are silent: no row


def test_draw_events_respects_the_overlap_limit_and_the_pool():
    pool = {"x": [f"x{i}" for i in range(10)], "y": [f"y{i}" for i in range(10)]}  # never used up
    lengths = {c: 4000 + 300 * i for i, c in enumerate(pool["x"] + pool["y"])}
    grid = parse_directions("0:360:90")
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


def test_parse_directions():
    assert parse_directions("0:360:90") == ((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0))
    assert parse_directions("0,90", "-10,20") == ((0.0, -10.0), (90.0, -10.0), (0.0, 20.0), (90.0, 20.0))
    assert parse_directions(directions="-90/30, 0/0") == ((270.0, 30.0), (0.0, 0.0))


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
                          directions=parse_directions("0:360:90"), environments=("anechoic",), seed=6,
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
    from bast.pipeline.scenes import draw_scene, load_event, load_irs

    out, refs, config, _ = scene_run
    irs, dirs = load_irs(str(out / "s1" / "irs" / "anechoic.sofa"))
    by_id = {r.clip_id: r for r in refs}
    checked = 0
    for sh in read_scene_shards(out / "s1"):
        for i, sid in enumerate(sh["scene_id"]):
            ids = sh["event_clip_id"][sh["event_offsets"][i]:sh["event_offsets"][i + 1]]
            sounds = {c: load_event(by_id[c], config.policy, 2 * FS)[0] for c in ids}
            events = draw_scene(sid, config, _split_pool(refs, config, sh["split"][i]),
                                lambda c: len(load_event(by_id[c], config.policy, 2 * FS)[0]))
            assert [e.clip_id for e in events] == list(ids)
            parts = [mix([e], sounds.__getitem__, irs.ir, dirs, 2 * FS) for e in events]
            np.testing.assert_allclose(sum(parts), sh["audio"][i], atol=1e-5)
            checked += len(parts) > 1
    assert checked >= 3


def _split_pool(refs, config, split):
    from bast.pipeline.spatialize import assign_splits

    splits = assign_splits(refs, config.seed, config.val_fraction, config.test_fraction)
    pool = {}
    for r in refs:
        if splits[r.clip_id] == split:
            pool.setdefault(r.category, []).append(r.clip_id)
    return pool


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
        parsed = dcase.parse_csv(text)
        back = dcase.from_dcase_rows(parsed)
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
    d = dcase.to_dcase_rows(rows)
    assert d.tolist() == [[3, 1, 0, 90, 10, 140], [3, 2, 1, -90, 0, 100], [4, 0, 2, -180, -5, 235]]
    assert dcase.to_csv_lines(rows).splitlines()[1] == "3,2,1,-90,0,100"
    five = dcase.parse_csv("3,1,0,90,10\n")
    assert five.shape == (1, 5) and np.isnan(dcase.from_dcase_rows(five)[0, 5])
    with pytest.raises(dcase.DataError, match="line 2"):
        dcase.parse_csv("1,2,3,4,5,6\n1,2,x,4,5,6\n")


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


def test_cli_refuses_elevations_in_a_simulated_room(tmp_path):
    r = CliRunner().invoke(app, ["scenes", "default", str(tmp_path / "x"), "--sounds", "10", "--count", "1",
                                 "--env", "hall", "--elevations", "0,20", "--workers", "0"])
    assert r.exit_code == 1 and "horizontal plane" in r.output
    r = CliRunner().invoke(app, ["scenes", "default", str(tmp_path / "y"), "--speed", "60:10", "--workers", "0"])
    assert r.exit_code == 1 and "--speed" in r.output


def test_killed_scenes_run_resumes_to_byte_identical_shards(tmp_path):
    args = ["default", "--sounds", "30", "--seed", "7", "--count", "24", "--duration", "1", "--env", "anechoic",
            "--moving", "0.5", "--azimuths", "0:360:45", "--scenes-per-shard", "1"]
    cmd = [sys.executable, "-m", "bast.cli", "scenes"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [args[0], str(killed)] + args[1:] + ["--workers", "2"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "shards").glob("*.h5"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "the run finished before it could be killed"
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
