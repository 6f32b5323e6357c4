"""How fast one process renders and featurizes training samples on the fly, by where the
sounds come from: the recipe's training sounds (loaded once), a fresh procedural sound for
every sample, or `--fresh-per-epoch N` sounds reused (docs/train.md "Training on the fly").

    python benchmarks/bench_fresh_sounds.py STAGE1 [--samples 2560] [--reuse 1764,400]

STAGE1: a spatialize folder of the built-in corpus (e.g. bast-demo/stage1). Each mode renders
the same sample numbers of epoch 1 in batches of 64, in this process, one thread, after one
warm-up batch (IR spectra and noise banks loaded); prints samples/s and the ratio to the
training sounds' rate. The machine's load is the caller's to keep quiet.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bast.model.data.onthefly import Featurizer
from bast.pipeline.render.recipe import read_recipe
from bast.pipeline.render.sampler import DrawSettings, SampleRenderer, draw

BATCH = 64


def rate(recipe, settings: DrawSettings, featurize: Featurizer, samples: int) -> float:
    renderer = SampleRenderer(recipe, settings)
    renderer.render(draw(recipe, settings, 0, 0, range(BATCH)))  # warm-up: banks loaded
    t = time.perf_counter()
    for first in range(0, samples, BATCH):
        audio, _ = renderer.render(draw(recipe, settings, 0, 1, range(first, first + BATCH)))
        featurize(audio)
    return samples / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage1")
    ap.add_argument("--samples", type=int, default=2560)
    ap.add_argument("--reuse", default="1764,400", help="--fresh-per-epoch values to try")
    args = ap.parse_args()
    recipe = read_recipe(args.stage1)
    featurize = Featurizer(("logpower", "phase"), -100.0)
    modes = {"training sounds": DrawSettings(), "fresh, one per sample": DrawSettings(fresh_sounds=True)}
    for n in filter(None, args.reuse.split(",")):
        modes[f"fresh, {int(n):,} an epoch"] = DrawSettings(fresh_sounds=True, fresh_per_epoch=int(n))
    base = None
    for name, settings in modes.items():
        r = rate(recipe, settings, featurize, args.samples)
        base = base or r
        print(f"{name:28s} {r:8.1f} samples/s  {r / base:5.2f} x the training sounds'", flush=True)
    print(f"({args.samples:,} samples of epoch 1 in batches of {BATCH}, one process, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']})")


if __name__ == "__main__":
    main()
