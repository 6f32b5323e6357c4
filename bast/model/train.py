"""Train and evaluate BAST on Stage 2 shards: one readable loop, resumable, on CPU, one
GPU or several (torchrun).

    cfg = preset("tiny", epochs=5)
    train("out/stage2", "out/run", cfg)

A run directory holds config.json, metrics.jsonl (one line per epoch), checkpoints/last.pt
and best.pt (config, model, optimizer, step, epoch, RNG state; written atomically each
epoch) and eval/ (test.json, test_predictions.csv) after the final test.

Read top to bottom: `train` takes the run directory's lock, then `resume_settings` (a
resumed run), `open_splits` (data), `restore` (a resumed run's state), `write_run_record`
(config.json), `run_epochs` (`train_epoch`, `validate`, `save_epoch`) and `run_final_test`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from bast import options
from bast.errors import ConfigError, DataError, StageError, TrainingError
from bast.fileio import atomic_write_text, json_text, versions, write_json
from bast.model.nets.bast import count_parameters
from bast.model.runs.checkpoint import (unwrap, copy_checkpoint, load_checkpoint, load_model, read_run_config,
                                   remove_leftovers, restore_rng, rng_state, save_checkpoint)
from bast.model.runs.config import PRESETS, RESUME_CHANGES, TrainConfig, preset
from bast.model.data.loaders import EvalData, ResidentData, Selection, StreamingData, data_classes, make_data
from bast.model.evaluation.evaluate import evaluate, final_test
from bast.model.data.scenes import SceneWindows, is_scene_data
from bast.model.evaluation.seld import MAY_BE_UNDEFINED, seld_evaluate
from bast.model.data.manifest import data_sha256, features_manifest
from bast.model.nets.registry import build_model, check_model_size, model_fields
from bast.model.targets.core import Target, attach, make_target_class, needs_classes, target_of
from bast.model.targets.names import on_scenes
from bast.model.runs.runtime import Context, autocast, describe, rank_seed, setup
from bast.pipeline.stage.shards import DirectoryLock

# What callers of this module use, wherever it is defined.
__all__ = ["PRESETS", "RESUME_CHANGES", "TrainConfig", "TrainingError", "preset", "lr_at", "train",
           "Context", "setup", "autocast", "evaluate", "final_test", "load_checkpoint", "load_model",
           "save_checkpoint", "unwrap", "train_step", "make_optimizer", "NonFiniteGuard", "optimizer_state_for"]


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
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            **({"fused": True} if _fused(model) else {}))


def _fused(model: torch.nn.Module) -> bool:
    return all(p.is_cuda for p in model.parameters())


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


# --------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """Where a run stands: epochs completed, optimizer steps, and the best validation figure
    so far (cfg.best_by: the loss, or the SELD score) with its epoch (the weights in best.pt)."""

    epoch: int = 0
    step: int = 0
    best: float = math.inf
    best_epoch: int | None = None
    best_lost: bool = False  # best.pt was deleted before a resume


@dataclass
class Splits:
    """A run's data: the three selections, the training loader and the validation set."""

    train_sel: Selection
    val_sel: Selection
    test_sel: Selection
    data: ResidentData | StreamingData | None
    val: EvalData | None


