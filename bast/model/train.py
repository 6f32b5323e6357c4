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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from bast import __version__
from bast.datasets.loader import EvalData, Selection, make_data
from bast.model.bast import BAST, BASTConfig, count_parameters
from bast.model.losses import angular_distance_deg, make_loss, squared_error
from bast.pipeline.shards import atomic_write_text, versions
from bast.report import stats


class TrainingError(RuntimeError):
    """Training stopped; the message says why and what is left usable."""


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # BASTConfig fields
    loss: str = "mix"  # mse | ad | mix (hybrid)
    mix_weight: float = 1.0  # weight of the AD term in mix
    lr: float = 1e-3
    schedule: str = "cosine"  # constant (paper) | cosine (after a linear warm-up)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine floor, as a fraction of lr
    weight_decay: float = 0.0  # plain Adam, as in the paper
    batch_size: int = 64
    epochs: int = 10
    max_minutes: float | None = None  # stop after the epoch that crosses this budget
    train_env: str = "RI"  # environments trained on (anechoic, hall, RI01, RI02, RI)
    test_env: str = "RI"  # environments evaluated on
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | none
    compile: bool = False  # torch.compile the model (GPU)
    deterministic: bool = False
    memory_budget_gb: float = 8.0  # selected samples up to this stay resident on the device
    eval_batch_size: int = 256

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


PRESETS: dict[str, dict] = {
    # The paper (section 4.4): D 1024, 16 heads, MLP 1024, 3 layers per encoder, stride 6
    # (180 patches), dropout 0.2, Adam at a fixed 1e-4, batch 48, 50 epochs. A GPU job:
    # about 65 GFLOP per training sample.
    "paper": dict(model={}, lr=1e-4, schedule="constant", warmup_steps=0, batch_size=48, epochs=50),
    # A mid-size model for a CPU box or a small GPU: 4 layers' worth of capacity at 1/5 width.
    "small": dict(model=dict(dim=192, heads=6, mlp_dim=384, depth=2, stride=8, dropout=0.1), lr=5e-4,
                  warmup_steps=200, batch_size=64, epochs=20),
    # Trains in minutes on 2 CPU cores: one layer per encoder, stride 12 (55 tokens: the
    # token count sets the CPU cost), warm-up and cosine decay. No dropout: in a 4.5-minute
    # budget the model underfits, and dropout costs a third of the CPU throughput (measured
    # on 196 training sounds: test AD 30.8 deg with 0.1, 26.4 with 0, 24.4-25.9 over three
    # seeds with 0 and the 16 epochs its speed allows; docs/performance.md).
    "tiny": dict(model=dict(dim=96, heads=4, mlp_dim=192, depth=1, stride=12, dropout=0.0), lr=1e-3,
                 warmup_steps=100, batch_size=64, epochs=16, max_minutes=4.5),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A preset with any field overridden; model fields may be given at the top level."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    base = dict(PRESETS[name], preset=name)
    model = dict(base.pop("model"))
    model_fields = {f.name for f in dataclasses.fields(BASTConfig)}
    for key in list(overrides):
        if key in model_fields:
            model[key] = overrides.pop(key)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**{**base, **overrides, "model": model})
    BASTConfig(**cfg.model)  # fail early on a bad model field
    return cfg


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate at `step`: linear warm-up, then constant or cosine down to
    min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------- the pieces


@dataclass
class Context:
    """Where this process trains: device, autocast, and its place among DDP ranks."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(cfg: TrainConfig) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    return Context(device, torch.bfloat16 if use_bf16 else None, rank, world)


def autocast(ctx: Context):
    return torch.autocast(ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: EvalData, ctx: Context, loss_fn: Callable | None = None) -> tuple[dict, dict]:
    """Metrics of SPEC 2 on a split, overall and per environment, and the per-sample table."""
    model.eval()
    rows: dict[str, list] = {k: [] for k in ("clip_id", "category", "env", "azimuth_deg", "pred_x", "pred_y",
                                             "ad_deg", "sq_err")}
    losses = []
    for x, y, labels in data.batches():
        with autocast(ctx):
            pred = model(x).float()
        if loss_fn is not None:
            losses.append(float(loss_fn(pred, y)) * len(y))
        ad, se = angular_distance_deg(pred, y).cpu().numpy(), squared_error(pred, y).cpu().numpy()
        p = pred.cpu().numpy()
        for k in ("clip_id", "category", "env", "azimuth_deg"):
            rows[k].append(labels[k])
        rows["pred_x"].append(p[:, 0])
        rows["pred_y"].append(p[:, 1])
        rows["ad_deg"].append(ad)
        rows["sq_err"].append(se)
    table = {k: np.concatenate(v) if v else np.zeros(0) for k, v in rows.items()}
    n = len(table["ad_deg"])
    metrics = {"n": n, "ad_deg": float(table["ad_deg"].mean()) if n else float("nan"),
               "mse": float(table["sq_err"].mean()) if n else float("nan")}
    if loss_fn is not None and n:
        metrics["loss"] = sum(losses) / n
    metrics["by_env"] = stats.by_env(table)
    return metrics, table


def save_checkpoint(path: Path, model, optimizer, cfg: TrainConfig, epoch: int, step: int, best: float) -> None:
    """Everything a resumed run needs, written atomically; loads with weights_only=True."""
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": cfg.to_dict(),
        "epoch": epoch,  # epochs completed
        "step": step,
        "best_val": best,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "bast_version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(run_dir, which: str = "best", device="cpu") -> tuple[BAST, TrainConfig]:
    """The trained model of a run directory, in eval mode, and its training config."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt", map_location=device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = BAST(BASTConfig(**cfg.model)).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def _unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


