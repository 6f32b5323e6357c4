"""Training on GPUs: run where CUDA is present, skipped elsewhere (CI has no GPU).

One epoch of the tiny preset in bf16 with torch.compile, a killed and resumed run,
`report --device cuda` matching the final test, and two NCCL processes when two GPUs exist.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from bast.model.runs.checkpoint import load_checkpoint
from helpers import cli_killed_at_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SMALL = ["--preset", "tiny", "--batch-size", "16", "--set", "dim=32", "--set", "heads=4", "--set", "mlp_dim=64",
         "--set", "warmup_steps=5", "--set", "max_minutes=null"]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "bast.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, **kw)


def test_one_bf16_compiled_epoch_on_a_gpu(small_features, tmp_path):
    run = tmp_path / "run"
    done = cli("train", small_features, "--out", run, *SMALL, "--device", "cuda", "--compile", "--epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device: cuda:0" in done.stdout and "bfloat16 autocast" in done.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["device_used"] == "cuda:0" and config["autocast_dtype"] == "torch.bfloat16"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["rng"][0]["cuda"] is not None and ckpt["epoch"] == 1
    assert json.loads((run / "eval" / "test.json").read_text())["n"] > 0


def test_float32_training_uses_tf32_and_deterministic_runs(small_features, tmp_path):
    run = tmp_path / "run"
    done = cli("train", small_features, "--out", run, *SMALL, "--device", "cuda", "--amp", "none",
               "--deterministic", "--epochs", "1", env={k: v for k, v in os.environ.items()
                                                       if k != "CUBLAS_WORKSPACE_CONFIG"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TF32 matmuls on" in done.stdout and "deterministic" in done.stdout


def test_a_killed_gpu_run_resumes(small_features, tmp_path):
    args = [*SMALL, "--device", "cuda", "--epochs", "3", "--seed", "3"]
    killed = tmp_path / "killed"
    proc = cli_killed_at_step(2, 2, ["train", small_features, "--out", killed, *args], timeout=900)  # in epoch 2
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 1
    metrics = killed / "metrics.jsonl"
    done = cli("train", small_features, "--out", killed, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows if "epoch" in r and "train_loss" in r] == [1, 2, 3]
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 3


def test_report_on_cuda_matches_the_final_test(small_features, tmp_path):
    run = tmp_path / "run"
    done = cli("train", small_features, "--out", run, *SMALL, "--device", "cuda", "--epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((run / "eval" / "test.json").read_text())
    stored = (run / "eval").rename(tmp_path / "eval-of-training")  # the report evaluates afresh
    done = cli("report", run, "--out", tmp_path / "report", "--device", "cuda", "--rollout-samples", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((run / "eval" / "test.json").read_text())
    assert again["ad_deg"] == final["ad_deg"] and again["mse"] == final["mse"]  # float32 both times
    assert (stored / "test_predictions.csv").read_text() == (run / "eval" / "test_predictions.csv").read_text()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_nccl_processes_train_one_synchronised_model(small_features, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29527",
           "-m", "bast.cli", "train", str(small_features), "--out", str(run), *SMALL, "--device", "cuda",
           "--epochs", "2", "--set", "dropout=0.1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "BAST_DDP_REPORT": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = json.loads((run / "ddp.json").read_text())
    assert ranks[0]["weights_sha"] == ranks[1]["weights_sha"]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["cpu"], ckpt["rng"][1]["cpu"])
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
