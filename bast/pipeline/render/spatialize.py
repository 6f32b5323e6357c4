"""Stage 1: mono clips to binaural clips at every direction in every environment.

    refs = FileCorpus("sounds/").list_clips()          # or DefaultCorpus(...).list_clips()
    with open_client(workers=2) as client:
        summary = spatialize(refs, "out/stage1", SpatializeConfig(), client=client)

Directions: the grid of `azimuths` x `elevations` (elevation 0 by default), or an explicit
list of (azimuth, elevation) pairs (`directions`: every direction a head measured, or a
CSV); each is the head's own nearest direction within `tolerance_deg`, or with
`interpolate` an HRIR interpolated at exactly that direction (docs/sphere.md).

The plan is deterministic from the clip list and the parameters: clips are split into
train/val/test by source clip (stratified by category, seeded), grouped into shards of a
few thousand samples, one shard per (split, condition, group of clips). A condition is an
environment class (`env`: anechoic or hall, any reverberant room), a head (`head`: an HRIR
set) and a room (`room`): bast/pipeline/render/conditions.py. Each group of clips is one
task: it loads its clips, applies the clip policy, renders them in each condition of its
split, adds noise when asked (bast/pipeline/render/noise.py) and writes one shard per
condition. A re-run with the same parameters skips the shards already written. Designing
studies with several heads, rooms and SNRs: docs/transfer-study.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bast import __version__
from bast.conventions import CLIP_SAMPLES, FS
from bast.datasets.base import ClipRef, load_clip
from bast.errors import ClipError
from bast.pipeline.render import noise as noise_mod
from bast.pipeline.render.clips import ClipPolicy, prepare
from bast.pipeline.render.conditions import (Condition, SpatializeConfig, assign_splits, condition_irs, conditions_record,
                                             layout)
from bast.pipeline.render.outputs import check_output, summarise_shards, write_irs
from bast.pipeline.render.static import Renderer
from bast.pipeline.stage.runner import Stage, StageSummary, run_stage
from bast.pipeline.stage.shards import ENV_NAMES, SPLITS, ShardInfo, StageError, shard_name, write_shard
from bast.pipeline.irs.sofa import IRSet, read_sofa


# Fields added after the first release: left out of params.json at their defaults, so an
# output made before them still resumes.
_NEW_FIELDS = {"test_hrir": (), "rooms": 0, "test_rooms": 0, "snr_db": None, "elevations": (0.0,),
               "directions": None, "interpolate": False}


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs for one group of clips: paths and small specs, no
    arrays. The group is rendered in each condition of `shards` ((index, Condition, IR file)
    triples), one shard per condition, so each clip is loaded once."""

    split: str
    refs: tuple[ClipRef, ...]
    shards: tuple[tuple[int, Condition, str], ...]
    policy: ClipPolicy
    out_dir: str
    attrs: tuple = ()  # root attributes of the shards, as (key, value) pairs
    noise: tuple = ()  # (kind, (snr low, snr high), seed, azimuths, elevations), or () for none


# --------------------------------------------------------------------------- planning


