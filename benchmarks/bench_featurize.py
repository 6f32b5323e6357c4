"""Stage 2 speed: bast's featurize against a per-sample scipy loop, same shards, same run.

    python benchmarks/bench_featurize.py [--sounds 200] [--workers 2]

Input: Stage 1 shards of the procedural corpus (rendered first, not timed). Naive: for
each sample, read it from its shard with h5py, `scipy.signal.spectrogram` of both ears,
10 log10 with the floor, write it as float16 into an HDF5 dataset; one process. bast:
`featurize` on a dask LocalCluster, whole-block reads, batched float64 FFTs, whole shards.
Both read and write everything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bast.datasets.procedural import DefaultCorpus
from bast.pipeline.stage.cluster import open_client
from bast.pipeline.features.featurize import featurize
from bast.pipeline.features.stft import scipy_spectrogram_db
from bast.pipeline.render.spatialize import SpatializeConfig, spatialize

PAPER_SAMPLES = 4600 * 36 * 2


def naive(stage1: Path, out: Path) -> float:
    manifest = json.loads((stage1 / "manifest.json").read_text())
    total = manifest["totals"]["samples"]
    t = time.perf_counter()
    with h5py.File(out, "w") as g:
        spec = g.create_dataset("spec", (total, 2, 129, 61), dtype=np.float16)
        i = 0
        for s in manifest["shards"]:
            with h5py.File(stage1 / s["path"], "r") as f:
                for k in range(s["samples"]):
                    spec[i] = scipy_spectrogram_db(f["audio"][k]).astype(np.float16)
                    i += 1
    return total / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sounds", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bast-bench-"))
    try:
        refs = DefaultCorpus(n_clips=args.sounds, seed=0, speech=False).list_clips()
        with open_client(workers=args.workers) as client:
            spatialize(refs, work / "stage1", SpatializeConfig(), client=client)
            walls = []
            for _ in range(args.repeat):
                shutil.rmtree(work / "stage2", ignore_errors=True)
                t = time.perf_counter()
                summary = featurize(work / "stage1", work / "stage2", client=client)
                walls.append(time.perf_counter() - t)
        naive_rate = naive(work / "stage1", work / "naive.h5")
    finally:
        shutil.rmtree(work)
    rate = summary.samples / min(walls)
    print(f"{summary.samples} binaural samples ({args.sounds} sounds x 36 x 2), {os.cpu_count()} cores")
    print(f"naive (per-sample h5py read, scipy.signal.spectrogram, per-sample write; 1 process): {naive_rate:7,.0f} samples/s")
    print(f"bast featurize ({args.workers} dask workers, block reads, batched FFTs):            {rate:7,.0f} samples/s"
          f" (best of {args.repeat}; first {summary.samples / walls[0]:,.0f})")
    print(f"ratio bast / naive: {rate / naive_rate:.1f}x")
    print(f"projected paper scale ({PAPER_SAMPLES:,} samples): bast {PAPER_SAMPLES / rate / 60:.1f} min, "
          f"naive {PAPER_SAMPLES / naive_rate / 60:.1f} min")


if __name__ == "__main__":
    main()
