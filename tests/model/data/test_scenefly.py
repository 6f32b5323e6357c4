"""SELD training on the fly: scenes drawn from a `bast-cli scenes` folder's recipe equal its
Stage 1 scenes + Stage 2 features and windows, draws depend on (seed, epoch, number) alone,
ranks draw disjoint scenes, a killed run resumed equals an uninterrupted one, and the CLI
trains on a scenes folder and refuses what it cannot do (docs/seld.md "New scenes every epoch")."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bast.cli import app
from bast.errors import ConfigError, DataError
from bast.model.data.loaders import Selection
from bast.model.data.onthefly import Featurizer
from bast.model.data.scenefly import SceneFlyData, window_input
from bast.model.data.scenes import SceneWindows
from bast.model.runs.checkpoint import read_metrics
from bast.model.runs.config import preset
from bast.model.train import train_on_the_fly
from bast.pipeline.render.scenesampler import (SceneRenderer, default_epoch_scenes, draw_scenes, folder_draw,
                                               read_scene_recipe)
from helpers import SELD_KINDS, killed_after_epoch_1_and_resumed, render_seld_scenes, same_weights

KINDS = ("logpower", "phase")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """12 three-second scenes of 3 classes in anechoic and the hall, diffuse noise at 10-20 dB
    SNR, the sound source recorded as the CLI records it; featurized with the phase."""
    root = tmp_path_factory.mktemp("scenefly")
    render_seld_scenes(root, count=12, duration_s=3.0, events=(2, 4), scenes_per_shard=4, sounds=24,
                       features=KINDS, environments=("anechoic", "hall"), snr_db=(10.0, 20.0))
    return root


def _featurizer(root) -> Featurizer:
    params = json.loads((root / "s2" / "manifest.json").read_text())["params"]
    return Featurizer(KINDS, float(params["stft"]["floor_db"]), params["dtype"])


def _data(root, recipe, epoch_scenes=8, batch=8, **kwargs) -> SceneFlyData:
    return SceneFlyData(recipe, _featurizer(root), epoch_scenes, batch, "cpu", length=61, hop=10,
                        n_classes=len(SELD_KINDS), **{"workers": 0, "seed": 7, **kwargs})


def test_the_recipe_is_the_scenes_folders(scenes):
    recipe = read_scene_recipe(scenes / "s1")
    params = json.loads((scenes / "s1" / "params.json").read_text())
    manifest = json.loads((scenes / "s1" / "manifest.json").read_text())
    rebuilt = json.loads(json.dumps(dataclasses.asdict(recipe.config)))
    assert {k: v for k, v in rebuilt.items() if k in params} == {k: params[k] for k in rebuilt if k in params}
    assert [c.env for c in recipe.conditions] == ["anechoic", "hall"]
    assert recipe.categories == tuple(manifest["totals"]["categories"]) == tuple(sorted(SELD_KINDS))
    assert default_epoch_scenes(recipe) == manifest["totals"]["samples_by_split"]["train"]
    events = {}  # the sounds each split's scenes hold are that split's sounds
    for s in manifest["shards"]:
        with h5py.File(scenes / "s1" / s["path"]) as f:
            events.setdefault(s["split"], set()).update(f["event_clip_id"].asstr()[()].tolist())
    for split, ids in events.items():
        assert ids <= {r.clip_id for r in recipe.sounds[split]}


def test_a_scene_drawn_with_the_folders_draw_equals_stage1_and_stage2(scenes):
    """The folder's own training scenes, rendered by the loader's renderer: Stage 1's audio,
    SNR and label rows sample for sample; Stage 2's features to the float16 value; the
    windows, model inputs and targets that the Stage 2 loader cuts from them."""
    recipe = read_scene_recipe(scenes / "s1")
    renderer = SceneRenderer(recipe)
    manifest = json.loads((scenes / "s1" / "manifest.json").read_text())
    for s in (s for s in manifest["shards"] if s["split"] == "train"):
        with h5py.File(scenes / "s1" / s["path"]) as f:
            ids, audio, snr = f["scene_id"].asstr()[()], f["audio"][()], f["snr_db"][()]
            rows, offsets = f["labels"][()], f["label_offsets"][()]
        cond = next(k for k, c in enumerate(recipe.conditions) if c.env == s["env"])
        got, got_snr, got_rows = renderer.render([folder_draw(recipe, i, cond) for i in ids])
        np.testing.assert_array_equal(got, audio)
        np.testing.assert_array_equal(got_snr, snr)
        assert np.all((snr >= 10) & (snr <= 20))
        for j in range(len(ids)):
            np.testing.assert_array_equal(got_rows[j], rows[offsets[j]:offsets[j + 1]])
    stage2 = SceneWindows(Selection.of(scenes / "s2", "train", "RI", KINDS), 61, 3, "cpu", hop=10, shuffle=True)
    data = _data(scenes, recipe)
    draws = [folder_draw(recipe, sc.scene_id, next(k for k, c in enumerate(recipe.conditions) if c.env == sc.env))
             for sc in stage2.scenes]
    assert {d.condition for d in draws} == {0, 1}
    spec, rows = data.chunks.render(draws)
    np.testing.assert_array_equal(spec, stage2.spec.numpy())  # the same functions: the same float16 values
    windows, targets = data.cutter.cut(spec.shape[-1], rows)
    np.testing.assert_array_equal(windows, stage2.windows.numpy())
    assert torch.equal(targets, stage2.targets) and targets.abs().sum() > 0
    pick = torch.arange(0, len(windows), 7)
    assert torch.equal(window_input(torch.from_numpy(spec), torch.from_numpy(windows)[pick], 61, KINDS),
                       stage2.cut(pick))


def test_draws_depend_on_seed_epoch_and_number_alone(scenes):
    recipe = read_scene_recipe(scenes / "s1")
    whole = draw_scenes(recipe, 1, 4, range(40))
    assert draw_scenes(recipe, 1, 4, range(20, 40)) == whole[20:]
    assert draw_scenes(recipe, 1, 5, range(40)) != whole and draw_scenes(recipe, 2, 4, range(40)) != whole
    assert {d.condition for d in whole} == {0, 1}
    # the events too: another renderer (another worker), another order, the same scenes
    a, b = SceneRenderer(recipe), SceneRenderer(recipe)
    events = [a.events(d) for d in whole]
    assert [b.events(d) for d in reversed(whole)] == events[::-1]
    train = {r.clip_id for r in recipe.train_sounds()}
    assert all(e.clip_id in train for ev in events for e in ev)
    assert all(recipe.config.events[0] <= len(ev) <= recipe.config.events[1] for ev in events)
    assert len({tuple((e.clip_id, e.onset) for e in ev) for ev in events}) == 40  # 40 different scenes
    assert any(e.trajectory.moving for ev in events for e in ev) and any(
        not e.trajectory.moving for ev in events for e in ev)
    assert [a.events(d) for d in draw_scenes(recipe, 1, 5, range(40))] != events


def test_the_loader_gives_the_same_batches_with_workers_and_ranks_disjoint(scenes):
    recipe = read_scene_recipe(scenes / "s1")

    def batches(workers=0, rank=0, world=1, epoch=3):
        d = _data(scenes, recipe, epoch_scenes=24, batch=16, workers=workers, rank=rank, world=world)
        out = [(x.clone(), y.clone(), i.clone()) for x, y, i in d.epoch(epoch)]
        assert len(out) == len(d) > 0
        return out, d

    (here, data), (there, _) = batches(0), batches(1)
    assert len(here) == 24 * data.per_scene // 16
    for (x0, y0, i0), (x1, y1, i1) in zip(here, there):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)
    ids = torch.cat([i for _, _, i in here])
    assert len(set(ids.tolist())) == len(ids)  # no window twice in an epoch
    assert set((ids // data.per_scene).tolist()) == set(range(24))  # every scene of the epoch
    assert not torch.equal(torch.cat([i for _, _, i in batches(0, epoch=4)[0]]), ids)  # shuffled anew
    shares = [torch.cat([i for _, _, i in batches(0, r, 3)[0]]) // data.per_scene for r in range(3)]
    scenes_of = [set(s.tolist()) for s in shares]
    assert all(len(s) == 8 for s in scenes_of) and set().union(*scenes_of) == set(range(24))
    assert len({len(s) for s in shares}) == 1  # every rank the same steps
    with pytest.raises(ConfigError, match="epoch-samples"):
        _data(scenes, recipe, epoch_scenes=0)
    with pytest.raises(DataError, match="window"):
        SceneFlyData(recipe, _featurizer(scenes), 8, 8, "cpu", length=1000, hop=10, n_classes=3, workers=0)
    with pytest.raises(DataError, match="no training sounds"):
        _data(scenes, dataclasses.replace(recipe, sounds={**recipe.sounds, "train": ()}))


def _tiny(**kwargs):
    return preset("tiny", **{"target": "seld", "features": KINDS, "epoch_samples": 8, "loader_workers": 0,
                             "device": "cpu", "batch_size": 16, "warmup_steps": 2, **kwargs})


def test_a_run_on_the_fly_is_validated_and_tested_on_the_folders_scenes(scenes, tmp_path):
    result = train_on_the_fly(scenes / "s1", tmp_path / "run", _tiny(epochs=1))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["on_the_fly"] and config["loader"] == "SceneFlyData" and config["train_samples"] == 8
    recipe = read_scene_recipe(scenes / "s1")
    assert config["recipe"]["scenes"] and config["recipe"]["train_scenes"] == recipe.scenes["train"]
    assert config["render_device_used"] == "workers" and config["best_by"] == "val_seld_score"
    stage2 = json.loads((scenes / "s2" / "manifest.json").read_text())
    assert result["n"] == sum(s["samples"] for s in stage2["shards"] if s["split"] == "test")
    assert np.isfinite(result["seld_score"])
    # evaluate and report treat it as any SELD run: on the Stage 2 folder's test split it
    # gives the final test's figures (the same scenes), and the report lists it
    from bast.model.evaluation.runs import evaluate_run
    from bast.report.build import build_report

    again = evaluate_run(tmp_path / "run", scenes / "s2", split="test", device="cpu")
    for k in ("n", "f20", "er20", "seld_score", "windows"):
        assert again[k] == pytest.approx(result[k]), k
    build_report([tmp_path / "run"], tmp_path / "report", rollout_samples=0)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert not summary["runs"] and set(summary["seld"]) == {"bast SELD (run)", "predict nothing"}  # as SELD runs are
    assert summary["seld"]["bast SELD (run)"]["test"]["n"] == result["n"]
    rows = (tmp_path / "report" / "seld.csv").read_text().splitlines()
    mine = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert int(mine["scenes"]) == result["n"] and float(mine["seld_score"]) == pytest.approx(result["seld_score"])


def test_seld_distance_trains_on_the_fly(scenes, tmp_path):
    result = train_on_the_fly(scenes / "s1", tmp_path / "run", _tiny(epochs=1, arch="seldnet", target="seld-distance"))
    assert "rde" in result and json.loads((tmp_path / "run" / "config.json").read_text())["target"] == "seld-distance"


def test_a_killed_run_resumed_equals_an_uninterrupted_one(scenes, tmp_path):
    cfg = _tiny(epochs=2, seed=4)
    whole, resumed = killed_after_epoch_1_and_resumed(train_on_the_fly, scenes / "s1", tmp_path, cfg)
    assert same_weights(tmp_path / "whole", tmp_path / "cut", "last.pt")
    assert resumed["seld_score"] == whole["seld_score"] and resumed["f20"] == whole["f20"]
    rows_a, rows_b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    assert rows_a[0]["train_loss"] != rows_a[1]["train_loss"]


def test_the_cli_trains_scenes_on_the_fly_and_refuses_what_it_cannot(scenes, tmp_path):
    run = CliRunner().invoke(app, ["train", str(scenes / "s1"), "--on-the-fly", "--target", "seld", "--out",
                                   str(tmp_path / "r"), "--epochs", "1", "--epoch-samples", "8", "--loader-workers",
                                   "0", "--features", "logpower,phase", "--device", "cpu", "--batch-size", "16"])
    assert run.exit_code == 0, run.output
    assert "on the fly: 8 scenes an epoch" in run.output and "test SELD" in run.output
    for args, message in (([], "train them with --target seld"),
                          (["--target", "seld", "--fresh-sounds"], "--fresh-sounds: for clips on the fly"),
                          (["--target", "seld", "--sample-directions", "circle"], "for clips on the fly"),
                          (["--target", "seld", "--render-device", "device"], "rendered in the loader workers"),
                          (["--target", "seld", "--set", "gain_db=0"], "--set gain_db=0: for clips on the fly"),
                          (["--target", "seld", "--set", "onset_ms=10"], "--set onset_ms=10: for clips")):
        bad = CliRunner().invoke(app, ["train", str(scenes / "s1"), "--on-the-fly", "--out", str(tmp_path / "bad"),
                                       *args])
        assert bad.exit_code != 0 and message in bad.output, bad.output
        assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()
    # the featurized scenes are no recipe; a scenes folder without its source recorded is refused
    bad = CliRunner().invoke(app, ["train", str(scenes / "s2"), "--on-the-fly", "--target", "seld", "--out",
                                   str(tmp_path / "b2")])
    assert bad.exit_code != 0 and "bast-cli scenes" in bad.output and "Traceback" not in bad.output


def test_a_scenes_folder_without_its_source_or_with_other_sounds_is_refused(scenes, tmp_path):
    import shutil

    copy = tmp_path / "s1"
    shutil.copytree(scenes / "s1", copy)
    params = json.loads((copy / "params.json").read_text())
    (copy / "params.json").write_text(json.dumps({**params, "source": {**params["source"], "seed": 99}}))
    with pytest.raises(DataError, match="can no longer be listed"):
        read_scene_recipe(copy)
    (copy / "params.json").write_text(json.dumps({**params, "source": {}}))
    with pytest.raises(DataError, match="does not record the sound source"):
        read_scene_recipe(copy)


@pytest.mark.slow
def test_two_gloo_ranks_draw_disjoint_scenes_and_train_one_model(scenes, tmp_path):
    """torchrun, 2 processes: the held-out scenes featurized once (the ranks take turns at
    its lock), each rank its own half of the epoch's scenes, the same weights on both."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "bast.cli", "train", str(scenes / "s1"), "--on-the-fly", "--target", "seld", "--out",
           str(tmp_path / "ddp"), "--epochs", "1", "--epoch-samples", "16", "--loader-workers", "0", "--device", "cpu",
           "--batch-size", "16", "--features", "logpower,phase"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "BAST_DDP_REPORT": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads((tmp_path / "ddp" / "ddp.json").read_text())
    assert ranks[0]["weights_sha"] == ranks[1]["weights_sha"]
    per_scene = SceneFlyData(read_scene_recipe(scenes / "s1"), _featurizer(scenes), 8, 8, "cpu", length=61, hop=25,
                             n_classes=3, workers=0).per_scene
    held = [{i // per_scene for i in r["first_epoch_samples"]} for r in ranks]
    assert held == [set(range(8)), set(range(8, 16))]
