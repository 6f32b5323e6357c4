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
from bast.model.data import EvalData, ResidentData, Selection, StreamingData, read_selection
from bast.model.losses import azimuth_to_vector
from bast.model.data import standardize
from bast.model.train import TrainingError, load_checkpoint, lr_at, preset, train

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


def test_presets_take_overrides_and_refuse_unknown_keys():
    cfg = preset("paper", dim=64, lr=3e-4)
    assert cfg.model["dim"] == 64 and cfg.lr == 3e-4 and cfg.batch_size == 48 and cfg.epochs == 50
    with pytest.raises(ValueError, match="unknown setting"):
        preset("tiny", learning_rate=1.0)


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
    assert header == ["clip_id", "category", "env", "azimuth_deg", "pred_x", "pred_y", "ad_deg", "sq_err"]
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


def test_a_killed_run_resumes_to_the_same_weights(features, tmp_path):
    args = SMALL_ARGS + ["--epochs", "3"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(cli(features, "--out", whole, *args), check=True, capture_output=True)
    proc = subprocess.Popen(cli(features, "--out", killed, *args), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # during epoch 2
    proc.wait()
    assert metrics.read_text().count("\n") == 1, "epoch 2 finished before the kill"
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


def test_two_gloo_processes_train_one_synchronised_model(features, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "bast.cli", "train", str(features), "--out", str(run), *SMALL_ARGS, "--epochs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads((run / "ddp.json").read_text())
    assert len(ranks) == 2 and ranks[0]["weights_sha"] == ranks[1]["weights_sha"]
    a, b = (set(r["first_epoch_samples"]) for r in ranks)
    assert not a & b  # each rank its own share
    steps = json.loads((run / "config.json").read_text())["steps_per_epoch"]
    assert len(a) == len(b) == steps * 8  # per-rank batch: 16 / 2
    total = Selection.of(features, "train", "RI").samples
    assert len(a | b) >= total - 2 * 8  # the whole set, but for the last partial batch per rank
    assert (run / "eval" / "test.json").exists()