def train(features_dir, run_dir, cfg: TrainConfig, resume: bool = False,
          on_epoch: Callable[[dict], None] | None = None, on_step: Callable[[int, int], None] | None = None,
          resume_changes: dict | None = None, on_info: Callable[[str], None] | None = None) -> dict:
    """Train `cfg` on the train split of `features_dir`, validate every `cfg.val_every`
    epochs, test the best checkpoint. Returns the test metrics (rank 0; {} on other ranks).

    resume=True continues the run in `run_dir` with its own settings (`cfg` is not used);
    `resume_changes` may set the fields of RESUME_CHANGES, e.g. {"epochs": 20} to extend a
    finished run. With a decaying learning rate, more epochs stretch the rest of the schedule,
    so an extended run is not the run that had those epochs from the start (it is with the
    paper preset's constant rate). `on_info` receives (rank 0) the lines saying where and
    how the run trains: device, precision, loader mode, batch per rank (`runtime.describe`).
    One process writes a run directory at a time (a lock, as the data stages take)."""
    run_dir = Path(run_dir)
    if resume_changes and not resume:
        raise ConfigError("resume_changes applies to resume=True only")
    check_run_dir(run_dir, features_dir)
    say = on_info if on_info and int(os.environ.get("RANK", "0")) == 0 else (lambda text: None)
    with _writer_lock(run_dir):
        saved = None
        if resume:
            saved, cfg = resume_settings(run_dir, features_dir, resume_changes)
        elif (run_dir / "config.json").exists():
            raise TrainingError(f"{run_dir} already holds a run; use --resume to continue it or another --out")
        else:  # what the target needs from the data: the classes, the output size
            cfg = _with_target(cfg, features_dir)
        target = target_of(cfg)
        check_model_size(cfg.arch, cfg.model)  # refused before any data is read or weight made
        ctx = setup(cfg)
        splits = open_splits(features_dir, cfg, ctx, target)
        say(describe(ctx, cfg, splits.data, cfg.batch_size // ctx.world,
                     torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else ""))
        # The same initial weights on every rank (setup seeded); a target's own parameters
        # (learned task weights) ride along as a submodule.
        model = attach(build_model(cfg.arch, cfg.model), target).to(ctx.device)
        optimizer = make_optimizer(model, cfg)
        # Dropout draws differ between ranks: each its own stream, saved and restored per rank.
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))
        state = RunState()
        if saved is not None:
            state = restore(saved, model, optimizer, run_dir, ctx, say)
        write_run_record(run_dir, features_dir, cfg, ctx, splits, model)
        if saved is None:  # so that even a first epoch that fails leaves a usable checkpoint
            rng = _gather_rng(ctx)
            if ctx.main:
                save_checkpoint(run_dir / "checkpoints" / "last.pt", model, optimizer, cfg, 0, 0, state.best, rng)
        run_epochs(run_dir, cfg, ctx, model, optimizer, splits, state, target, on_epoch, on_step)
        splits.data = splits.val = None  # one memory budget: the test split loads after these are freed
        return run_final_test(run_dir, splits.test_sel, cfg, ctx, state)


def train_on_the_fly(stage1_dir, run_dir, cfg: TrainConfig, resume: bool = False, on_info=None, **kwargs) -> dict:
    """Train on samples drawn anew every epoch from the recipe of the Stage 1 folder
    `stage1_dir` (docs/train.md "Training on the fly"): clips from a `spatialize` folder, or
    for the SELD targets scenes from a `scenes` folder (docs/seld.md "New scenes every epoch");
    validated and tested on that folder's own validation and test samples or scenes,
    featurized once into RUN/heldout. Otherwise `train`."""
    from bast.pipeline.features.scenes import is_scenes

    run_dir = Path(run_dir)
    if resume:  # the run's own recipe and feature kinds
        cfg = TrainConfig.from_dict(read_run_config(run_dir))
        if not cfg.on_the_fly:
            raise ConfigError(f"{run_dir} was not trained on the fly; resume it without --on-the-fly")
        stage1_dir = cfg.stage1_dir
    scenes = is_scenes(stage1_dir)
    _check_drawn_data(stage1_dir, cfg, scenes)  # before any work
    check_run_dir(run_dir, stage1_dir, "the Stage 1 folder")
    if scenes:
        from bast.model.data.scenefly import scene_heldout_features as heldout_features
        from bast.pipeline.render.scenesampler import default_epoch_scenes as default_epoch
        from bast.pipeline.render.scenesampler import read_scene_recipe as read
    else:
        from bast.model.data.onthefly import default_epoch_samples as default_epoch
        from bast.model.data.onthefly import heldout_features
        from bast.pipeline.render.recipe import read_recipe as read
    recipe = read(stage1_dir)
    cfg = dataclasses.replace(cfg, on_the_fly=True, stage1_dir=str(recipe.stage1.resolve()),
                              epoch_samples=cfg.epoch_samples or default_epoch(recipe))
    if on_info and int(os.environ.get("RANK", "0")) == 0:
        on_info(f"held-out {'scenes' if scenes else 'samples'}: featurizing the validation and test splits of "
                f"{recipe.stage1} into {run_dir / 'heldout'}")
    features_dir = _in_turn(heldout_features, recipe, run_dir, cfg.model.features)
    return train(features_dir, run_dir, cfg, resume, on_info=on_info, **kwargs)


def _in_turn(make: Callable, *args):
    """`make(*args)`, a resumable stage writing one folder, run by every rank of a torchrun
    in turn: the first to take the folder's lock writes it, each other rank waits for the
    lock and then finds it written (a resume with nothing to do). One process: as it is."""
    while True:
        try:
            return make(*args)
        except StageError as exc:
            if int(os.environ.get("WORLD_SIZE", "1")) == 1 or "in use by another run" not in str(exc):
                raise
            time.sleep(0.5)


