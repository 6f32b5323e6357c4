"""Feature kinds as an extension point: a kind declared here only (an interaural level
difference map) is featurized, trains, evaluates and localizes end to end; the built-in
kinds keep Stage 2 output what it was; older outputs and configs read as before."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from bast.errors import ConfigError, DataError
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.features.stft import spectrogram_db


def _ild(audio, floor_db, scratch):
    """Left minus right log power per bin and frame, in tens of dB (order 1: read as is)."""
    db = spectrogram_db(audio, floor_db)
    return ((db[:, 0] - db[:, 1]) / 10.0)[:, None]


# One channel, interaural: the left ear's stream sees it, the right ear's its negation
# (a left-right mirror of the scene swaps the ears).
ILD = featurekinds.FeatureKind(name="ildtoy", dataset="ildtoy", channels=1, compute=_ild,
                               title="toy interaural level difference", description="ildtoy (N, 1, 129, frames)",
                               params={"scale_db": 10.0}, dtype="float32", left=((0, 1),), right=((0, -1),))


@pytest.fixture(scope="module")
def ild_kind():
    featurekinds.register(ILD)
    yield ILD
    featurekinds.FEATURE_KINDS.pop(ILD.name, None)


@pytest.fixture(scope="module")
def ild_features(small_features, ild_kind):
    """The shared small Stage 1 output featurized with the toy kind."""
    from bast.pipeline.features.featurize import featurize

    out = small_features.parent / "s2-ildtoy"
    featurize(small_features.parent / "s1", out, features="logpower,ildtoy")
    return out


def test_a_declared_kind_is_featurized_and_listed(small_features, ild_features):
    manifest = json.loads((ild_features / "manifest.json").read_text())
    listed = {k["name"]: k for k in manifest["features"]}
    assert list(listed) == ["logpower", "ildtoy"]
    assert listed["ildtoy"]["shape"] == [1, 129, 61] and listed["ildtoy"]["dataset"] == "ildtoy"
    assert listed["ildtoy"]["params"] == {"scale_db": 10.0} and listed["ildtoy"]["dtype"] == "float32"
    assert featurekinds.manifest_features(manifest) == ("logpower", "ildtoy")
    plain = json.loads((small_features / "manifest.json").read_text())
    s1 = json.loads((small_features.parent / "s1" / "manifest.json").read_text())
    shard = s1["shards"][0]
    with h5py.File(ild_features / shard["path"], "r") as f, \
            h5py.File(small_features / plain["shards"][0]["path"], "r") as g, \
            h5py.File(small_features.parent / "s1" / shard["path"], "r") as a:
        assert f["ildtoy"].dtype == np.float32 and f["ildtoy"].shape == (len(f["spec"]), 1, 129, 61)
        np.testing.assert_array_equal(f["spec"][()], g["spec"][()])  # the log power as without the kind
        db = spectrogram_db(a["audio"][:4])
        np.testing.assert_allclose(f["ildtoy"][:4, 0], (db[:, 0] - db[:, 1]) / 10, atol=1e-5)


def test_the_default_and_the_phase_keep_their_outputs(small_features, tmp_path):
    """--features logpower writes the bytes of the default; the manifest of the default holds
    no `features` key (reads as the log power), its parameters no kind."""
    from bast.pipeline.features.featurize import featurize

    featurize(small_features.parent / "s1", tmp_path / "explicit", features="logpower")
    a = json.loads((small_features / "manifest.json").read_text())
    b = json.loads((tmp_path / "explicit" / "manifest.json").read_text())
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert "features" not in a and "features" not in a["params"] and "phase" not in a["params"]
    assert featurekinds.manifest_features(a) == ("logpower",)
    # An older output with the phase records it in its parameters only.
    assert featurekinds.manifest_features({"params": {"phase": "cos and sin"}}) == ("logpower", "phase")


def test_names_are_checked_and_the_log_power_leads():
    assert featurekinds.parse(None) == ("logpower",)
    assert featurekinds.parse("phase") == ("logpower", "phase")
    assert featurekinds.parse(None, phase=True) == featurekinds.parse("logpower,phase", phase=True)
    assert featurekinds.channels(("logpower", "phase")) == 4 and featurekinds.ear_channels(("logpower", "phase")) == 3
    with pytest.raises(ConfigError, match="unknown feature kind 'nosuch'"):
        featurekinds.parse("logpower,nosuch")
    with pytest.raises(ConfigError, match="twice"):
        featurekinds.parse("phase,phase")
    with pytest.raises(ConfigError, match="taken"):
        featurekinds.register(featurekinds.FeatureKind(name="x", dataset="spec", channels=1, compute=_ild,
                                                       left=((0, 1),), right=((0, 1),)))
    # Model configs of before feature kinds (phase only) read as the kinds they meant.
    from bast.model.nets.baselines import MLPConfig
    from bast.model.nets.bast import BASTConfig

    old = BASTConfig.from_dict({"phase": True})
    assert old.features == ("logpower", "phase") and MLPConfig().features == ("logpower",)
    assert BASTConfig.from_dict(old.to_dict()) == old


def test_a_declared_kind_trains_evaluates_and_localizes(small_features, ild_features, tmp_path):
    """The toy kind, declared in this file only, reaches the model as input channels through
    train --features; evaluation on data without it is refused naming the kind and the
    option; localize computes it with the same compute function."""
    from typer.testing import CliRunner

    from bast.cli import app
    from bast.model.runs.checkpoint import load_model
    from bast.model.data.loaders import Selection, model_input, read_shard
    from bast.model.inference.localize import predict_windows
    from bast.model.evaluation.runs import evaluate_run

    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(ild_features), "--out", str(run), "--features", "logpower,ildtoy",
                                 "--epochs", "1", "--set", "warmup_steps=5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["features"] == ["logpower", "ildtoy"] and config["model"]["phase"] is False
    test = json.loads((run / "eval" / "test.json").read_text())
    assert test["n"] == Selection.of(ild_features, "test").samples
    assert test["ad_deg"] < 65, test["ad_deg"]  # it learned: chance is 90 deg, one epoch gives about 45
    model, cfg = load_model(run, "best", "cpu")
    # BAST: each ear's stream sees its log power and the (signed) level difference.
    convs = [m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and set(convs) == {2}

    with pytest.raises(DataError, match=r"no toy interaural level difference \(feature kind 'ildtoy'\).*"
                                        r"--features logpower,ildtoy"):
        evaluate_run(run, small_features, device="cpu")
    with pytest.raises(DataError, match="feature kind 'ildtoy'"):
        Selection.of(small_features, "test", "RI", ("logpower", "ildtoy"))

    # localize: the kinds computed from audio are what featurize stored.
    s1 = json.loads((small_features.parent / "s1" / "manifest.json").read_text())
    with h5py.File(small_features.parent / "s1" / s1["shards"][0]["path"], "r") as a:
        audio = a["audio"][:8]
    stored = read_shard(ild_features / s1["shards"][0]["path"], cfg.model.features)["spec"][:8]
    with torch.no_grad():
        expected = model(model_input(torch.from_numpy(stored.astype(np.float32)), cfg.model.features)).numpy()
    np.testing.assert_allclose(predict_windows(model, audio, "cpu"), expected, atol=0.05)
