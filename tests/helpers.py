"""Helpers shared by test modules (a plain module: tests import it; conftest.py keeps only
fixtures). tests/ is on sys.path through pyproject's `pythonpath`."""

import hashlib
import subprocess
import sys
from pathlib import Path

SELD_KINDS = ("white_noise", "harmonic", "clicks")


def render_seld_scenes(out, *, count: int, duration_s: float, events: tuple, scenes_per_shard: int,
                       sounds: int | None = None, features=("logpower",), **settings):
    """Featurized anechoic scenes of 3 procedural classes (SELD_KINDS), up to 2 events at
    once, half of them moving, on a 30 degree grid (the SELD tests' data): out/s2.
    With `sounds`, that many sounds of those classes listed as `bast-cli scenes --categories`
    lists them, and the source recorded (a recipe for training on the fly); `settings`
    replace ScenesConfig fields (environments, snr_db, ...)."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.datasets.sources import resolve_source
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.irs.sources import parse_direction_options
    from bast.pipeline.render.scenes import ScenesConfig, render_scenes

    source = None
    if sounds is None:
        refs = [r for r in DefaultCorpus(n_clips=60, seed=3, speech=False).list_clips() if r.category in SELD_KINDS]
    else:
        found = resolve_source("default", sounds=sounds, seed=3, speech=False, categories=",".join(SELD_KINDS))
        refs, source = found.refs, found.info
    config = ScenesConfig(**{"count": count, "duration_s": duration_s, "events": events, "max_overlap": 2,
                             "moving": 0.5, "speed": (30, 90), "directions": parse_direction_options("0:360:30"),
                             "environments": ("anechoic",), "seed": 3, "scenes_per_shard": scenes_per_shard,
                             "test_fraction": 0.25, **settings})
    render_scenes(refs, out / "s1", config, source=source)
    featurize(out / "s1", out / "s2", features=features)
    return out / "s2"



# A command killed at a chosen point of its own progress, not by a timer racing it: the CLI
# runs in a child process (`python -c`) whose stage or training loop reports progress
# through the library's own callbacks (on_shard, on_epoch/on_step); at the chosen point the
# callback sends SIGKILL to the child's process group (the command and any dask workers it
# started), as `kill -9` would. The library is used as it is; only the callback is wrapped.
_KILL_AT_SHARD = """
import os, signal, sys
import {module} as stage_module
from bast.cli import main

real_run_stage = stage_module.run_stage

def run_stage(*args, on_shard=None, **kwargs):
    done = []

    def on_shard_then_kill(info, planned):
        if on_shard:
            on_shard(info, planned)
        done.append(info)
        if len(done) == {shards}:
            os.killpg(os.getpgrp(), signal.SIGKILL)

    return real_run_stage(*args, on_shard=on_shard_then_kill, **kwargs)

stage_module.run_stage = run_stage
sys.argv = ["bast-cli", *{argv!r}]
main()
"""

_KILL_AT_STEP = """
import os, signal, sys
import bast.model.train as training
from bast.cli import main

real_train = training.train

def train(*args, on_epoch=None, on_step=None, **kwargs):
    epochs = []

    def on_epoch_counted(row):
        if on_epoch:
            on_epoch(row)
        epochs.append(row["epoch"])

    def on_step_then_kill(done, total):
        if on_step:
            on_step(done, total)
        if len(epochs) == {epoch} - 1 and done == {step}:
            os.killpg(os.getpgrp(), signal.SIGKILL)

    return real_train(*args, on_epoch=on_epoch_counted, on_step=on_step_then_kill, **kwargs)