def _check_drawn_data(stage1_dir, cfg: TrainConfig, scenes: bool) -> None:
    """Clips are drawn from a spatialize folder for the clip targets, scenes from a scenes
    folder for the SELD targets; the clip draw options mean nothing for scenes."""
    if on_scenes(cfg.target) and not scenes:
        raise ConfigError(f"--target {cfg.target} learns from whole scenes; training on the fly draws clips from a "
                          f"spatialize folder such as {stage1_dir}, and scenes from a `bast-cli scenes` folder "
                          "(docs/seld.md)")
    if scenes and not on_scenes(cfg.target):
        raise ConfigError(f"{stage1_dir} holds scenes (bast-cli scenes): train them with --target seld (or "
                          "seld-distance)")
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    clip_only = [name for name, used in (
        ("--fresh-sounds", cfg.fresh_sounds),
        ("--fresh-per-epoch", cfg.fresh_per_epoch != 0),
        (f"--sample-directions {cfg.sample_directions}", cfg.sample_directions != "grid"),
        ("--render-device device", cfg.render_device == "device"),
        # a scene's events keep their own level and take the onsets its recipe draws
        (f"--set gain_db={cfg.gain_db:g}", cfg.gain_db != default["gain_db"]),
        (f"--set onset_ms={cfg.onset_ms:g}", cfg.onset_ms != default["onset_ms"])) if used]
    if scenes and clip_only:
        raise ConfigError(f"{', '.join(clip_only)}: for clips on the fly; scenes on the fly draw their events from the "
                          "folder's training sounds at its grid directions, rendered in the loader workers")


# What a run writes in its folder: no input may lie there.
RUN_OWNED = ("config.json", "metrics.jsonl", "checkpoints", "eval", "heldout", "heldout-stage1")


def check_run_dir(run_dir: Path, data_dir, name: str = "the Stage 2 folder") -> None:
    """--out is a folder (new, or a run to resume) that is not the data it trains on nor
    inside it, and no data lies where a run writes. A run on the fly reads RUN/heldout, its
    own output, which is no input of the run's folder."""
    if data_dir is not None and Path(data_dir).resolve() == (run_dir / "heldout").resolve():
        data_dir = None
    options.output_dir(run_dir, "--out", inputs=[(name, data_dir)], owned=RUN_OWNED)


def trained_on_the_fly(run_dir) -> bool:
    """Whether the run in `run_dir` (if any) trains on the fly."""
    path = Path(run_dir) / "config.json"
    try:
        return path.is_file() and bool(json.loads(path.read_text()).get("on_the_fly"))
    except ValueError:
        return False


@contextlib.contextmanager
def _writer_lock(run_dir: Path):
    """The run directory's lock (rank 0 holds it for the whole run): a second `train` into
    the same --out, or a --resume of a live run, is refused instead of interleaving rows."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    fresh = not run_dir.exists()
    try:
        with DirectoryLock(run_dir):
            try:
                yield
            except BaseException:
                if fresh:  # a run refused before it wrote anything leaves no folder behind
                    _remove_if_untouched(run_dir)
                raise
    except StageError as exc:
        if "in use by another run" in str(exc):
            raise TrainingError(f"{exc} (a live `bast-cli train` writes it)") from None
        raise


def _remove_if_untouched(run_dir: Path) -> None:
    """Remove `run_dir` when it holds nothing but its lock (made by this process)."""
    with contextlib.suppress(OSError):
        if [p.name for p in run_dir.iterdir()] == [".lock"]:
            (run_dir / ".lock").unlink()
            run_dir.rmdir()


def resume_settings(run_dir: Path, features_dir, changes: dict | None) -> tuple[dict, TrainConfig]:
    """The last checkpoint of `run_dir` and the run's own settings with `changes` (fields of
    RESUME_CHANGES) applied; other changes, and other features than the run's, refused."""
    ckpt_dir = run_dir / "checkpoints"
    remove_leftovers(ckpt_dir)  # a save that a full disk or a kill interrupted
    if not (ckpt_dir / "last.pt").exists():
        raise TrainingError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    saved = load_checkpoint(ckpt_dir / "last.pt")
    cfg = TrainConfig.from_dict(saved["config"])  # the run's own settings, not today's
    changes = dict(changes or {})
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
    _check_same_features(run_dir, features_dir)
    return saved, dataclasses.replace(cfg, **changes)


def _check_same_features(run_dir: Path, features_dir) -> None:
    """A resumed run reads the data it started on: the same checksum (the folder may move)."""
    try:
        trained_on = read_run_config(run_dir)
    except DataError:  # a torn config.json: the run record is rewritten below
        return
    want = trained_on.get("data_sha256")
    if want is None:  # a run of an older bast: no checksum recorded
        return
    have = data_sha256(features_manifest(features_dir))
    if have != want:
        raise TrainingError(f"{features_dir} holds other features than {run_dir} was trained on "
                            f"({trained_on.get('features_dir')}; data checksum {want[:12]}..., this data "
                            f"{have[:12]}...); resume with the run's own features, or start a new run with --out "
                            "elsewhere")


