"""Stage 1 speed with conditions: today's default against several heads, rooms and noise.

    python benchmarks/bench_conditions.py [--sounds 60] [--workers 2] [--repeat 3]

Same clips, same run, same dask LocalCluster: (a) the default, 1 head x (anechoic + hall);
(b) 2 heads x (anechoic + 3 generated rooms) with diffuse noise at 0:20 dB SNR. Rates are
output samples per second, best of --repeat runs, each starting from built IR banks (the
banks' build time is reported apart: it is paid once, then cached). The second head is the
bundled KEMAR with its right ear delayed by a sample and scaled by 0.8 (a stand-in: the cost
does not depend on the head's data).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bast.datasets.procedural import DefaultCorpus
from bast.pipeline.stage.cluster import open_client
from bast.pipeline.irs.sources import load_hrirs
from bast.pipeline.irs.sofa import write_sofa
from bast.pipeline.render.conditions import SpatializeConfig, condition_irs
from bast.pipeline.render.spatialize import spatialize


def best_rate(refs, config, client, work: Path, repeat: int) -> tuple[float, int]:
    walls = []
    for _ in range(repeat):
        shutil.rmtree(work, ignore_errors=True)
        t = time.perf_counter()
        summary = spatialize(refs, work, config, client=client)
        walls.append(time.perf_counter() - t)
    shutil.rmtree(work, ignore_errors=True)
    return summary.samples / min(walls), summary.samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sounds", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    refs = DefaultCorpus(n_clips=args.sounds, seed=0, speech=False).list_clips()
    work = Path(tempfile.mkdtemp(prefix="bast-bench-cond-"))
    try:
        kemar = load_hrirs()
        ir = kemar.ir.copy()
        ir[:, 1] = np.roll(ir[:, 1], 1, axis=-1) * 0.8
        a = write_sofa(work / "kemar.sofa", kemar)
        b = write_sofa(work / "kemar_b.sofa", dataclasses.replace(kemar, ir=ir))
        today = SpatializeConfig()
        many = SpatializeConfig(hrir=(str(a), str(b)), rooms=3, snr_db=(0.0, 20.0), noise="diffuse")
        with open_client(workers=args.workers) as client:
            client.run(lambda: __import__("bast.pipeline.render.spatialize"))
            t = time.perf_counter()
            condition_irs(today, client)
            t_today = time.perf_counter() - t
            t = time.perf_counter()
            condition_irs(many, client)  # 6 room banks (3 rooms x 2 heads), built in parallel, then cached
            t_many = time.perf_counter() - t
            rate_today, n_today = best_rate(refs, today, client, work / "today", args.repeat)
            rate_many, n_many = best_rate(refs, many, client, work / "many", args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.sounds} sounds x 36 azimuths, {args.workers} dask workers, {os.cpu_count()} cores")
    print(f"IR banks (built when the cache is empty, else loaded): default {t_today:.1f} s; "
          f"2 heads x 3 rooms {t_many:.1f} s")
    print(f"(a) 1 head x (anechoic + hall), no noise:             {n_today:7d} samples, {rate_today:8,.0f} samples/s")
    print(f"(b) 2 heads x (anechoic + 3 rooms), diffuse noise:   {n_many:7d} samples, {rate_many:8,.0f} samples/s")
    print(f"per output sample, (b) takes {rate_today / rate_many:.2f}x the time of (a) (limit: 2x)")


if __name__ == "__main__":
    main()
