"""Validation's cost against a training epoch, on CPU or GPU, as the training loop runs both.

    python benchmarks/bench_validation.py STAGE2 [--model mlp|bast] [--epochs 3] [--threads N]

The demo's model and settings (`bast.demo.MODELS`, tiny preset, seed 0) on a Stage 2 folder
made with the interaural phase (the demo's `stage2/`): each epoch runs `train.train_epoch`
(the loop's own epoch), then `train.validate` twice, interleaved so both meet the same load:
with validation's data standardised once as they load (`EvalData(prepared=True)`, what
training uses) and standardised per batch (`prepared=False`, the final test's path, and
validation's before). Prints each time and its ratio to the epoch's training time.
"""

from __future__ import annotations

import argparse

import torch

from bast.demo import MODELS
from bast.model.runs.config import preset
from bast.model.data.loaders import EvalData, ResidentData, Selection
from bast.model.nets.registry import build_model
from bast.model.runs.runtime import Context, resolve_device
from bast.model.targets.core import attach, target_of
from bast.model.train import NonFiniteGuard, RunState, make_optimizer, train_epoch, validate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("features")
    parser.add_argument("--model", default="mlp", choices=sorted(MODELS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    available = torch.cuda.is_available()
    device, _ = resolve_device("auto", 0, 1, available, torch.cuda.device_count() if available else 0)
    arch, settings = MODELS[args.model]
    cfg = preset("tiny", arch=arch, seed=0, **settings)
    target = target_of(cfg)
    data = ResidentData(Selection.of(args.features, "train", "RI", cfg.model.features), cfg.batch_size, device, 0,
                        target=target)
    val_sel = Selection.of(args.features, "val", "RI", cfg.model.features)
    vals = {p: EvalData(val_sel, cfg.eval_batch_size, device, cfg.memory_budget_gb, target=target, prepared=p)
            for p in (True, False)}
    ctx = Context(device, None)
    torch.manual_seed(0)
    model = attach(build_model(cfg.arch, cfg.model), target).to(device)
    optimizer, guard, state = make_optimizer(model, cfg), NonFiniteGuard(device), RunState()
    print(f"{args.model} on {device}, {torch.get_num_threads()} threads: {len(data)} steps of {cfg.batch_size}, "
          f"{len(vals[True]):,} validation samples")
    for epoch in range(args.epochs):
        row = train_epoch(model, optimizer, data, target.loss, ctx, cfg, state, guard, epoch)
        took = {p: validate(model, vals[p], ctx, target)["val_seconds"] for p in (True, False)}
        print(f"epoch {epoch + 1}: training {row['seconds']:.2f} s; validation standardised once "
              f"{took[True]:.2f} s ({took[True] / row['seconds']:.3f} of training), per batch {took[False]:.2f} s "
              f"({took[False] / row['seconds']:.3f})", flush=True)


if __name__ == "__main__":
    main()
