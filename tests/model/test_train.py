"""Stage 3: the loader, the training loop, checkpoints, resume, NaN handling, DDP."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bast.fileio import sha256_file
from bast.model.data.loaders import EvalData, ResidentData, Selection, StreamingData, read_selection
from bast.model.targets.losses import azimuth_to_vector
from bast.model.data.loaders import standardize
from bast.errors import ConfigError, DataError
from bast.model.nets.bast import BASTConfig
from bast.model.train import TrainConfig, TrainingError, load_checkpoint, load_model, lr_at, preset, train
from helpers import cli_killed_at_step

SMALL = dict(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0, batch_size=16, warmup_steps=5,
             device="cpu", memory_budget_gb=1.0)


@pytest.fixture(scope="module")
def features(small_features):
    return small_features


def test_learning_rate_schedule():
    cfg = preset("tiny", lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 100) == pytest.approx(1e-4)
    assert lr_at(9, cfg, 100) == pytest.approx(1e-3)
    assert lr_at(100, cfg, 100) == pytest.approx(1e-4)
    assert lr_at(55, cfg, 100) == pytest.approx(0.55e-3, rel=1e-6)  # half-way down the cosine
    paper = preset("paper")
    assert {lr_at(s, paper, 1000) for s in (0, 500, 999)} == {1e-4}


def test_a_cpu_run_under_device_auto_is_not_compiled():
    """--device auto on a machine without CUDA: eager (compile's default off on a CPU), and
    the note saying why the CPU is where it says so."""
    from bast.model.runs.runtime import describe, setup

    if torch.cuda.is_available():
        pytest.skip("--device auto picks the GPU here")
    ctx = setup(preset("tiny", device="auto"))
    assert ctx.compile is False and ctx.device.type == "cpu"
    assert "CUDA is not available" in ctx.device_note
    text = describe(ctx, preset("tiny"), [], 64)
    assert "torch.compile" not in text and "CUDA is not available" in text


def test_compile_mode_is_a_setting_recorded_and_said():
    """--compile-mode (reduce-overhead: CUDA graphs) reaches the Context and the start-up
    lines, is written with the settings, and older configs without it read as default."""
    from bast.model.runs.runtime import describe, setup

    cfg = preset("tiny", device="cpu", compile=True, compile_mode="reduce-overhead")
    ctx = setup(cfg)
    assert ctx.compile and ctx.compile_mode == "reduce-overhead"
    assert "torch.compile (mode reduce-overhead)" in describe(ctx, cfg, [], 64)
    assert TrainConfig.from_dict(cfg.to_dict()).compile_mode == "reduce-overhead"
    old = {k: v for k, v in preset("tiny").to_dict().items() if k != "compile_mode"}
    assert TrainConfig.from_dict(old).compile_mode == "default"
    plain = setup(preset("tiny", device="cpu", compile=True))
    assert describe(plain, preset("tiny"), [], 64).count("torch.compile") == 1 and "mode" not in describe(
        plain, preset("tiny"), [], 64)


def test_presets_take_overrides_and_refuse_unknown_keys():
    cfg = preset("paper", dim=64, lr=3e-4)
    assert isinstance(cfg.model, BASTConfig)
    assert cfg.model.dim == 64 and cfg.lr == 3e-4 and cfg.batch_size == 48 and cfg.epochs == 50
    with pytest.raises(ValueError, match="unknown setting"):
        preset("tiny", learning_rate=1.0)


@pytest.mark.parametrize("override, named", [
    (dict(schedule="linear"), "schedule"), (dict(amp="fp8"), "amp"), (dict(device="gpu"), "device"),
    (dict(device="cuda:x"), "device"), (dict(loss="l1"), "loss"), (dict(nosuchkey=1), "nosuchkey"),
    (dict(lr="abc"), "lr"), (dict(batch_size=0), "batch_size"), (dict(epochs=2.5), "epochs"),
    (dict(compile="yes"), "compile"), (dict(compile_mode="fast"), "compile_mode"), (dict(train_env="cathedral"), "train_env"), (dict(dim="wide"), "dim"),
    (dict(integration="mul"), "integration"), (dict(min_lr_ratio=2), "min_lr_ratio")])
def test_train_config_refuses_bad_settings_by_name(override, named):
    with pytest.raises(ConfigError, match=named):
        preset("tiny", **override)


def test_train_config_serialises_the_model_as_a_plain_dict():
    cfg = preset("tiny", dim=32, shared=True)
    d = cfg.to_dict()
    assert isinstance(d["model"], dict) and d["model"]["dim"] == 32 and d["model"]["shared"] is True
    json.dumps(d)  # config.json
    again = TrainConfig.from_dict({**d, "features_dir": "/x", "parameters": 1})  # config.json's extra keys
    assert again == cfg and isinstance(again.model, BASTConfig)
    old = TrainConfig.from_dict({**d, "model": {"dim": 32, "heads": 4}})  # a checkpoint of before: a dict
    assert old.model.dim == 32 and old.model.heads == 4
    # an older run's config.json: the resolved device and autocast dtype over the settings
    assert TrainConfig.from_dict({**d, "device": "cuda:0", "amp": "torch.bfloat16"}).amp == "bf16"
    assert TrainConfig.from_dict({**d, "device": "cpu", "amp": "None"}).amp == "none"
    with pytest.raises(ConfigError, match="nokey"):
        TrainConfig.from_dict({**d, "model": {"nokey": 1}})


def test_resident_and_streaming_loaders(features):
    sel = Selection.of(features, "train", "RI")
    assert sel.samples > 0 and all(s["split"] == "train" for s in sel.shards)
    for data in (ResidentData(sel, 16, "cpu", seed=0), StreamingData(sel, 16, "cpu", seed=0, window=64)):
        batches = list(data.epoch(0))
        assert len(batches) == len(data) == sel.samples // 16
        x, y, _ = batches[0]
        assert x.shape == (16, 2, 129, 61) and x.dtype == torch.float32
        flat = x.reshape(16, -1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(16), atol=1e-3, rtol=0)
        torch.testing.assert_close(flat.std(1), torch.ones(16), atol=1e-3, rtol=0)
        torch.testing.assert_close(y.norm(dim=1), torch.ones(16))
    resident = ResidentData(sel, 16, "cpu", seed=0)
    seen = torch.cat([idx for *_, idx in resident.epoch(0)])
    assert len(set(seen.tolist())) == len(seen)  # no sample twice in an epoch
    again = torch.cat([idx for *_, idx in resident.epoch(0)])
    assert torch.equal(seen, again)  # the order is a function of (seed, epoch)
    assert not torch.equal(seen, torch.cat([idx for *_, idx in resident.epoch(1)]))
    anechoic = Selection.of(features, "train", "RI01")
    assert anechoic.samples == sel.samples // 2 and {s["env"] for s in anechoic.shards} == {"anechoic"}


def test_resident_ranks_read_only_their_cut_of_the_shards(features, monkeypatch):
    """Under DDP a resident rank reads only the shards its share lies in; the shares are
    disjoint, equal to one sample, and together every sample; one process keeps every sample
    in the stored order, as before."""
    import bast.model.data.loaders as data_module
    from bast.model.data.loaders import rank_share

    sel = Selection.of(features, "train", "RI")
    n = len(sel.shards) - (len(sel.shards) % 2 == 0)  # an odd number of shards: no even deal of whole shards
    uneven = Selection(sel.root, sel.shards[:n])
    flat = read_selection(uneven)
    assert np.array_equal(rank_share([s["samples"] for s in uneven.shards], 5, 0, 1), np.arange(uneven.samples))
    real = data_module.read_shard
    for world in (2, 3):
        shares, reads = [], 0
        for rank in range(world):
            opened = []
            monkeypatch.setattr(data_module, "read_shard", lambda path, *a: opened.append(path) or real(path, *a))
            data = ResidentData(uneven, 8, "cpu", seed=5, rank=rank, world=world)
            share = data.indices.numpy()
            assert len(share) in (uneven.samples // world, uneven.samples // world + 1)
            assert len(data) == uneven.samples // world // 8  # the same steps on every rank
            # it read exactly the shards holding its samples, each once
            offsets = np.cumsum([0] + [s["samples"] for s in uneven.shards])
            holding = sorted({int(np.searchsorted(offsets, k, side="right") - 1) for k in share})
            assert list(data.shards_read) == holding
            assert opened == [uneven.root / uneven.shards[i]["path"] for i in holding]
            reads += len(opened)
            # what it holds is those samples, standardised
            torch.testing.assert_close(data.spec.float(), standardize(torch.from_numpy(flat["spec"][share])),
                                       atol=2e-3, rtol=2e-3)
            epoch = torch.cat([i for *_, i in data.epoch(0)]).numpy()
            assert set(epoch) <= set(share) and len(set(epoch)) == len(epoch) == len(data) * 8
            shares.append(set(share.tolist()))
        assert set().union(*shares) == set(range(uneven.samples))
        assert sum(map(len, shares)) == uneven.samples  # disjoint
        assert reads <= len(uneven.shards) + world - 1  # a shard read twice only where the cut splits it
        assert reads < world * len(uneven.shards)  # not every rank every shard, as before
    monkeypatch.setattr(data_module, "read_shard", real)
    # the cut follows the seed, not the manifest's order (which groups environments)
    cuts = {tuple(rank_share([s["samples"] for s in sel.shards], seed, 0, 2)[:3]) for seed in range(6)}
    assert len(cuts) > 1


def test_streaming_deals_shards_afresh_each_epoch(features):
    # Uneven shards over 2 ranks: equal steps on both, the sample numbers are the samples'
    # own, and over a few epochs every sample reaches training (none lost for good).
    sel = Selection.of(features, "train", "RI")
    n = len(sel.shards) - (len(sel.shards) % 2 == 0)  # an odd number of shards: unequal deals
    assert n >= 3
    uneven = Selection(sel.root, sel.shards[:n])
    flat = read_selection(uneven)
    ranks = [StreamingData(uneven, 8, "cpu", seed=3, rank=r, world=2, window=32) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == uneven.samples // 2 // 8
    dealt = [sum(uneven.shards[i]["samples"] for i in data.shards_of(0)) for data in ranks]
    assert dealt[0] != dealt[1] and sum(dealt) == uneven.samples
    seen = set()
    for epoch in range(6):
        for data in ranks:
            batches = list(data.epoch(epoch))
            assert len(batches) == len(data)
            x, y, idx = batches[0]
            want = standardize(torch.from_numpy(flat["spec"][idx.numpy()]))
            torch.testing.assert_close(x, want.float(), atol=1e-3, rtol=0)
            torch.testing.assert_close(y, azimuth_to_vector(torch.from_numpy(flat["azimuth_deg"][idx.numpy()])))
            seen |= set(torch.cat([i for *_, i in batches]).tolist())
    assert seen == set(range(uneven.samples))


def test_streaming_epoch_cut_short_stops_its_reader(features):
    sel = Selection.of(features, "train", "RI")
    data = StreamingData(sel, 4, "cpu", seed=0, window=8)
    before = threading.active_count()
    gen = data.epoch(0)
    next(gen)
    assert threading.active_count() == before + 1
    gen.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


def test_train_writes_a_complete_run(features, tmp_path):
    cfg = preset("tiny", epochs=2, max_minutes=None, **SMALL)
    result = train(features, tmp_path / "run", cfg)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["val_ad_deg"]) for r in rows)
    for name in ("last", "best"):
        ckpt = load_checkpoint(run / "checkpoints" / f"{name}.pt")  # weights_only=True
        assert ckpt["config"]["model"]["dim"] == 32 and ckpt["epoch"] in (1, 2)
    test = json.loads((run / "eval" / "test.json").read_text())
    assert test["n"] == result["n"] == Selection.of(features, "test", "RI").samples
    assert set(test["by_env"]) == {"anechoic", "hall"} and test["by_category"]
    header = (run / "eval" / "test_predictions.csv").read_text().splitlines()[0].split(",")
    # the standard fields, then the Stage 1 conditions each sample carries
    assert header == ["clip_id", "category", "env", "azimuth_deg", "pred_x", "pred_y", "ad_deg", "sq_err",
                      "head", "room", "snr_db"]
    with pytest.raises(TrainingError, match="already holds a run"):
        train(features, run, cfg)


def test_a_nan_loss_stops_with_a_clear_message_and_a_usable_checkpoint(features, tmp_path):
    broken = tmp_path / "s2"
    subprocess.run(["cp", "-r", str(features), str(broken)], check=True)
    manifest = json.loads((broken / "manifest.json").read_text())
    train_shard = next(s for s in manifest["shards"] if s["split"] == "train")
    with h5py.File(broken / train_shard["path"], "r+") as f:
        f["spec"][:, 0, 0, 0] = np.nan  # every sample of this shard
    # Finite-looking bytes a checksum would catch are not the point here: NaN spectra that
    # featurize itself wrote (the manifest vouches for them).
    train_shard["sha256"] = sha256_file(broken / train_shard["path"])
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainingError, match="loss became nan") as info:
        train(broken, tmp_path / "run", preset("tiny", epochs=2, max_minutes=None, **SMALL))
    assert "last.pt" in str(info.value)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def cli(*args):
    return [sys.executable, "-m", "bast.cli", "train", *map(str, args)]


SMALL_ARGS = ["--device", "cpu", "--deterministic", "--seed", "3", "--batch-size", "16", "--set", "dim=32",
              "--set", "heads=4", "--set", "mlp_dim=64", "--set", "stride=12", "--set", "warmup_steps=5"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(features, tmp_path):
    args = SMALL_ARGS + ["--epochs", "3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cli(features, "--out", whole, *args), check=True, capture_output=True)
    proc = cli_killed_at_step(2, 2, ["train", features, "--out", killed, *args], timeout=300)  # in epoch 2
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (killed / "metrics.jsonl").read_text().count("\n") == 1
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 1
    subprocess.run(cli(features, "--out", killed, "--resume"), check=True, capture_output=True)
    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # a resumed run keeps its settings: changing one is refused with its name, nothing touched
    refused = subprocess.run(cli(features, "--out", killed, "--resume", "--lr", "0.1"), capture_output=True, text=True)
    assert refused.returncode == 1 and "lr cannot change" in refused.stderr
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 3
    # ... but the starting command may be repeated, and --epochs extends a finished run
    subprocess.run(cli(features, "--out", killed, *SMALL_ARGS, "--resume", "--epochs", "4"), check=True,
                   capture_output=True)
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 4
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert json.loads((killed / "config.json").read_text())["epochs"] == 4
    with pytest.raises(TrainingError, match="already trained 4 epochs"):
        train(features, killed, preset("tiny"), resume=True, resume_changes={"epochs": 2})


def train_cli(features, run, *args):
    """`bast-cli train` in this process; its metrics rows."""
    from typer.testing import CliRunner

    from bast.cli import app

    result = CliRunner().invoke(app, ["train", str(features), "--out", str(run), *SMALL_ARGS, *map(str, args)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_max_minutes_stops_after_the_epoch_that_crosses_it(features, tmp_path):
    """--max-minutes: a budget any epoch crosses (0.6 ms) stops the run after its first
    epoch of 4, validated (the last epoch always is), saved, said why, and tested."""
    rows = train_cli(features, tmp_path / "run", "--epochs", "4", "--max-minutes", "0.00001")
    assert [r.get("epoch") for r in rows] == [1, 1]
    assert rows[0]["val_loss"] is not None and rows[1]["stopped"] == "time budget of 1e-05 min"
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1
    assert json.loads((tmp_path / "run" / "eval" / "test.json").read_text())["n"] > 0


def test_val_every_validates_every_kth_epoch_and_the_last(features, tmp_path):
    rows = train_cli(features, tmp_path / "run", "--epochs", "3", "--val-every", "2")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r.get("val_loss") is not None for r in rows] == [False, True, True]
    assert "val_ad_deg" not in rows[0]
    # best.pt is only ever a validated epoch
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["best_epoch"] in (2, 3)


def torchrun(features, run, *args, port=29517):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "bast.cli", "train", str(features), "--out", str(run), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAST_DDP_REPORT": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


DDP_ARGS = SMALL_ARGS + ["--set", "dropout=0.1", "--set", "schedule=constant"]


@pytest.mark.slow
def test_two_gloo_processes_train_one_synchronised_model(features, tmp_path):
    run = tmp_path / "ddp"
    done = torchrun(features, run, *DDP_ARGS, "--epochs", "2")
    assert "batch: 8 per rank x 2 ranks = 16" in done.stdout and "2 ranks" in done.stdout
    ranks = json.loads((run / "ddp.json").read_text())
    assert len(ranks) == 2 and ranks[0]["weights_sha"] == ranks[1]["weights_sha"]
    a, b = (set(r["first_epoch_samples"]) for r in ranks)
    assert not a & b  # each rank its own share
    steps = json.loads((run / "config.json").read_text())["steps_per_epoch"]
    assert len(a) == len(b) == steps * 8  # per-rank batch: 16 / 2
    train_sel = Selection.of(features, "train", "RI")
    total = train_sel.samples
    assert len(a | b) >= total - 2 * 8  # the whole set, but for the last partial batch per rank
    # each rank read only the shards of its half (the shard the cut splits, by both)
    read = [set(r["shards_read"]) for r in ranks]
    assert read[0] | read[1] == set(range(len(train_sel.shards))) and len(read[0] & read[1]) <= 1
    assert all(len(r) < len(train_sel.shards) for r in read)
    assert (run / "eval" / "test.json").exists()
    # every rank its own random stream (dropout), each saved in the checkpoint
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["cpu"], ckpt["rng"][1]["cpu"])
    # validation sharded over the ranks gives what one process gives (validation's data:
    # standardised once, prepared=True)
    row = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    model, cfg = load_model(run, "last")
    from bast.model.evaluation.evaluate import evaluate
    from bast.model.targets.losses import make_loss
    from bast.model.runs.runtime import Context
    metrics, _ = evaluate(model, EvalData(Selection.of(features, "val", "RI"), 256, "cpu", 1.0, prepared=True),
                          Context(torch.device("cpu"), None), make_loss(cfg.loss), training_precision=True)
    assert row["val_loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    assert row["val_ad_deg"] == pytest.approx(metrics["ad_deg"], rel=1e-5)
    assert row["val_mse"] == pytest.approx(metrics["mse"], rel=1e-5)
    # a DDP run resumed from its checkpoint (each rank its own RNG state) ends where the whole run did
    part = tmp_path / "part"
    torchrun(features, part, *DDP_ARGS, "--epochs", "1", port=29518)
    torchrun(features, part, "--resume", "--epochs", "2", port=29519)
    resumed = load_checkpoint(part / "checkpoints" / "last.pt")
    assert resumed["epoch"] == 2
    for k in ckpt["model"]:
        assert torch.equal(ckpt["model"][k], resumed["model"][k]), k


# --------------------------------------------------------------------------- GPU readiness, shown on a CPU


def test_device_selection_and_its_messages():
    from bast.model.runs.runtime import resolve_device

    dev = lambda *a, **k: resolve_device(*a, **k)[0]  # noqa: E731
    assert dev("cpu") == torch.device("cpu")
    device, note = resolve_device("auto", cuda_available=False)
    assert device == torch.device("cpu") and "CUDA is not available" in note  # said, not silent
    assert dev("auto", 1, 2, True, 2) == torch.device("cuda", 1)
    assert dev("cuda", 0, 1, True, 1) == torch.device("cuda", 0)  # an index, as set_device needs
    assert dev("cuda", 3, 4, True, 4) == torch.device("cuda", 3)  # rank r: cuda:LOCAL_RANK
    assert dev("cuda:1", 0, 1, True, 2) == torch.device("cuda", 1)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device(spec, cuda_available=False)
    with pytest.raises(ConfigError, match="all 2 ranks on one GPU"):
        resolve_device("cuda:0", 0, 2, True, 2)  # torchrun: every rank on GPU 0
    with pytest.raises(ConfigError, match="GPU 2 asked for, 2 visible"):
        resolve_device("cuda:2", 0, 1, True, 2)
    with pytest.raises(ConfigError, match="GPU 1 asked for, 1 visible"):
        resolve_device("auto", 1, 2, True, 1)


def test_deterministic_sets_the_cublas_workspace_on_cuda_only():
    from bast.model.runs.runtime import deterministic_env

    env: dict = {}
    deterministic_env("cpu", env)
    assert env == {}
    deterministic_env("cuda", env)
    assert env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    deterministic_env("cuda", env)
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # the user's choice is kept


def test_rng_state_per_rank_and_old_checkpoints_restore():
    from bast.model.runs.checkpoint import restore_rng, rng_state

    cpu = torch.device("cpu")
    states = []
    for r in range(2):
        torch.manual_seed(100 + r)
        states.append(rng_state(cpu))
    for r in range(2):
        assert restore_rng({"rng": states}, r, cpu)
        assert torch.equal(torch.get_rng_state(), states[r]["cpu"])
    assert not restore_rng({"rng": states}, 2, cpu)  # more ranks than the run had: the caller seeds
    # a checkpoint of before: rank 0's state and every GPU's, of more GPUs than are here
    old = {"rng": states[1]["cpu"], "cuda_rng": [torch.zeros(16, dtype=torch.uint8)] * 8}
    assert restore_rng(old, 0, cpu) and torch.equal(torch.get_rng_state(), states[1]["cpu"])
    assert not restore_rng(old, 1, cpu)


def test_evaluation_is_float32_whatever_the_training_precision(features):
    from bast.model.nets.bast import BAST
    from bast.model.evaluation.evaluate import evaluate
    from bast.model.runs.runtime import Context

    torch.manual_seed(0)
    model = BAST(BASTConfig(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0))
    flags = []
    model.register_forward_hook(lambda *_: flags.append((torch.is_autocast_enabled("cpu"),
                                                         torch.backends.cuda.matmul.allow_tf32)))
    data = EvalData(Selection.of(features, "val", "RI"), 64, "cpu", 1.0)
    bf16, table16 = evaluate(model, data, Context(torch.device("cpu"), torch.bfloat16))
    fp32, table32 = evaluate(model, data, Context(torch.device("cpu"), None))
    assert np.array_equal(table16["pred_x"], table32["pred_x"]) and bf16 == fp32
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's autocast
            evaluate(model, data, Context(torch.device("cpu"), None))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert not any(autocast or tf32 for autocast, tf32 in flags)


def test_sharded_evaluation_equals_one_process(features):
    from bast.model.nets.bast import BAST
    from bast.model.evaluation.evaluate import merge_shards, predict, table_metrics
    from bast.model.targets.losses import make_loss

    torch.manual_seed(0)
    model = BAST(BASTConfig(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0))
    sel = Selection.of(features, "val", "RI")
    whole = predict(model, EvalData(sel, 64, "cpu", 1.0))
    for world in (2, 3):
        parts = [predict(model, EvalData(sel, 64, "cpu", 1.0, rank=r, world=world)) for r in range(world)]
        merged = merge_shards(parts, sel.shards, world)
        for k in whole:
            assert np.array_equal(merged[k], whole[k]), k
        assert table_metrics(merged, make_loss("mix")) == table_metrics(whole, make_loss("mix"))


@pytest.mark.parametrize("name", ["azimuth", "direction+category"])
def test_validation_data_is_standardised_once_as_it_loads(features, monkeypatch, name):
    """EvalData(prepared=True), validation's: the spectra standardised and the targets
    encoded when it loads, not per batch; the batches those of the per-batch path (the
    final test's) up to float16's rounding of the standardised values."""
    import bast.model.data.loaders as data_module
    from bast.model.targets import core as tg

    target = tg.make_target(name, tg.TargetSettings(classes=tuple(data_module.data_classes(features))))
    sel = Selection.of(features, "val", "RI")
    exact = EvalData(sel, 64, "cpu", 1.0, target=target)
    prepared = EvalData(sel, 64, "cpu", 1.0, target=target, prepared=True)
    assert prepared.prepared and not exact.prepared
    assert all(spec.dtype == torch.float16 for spec, _, _ in prepared.parts)  # the budget's 2 bytes a value
    calls = []
    real = data_module.model_input
    monkeypatch.setattr(data_module, "model_input", lambda *a: calls.append(1) or real(*a))
    expected = list(exact.batches())
    assert len(calls) == len(expected) > 1  # the exact path standardises every batch
    calls.clear()
    got = list(prepared.batches())
    assert calls == []  # the prepared one: none
    assert len(got) == len(expected)
    for (x, y, labels), (x0, y0, labels0) in zip(got, expected):
        assert x.dtype == torch.float32 and x.shape == x0.shape
        torch.testing.assert_close(x, x0, rtol=2e-3, atol=2e-3)  # float16: 11 bits of mantissa
        assert float(x0[:, :2].reshape(len(x0), -1).std(dim=1).mean()) == pytest.approx(1.0, abs=1e-3)
        for part, part0 in zip(y if isinstance(y, tuple) else (y,), y0 if isinstance(y0, tuple) else (y0,)):
            torch.testing.assert_close(part, part0)
        assert labels.keys() == labels0.keys() and all(np.array_equal(labels[k], labels0[k]) for k in labels)
    # over the budget: read shard by shard, per batch, as before
    streamed = EvalData(sel, 64, "cpu", 0.0, target=target, prepared=True)
    assert not streamed.resident and not streamed.prepared
    assert all(torch.equal(a[0], b[0]) for a, b in zip(streamed.batches(), expected))


def test_the_training_step_does_not_sync_with_the_host(monkeypatch):
    from bast.model.nets.bast import BAST
    from bast.model.targets.losses import make_loss
    from bast.model.runs.runtime import Context
    from bast.model.train import NonFiniteGuard, make_optimizer, train_step

    cfg = preset("tiny", **SMALL)
    torch.manual_seed(0)
    model = BAST(cfg.model)
    assert not make_optimizer(model, cfg).defaults.get("fused")  # fused Adam is for parameters on a GPU
    # Adam keeps its step count in a CPU tensor and reads it with .item() (no device sync);
    # plain SGD reads nothing, so any read below would be the loop's own.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx = Context(torch.device("cpu"), None)
    guard = NonFiniteGuard(ctx.device, every=3)
    x, y = torch.randn(4, 2, 129, 61), azimuth_to_vector(torch.tensor([0.0, 90.0, 180.0, 270.0]))

    def no_sync(*_):
        raise AssertionError("a host sync in the training step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    for step in range(2):
        train_step(model, optimizer, x, y, make_loss("mix"), ctx, 1e-3, guard, step)
    train_step(model, optimizer, x * float("nan"), y, make_loss("mix"), ctx, 1e-3, guard, 2)  # no raise here
    train_step(model, optimizer, x, y, make_loss("mix"), ctx, 1e-3, guard, 3)
    monkeypatch.undo()
    assert [guard.due(s) for s in (1, 2, 3, 6)] == [False, False, True, True]
    with pytest.raises(TrainingError, match=r"loss became nan .* step 2; last.pt holds"):
        guard.check(ctx, 0, Path("last.pt"))  # the first bad step, not the last
    fresh = NonFiniteGuard(ctx.device)
    fresh.update(torch.tensor(1.0), 0)
    fresh.check(ctx, 0, Path("last.pt"))  # finite: nothing


def test_resident_loader_holds_one_copy_while_loading(features):
    import tracemalloc

    sel = Selection.of(features, "train", "RI")
    largest_shard = max(s["samples"] for s in sel.shards) * 2 * 129 * 61 * 2
    tracemalloc.start()
    try:
        data = ResidentData(sel, 16, "cpu", seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy's allocations: the shard being read and its selected rows, never the whole split
    # (data.share_bytes) once more beside the loader's own array
    assert data.share_bytes > 4 * largest_shard
    assert peak < 2.5 * largest_shard, (peak, largest_shard, data.share_bytes)


def test_training_says_where_and_how_it_runs(features, tmp_path):
    from bast.model.data.loaders import make_data
    from bast.model.runs.runtime import Context, describe

    cfg = preset("tiny", **SMALL)
    sel = Selection.of(features, "train", "RI")
    ctx = Context(torch.device("cpu"), None, device_note="--device auto: CUDA is not available")
    text = describe(ctx, cfg, make_data(sel, 16, "cpu", 0, 1.0), 16)
    assert "device: cpu; --device auto: CUDA is not available" in text
    assert "precision: float32; evaluation in float32" in text
    assert "loader: resident" in text and "batch: 16 per rank" in text
    streaming = make_data(sel, 16, "cpu", 0, 1e-4)
    assert isinstance(streaming, StreamingData)
    text = describe(Context(torch.device("cpu"), torch.bfloat16), cfg, streaming, 16)
    assert "bfloat16 autocast" in text and "loader: streaming" in text and "exceeds --memory-budget-gb" in text
    lines = []
    train(features, tmp_path / "run", preset("tiny", epochs=1, max_minutes=None, **SMALL), on_info=lines.append)
    assert len(lines) == 1 and lines[0].startswith("device: cpu") and "loader: resident" in lines[0]


def _bench():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_knows_gpu_peaks_and_projects_a_paper_run():
    bench = _bench()
    peaks = {"NVIDIA H100 80GB HBM3": 989, "NVIDIA H100 PCIe": 756, "NVIDIA H100 NVL": 835, "NVIDIA H200": 989,
             "NVIDIA H200 NVL": 835, "NVIDIA A100-SXM4-80GB": 312, "NVIDIA A100 80GB PCIe": 312,
             "NVIDIA L40S": 362, "NVIDIA GeForce RTX 4090": 165, "Tesla T4": None}
    for name, peak in peaks.items():
        assert bench.peak_bf16_tflops(name) == peak, name
    assert bench.PAPER_TRAIN_SAMPLES == 248_400
    assert bench.projected_hours(248_400 * 50 / 3600) == pytest.approx(1.0)
    assert bench.projected_hours(1000, epochs=1, train_samples=3_600_000) == pytest.approx(1.0)
    assert bench.mfu(65e9, 1000, 989) == pytest.approx(65e12 / 989e12)
    assert bench.mfu(65e9, 1000, None) is None


def test_the_same_seed_trains_the_same_model(small_features, tmp_path):
    """No step of training depends on the wall clock: two runs with the same seed and
    settings end with the same checkpoint and the same test figures (the demo relies on
    it: the same seed prints the same test AD)."""
    cfg = preset("tiny", epochs=2, **SMALL)
    assert cfg.max_minutes is None  # the tiny preset trains for a number of epochs, not minutes
    a = train(small_features, tmp_path / "a", cfg)
    b = train(small_features, tmp_path / "b", cfg)
    assert a["ad_deg"] == b["ad_deg"] and a["mse"] == b["mse"]
    wa = load_checkpoint(tmp_path / "a" / "checkpoints" / "best.pt")["model"]
    wb = load_checkpoint(tmp_path / "b" / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # every metrics row the same, bit for bit, but for the timings
    timings = {"seconds", "val_seconds", "train_samples_per_s"}
    rows = [[{k: v for k, v in json.loads(line).items() if k not in timings}
             for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in "ab"]
    assert len(rows[0]) == 2 and rows[0] == rows[1]


def test_training_selects_heads_and_rooms_by_name(small_features):
    every = Selection.of(small_features, "train")
    anechoic = Selection.of(small_features, "train", rooms="anechoic")
    assert {s["room"] for s in every.shards} == {"anechoic", "hall"}
    assert {s["room"] for s in anechoic.shards} == {"anechoic"} and 0 < anechoic.samples < every.samples
    head = every.shards[0]["head"]
    assert head and Selection.of(small_features, "train", heads=head).samples == every.samples
    with pytest.raises(DataError, match="no room named attic; it holds anechoic, hall"):
        Selection.of(small_features, "train", rooms="attic")


def test_loss_names_are_case_insensitive_and_stored_lower_case():
    assert preset("tiny", loss="MSE").loss == "mse" and preset("tiny", loss="Hybrid").loss == "hybrid"


def test_bench_takes_mfu_against_the_precision_used_and_counts_attention():
    bench = _bench()
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "tf32") == 494 and bench.peak_tflops("NVIDIA A100", "fp32") == 19.5
    # validation joins the projection: 50 epochs of training at 1 h plus 50 validations at 0.5 h
    train_rate = 248_400 * 50 / 3600
    assert bench.projected_hours(train_rate, val_samples_per_s=62_100 * 50 / 1800) == pytest.approx(1.5)
    assert bench.projected_hours(train_rate, val_samples_per_s=62_100 * 50 / 1800, val_every=5) == pytest.approx(1.1)
    # FLOPs on the eager model with attention on its matmuls: more than torch counts with
    # the CPU's fused attention kernel, by at least the attention's own matmuls
    from torch.utils.flop_counter import FlopCounterMode
    from bast.model.targets.losses import make_loss
    from bast.model.nets.registry import build_model
    from bast.model.runs.runtime import Context
    from bast.model.train import make_optimizer

    cfg = preset("tiny", **SMALL)
    model = build_model("bast", cfg.model)
    x = torch.randn(4, 2, 129, 61)
    y = azimuth_to_vector(torch.tensor([0.0, 90.0, 180.0, 270.0]))
    ctx = Context(torch.device("cpu"), None)
    counted = bench.flops_per_sample(model, make_optimizer(model, cfg), make_loss("mix"), ctx, (x, y, None))
    with FlopCounterMode(display=False) as naive:
        make_loss("mix")(model(x), y).backward()
    # QK^T and AV, 2 N^2 D multiply-adds each, forward + twice that backward, in TE-L, TE-R
    # and TE-C (one layer each, D 32, N 55 tokens at stride 12)
    attention = 3 * 3 * 2 * (2 * 55 ** 2 * 32)
    assert counted - naive.get_total_flops() / 4 == pytest.approx(attention)