def open_splits(features_dir, cfg: TrainConfig, ctx: Context, target: Target | None = None) -> Splits:
    """The run's selections (checked against the manifest's checksums by rank 0, the others
    waiting), the training loader and the validation set, within one memory budget."""
    kinds = cfg.model.features  # the feature kinds read, stacked as input channels (featurize --features)
    train_sel = Selection.of(features_dir, "train", cfg.train_env, kinds, cfg.train_heads, cfg.train_rooms)
    val_sel = Selection.of(features_dir, "val", cfg.train_env, kinds, cfg.train_heads, cfg.train_rooms)
    test_sel = Selection.of(features_dir, "test", cfg.test_env, kinds)
    problem = None
    if ctx.main:  # a corrupt shard: one clear error now, not an h5py traceback later
        try:
            for sel in (train_sel, val_sel, test_sel):
                sel.verify()
        except DataError as exc:
            problem = str(exc)
    if ctx.world > 1:  # one rank reads every shard for its checksum, not all of them
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem:
        raise DataError(problem)
    for name, sel in (("training", train_sel), ("validation", val_sel)):
        if sel.samples == 0 and not (cfg.on_the_fly and sel is train_sel):  # validation picks the best checkpoint: training without it has no result
            raise TrainingError(f"{features_dir}: no {name} samples for environments {cfg.train_env}")
    if test_sel.samples == 0:  # refused now, not after hours of training with a NaN to show
        raise TrainingError(f"{features_dir}: no test samples for --test-env {cfg.test_env} (it holds "
                            f"{_split_envs(features_dir)}); choose another --test-env, or spatialize with a "
                            "test split")
    if cfg.batch_size % ctx.world:
        raise TrainingError(f"batch size {cfg.batch_size} does not split over {ctx.world} processes")
    target = target if target is not None else target_of(cfg)
    if target.scenes:  # windows cut from whole scenes, resident (bast/model/data/scenes.py) or drawn anew
        windows = dict(length=cfg.window_frames, n_classes=len(target.classes), device=ctx.device,
                       distance=target.distance)
        data = (scene_fly_data(features_dir, cfg, ctx, target) if cfg.on_the_fly else
                SceneWindows(train_sel, **windows, batch_size=cfg.batch_size // ctx.world, hop=cfg.window_hop,
                             shuffle=True, seed=cfg.seed, rank=ctx.rank, world=ctx.world))
        if len(data) == 0:
            raise TrainingError(f"{data.per_rank} training windows per rank make no batch of "
                                f"{cfg.batch_size // ctx.world}; lower --batch-size or --window-hop")
        val = SceneWindows(val_sel, **windows, batch_size=cfg.eval_batch_size, rank=ctx.rank, world=ctx.world)
        return Splits(train_sel, val_sel, test_sel, data, val)
    if cfg.on_the_fly:
        data = on_the_fly_data(features_dir, cfg, ctx, target)
    else:
        data = make_data(train_sel, cfg.batch_size // ctx.world, ctx.device, cfg.seed, cfg.memory_budget_gb,
                         ctx.rank, ctx.world, target=target)
    if len(data) == 0:
        raise TrainingError(f"{cfg.epoch_samples if cfg.on_the_fly else train_sel.samples} training samples make "
                            f"no batch of {cfg.batch_size}; lower --batch-size")
    # One budget for what is resident together: validation gets what training left; the
    # final test loads after both are freed.
    left_gb = max(0.0, cfg.memory_budget_gb - (data.share_bytes / 1e9 if data.resident else 0.0))
    # Every rank validates its share of the validation shards; the tables are gathered.
    val = EvalData(val_sel, cfg.eval_batch_size, ctx.device, left_gb, ctx.rank, ctx.world, target, prepared=True)
    return Splits(train_sel, val_sel, test_sel, data, val)


def on_the_fly_data(features_dir, cfg: TrainConfig, ctx: Context, target: Target):
    """The loader of a run on the fly: draws from the recipe of cfg.stage1_dir, featurized
    as the held-out features in `features_dir` were (their floor and storage type)."""
    from bast.model.data.onthefly import Featurizer, OnTheFlyData
    from bast.pipeline.render.recipe import read_recipe
    from bast.pipeline.render.sampler import DrawSettings

    stft = features_manifest(features_dir)["params"]
    settings = DrawSettings(fresh_sounds=cfg.fresh_sounds, fresh_per_epoch=cfg.fresh_per_epoch, directions=cfg.sample_directions,
                            gain_db=cfg.gain_db, onset_ms=cfg.onset_ms)
    featurize = Featurizer(tuple(cfg.model.features), float(stft["stft"]["floor_db"]), stft["dtype"])
    return OnTheFlyData(read_recipe(cfg.stage1_dir), settings, featurize, cfg.epoch_samples,
                        cfg.batch_size // ctx.world, ctx.device, cfg.seed, ctx.rank, ctx.world, target,
                        cfg.loader_workers, cfg.render_device)


