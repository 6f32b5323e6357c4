"""BAST's three backbones trained on the same data: the table of docs/performance.md
("BAST's backbones: vit, swin and mamba").

    bast-cli demo --out bast-demo --seed 0            # once: the demo's Stage 2
    python benchmarks/study_backbones.py bast-demo/stage2 --out runs --epochs 4

Runs, one after the other, what the doc shows:

    for b in vit swin mamba; do
      bast-cli train bast-demo/stage2 --out runs/$b --backbone $b --epochs 4 --seed 0 --device cpu
    done
    bast-cli report runs/vit runs/swin runs/mamba --out report --rollout-samples 0

(the `tiny` preset: D 96, 1 layer per encoder, stride 12, NSP, SUB, hybrid loss, batch 64),
timing each training with its validation, then prints per backbone: parameters, training
samples/s and validation AD per epoch (from RUN/metrics.jsonl), test AD and its median
(RUN/eval/test.json) and the wall time. A finished run (eval/test.json) is not trained
again, so a killed study resumes where it stopped; `--report` builds the report too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BACKBONES = ("vit", "swin", "mamba")


def train(stage2: Path, run: Path, backbone: str, epochs: int, seed: int, device: str, extra=()) -> float | None:
    """Train one backbone through the CLI; seconds of wall time, None when it had finished before."""
    if (run / "eval" / "test.json").exists():
        return None
    cmd = [sys.executable, "-m", "bast.cli", "train", str(stage2), "--out", str(run), "--backbone", backbone,
           "--epochs", str(epochs), "--seed", str(seed), "--device", device, *extra]
    if (run / "checkpoints" / "last.pt").exists():
        cmd.append("--resume")
    t0 = time.perf_counter()
    if subprocess.run(cmd).returncode:
        sys.exit(f"study_backbones: `{' '.join(cmd[2:])}` failed (its error above)")
    return time.perf_counter() - t0


def row(run: Path, seconds: float | None) -> str:
    config = json.loads((run / "config.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    test = json.loads((run / "eval" / "test.json").read_text())
    speed = ", ".join(f"{e['train_samples_per_s']:.0f}" for e in epochs if "train_samples_per_s" in e)
    val = ", ".join(f"{e['val_ad_deg']:.1f}" for e in epochs if e.get("val_ad_deg") is not None)
    wall = "(trained before)" if seconds is None else f"{seconds / 60:.1f} min"
    return (f"| {run.name} | {config.get('parameters', 0):,} | {speed} | {val} | {test['ad_deg']:.1f} | "
            f"{test.get('median_ad_deg', float('nan')):.1f} | {wall} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage2", type=Path)
    ap.add_argument("--out", type=Path, default=Path("runs"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--report", type=Path, default=None, help="also build the report here")
    ap.add_argument("--set", action="append", default=[], help="a train setting KEY=VALUE (e.g. batch_size=16 "
                    "for a quick check on little data); the doc's table used none")
    args = ap.parse_args()
    names = args.backbones.split(",")
    extra = [w for kv in args.set for w in ("--set", kv)]
    seconds = {b: train(args.stage2, args.out / b, b, args.epochs, args.seed, args.device, extra) for b in names}
    print("| backbone | parameters | train samples/s (per epoch) | val AD per epoch (deg) | test AD (deg) | median "
          "| training + validation |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for b in names:
        print(row(args.out / b, seconds[b]))
    if args.report:
        subprocess.run([sys.executable, "-m", "bast.cli", "report", *(str(args.out / b) for b in names),
                        "--out", str(args.report), "--rollout-samples", "0"], check=True)


if __name__ == "__main__":
    main()
