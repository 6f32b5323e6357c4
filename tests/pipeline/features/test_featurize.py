"""Stage 2: the spectrogram definition against scipy itself, and the stage end to end."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.signal import spectrogram
from typer.testing import CliRunner

from bast.cli import app
from bast.datasets.procedural import DefaultCorpus
from bast.pipeline.features.featurize import featurize
from bast.model.data.loaders import standardize
from bast.pipeline.features.stft import FLOOR_DB, spectrogram_db
from bast.pipeline.stage.shards import StageError
from bast.pipeline.render.spatialize import SpatializeConfig, spatialize
from helpers import cli_killed_at_shard

FS = 16000


def reference_db(x):
    """SPEC 3 literally: scipy's spectrogram with the stated arguments, then the floor."""
    _, _, psd = spectrogram(np.asarray(x, dtype=np.float64), fs=FS, window=("tukey", 0.25), nperseg=256, noverlap=128)
    return 10 * np.log10(np.maximum(psd, 10 ** (FLOOR_DB / 10)))


def inputs():
    rng = np.random.default_rng(0)
    t = np.arange(8000) / FS
    return {
        "random": rng.normal(size=(2, 8000)) * 0.1,
        "dc_offset": rng.normal(size=(2, 8000)) * 0.01 + np.array([[0.5], [-0.3]]),
        "silent_channel": np.stack([rng.normal(size=8000) * 0.1, np.zeros(8000)]),
        "full_scale": np.clip(rng.normal(size=(2, 8000)) * 3, -1, 1),
        "pure_tone": np.stack([np.sin(2 * np.pi * 1000 * t), 0.5 * np.sin(2 * np.pi * 1000 * t + 0.3)]),
        "ramp_and_noise": np.linspace(-1, 1, 8000) + rng.normal(size=(2, 8000)) * 1e-3,
    }


@pytest.mark.parametrize("name", list(inputs()))
def test_spectrogram_matches_scipy_above_the_floor(name):
    x = inputs()[name].astype(np.float32)
    ours, ref = spectrogram_db(x), reference_db(x)
    assert ours.shape == (2, 129, 61) == ref.shape
    above = ref > FLOOR_DB
    assert np.abs(ours - ref)[above].max() < 0.01
    np.testing.assert_array_equal(ours[~above], np.float32(FLOOR_DB))  # the floor is where scipy's is
    if name == "silent_channel":
        assert np.all(ours[1] == np.float32(FLOOR_DB))


def test_batched_and_single_clip_calls_agree():
    batch = np.stack([v.astype(np.float32) for v in inputs().values()])
    out = spectrogram_db(batch)
    assert out.shape == (len(batch), 2, 129, 61) and out.dtype == np.float32
    for i, clip in enumerate(batch):
        np.testing.assert_array_equal(out[i], spectrogram_db(clip))


def test_standardize_is_per_sample_over_both_ears_and_keeps_the_ild():
    spec = torch.tensor(np.stack([spectrogram_db(v.astype(np.float32)) for v in inputs().values()]))
    z = standardize(spec)
    flat = z.reshape(len(z), -1)
    np.testing.assert_allclose(flat.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(1).numpy(), 1, atol=1e-5)
    # One mean for both ears: a louder left ear stays louder after standardisation.
    tone = list(inputs()).index("pure_tone")
    assert z[tone, 0].mean() > z[tone, 1].mean()


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    refs = DefaultCorpus(n_clips=12, seed=1, speech=False).list_clips()
    spatialize(refs, out, SpatializeConfig(azimuths=(0.0, 90.0, 180.0, 270.0), seed=1, samples_per_shard=8))
    return out


def shards_of(out: Path) -> list[Path]:
    return [out / s["path"] for s in json.loads((out / "manifest.json").read_text())["shards"]]


def relist(out: Path) -> None:
    """Record the shards' present checksums in the manifest, as if Stage 1 had written them
    so (featurize refuses a shard whose bytes differ from the manifest's)."""
    from bast.fileio import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    for s in manifest["shards"]:
        s["sha256"] = sha256_file(out / s["path"])
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("dtype, tolerance", [("float16", 0.1), ("float32", 0.01)])
def test_stage2_shards_agree_with_scipy_on_the_stage1_audio(stage1, tmp_path, dtype, tolerance):
    summary = featurize(stage1, tmp_path, dtype=dtype)
    assert summary.samples == 12 * 4 * 2 and not summary.failures
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stage"] == "featurize" and manifest["params"]["stft"]["nperseg"] == 256
    assert manifest["totals"]["spec_shape"] == [2, 129, 61] and "mean" in manifest["totals"]["standardize"]
    for s1, s2 in zip(shards_of(stage1), shards_of(tmp_path)):
        with h5py.File(s1, "r") as a, h5py.File(s2, "r") as b:
            assert b["spec"].dtype == np.dtype(dtype) and b["spec"].compression is None
            for name in ("azimuth_deg", "env", "clip_id", "split", "category"):
                np.testing.assert_array_equal(a[name][()], b[name][()])
            audio, spec = a["audio"][()], b["spec"][()].astype(np.float64)
            for i in range(0, len(audio), 3):
                ref = reference_db(audio[i])
                above = ref > FLOOR_DB
                assert np.abs(spec[i] - ref)[above].max() < tolerance


