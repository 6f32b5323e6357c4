"""Training on the fly: samples drawn from a Stage 1 recipe equal Stage 1 + Stage 2's, draws
depend on (seed, epoch, number) alone, ranks draw disjoint samples, a killed run resumed
equals an uninterrupted one, and the options refuse what they cannot do."""

from __future__ import annotations

import json
import multiprocessing
import os

import h5py
import numpy as np
import pytest
import torch
from helpers import killed_after_epoch_1_and_resumed, same_weights
from typer.testing import CliRunner

from bast.cli import app
from bast.datasets.sources import resolve_source
from bast.errors import ConfigError, DataError
from bast.model.data.onthefly import Featurizer, OnTheFlyData, default_epoch_samples, init_worker
from bast.model.runs.checkpoint import read_metrics
from bast.model.runs.config import preset
from bast.model.targets.core import make_target
from bast.model.train import train_on_the_fly
from bast.pipeline.features.featurize import featurize
from bast.pipeline.render.recipe import read_recipe
from bast.pipeline.render.sampler import Draw, DrawSettings, SampleRenderer, draw
from bast.pipeline.render.spatialize import SpatializeConfig, spatialize

KINDS = ("logpower", "phase")


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A small Stage 1 folder (16 procedural sounds, 12 azimuths, anechoic and hall) and its
    Stage 2, made as the CLI makes them."""
    root = tmp_path_factory.mktemp("otf")
    src = resolve_source("default", sounds=16, seed=3, speech=False)
    spatialize(src.refs, root / "s1", SpatializeConfig(azimuths=tuple(np.arange(0.0, 360.0, 30.0)), seed=3,
                                                        samples_per_shard=48), source=src.info)
    featurize(root / "s1", root / "s2", features=KINDS)
    return root


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The same sounds and grid with diffuse noise at 10-20 dB SNR (Stage 1 only)."""
    root = tmp_path_factory.mktemp("otf-noise")
    src = resolve_source("default", sounds=16, seed=3, speech=False)
    spatialize(src.refs, root / "s1", SpatializeConfig(azimuths=tuple(np.arange(0.0, 360.0, 30.0)), seed=3,
                                                        samples_per_shard=48, snr_db=(10.0, 20.0)), source=src.info)
    return root


def _stage1_sample(root, split="train", env="hall", i=7):
    manifest = json.loads((root / "s1" / "manifest.json").read_text())
    shard = next(s for s in manifest["shards"] if s["split"] == split and s["env"] == env)
    with h5py.File(root / "s1" / shard["path"]) as f:
        clip, az, snr = f["clip_id"].asstr()[i], float(f["azimuth_deg"][i]), float(f["snr_db"][i])
    with h5py.File(root / "s2" / shard["path"]) as f:
        features = np.concatenate([f["spec"][i], f["phase"][i]]).astype(np.float32)
    return clip, az, snr, features


def test_the_recipe_is_the_stage1_folders(stage):
    recipe = read_recipe(stage / "s1")
    manifest = json.loads((stage / "s1" / "manifest.json").read_text())
    ids = {}
    for s in manifest["shards"]:
        with h5py.File(stage / "s1" / s["path"]) as f:
            ids.setdefault(s["split"], set()).update(f["clip_id"].asstr()[()].tolist())
    for split in ("train", "val", "test"):
        assert {r.clip_id for r in recipe.sounds[split]} == ids[split]
    assert [c.env for c in recipe.conditions] == ["anechoic", "hall"]
    assert default_epoch_samples(recipe) == manifest["totals"]["samples_by_split"]["train"]


