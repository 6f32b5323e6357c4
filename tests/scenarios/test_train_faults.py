"""Training under faults and hostile input (issues 20 and 22): a kill between the two
checkpoint saves, a full disk, torn files, foreign checkpoints, a second writer, empty
splits, NaN validation and out-of-range options. Each case checks the exit code or
error, the message, and that nothing was lost."""

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bast.cli import app
from bast.errors import BastError, DataError
from bast.fileio import sha256_file
from bast.model.runs.checkpoint import load_checkpoint, read_metrics, read_run_config
from bast.model.train import optimizer_state_for, preset, train
from bast.pipeline.stage.shards import DirectoryLock

runner = CliRunner()
SMALL = dict(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0, batch_size=16, warmup_steps=5,
             device="cpu", memory_budget_gb=1.0, deterministic=True, seed=3)


@pytest.fixture(scope="module")
def features(small_features):
    return small_features


@pytest.fixture(scope="module")
def finished(features, tmp_path_factory):
    """A finished 3-epoch run, never modified (tests copy it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(features, run, preset("tiny", epochs=3, **SMALL))
    return run


def copy_run(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def altered_features(features, tmp_path, split: str, change) -> Path:
    """A copy of `features` whose `split` shards `change(h5file)` alters, the manifest's
    checksums made to vouch for them (as if featurize had written them)."""
    out = tmp_path / f"s2-{split}"
    shutil.copytree(features, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for s in manifest["shards"]:
        if s["split"] == split:
            with h5py.File(out / s["path"], "r+") as f:
                change(f)
            s["sha256"] = sha256_file(out / s["path"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def cli_train(*args):
    return runner.invoke(app, ["train", *map(str, args)])


def one_error_line(result, *words):
    """Exit 1 with bast's one-line error (no traceback) holding `words`."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    text = " ".join(result.output.split())
    assert "error:" in text and "Traceback" not in text, text
    for word in words:
        assert word in text, (word, text)
    return text


class Killed(BaseException):
    """Stands for SIGKILL at one point of a save (nothing after it runs)."""


# --------------------------------------------------------------------------- issue 22: crash paths


def test_a_kill_between_the_two_checkpoint_saves_leaves_a_consistent_pair(features, finished, tmp_path, monkeypatch):
    rows = read_metrics(finished)
    best_epoch = min((r["val_loss"], r["epoch"]) for r in rows)[1]
    improving = [r["epoch"] for i, r in enumerate(rows) if r["val_loss"] < min([x["val_loss"] for x in rows[:i]],
                                                                               default=np.inf)]
    last_improving = improving[-1]
    assert last_improving == best_epoch and last_improving > 1, improving  # a kill there matters
    run = tmp_path / "killed"
    real_replace = os.replace
    count = {"best": 0}

    def kill_at_best(src, dst):
        if str(dst).endswith("best.pt"):
            count["best"] += 1
            if count["best"] == len(improving):
                raise Killed()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", kill_at_best)
    with pytest.raises(Killed):
        train(features, run, preset("tiny", epochs=3, **SMALL))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no debris either
    result = train(features, run, preset("tiny", epochs=3, **SMALL), resume=True)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    want = load_checkpoint(finished / "checkpoints" / "best.pt")
    assert best["epoch"] == want["epoch"] == best_epoch
    for k in want["model"]:
        assert torch.equal(best["model"][k], want["model"][k]), k
    assert result["ad_deg"] == pytest.approx(json.loads((finished / "eval" / "test.json").read_text())["ad_deg"])


def test_epochs_0_is_refused_before_anything_is_written(features, tmp_path):
    one_error_line(cli_train(features, "--out", tmp_path / "run", "--epochs", "0"), "epochs", ">= 1")
    assert not (tmp_path / "run" / "config.json").exists()


