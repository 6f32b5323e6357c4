"""The one way a stage runs: lock, pin, resume, execute, record.

A stage (Stage 1 `spatialize`, Stage 2 `featurize`, and whatever comes next) brings a
`Stage`: its parameters, a planning function and a task function. `run_stage` does the
rest, the same way for every stage:

1. take the output directory's lock (`DirectoryLock`: one run per directory);
2. pin the parameters (`params.json`; a directory made with others is refused);
3. plan the tasks (each task writes one or more shards) and find the shards a killed run
   already finished, so only the missing ones are redone;
4. run the tasks on a dask client, or in this process when the client is None;
5. turn shard failures into one error (the finished shards stay for the re-run);
6. write `failures.jsonl` and, last, `manifest.json`.

Shards are written atomically by the task (`shards.write_shard`), so whatever state a
killed run leaves, a shard file that exists is complete.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from bast.errors import StageError
from bast.pipeline.stage import cluster
from bast.pipeline.stage.shards import (DirectoryLock, ShardInfo, finished_shard, prepare_output, write_failures,
                                  write_manifest)


@dataclass
class StageSummary:
    """What a stage run did; the CLI prints it."""

    out_dir: str
    samples: int = 0  # samples in the finished output
    clips: int = 0  # source clips rendered (Stage 1)
    shards_written: int = 0  # by this run
    shards_resumed: int = 0  # found finished from an earlier run
    failures: list = field(default_factory=list)  # skipped inputs, with reasons
    warnings: dict = field(default_factory=dict)  # warning text -> count
    seconds: float = 0.0
    errors: list = field(default_factory=list)  # tasks that failed (the run then raises)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


@dataclass
class Stage:
    """What a stage brings to `run_stage`.

    `plan(out_dir)` runs under the lock after the parameters are pinned (it may write
    files the tasks need) and returns the tasks. `shards_of(task)` lists the
    (shard index, planned samples) pairs a task writes; `pending(task, todo)` returns the
    task cut down to the shard indices in `todo`, or None when none is left. `run_task`
    runs on a worker and returns the `ShardInfo`s it wrote. `totals(summary, shards)`
    fills the summary from all shards; `manifest_extra(summary, shards)` adds the stage's
    own totals to the manifest; `manifest_keys(summary, shards)` adds keys at the
    manifest's top level (what the data set holds: its directions, its classes).
    """

    name: str
    params: dict
    plan: Callable[[Path], Sequence]
    run_task: Callable[[object], list[ShardInfo]]
    shards_of: Callable[[object], list[tuple[int, int]]]
    describe: Callable[[object], str]
    pending: Callable[[object, set[int]], object | None] | None = None
    totals: Callable[[StageSummary, list[ShardInfo]], None] | None = None
    manifest_extra: Callable[[StageSummary, list[ShardInfo]], dict] = lambda summary, shards: {}
    manifest_keys: Callable[[StageSummary, list[ShardInfo]], dict] = lambda summary, shards: {}
    key_prefix: str = ""


def run_stage(stage: Stage, out_dir, *, client=None, overwrite: bool = False,
              on_start: Callable[[int, int], None] | None = None,
              on_shard: Callable[[ShardInfo, int], None] | None = None) -> StageSummary:
    """Run `stage` into `out_dir`, resuming what an earlier run of the same parameters
    finished. `on_start(total_samples, resumed_samples)` and `on_shard(info,
    planned_samples)` report progress."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    summary = StageSummary(out_dir=str(out_dir))
    with DirectoryLock(out_dir):
        prepare_output(out_dir, stage.params, overwrite)
        tasks = list(stage.plan(out_dir))
        planned = {i: n for t in tasks for i, n in stage.shards_of(t)}
        results = {i: info for i in planned if (info := finished_shard(out_dir, i)) is not None}
        todo_idx = set(planned) - set(results)
        pending = stage.pending or (lambda t, todo: t if all(i in todo for i, _ in stage.shards_of(t)) else None)
        todo = [p for t in tasks if (p := pending(t, todo_idx)) is not None]
        summary.shards_resumed = len(results)
        if on_start:
            on_start(sum(planned.values()), sum(planned[i] for i in results))

        def done(task, infos):
            for info in infos:
                results[info.index] = info
                summary.shards_written += 1
                if on_shard:
                    on_shard(info, planned[info.index])

        prefix = stage.key_prefix or f"bast-{stage.name}"
        summary.errors = cluster.execute(stage.run_task, todo, client, done,
                                         key=lambda t: f"{prefix}-{stage.shards_of(t)[0][0]:05d}",
                                         name=stage.describe)
        if summary.errors:
            summary.seconds = time.perf_counter() - t0
            raise StageError(f"{len(summary.errors)} shard(s) failed; re-run the same command to retry them:\n  "
                             + "\n  ".join(summary.errors))
        shards = [results[i] for i in sorted(results)]
        (stage.totals or count_totals)(summary, shards)
        write_failures(out_dir, summary.failures)
        write_manifest(out_dir, stage.name, stage.params, shards, stage.manifest_extra(summary, shards),
                       stage.manifest_keys(summary, shards))
    summary.seconds = time.perf_counter() - t0
    return summary


def count_totals(summary: StageSummary, shards: list[ShardInfo]) -> None:
    """Samples, failures and warnings summed over shards (each shard its own inputs)."""
    warnings: Counter = Counter()
    for s in shards:
        summary.samples += s.samples
        summary.clips += s.clips
        summary.failures += s.failures
        warnings.update(s.warnings)
    summary.warnings = dict(warnings)
