"""Scene rendering speed: scenes per second and real-time factor, anechoic, anechoic with
interpolated HRIRs (--interpolate) and hall, moving sources.

    python benchmarks/bench_scenes.py [--scenes 8] [--duration 5] [--workers 2]

Per environment, the same scenes (every event moving, 10-60 deg/s, up to 2 at once):
(a) the whole stage (`render_scenes`: loading sounds, drawing, rendering, writing shards)
on a dask LocalCluster of --workers processes; (b) in one process, the mixing alone with
bast's renderer (blocks grouped into runs of one direction, one FFT convolution per run)
against the naive way (every 32 ms block convolved on its own with its direction's IRs,
`moving.render_naive`), checking that both give the same samples. With interpolation, both
hear the same interpolated HRIRs along each path (1 deg apart). The real-time factor is
processing time / audio time (under 1: faster than real time). IR banks are built (and
cached) before timing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bast.conventions import FS
from bast.datasets.procedural import DefaultCorpus
from bast.pipeline.stage.cluster import open_client
from bast.pipeline.irs.interpolate import Interpolator
from bast.pipeline.render.moving import Lookup, render_naive
from bast.pipeline.render.scenes import ScenesConfig, draw_scene, load_event, mix, render_scenes, scene_irs


def naive_mix(events, audio_of, lookup, n):
    out = np.zeros((2, n))
    for e in events:
        out[:, e.onset:] += render_naive(audio_of(e.clip_id)[:e.length], e.trajectory, lookup, n_out=n - e.onset)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    refs = DefaultCorpus(n_clips=120, seed=0, speech=False).list_clips()
    work = Path(tempfile.mkdtemp(prefix="bast-bench-scenes-"))
    print(f"{args.scenes} scenes of {args.duration:g} s, every event moving at 10-60 deg/s; "
          f"{os.cpu_count()} cores, {args.workers} workers")
    print(f"| room | stage: scenes/s ({args.workers} workers) | stage: real-time factor | "
          "mixing: bast s/scene | mixing: naive s/scene | naive / bast | max difference |")
    print("|---|---|---|---|---|---|---|")
    with open_client(args.workers) as client:
        for env, interpolate in (("anechoic", False), ("anechoic", True), ("hall", False)):
            config = ScenesConfig(count=args.scenes, duration_s=args.duration, moving=1.0, environments=(env,),
                                  test_fraction=0.0, val_fraction=0.0, scenes_per_shard=max(1, args.scenes // 4),
                                  interpolate=interpolate)
            t = time.perf_counter()
            irs = scene_irs(config, client)
            built = time.perf_counter() - t
            shutil.rmtree(work / "out", ignore_errors=True)
            t = time.perf_counter()
            summary = render_scenes(refs, work / "out", config, client=client)
            wall = time.perf_counter() - t
            scenes_per_s = summary.samples / wall
            rtf = wall / (summary.samples * args.duration)

            _, irset, _ = next(iter(irs.values()))
            lookup = Lookup(irset, Interpolator(irset) if interpolate else None)
            pool: dict = {}
            by_id = {r.clip_id: r for r in refs}
            for r in refs:
                pool.setdefault(r.category, []).append(r.clip_id)
            sounds = {}

            def length_of(c):
                if c not in sounds:
                    sounds[c] = load_event(by_id[c], config.policy, int(min(config.max_event_s, args.duration) * FS))[0]
                return len(sounds[c])

            scenes = [draw_scene(f"bench-{i}", config, pool, length_of) for i in range(args.scenes)]
            n = config.n_samples
            t = time.perf_counter()
            fast = [mix(ev, sounds.__getitem__, lookup, n) for ev in scenes]
            t_fast = (time.perf_counter() - t) / len(scenes)
            t = time.perf_counter()
            slow = [naive_mix(ev, sounds.__getitem__, lookup, n) for ev in scenes]
            t_slow = (time.perf_counter() - t) / len(scenes)
            diff = max(float(np.abs(a - b).max()) for a, b in zip(fast, slow))
            print(f"| {env}{', interpolated' if interpolate else ''} | {scenes_per_s:.2f} | {rtf:.4f} | {t_fast:.3f} | {t_slow:.3f} | {t_slow / t_fast:.1f}x | "
                  f"{diff:.1e} |  (IRs ready in {built:.1f} s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
