"""Small jobs as a new user runs them: `bast-cli featurize` against a plain scipy script,
each a fresh process, wall clock (start-up and imports included), same shards, same run.

    python benchmarks/bench_small_jobs.py [--sounds 24] [--repeats 3] [--pythonpath DIR]

Input: Stage 1 output of `--sounds` procedural sounds at 36 azimuths in both rooms
(24 sounds: 1,728 samples), rendered first, not timed. Naive: a script that imports h5py
and scipy, reads every sample with h5py, `scipy.signal.spectrogram` of both ears, 10 log10
with the floor, and writes float16 spectrograms to one HDF5 file. bast: `bast-cli
featurize STAGE1 OUT` with its defaults (a fresh output folder each time). Also times
`bast-cli --help`. `--pythonpath` runs another checkout's bast (for before/after).
Prints the median of `--repeats` runs of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAIVE = r'''
import json, sys
import h5py, numpy as np
from scipy.signal import spectrogram
stage1, out = sys.argv[1], sys.argv[2]
manifest = json.load(open(stage1 + "/manifest.json"))
total = manifest["totals"]["samples"]
with h5py.File(out, "w") as g:
    spec = g.create_dataset("spec", (total, 2, 129, 61), dtype=np.float16)
    i = 0
    for s in manifest["shards"]:
        with h5py.File(stage1 + "/" + s["path"], "r") as f:
            for k in range(s["samples"]):
                _, _, psd = spectrogram(f["audio"][k].astype(np.float64), fs=16000, window=("tukey", 0.25),
                                        nperseg=256, noverlap=128)
                spec[i] = (10 * np.log10(np.maximum(psd, 1e-15))).astype(np.float16)
                i += 1
'''


# Each process runs in the temporary folder: `python -m` puts the working directory first
# on sys.path, which would shadow --pythonpath from inside a checkout.
def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sounds", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pythonpath", default=None, help="run the bast found here (another checkout)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = str(Path(args.pythonpath).resolve())
    cli = [sys.executable, "-m", "bast.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(cli + ["spatialize", "default", str(tmp / "s1"), "--sounds", str(args.sounds),
                              "--workers", "0", "--no-speech"], env=env, cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        naive, bast, helps = [], [], []
        for k in range(args.repeats):
            naive.append(timed([sys.executable, "-c", NAIVE, str(tmp / "s1"), str(tmp / f"naive{k}.h5")], env, tmp))
            bast.append(timed(cli + ["featurize", str(tmp / "s1"), str(tmp / f"s2-{k}")], env, tmp))
            helps.append(timed(cli + ["--help"], env, tmp))
            shutil.rmtree(tmp / f"s2-{k}")
        samples = args.sounds * 36 * 2
        n, b = statistics.median(naive), statistics.median(bast)
        print(f"{samples:,} samples, median of {args.repeats} runs, wall clock per process")
        print(f"naive scipy script : {n:6.2f} s")
        print(f"bast-cli featurize : {b:6.2f} s  ({b / n:.2f}x the naive script)")
        print(f"bast-cli --help    : {statistics.median(helps):6.2f} s")


if __name__ == "__main__":
    main()
