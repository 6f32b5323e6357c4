"""`bast-cli evaluate` (a run on data it never saw), the generalisation matrix, `bast-cli
localize` on a recording, and shards checked before they are read.

The unseen head is `bast.pipeline.irs.sphericalhead`: a rigid sphere without pinnae, rendered
through the same spatializer as the bundled MIT KEMAR set the run is trained on.
"""

import csv
import json
import re
import shutil

import h5py
import numpy as np
import pytest
import soundfile as sf
from scipy.signal import fftconvolve
from typer.testing import CliRunner

from bast.cli import app
from bast.datasets.procedural import DefaultCorpus
from bast.errors import ConfigError, DataError
from bast.fileio import sha256_file
from bast.model.inference import localize as lz
from bast.model.data.loaders import read_shard
from bast.model.targets.metrics import load_predictions
from bast.model.evaluation.runs import evaluate_run
from bast.model.train import preset, train
from bast.pipeline.features.featurize import featurize
from bast.pipeline.irs.sofa import write_sofa
from bast.pipeline.render.spatialize import SpatializeConfig, spatialize
from bast.pipeline.irs.sphericalhead import spherical_head_irs

runner = CliRunner()
AZIMUTHS = tuple(np.arange(0.0, 360.0, 30.0))
TINY = dict(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0, batch_size=16, warmup_steps=5,
            device="cpu", epochs=8, max_minutes=None, train_env="anechoic", test_env="anechoic")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """24 noise sounds at 12 azimuths rendered through KEMAR (trained on) and through a
    spherical head (never seen), both featurized, and a tiny run trained on KEMAR (~15 s)."""
    root = tmp_path_factory.mktemp("transfer")
    refs = [r for r in DefaultCorpus(n_clips=80, seed=4, speech=False).list_clips()
            if r.category in ("white_noise", "pink_noise", "brown_noise")]
    base = dict(azimuths=AZIMUTHS, environments=("anechoic",), seed=4, samples_per_shard=48, test_fraction=0.2)
    spatialize(refs, root / "kemar-s1", SpatializeConfig(**base))
    featurize(root / "kemar-s1", root / "kemar")
    write_sofa(root / "sphere.sofa", spherical_head_irs(np.arange(0.0, 360.0, 5.0)))
    spatialize(refs, root / "sphere-s1", SpatializeConfig(**base, hrir=str(root / "sphere.sofa")))
    featurize(root / "sphere-s1", root / "sphere")
    train(root / "kemar", root / "run", preset("tiny", **TINY))
    return root


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_spherical_head_has_the_interaural_cues_of_a_head():
    irs = spherical_head_irs([90.0, 0.0, 270.0], fs=48000)
    left, right = irs.ir[0]
    lag = np.argmax(np.correlate(right, left, "full")) - (len(left) - 1)  # > 0: the left ear leads
    assert 0.6e-3 < lag / 48000 < 0.72e-3  # Woodworth: (a / c)(1 + pi / 2) = 0.66 ms
    assert 10 * np.log10(np.sum(left**2) / np.sum(right**2)) > 6  # the left ear louder
    np.testing.assert_allclose(irs.ir[1, 0], irs.ir[1, 1], atol=1e-7)  # ahead: both ears alike
    np.testing.assert_allclose(irs.ir[2], irs.ir[0, ::-1], atol=1e-7)  # 270 mirrors 90


