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