def test_changed_parameters_are_refused_and_a_deleted_shard_is_redone(stage1, tmp_path):
    featurize(stage1, tmp_path)
    with pytest.raises(StageError, match="other parameters"):
        featurize(stage1, tmp_path, dtype="float32")
    first = shards_of(tmp_path)[0]
    before = first.read_bytes()
    first.unlink()
    summary = featurize(stage1, tmp_path)
    assert summary.shards_written == 1
    assert first.read_bytes() == before  # same content, same bytes


def test_non_stage1_inputs_get_a_clear_error(stage1, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["featurize", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert result.exit_code == 1 and "no manifest.json" in result.output
    stage2 = tmp_path / "stage2"
    featurize(stage1, stage2)
    result = runner.invoke(app, ["featurize", str(stage2), str(tmp_path / "out2")])
    assert result.exit_code == 1 and "reads the output of spatialize" in result.output
    # A shard with the wrong shape is named.
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((stage1 / "manifest.json").read_text())
    (broken / "shards").mkdir()
    bad = broken / manifest["shards"][0]["path"]
    with h5py.File(stage1 / manifest["shards"][0]["path"], "r") as src, h5py.File(bad, "w") as dst:
        for name, d in src.items():
            dst[name] = d[()] if name != "audio" else d[()][:, :, :4000]
        dst.attrs["fs"] = 16000
    manifest["shards"] = manifest["shards"][:1]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    relist(broken)
    result = runner.invoke(app, ["featurize", str(broken), str(tmp_path / "out3")])
    assert result.exit_code == 1 and bad.name in result.output and "shape" in result.output


def test_a_sample_with_non_finite_audio_is_skipped_and_recorded(stage1, tmp_path):
    copy = tmp_path / "stage1"
    subprocess.run(["cp", "-r", str(stage1), str(copy)], check=True)
    path = shards_of(copy)[0]
    with h5py.File(path, "r+") as f:
        f["audio"][2, 0, 100] = np.nan
        clip = f["clip_id"].asstr()[2]
    relist(copy)
    summary = featurize(copy, tmp_path / "out")
    assert len(summary.failures) == 1 and summary.failures[0]["clip_id"] == clip
    assert "non-finite" in (tmp_path / "out" / "failures.jsonl").read_text()
    assert summary.samples == 12 * 4 * 2 - 1


def test_killed_featurize_resumes_to_identical_output(stage1, tmp_path):
    """featurize killed (SIGKILL) right after its second shard, then run again: the same
    shards, byte for byte, as an uninterrupted run."""
    cmd = [sys.executable, "-m", "bast.cli", "featurize", str(stage1)]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = cli_killed_at_shard("bast.pipeline.features.featurize", 2,
                               ["featurize", stage1, killed, "--workers", "0"], timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (killed / "manifest.json").exists()
    assert len(list((killed / "shards").glob("*.h5"))) == 2 < len(shards_of(stage1))
    resumed = subprocess.run(cmd + [str(killed), "--workers", "0"], check=True, capture_output=True, text=True)
    assert "resuming" in resumed.stdout
    subprocess.run(cmd + [str(whole), "--workers", "0"], check=True, capture_output=True)
    a = json.loads((killed / "manifest.json").read_text())["shards"]
    b = json.loads((whole / "manifest.json").read_text())["shards"]
    assert a == b  # the same shards with the same sha256: identical bytes


def test_featurize_runs_its_tasks_on_the_scheduler_named(stage1, tmp_path):
    """--scheduler ADDRESS: the tasks run on the dask cluster there (one this test starts,
    one worker), and the output is what a run in this process writes."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=":0") as cluster:
        (worker,) = cluster.workers.values()
        result = CliRunner().invoke(app, ["featurize", str(stage1), str(tmp_path / "dask"), "--scheduler",
                                          cluster.scheduler_address])
        assert result.exit_code == 0, result.output
        assert "on dask (1 workers)" in result.output
        assert worker.state.executed_count > 0  # the tasks ran there
    featurize(stage1, tmp_path / "here")
    a = json.loads((tmp_path / "dask" / "manifest.json").read_text())["shards"]
    assert a == json.loads((tmp_path / "here" / "manifest.json").read_text())["shards"]


def test_rerunning_a_finished_stage1_does_not_block_stage2(tmp_path):
    refs = DefaultCorpus(n_clips=3, seed=4, speech=False).list_clips()
    config = SpatializeConfig(azimuths=(0.0, 90.0), environments=("anechoic",), seed=4)
    spatialize(refs, tmp_path / "s1", config)
    featurize(tmp_path / "s1", tmp_path / "s2")
    again = spatialize(refs, tmp_path / "s1", config)  # nothing to do, but a new manifest date
    assert again.shards_written == 0
    summary = featurize(tmp_path / "s1", tmp_path / "s2")
    assert summary.shards_written == 0 and summary.shards_resumed > 0


def test_a_small_job_runs_in_this_process_and_says_so(stage1, tmp_path):
    result = CliRunner().invoke(app, ["featurize", str(stage1), str(tmp_path / "s2")])
    assert result.exit_code == 0, result.output
    assert "running in this process (a small job: 96 samples" in result.output
    # Asked for workers, it starts them, whatever the size.
    result = CliRunner().invoke(app, ["featurize", str(stage1), str(tmp_path / "s2w"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "running on dask (1 workers)" in result.output
    a = json.loads((tmp_path / "s2" / "manifest.json").read_text())["shards"]
    b = json.loads((tmp_path / "s2w" / "manifest.json").read_text())["shards"]
    assert [s["sha256"] for s in a] == [s["sha256"] for s in b]  # the same bytes either way


def test_interaural_phase_follows_the_itd_and_scipy():
    """A left ear leading by d samples gives a cross-spectrum angle of 2 pi f d / fs (wrapped),
    the same as scipy's own complex STFT; silent bins carry no phase."""

    from bast.pipeline.features.stft import spectrogram_and_phase

    rng = np.random.default_rng(3)
    s = rng.standard_normal(8100)
    d = 5
    left, right = s[d:d + 8000], s[:8000]  # left[n] = s[n + d]: the left ear hears it d samples earlier
    db, phase = spectrogram_and_phase(np.stack([left, right]))
    np.testing.assert_array_equal(db, spectrogram_db(np.stack([left, right])))
    assert phase.shape == (2, 129, 61)
    r = phase[0] ** 2 + phase[1] ** 2  # unit vectors, or 0 where a bin is at the floor
    assert np.all((np.abs(r - 1) < 1e-6) | (r == 0)) and np.mean(r == 0) < 0.01
    heard = r > 0
    # scipy's complex STFT with the spectrogram's window, segments and detrending
    _, _, zl = spectrogram(left, fs=16000, window=("tukey", 0.25), nperseg=256, noverlap=128, mode="complex")
    _, _, zr = spectrogram(right, fs=16000, window=("tukey", 0.25), nperseg=256, noverlap=128, mode="complex")
    angle = np.angle(zl * np.conj(zr))
    np.testing.assert_allclose(phase[0][heard], np.cos(angle)[heard], atol=1e-5)
    np.testing.assert_allclose(phase[1][heard], np.sin(angle)[heard], atol=1e-5)
    # Averaged over frames, the phase is the delay's: 2 pi f d / fs below the first wrap.
    f = np.arange(129) * 16000 / 256
    mean_angle = np.angle((phase[0] + 1j * phase[1]).mean(axis=-1))
    low = (f > 0) & (f < 16000 / (2 * d))
    # (61 frames of noise: each bin's mean scatters by a few hundredths of a radian)
    err = np.abs(mean_angle[low] - 2 * np.pi * f[low] * d / 16000)
    assert err.max() < 0.1 and err.mean() < 0.03
    # A silent right ear: no bin has a phase.
    _, silent = spectrogram_and_phase(np.stack([left, np.zeros(8000)]))
    assert not silent.any()


def test_featurize_phase_stores_it_beside_the_power(stage1, tmp_path):
    plain = featurize(stage1, tmp_path / "plain")
    with_phase = featurize(stage1, tmp_path / "phase", phase=True)
    assert with_phase.samples == plain.samples
    manifest = json.loads((tmp_path / "phase" / "manifest.json").read_text())
    assert manifest["params"]["phase"] and manifest["totals"]["phase_shape"] == [2, 129, 61]
    for a, b in zip(shards_of(tmp_path / "plain"), shards_of(tmp_path / "phase")):
        with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
            assert "phase" not in f and g["phase"].dtype == np.float16 and g["phase"].shape == g["spec"].shape
            np.testing.assert_array_equal(f["spec"][()], g["spec"][()])
            cos, sin = g["phase"][:, 0].astype(np.float32), g["phase"][:, 1].astype(np.float32)
            r = cos**2 + sin**2
            assert np.all((np.abs(r - 1) < 2e-3) | (r == 0))
