"""Training on the fly against training from Stage 2, in one run on the same data.

    python benchmarks/bench_onthefly.py STAGE1 STAGE2 [--models bast,mlp] [--samples 4096]
                                        [--workers 0,1] [--epochs 2] [--out DIR]
                                        [--fresh-per-epoch N] [--priority idle,normal] [--batch-size 64]

For each model (the tiny preset with the log power and the interaural phase, as the demo
trains them): `train` from the Stage 2 folder (resident on the device: loading costs nothing
once loaded), then `train_on_the_fly` on the Stage 1 folder with each number of loader
workers, each for `--epochs` epochs of `--samples` samples. The figure is the training rate
of the last epoch (metrics.jsonl `train_samples_per_s`: steps only, no validation, the
workers already started), and the ratio on the fly / from Stage 2. Runs are interleaved per
model, so a load that changes during the run touches both. Writes nothing outside --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bast.model.data import onthefly
from bast.model.runs.checkpoint import read_metrics
from bast.model.train import preset, train, train_on_the_fly


def rate(run_dir: Path) -> float:
    return read_metrics(run_dir)[-1]["train_samples_per_s"]


IDLE = onthefly.init_worker


def normal_priority(_):
    torch.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage1")
    ap.add_argument("stage2")
    ap.add_argument("--models", default="bast,mlp")
    ap.add_argument("--samples", type=int, default=4096, help="training samples per epoch (both ways)")
    ap.add_argument("--workers", default="0,1", help="loader worker counts to try on the fly")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--fresh-per-epoch", type=int, default=0, help="also time fresh sounds, N an epoch")
    ap.add_argument("--batch-size", type=int, default=None, help="both ways (default: the preset's)")
    ap.add_argument("--priority", default="idle", help="loader worker priorities to try: idle, normal or both")
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary folder, removed)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-otf-"))
    print(f"cores: {os.cpu_count()}; torch threads: {__import__('torch').get_num_threads()}; runs in {out}")
    rows = []
    for model in args.models.split(","):
        common = dict(arch=model, features=("logpower", "phase"), epochs=args.epochs, device="cpu", val_every=args.epochs)
        if args.batch_size:
            common["batch_size"] = args.batch_size
        # From Stage 2: an epoch of the same size, the Stage 2 training split cut to --samples
        # by the loader would change its shuffle; a whole epoch's rate is what counts, so the
        # resident run trains its full split and its rate is per sample all the same.
        t = time.perf_counter()
        train(args.stage2, out / f"{model}-stage2", preset("tiny", **common))
        disk = rate(out / f"{model}-stage2")
        print(f"{model}: from Stage 2 {disk:8.0f} samples/s ({time.perf_counter() - t:.0f} s in all)")
        workers = [int(x) for x in args.workers.split(",")]
        ways = [(w, {}) for w in workers]
        if args.fresh_per_epoch:
            ways.append((workers[0], {"fresh_sounds": True, "fresh_per_epoch": args.fresh_per_epoch}))
        for (w, fresh), priority in [(way, p) for way in ways for p in args.priority.split(",")]:
            onthefly.init_worker = IDLE if priority == "idle" else normal_priority
            t = time.perf_counter()
            name = f"{model}-otf-w{w}" + ("-fresh" if fresh else "") + f"-{priority}"
            cfg = preset("tiny", **common, epoch_samples=args.samples, loader_workers=w, **fresh)
            train_on_the_fly(args.stage1, out / name, cfg)
            fly = rate(out / name)
            print(f"{model}: on the fly, {w} worker(s){', fresh sounds' if fresh else ''}, {priority} priority "
                  f"{fly:8.0f} samples/s = {fly / disk:.2f} x Stage 2 ({time.perf_counter() - t:.0f} s in all, "
                  "held-out featurizing included)")
            rows.append({"model": model, "workers": w, "fresh": bool(fresh), "priority": priority, "stage2": disk,
                         "on_the_fly": fly, "ratio": fly / disk})
    print(json.dumps(rows))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
