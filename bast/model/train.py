"""Train and evaluate BAST on Stage 2 shards: one readable loop, resumable, on CPU, one
GPU or several (torchrun).

    cfg = preset("tiny", epochs=5)
    train("out/stage2", "out/run", cfg)

A run directory holds config.json, metrics.jsonl (one line per epoch), checkpoints/last.pt
and best.pt (config, model, optimizer, step, epoch, RNG state; written atomically each
epoch) and eval/ (test.json, test_predictions.csv) after the final test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from bast.errors import ConfigError, TrainingError
from bast.fileio import atomic_write_text, versions
from bast.model.bast import count_parameters
from bast.model.checkpoint import _unwrap, load_checkpoint, load_model, restore_rng, rng_state, save_checkpoint
from bast.model.config import PRESETS, RESUME_CHANGES, TrainConfig, preset
from bast.model.data import EvalData, Selection, data_classes, make_data
from bast.model.evaluate import evaluate, final_test
from bast.model.registry import build_model
from bast.model.targets import attach, needs_classes, target_of
from bast.model.runtime import Context, autocast, describe, rank_seed, setup

# What callers of this module use, wherever it is defined.
__all__ = ["PRESETS", "RESUME_CHANGES", "TrainConfig", "TrainingError", "preset", "lr_at", "train",
           "Context", "setup", "autocast", "evaluate", "final_test", "load_checkpoint", "load_model",
           "save_checkpoint", "_unwrap", "train_step", "make_optimizer", "NonFiniteGuard"]


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine down to
    min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class NonFiniteGuard:
    """Watches the loss for NaN / Inf without a host sync per step.

    `update` counts non-finite losses in a tensor on the device (and keeps the first such
    loss and its step); `check` reads it (one sync) every `every` steps and before every
    checkpoint, all-reducing it under DDP so that every rank stops at the same check. A bad
    step is not undone: its update may spoil the weights in memory, but those are never
    saved, as every checkpoint is written after a check, so `last.pt` stays the last good
    epoch; a stop costs at most `every` wasted steps. (Skipping the bad step on the device
    instead would still advance Adam's moments and step count.)"""

    def __init__(self, device, every: int = 100):
        self.every = every
        self.bad = torch.zeros((), dtype=torch.int64, device=device)
        self.first = torch.zeros(2, dtype=torch.float64, device=device)  # (loss, step) of the first bad step

    def update(self, loss: torch.Tensor, step: int) -> None:
        nonfinite = ~torch.isfinite(loss.detach())
        new = nonfinite & (self.bad == 0)
        here = torch.stack((loss.detach().double(), torch.full((), float(step), dtype=torch.float64,
                                                                 device=self.first.device)))
        self.first.copy_(torch.where(new, here, self.first))
        self.bad += nonfinite

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def check(self, ctx: Context, epoch: int, last_good: Path) -> None:
        """Raise TrainingError on every rank when any rank saw a non-finite loss."""
        state = torch.cat((self.bad.double()[None], self.first))
        if ctx.world > 1:
            gathered = [torch.zeros_like(state) for _ in range(ctx.world)]
            dist.all_gather(gathered, state)
            state = next((g for g in gathered if g[0] > 0), state)
        bad, value, step = state.tolist()
        if bad:
            raise TrainingError(f"loss became {value} (on some rank) at epoch {epoch + 1}, step {int(step)}; "
                                f"{last_good} holds the last good epoch. Lower the learning rate "
                                "(--lr) or check the data.")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam; the fused CUDA kernel when every parameter is on a GPU (one launch per step
    instead of several per parameter group), else the default (foreach) implementation."""
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **({"fused": True} if fused else {}))


def train_step(net, optimizer, x, y, loss_fn, ctx: Context, lr: float, guard: NonFiniteGuard, step: int) -> torch.Tensor:
    """One training step, as the loop runs it (benchmarks/bench_train.py times this very
    function): set the learning rate, forward under autocast, loss in float32, the
    non-finite bookkeeping (no sync), backward, Adam. Returns the loss (on the device)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(ctx):
        pred = net(x)
    loss = loss_fn(pred.float(), y)
    guard.update(loss, step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _gather_rng(ctx: Context) -> list:
    """Every rank's random state, for rank 0's checkpoint (a collective: every rank calls it)."""
    mine = rng_state(ctx.device)
    if ctx.world == 1:
        return [mine]
    gathered: list = [None] * ctx.world
    dist.all_gather_object(gathered, {k: (v.cpu() if v is not None else None) for k, v in mine.items()})
    return gathered


# --------------------------------------------------------------------------- the loop


def train(features_dir, run_dir, cfg: TrainConfig, resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None, on_step: Callable[[int, int], None] | None = None,
          resume_changes: dict | None = None, on_info: Callable[[str], None] | None = None) -> dict:
    """Train `cfg` on the train split of `features_dir`, validate every epoch, test the
    best checkpoint. Returns the test metrics (rank 0; {} on other ranks).

    resume=True continues the run in `run_dir` with its own settings (`cfg` is not used);
    `resume_changes` may set the fields of RESUME_CHANGES, e.g. {"epochs": 20} to extend a
    finished run. With a decaying learning rate, more epochs stretch the rest of the schedule,
    so an extended run is not the run that had those epochs from the start (it is with the
    paper preset's constant rate). `on_info` receives (rank 0) the lines saying where and
    how the run trains: device, precision, loader mode, batch per rank (`runtime.describe`)."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    start_epoch, step, best = 0, 0, float("inf")
    if resume_changes and not resume:
        raise ConfigError("resume_changes applies to resume=True only")
    if resume:
        if not (ckpt_dir / "last.pt").exists():
            raise TrainingError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
        saved = load_checkpoint(ckpt_dir / "last.pt")
        cfg = TrainConfig.from_dict(saved["config"])  # the run's own settings, not today's
        changes = dict(resume_changes or {})
        # The command that started the run may be repeated with --resume: only a setting
        # given a different value is refused.
        saved_settings = cfg.to_dict()
        current = {**saved_settings, **saved_settings["model"]}
        refused = sorted(k for k, v in changes.items() if k not in RESUME_CHANGES and current.get(k) != v)
        if refused:
            raise TrainingError(f"a resumed run keeps its settings; {', '.join(refused)} cannot change "
                                f"(only {', '.join(RESUME_CHANGES)} can); start a new run with --out elsewhere")
        changes = {k: v for k, v in changes.items() if k in RESUME_CHANGES}
        if changes.get("epochs", cfg.epochs) < saved["epoch"]:
            raise TrainingError(f"{run_dir} has already trained {saved['epoch']} epochs; "
                                f"--epochs {changes['epochs']} would undo them")
        cfg = dataclasses.replace(cfg, **changes)
    elif (run_dir / "config.json").exists():
        raise TrainingError(f"{run_dir} already holds a run; use --resume to continue it or another --out")

    if not resume:  # what the target needs from the data: the classes, the output size
        cfg = _with_target(cfg, features_dir)
    target = target_of(cfg)
    ctx = setup(cfg)
    phase = cfg.model.phase  # the interaural phase as input channels (featurize --phase)
    train_sel = Selection.of(features_dir, "train", cfg.train_env, phase, cfg.train_heads, cfg.train_rooms)
    val_sel = Selection.of(features_dir, "val", cfg.train_env, phase, cfg.train_heads, cfg.train_rooms)
    test_sel = Selection.of(features_dir, "test", cfg.test_env, phase)
    for sel in (train_sel, val_sel, test_sel):  # a corrupt shard: one clear error now, not an h5py traceback later
        sel.verify()
    for name, sel in (("training", train_sel), ("validation", val_sel)):
        if sel.samples == 0:  # validation picks the best checkpoint: training without it has no result
            raise TrainingError(f"{features_dir}: no {name} samples for environments {cfg.train_env}")
    if cfg.batch_size % ctx.world:
        raise TrainingError(f"batch size {cfg.batch_size} does not split over {ctx.world} processes")
    data = make_data(train_sel, cfg.batch_size // ctx.world, ctx.device, cfg.seed, cfg.memory_budget_gb,
                     ctx.rank, ctx.world, target=target)
    if len(data) == 0:
        raise TrainingError(f"{train_sel.samples} training samples make no batch of {cfg.batch_size}; "
                            "lower --batch-size")
    # Every rank validates its share of the validation shards; the tables are gathered.
    val = EvalData(val_sel, cfg.eval_batch_size, ctx.device, cfg.memory_budget_gb, ctx.rank, ctx.world, target)
    info = describe(ctx, cfg, data, cfg.batch_size // ctx.world,
                    torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "")
    if on_info and ctx.main:
        on_info(info)

    # The same initial weights on every rank (setup seeded); a target's own parameters
    # (learned task weights) ride along as a submodule.
    model = attach(build_model(cfg.arch, cfg.model), target).to(ctx.device)
    optimizer = make_optimizer(model, cfg)
    # Dropout draws differ between ranks: each its own stream, saved and restored per rank.
    torch.manual_seed(rank_seed(cfg.seed, ctx.rank))
    if resume:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, step, best = saved["epoch"], saved["step"], saved["best_val"]
        metrics_file = run_dir / "metrics.jsonl"
        if ctx.main and metrics_file.exists():  # rows of epochs after the checkpoint are redone
            kept = [line for line in metrics_file.read_text().splitlines()
                    if json.loads(line).get("epoch", 0) <= start_epoch and "stopped" not in line]
            atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))
        if not restore_rng(saved, ctx.rank, ctx.device):  # more ranks than the run had
            torch.manual_seed(rank_seed(cfg.seed + 1_000_003 * start_epoch, ctx.rank))
    loss_fn = target.loss
    net = model
    if ctx.world > 1:
        # No buffer changes in training (the sinusoidal position table is fixed; no
        # BatchNorm), so nothing is broadcast before each forward.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.compile:
        net = torch.compile(net)

    total_steps = cfg.epochs * len(data)
    ddp_report = ctx.world > 1 and os.environ.get("BAST_DDP_REPORT") == "1"  # the DDP test asks for it
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps({
            **cfg.to_dict(), "features_dir": str(Path(features_dir).resolve()), "parameters": count_parameters(model),
            "train_samples": train_sel.samples, "val_samples": val_sel.samples, "test_samples": test_sel.samples,
            "steps_per_epoch": len(data), "loader": type(data).__name__, "world_size": ctx.world,
            # the settings device and amp stay as given; what they resolved to:
            "device_used": str(ctx.device), "autocast_dtype": str(ctx.amp_dtype), "tf32": ctx.tf32, "setup": info,
            "versions": versions()}, indent=1))
    if not resume:  # so that even a first epoch that fails leaves a usable checkpoint
        rng = _gather_rng(ctx)
        if ctx.main:
            save_checkpoint(ckpt_dir / "last.pt", model, optimizer, cfg, 0, 0, best, rng)
    guard = NonFiniteGuard(ctx.device)
    coverage: list = []
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=ctx.device)
        for x, y, idx in data.epoch(epoch):
            loss = train_step(net, optimizer, x, y, loss_fn, ctx, lr_at(step, cfg, total_steps), guard, step)
            loss_sum += loss * len(x)
            seen += len(x)  # x: a multitask target is a tuple
            step += 1
            if guard.due(step):
                guard.check(ctx, epoch, ckpt_dir / "last.pt")
            if ddp_report and epoch == start_epoch:
                coverage.append(idx.cpu())
            if on_step and ctx.main:
                on_step(step - epoch * len(data), len(data))
        guard.check(ctx, epoch, ckpt_dir / "last.pt")  # before anything of this epoch is saved
        train_seconds = time.perf_counter() - t0
        if ctx.world > 1:
            dist.all_reduce(loss_sum)
        row = {"epoch": epoch + 1, "step": step, "lr": lr_at(step - 1, cfg, total_steps),
               "train_loss": float(loss_sum) / (seen * ctx.world),
               "train_samples_per_s": seen * ctx.world / train_seconds, "seconds": train_seconds}
        # The bare model, not the DDP wrapper (no gradient sync in evaluation).
        metrics, _ = evaluate(model, val, ctx, target)
        rng = _gather_rng(ctx)
        if ctx.main:
            row.update(val_loss=metrics.get("loss"), **{f"val_{k}": v for k, v in metrics.items()
                                                         if k not in ("n", "loss", "by_env")},
                       val_by_env=metrics["by_env"])
            improved = metrics.get("loss", float("inf")) < best
            best = min(best, metrics.get("loss", float("inf")))
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            save_checkpoint(ckpt_dir / "last.pt", model, optimizer, cfg, epoch + 1, step, best, rng)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", model, optimizer, cfg, epoch + 1, step, best, rng)
            if on_epoch:
                on_epoch(row)
        budget_spent = cfg.max_minutes is not None and (time.perf_counter() - started) / 60 >= cfg.max_minutes
        if ctx.world > 1:  # every rank stops together (and waits here for rank 0's checkpoint)
            flag = torch.tensor(float(budget_spent), device=ctx.device)
            dist.all_reduce(flag)
            budget_spent = bool(flag.item())
        if budget_spent and epoch + 1 < cfg.epochs:
            if ctx.main:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"stopped": f"time budget of {cfg.max_minutes} min", "epoch": epoch + 1}) + "\n")
            break

    if ddp_report:
        _ddp_report(run_dir, model, coverage, ctx)
    result: dict = {}
    # The final test runs once, on rank 0 (a few seconds against the whole training).
    if ctx.main:
        result = final_test(run_dir, test_sel, cfg, ctx)
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _with_target(cfg: TrainConfig, features_dir) -> TrainConfig:
    """`cfg` with the data set's classes (category targets) and the target's output size."""
    if needs_classes(cfg.target) and not cfg.classes:
        cfg = dataclasses.replace(cfg, classes=data_classes(features_dir))
    outputs = target_of(cfg).outputs
    if cfg.model.outputs != outputs:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, outputs=outputs))
    return cfg


def _ddp_report(run_dir: Path, model, coverage: list, ctx: Context) -> None:
    """What the DDP test checks (written only when BAST_DDP_REPORT=1): every rank's weights
    are the same, and the ranks' first epochs covered disjoint shares of the training samples."""
    flat = torch.cat([p.detach().reshape(-1).cpu().double() for p in model.parameters()])
    mine = {"rank": ctx.rank, "weights_sum": float(flat.sum()), "weights_abs_sum": float(flat.abs().sum()),
            "weights_sha": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
            "first_epoch_samples": torch.cat(coverage).tolist() if coverage else []}
    gathered: list = [None] * ctx.world
    dist.all_gather_object(gathered, mine)
    if ctx.main:
        atomic_write_text(run_dir / "ddp.json", json.dumps(gathered))
