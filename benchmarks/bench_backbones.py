"""Training throughput of BAST's backbones, interleaved so all see the same machine load.

    python benchmarks/bench_backbones.py --preset tiny --batch 64 --rounds 3

Per round, one timed training step (forward, backward, Adam) of each backbone on the same
random batch, after one untimed warm-up step each; prints the median samples/s per backbone
and its ratio to the ViT's (the paper's encoder, the reference here). CPU by default.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bast.model.runs.config import preset
from bast.model.nets.registry import build_model

BACKBONES = ("vit", "swin", "mamba")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 2, 129, 61, device=args.device)
    target = torch.nn.functional.normalize(torch.randn(args.batch, 2, device=args.device), dim=1)
    models, opts = {}, {}
    for b in BACKBONES:
        models[b] = build_model("bast", preset(args.preset, backbone=b).model).to(args.device).train()
        opts[b] = torch.optim.Adam(models[b].parameters(), lr=1e-4)

    def step(b: str) -> float:
        t = time.perf_counter()
        loss = (models[b](x) - target).square().sum(1).mean()
        opts[b].zero_grad(set_to_none=True)
        loss.backward()
        opts[b].step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for b in BACKBONES:
        step(b)  # warm-up
    rates = {b: [] for b in BACKBONES}
    for _ in range(args.rounds):
        for b in BACKBONES:
            rates[b].append(args.batch / step(b))
    vit = statistics.median(rates["vit"])
    print(f"preset {args.preset}, batch {args.batch}, {args.rounds} rounds, {args.device}, "
          f"{torch.get_num_threads()} threads")
    for b in BACKBONES:
        r = statistics.median(rates[b])
        n = sum(p.numel() for p in models[b].parameters())
        print(f"{b:6s} {n:>11,} parameters  {r:8.1f} samples/s  {r / vit:5.2f} x vit")


if __name__ == "__main__":
    main()