def scene_fly_data(features_dir, cfg: TrainConfig, ctx: Context, target: Target):
    """The loader of a SELD run on the fly: scenes drawn from the recipe of cfg.stage1_dir,
    featurized as the held-out scenes in `features_dir` were, cut as SceneWindows cuts."""
    from bast.model.data.onthefly import Featurizer
    from bast.model.data.scenefly import SceneFlyData
    from bast.pipeline.render.scenesampler import read_scene_recipe

    stft = features_manifest(features_dir)["params"]
    featurize = Featurizer(tuple(cfg.model.features), float(stft["stft"]["floor_db"]), stft["dtype"])
    return SceneFlyData(read_scene_recipe(cfg.stage1_dir), featurize, cfg.epoch_samples, cfg.batch_size // ctx.world,
                        ctx.device, length=cfg.window_frames, hop=cfg.window_hop, n_classes=len(target.classes),
                        distance=target.distance, seed=cfg.seed, rank=ctx.rank, world=ctx.world,
                        workers=cfg.loader_workers)


def _split_envs(features_dir) -> str:
    """What a Stage 2 folder holds, by split and environment, in words."""
    counts: dict[str, int] = {}
    for s in features_manifest(features_dir).get("shards", []):
        if s.get("samples"):
            key = f"{s['split']} {s['env']}"
            counts[key] = counts.get(key, 0) + s["samples"]
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no samples"


def restore(saved: dict, model, optimizer, run_dir: Path, ctx: Context, say: Callable[[str], None]) -> RunState:
    """Put a resumed run back where its last checkpoint left it: weights, optimizer (fused
    or not as this device wants), random state; metrics rows of epochs after the checkpoint
    are dropped (they are redone) and best.pt is made to agree with last.pt."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(optimizer_state_for(saved["optimizer"], fused=_fused(model)))
    state = RunState(saved["epoch"], saved["step"], saved["best_val"], saved.get("best_epoch"))
    if not restore_rng(saved, ctx.rank, ctx.device):  # more ranks than the run had
        torch.manual_seed(rank_seed(saved["config"]["seed"] + 1_000_003 * state.epoch, ctx.rank))
    if ctx.main:
        _trim_metrics(run_dir, state.epoch, say)
    _repair_best(run_dir, state, ctx, say)
    return state


def _trim_metrics(run_dir: Path, epoch: int, say: Callable[[str], None]) -> None:
    """Keep the metrics rows up to `epoch`; a line torn by a kill is dropped, and said."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    kept, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if row.get("epoch", 0) <= epoch and "stopped" not in row:
            kept.append(line)
    if torn:
        say(f"{path}: dropped {torn} torn line(s) (a run killed while writing them)")
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _repair_best(run_dir: Path, state: RunState, ctx: Context, say: Callable[[str], None]) -> None:
    """best.pt as last.pt says it is: last.pt's own weights when it is the best epoch (a kill
    between the two saves left best.pt behind); a best.pt deleted otherwise cannot be
    rebuilt, so the best is sought afresh from the next epoch on (on every rank alike)."""
    ckpt_dir = run_dir / "checkpoints"
    if state.best_epoch is not None and state.best_epoch == state.epoch:
        if ctx.main:
            copy_checkpoint(ckpt_dir / "last.pt", ckpt_dir / "best.pt")
    elif not (ckpt_dir / "best.pt").exists() and state.best < math.inf:
        say(f"{ckpt_dir / 'best.pt'} is missing (deleted?); the best checkpoint is chosen again among the "
            "epochs still to train")
        state.best, state.best_epoch, state.best_lost = math.inf, None, True


def optimizer_state_for(saved: dict, fused: bool) -> dict:
    """A saved optimizer state with Adam's fused flag set for this device: a run started on
    a CPU and resumed on a GPU gets the fused kernel (and back). Set before loading, as
    Adam places its step counters by the flag it loads."""
    groups = [{**g, "fused": True if fused else None, **({"foreach": None} if fused else {})}
              for g in saved["param_groups"]]
    return {**saved, "param_groups": groups}


