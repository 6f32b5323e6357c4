"""Targets (bast/model/targets/core.py): every model on every target, multitask training, a toy
target declared here only, and the target recorded in the run."""

import json

import numpy as np
import pytest
import torch

from bast.errors import ConfigError
from bast.model.targets import core as tg
from bast.model.runs.checkpoint import load_checkpoint, load_model
from bast.model.data.loaders import EvalData, ResidentData, Selection, data_classes
from bast.model.evaluation.evaluate import predict
from bast.model.nets.registry import MODELS, build_model, model_config
from bast.model.train import preset, train
from bast.model.evaluation.runs import evaluate_run

TINY = {"bast": dict(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0),
        "ast": dict(dim=32, heads=4, mlp_dim=64, depth=1, dropout=0.0),
        "cnn": dict(filters=4, hidden=32, dropout=0.0), "mlp": dict(hidden=64, depth=1, dropout=0.0)}


@pytest.fixture(scope="module")
def features(small_features):
    return small_features


@pytest.fixture(scope="module")
def classes(features):
    return data_classes(features)


def test_classes_are_the_sorted_categories_of_every_split(features, classes):
    found = set()
    for split in ("train", "val", "test"):
        sel = Selection.of(features, split)
        for s in sel.shards:
            import h5py
            with h5py.File(sel.root / s["path"]) as f:
                found |= set(f["category"].asstr()[()].tolist())
    assert list(classes) == sorted(found - {""}) and len(classes) >= 3


# The clip targets and the models that learn them; seld and seldnet (scene data) are
# tested in tests/model/test_seld_train.py.
CLIP_TARGETS = sorted(n for n, t in tg.TARGETS.items() if not t.scenes)
CLIP_MODELS = sorted(a for a in MODELS if a != "seldnet")


