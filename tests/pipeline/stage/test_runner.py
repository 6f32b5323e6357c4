"""The stage runner: a new stage is a plan and a task, and gets locking, pinning, resume,
failure reporting and the manifest from `run_stage`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bast.cli import app
from bast.errors import StageError
from bast.pipeline.stage.runner import Stage, run_stage
from bast.pipeline.stage.shards import ShardInfo, shard_name, write_shard


@dataclass(frozen=True)
class Task:
    index: int
    out_dir: str
    fail: bool = False


def _square(task: Task) -> list[ShardInfo]:
    """A toy stage: shard i holds the squares of 10 i .. 10 i + 9."""
    if task.fail:
        raise RuntimeError("disk on fire")
    values = np.arange(10 * task.index, 10 * task.index + 10) ** 2
    info = ShardInfo(index=task.index, path=f"shards/{shard_name(task.index)}", split="train", env="anechoic",
                     samples=len(values), clips=0, sha256="")
    return [write_shard(Path(task.out_dir), info, {"value": values}, {"stage": "squares"})]


def _stage(out: Path, failing=(), calls=None) -> Stage:
    def run(task):
        if calls is not None:
            calls.append(task.index)
        return _square(task)

    return Stage(name="squares", params={"stage": "squares", "n": 3},
                 plan=lambda out_dir: [Task(i, str(out_dir), i in failing) for i in range(3)],
                 run_task=run, shards_of=lambda t: [(t.index, 10)], describe=lambda t: f"shard {t.index}",
                 manifest_extra=lambda summary, shards: {"squares": True})


def test_a_new_stage_is_a_plan_and_a_task(tmp_path):
    with pytest.raises(StageError, match=r"(?s)1 shard\(s\) failed.*shard 1: RuntimeError: disk on fire"):
        run_stage(_stage(tmp_path, failing={1}), tmp_path)
    assert not (tmp_path / "manifest.json").exists()  # an unfinished output does not look finished
    calls: list[int] = []
    started = []
    summary = run_stage(_stage(tmp_path, calls=calls), tmp_path, on_start=lambda total, done: started.append((total, done)))
    assert calls == [1]  # only the failed shard is redone
    assert started == [(30, 20)]
    assert summary.shards_resumed == 2 and summary.shards_written == 1 and summary.samples == 30
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stage"] == "squares" and manifest["totals"]["squares"] and len(manifest["shards"]) == 3
    other = _stage(tmp_path)
    other.params = {"stage": "squares", "n": 4}
    with pytest.raises(StageError, match=r"other parameters \(changed: n\)"):
        run_stage(other, tmp_path)


def test_cli_prints_expected_failures_on_one_line_and_keeps_tracebacks_for_bugs(tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["featurize", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "is not Stage 1 output" in result.output and isinstance(result.exception, SystemExit)
    # A bug is not an expected failure: it keeps its exception (and so its traceback).
    import bast.pipeline.features.featurize as featurize

    monkeypatch.setattr(featurize, "read_stage1", lambda path: 1 / 0)
    result = runner.invoke(app, ["featurize", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)
