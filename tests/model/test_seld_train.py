"""`train --target seld` on scene data: windows cut from scenes, the multi-ACCDOA target,
bast / ast / seldnet / mlp training, stitching windows back into scenes, the DCASE scores
of the final test and its CSVs (docs/seld.md)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bast.cli import app
from bast.errors import ConfigError
from bast.model.runs.config import preset
from bast.model.data.loaders import Selection, data_classes, model_input
from bast.model.nets.registry import build_model
from bast.model.data.scenes import SceneWindows, is_scene_data
from bast.model.targets.adpit import decode, duplicate, encode
from bast.model.evaluation.seld import metrics_of, stitch
from bast.model.targets.core import TargetSettings, make_target
from bast.model.train import TrainingError, train
from bast.pipeline.features.scenes import (ALIGNED_HOP, window_label_frames, window_labels, window_rows,
                                         window_starts)
from bast.dcase.files import dcase_rows
from bast.dcase.metrics import score_directories
from helpers import SELD_KINDS, render_seld_scenes

KINDS = SELD_KINDS


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory):
    """3 classes, up to 2 overlapping events, half of them moving; 3 s anechoic scenes."""
    return render_seld_scenes(tmp_path_factory.mktemp("seld"), count=16, duration_s=3.0, events=(2, 4),
                              scenes_per_shard=4)


def test_window_helpers_hold_whole_label_frames():
    assert window_labels(61) == 5 and window_labels(250) == 20 and window_labels(624) == 50
    starts = window_starts(624, 61, ALIGNED_HOP)
    assert starts[0] == 0 and starts[-1] == 624 - 61 and np.all(np.diff(starts)[:-1] == 25)
    covered = np.unique(np.concatenate([window_label_frames(s, 61) for s in starts]))
    np.testing.assert_array_equal(covered, np.arange(50))  # every label frame of a 5 s scene
    assert all(len(window_label_frames(s, 61)) == 5 for s in window_starts(624, 61, 1))
    assert 19 not in window_starts(624, 61, 1)  # that window holds only 4 label frames
    rows = np.array([[3, 0, 0, 10, 0, 1], [4, 1, 0, 20, 0, 1], [9, 2, 1, 30, 5, 1]], dtype=float)
    got = window_rows(rows, 25, 61)  # label frames 2..6: rows of frames 3, 4, re-based by 2
    np.testing.assert_array_equal(got[:, 0], [1, 2])
    assert window_starts(40, 61, 25).size == 0


def test_scene_windows_cut_the_scene_and_encode_its_labels(scene_data):
    assert is_scene_data(scene_data)
    classes = data_classes(scene_data)
    assert classes == tuple(sorted(KINDS))
    sel = Selection.of(scene_data, "train", "RI")
    data = SceneWindows(sel, 61, len(classes), "cpu", batch_size=8, hop=10, shuffle=True, seed=1)
    frames = data.spec.shape[-1]
    assert len(data.windows) == len(data.scenes) * len(window_starts(frames, 61, 10))
    x, y, idx = next(iter(data.epoch(0)))
    for i in range(len(idx)):
        scene, start, first = data.windows[idx[i]].tolist()
        want = model_input(data.spec[scene:scene + 1, :, :, start:start + 61])[0]
        torch.testing.assert_close(x[i], want)
        assert first == window_label_frames(start, 61)[0]
        rows = window_rows(data.scenes[scene].rows, start, 61)
        torch.testing.assert_close(y[i], encode(rows, 5, len(classes)))
    # the same seed, the same order; another epoch, another
    again = next(iter(SceneWindows(sel, 61, 3, "cpu", batch_size=8, hop=10, shuffle=True, seed=1).epoch(0)))[2]
    assert torch.equal(again, idx) and not torch.equal(next(iter(data.epoch(1)))[2], idx)
    # ranks hold disjoint scenes, all of them together, and make the same number of steps
    everyone = {s.scene_id for s in data.scenes}
    for world in (2, 3):
        ranks = [SceneWindows(sel, 61, 3, "cpu", batch_size=8, hop=10, shuffle=True, rank=r, world=world)
                 for r in range(world)]
        held = [{s.scene_id for s in r.scenes} for r in ranks]
        assert sum(len(h) for h in held) == len(everyone) and set().union(*held) == everyone
        assert all(len(r.scenes) in (len(everyone) // world, len(everyone) // world + 1) for r in ranks)
        assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) > 0
        assert all(r.per_rank <= len(r.windows) for r in ranks)


def test_an_oracle_stitched_from_windows_scores_perfectly(scene_data):
    """The output that costs no ADPIT loss, window by window, stitched and decoded, gives
    back every scene's labels: F 100 %, ER 0, LE 0, LR 100 %."""
    classes = data_classes(scene_data)
    data = SceneWindows(Selection.of(scene_data, "test", "RI"), 61, len(classes), "cpu", batch_size=16)
    assert data.hop == ALIGNED_HOP
    stitched = stitch(duplicate(data.targets), data)
    results = {"names": [s.name for s in data.scenes], "envs": [s.env for s in data.scenes],
               "ref": [dcase_rows(s.rows[:, :5]).astype(float) for s in data.scenes],
               "pred": [dcase_rows(decode(o)).astype(float) for o in stitched], "loss_sum": 0.0, "windows": 1}
    assert sum(len(r) for r in results["ref"]) > 20
    m = metrics_of(results, classes)
    assert m["f20"] == pytest.approx(1.0) and m["er20"] == pytest.approx(0.0)
    assert m["le_deg"] < 1e-3 and m["lr"] == pytest.approx(1.0)
    # a silent model: nothing detected
    silent = dict(results, pred=[np.zeros((0, 5))] * len(results["ref"]))
    m0 = metrics_of(silent, classes)
    assert m0["f20"] == 0.0 and m0["er20"] == pytest.approx(1.0) and m0["lr"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bast", "ast", "seldnet", "mlp"])
def test_each_model_trains_on_scenes_and_its_test_is_the_dcase_score_of_its_csvs(scene_data, tmp_path, arch):
    cfg = preset("tiny", arch=arch, target="seld", epochs=2, batch_size=16, device="cpu", seed=0)
    result = train(scene_data, tmp_path / arch, cfg)
    run = tmp_path / arch
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["val_loss"]) and r["val_f20"] is not None for r in rows)
    # it learns: both losses fall from epoch 1 to 2 (F20 is still 0 after two tiny epochs)
    assert rows[1]["train_loss"] < rows[0]["train_loss"] and rows[1]["val_loss"] < rows[0]["val_loss"], rows
    saved = json.loads((run / "eval" / "test.json").read_text())
    assert saved["target"] == "seld" and saved["classes_list"] == sorted(KINDS) and saved["n"] == result["n"] > 0
    assert [c["class"] for c in saved["classes"]] == sorted(KINDS)
    # the DCASE files written beside it score exactly as the run did
    again = score_directories(run / "eval" / "seld" / "ref", run / "eval" / "seld" / "pred", n_classes=3)
    assert again.f == pytest.approx(saved["f20"]) and again.er == pytest.approx(saved["er20"])
    assert again.le == pytest.approx(saved["le_deg"]) and again.lr == pytest.approx(saved["lr"])
    config = json.loads((run / "config.json").read_text())
    if arch in ("bast", "ast"):
        assert config["model"]["out_tokens"] == 5
    if arch == "seldnet":
        assert config["model"]["classes"] == 3 and config["model"]["label_frames"] == 5