def write_run_record(run_dir: Path, features_dir, cfg: TrainConfig, ctx: Context, splits: Splits, model) -> None:
    """config.json: the settings, what they resolved to, the data (with its checksum) and
    the versions. Rewritten by every start, so a resumed run records where it ran last."""
    if not ctx.main:
        return
    info = describe(ctx, cfg, splits.data, cfg.batch_size // ctx.world,
                    torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {
        **cfg.to_dict(), "features_dir": str(Path(features_dir).resolve()),
        "data_sha256": data_sha256(features_manifest(features_dir)), "parameters": count_parameters(model),
        "train_samples": cfg.epoch_samples if cfg.on_the_fly else splits.train_sel.samples,
        "val_samples": splits.val_sel.samples,
        "test_samples": splits.test_sel.samples, "steps_per_epoch": len(splits.data),
        "loader": type(splits.data).__name__, "world_size": ctx.world,
        # the settings device, amp and compile stay as given; what they resolved to:
        "device_used": str(ctx.device), "autocast_dtype": str(ctx.amp_dtype), "tf32": ctx.tf32,
        "compiled": ctx.compile, "setup": info, **_recipe_record(cfg, ctx.device), "versions": versions()})


def _recipe_record(cfg: TrainConfig, device) -> dict:
    """A run on the fly records the recipe it draws from (its settings are in cfg)."""
    if not cfg.on_the_fly:
        return {}
    from bast.model.data.onthefly import describe_recipe
    from bast.pipeline.features.scenes import is_scenes
    from bast.pipeline.render.recipe import read_recipe

    from bast.model.data.devicefeatures import resolve_place

    if is_scenes(cfg.stage1_dir):  # scenes render in the loader workers
        from bast.model.data.scenefly import SCENES_PER_CHUNK
        from bast.pipeline.render.scenesampler import describe_scene_recipe, read_scene_recipe

        return {"recipe": describe_scene_recipe(read_scene_recipe(cfg.stage1_dir)), "render_device_used": "workers",
                "scenes_per_chunk": SCENES_PER_CHUNK}
    # render_device stays as given; where the convolution and the STFT ran:
    return {"recipe": describe_recipe(read_recipe(cfg.stage1_dir)),
            "render_device_used": resolve_place(cfg.render_device, device)}


def run_epochs(run_dir: Path, cfg: TrainConfig, ctx: Context, model, optimizer, splits: Splits, state: RunState,
               target: Target, on_epoch=None, on_step=None) -> None:
    """The epoch loop: train, check for NaN, decide whether to stop, validate when due,
    save. Every rank runs it; rank 0 writes."""
    loss_fn = target.loss
    net = model
    if ctx.world > 1:
        # Buffers change in training only in BatchNorm (seldnet's running statistics): then
        # rank 0's are broadcast before each forward, so every rank holds the saved ones;
        # the other models' buffers are fixed (the sinusoidal position table), nothing sent.
        batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, broadcast_buffers=batchnorm)
    if ctx.compile:
        net = torch.compile(net, mode=ctx.compile_mode)
    guard = NonFiniteGuard(ctx.device)
    ddp_report = ctx.world > 1 and os.environ.get("BAST_DDP_REPORT") == "1"  # the DDP test asks for it
    coverage: list = []
    started = time.perf_counter()
    for epoch in range(state.epoch, cfg.epochs):
        row = train_epoch(net, optimizer, splits.data, loss_fn, ctx, cfg, state, guard, epoch, on_step,
                          coverage if ddp_report and epoch == state.epoch else None,
                          run_dir / "checkpoints" / "last.pt")
        guard.check(ctx, epoch, run_dir / "checkpoints" / "last.pt")  # before anything of this epoch is saved
        stop = _all_ranks(ctx, cfg.max_minutes is not None and (time.perf_counter() - started) / 60 >= cfg.max_minutes)
        stop = stop and epoch + 1 < cfg.epochs
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs or stop:
            # The bare model, not the DDP wrapper (no gradient sync in evaluation).
            row.update(validate(model, splits.val, ctx, target))
        save_epoch(run_dir, model, optimizer, cfg, ctx, state, row)
        if on_epoch and ctx.main:
            on_epoch(row)
        if stop:
            if ctx.main:
                _append_row(run_dir, {"stopped": f"time budget of {cfg.max_minutes} min", "epoch": epoch + 1})
            break
    if ddp_report:
        _ddp_report(run_dir, model, coverage, ctx, splits.data)