def test_a_sample_on_the_fly_equals_stage1_and_stage2(stage):
    """Same sound, direction and condition, no gain, shift or noise: the Stage 1 sample,
    rendered by the same code and featurized as Stage 2 featurizes it, to the float16 value."""
    recipe = read_recipe(stage / "s1")
    renderer = SampleRenderer(recipe, DrawSettings())
    featurize_ = Featurizer(KINDS, -150.0, "float16")
    for env in ("anechoic", "hall"):
        for i in (0, 7, 30):
            clip, az, snr, want = _stage1_sample(stage, env=env, i=i)
            assert snr == np.inf
            sound = next(r for r in recipe.train_sounds() if r.clip_id == clip)
            row = int(np.flatnonzero(np.isclose(recipe.grid[0], az))[0])
            cond = next(k for k, c in enumerate(recipe.conditions) if c.env == env)
            audio, labels = renderer.render([Draw(0, sound, 0.0, cond, az, 0.0, row, float("inf"), 0.0, 0, 0)])
            assert labels["azimuth_deg"][0] == az and labels["category"][0] == sound.category
            got = featurize_(audio)[0].astype(np.float32)
            np.testing.assert_array_equal(got, want)  # the same functions: the same float16 values


def test_noise_on_the_fly_meets_its_snr(noisy):
    recipe = read_recipe(noisy / "s1")
    renderer = SampleRenderer(recipe, DrawSettings())
    draws = draw(recipe, DrawSettings(gain_db=0.0, onset_ms=0.0), 5, 0, range(24))
    noisy, labels = renderer.render(draws)
    clean, _ = renderer.render([Draw(*[getattr(d, f) for f in ("number", "sound", "piece", "condition",
                                                                "azimuth_deg", "elevation_deg", "row")],
                                     float("inf"), d.gain_db, d.shift, d.noise_seed) for d in draws])
    noise = noisy - clean
    measured = 10 * np.log10(np.sum(clean**2, axis=(1, 2)) / np.sum(noise**2, axis=(1, 2)))
    np.testing.assert_allclose(measured, labels["snr_db"], atol=0.01)
    assert np.all((labels["snr_db"] >= 10) & (labels["snr_db"] <= 20))
    assert len(set(np.round(labels["snr_db"], 3))) > 20  # drawn per sample


def test_draws_depend_on_seed_epoch_and_number_alone(stage):
    recipe = read_recipe(stage / "s1")
    s = DrawSettings()
    whole = draw(recipe, s, 1, 4, range(40))
    assert draw(recipe, s, 1, 4, range(20, 40)) == whole[20:]  # another process, another cut: the same
    assert draw(recipe, s, 1, 5, range(40)) != whole  # a new epoch draws anew
    assert draw(recipe, s, 2, 4, range(40)) != whole
    assert len({(d.sound.clip_id, d.row, d.condition) for d in whole}) > 30
    assert {d.sound.clip_id for d in whole} <= {r.clip_id for r in recipe.train_sounds()}
    assert all(-6 <= d.gain_db <= 6 and abs(d.shift) <= 800 for d in whole)


def test_fresh_sounds_are_never_listed_ones(stage):
    recipe = read_recipe(stage / "s1")
    listed = {r.clip_id for split in recipe.sounds.values() for r in split}
    listed_locators = {r.locator for split in recipe.sounds.values() for r in split}
    draws = draw(recipe, DrawSettings(fresh_sounds=True), 0, 0, range(64))
    assert not {d.sound.clip_id for d in draws} & listed
    assert not {d.sound.locator for d in draws} & listed_locators
    assert {d.sound.category for d in draws} <= set(recipe.categories)
    assert len({d.sound.category for d in draws}) >= 5
    audio, _ = SampleRenderer(recipe, DrawSettings(fresh_sounds=True)).render(draws[:4])
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_fresh_sounds_per_epoch_are_reused_by_slot_and_renewed_each_epoch(stage):
    """--fresh-per-epoch N: sample k hears the epoch's sound k mod N; the next epoch draws N
    new ones; a sound rendered from the renderer's cache equals it rendered anew."""
    recipe = read_recipe(stage / "s1")
    s = DrawSettings(fresh_sounds=True, fresh_per_epoch=8)
    draws = draw(recipe, s, 0, 0, range(32))
    slots = [{d.sound.clip_id for d in draws[k::8]} for k in range(8)]
    assert all(len(ids) == 1 for ids in slots) and len(set().union(*slots)) == 8
    # each use is its own draw: directions and conditions still differ between the uses
    assert len({(d.azimuth_deg, d.condition) for d in draws[0::8]}) > 1
    later = {d.sound.clip_id for d in draw(recipe, s, 0, 1, range(8))}
    assert not later & set().union(*slots)
    assert [d.sound for d in draw(recipe, s, 0, 0, range(8, 16))] == [d.sound for d in draws[8:16]]
    cached = SampleRenderer(recipe, s)
    cached.render(draws[:8])
    np.testing.assert_array_equal(cached.render(draws[8:12])[0], SampleRenderer(recipe, s).render(draws[8:12])[0])
    with pytest.raises(ConfigError, match="--fresh-per-epoch"):
        DrawSettings(fresh_sounds=True, fresh_per_epoch=-1)
    with pytest.raises(ConfigError, match="add --fresh-sounds"):
        DrawSettings(fresh_per_epoch=8)


