"""Stage 1 end to end: rendering, the shard contract, splits, bad inputs, resume."""

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
from bast.datasets import load_clip
from bast.datasets.procedural import DefaultCorpus
from bast.pipeline.irs import acoustics
from bast.pipeline.render.clips import prepare
from bast.pipeline.irs.sources import load_hrirs
from bast.pipeline.stage.shards import DirectoryLock, StageError, sha256_file
from bast.pipeline.render.conditions import SpatializeConfig, assign_splits
from bast.pipeline.render.spatialize import spatialize
from helpers import cli_killed_at_shard

FS = 16000
QUARTERS = (0.0, 90.0, 180.0, 270.0)


def read_all(out: Path) -> dict:
    """Every dataset of every shard, concatenated in manifest order."""
    manifest = json.loads((out / "manifest.json").read_text())
    parts: dict = {}
    for s in manifest["shards"]:
        with h5py.File(out / s["path"], "r") as f:
            for name, d in f.items():
                parts.setdefault(name, []).append(d.asstr()[()] if d.dtype.kind == "O" else d[()])
    return {k: np.concatenate(v) for k, v in parts.items()}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    refs = DefaultCorpus(n_clips=20, seed=3, speech=False).list_clips()
    config = SpatializeConfig(azimuths=QUARTERS, seed=3, samples_per_shard=16)
    summary = spatialize(refs, out, config)
    return out, refs, config, summary


def test_anechoic_sample_is_the_clip_convolved_with_the_hrir_pair(small_run):
    out, refs, config, _ = small_run
    data = read_all(out)
    hrirs = load_hrirs()
    by_id = {r.clip_id: r for r in refs}
    checked = 0
    for i in np.flatnonzero(data["env"] == 0)[::7]:
        audio, fs = load_clip(by_id[data["clip_id"][i]])
        clip = prepare(audio, fs, config.policy)[0][0]
        pair = hrirs.select([data["azimuth_deg"][i]])[0]
        expected = np.stack([fftconvolve(clip.astype(float), pair[c].astype(float))[:8000] for c in (0, 1)])
        np.testing.assert_allclose(data["audio"][i], expected, atol=2e-6 * np.abs(expected).max())
        checked += 1
    assert checked >= 5


def test_rendered_audio_puts_the_left_ear_first_at_90_degrees(small_run):
    out, *_ = small_run
    data = read_all(out)
    for env in (0, 1):
        for az, sign in ((90.0, 1), (270.0, -1)):
            rows = np.flatnonzero((data["env"] == env) & (data["azimuth_deg"] == az) & (data["category"] == "white_noise"))
            assert rows.size
            itd = np.median([acoustics.itd_ms(data["audio"][r], FS) for r in rows]) if env == 0 else None
            ild = np.mean([10 * np.log10(np.sum(data["audio"][r, 0] ** 2) / np.sum(data["audio"][r, 1] ** 2)) for r in rows])
            assert sign * ild > 3.0  # the near ear is louder, in both rooms
            if itd is not None:
                assert 0.5 <= sign * itd <= 0.8


def test_shard_contract_and_manifest(small_run):
    out, refs, config, summary = small_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "spatialize" and manifest["seed"] == 3
    assert manifest["versions"]["bast"] and manifest["versions"]["h5py"]
    assert manifest["params"]["azimuths"] == list(QUARTERS)
    n = 0
    for s in manifest["shards"]:
        path = out / s["path"]
        assert sha256_file(path) == s["sha256"]
        with h5py.File(path, "r") as f:
            assert f["audio"].shape == (s["samples"], 2, 8000) and f["audio"].dtype == np.float32
            assert f["audio"].compression is None
            for name in ("azimuth_deg", "env", "clip_id", "split", "category"):
                assert f[name].shape == (s["samples"],)
            assert set(f["split"].asstr()[()]) <= {s["split"]}
            assert json.loads(f.attrs["env_names"])[f["env"][0]] == s["env"] if s["samples"] else True
            assert f.attrs["fs"] == FS
        n += s["samples"]
    assert manifest["totals"]["samples"] == n == 20 * 4 * 2
    assert (out / "failures.jsonl").read_text() == ""
    assert (out / "irs" / "anechoic.sofa").exists() and (out / "irs" / "hall.sofa").exists()
    assert not list(out.rglob("*.tmp"))


def test_splits_are_by_clip_and_complete(small_run):
    out, refs, config, _ = small_run
    data = read_all(out)
    split_of: dict = {}
    for clip, split in zip(data["clip_id"], data["split"]):
        assert split_of.setdefault(clip, split) == split  # one clip, one split
    assert set(split_of.values()) == {"train", "val", "test"}
    for clip in split_of:  # every azimuth in both environments
        rows = data["clip_id"] == clip
        assert sorted(zip(data["env"][rows], data["azimuth_deg"][rows])) == sorted(
            (e, a) for e in (0, 1) for a in QUARTERS)


def test_split_assignment_is_seeded_and_stratified():
    refs = DefaultCorpus(n_clips=200, seed=0, speech=False).list_clips()
    a = assign_splits(refs, 0, 0.25, 0.1)
    assert a == assign_splits(refs, 0, 0.25, 0.1)
    assert a != assign_splits(refs, 1, 0.25, 0.1)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts["test"] == pytest.approx(20, abs=len({r.category for r in refs}))
    for cat in {r.category for r in refs}:  # every kind of sound in every split
        assert {a[r.clip_id] for r in refs if r.category == cat} == {"train", "val", "test"}


