"""Training on the fly with the convolution and the STFT in torch on the device
(bast/model/data/devicefeatures.py): its features equal the workers' numpy path
(`SampleRenderer.render` + `Featurizer`) to float16 tolerance on real rendered samples,
anechoic and hall, on and off the grid, with and without noise; a run with it trains; the
same seed gives the same batches twice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bast.datasets.sources import resolve_source
from bast.errors import ConfigError
from bast.model.data import devicefeatures as dev
from bast.model.data.onthefly import Featurizer, OnTheFlyData
from bast.model.runs.checkpoint import read_metrics
from bast.model.runs.config import preset
from bast.model.targets.core import make_target
from bast.model.train import train_on_the_fly
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.features.stft import FLOOR_DB, spectrogram_and_phase, spectrogram_db
from bast.pipeline.render.recipe import read_recipe
from bast.pipeline.render.sampler import DrawSettings, SampleRenderer, draw, prepare_batch
from bast.pipeline.render.spatialize import SpatializeConfig, spatialize

KINDS = ("logpower", "phase")
GRID = tuple(np.arange(0.0, 360.0, 30.0))


def _stage1(root, **noise):
    src = resolve_source("default", sounds=16, seed=3, speech=False)
    spatialize(src.refs, root / "s1", SpatializeConfig(azimuths=GRID, seed=3, samples_per_shard=48, **noise),
               source=src.info)
    return root / "s1"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """16 procedural sounds, 12 azimuths, anechoic and hall (Stage 1 only)."""
    return _stage1(tmp_path_factory.mktemp("dev"))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return _stage1(tmp_path_factory.mktemp("dev-noise"), snr_db=(0.0, 20.0))


def _assert_features_match(got: np.ndarray, want: np.ndarray, floor_db: float = FLOOR_DB, stored: bool = False):
    """Features of the two paths (B, channels, 129, frames). Where a bin is above the floor +
    10 dB (in both) and within 80 dB of its sample's loudest bin: log power within 0.05 dB,
    the phase's cos and sin (both ears so) within 2e-3. Deeper, the float32 rounding of the
    two convolutions (scipy's FFT and torch's: about 1e-7 of the sample's peak, either way)
    is what the bins hold, measured up to 0.13 dB and 0.014: within 0.25 dB and 0.05 there.
    `stored` as float16: each bound widened by one float16 step of the value (0.0625 dB from
    64 dB, 0.125 from 128: a value between two steps may round either way)."""
    db_got, db_want = got[:, :2], want[:, :2]
    loud = (db_want > floor_db + 10) & (db_got > floor_db + 10)
    near = loud & (db_want > db_want.max(axis=(2, 3), keepdims=True) - 80)
    assert near.mean() > 0.3
    step = np.spacing(np.abs(db_want).astype(np.float16)).astype(np.float32) if stored else 0.0
    diff = np.abs(db_got - db_want) - step
    assert diff[near].max() <= 0.05 and diff[loud].max() <= 0.25
    if got.shape[1] > 2:
        step = np.float32(np.spacing(np.float16(1))) if stored else 0.0
        diff = np.abs(got[:, 2:] - want[:, 2:]) - step
        near, loud = [(m[:, 0] & m[:, 1])[:, None].repeat(2, axis=1) for m in (near, loud)]
        assert diff[near].max() <= 2e-3 and diff[loud].max() <= 0.05


def _both_ways(stage1, settings: DrawSettings, numbers, kinds=KINDS, dtype="float16", device="cpu"):
    recipe = read_recipe(stage1)
    renderer = SampleRenderer(recipe, settings)
    draws = draw(recipe, settings, 11, 2, numbers,
                 renderer.elevation_limits() if settings.directions == "sphere" else (-90.0, 90.0))
    audio, labels = renderer.render(draws)
    want = Featurizer(kinds, FLOOR_DB, dtype)(audio).astype(np.float32)
    prepared, plabels = prepare_batch(renderer, draws)
    got_audio, snr = dev.DeviceRenderer(renderer, device).render(prepared)
    got = dev.stacked(kinds, got_audio, FLOOR_DB, dtype).cpu()
    got_audio, snr = got_audio.cpu(), snr.cpu()
    assert got.dtype == (torch.float16 if dtype == "float16" else torch.float32)
    # the STFT alone, on the same audio: to the tolerances everywhere above the floor + 10 dB
    same = dev.stacked(kinds, torch.from_numpy(audio), FLOOR_DB, "float32").float().numpy()
    exact = featurekinds.stacked(kinds, audio, FLOOR_DB)
    loud = (exact[:, :2] > FLOOR_DB + 10) & (same[:, :2] > FLOOR_DB + 10)
    assert np.abs(same[:, :2] - exact[:, :2])[loud].max() <= 0.05
    if len(kinds) > 1:
        both = (loud[:, 0] & loud[:, 1])[:, None].repeat(2, axis=1)
        assert np.abs(same[:, 2:] - exact[:, 2:])[both].max() <= 2e-3
    # before storage: the float32 features of both paths
    _assert_features_match(dev.stacked(kinds, got_audio, FLOOR_DB, "float32").float().numpy(),
                           featurekinds.stacked(kinds, audio, FLOOR_DB))
    for key in ("azimuth_deg", "elevation_deg", "env", "clip_id", "head", "room"):
        np.testing.assert_array_equal(plabels[key], labels[key])
    np.testing.assert_allclose(snr.numpy(), labels["snr_db"], atol=1e-5)
    return audio, got_audio.numpy(), got.float().numpy(), want, draws


@pytest.mark.parametrize("directions", ["grid", "circle"])
def test_device_features_equal_the_numpy_path(clean, directions):
    """Anechoic and hall, with the draws' gains and onset shifts; off the grid the anechoic
    samples render with interpolated pairs of their own, the hall with its denser bank."""
    numbers = range(24) if directions == "grid" else range(12)
    audio, got_audio, got, want, draws = _both_ways(clean, DrawSettings(directions=directions), numbers)
    assert {d.condition for d in draws} == {0, 1}
    np.testing.assert_allclose(got_audio, audio, atol=2e-6 * np.abs(audio).max(), rtol=0)
    _assert_features_match(got, want, stored=True)


def test_device_features_with_noise_equal_the_numpy_path(noisy):
    audio, got_audio, got, want, draws = _both_ways(noisy, DrawSettings(), range(24))
    assert all(math.isfinite(d.snr_db) for d in draws)
    np.testing.assert_allclose(got_audio, audio, atol=2e-6 * np.abs(audio).max(), rtol=0)
    _assert_features_match(got, want, stored=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_the_features_equal_the_numpy_path(noisy):
    """The same on a GPU (cuFFT), where `auto` puts the work."""
    audio, got_audio, got, want, _ = _both_ways(noisy, DrawSettings(directions="circle"), range(24), device="cuda")
    np.testing.assert_allclose(got_audio, audio, atol=2e-6 * np.abs(audio).max(), rtol=0)
    _assert_features_match(got, want, stored=True)


def test_noise_mixing_alone_equals_noise_py():
    """Levels met, a silent sample and an undrawn level (+inf) left clean, as noise.mix_at_snr."""
    from bast.pipeline.render.noise import mix_at_snr

    rng = np.random.default_rng(1)
    clean_ = rng.normal(0, 0.1, (4, 2, 8000)).astype(np.float32)
    clean_[2] = 0
    noise = rng.normal(0, 0.3, (4, 2, 8000)).astype(np.float32)
    levels = np.array([10.0, -5.0, 3.0, np.inf], np.float32)
    got, snr = dev.mix_at_snr(torch.from_numpy(clean_), torch.from_numpy(noise), torch.from_numpy(levels))
    want = clean_.copy()
    want_snr = mix_at_snr(want[:3], noise[:3].copy(), levels[:3])
    np.testing.assert_allclose(got.numpy()[:3], want[:3], atol=1e-7)
    np.testing.assert_array_equal(snr.numpy(), [*want_snr, np.inf])
    np.testing.assert_array_equal(got.numpy()[3], clean_[3])
    assert snr[2] == np.inf


def test_log_power_alone_and_float32_storage(clean):
    *_, got, want, _ = _both_ways(clean, DrawSettings(), range(8), kinds=("logpower",), dtype="float32")
    _assert_features_match(got, want, stored=True)


def test_the_stft_alone_equals_stft_py():
    """White noise, a tone 100 dB under it in the other ear, silence: the pure functions."""
    rng = np.random.default_rng(0)
    audio = np.zeros((3, 2, 8000), np.float32)
    audio[0] = rng.normal(0, 0.1, (2, 8000))
    audio[1, 0] = np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) * 1e-5
    audio[1, 1] = rng.normal(0, 0.1, 8000)
    db, phase = spectrogram_and_phase(audio)
    got_db, got_phase = dev.spectrogram_and_phase(torch.from_numpy(audio), FLOOR_DB)
    np.testing.assert_allclose(got_db.numpy(), db, atol=1e-3)
    np.testing.assert_allclose(got_phase.numpy(), phase, atol=1e-6)
    np.testing.assert_allclose(dev.spectrogram_db(torch.from_numpy(audio), FLOOR_DB).numpy(),
                               spectrogram_db(audio), atol=1e-3)
    assert np.all(got_db.numpy()[2] == np.float32(FLOOR_DB)) and np.all(got_phase.numpy()[2] == 0)


def test_render_device_resolves_and_refuses():
    assert dev.resolve_place("auto", "cpu") == "workers"
    assert dev.resolve_place("auto", "cuda:0") == "device"
    assert dev.resolve_place("device", "cpu") == "device"
    with pytest.raises(ConfigError, match="render_device"):
        dev.resolve_place("gpu", "cpu")
    with pytest.raises(ConfigError, match="render_device"):
        preset("tiny", render_device="gpu")
    with pytest.raises(ConfigError, match="workers only"):
        dev.check_kinds(("logpower", "mystery"))


def _batches(stage1, place):
    data = OnTheFlyData(read_recipe(stage1), DrawSettings(), Featurizer(KINDS, FLOOR_DB), 64, 16, "cpu", seed=5,
                        target=make_target("azimuth"), workers=0, render_device=place)
    return [(x.clone(), y.clone(), n.clone()) for x, y, n in data.epoch(1)]


def test_the_same_seed_gives_the_same_batches_twice(clean):
    once, twice, numpy_path = _batches(clean, "device"), _batches(clean, "device"), _batches(clean, "workers")
    assert len(once) == 4
    for (x1, y1, n1), (x2, y2, n2), (x3, y3, n3) in zip(once, twice, numpy_path):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(n1, n2)
        assert torch.equal(y1, y3) and torch.equal(n1, n3)  # the same draws as the numpy path
        # the model's input: the standardised log power (a dB is 1/20 or so), and the phase,
        # which differs only in bins near the floor or 80 dB under the peak (see above)
        assert (x1[:, :2] - x3[:, :2]).abs().max() < 0.05
        assert ((x1[:, 2:] - x3[:, 2:]).abs() > 2e-3).float().mean() < 0.02


def test_a_run_with_the_device_path_trains(clean, tmp_path):
    cfg = preset("tiny", features=KINDS, epochs=2, batch_size=16, epoch_samples=64, device="cpu",
                 loader_workers=1, render_device="device")
    result = train_on_the_fly(clean, tmp_path / "run", cfg)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert result["n"] > 0 and math.isfinite(result["ad_deg"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["render_device"] == "device" and config["render_device_used"] == "device"


def test_the_cli_option(clean, tmp_path):
    from typer.testing import CliRunner

    from bast.cli import app

    common = [str(clean), "--on-the-fly", "--epochs", "1", "--epoch-samples", "32", "--loader-workers", "0",
              "--features", "logpower,phase", "--device", "cpu", "--batch-size", "32"]
    run = CliRunner().invoke(app, ["train", *common, "--out", str(tmp_path / "r"), "--render-device", "device"])
    assert run.exit_code == 0, run.output
    assert "convolved and featurized on cpu" in " ".join(run.output.split())
    bad = CliRunner().invoke(app, ["train", *common, "--out", str(tmp_path / "bad"), "--render-device", "gpu"])
    assert bad.exit_code != 0 and "render_device must be one of auto, workers, device" in " ".join(bad.output.split())
    assert "Traceback" not in bad.output and not (tmp_path / "bad" / "config.json").exists()