@pytest.mark.parametrize("arch", CLIP_MODELS)
@pytest.mark.parametrize("name", CLIP_TARGETS)
def test_every_model_learns_every_target(features, classes, arch, name):
    """A few steps on one batch lower the target's loss; the predictions table has the
    target's columns."""
    torch.manual_seed(0)
    target = tg.make_target(name, tg.TargetSettings(classes=classes, task_weights="learned"))
    model = tg.attach(build_model(arch, model_config(arch, {**TINY[arch], "outputs": target.outputs})), target)
    data = ResidentData(Selection.of(features, "train"), 16, "cpu", seed=0, target=target)
    x, y, _ = next(data.epoch(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = target.loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    if isinstance(target, tg.Multitask):  # the learned weights moved
        assert float(target.log_vars.detach().abs().sum()) > 0
    test = Selection.of(features, "test")
    table = predict(model, EvalData(test, 64, "cpu", 1.0, target=target))
    n = test.samples
    assert all(len(v) == n for v in table.values())
    assert set(target.output_columns) <= set(table)
    assert ("ad_deg" in table) == ("category" != name)
    assert ("pred_category" in table) == ("category" in name)
    assert ("pred_elevation_deg" in table) == name.startswith("direction")
    # the whole-table loss (validation's) is the loss of the outputs the table holds
    with torch.no_grad():
        outs = torch.cat([model(xb) for xb, _, _ in EvalData(test, 64, "cpu", 1.0, target=target).batches()])
        ys = target.encode(torch.from_numpy(target.labels(table)))
        assert target.table_loss(table) == pytest.approx(float(target.loss(outs, ys)), rel=1e-4)


def test_direction_labels_read_elevation_and_default_to_the_horizontal_plane():
    target = tg.make_target("direction")
    labels = target.labels({"azimuth_deg": np.array([90.0, 0.0]), "elevation_deg": np.array([0.0, 90.0])})
    y = target.encode(torch.from_numpy(labels))
    assert torch.allclose(y, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6)
    assert (target.labels({"azimuth_deg": np.array([10.0])})[:, 1] == 0).all()
    decoded = target.decode(y * 3, y)  # length does not matter; at the pole the azimuth is any
    assert np.allclose(decoded["pred_azimuth_deg"][0], 90) and np.allclose(decoded["pred_elevation_deg"], [0, 90])
    away = target.decode(torch.tensor([[0.5, -0.5, 0.7071068]]), torch.tensor([[1.0, 0.0, 0.0]]))
    assert np.allclose([away["pred_azimuth_deg"][0], away["pred_elevation_deg"][0]], [315, 45], atol=1e-4)
    assert np.allclose(decoded["ad_deg"], 0, atol=1e-3)


def test_unknown_target_and_category_without_classes_are_refused():
    with pytest.raises(ConfigError, match="unknown target"):
        tg.make_target("pitch")
    with pytest.raises(ConfigError, match="target must be one of"):
        preset("tiny", target="pitch")
    with pytest.raises(ConfigError, match="classes"):
        tg.make_target("category")
    with pytest.raises(ConfigError, match="task_weights"):
        preset("tiny", task_weights="adaptive")


def test_direction_and_category_train_together(features, tmp_path):
    """One run reports class accuracy and direction errors on the sphere; the run records
    its target and classes, and evaluate reads them back."""
    cfg = preset("tiny", arch="mlp", target="direction+category", epochs=6, batch_size=16, device="cpu",
                 memory_budget_gb=1.0, hidden=256, depth=1)
    run = tmp_path / "run"
    result = train(features, run, cfg)
    for key in ("ad_deg", "great_circle_deg", "lateral_error_deg", "polar_error_deg", "quadrant_error_pct",
                "confusions_pct", "accuracy", "macro_f1", "confusion"):
        assert key in result, key
    assert sum(result["confusions_pct"].values()) == pytest.approx(100.0)
    config = json.loads((run / "config.json").read_text())
    assert config["target"] == "direction+category" and config["classes"] == list(data_classes(features))
    assert config["model"]["outputs"] == 3 + len(config["classes"])
    assert load_checkpoint(run / "checkpoints" / "best.pt")["config"]["target"] == "direction+category"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_ad_deg", "val_accuracy"} <= set(rows[-1])
    # Learned from the sounds: on every split the classes are told apart far above chance.
    seen = evaluate_run(run, features, split="all")
    assert seen["accuracy"] > 3 * seen["chance_accuracy"], seen["accuracy"]
    header = (run / "eval" / "test_predictions.csv").read_text().splitlines()[0].split(",")
    assert {"pred_z", "pred_elevation_deg", "pred_category", "elevation_deg"} <= set(header)

    # The report draws the sphere's figures and the class confusion matrix beside the azimuth ones.
    from bast.report.build import build_report

    _, summary = build_report([run], tmp_path / "report", rollout_samples=0)
    figures = {p.name for p in (tmp_path / "report" / "figures").iterdir()}
    assert {"run_sphere.png", "run_lateral_polar.png", "run_confusion.png", "run_scatter.png", "polar_ad.png"} <= figures
    assert summary["runs"]["MLP-MIX -> direction+category (run)"]["summary"]["accuracy"] == pytest.approx(
        result["accuracy"])

    # localize writes the elevation and the class of each window.
    import soundfile as sf

    from bast.model.inference.localize import load_localizer, load_target, localize_audio, write_csv

    wav = tmp_path / "noise.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, (16000, 2)).astype(np.float32), 16000)
    model, dev = load_localizer(run, "cpu")
    loc = localize_audio(model, wav, dev, hop_ms=250, target=load_target(run))
    rows = write_csv(loc, tmp_path / "noise.csv").read_text().splitlines()
    assert rows[0].endswith(",elevation_deg,category") and len(rows) == 1 + 3
    assert set(loc.columns["category"]) <= set(config["classes"])
    assert np.all(np.abs(loc.columns["elevation_deg"]) <= 90)


def test_learned_task_weights_are_trained_and_saved(features, tmp_path):
    cfg = preset("tiny", arch="mlp", target="azimuth+category", task_weights="learned", epochs=1, batch_size=16,
                 device="cpu", memory_budget_gb=1.0, hidden=64, depth=1)
    train(features, tmp_path / "run", cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert "target_loss.log_vars" in state and state["target_loss.log_vars"].abs().sum() > 0
    model, again = load_model(tmp_path / "run", "last")
    assert again.target == "azimuth+category" and torch.equal(model.target_loss.log_vars, state["target_loss.log_vars"])


class LeftRight(tg.Target):
    """A toy target declared here only: is the source in the left half (0 < az < 180)?"""

    name = "test-left-right"
    label_shape = ()
    label_columns = ("azimuth_deg",)
    outputs = 1
    output_columns = ("logit_left",)

    def labels(self, columns):
        az = np.mod(np.asarray(columns["azimuth_deg"], dtype=np.float64), 360.0)
        return ((az > 0) & (az < 180)).astype(np.float32)

    def encode(self, labels):
        return labels

    def loss(self, pred, y):
        return torch.nn.functional.binary_cross_entropy_with_logits(pred[:, 0], y)

    def decode(self, pred, y):
        p = pred[:, 0].cpu().numpy()
        return {"logit_left": p, "correct": ((p > 0) == (y.cpu().numpy() > 0.5)).astype(np.float64)}


@pytest.fixture
def left_right():
    """The toy target registered for one test and removed after it, so that no later test
    (a list of targets, an error naming them) sees it."""
    tg.register(LeftRight)
    yield LeftRight
    tg.TARGETS.pop(LeftRight.name)


def test_a_target_declared_elsewhere_trains_end_to_end(features, tmp_path, left_right):
    cfg = preset("tiny", arch="mlp", target="test-left-right", epochs=3, batch_size=16, device="cpu",
                 memory_budget_gb=1.0, hidden=64, depth=1)
    result = train(features, tmp_path / "run", cfg)
    assert result["n"] == Selection.of(features, "test").samples
    table = (tmp_path / "run" / "eval" / "test_predictions.csv").read_text().splitlines()
    header = table[0].split(",")
    correct = np.array([float(r.split(",")[header.index("correct")]) for r in table[1:]])
    assert correct.mean() > 0.75  # left and right are the easy part of localization
    model, cfg2 = load_model(tmp_path / "run")
    assert cfg2.model.outputs == 1 and model(torch.zeros(2, 2, 129, 61)).shape == (2, 1)


def test_the_toy_target_is_registered_only_for_its_test():
    assert LeftRight.name not in tg.TARGETS  # importing this file registers nothing
