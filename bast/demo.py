"""The whole pipeline on the procedural corpus, as `bast-cli demo` runs it.

    result = run_demo("bast-demo")
    print(result.test["ad_deg"], result.page)

Every stage resumes: running it again finishes what a killed run left and redoes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class Progress:
    """What the demo reports as it goes; the CLI draws it, a library caller may ignore it."""

    def stage(self, name: str) -> None: ...

    def on_start(self, total: int, resumed: int) -> None: ...

    def on_shard(self, info, planned: int) -> None: ...

    def on_step(self, done: int, total: int) -> None: ...

    def on_epoch(self, row: dict) -> None: ...


@dataclass
class DemoResult:
    page: Path  # the report's index.html
    run_dir: Path
    test: dict  # the run's eval/test.json
    broadband_noise_ad_deg: float  # mean AD over the white, pink and brown noise bursts


def run_demo(out, *, sounds: int = 290, minutes: float = 4.5, seed: int = 0, workers: int | None = None,
             progress: Progress | None = None) -> DemoResult:
    """Spatialize `sounds` procedural sounds, featurize them, train the tiny BAST preset
    and build the report, all under `out`."""
    from bast.corpora.procedural import DefaultCorpus
    from bast.model.config import preset
    from bast.model.train import train
    from bast.pipeline import cluster
    from bast.pipeline.featurize import featurize
    from bast.pipeline.spatialize import SpatializeConfig, spatialize
    from bast.report.build import build_report

    p = progress or Progress()
    out = Path(out)
    stage1, stage2, run_dir, report_dir = out / "stage1", out / "stage2", out / "run", out / "report"
    with cluster.open_client(workers, None) as client:
        p.stage("1/4 spatialize")
        refs = DefaultCorpus(n_clips=sounds, seed=seed).list_clips()
        spatialize(refs, stage1, SpatializeConfig(seed=seed), client=client, on_start=p.on_start,
                   source={"recipe": "default", "sounds": sounds, "seed": seed}, on_shard=p.on_shard)
        p.stage("2/4 featurize")
        featurize(stage1, stage2, client=client, on_start=p.on_start, on_shard=p.on_shard)
    p.stage("3/4 train")
    if not (run_dir / "eval" / "test.json").exists():
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        train(stage2, run_dir, preset("tiny", seed=seed, max_minutes=minutes), resume=resume,
              on_epoch=p.on_epoch, on_step=p.on_step)
    p.stage("4/4 report")
    page, _ = build_report([run_dir], report_dir)
    test = json.loads((run_dir / "eval" / "test.json").read_text())
    noise = [v["ad_deg"] for k, v in test["by_category"].items() if k.endswith("_noise") and k != "bandpass_noise"]
    return DemoResult(page, run_dir, test, float(np.mean(noise)) if noise else float("nan"))
