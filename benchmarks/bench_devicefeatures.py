"""Training on the fly: the numpy path of the loader workers against the torch path on the
training device (bast/model/data/devicefeatures.py), per sample, on one Stage 1 folder.

    python benchmarks/bench_devicefeatures.py STAGE1 [--batch 64] [--batches 8]
                                              [--device cpu|cuda] [--threads N] [--repeats 3]

The same draws (seed 0, epoch 0, samples 0 .. batch*batches - 1, the default draw settings,
the log power and the phase) both ways:

- workers: `SampleRenderer.render` (clip, gain, shift, FFT convolution, noise) then the
  `Featurizer` (Stage 2's numpy STFT), as one loader worker does it: one thread;
- device: `prepare_batch` (clip, gain, shift, noise window: numpy, in the worker) then, on
  `--device` with torch's threads, `DeviceRenderer.render` (convolution, noise mixing) and
  `stacked` (the STFT, dB, phase, float16).

Each figure is the best of `--repeats` passes over all batches (the first pass, which loads
the clips and IR banks, is not timed), in microseconds per sample; the ratio is the
workers' cost over the device's. On a CPU the "device" shares the cores the workers would
use, so the ratio there is the cost of the work, not what a GPU makes of it.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from bast.model.data.devicefeatures import DeviceRenderer, stacked
from bast.model.data.onthefly import Featurizer
from bast.pipeline.features.stft import FLOOR_DB
from bast.pipeline.render.recipe import read_recipe
from bast.pipeline.render.sampler import DrawSettings, SampleRenderer, draw, prepare_batch

KINDS = ("logpower", "phase")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass(batches, renderer, featurize, on_device, device) -> dict:
    """Seconds of one pass over the batches, by part."""
    t = {"render": 0.0, "featurize": 0.0, "prepare": 0.0, "device": 0.0}
    for draws in batches:
        a = time.perf_counter()
        audio, _ = renderer.render(draws)
        b = time.perf_counter()
        featurize(audio)
        c = time.perf_counter()
        prepared, _ = prepare_batch(renderer, draws)
        d = time.perf_counter()
        spec = stacked(KINDS, on_device.render(prepared)[0], FLOOR_DB)
        _sync(device)
        e = time.perf_counter()
        assert spec.dtype == torch.float16
        t["render"] += b - a
        t["featurize"] += c - b
        t["prepare"] += d - c
        t["device"] += e - d
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage1")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for the device path (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    recipe = read_recipe(args.stage1)
    settings = DrawSettings()
    renderer = SampleRenderer(recipe, settings)
    on_device = DeviceRenderer(SampleRenderer(recipe, settings), device)
    featurize = Featurizer(KINDS, FLOOR_DB)
    batches = [draw(recipe, settings, 0, 0, np.arange(b * args.batch, (b + 1) * args.batch))
               for b in range(args.batches)]
    _pass(batches[:1], renderer, featurize, on_device, device)  # loads clips, banks; warms the FFT plans
    passes = [_pass(batches, renderer, featurize, on_device, device) for _ in range(args.repeats)]
    n = args.batch * args.batches
    best = {k: min(p[k] for p in passes) / n * 1e6 for k in passes[0]}
    workers = best["render"] + best["featurize"]
    print(f"cores: {os.cpu_count()}; torch threads: {torch.get_num_threads()}; device: {device}; "
          f"{n} samples in batches of {args.batch}, {len(recipe.conditions)} conditions")
    print(f"workers (numpy): render {best['render']:7.0f} + featurize {best['featurize']:7.0f} = "
          f"{workers:7.0f} us/sample")
    print(f"device (torch):  prepare {best['prepare']:6.0f} + convolve, mix, STFT {best['device']:7.0f} us/sample "
          f"({best['prepare'] + best['device']:.0f} in all)")
    print(f"convolution + STFT: numpy {workers - best['prepare']:.0f} us against torch {best['device']:.0f} us "
          f"on {device}: ratio {(workers - best['prepare']) / best['device']:.2f}")
    print(f"per sample in all: ratio {workers / (best['prepare'] + best['device']):.2f}")


if __name__ == "__main__":
    main()
