"""What data is worth to BAST: the demo's models trained (a) from Stage 2, as the demo trains
them, (b) on the fly with the same training sounds, (c) on the fly with fresh sounds every
epoch; same preset, epochs and seed, scored on the same test set (docs/performance.md).

    python benchmarks/study_onthefly.py STAGE1 STAGE2 --out DIR [--models bast,mlp]
                                        [--variants stage2,fly,fresh] [--seeds 0] [--workers 1]
                                        [--set KEY=VALUE,...] [--tag NAME] [--also-on STAGE2]

STAGE1/STAGE2: the demo's folders (bast-demo/stage1, bast-demo/stage2) or any Stage 1 folder
and its Stage 2 with the log power and the phase. Each run goes to DIR/<model>-<variant>-s<seed>;
a finished run is read back, not redone (the script resumes). `--set` overrides preset settings
(e.g. `--set lr=0.002,depth=2,epochs=8`) and `--tag` names such runs (DIR/<model>-<variant>-<tag>-s<seed>).
`--also-on`: another Stage 2 folder whose test split each run is also scored on (`bast-cli
evaluate`), e.g. the same sounds spatialized with `--test-hrir` a held-out head. Prints one row per run (test AD,
median, front-back confusions, wall time of training and test) and writes DIR/study.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bast.model.evaluation.runs import evaluate_run
from bast.model.train import preset, train, train_on_the_fly

DEMO = {"bast": ("bast", {"features": ("logpower", "phase")}), "mlp": ("mlp", {"features": ("logpower", "phase")})}
VARIANTS = {"stage2": {}, "fly": {}, "fresh": {"fresh_sounds": True}}


def parse_set(text: str) -> dict:
    """`lr=0.002,depth=2` -> {"lr": 0.002, "depth": 2} (ints, floats, true/false, else strings)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=", 1)
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def run_one(stage1: Path, stage2: Path, run_dir: Path, model: str, variant: str, seed: int, workers: int,
            extra: dict | None = None) -> dict:
    arch, settings = DEMO[model]
    settings = {**settings, **(extra or {})}
    test = run_dir / "eval" / "test.json"
    if not test.exists():
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        t = time.perf_counter()
        if variant == "stage2":
            train(stage2, run_dir, preset("tiny", arch=arch, seed=seed, **settings), resume=resume)
        else:
            cfg = preset("tiny", arch=arch, seed=seed, loader_workers=workers, **settings, **VARIANTS[variant])
            train_on_the_fly(stage1, run_dir, cfg, resume=resume)
        (run_dir / "wall_s.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
    result = json.loads(test.read_text())
    wall = run_dir / "wall_s.txt"
    return {"model": model, "variant": variant, "seed": seed, "ad_deg": result["ad_deg"],
            "median_ad_deg": result["median_ad_deg"], "front_back_rate": result.get("front_back_rate"),
            "by_env": {e: m["ad_deg"] for e, m in result.get("by_env", {}).items()},
            "wall_s": float(wall.read_text()) if wall.exists() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage1", type=Path)
    ap.add_argument("stage2", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="bast,mlp")
    ap.add_argument("--variants", default="stage2,fly,fresh")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--set", default="", help="preset overrides, e.g. lr=0.002,depth=2")
    ap.add_argument("--tag", default="", help="names runs with --set overrides")
    ap.add_argument("--also-on", type=Path, default=None, help="a Stage 2 folder whose test split each run is also scored on")
    args = ap.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for model in args.models.split(","):
            for variant in args.variants.split(","):
                row = run_one(args.stage1, args.stage2, args.out / f"{model}-{variant}{'-' + args.tag if args.tag else ''}-s{seed}",
                              model, variant, seed, args.workers, parse_set(args.set))
                row["tag"], row["set"] = args.tag, args.set
                rows.append(row)
                print(f"{model:5s} {variant:6s} {args.tag:8s} seed {seed}: test AD {row['ad_deg']:6.2f} deg (median "
                      f"{row['median_ad_deg']:5.2f}), front-back {row['front_back_rate']}, "
                      f"wall {row['wall_s'] or float('nan'):.0f} s", flush=True)
                if args.also_on:
                    run_dir = args.out / f"{model}-{variant}{'-' + args.tag if args.tag else ''}-s{seed}"
                    other = evaluate_run(run_dir, args.also_on)
                    row["also_on"] = {"data": str(args.also_on), "ad_deg": other["ad_deg"],
                                      "median_ad_deg": other["median_ad_deg"]}
                    print(f"      on {args.also_on}: test AD {other['ad_deg']:6.2f} deg "
                          f"(median {other['median_ad_deg']:5.2f})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"study{'-' + args.tag if args.tag else ''}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