def shard_tasks(refs: list[ClipRef], config: SpatializeConfig, ir_paths: dict[str, str], out_dir: Path,
                attrs: dict, conditions_by_split: dict | None = None) -> list[ShardTask]:
    """Shard tasks: for each split, the clips in a seeded order, in groups of
    samples_per_shard / directions, one task per group, one shard per condition of the split."""
    splits = assign_splits(refs, config.seed, config.val_fraction, config.test_fraction)
    conditions_by_split = conditions_by_split or layout(config).splits
    az, el = config.grid()
    per_shard = max(1, config.samples_per_shard // len(az))
    rng = np.random.default_rng([config.seed, 0x5B2])
    by_id = {r.clip_id: r for r in refs}
    noise = ((config.noise, config.snr_db, config.seed, tuple(az.tolist()), () if config.flat else tuple(el.tolist()))
             if config.snr_db is not None else ())
    tasks: list[ShardTask] = []
    index = 0
    for split in SPLITS:
        ids = sorted(c for c, s in splits.items() if s == split)
        ids = [ids[i] for i in rng.permutation(len(ids))]  # shards mix the kinds of sound
        for start in range(0, len(ids), per_shard):
            group = tuple(by_id[c] for c in ids[start:start + per_shard])
            shards = tuple((index + k, cond, ir_paths[cond.key]) for k, cond in enumerate(conditions_by_split[split]))
            index += len(shards)
            tasks.append(ShardTask(split, group, shards, config.policy, str(out_dir), tuple(sorted(attrs.items())),
                                   noise))
    return tasks


# --------------------------------------------------------------------------- one shard (runs on a worker)


def _renderer(ir_path: str) -> tuple[Renderer, np.ndarray, np.ndarray]:
    """The renderer of an IR file and its azimuths and elevations, kept for the worker's lifetime:
    the IR spectra are computed once per worker, not once per shard."""
    stat = os.stat(ir_path)
    # One per thread too: a Renderer reuses its output buffer, and `dask worker` on an
    # existing cluster runs several threads per process.
    return _cached_renderer(ir_path, stat.st_mtime_ns, stat.st_size, threading.get_ident())


@functools.lru_cache(maxsize=64)
def _cached_renderer(ir_path: str, mtime_ns: int, size: int, thread: int) -> tuple[Renderer, np.ndarray, np.ndarray]:
    irs = read_sofa(ir_path)
    return Renderer(irs.ir, n_out=CLIP_SAMPLES), irs.azimuth_deg.astype(np.float32), irs.elevation_deg.astype(np.float32)


_local = threading.local()


def _output(shape: tuple) -> np.ndarray:
    """One reused output buffer per thread for every renderer: the shards of a group are
    rendered and written one after another, and a buffer per renderer (one per condition)
    would hold 100-200 MB each (see Renderer._buffer)."""
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
        buf = _local.buffer = np.empty(shape, dtype=np.float32)
    return buf[:shape[0]]


def run_shard(task: ShardTask) -> list[ShardInfo]:
    """Load and prepare the clips of one group, render them in each condition (adding
    noise when the task asks), and write one shard per condition."""
    t0 = time.perf_counter()
    clips, ids, categories, failures, warnings = [], [], [], [], Counter()
    for ref in task.refs:
        try:
            audio, fs = load_clip(ref)
            pieces, notes = prepare(audio, fs, task.policy)
        except ClipError as exc:
            failures.append({"clip_id": ref.clip_id, "path": ref.locator, "reason": str(exc)})
            continue
        except Exception as exc:  # an unforeseen library error is one clip's problem, not the run's
            failures.append({"clip_id": ref.clip_id, "path": ref.locator,
                             "reason": f"unexpected error: {type(exc).__name__}: {exc}"})
            continue
        warnings.update(re.sub(r"\d+(\.\d+)?", "N", note) for note in notes)  # count kinds, not values
        for k, piece in enumerate(pieces):
            clips.append(piece)
            ids.append(ref.clip_id if len(pieces) == 1 else f"{ref.clip_id}#{k}")
            categories.append(ref.category)
    mono = np.stack(clips) if clips else np.zeros((0, CLIP_SAMPLES), dtype=np.float32)

    infos = []
    for index, cond, ir_path in task.shards:
        renderer, azimuths, elevations = _renderer(ir_path)
        n_az = len(azimuths)  # directions
        audio = renderer.render(mono, out=_output((len(clips), n_az, 2, renderer.n_out))).reshape(-1, 2, renderer.n_out)
        n = audio.shape[0]
        if task.noise:
            kind, snr_range, seed, grid, grid_el = task.noise
            bank = noise_mod.noise_bank(kind, cond.hrir, grid, seed, grid_el)
            snr = noise_mod.add_noise(audio, ids, n_az, kind=kind, bank=bank, snr_range=snr_range, seed=seed,
                                      condition=f"{cond.head}/{cond.room}")
        else:
            snr = np.full(n, noise_mod.NO_NOISE, dtype=np.float32)
        arrays = {
            "audio": audio,
            "azimuth_deg": np.tile(azimuths, len(clips)),
            "elevation_deg": np.tile(elevations, len(clips)),
            "env": np.full(n, ENV_NAMES.index(cond.env), dtype=np.uint8),
            "clip_id": np.repeat(np.array(ids, dtype=object), n_az),
            "split": np.full(n, task.split, dtype=object),
            "category": np.repeat(np.array(categories, dtype=object), n_az),
            "head": np.full(n, cond.head, dtype=object),
            "room": np.full(n, cond.room, dtype=object),
            "snr_db": snr,
        }
        attrs = dict(task.attrs)
        attrs.update(env_names=json.dumps(list(ENV_NAMES)), environment=cond.env, split=task.split, head=cond.head,
                     room=cond.room)
        info = ShardInfo(index=index, path=f"shards/{shard_name(index)}", split=task.split, env=cond.env,
                         samples=n, clips=len(clips), sha256="", failures=failures, warnings=dict(warnings),
                         seconds=time.perf_counter() - t0,  # loading + rendering, before writing
                         head=cond.head, room=cond.room)
        infos.append(write_shard(Path(task.out_dir), info, arrays, attrs))
        t0 = time.perf_counter()
    return infos


# --------------------------------------------------------------------------- the stage


def _ir_digest(irs: IRSet) -> str:
    h = hashlib.sha256(np.ascontiguousarray(irs.ir).tobytes())
    h.update(np.asarray(irs.azimuth_deg, dtype=np.float64).tobytes())
    if np.any(np.round(irs.elevation_deg, 6)):  # sets on the horizontal plane keep the digest they had
        h.update(np.asarray(irs.elevation_deg, dtype=np.float64).tobytes())
    return h.hexdigest()


def stage_params(refs: list[ClipRef], config: SpatializeConfig, condition_sets: dict, source: dict) -> dict:
    """The parameters that determine the output; a re-run must match them to resume."""
    clips = hashlib.sha256("\n".join(f"{r.clip_id}\t{r.recipe}\t{r.locator}\t{r.category}\t{r.split}"
                                     for r in refs).encode()).hexdigest()
    params = dataclasses.asdict(config)
    for name, default in _NEW_FIELDS.items():
        if params[name] == default or (isinstance(default, tuple) and not params[name]):
            del params[name]
    if "snr_db" not in params:
        del params["noise"]
    if not (config.rooms or config.test_rooms):
        del params["room_ranges"]
    params.update(
        stage="spatialize",
        fs=FS,
        source=source,
        clips=len(refs),
        clips_sha256=clips,
        ir_sha256={key: _ir_digest(s) for key, (_, s, _) in condition_sets.items()},
        bast_version=__version__,
    )
    return json.loads(json.dumps(params))  # plain JSON types, as read back from params.json


def spatialize(refs: list[ClipRef], out_dir, config: SpatializeConfig = SpatializeConfig(), *,
               client=None, source: dict | None = None, overwrite: bool = False,
               on_start: Callable[[int, int], None] | None = None,
               on_shard: Callable[[ShardInfo, int], None] | None = None,
               splits: tuple[str, ...] | None = None) -> StageSummary:
    """Render `refs` into `out_dir` (the shard contract of docs/conventions.md); resumable.

    `client`: a dask Client (None runs in this process). `on_start(total_samples,
    resumed_samples)` and `on_shard(info, planned_samples)` report progress. `splits`:
    render only the shards of these splits (their shard numbers as in a full run); ()
    writes the plan alone (`--plan-only`: parameters, IR banks, manifest, no audio), which
    training on the fly draws from and a later full run into the same folder completes.
    """
    if not refs:
        raise StageError("no input clips found")
    check_output(out_dir, refs, config, source or {})
    the_layout = layout(config)
    condition_sets = condition_irs(config, client, the_layout)
    params = stage_params(refs, config, condition_sets, source or {})
    n_dir = config.n_directions
    ir_paths: dict[str, str] = {}

    def plan_tasks(out_dir: Path) -> list[ShardTask]:
        ir_paths.update(write_irs(out_dir, condition_sets))
        attrs = {"stage": "spatialize", "fs": FS, "seed": config.seed, "bast_version": __version__,
                 "params": json.dumps(params, sort_keys=True)}
        tasks = shard_tasks(refs, config, ir_paths, out_dir, attrs, the_layout.splits)
        return [t for t in tasks if splits is None or t.split in splits]

    def manifest_extra(summary: StageSummary, shards: list[ShardInfo]) -> dict:
        first = next(iter(condition_sets.values()))[1]
        return {"clips_rendered": summary.clips, "inputs": len(refs), "inputs_failed": len(summary.failures),
                "warnings": summary.warnings,
                "azimuths_deg": [float(a) for a in first.azimuth_deg],
                **conditions_record(the_layout, ir_paths, out_dir, config)}

    def manifest_keys(summary: StageSummary, shards: list[ShardInfo]) -> dict:
        first = next(iter(condition_sets.values()))[1]
        failed = {f["clip_id"] for f in summary.failures}
        return {"directions": [[float(a), float(e)] for a, e in zip(first.azimuth_deg, np.round(first.elevation_deg, 6))],
                "categories": sorted({r.category for r in refs if r.clip_id not in failed}),
                **({"plan_only": True} if splits == () else {"splits": sorted(splits)} if splits else {})}

    out_dir = Path(out_dir)
    stage = Stage(
        name="spatialize", params=params, plan=plan_tasks, run_task=run_shard,
        shards_of=lambda t: [(i, len(t.refs) * n_dir) for i, _, _ in t.shards],
        # A group is redone only in the conditions whose shard is missing.
        pending=lambda t, todo: dataclasses.replace(t, shards=kept) if (
            kept := tuple(s for s in t.shards if s[0] in todo)) else None,
        describe=lambda t: "shard " + ", ".join(f"{i} ({t.split}, {c.env}, {c.head}, {c.room})" for i, c, _ in t.shards),
        totals=summarise_shards, manifest_extra=manifest_extra, manifest_keys=manifest_keys,
        key_prefix=f"bast-spatialize-{params['clips_sha256'][:8]}")
    return run_stage(stage, out_dir, client=client, overwrite=overwrite, on_start=on_start, on_shard=on_shard)