def test_bast_output_tokens_give_one_output_per_label_frame():
    cfg = preset("tiny", out_tokens=5, outputs=5 * 3 * 3 * 3)
    model = build_model("bast", cfg.model).eval()
    x = torch.randn(2, 2, 129, 61)
    out = model(x)
    assert out.shape == (2, 135)
    assert sum(p.numel() for p in model.out_tokens.parameters()) == 5 * 96
    # each frame's output is the head of its own token: tokens differ, so do the frames
    assert not torch.allclose(out[:, :27], out[:, 27:54])
    with pytest.raises(ConfigError, match="vit backbone"):
        preset("tiny", backbone="swin", out_tokens=5, outputs=135)
    with pytest.raises(ConfigError, match="split evenly"):
        preset("tiny", out_tokens=4, outputs=135)


def test_seld_target_shapes_and_loss():
    target = make_target("seld", TargetSettings(classes=("a", "b", "c"), window_frames=250))
    assert target.label_shape == (20, 3, 3, 3) and target.outputs == 540
    y = torch.zeros(2, 20, 3, 3, 3)
    y[:, 4, 0, 1] = torch.tensor([0.0, 1.0, 0.0])
    assert float(target.loss(duplicate(y).flatten(1), y)) == 0.0
    assert float(target.loss(torch.zeros(2, 540), y)) > 0
    assert target.model_settings({"outputs", "out_tokens", "n_time"}) == {"outputs": 540, "out_tokens": 20,
                                                                          "n_time": 250}
    assert target.model_settings({"classes", "tracks", "label_frames", "outputs"}) == {
        "classes": 3, "tracks": 3, "label_frames": 20}


