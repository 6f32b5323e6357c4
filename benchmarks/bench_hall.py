"""Lecture-hall BRIR bank: build time, cache load time, and the naive alternative.

    python benchmarks/bench_hall.py

The naive way is pyroomacoustics' own hybrid simulation with one omni microphone per ear
(0.18 m apart), for the same 36 sources: what one would write first. It is timed on the same
machine in the same run, and its late-tail coherence is measured to show why bast does not
use it (SPEC 6 trap a).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

import numpy as np
import pyroomacoustics as pra

from bast.pipeline.irs import acoustics
from bast.pipeline.irs import hall
from bast.pipeline.irs.sources import DEFAULT_AZIMUTHS, IRSources

FS = 16000


def naive_pra_binaural(spec: hall.HallSpec, azimuths) -> np.ndarray:
    pra.random.seed(spec.seed)
    room = pra.ShoeBox(list(spec.size_m), fs=FS, max_order=3,
                       materials=pra.Material(spec.eyring_absorption(), spec.scattering), ray_tracing=True)
    for s in spec.source_positions(azimuths):
        room.add_source(list(s))
    ahead, left = spec._head_axes()
    ears = np.stack([np.asarray(spec.listener_m) + 0.09 * left, np.asarray(spec.listener_m) - 0.09 * left], axis=1)
    room.add_microphone_array(ears)
    room.compute_rir()
    n = min(len(room.rir[m][s]) for m in range(2) for s in range(len(azimuths)))
    return np.array([[room.rir[m][s][:n] for m in range(2)] for s in range(len(azimuths))])


def main() -> None:
    spec = hall.HallSpec()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["BAST_CACHE"] = cache
        t = time.perf_counter()
        bank = IRSources().irset("hall", DEFAULT_AZIMUTHS)
        build = time.perf_counter() - t
        t = time.perf_counter()
        IRSources().irset("hall", DEFAULT_AZIMUTHS)
        load = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_pra_binaural(spec, DEFAULT_AZIMUTHS)
    naive_s = time.perf_counter() - t

    def coherence(pairs, fc):
        return float(np.mean([acoustics.interaural_coherence(p, FS, fc) for p in pairs]))

    print(f"bast bank, 36 azimuths, built:      {build:6.2f} s")
    print(f"bast bank, loaded from cache:       {load * 1000:6.1f} ms")
    print(f"naive pyroomacoustics 2-mic bank:   {naive_s:6.2f} s  (bast / naive time: {build / naive_s:.2f})")
    for fc in (125.0, 500.0, 2000.0):
        print(f"tail IACC at {int(fc):4d} Hz: bast {coherence(bank.ir, fc):.2f}, naive {coherence(naive, fc):.2f}"
              f"  (a diffuse field at a head: ~0.9 at 125 Hz, < 0.3 above 1 kHz)")


if __name__ == "__main__":
    main()
