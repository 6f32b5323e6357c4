"""The whole pipeline on the procedural corpus, as `bast-cli demo` runs it.

    result = run_demo("bast-demo")
    print(result.runs["bast"]["ad_deg"], result.page)

Renders the sounds, featurizes them (log power and interaural phase), trains the tiny BAST
and the mlp baseline (time-averaged power and interaural phase) for a fixed number of
epochs, and builds one report of both. No step depends on the wall clock: the same seed
gives bitwise the same figures on the same machine; another machine (other CPU, BLAS or
torch build) lands within the spread between seeds (README, docs/performance.md). Without
espeak-ng the corpus has no speech, which the demo says and the manifest records. Every
stage resumes: running it again finishes what a killed run left and redoes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bast import options

# Fewer sounds than this leave the 10 % test and 25 % validation shares empty; more than
# this is not a demo.
MIN_SOUNDS, MAX_SOUNDS = 10, 100_000


class Progress:
    """What the demo reports as it goes; the CLI draws it, a library caller may ignore it."""

    def stage(self, name: str) -> None: ...

    def note(self, text: str) -> None: ...

    def on_start(self, total: int, resumed: int) -> None: ...

    def on_shard(self, info, planned: int) -> None: ...

    def on_step(self, done: int, total: int) -> None: ...

    def on_epoch(self, row: dict) -> None: ...


# What the demo trains: run folder name -> (model, settings over its tiny preset).
MODELS = {
    "bast": ("bast", {"features": ("logpower", "phase")}),  # the paper's model at CPU size, with the (clip-averaged) phase
    "mlp": ("mlp", {"features": ("logpower", "phase")}),  # Tang et al. 2022 with interaural phase
}


@dataclass
class DemoResult:
    page: Path  # the report's index.html
    run_dirs: dict[str, Path]
    runs: dict[str, dict]  # each run's eval/test.json
    broadband_noise_ad_deg: dict[str, float]  # per run: mean AD over white, pink and brown noise bursts


def run_demo(out, *, sounds: int = 290, seed: int = 0, workers: int | None = None,
             progress: Progress | None = None) -> DemoResult:
    """Spatialize `sounds` procedural sounds, featurize them, train the tiny BAST preset
    and the mlp baseline, and build the report, all under `out`."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.model.runs.config import preset
    from bast.model.train import train
    from bast.pipeline.stage import cluster
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.render.spatialize import SpatializeConfig, spatialize
    from bast.report.build import build_report

    options.count(sounds, "--sounds", MIN_SOUNDS, MAX_SOUNDS)
    options.seed(seed)
    options.workers(workers)
    out = options.output_dir(out, "--out")
    p = progress or Progress()
    stage1, stage2, report_dir = out / "stage1", out / "stage2", out / "report"
    with cluster.open_client(workers, None) as client:
        p.stage("1/4 spatialize")
        corpus = DefaultCorpus(n_clips=sounds, seed=seed)
        if corpus.note():  # e.g. no espeak-ng: no speech, so other figures than the README's
            p.note(corpus.note())
        spatialize(corpus.list_clips(), stage1, SpatializeConfig(seed=seed), client=client, on_start=p.on_start,
                   source={"recipe": "default", "sounds": sounds, "seed": seed, **corpus.manifest_info()},
                   on_shard=p.on_shard)
        p.stage("2/4 featurize")
        featurize(stage1, stage2, features=("logpower", "phase"), client=client, on_start=p.on_start, on_shard=p.on_shard)
    run_dirs, runs, noise = {}, {}, {}
    for k, (name, (arch, settings)) in enumerate(MODELS.items()):
        run_dir = run_dirs[name] = out / f"run-{name}"
        p.stage(f"3/4 train {name} ({k + 1}/{len(MODELS)})")
        if not (run_dir / "eval" / "test.json").exists():
            resume = (run_dir / "checkpoints" / "last.pt").exists()
            train(stage2, run_dir, preset("tiny", arch=arch, seed=seed, **settings),
                  resume=resume, on_epoch=p.on_epoch, on_step=p.on_step)
        runs[name] = json.loads((run_dir / "eval" / "test.json").read_text())
        broadband = [v["ad_deg"] for c, v in runs[name]["by_category"].items()
                     if c.endswith("_noise") and c != "bandpass_noise"]
        noise[name] = float(np.mean(broadband)) if broadband else float("nan")
    p.stage("4/4 report")
    p.on_start(1, 0)  # one step, not the last stage's count
    page, _ = build_report(list(run_dirs.values()), report_dir)
    p.on_shard(None, 1)
    return DemoResult(page, run_dirs, runs, noise)