def test_scene_data_and_clip_targets_are_refused_by_name(scene_data, small_features, tmp_path):
    with pytest.raises(TrainingError, match="--target seld"):
        train(scene_data, tmp_path / "a", preset("tiny", epochs=1, device="cpu"))
    with pytest.raises(TrainingError, match="holds clips"):
        train(small_features, tmp_path / "b", preset("tiny", target="seld", epochs=1, device="cpu"))
    with pytest.raises(TrainingError, match="seldnet"):
        train(small_features, tmp_path / "c", preset("tiny", arch="seldnet", epochs=1, device="cpu"))
    r = CliRunner().invoke(app, ["train", str(scene_data), "--out", str(tmp_path / "d"), "--target", "seld",
                                 "--window-frames", "8"])
    assert r.exit_code != 0 and "window_frames must be" in r.output and "Traceback" not in r.output


def test_a_seld_run_resumes_and_extends(scene_data, tmp_path):
    cfg = preset("tiny", arch="seldnet", target="seld", epochs=1, batch_size=16, device="cpu", seed=2)
    train(scene_data, tmp_path / "r", cfg)
    result = train(scene_data, tmp_path / "r", cfg, resume=True, resume_changes={"epochs": 2})
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and result["target"] == "seld"


def test_seldnet_reads_longer_windows_and_its_test_covers_every_label_frame(scene_data, tmp_path):
    """--window-frames 250 (2 s, 20 label frames), as the DCASE baseline reads long
    sequences: the test stitches them back over the whole 3 s scenes."""
    cfg = preset("tiny", arch="seldnet", target="seld", epochs=1, batch_size=8, device="cpu", window_frames=250,
                 window_hop=25)
    train(scene_data, tmp_path / "long", cfg)
    config = json.loads((tmp_path / "long" / "config.json").read_text())
    assert config["model"]["label_frames"] == 20 and config["window_frames"] == 250
    data = SceneWindows(Selection.of(scene_data, "test", "RI"), 250, 3, "cpu")
    covered = np.zeros(data.scenes[0].label_frames)
    for scene, start, first in data.windows.tolist():
        if scene == 0:
            covered[first:first + 20] += 1
    assert covered.min() >= 1  # every label frame of the scene lies in some window