def test_validation_nan_every_epoch_is_an_error_not_a_result(features, tmp_path):
    def poison(f):
        f["spec"][:, 0, 0, 0] = np.nan

    broken = altered_features(features, tmp_path, "val", poison)
    run = tmp_path / "run"
    text = one_error_line(cli_train(broken, "--out", run, "--device", "cpu", "--epochs", "2", "--batch-size", "16",
                                    "--set", "dim=32", "--set", "heads=4", "--set", "mlp_dim=64"),
                          "no epoch had a finite validation loss")
    assert "val loss not finite" in text  # said each epoch
    assert not (run / "eval" / "test.json").exists()
    raw = (run / "metrics.jsonl").read_text()
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON, null for the missing numbers
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["val_loss"] is None and r["val_nonfinite"] for r in rows)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2  # the training is kept


# --------------------------------------------------------------------------- issue 20: writers, files, options


def test_a_failed_checkpoint_save_is_one_error_and_resume_works(features, finished, tmp_path, monkeypatch):
    real_save, calls = torch.save, {"n": 0}

    def disk_full(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the initial last.pt, epoch 1's, then epoch 2's: the disk is full
            (f.write(b"PK\x03\x04 partial") if hasattr(f, "write") else open(f, "wb").write(b"PK partial"))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(BastError, match="last.pt.*No space left on device"):
        train(features, run, preset("tiny", epochs=3, **SMALL))
    monkeypatch.setattr(torch, "save", real_save)
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the previous one, intact
    # a leftover of an older, killed save does not stop --resume either
    (run / "checkpoints" / ".best.pt.tmp").write_bytes(b"PK\x03\x04 torn")
    result = train(features, run, preset("tiny", epochs=3, **SMALL), resume=True)
    assert not (run / "checkpoints" / ".best.pt.tmp").exists()
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (finished, run))
    assert a["epoch"] == b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert result["n"] > 0


def test_one_writer_per_run_directory(features, finished, tmp_path):
    run = copy_run(finished, tmp_path)
    before = (run / "metrics.jsonl").read_text()
    with DirectoryLock(run):  # a live run holds it
        one_error_line(cli_train(features, "--out", run, "--resume", "--epochs", "4"), "in use by another run")
        one_error_line(cli_train(features, "--out", tmp_path / "run", "--device", "cpu"), "in use by another run")
    assert (run / "metrics.jsonl").read_text() == before
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3


def test_resume_refuses_other_features(features, finished, tmp_path):
    def shift(f):
        f["spec"][0, 0, 0, 0] += 1

    other = altered_features(features, tmp_path, "train", shift)
    run = copy_run(finished, tmp_path)
    before = read_run_config(run)
    one_error_line(cli_train(other, "--out", run, "--resume", "--epochs", "4"), "other features", str(other))
    assert read_run_config(run) == before  # features_dir not rewritten
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3


def test_torn_and_foreign_checkpoints_are_named_not_loaded(finished, features, tmp_path):
    run = copy_run(finished, tmp_path)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    one_error_line(cli_train(features, "--out", run, "--resume"), "last.pt", "truncated or corrupt", "bast-cli train")
    # a pickle that would run code when loaded without weights_only
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    best = run / "checkpoints" / "best.pt"
    best.write_bytes(pickle.dumps(Evil()))
    result = runner.invoke(app, ["evaluate", str(run), "--on", str(features), "--device", "cpu"])
    text = one_error_line(result, "best.pt", "not a bast checkpoint")
    assert "weights_only" not in text and not marker.exists()
    # a torch file that is no checkpoint
    torch.save({"weights": torch.zeros(3)}, best)
    one_error_line(runner.invoke(app, ["evaluate", str(run), "--on", str(features), "--device", "cpu"]),
                   "best.pt", "not a bast checkpoint")