def train_epoch(net, optimizer, data, loss_fn, ctx: Context, cfg: TrainConfig, state: RunState,
                guard: NonFiniteGuard, epoch: int, on_step=None, coverage: list | None = None,
                last_good: Path = Path("checkpoints/last.pt")) -> dict:
    """One epoch of training steps; the metrics row's training part."""
    net.train()
    total_steps = cfg.epochs * len(data)
    t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=ctx.device)
    for x, y, idx in data.epoch(epoch):
        loss = train_step(net, optimizer, x, y, loss_fn, ctx, lr_at(state.step, cfg, total_steps), guard, state.step)
        loss_sum += loss * len(x)  # on the device: no sync per step
        seen += len(x)  # x: a multitask target is a tuple
        state.step += 1
        if guard.due(state.step):
            guard.check(ctx, epoch, last_good)
        if coverage is not None:
            coverage.append(idx.cpu())
        if on_step and ctx.main:
            on_step(state.step - epoch * len(data), len(data))
    seconds = time.perf_counter() - t0
    if ctx.world > 1:
        dist.all_reduce(loss_sum)
    return {"epoch": epoch + 1, "step": state.step, "lr": lr_at(state.step - 1, cfg, total_steps),
            "train_loss": float(loss_sum) / (seen * ctx.world),  # a sync, once per epoch
            "train_samples_per_s": seen * ctx.world / seconds, "seconds": seconds}


def validate(model, val: EvalData | SceneWindows, ctx: Context, target: Target) -> dict:
    """The metrics row's validation part, under the training precision (it only ranks
    epochs). A non-finite result is written as null with `val_nonfinite`, never as NaN.
    Scenes (SELD): the window loss and the DCASE scores of the stitched scenes."""
    t0 = time.perf_counter()
    if isinstance(val, SceneWindows):
        metrics, _ = seld_evaluate(model, val, ctx, target, training_precision=True)
        metrics.pop("classes", None)
    else:
        metrics, _ = evaluate(model, val, ctx, target, training_precision=True)
    row = {"val_loss": metrics.get("loss"),
           **{f"val_{k}": v for k, v in metrics.items() if k not in ("n", "loss", "by_env", "windows")},
           "val_by_env": metrics["by_env"]}
    clean = _finite_or_none(row)
    # a figure the DCASE edition leaves undefined (null with a note: an early epoch that
    # predicts nothing has no DCASE 2024 DOA error) is no fault of the model's numbers
    allowed = MAY_BE_UNDEFINED if isinstance(val, SceneWindows) else ()
    if _without(clean, allowed) != _without(row, allowed):
        clean["val_nonfinite"] = True
    clean["val_seconds"] = time.perf_counter() - t0
    return clean


def _without(row: dict, keys) -> dict:
    """A validation row without the figures `keys` (val_KEY at the top, KEY per environment)."""
    return {k: ({e: {n: v for n, v in m.items() if n not in keys} for e, m in value.items()} if k == "val_by_env"
                else value)
            for k, value in row.items() if k.removeprefix("val_") not in keys}


def _finite_or_none(value):
    """`value` with every NaN / Inf float (in nested dicts and lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def save_epoch(run_dir: Path, model, optimizer, cfg: TrainConfig, ctx: Context, state: RunState, row: dict) -> None:
    """Record an epoch: its metrics row, then last.pt, then best.pt as a copy of last.pt when
    validation improved. last.pt says which epoch best.pt holds, so a kill between the two
    saves is repaired on resume (`_repair_best`); a kill before last.pt redoes the epoch."""
    state.epoch = row["epoch"]
    improved = is_better(row.get(cfg.best_by), state.best, cfg.best_by)  # the same on every rank: gathered metrics
    if improved:
        state.best, state.best_epoch = row[cfg.best_by], state.epoch
    rng = _gather_rng(ctx)
    if ctx.main:
        ckpt_dir = run_dir / "checkpoints"
        _append_row(run_dir, row)
        save_checkpoint(ckpt_dir / "last.pt", model, optimizer, cfg, state.epoch, state.step, state.best, rng,
                        state.best_epoch)
        if improved:
            copy_checkpoint(ckpt_dir / "last.pt", ckpt_dir / "best.pt")


def is_better(value, best: float, best_by: str) -> bool:
    """Whether a validation figure (None: not validated, or not finite) beats the best so far.
    The loss must fall; a SELD score that equals the best also wins (the later epoch), as
    the DCASE 2023 baseline keeps it (`<=`): the score plateaus at 1.0 while a model still
    predicts nothing, and the later epoch has trained longer."""
    if value is None:
        return False
    return value <= best if best_by == "val_seld_score" else value < best


def _append_row(run_dir: Path, row: dict) -> None:
    """One metrics.jsonl line in one write (a kill leaves at most that line torn; resume drops it);
    strict JSON: a figure that is not finite is null, with a note beside it."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json_text(row, indent=None) + "\n")


def _all_ranks(ctx: Context, flag: bool) -> bool:
    """True on every rank when it is true on any (every rank stops together)."""
    if ctx.world == 1:
        return flag
    t = torch.tensor(float(flag), device=ctx.device)
    dist.all_reduce(t)
    return bool(t.item())


