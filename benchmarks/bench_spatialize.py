"""Stage 1 speed: bast's spatialize against the naive way, on the same clips, same run.

    python benchmarks/bench_spatialize.py [--sounds 60] [--workers 2]

Naive: load and prepare each clip, then one `scipy.signal.fftconvolve` per clip, azimuth
and ear (36 x 2 x 2 per clip), each sample written into an HDF5 dataset with h5py, in one
process. bast: `spatialize` on a dask LocalCluster (one process per core), batched FFT
convolution with the IR spectra computed once per worker, whole shards written at once.
Both include loading the clips and writing float32 audio; both start from a built IR cache
and from a synced disk. Writing 64 KB of float32 audio per sample, bast is bound by the
disk's sustained write rate (measure it with `dd if=/dev/zero of=F bs=1M count=4000
conv=fdatasync`); the paper-scale projection uses that bound when it is the lower one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from scipy.signal import fftconvolve

from bast.datasets import load_clip
from bast.datasets.procedural import DefaultCorpus
from bast.pipeline.render.clips import ClipPolicy, prepare
from bast.pipeline.stage.cluster import open_client
from bast.pipeline.render.conditions import SpatializeConfig, environment_irs
from bast.pipeline.render.spatialize import spatialize

PAPER_SAMPLES = 4600 * 36 * 2


def naive(refs, irs: dict, out: Path) -> float:
    t = time.perf_counter()
    n_az = len(next(iter(irs.values())))
    with h5py.File(out, "w") as f:
        audio = f.create_dataset("audio", (len(refs) * n_az * len(irs), 2, 8000), dtype=np.float32)
        i = 0
        for ref in refs:
            clip = prepare(*load_clip(ref), ClipPolicy())[0][0].astype(np.float64)
            for pairs in irs.values():
                for pair in pairs:
                    audio[i] = np.stack([fftconvolve(clip, pair[c])[:8000] for c in (0, 1)]).astype(np.float32)
                    i += 1
    return i / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sounds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--disk-mb-s", type=float, default=0.0, help="sustained disk write rate, MB/s")
    args = parser.parse_args()
    refs = DefaultCorpus(n_clips=args.sounds, seed=0, speech=False).list_clips()
    config = SpatializeConfig()
    irs = {env: s.ir.astype(np.float64) for env, (s, _) in environment_irs(config).items()}  # builds the hall once
    work = Path(tempfile.mkdtemp(prefix="bast-bench-"))
    try:
        os.sync()
        t = time.perf_counter()
        with open_client(workers=args.workers) as client:
            client.run(lambda: __import__("bast.pipeline.render.spatialize"))  # imports: ~1 s per worker
            startup = time.perf_counter() - t
            walls = []
            for _ in range(args.repeat):  # the first run also pays the workers' first touches
                shutil.rmtree(work / "bast", ignore_errors=True)
                os.sync()
                t = time.perf_counter()
                summary = spatialize(refs, work / "bast", config, client=client)
                walls.append(time.perf_counter() - t)
        shutil.rmtree(work / "bast")
        os.sync()  # each side starts with the other's output written back, not still in flight
        naive_rate = naive(refs, irs, work / "naive.h5")
    finally:
        shutil.rmtree(work)
    first = summary.samples / (walls[0] + startup)
    bast_rate = summary.samples / min(walls)
    print(f"{args.sounds} sounds x 36 azimuths x 2 environments = {summary.samples} samples, {os.cpu_count()} cores")
    print(f"naive (fftconvolve per clip/azimuth/ear, h5py per sample, 1 process): {naive_rate:8,.0f} samples/s")
    print(f"bast spatialize ({args.workers} dask workers, batched FFT, whole shards):  {bast_rate:8,.0f} samples/s"
          f" (best of {args.repeat}); first run with the cluster's {startup:.1f} s start-up: {first:,.0f} samples/s")
    print(f"ratio bast / naive: {bast_rate / naive_rate:.1f}x (first run with start-up: {first / naive_rate:.1f}x)")
    disk = args.disk_mb_s * 1e6 / (2 * 8000 * 4) if args.disk_mb_s else float("inf")
    paper_rate = min(bast_rate, disk)
    print(f"projected paper scale ({PAPER_SAMPLES:,} samples, {PAPER_SAMPLES * 64e3 / 1e9:.0f} GB): "
          f"bast {PAPER_SAMPLES / paper_rate / 60:.1f} min"
          + (f" (sustained disk bound {disk:,.0f} samples/s)" if args.disk_mb_s else "")
          + f", naive {PAPER_SAMPLES / naive_rate / 60:.1f} min")


if __name__ == "__main__":
    main()
