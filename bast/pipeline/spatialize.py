"""Stage 1: mono clips to binaural clips at every azimuth in every environment.

    refs = FileCorpus("sounds/").list_clips()          # or DefaultCorpus(...).list_clips()
    with open_client(workers=2) as client:
        summary = spatialize(refs, "out/stage1", SpatializeConfig(), client=client)

The plan is deterministic from the clip list and the parameters: clips are split into
train/val/test by source clip (stratified by category, seeded), grouped into shards of a
few thousand samples, one shard per (split, environment, group of clips). Each shard is one
task: it loads its clips, applies the clip policy, renders them and writes the shard. A
re-run with the same parameters skips the shards already written.
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
from bast.conventions import CLIP_SAMPLES, DEFAULT_AZIMUTHS, ENVIRONMENTS, FS
from bast.corpora.base import ClipRef, load_clip
from bast.errors import ClipError
from bast.pipeline.clips import ClipPolicy, prepare
from bast.pipeline.hall import HallSpec, save_bank
from bast.pipeline.irs import IRSources
from bast.pipeline.render import Renderer
from bast.pipeline.runner import Stage, StageSummary, run_stage
from bast.pipeline.shards import ENV_NAMES, SPLITS, ShardInfo, StageError, shard_name, write_shard
from bast.pipeline.sofa import IRSet, read_sofa, write_sofa



@dataclass(frozen=True)
class SpatializeConfig:
    azimuths: tuple[float, ...] = tuple(DEFAULT_AZIMUTHS.tolist())
    environments: tuple[str, ...] = ENVIRONMENTS
    policy: ClipPolicy = ClipPolicy()
    seed: int = 0
    val_fraction: float = 0.25  # of the training sounds (the paper's 75/25)
    test_fraction: float = 0.1  # of all sounds, used only when no sound is pinned to test
    samples_per_shard: int = 2500
    hrir: str | None = None  # SOFA HRIR set; None = bundled MIT KEMAR
    brir: str | None = None  # measured BRIR SOFA for the hall; None = simulated hall
    rt60_s: float = 0.8
    tolerance_deg: float = 0.0


@dataclass(frozen=True)
class ShardTask:
    """Everything one worker needs for one group of clips: paths and small specs, no
    arrays. The group is rendered in each environment of `shards` ((index, env, IR file)
    triples), one shard per environment, so each clip is loaded once."""

    split: str
    refs: tuple[ClipRef, ...]
    shards: tuple[tuple[int, str, str], ...]
    policy: ClipPolicy
    out_dir: str
    attrs: tuple = ()  # root attributes of the shards, as (key, value) pairs

    @property
    def samples_per_env(self) -> int:
        return len(self.refs)



# --------------------------------------------------------------------------- planning


def assign_splits(refs: list[ClipRef], seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Split by source clip: clip_id -> train/val/test, deterministic from the seed.

    Clips pinned to a split (a --test folder, a CSV split column) keep it. The others are
    shuffled within each category, so every kind of sound is in every split; a test share
    is drawn only when no clip is pinned to test.
    """
    out = {r.clip_id: r.split for r in refs if r.split}
    unknown = {s for s in out.values() if s not in SPLITS}
    if unknown:
        raise StageError(f"unknown split name(s) {sorted(unknown)}; use train, val or test")
    draw_test = "test" not in out.values()
    rng = np.random.default_rng([seed, 0x5B1])
    free: dict[str, list[str]] = {}
    for r in refs:
        if not r.split:
            free.setdefault(r.category, []).append(r.clip_id)
    # Deal the clips out category by category (each shuffled, the categories in a shuffled
    # order), so that any leading share of the deal is stratified, however small the set.
    groups = [[ids[i] for i in rng.permutation(len(ids))] for ids in (sorted(free[c]) for c in sorted(free))]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    deal = [g[k] for k in range(max(map(len, groups), default=0)) for g in groups if k < len(g)]
    n_test = int(round(len(deal) * test_fraction)) if draw_test else 0
    n_val = int(round((len(deal) - n_test) * val_fraction))
    for k, clip_id in enumerate(deal):
        out[clip_id] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return out