# --------------------------------------------------------------------------- the loop


# What a resumed run may change: how long it runs, and where (not what it learns from).
RESUME_CHANGES = ("epochs", "max_minutes", "device", "compile", "memory_budget_gb", "eval_batch_size")


def train(features_dir, run_dir, cfg: TrainConfig, resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None, on_step: Callable[[int, int], None] | None = None,
          resume_changes: dict | None = None) -> dict:
    """Train `cfg` on the train split of `features_dir`, validate every epoch, test the
    best checkpoint. Returns the test metrics (rank 0; {} on other ranks).

    resume=True continues the run in `run_dir` with its own settings (`cfg` is not used);
    `resume_changes` may set the fields of RESUME_CHANGES, e.g. {"epochs": 20} to extend a
    finished run. With a decaying learning rate, more epochs stretch the rest of the schedule,
    so an extended run is not the run that had those epochs from the start (it is with the
    paper preset's constant rate)."""
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    start_epoch, step, best = 0, 0, float("inf")
    if resume_changes and not resume:
        raise ValueError("resume_changes applies to resume=True only")
    if resume:
        if not (ckpt_dir / "last.pt").exists():
            raise TrainingError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
        saved = load_checkpoint(ckpt_dir / "last.pt")
        cfg = TrainConfig.from_dict(saved["config"])  # the run's own settings, not today's
        changes = dict(resume_changes or {})
        # The command that started the run may be repeated with --resume: only a setting
        # given a different value is refused.
        current = {**cfg.to_dict(), **cfg.model}
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

    ctx = setup(cfg)
    train_sel = Selection.of(features_dir, "train", cfg.train_env)
    val_sel = Selection.of(features_dir, "val", cfg.train_env)
    test_sel = Selection.of(features_dir, "test", cfg.test_env)
    for name, sel in (("training", train_sel), ("validation", val_sel)):
        if sel.samples == 0:  # validation picks the best checkpoint: training without it has no result
            raise TrainingError(f"{features_dir}: no {name} samples for environments {cfg.train_env}")
    if cfg.batch_size % ctx.world:
        raise TrainingError(f"batch size {cfg.batch_size} does not split over {ctx.world} processes")
    data = make_data(train_sel, cfg.batch_size // ctx.world, ctx.device, cfg.seed, cfg.memory_budget_gb,
                     ctx.rank, ctx.world)
    if len(data) == 0:
        raise TrainingError(f"{train_sel.samples} training samples make no batch of {cfg.batch_size}; "
                            "lower --batch-size")
    val = EvalData(val_sel, cfg.eval_batch_size, ctx.device, cfg.memory_budget_gb) if ctx.main else None

    model = BAST(BASTConfig(**cfg.model)).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resume:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, step, best = saved["epoch"], saved["step"], saved["best_val"]
        metrics_file = run_dir / "metrics.jsonl"
        if ctx.main and metrics_file.exists():  # rows of epochs after the checkpoint are redone
            kept = [line for line in metrics_file.read_text().splitlines()
                    if json.loads(line).get("epoch", 0) <= start_epoch and "stopped" not in line]
            atomic_write_text(metrics_file, "".join(line + "\n" for line in kept))
        torch.set_rng_state(saved["rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
    loss_fn = make_loss(cfg.loss, cfg.mix_weight)
    net = model
    if ctx.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    total_steps = cfg.epochs * len(data)
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps({
            **cfg.to_dict(), "features_dir": str(Path(features_dir).resolve()), "parameters": count_parameters(model),
            "train_samples": train_sel.samples, "val_samples": val_sel.samples, "test_samples": test_sel.samples,
            "steps_per_epoch": len(data), "loader": type(data).__name__, "world_size": ctx.world,
            "device": str(ctx.device), "amp": str(ctx.amp_dtype), "versions": versions()}, indent=1))
        if not resume:  # so that even a first epoch that fails leaves a usable checkpoint
            save_checkpoint(ckpt_dir / "last.pt", model, optimizer, cfg, 0, 0, best)
    coverage: list = []
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=ctx.device)
        for x, y, idx in data.epoch(epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, cfg, total_steps)
            with autocast(ctx):
                pred = net(x)
            loss = loss_fn(pred.float(), y)
            # A CPU-GPU sync point per step: the price of stopping at the first bad loss,
            # while the last checkpoint is still a good one.
            bad = (~torch.isfinite(loss)).float()
            if ctx.world > 1:  # every rank stops, or the others would wait in backward() forever
                dist.all_reduce(bad)
            if bad.item():
                raise TrainingError(f"loss became {loss.item()} (on some rank) at epoch {epoch + 1}, step {step}; "
                                    f"{ckpt_dir / 'last.pt'} holds the last good epoch. Lower the learning rate "
                                    "(--lr) or check the data.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
            step += 1
            if epoch == start_epoch and ctx.world > 1:
                coverage.append(idx.cpu())
            if on_step and ctx.main:
                on_step(step - epoch * len(data), len(data))
        train_seconds = time.perf_counter() - t0
        if ctx.world > 1:
            dist.all_reduce(loss_sum)
        row = {"epoch": epoch + 1, "step": step, "lr": lr_at(step - 1, cfg, total_steps),
               "train_loss": float(loss_sum) / (seen * ctx.world),
               "train_samples_per_s": seen * ctx.world / train_seconds, "seconds": train_seconds}
        if ctx.main:
            # The bare model, not the DDP wrapper: its forward would start a buffer broadcast
            # that the other ranks, not evaluating, never join.
            metrics, _ = evaluate(model, val, ctx, loss_fn)
            row.update(val_loss=metrics.get("loss"), val_ad_deg=metrics["ad_deg"], val_mse=metrics["mse"],
                       val_by_env=metrics["by_env"])
            improved = metrics.get("loss", float("inf")) < best
            best = min(best, metrics.get("loss", float("inf")))
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            save_checkpoint(ckpt_dir / "last.pt", model, optimizer, cfg, epoch + 1, step, best)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", model, optimizer, cfg, epoch + 1, step, best)
            if on_epoch:
                on_epoch(row)
        if ctx.world > 1:
            dist.barrier()
        budget_spent = cfg.max_minutes is not None and (time.perf_counter() - started) / 60 >= cfg.max_minutes
        if ctx.world > 1:  # every rank stops together
            flag = torch.tensor(float(budget_spent), device=ctx.device)
            dist.all_reduce(flag)
            budget_spent = bool(flag.item())
        if budget_spent and epoch + 1 < cfg.epochs:
            if ctx.main:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"stopped": f"time budget of {cfg.max_minutes} min", "epoch": epoch + 1}) + "\n")
            break

    if ctx.world > 1:
        _ddp_report(run_dir, model, coverage, ctx)
    result: dict = {}
    if ctx.main:
        result = final_test(run_dir, test_sel, cfg, ctx)
    if ctx.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def final_test(run_dir: Path, test_sel: Selection, cfg: TrainConfig, ctx: Context) -> dict:
    """The best checkpoint on the test split: eval/test.json and eval/test_predictions.csv."""
    model, _ = load_model(run_dir, "best", ctx.device)
    data = EvalData(test_sel, cfg.eval_batch_size, ctx.device, cfg.memory_budget_gb)
    metrics, table = evaluate(model, data, ctx)
    metrics.update(median_ad_deg=float(np.median(table["ad_deg"])) if len(table["ad_deg"]) else float("nan"),
                   by_category=stats.by_category(table), checkpoint="best", test_env=cfg.test_env)
    (run_dir / "eval").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "eval" / "test.json", json.dumps(metrics, indent=1))
    stats.save_predictions(table, run_dir / "eval" / "test_predictions.csv")
    return metrics


def _ddp_report(run_dir: Path, model, coverage: list, ctx: Context) -> None:
    """What the DDP test checks: every rank's weights are the same, and the ranks' first
    epochs covered disjoint shares of the training samples."""
    flat = torch.cat([p.detach().reshape(-1).cpu().double() for p in model.parameters()])
    mine = {"rank": ctx.rank, "weights_sum": float(flat.sum()), "weights_abs_sum": float(flat.abs().sum()),
            "weights_sha": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
            "first_epoch_samples": torch.cat(coverage).tolist() if coverage else []}
    gathered: list = [None] * ctx.world
    dist.all_gather_object(gathered, mine)
    if ctx.main:
        atomic_write_text(run_dir / "ddp.json", json.dumps(gathered))