def test_directions_off_the_grid(stage):
    recipe = read_recipe(stage / "s1")
    for mode in ("circle", "sphere"):
        s = DrawSettings(directions=mode)
        r = SampleRenderer(recipe, s)
        draws = [d for d in draw(recipe, s, 0, 0, range(200), r.elevation_limits()) if d.condition == 0]
        assert all(d.row == -1 for d in draws)
        az = np.array([d.azimuth_deg for d in draws])
        assert len(np.unique(np.round(az, 3))) == len(az)  # not a grid
        el = np.array([d.elevation_deg for d in draws])
        if mode == "circle":
            assert np.all(el == 0)
        else:
            lo, hi = r.elevation_limits()
            assert np.all((el >= lo) & (el <= hi)) and el.std() > 10
        audio, labels = r.render(draws[:3])  # anechoic: the HRIR interpolated at the drawn direction
        np.testing.assert_allclose(labels["azimuth_deg"], az[:3], atol=1e-4)
        assert np.isfinite(audio).all()


def test_the_loader_gives_the_same_batches_with_workers_and_ranks_disjoint(stage):
    recipe = read_recipe(stage / "s1")
    target = make_target("azimuth")
    feat = Featurizer(KINDS, -150.0, "float16")

    def batches(workers=0, rank=0, world=1):
        d = OnTheFlyData(recipe, DrawSettings(), feat, 96, 16, "cpu", seed=7, rank=rank, world=world,
                         target=target, workers=workers)
        return [(x.clone(), y.clone(), i.clone()) for x, y, i in d.epoch(3)]

    here, there = batches(0), batches(1)
    assert len(here) == 6
    for (x0, y0, i0), (x1, y1, i1) in zip(here, there):
        assert torch.equal(x0, x1) and torch.equal(y0, y1) and torch.equal(i0, i1)
    shares = [torch.cat([i for _, _, i in batches(0, r, 3)]) for r in range(3)]
    joined = torch.cat(shares)
    assert len(joined) == 96 and len(set(joined.tolist())) == 96  # disjoint, together the epoch
    with pytest.raises(ConfigError, match="epoch-samples"):
        OnTheFlyData(recipe, DrawSettings(), feat, 0, 16, "cpu", target=target)