training.train = train
sys.argv = ["bast-cli", *{argv!r}]
main()
"""


def cli_killed_at_shard(module: str, shards: int, argv: list, **run_kwargs):
    """Run `bast-cli ARGV` in a child process and SIGKILL it (and its workers) once the
    stage in `module` (whose `run_stage` the command calls) has reported `shards` shards
    done. Returns the CompletedProcess; its returncode is -9 when the kill happened."""
    code = _KILL_AT_SHARD.format(module=module, shards=shards, argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, "-c", code], start_new_session=True, capture_output=True, text=True,
                          **run_kwargs)


def cli_killed_at_step(epoch: int, step: int, argv: list, **run_kwargs):
    """Run `bast-cli train ...` (ARGV) in a child process and SIGKILL it at training step
    `step` of epoch `epoch` (1-based), after the epochs before it were saved."""
    code = _KILL_AT_STEP.format(epoch=epoch, step=step, argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, "-c", code], start_new_session=True, capture_output=True, text=True,
                          **run_kwargs)


def snapshot(*paths) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), to show nothing changed."""
    out = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file() and q.name != ".lock")
        out.update({str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    return out


def cli(*args) -> tuple[int, str]:
    """The CLI in this process: (exit code, its output on one line). A traceback (an exception
    other than the exit) is raised, so that it fails the case as what it is."""
    from typer.testing import CliRunner

    from bast.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join(result.output.split())


def refused(code: int, output: str, *words: str) -> None:
    """An expected failure: exit 1, one `error:` line and no traceback, naming `words`."""
    assert code == 1, output
    assert "error:" in output and "Traceback" not in output, output
    for w in words:
        assert w in output, f"{w!r} not in: {output}"


def small_run(root: Path) -> Path:
    """root/s1 (8 procedural sounds x 4 azimuths, anechoic), root/s2 and a one-epoch tiny
    run root/run: the data the hostile-input suites attack."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.model.runs.config import preset
    from bast.model.train import train
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.render.spatialize import SpatializeConfig, spatialize

    refs = DefaultCorpus(n_clips=8, seed=3, speech=False).list_clips()
    spatialize(refs, root / "s1", SpatializeConfig(azimuths=(0.0, 90.0, 180.0, 270.0), environments=("anechoic",),
                                                  seed=3, samples_per_shard=8))
    featurize(root / "s1", root / "s2")
    train(root / "s2", root / "run", preset("tiny", epochs=1, batch_size=4, seed=3))
    return root


class _Killed(Exception):
    pass


def killed_after_epoch_1_and_resumed(train_fn, data, root: Path, cfg):
    """Train `cfg` on `data` whole into root/whole, and again into root/cut killed after
    its first epoch (exactly one metrics row left) then resumed. Returns (whole, resumed):
    the two runs' results; the caller compares their checkpoints and metrics."""
    from bast.model.runs.checkpoint import read_metrics

    whole = train_fn(data, root / "whole", cfg)

    def kill_after_first(row):
        if row["epoch"] == 1:
            raise _Killed

    try:
        train_fn(data, root / "cut", cfg, on_epoch=kill_after_first)
    except _Killed:
        pass
    else:
        raise AssertionError("the run was not killed after its first epoch")
    assert len(read_metrics(root / "cut")) == 1
    return whole, train_fn(data, root / "cut", cfg, resume=True)


def same_weights(run_a: Path, run_b: Path, checkpoint: str) -> bool:
    """Whether two runs' checkpoints (best.pt, last.pt) hold bitwise equal model weights."""
    import torch

    a = torch.load(run_a / "checkpoints" / checkpoint, weights_only=False)["model"]
    b = torch.load(run_b / "checkpoints" / checkpoint, weights_only=False)["model"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def split_pool(refs, config, split: str) -> dict[str, list[str]]:
    """Category -> the clip ids of `split` as Stage 1 splits `refs` (the pool a scene of
    that split draws its events from)."""
    from bast.pipeline.render.conditions import assign_splits

    splits = assign_splits(refs, config.seed, config.val_fraction, config.test_fraction)
    pool = {}
    for r in refs:
        if splits[r.clip_id] == split:
            pool.setdefault(r.category, []).append(r.clip_id)
    return pool
