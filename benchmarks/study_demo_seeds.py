"""The demo's two models over several seeds: the spread a demo on another machine should land in.

    bast-cli demo --out bast-demo --seed 0          # once: Stage 1 and Stage 2 (and seed 0's runs)
    python benchmarks/study_demo_seeds.py bast-demo/stage2 --out seeds --seeds 0,1,2

Trains the demo's Stage 3 alone (bast.demo.MODELS on the `tiny` preset, exactly as
`run_demo` does: the model, its settings, the seed) on an existing Stage 2 folder, once per
seed, into OUT/seed-<S>/run-<name>; a finished run (eval/test.json) is kept, a killed one
resumes from its last checkpoint. Prints one row per seed and model, then the mean and
sample SD over the seeds: test AD (median) in degrees, as the table in docs/performance.md
("Reproducibility, as it is") shows. That table's seeds 0 and 1 ran this way on the Stage 2
of `bast-cli demo --seed 0` / `--seed 1` (Stages 1-2 depend on the seed); seed 2 was a
whole `bast-cli demo --seed 2`, which trains the same runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def train_seed(stage2: Path, out: Path, seed: int, changes: dict | None = None) -> dict[str, dict]:
    """The demo's runs for one seed (bast/demo.py: MODELS, preset 'tiny'): each run's test figures."""
    from bast.demo import MODELS
    from bast.model.runs.config import preset
    from bast.model.train import train

    figures = {}
    for name, (arch, settings) in MODELS.items():
        run_dir = out / f"seed-{seed}" / f"run-{name}"
        if not (run_dir / "eval" / "test.json").exists():
            resume = (run_dir / "checkpoints" / "last.pt").exists()
            train(stage2, run_dir, preset("tiny", arch=arch, seed=seed, **settings, **(changes or {})), resume=resume)
        figures[name] = json.loads((run_dir / "eval" / "test.json").read_text())
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage2", type=Path, help="a Stage 2 folder, e.g. bast-demo/stage2")
    ap.add_argument("--out", type=Path, default=Path("seeds"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="for a quick check only: the doc's runs kept the preset's")
    ap.add_argument("--batch-size", type=int, default=None, help="likewise")
    args = ap.parse_args()
    changes = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v is not None}
    seeds = [int(s) for s in args.seeds.split(",")]
    ad: dict[str, list[float]] = {}
    print("seed  model  test AD (median) deg")
    for seed in seeds:
        for name, test in train_seed(args.stage2, args.out, seed, changes).items():
            ad.setdefault(name, []).append(test["ad_deg"])
            print(f"{seed:4d}  {name:5s}  {test['ad_deg']:.2f} ({test.get('median_ad_deg', float('nan')):.2f})")
    for name, values in ad.items():
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"{name}: mean {statistics.mean(values):.2f} +- {sd:.2f} deg over seeds {args.seeds} "
              f"(min to max {max(values) - min(values):.2f})")


if __name__ == "__main__":
    main()