def test_resume_rewrites_only_what_is_missing_and_refuses_other_parameters(tmp_path):
    refs = DefaultCorpus(n_clips=6, seed=0, speech=False).list_clips()
    config = SpatializeConfig(azimuths=QUARTERS, environments=("anechoic",), samples_per_shard=8)
    spatialize(refs, tmp_path, config)
    before = read_all(tmp_path)
    shards = sorted((tmp_path / "shards").glob("*.h5"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()  # as if the run had died before this shard was renamed into place
    (tmp_path / "manifest.json").unlink()
    summary = spatialize(refs, tmp_path, config)
    assert summary.shards_written == 1 and summary.shards_resumed == len(shards) - 1
    for p in shards:
        if p != shards[1]:
            assert p.stat().st_mtime_ns == stamps[p]
    after = read_all(tmp_path)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    with pytest.raises(StageError, match="other parameters"):
        spatialize(refs, tmp_path, SpatializeConfig(azimuths=QUARTERS, environments=("anechoic",), seed=9))
    summary = spatialize(refs, tmp_path, SpatializeConfig(azimuths=(0.0, 180.0), environments=("anechoic",)),
                         overwrite=True)
    assert summary.samples == 6 * 2


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    refs = DefaultCorpus(n_clips=2, seed=0, speech=False).list_clips()
    with DirectoryLock(tmp_path):
        with pytest.raises(StageError, match="in use by another run"):
            spatialize(refs, tmp_path, SpatializeConfig(azimuths=QUARTERS, environments=("anechoic",)))


def write_wav(path, x, fs=FS, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, fs, **kw)


def test_cli_renders_good_clips_and_lists_every_bad_one(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "sounds"
    good = {
        "a.wav": (rng.normal(size=8000) * 0.1, FS),
        "dog/b.flac": (rng.normal(size=(int(1.2 * 44100), 2)) * 0.1, 44100),
        "c.wav": (rng.normal(size=int(0.3 * 48000)) * 0.1, 48000),
    }
    for name, (x, fs) in good.items():
        write_wav(src / name, x, fs)
    (src / "corrupt.wav").write_bytes(rng.bytes(3000))
    (src / "empty.wav").write_bytes(b"")
    (src / "notes.mp3").write_text("not audio at all")
    write_wav(src / "nan.wav", np.full(8000, np.nan), subtype="FLOAT")
    write_wav(src / "silence.wav", np.zeros(8000))
    write_wav(src / "short.wav", rng.normal(size=300) * 0.1)
    (src / "README.txt").write_text("a note, not a sound")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["spatialize", str(src), str(out), "--env", "anechoic", "--azimuths", "0,90",
                                      "--workers", "0", "--test-fraction", "0", "--examples", "1"])
    assert result.exit_code == 3, result.output  # done, but some inputs were skipped
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    reasons = {Path(f["path"]).name: f["reason"].lower() for f in failures}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "notes.mp3", "nan.wav", "silence.wav", "short.wav"}
    assert "empty" in reasons["empty.wav"] and "nan" in reasons["nan.wav"]
    assert "silen" in reasons["silence.wav"] and "short" in reasons["short.wav"]
    data = read_all(out)
    assert sorted(set(data["clip_id"])) == ["a.wav", "c.wav", "dog/b.flac"]
    assert set(data["category"][data["clip_id"] == "dog/b.flac"]) == {"dog"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["inputs_failed"] == 6 and manifest["totals"]["clips_rendered"] == 3
    assert "6 inputs skipped" in result.output and "README" not in (out / "failures.jsonl").read_text()
    assert list((out / "examples" / "anechoic").glob("*_az090.wav"))


@pytest.mark.slow
def test_killed_run_on_a_local_cluster_resumes_to_the_same_output(tmp_path):
    """SIGKILL a real 2-process LocalCluster run after its third shard; the re-run's output equals an
    uninterrupted run's, sample for sample."""
    args = ["default", "--sounds", "40", "--seed", "5", "--azimuths", "0:360:30", "--samples-per-shard", "12"]
    cmd = [sys.executable, "-m", "bast.cli", "spatialize"]
    killed = tmp_path / "killed"
    # killed with its dask workers once the third shard is reported done
    proc = cli_killed_at_shard("bast.pipeline.render.spatialize", 3,
                               ["spatialize", args[0], killed, *args[1:], "--workers", "2"], timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (killed / "manifest.json").exists()
    written = len(list((killed / "shards").glob("*.h5")))
    assert 3 <= written < 80

    resumed = subprocess.run(cmd + [args[0], str(killed)] + args[1:] + ["--workers", "2"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "resuming" in resumed.stdout
    whole = tmp_path / "whole"
    subprocess.run(cmd + [args[0], str(whole)] + args[1:] + ["--workers", "0"], check=True, capture_output=True)

    a, b = read_all(killed), read_all(whole)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert json.loads((killed / "manifest.json").read_text())["shards"] == json.loads((whole / "manifest.json").read_text())["shards"]


def test_each_thread_renders_into_its_own_buffer(small_run):
    """`dask worker` runs several threads per process; a Renderer reuses its output buffer."""
    import threading

    from bast.pipeline.render.spatialize import _renderer

    out, *_ = small_run
    path = str(out / "irs" / "anechoic.sofa")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_renderer(path)[0]))
    thread.start()
    thread.join()
    assert seen[0] is not _renderer(path)[0]
    assert _renderer(path)[0] is _renderer(path)[0]  # and cached within a thread