def plan(refs: list[ClipRef], config: SpatializeConfig, ir_paths: dict[str, str], out_dir: Path,
         attrs: dict) -> list[ShardTask]:
    """Shard tasks: for each split, the clips in a seeded order, in groups of
    samples_per_shard / azimuths, one task per group and environment."""
    splits = assign_splits(refs, config.seed, config.val_fraction, config.test_fraction)
    per_shard = max(1, config.samples_per_shard // len(config.azimuths))
    rng = np.random.default_rng([config.seed, 0x5B2])
    by_id = {r.clip_id: r for r in refs}
    tasks: list[ShardTask] = []
    index = 0
    for split in SPLITS:
        ids = sorted(c for c, s in splits.items() if s == split)
        ids = [ids[i] for i in rng.permutation(len(ids))]  # shards mix the kinds of sound
        for start in range(0, len(ids), per_shard):
            group = tuple(by_id[c] for c in ids[start:start + per_shard])
            shards = tuple((index + k, env, ir_paths[env]) for k, env in enumerate(config.environments))
            index += len(shards)
            tasks.append(ShardTask(split, group, shards, config.policy, str(out_dir), tuple(sorted(attrs.items()))))
    return tasks


# --------------------------------------------------------------------------- one shard (runs on a worker)


def _renderer(ir_path: str) -> tuple[Renderer, np.ndarray]:
    """The renderer of an IR file and its azimuths, kept for the worker's lifetime:
    the IR spectra are computed once per worker, not once per shard."""
    stat = os.stat(ir_path)
    # One per thread too: a Renderer reuses its output buffer, and `dask worker` on an
    # existing cluster runs several threads per process.
    return _cached_renderer(ir_path, stat.st_mtime_ns, stat.st_size, threading.get_ident())


@functools.lru_cache(maxsize=16)
def _cached_renderer(ir_path: str, mtime_ns: int, size: int, thread: int) -> tuple[Renderer, np.ndarray]:
    irs = read_sofa(ir_path)
    return Renderer(irs.ir, n_out=CLIP_SAMPLES), irs.azimuth_deg.astype(np.float32)


def run_shard(task: ShardTask) -> list[ShardInfo]:
    """Load and prepare the clips of one group, render them in each environment, and
    write one shard per environment."""
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
    for index, env, ir_path in task.shards:
        renderer, azimuths = _renderer(ir_path)
        n_az = len(azimuths)
        audio = renderer.render(mono).reshape(-1, 2, renderer.n_out)
        n = audio.shape[0]
        arrays = {
            "audio": audio,
            "azimuth_deg": np.tile(azimuths, len(clips)),
            "env": np.full(n, ENV_NAMES.index(env), dtype=np.uint8),
            "clip_id": np.repeat(np.array(ids, dtype=object), n_az),
            "split": np.full(n, task.split, dtype=object),
            "category": np.repeat(np.array(categories, dtype=object), n_az),
        }
        attrs = dict(task.attrs)
        attrs.update(env_names=json.dumps(list(ENV_NAMES)), environment=env, split=task.split)
        info = ShardInfo(index=index, path=f"shards/{shard_name(index)}", split=task.split, env=env,
                         samples=n, clips=len(clips), sha256="", failures=failures, warnings=dict(warnings),
                         seconds=time.perf_counter() - t0)  # loading + rendering, before writing
        infos.append(write_shard(Path(task.out_dir), info, arrays, attrs))
        t0 = time.perf_counter()
    return infos


# --------------------------------------------------------------------------- the stage


def environment_irs(config: SpatializeConfig) -> dict[str, tuple[IRSet, dict]]:
    """The IR set each environment renders with, at the requested azimuths, and how to
    save it (SOFA conventions and positions)."""
    sources = IRSources(hrir=Path(config.hrir) if config.hrir else None,
                        brir=Path(config.brir) if config.brir else None,
                        hall=HallSpec(rt60_s=config.rt60_s, seed=config.seed), tolerance_deg=config.tolerance_deg)
    out = {}
    for env in config.environments:
        full = sources.irset(env, config.azimuths)
        idx = full.indices(config.azimuths, tolerance_deg=config.tolerance_deg)
        chosen = IRSet(full.ir[idx], full.fs, full.azimuth_deg[idx], full.elevation_deg[idx], full.distance_m[idx],
                       full.conventions, full.source, full.attrs)
        out[env] = (chosen, {"simulated_hall": env == "hall" and config.brir is None})
    return out


def _ir_digest(irs: IRSet) -> str:
    h = hashlib.sha256(np.ascontiguousarray(irs.ir).tobytes())
    h.update(np.asarray(irs.azimuth_deg, dtype=np.float64).tobytes())
    return h.hexdigest()


def stage_params(refs: list[ClipRef], config: SpatializeConfig, irs: dict, source: dict) -> dict:
    """The parameters that determine the output; a re-run must match them to resume."""
    clips = hashlib.sha256("\n".join(f"{r.clip_id}\t{r.recipe}\t{r.locator}\t{r.category}\t{r.split}"
                                     for r in refs).encode()).hexdigest()
    params = dataclasses.asdict(config)
    params.update(
        stage="spatialize",
        fs=FS,
        source=source,
        clips=len(refs),
        clips_sha256=clips,
        ir_sha256={env: _ir_digest(s) for env, (s, _) in irs.items()},
        bast_version=__version__,
    )
    return json.loads(json.dumps(params))  # plain JSON types, as read back from params.json


def spatialize(refs: list[ClipRef], out_dir, config: SpatializeConfig = SpatializeConfig(), *,
               client=None, source: dict | None = None, overwrite: bool = False,
               on_start: Callable[[int, int], None] | None = None,
               on_shard: Callable[[ShardInfo, int], None] | None = None) -> StageSummary:
    """Render `refs` into `out_dir` (the shard contract of docs/conventions.md); resumable.

    `client`: a dask Client (None runs in this process). `on_start(total_samples,
    resumed_samples)` and `on_shard(info, planned_samples)` report progress.
    """
    if not refs:
        raise StageError("no input clips found")
    irs = environment_irs(config)
    params = stage_params(refs, config, irs, source or {})
    n_az = len(config.azimuths)
    ir_paths: dict[str, str] = {}

    def plan_tasks(out_dir: Path) -> list[ShardTask]:
        ir_paths.update(_write_irs(out_dir, irs, config))
        attrs = {"stage": "spatialize", "fs": FS, "seed": config.seed, "bast_version": __version__,
                 "params": json.dumps(params, sort_keys=True)}
        return plan(refs, config, ir_paths, out_dir, attrs)

    def manifest_extra(summary: StageSummary, shards: list[ShardInfo]) -> dict:
        return {"clips_rendered": summary.clips, "inputs": len(refs), "inputs_failed": len(summary.failures),
                "warnings": summary.warnings,
                "azimuths_deg": [float(a) for a in irs[config.environments[0]][0].azimuth_deg],
                "irs": {env: str(Path(p).relative_to(out_dir)) for env, p in ir_paths.items()}}

    out_dir = Path(out_dir)
    stage = Stage(
        name="spatialize", params=params, plan=plan_tasks, run_task=run_shard,
        shards_of=lambda t: [(i, len(t.refs) * n_az) for i, _, _ in t.shards],
        # A group is redone only in the environments whose shard is missing.
        pending=lambda t, todo: dataclasses.replace(t, shards=kept) if (
            kept := tuple(s for s in t.shards if s[0] in todo)) else None,
        describe=lambda t: "shard " + ", ".join(f"{i} ({t.split}, {env})" for i, env, _ in t.shards),
        totals=_summarise, manifest_extra=manifest_extra,
        key_prefix=f"bast-spatialize-{params['clips_sha256'][:8]}")
    return run_stage(stage, out_dir, client=client, overwrite=overwrite, on_start=on_start, on_shard=on_shard)


def _summarise(summary: StageSummary, shards: list[ShardInfo]) -> None:
    """Totals over shards; a clip is in one shard per environment, so its failure and its
    warnings are counted once (from the first environment's shards)."""
    seen: set[str] = set()
    warnings: Counter = Counter()
    first_env = shards[0].env if shards else None
    for s in shards:
        summary.samples += s.samples
        if s.env == first_env:
            summary.clips += s.clips
            warnings.update(s.warnings)
        for f in s.failures:
            if f["clip_id"] not in seen:
                seen.add(f["clip_id"])
                summary.failures.append(f)
    summary.failures.sort(key=lambda f: f["clip_id"])
    summary.warnings = dict(warnings)


def _write_irs(out_dir: Path, irs: dict, config: SpatializeConfig) -> dict[str, str]:
    """Save the exact IR pairs each environment renders with beside the data (provenance,
    and what workers on any machine load)."""
    paths = {}
    for env, (irset, how) in irs.items():
        path = out_dir / "irs" / f"{env}.sofa"
        attrs = {"Title": f"bast {env} impulse responses used for this data set",
                 "Comment": f"from {irset.source}"}
        if how["simulated_hall"]:
            save_bank(path, irset, HallSpec(rt60_s=config.rt60_s, seed=config.seed))
        else:
            write_sofa(path, irset, conventions="SimpleFreeFieldHRIR" if env == "anechoic" else "GeneralFIR",
                       attrs=attrs)
        paths[env] = str(path)
    return paths


def write_examples(out_dir, n_clips: int = 3, azimuths=(0.0, 90.0, 180.0, 270.0)) -> list[Path]:
    """WAV files of a few rendered clips, for listening: the first `n_clips` clips of the
    test split (or the first split there is), at `azimuths`, in every environment."""
    import h5py
    import soundfile as sf

    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    shards = manifest["shards"]
    splits = [s["split"] for s in shards if s["samples"]]
    if not splits:
        return []
    split = "test" if "test" in splits else splits[0]
    written = []
    for env in dict.fromkeys(s["env"] for s in shards):
        wanted: list[str] = []
        for s in (s for s in shards if s["split"] == split and s["env"] == env and s["samples"]):
            with h5py.File(out_dir / s["path"], "r") as f:
                ids = f["clip_id"].asstr()[()]
                az = f["azimuth_deg"][()]
                for i, (clip, a) in enumerate(zip(ids, az)):
                    if clip not in wanted and len(wanted) < n_clips:
                        wanted.append(clip)
                    if clip in wanted and np.any(np.isclose(a, azimuths)):
                        name = f"{clip.replace('/', '_').replace('#', '-')}_az{int(round(a)):03d}.wav"
                        path = out_dir / "examples" / env / name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        sf.write(path, f["audio"][i].T, FS, subtype="FLOAT")
                        written.append(path)
            if len(wanted) >= n_clips:
                break
    return written