def test_torn_run_records_are_named_and_resume_rewrites_them(finished, features, tmp_path):
    run = copy_run(finished, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "train_lo')  # a kill while writing a row
    with pytest.raises(DataError, match="metrics.jsonl: line 4 is torn.*--resume"):
        read_metrics(run)
    config = (run / "config.json").read_text()
    (run / "config.json").write_text(config[: len(config) // 2])
    one_error_line(runner.invoke(app, ["evaluate", str(run), "--on", str(features), "--device", "cpu"]),
                   "config.json", "torn", "--resume")
    train(features, run, preset("tiny"), resume=True, resume_changes={"epochs": 4})
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert read_run_config(run)["epochs"] == 4


def test_a_run_whose_best_checkpoint_was_deleted(finished, features, tmp_path):
    run = copy_run(finished, tmp_path)
    (run / "checkpoints" / "best.pt").unlink()
    one_error_line(runner.invoke(app, ["evaluate", str(run), "--on", str(features), "--device", "cpu"]), "best.pt")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    if last["best_epoch"] == last["epoch"]:  # last.pt holds the best weights: rebuilt exactly
        assert cli_train(features, "--out", run, "--resume").exit_code == 0
        a, b = (load_checkpoint(r / "checkpoints" / "best.pt") for r in (finished, run))
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
        (run / "checkpoints" / "best.pt").unlink()
    # an earlier epoch was the best: lost with best.pt, so chosen again among the epochs to come
    torch.save({**last, "best_epoch": last["epoch"] - 1}, run / "checkpoints" / "last.pt")
    result = cli_train(features, "--out", run, "--resume", "--epochs", "4")
    assert result.exit_code == 0, result.output
    assert "is missing (deleted?)" in " ".join(result.output.split())  # rich folds the long path
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 4
    assert np.isfinite(json.loads((run / "eval" / "test.json").read_text())["ad_deg"])


@pytest.mark.parametrize("args", [["--test-env", "hall"], []])
def test_no_test_samples_is_an_error_before_training(features, tmp_path, args):
    # anechoic-only test data (hall asked for), or no test split at all
    out = tmp_path / "s2"
    shutil.copytree(features, out)
    manifest = json.loads((out / "manifest.json").read_text())
    drop = (lambda s: s["split"] == "test" and s["env"] == "hall") if args else (lambda s: s["split"] == "test")
    manifest["shards"] = [s for s in manifest["shards"] if not drop(s)]
    (out / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    one_error_line(cli_train(out, "--out", run, "--device", "cpu", "--epochs", "1", *args), "no test samples",
                   "--test-env")
    assert not (run / "config.json").exists() and not (run / "eval").exists()


@pytest.mark.parametrize("args, named, allowed", [
    (["--lr", "nan"], "lr", "finite number > 0"),
    (["--set", "dropout=2"], "dropout", "[0, 1)"),
    (["--set", "dim=-96"], "dim", ">= 1"),
    (["--set", "heads=0"], "heads", ">= 1"),
    (["--seed", "-1"], "seed", "[0, 4294967295]"),
    (["--epochs", "0"], "epochs", ">= 1"),
    (["--max-minutes", "nan"], "max_minutes", "> 0"),
    (["--val-every", "0"], "val_every", ">= 1"),
    (["--memory-budget-gb", "-1"], "memory_budget_gb", ">= 0"),
])
def test_out_of_range_train_options_are_one_error_line(features, tmp_path, args, named, allowed):
    one_error_line(cli_train(features, "--out", tmp_path / "run", *args), named, allowed)
    assert not (tmp_path / "run").exists()


def test_an_existing_file_as_out_is_refused(features, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    one_error_line(cli_train(features, "--out", target, "--device", "cpu"), "existing file")
    assert target.read_text() == "keep me"


def test_optimizer_state_follows_the_device_on_resume():
    model = torch.nn.Linear(3, 2)
    cpu = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    cpu.step()
    saved = cpu.state_dict()
    on_gpu = optimizer_state_for(saved, fused=True)  # a CPU-started run resumed on CUDA
    assert all(g["fused"] is True and g["foreach"] is None for g in on_gpu["param_groups"])
    back = optimizer_state_for(on_gpu, fused=False)  # and a GPU run resumed on a CPU
    assert all(g["fused"] is None for g in back["param_groups"])
    again = torch.optim.Adam(model.parameters())
    again.load_state_dict(back)  # loads and steps on a CPU
    again.step()
    assert saved["param_groups"][0].get("fused") is None  # the saved state is not modified