def _scheduler_after_init(queue):
    init_worker(0)
    queue.put((os.sched_getscheduler(0), torch.get_num_threads()))


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_a_loader_worker_renders_at_idle_priority_on_one_thread():
    """So that it takes only the cores the training step leaves idle (docs/performance.md);
    the batches it makes are the training process's own (the test above)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scheduler_after_init, args=(queue,))
    proc.start()
    policy, threads = queue.get(timeout=60)
    proc.join(timeout=60)
    assert policy == os.SCHED_IDLE and threads == 1
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller keeps its own


def test_a_run_on_the_fly_is_validated_and_tested_on_the_stage2_sets(stage, tmp_path):
    cfg = preset("tiny", features=KINDS, epochs=1, epoch_samples=128, loader_workers=0, device="cpu",
                 batch_size=32, warmup_steps=2)
    result = train_on_the_fly(stage / "s1", tmp_path / "run", cfg)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["on_the_fly"] and config["loader"] == "OnTheFlyData" and config["train_samples"] == 128
    assert config["recipe"]["train_sounds"] == len(read_recipe(stage / "s1").train_sounds())
    stage2 = json.loads((stage / "s2" / "manifest.json").read_text())
    test_n = sum(s["samples"] for s in stage2["shards"] if s["split"] == "test")
    assert result["n"] == test_n  # the same test set as a run from Stage 2
    assert np.isfinite(result["ad_deg"])
    # evaluate and report treat it as any run: scored on the Stage 2 folder's test split it
    # gives the final test's figures (the same samples), and the report lists it
    from bast.model.evaluation.runs import evaluate_run
    from bast.report.build import build_report

    again = evaluate_run(tmp_path / "run", stage / "s2")
    assert again["n"] == test_n and abs(again["ad_deg"] - result["ad_deg"]) < 1e-3
    build_report([tmp_path / "run"], tmp_path / "report", rollout_samples=0)
    (reported,) = json.loads((tmp_path / "report" / "summary.json").read_text())["runs"].values()
    assert reported["summary"]["n"] == test_n and abs(reported["summary"]["ad_deg"] - result["ad_deg"]) < 1e-3


def test_a_killed_run_resumed_equals_an_uninterrupted_one(stage, tmp_path):
    cfg = preset("tiny", features=KINDS, epochs=2, epoch_samples=96, loader_workers=0, device="cpu",
                 batch_size=32, warmup_steps=2, seed=4)
    whole, resumed = killed_after_epoch_1_and_resumed(train_on_the_fly, stage / "s1", tmp_path, cfg)
    assert same_weights(tmp_path / "whole", tmp_path / "cut", "best.pt")
    assert resumed["ad_deg"] == whole["ad_deg"]
    rows_a, rows_b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]


def test_the_cli_trains_on_the_fly_and_refuses_what_it_cannot(stage, tmp_path):
    run = CliRunner().invoke(app, ["train", str(stage / "s1"), "--on-the-fly", "--out", str(tmp_path / "r"),
                                   "--epochs", "1", "--epoch-samples", "64", "--loader-workers", "0",
                                   "--features", "logpower,phase", "--device", "cpu", "--batch-size", "32"])
    assert run.exit_code == 0, run.output
    assert "on the fly: 64 samples an epoch" in run.output and "test" in run.output
    for args, message in ((["--epoch-samples", "64"], "add --on-the-fly"),
                          (["--on-the-fly", "--sample-directions", "cube"], "sample_directions must be one of"),
                          (["--on-the-fly", "--epoch-samples", "-1"], "epoch_samples must be"),
                          (["--on-the-fly", "--loader-workers", "99"], "loader_workers must be")):
        bad = CliRunner().invoke(app, ["train", str(stage / "s1"), "--out", str(tmp_path / "bad"), *args])
        assert bad.exit_code != 0 and message in bad.output, bad.output
        assert "Traceback" not in bad.output and not (tmp_path / "bad" / "config.json").exists()
    # a Stage 2 folder is not a recipe
    bad = CliRunner().invoke(app, ["train", str(stage / "s2"), "--on-the-fly", "--out", str(tmp_path / "b2")])
    assert bad.exit_code != 0 and "spatialize" in bad.output and "Traceback" not in bad.output


def test_fresh_sounds_need_a_procedural_corpus(stage, tmp_path):
    import dataclasses

    recipe = dataclasses.replace(read_recipe(stage / "s1"), source={"recipe": "files", "source": "/x"})
    with pytest.raises(ConfigError, match="procedural"):
        draw(recipe, DrawSettings(fresh_sounds=True), 0, 0, range(2))


def test_a_stage1_folder_whose_sounds_changed_is_refused(stage, tmp_path):
    import shutil

    copy = tmp_path / "s1"
    shutil.copytree(stage / "s1", copy)
    params = json.loads((copy / "params.json").read_text())
    params["source"]["seed"] = 99  # other sounds than those it holds
    (copy / "params.json").write_text(json.dumps(params))
    with pytest.raises(DataError, match="can no longer be listed"):
        read_recipe(copy)


def test_a_plan_only_folder_trains_on_the_fly_with_the_full_runs_heldout_sets(stage, tmp_path):
    """spatialize --plan-only writes no audio; training on it renders its validation and
    test shards, which equal those of the full Stage 1 folder byte for byte."""
    run = CliRunner().invoke(app, ["spatialize", "default", str(tmp_path / "plan"), "--sounds", "16", "--seed", "3",
                                   "--azimuths", "0:360:30", "--samples-per-shard", "48", "--workers", "0",
                                   "--no-speech", "--plan-only"])
    assert run.exit_code == 0, run.output
    plan = json.loads((tmp_path / "plan" / "manifest.json").read_text())
    assert plan["plan_only"] and plan["shards"] == [] and not list((tmp_path / "plan" / "shards").glob("*.h5"))
    assert sorted(p.name for p in (tmp_path / "plan" / "irs").glob("*.sofa")) == ["anechoic.sofa", "hall.sofa"]
    bad = CliRunner().invoke(app, ["featurize", str(tmp_path / "plan"), str(tmp_path / "f")])
    assert bad.exit_code != 0 and "--plan-only" in bad.output and "Traceback" not in bad.output
    cfg = preset("tiny", features=KINDS, epochs=1, epoch_samples=64, loader_workers=0, device="cpu", batch_size=32)
    train_on_the_fly(tmp_path / "plan", tmp_path / "run", cfg)
    full = json.loads((stage / "s1" / "manifest.json").read_text())
    rendered = json.loads((tmp_path / "run" / "heldout-stage1" / "manifest.json").read_text())
    want = {s["path"]: s["sha256"] for s in full["shards"] if s["split"] in ("val", "test")}
    assert {s["path"]: s["sha256"] for s in rendered["shards"]} == want


@pytest.mark.parametrize("arch,target", [("bast", "direction"), ("bast", "category"), ("bast", "direction+category"),
                                         ("bast", "azimuth+category"), ("mlp", "azimuth"), ("cnn", "azimuth"),
                                         ("ast", "azimuth")])
def test_every_target_and_model_trains_on_the_fly(stage, tmp_path, arch, target):
    cfg = preset("tiny", arch=arch, target=target, features=KINDS, epochs=1, epoch_samples=64, loader_workers=0,
                 device="cpu", batch_size=32, warmup_steps=1)
    result = train_on_the_fly(stage / "s1", tmp_path / "run", cfg)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["target"] == target and config["arch"] == arch and config["on_the_fly"]
    stage2 = json.loads((stage / "s2" / "manifest.json").read_text())
    assert result["n"] == sum(s["samples"] for s in stage2["shards"] if s["split"] == "test")
    if "category" in target:  # the classes of the whole data set, in the test's order
        assert config["classes"] == list(read_recipe(stage / "s1").categories)
        assert "accuracy" in result and np.isfinite(result["accuracy"])
    if target != "category":
        assert np.isfinite(result["ad_deg"] if "ad_deg" in result else result["great_circle_deg"])


def test_seld_is_not_drawn_on_the_fly(stage, tmp_path):
    cfg = preset("tiny", target="seld", epochs=1, epoch_samples=64, loader_workers=0, device="cpu")
    with pytest.raises(ConfigError, match="on the fly draws clips"):
        train_on_the_fly(stage / "s1", tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()  # refused before any work
