"""In this process or on 2 dask workers: where a cluster starts to pay on a small machine.

    python benchmarks/bench_worker_threshold.py --sounds 70,140,290 --workers 2

The table "Where the threshold comes from" in docs/performance.md: for each number of
procedural sounds (36 azimuths, both rooms: 72 samples a sound), `bast-cli spatialize` and
then `bast-cli featurize` with `--workers 0` (in this process) and with `--workers N`, each a
fresh process into a fresh folder, wall clock with start-up and imports. Featurize reads
the same Stage 1 output in both cases. Prints one row per number of sounds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bast.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sounds", default="70,140,290")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    w = str(args.workers)
    print(f"| sounds (samples) | featurize in-process | featurize {w} workers | spatialize in-process | "
          f"spatialize {w} workers |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.sounds.split(",")):
            base = Path(tmp) / f"n{n}"
            make = ["spatialize", "default", "--sounds", str(n), "--no-speech"]
            s0 = timed([make[0], make[1], str(base / "s1"), *make[2:], "--workers", "0"])
            sw = timed([make[0], make[1], str(base / "s1w"), *make[2:], "--workers", w])
            f0 = timed(["featurize", str(base / "s1"), str(base / "f0"), "--workers", "0"])
            fw = timed(["featurize", str(base / "s1"), str(base / "fw"), "--workers", w])
            print(f"| {n} ({n * 72:,}) | {f0:.1f} s | {fw:.1f} s | {s0:.1f} s | {sw:.1f} s |")


if __name__ == "__main__":
    main()