def test_a_distance_run_scores_distance_and_writes_it_in_every_dcase_csv(scene_data, tmp_path):
    """`--target seld-distance`: seldnet outputs a distance per track and class; the test,
    `evaluate` and `localize` write 6-column DCASE CSVs (distance in cm), the test reports
    its DCASE 2024 scores (relative distance error among them) equal those of the rows it
    wrote, and the best checkpoint is the epoch of the lowest validation SELD score, DCASE
    2024's (ties: the later, as DCASE 2023's `<=`)."""
    from bast.dcase.files import parse_dcase_csv
    from bast.dcase.metrics import score_folders
    from bast.model.evaluation.runs import evaluate_run
    from bast.model.runs.checkpoint import load_checkpoint

    run = tmp_path / "dist"
    cfg = preset("tiny", arch="seldnet", target="seld-distance", epochs=3, batch_size=16, device="cpu", seed=0)
    result = train(scene_data, run, cfg)
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["distance"] is True and config["best_by"] == "val_seld_score"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_loss"] is not None for r in rows)  # the loss is still recorded
    assert all(r["val_edition"] == "2024" and "val_rde" in r for r in rows)
    scores = [r["val_seld_score"] for r in rows]
    best = max(i for i, s in enumerate(scores) if s == min(scores)) + 1
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["best_epoch"] == best and last["best_val"] == min(scores)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == best
    saved = json.loads((run / "eval" / "test.json").read_text())
    assert saved["target"] == "seld-distance" and saved["best_by"] == "val_seld_score"
    assert saved["edition"] == "2024"
    assert np.isfinite(saved["rde"]) and saved["rde"] == pytest.approx(result["rde"])
    assert all("RDE" in c for c in saved["classes"])
    # the CSVs: 6 columns, the reference's distance the scenes' label distance in cm
    files = {part: sorted((run / "eval" / "seld" / part).glob("*.csv")) for part in ("ref", "pred")}
    ref = [parse_dcase_csv(p.read_text()) for p in files["ref"]]
    pred = [parse_dcase_csv(p.read_text()) for p in files["pred"]]
    data = SceneWindows(Selection.of(scene_data, "test", "RI"), 61, 3, "cpu")
    want_cm = {s.name: np.rint(s.rows[:, 5] * 100) for s in data.scenes}
    for path, rows_cm in zip(files["ref"], ref):
        np.testing.assert_array_equal(np.sort(rows_cm[:, 5]), np.sort(want_cm[path.stem]))
    assert sum(len(p) for p in pred) > 0 and all(np.isfinite(p[:, 5]).all() and (p[:, 5] >= 0).all() for p in pred)
    # the files give the run's scores: DCASE 2024's, the edition chosen from their columns
    again, edition, _ = score_folders(run / "eval" / "seld" / "ref", run / "eval" / "seld" / "pred", n_classes=3)
    assert edition == "2024" and again.f == pytest.approx(saved["f20"])
    assert again.relative_distance_error == pytest.approx(saved["rde"])
    assert again.seld == pytest.approx(saved["seld_score"]) and again.lr == pytest.approx(saved["lr"])
    assert (again.doa_error == pytest.approx(saved["le_deg"]) if saved["le_deg"] is not None
            else np.isnan(again.doa_error))
    # evaluate on the same scenes: the same, in its own folder
    m = evaluate_run(run, scene_data, split="test", device="cpu")
    assert m["rde"] == pytest.approx(saved["rde"]) and m["f20"] == pytest.approx(saved["f20"])
    assert all(parse_dcase_csv(p.read_text()).shape[1] == 6
               for p in (run / "eval" / m["name"] / "seld" / "ref").glob("*.csv"))
    # localize a test scene's audio: a 6-column CSV, the distance in cm
    r = CliRunner().invoke(app, ["localize", str(run), str(_test_scene_wav(scene_data, tmp_path / "scene.wav")),
                                 "--out", str(tmp_path / "loc"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "loc" / "scene.csv").read_text()
    assert text and all(len(line.split(",")) == 6 for line in text.splitlines())
    assert json.loads((tmp_path / "loc" / "scene.json").read_text())["target"] == "seld-distance"
    # the report's per-class table carries each class's relative distance error
    from bast.report.build import build_report

    build_report([run], tmp_path / "report", rollout_samples=0)
    lines = (tmp_path / "report" / "seld_classes.csv").read_text().splitlines()
    head = lines[0].split(",")
    assert "rde" in head
    got = {line.split(",")[1]: line.split(",")[head.index("rde")] for line in lines[1:]}
    for c in saved["classes"]:
        want = c["RDE"]
        assert (got[c["class"]] == "" if want is None or not np.isfinite(want)
                else float(got[c["class"]]) == pytest.approx(want))


class _Silent(torch.nn.Module):
    """A model that detects nothing (every output 0), as a young one may for epochs."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.zeros(len(x), self.size) + self.bias


def test_a_distance_epoch_that_predicts_nothing_is_validated_and_may_be_the_best(scene_data, tmp_path):
    """DCASE 2024 leaves the DOA and distance errors of a model that pairs nothing undefined
    (null, with the edition's note), while its SELD score is defined: the 2024 tool's mean of
    what is defined, 1 - F = 1. Such an epoch is not marked non-finite, its line reads
    'undefined', and it can be the best checkpoint (the lowest SELD score so far)."""
    from bast.cli import _epoch_line
    from bast.model.runs.runtime import Context
    from bast.model.train import RunState, save_epoch, validate

    classes = data_classes(scene_data)
    target = make_target("seld-distance", TargetSettings(classes=tuple(classes)))
    val = SceneWindows(Selection.of(scene_data, "val", "RI"), 61, len(classes), "cpu", batch_size=16, distance=True)
    ctx = Context(device=torch.device("cpu"), amp_dtype=None)
    model = _Silent(int(np.prod(target.label_shape)))
    row = validate(model, val, ctx, target)
    assert row["val_edition"] == "2024" and row["val_f20"] == 0.0 and np.isfinite(row["val_loss"])
    assert row["val_le_deg"] is None and row["val_rde"] is None and row["val_distance_error_m"] is None
    assert row["val_seld_score"] == pytest.approx(1.0) and "val_nonfinite" not in row
    assert "no prediction was paired" in row["val_note"]
    line = _epoch_line({**row, "epoch": 1, "train_loss": 0.5, "train_samples_per_s": 100.0})
    assert "LE undefined deg" in line and "RDE undefined" in line and "SELD 1.000 (DCASE 2024)" in line
    cfg = preset("tiny", arch="seldnet", target="seld-distance", device="cpu", best_by="val_seld_score")
    state = RunState()
    save_epoch(tmp_path, model, torch.optim.Adam(model.parameters()), cfg, ctx, state, {"epoch": 1, **row})
    assert state.best_epoch == 1 and state.best == pytest.approx(1.0)
    saved = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert saved["val_rde"] is None and "val_nonfinite" not in saved


def _test_scene_wav(scene_data, path):
    """The Stage 1 audio of the first test scene as a float WAV (the samples featurized)."""
    import h5py
    import soundfile as sf

    for shard in sorted((scene_data.parent / "s1" / "shards").glob("*.h5")):
        with h5py.File(shard, "r") as f:
            tests = np.flatnonzero(f["split"].asstr()[()] == "test")
            if tests.size:
                sf.write(path, f["audio"][int(tests[0])].T, 16000, subtype="FLOAT")
                return path
    raise AssertionError("the scenes hold no test scene")


@pytest.mark.parametrize("best_by, chosen", [("val_seld_score", 5), ("val_loss", 4)])
def test_the_best_checkpoint_follows_the_recorded_criterion(tmp_path, best_by, chosen):
    """Validation rows where the lowest loss (epoch 4) and the lowest SELD score (epochs 2
    and 5, tied: the later wins, as the DCASE 2023 baseline's `<=`) differ; an epoch whose
    score is undefined (null) never becomes the best. best.pt holds the chosen epoch's weights."""
    from bast.model.runs.checkpoint import load_checkpoint
    from bast.model.runs.runtime import Context
    from bast.model.train import RunState, save_epoch

    cfg = preset("tiny", arch="seldnet", target="seld", device="cpu", best_by=best_by)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters())
    ctx, state = Context(device=torch.device("cpu"), amp_dtype=None), RunState()
    history = [(0.30, 0.80), (0.20, 0.70), (0.25, 0.75), (0.05, None), (0.40, 0.70), (0.35, 0.90)]
    for epoch, (loss, score) in enumerate(history, 1):
        with torch.no_grad():
            model.weight.fill_(epoch)  # the weights say which epoch they are
        save_epoch(tmp_path, model, optimizer, cfg, ctx, state, {"epoch": epoch, "val_loss": loss,
                                                                 "val_seld_score": score})
    assert state.best_epoch == chosen and state.best == history[chosen - 1][0 if best_by == "val_loss" else 1]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["model"]["weight"].item() == chosen
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["best_epoch"] == chosen


def test_best_by_is_resolved_per_target_and_refused_where_it_means_nothing(scene_data, small_features, tmp_path):
    from bast.model.runs.config import TrainConfig

    with pytest.raises(ConfigError, match="best_by"):
        preset("tiny", best_by="val_f20")
    with pytest.raises(ConfigError, match="needs a SELD target"):
        train(small_features, tmp_path / "clips", preset("tiny", epochs=1, device="cpu", best_by="val_seld_score"))
    assert not (tmp_path / "clips").exists()
    # a run from before best_by picked by the loss: its config reads so, and a resume keeps it
    old = {k: v for k, v in preset("tiny", target="seld").to_dict().items() if k != "best_by"}
    assert TrainConfig.from_dict(old).best_by == "val_loss"
    cfg = preset("tiny", arch="seldnet", target="seld", epochs=1, batch_size=16, device="cpu", best_by="val_loss")
    train(scene_data, tmp_path / "by-loss", cfg)
    assert json.loads((tmp_path / "by-loss" / "config.json").read_text())["best_by"] == "val_loss"