def run_final_test(run_dir: Path, test_sel: Selection, cfg: TrainConfig, ctx: Context, state: RunState) -> dict:
    """The final test of best.pt, once, on rank 0 (a few seconds against the whole training).
    No best checkpoint (no epoch with a finite validation loss) is an error, not a NaN."""
    result: dict = {}
    try:
        if state.best_epoch is None and not (run_dir / "checkpoints" / "best.pt").exists():
            if state.best_lost:  # validated, but best.pt deleted and nothing trained since
                raise TrainingError(f"{run_dir / 'checkpoints' / 'best.pt'} is missing (deleted?); resume with more "
                                    "--epochs to choose a best checkpoint again")
            if cfg.best_by == "val_seld_score":
                raise TrainingError(f"{run_dir}: no epoch had a finite validation SELD score (metrics.jsonl), which "
                                    "picks the best checkpoint: the validation scenes hold no events (the error rate "
                                    "divides by their number), or the model's outputs are not finite; render "
                                    "scenes with events, or pick by the loss (--set best_by=val_loss)")
            raise TrainingError(f"{run_dir}: no epoch had a finite validation loss (metrics.jsonl), so there is no "
                                "best checkpoint to test; the model's predictions on the validation split are not "
                                "finite: check the data (bast-cli featurize) or lower the learning rate (--lr)")
        if ctx.main:
            result = final_test(run_dir, test_sel, cfg, ctx)
    finally:
        if ctx.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return result


def _with_target(cfg: TrainConfig, features_dir) -> TrainConfig:
    """`cfg` with the data set's classes (category targets) and the model settings the
    target fixes (the output size; for seld the output tokens, window length, classes).
    Scene data trains scene targets only, and the other way round."""
    scenes = is_scene_data(features_dir)
    kind = make_target_class(cfg.target)
    if scenes != kind.scenes:
        raise TrainingError(
            f"{features_dir} holds featurized scenes (bast-cli scenes): train them with --target seld (or "
            "seld-distance)"
            if scenes else f"--target {cfg.target} learns from scenes (bast-cli scenes, then featurize); "
            f"{features_dir} holds clips")
    if cfg.arch == "seldnet" and not kind.scenes:
        raise TrainingError("--model seldnet is a SELD model: it trains with --target seld on scene data")
    if needs_classes(cfg.target) and not cfg.classes:
        cfg = dataclasses.replace(cfg, classes=data_classes(features_dir))
    if needs_classes(cfg.target) and not kind.scenes and len(cfg.classes or ()) < 2:
        # one class: accuracy 1.0 beside chance 1.0, a result that says nothing
        raise TrainingError(f"--target {cfg.target}: {features_dir} holds {len(cfg.classes or ())} sound "
                            f"categor{'y' if len(cfg.classes or ()) == 1 else 'ies'} "
                            f"({', '.join(map(str, cfg.classes or ())) or 'none'}); a classifier needs two or more "
                            "(spatialize sounds of several categories, or train --target azimuth or direction)")
    settings = target_of(cfg).model_settings(model_fields(cfg.arch))
    if any(getattr(cfg.model, k) != v for k, v in settings.items()):
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **settings))
    return dataclasses.replace(cfg, best_by=_best_by(cfg, kind))


def _best_by(cfg: TrainConfig, kind: type[Target]) -> str:
    """What picks the best checkpoint: `auto` is the target's choice (the SELD score for the
    SELD targets, the loss for the others); the SELD score needs a SELD target."""
    if cfg.best_by == "val_seld_score" and not kind.scenes:
        raise ConfigError(f"best_by val_seld_score needs a SELD target (scenes); --target {cfg.target} has no "
                          "SELD score: use val_loss or auto")
    return kind.best_by if cfg.best_by == "auto" else cfg.best_by


def _ddp_report(run_dir: Path, model, coverage: list, ctx: Context, data) -> None:
    """What the DDP test checks (written only when BAST_DDP_REPORT=1): every rank's weights
    are the same, the ranks' first epochs covered disjoint shares of the training samples, and
    which shards each rank read (resident loader)."""
    flat = torch.cat([p.detach().reshape(-1).cpu().double() for p in model.parameters()])
    mine = {"rank": ctx.rank, "weights_sum": float(flat.sum()), "weights_abs_sum": float(flat.abs().sum()),
            "weights_sha": hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
            "first_epoch_samples": torch.cat(coverage).tolist() if coverage else [],
            "shards_read": list(getattr(data, "shards_read", []))}
    gathered: list = [None] * ctx.world
    dist.all_gather_object(gathered, mine)
    if ctx.main:
        write_json(run_dir / "ddp.json", gathered, indent=None)