def test_evaluate_on_an_unseen_head_stores_reuses_and_reports(study, tmp_path):
    run, sphere = study / "run", study / "sphere"
    own_test = (run / "eval" / "test.json").read_bytes()
    result = runner.invoke(app, ["evaluate", str(run), "--on", str(sphere), "--split", "all", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    sets = json.loads((run / "eval" / "index.json").read_text())["sets"]
    (name, entry), = sets.items()
    assert name.startswith("sphere-all-") and name in result.output and "evaluated" in result.output
    metrics = json.loads((run / "eval" / name / "metrics.json").read_text())
    assert metrics["n"] == 24 * len(AZIMUTHS) and f"{metrics['ad_deg']:.2f}" in result.output
    # well below chance (90 deg) on a head it never saw: about 45 deg (its own test about 44)
    assert metrics["ad_deg"] < 65, metrics["ad_deg"]
    assert metrics["features_dir"] == str(sphere.resolve()) and len(metrics["data_sha256"]) == 64
    assert set(metrics["by_category"]) == {"white_noise", "pink_noise", "brown_noise"}
    assert set(metrics["by_env"]) == {"anechoic"} and len(metrics["per_azimuth"]["azimuth_deg"]) == len(AZIMUTHS)
    table = load_predictions(run / "eval" / name / "predictions.csv")
    assert len(table["ad_deg"]) == metrics["n"] and np.isclose(table["ad_deg"].mean(), metrics["ad_deg"])
    assert (run / "eval" / "test.json").read_bytes() == own_test  # the run's own test is untouched
    print(f"tiny KEMAR run: own test AD {json.loads(own_test)['ad_deg']:.1f} deg, "
          f"spherical head AD {metrics['ad_deg']:.1f} deg")

    again = runner.invoke(app, ["evaluate", str(run), "--on", str(sphere), "--split", "all", "--device", "cpu"])
    assert again.exit_code == 0 and "stored" in again.output
    assert json.loads((run / "eval" / name / "metrics.json").read_text())["created"] == metrics["created"]
    # --force evaluates again although the stored result is still valid: the files are
    # written anew (an atomic write is a new file), with the same figures
    stored = {f: (run / "eval" / name / f).stat().st_ino for f in ("metrics.json", "predictions.csv")}
    forced = runner.invoke(app, ["evaluate", str(run), "--on", str(sphere), "--split", "all", "--device", "cpu",
                                 "--force"])
    assert forced.exit_code == 0 and "evaluated" in forced.output and "stored" not in forced.output, forced.output
    assert all((run / "eval" / name / f).stat().st_ino != ino for f, ino in stored.items())
    redone = json.loads((run / "eval" / name / "metrics.json").read_text())
    assert redone["n"] == metrics["n"] and redone["ad_deg"] == pytest.approx(metrics["ad_deg"])
    assert list(json.loads((run / "eval" / "index.json").read_text())["sets"]) == [name]  # replaced, not added

    out = tmp_path / "report"
    rep = runner.invoke(app, ["report", str(run), "--out", str(out), "--rollout-samples", "0", "--per-set-figures"])
    assert rep.exit_code == 0, rep.output
    page = (out / "index.html").read_text()
    assert "Generalisation" in page and name in page and "own test split" in page
    rows = list(csv.reader((out / "generalisation.csv").open()))
    assert rows[1][1] == "own test split" and rows[2][1] == name
    for png in ("generalisation.png", "set0_polar_ad.png", "set0_run_categories.png"):
        assert (out / "figures" / png).exists(), png


def test_evaluate_refuses_other_spectrogram_parameters(study, tmp_path):
    other = _copy(study / "sphere", tmp_path / "other-stft")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["params"]["stft"]["nperseg"] = 512
    (other / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["evaluate", str(study / "run"), "--on", str(other), "--device", "cpu"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    (line,) = _error_lines(result.output)
    assert "stft.nperseg: trained on 256, this data 512" in line and "other-stft" in line


def test_extra_shard_labels_are_broken_down_and_older_shards_lack_them(study, tmp_path):
    data = _copy(study / "sphere", tmp_path / "labelled")
    manifest = json.loads((data / "manifest.json").read_text())
    test_shards = [s for s in manifest["shards"] if s["split"] == "test"]
    assert len(test_shards) >= 2
    for k, s in enumerate(manifest["shards"]):
        if s["split"] != "test":
            continue
        with h5py.File(data / s["path"], "r+") as f:
            for name in ("head", "room", "snr_db", "elevation_deg"):  # Stage 1 writes these now: start without them
                if name in f:
                    del f[name]
            if k != manifest["shards"].index(test_shards[-1]):  # the last: an older shard, without labels
                n = f["azimuth_deg"].shape[0]
                f.create_dataset("head", data=np.array(["sphere"] * n, dtype=object), dtype=h5py.string_dtype())
                f.create_dataset("snr_db", data=np.full(n, 20.0))
        s["sha256"] = sha256_file(data / s["path"])
    (data / "manifest.json").write_text(json.dumps(manifest))
    m = evaluate_run(study / "run", data, split="test", device="cpu")
    assert m["labels"] == ["head", "snr_db"]
    old_n = test_shards[-1]["samples"]
    assert m["by_head"]["sphere"]["n"] == m["n"] - old_n  # the older shard has no head: not a group
    assert m["by_snr_db"]["20"]["n"] == m["n"] - old_n and m["by_snr_db"]["none"]["n"] == old_n
    table = load_predictions(study / "run" / "eval" / m["name"] / "predictions.csv")
    assert set(table["head"].tolist()) == {"sphere", ""}


def test_a_corrupt_shard_is_one_clear_error(study, tmp_path):
    data = _copy(study / "kemar", tmp_path / "corrupt")
    manifest = json.loads((data / "manifest.json").read_text())
    shard = data / next(s for s in manifest["shards"] if s["split"] == "train")["path"]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 4096] = b"\xff" * 4096  # the middle: h5py alone would not notice
    shard.write_bytes(bytes(raw))
    for args in (["train", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", "--epochs", "1"],
                 ["evaluate", str(study / "run"), "--on", str(data), "--split", "train", "--device", "cpu"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit)
        (line,) = _error_lines(result.output)
        assert str(shard) in line and "corrupt" in line and "bast-cli featurize" in line
    # Without a checksum to compare (a shard read directly), a truncated file is still named.
    shard.write_bytes(bytes(raw[:len(raw) // 3]))
    with pytest.raises(DataError, match=re.escape(str(shard))):
        read_shard(shard)


def _moving_recording(path, fs=48000, seconds=3.0, radius_m=0.095, seed=1):
    """Noise at 90 deg (left) for the first half, then at 270 deg (right), through a spherical
    head of another size than the evaluation's; 24-bit WAV."""
    irs = spherical_head_irs([90.0, 270.0], fs=fs, radius_m=radius_m)
    half = int(seconds / 2 * fs)
    noise = np.random.default_rng(seed).standard_normal(2 * half)
    out = np.zeros((2, 2 * half))
    for k in range(2):
        part = slice(k * half, (k + 1) * half)
        for ear in range(2):
            out[ear, part] = fftconvolve(noise[part], irs.ir[k, ear])[:half]
    out *= 0.1 / np.sqrt(np.mean(out**2))
    sf.write(path, out.T, fs, subtype="PCM_24")
    return path


def test_localize_a_moving_source_from_an_unseen_head(study, tmp_path):
    moving = _moving_recording(tmp_path / "moving.wav")
    quiet = tmp_path / "quiet.flac"  # 22.05 kHz, 1 s of noise then 1 s of silence
    rng = np.random.default_rng(2)
    sig = np.zeros((44100, 2))
    sig[:22050] = 0.1 * rng.standard_normal((22050, 2))
    sf.write(quiet, sig, 22050)
    mono = tmp_path / "mono.wav"
    sf.write(mono, np.zeros(16000), 16000)
    out = tmp_path / "loc"
    result = runner.invoke(app, ["localize", str(study / "run"), str(moving), str(mono), str(quiet), "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # the mono file, named; the others done
    (line,) = _error_lines(result.output)
    assert "mono.wav" in line and "1 channel" in line

    rows = list(csv.DictReader((out / "moving.csv").open()))
    assert list(rows[0]) == list(lz.CSV_FIELDS)
    start = np.array([float(r["start_s"]) for r in rows])
    az = np.array([float(r["azimuth_deg"]) for r in rows])
    assert len(rows) == 26 and not any(r["silent"] == "1" for r in rows)  # (3 - 0.5) / 0.1 + 1 windows
    first, second = start + 0.5 <= 1.5, start >= 1.5
    left = np.mean((az[first] > 0) & (az[first] < 180))
    right = np.mean((az[second] > 180) & (az[second] < 360))
    print(f"left share {left:.2f} of {first.sum()} windows, right share {right:.2f} of {second.sum()} windows")
    assert left >= 0.8 and right >= 0.8
    assert all(float(r["confidence"]) > 0 for r in rows)
    summary = json.loads((out / "moving.json").read_text())
    assert summary["sample_rate_in"] == 48000 and summary["windows"] == 26
    assert (out / "moving.png").read_bytes()[:4] == b"\x89PNG"

    quiet_rows = list(csv.DictReader((out / "quiet.csv").open()))
    silent = [r for r in quiet_rows if r["silent"] == "1"]
    assert silent and all(r["azimuth_deg"] == "" for r in silent)
    assert float(silent[0]["start_s"]) >= 0.5 and quiet_rows[0]["silent"] == "0"


def test_localize_refuses_what_it_cannot_do(study, tmp_path):
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros((4000, 2)), 16000)
    result = runner.invoke(app, ["localize", str(study / "run"), str(short), "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 1 and "short.wav" in _error_lines(result.output)[0] and "250 ms" in result.output
    result = runner.invoke(app, ["localize", str(study / "run"), str(short), "--out", str(tmp_path), "--window-ms", "250"])
    assert result.exit_code == 1 and "--window-ms 250" in result.output
    with pytest.raises(DataError, match="not-audio.txt"):
        (tmp_path / "not-audio.txt").write_text("hello")
        lz.read_binaural(tmp_path / "not-audio.txt")
    with pytest.raises(ConfigError):
        lz.check_window_ms(1000)
    assert lz.silent_windows(np.array([-20.0, -70.0, -65.0, -59.0]), below_loudest_db=40.0).tolist() == [
        False, True, True, False]
    assert lz.output_stems(["a/x.wav", "b/x.wav", "y.flac"]) == ["x", "x-2", "y"]
