"""Training samples/s of the tiny BAST, eager against torch.compile, interleaved round by round.

    python benchmarks/bench_compile_ab.py bast-demo/stage2 --steps 40 --warmup 3 --rounds 3

The measurement docs/performance.md quotes ("A CPU A/B of the tiny BAST training step, eager
against compiled"): the demo's tiny BAST (logpower and phase, as the demo trains it) and an
identical copy wrapped in `torch.compile` (the training loop's own wrapping, mode
`default`), each driven by `bast.model.train.train_step` (the loop's step) on batches of one
training shard of the Stage 2 data. Per round: `--warmup` untimed steps (the compiled
model's first steps compile it: their time is printed as the warm-up), then `--steps` timed
steps of each model in turn, so both see the same machine load. Prints samples/s per round
and model. CPU by default; on a shared machine the rounds' spread is the noise to quote.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from bast.model.data.loaders import Selection, model_input, read_shard
from bast.model.nets.registry import build_model
from bast.model.runs.config import preset
from bast.model.runs.runtime import Context
from bast.model.targets.losses import make_loss
from bast.model.train import NonFiniteGuard, make_optimizer, train_step

FEATURES = ("logpower", "phase")


def batches(stage2, batch: int, steps: int, device):
    """`steps` batches (x, y) cut in turn from the first training shard (repeating it)."""
    sel = Selection.of(stage2, "train", "RI", FEATURES)
    shard = read_shard(sel.root / sel.shards[0]["path"], FEATURES)
    x = model_input(torch.from_numpy(shard["spec"]).to(device), FEATURES)
    az = torch.deg2rad(torch.from_numpy(shard["azimuth_deg"]).double()).to(device)
    y = torch.stack([torch.cos(az), torch.sin(az)], dim=1).float()
    n = len(x)
    for s in range(steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % n
        yield x[idx], y[idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage2")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="default: the tiny preset's (64)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = preset("tiny", arch="bast", features=FEATURES, device=args.device)
    batch = args.batch or cfg.batch_size
    torch.manual_seed(0)
    eager = build_model("bast", cfg.model).to(device).train()
    models = {"eager": eager, "compiled": torch.compile(copy.deepcopy(eager), mode="default")}
    opts = {k: make_optimizer(m, cfg) for k, m in models.items()}
    loss_fn = make_loss(cfg.loss, cfg.mix_weight)
    ctx = Context(device, None)
    guards = {k: NonFiniteGuard(device) for k in models}
    for name, model in models.items():
        t0 = time.perf_counter()
        for s, (x, y) in enumerate(batches(args.stage2, batch, args.warmup, device)):
            train_step(model, opts[name], x, y, loss_fn, ctx, cfg.lr, guards[name], s)
        print(f"{name}: warm-up {args.warmup} steps {time.perf_counter() - t0:.1f} s")
    for r in range(args.rounds):
        speeds = {}
        for name, model in models.items():
            n, t0 = 0, time.perf_counter()
            for s, (x, y) in enumerate(batches(args.stage2, batch, args.steps, device)):
                train_step(model, opts[name], x, y, loss_fn, ctx, cfg.lr, guards[name], s)
                n += len(y)
            speeds[name] = n / (time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f} samples/s" for k, v in speeds.items()))


if __name__ == "__main__":
    main()
