"""The baseline models and BAST's phase input: shapes, features, configs refused by name."""

from __future__ import annotations

import pytest
import torch

from bast.errors import ConfigError
from bast.model.nets.bast import BAST, BASTConfig, count_parameters, ears
from bast.model.nets.baselines import AST, CNN, MLP, ASTConfig, CNNConfig, MLPConfig

TINY = dict(dim=32, heads=2, mlp_dim=64, depth=1, stride=12, dropout=0.0)


@pytest.mark.parametrize("phase", [False, True])
@pytest.mark.parametrize("make", [lambda p: MLP(MLPConfig(phase=p)), lambda p: CNN(CNNConfig(phase=p)),
                                  lambda p: AST(ASTConfig(phase=p)), lambda p: BAST(BASTConfig(phase=p, **TINY))])
def test_every_model_maps_spectrograms_to_a_vector(make, phase):
    torch.manual_seed(0)
    model = make(phase).eval()
    x = torch.randn(5, 4 if phase else 2, 129, 61)
    y = model(x)
    assert y.shape == (5, 2) and torch.isfinite(y).all()
    # Samples are independent: a batch gives what its samples give one by one.
    torch.testing.assert_close(model(x[2:3]), y[2:3], rtol=1e-4, atol=1e-5)


def test_phase_adds_only_input_channels():
    """With phase, BAST's patch embedding takes 3 channels per ear and nothing else grows."""
    plain, with_phase = BAST(BASTConfig(**TINY)), BAST(BASTConfig(phase=True, **TINY))
    patch = TINY["dim"] * 16 * 16  # two more input channels of 16 x 16 weights per output
    assert count_parameters(with_phase) - count_parameters(plain) == 2 * patch


def test_each_ear_hears_the_phase_from_its_own_side():
    x = torch.randn(3, 4, 129, 61)
    left, right = ears(x, ("logpower", "phase"))
    torch.testing.assert_close(left, torch.stack([x[:, 0], x[:, 2], x[:, 3]], 1))
    torch.testing.assert_close(right, torch.stack([x[:, 1], x[:, 2], -x[:, 3]], 1))
    # A left-right mirror of the scene (ears swapped, the phase's sine negated) swaps the ears.
    mirror = torch.stack([x[:, 1], x[:, 0], x[:, 2], -x[:, 3]], 1)
    m_left, m_right = ears(mirror, ("logpower", "phase"))
    torch.testing.assert_close(m_left, right)
    torch.testing.assert_close(m_right, left)
    # Averaged over the frames: every frame holds the clip's mean cos and sin.
    a_left, a_right = ears(x, ("logpower", "phase"), average=True)
    torch.testing.assert_close(a_left[:, 0], x[:, 0])
    torch.testing.assert_close(a_left[..., 7], torch.stack([x[:, 0, :, 7], x[:, 2].mean(-1), x[:, 3].mean(-1)], 1))
    torch.testing.assert_close(a_right[..., 0], torch.stack([x[:, 1, :, 0], x[:, 2].mean(-1), -x[:, 3].mean(-1)], 1))


def test_mlp_features_are_time_averages_and_the_ild():
    x = torch.randn(2, 4, 129, 61)
    f = MLP.features(x)
    mean = x.mean(-1)
    assert f.shape == (2, 5 * 129)
    torch.testing.assert_close(f[:, 258:387], mean[:, 0] - mean[:, 1])
    torch.testing.assert_close(f[:, 387:], mean[:, 2:].flatten(1))


def test_unknown_or_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="nosuch"):
        MLPConfig.from_dict({"nosuch": 1})
    with pytest.raises(ConfigError, match="hidden"):
        MLPConfig(hidden=0)
    with pytest.raises(ConfigError, match="dropout"):
        CNNConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="divisible"):
        ASTConfig(dim=30, heads=4)


@pytest.fixture(scope="module")
def phase_features(small_features):
    """The shared small Stage 1 output featurized once more, with the interaural phase."""
    from bast.pipeline.features.featurize import featurize

    out = small_features.parent / "s2-phase"
    if not (out / "manifest.json").exists():
        featurize(small_features.parent / "s1", out, phase=True)
    return out


@pytest.mark.slow
def test_baselines_and_phase_train_evaluate_and_report(small_features, phase_features, tmp_path):
    """train --model NAME [--phase] shares the loop, checkpoints, final test and report with
    BAST; a phase model on data without phase is refused by name."""
    import json

    import numpy as np
    from typer.testing import CliRunner

    from bast.cli import app

    runner = CliRunner()
    common = ["--epochs", "2", "--set", "warmup_steps=5", "--device", "cpu"]
    result = runner.invoke(app, ["train", str(small_features), "--out", str(tmp_path / "nophase"), "--model", "mlp",
                                 "--phase", *common])
    assert result.exit_code == 1 and "no interaural phase" in result.output and isinstance(result.exception, SystemExit)
    runs = []
    for model, phase in (("mlp", True), ("cnn", False), ("ast", True), ("bast", True)):
        run = tmp_path / f"{model}{'-phase' if phase else ''}"
        args = ["train", str(phase_features if phase else small_features), "--out", str(run), "--model", model,
                *(["--phase"] if phase else []), *common, *(["--set", "filters=8", "--set", "hidden=32"]
                                                            if model == "cnn" else [])]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        config = json.loads((run / "config.json").read_text())
        assert config["arch"] == model and config["model"]["phase"] is phase
        test = json.loads((run / "eval" / "test.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows[1]["train_loss"] < rows[0]["train_loss"], rows  # its weights moved downhill
        if phase:  # chance is 90 deg; with the phase two epochs give 41-52 deg
            assert test["n"] > 0 and test["ad_deg"] < 65, (model, test["ad_deg"])
        else:  # the small CNN on the log power alone is still at chance after 12 steps (90.0 deg)
            assert test["n"] > 0 and np.isfinite(test["ad_deg"])
        runs.append(run)
    result = runner.invoke(app, ["report", *map(str, runs), "--out", str(tmp_path / "report"),
                                 "--rollout-samples", "1"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert "BAST and the baselines side by side" in page and "MLP-MIX+phase" in page and "CNN-MIX" in page and "AST-MIX+phase" in page
    models = (tmp_path / "report" / "models.csv").read_text().splitlines()
    assert len(models) == 1 + 4 and (tmp_path / "report" / "figures" / "accuracy_vs_time.png").exists()
    # BAST with phase: its rollout folds back onto the (power) spectrograms.
    assert (tmp_path / "report" / "figures" / "rollout_0.png").exists()
