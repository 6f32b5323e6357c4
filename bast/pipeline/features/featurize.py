"""Stage 2: binaural clips (Stage 1 shards) to log-power spectrograms (Stage 2 shards).

One task per Stage 1 shard: read it whole, compute the 2 x 129 x 61 spectrograms (and any
other feature kinds asked for, bast/pipeline/features/kinds.py) in batches, write one Stage 2
shard with the same labels. Same
rules as Stage 1: parameters pinned, finished shards skipped on a re-run, atomic writes,
one run per directory.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from bast import __version__, options
from bast.conventions import CLIP_SAMPLES as SAMPLES
from bast.conventions import FS, N_FREQ
from bast.errors import DataError
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.features.stft import FLOOR_DB, STFT_PARAMS, n_frames
from bast.pipeline.irs.sources import default_hrir_path
from bast.pipeline.features import scenes as scenefeatures
from bast.pipeline.stage.runner import Stage, StageSummary, run_stage
from bast.pipeline.stage.shards import (OWNED, ShardInfo, StageError, manifest_categories, manifest_directions,
                                  read_manifest, rewrite_hint, shard_name, write_shard,
                                  check_listed_shard)

LABELS = ("azimuth_deg", "env", "clip_id", "split", "category", "head", "room", "snr_db", "elevation_deg")
# Stage 1 shards made before heads, rooms, noise and elevations existed hold only these; the
# others are filled in (`older_defaults`): head = the HRIR file's stem, room = the
# environment, no noise, elevation 0.
REQUIRED_LABELS = LABELS[:5]
PHASE = featurekinds.PHASE_DESCRIPTION
STANDARDIZE = "per sample, over all its 2 x 129 x 61 values jointly: (spec - mean) / std"


@dataclass(frozen=True)
class FeatureTask:
    index: int
    source: str  # the Stage 1 shard (absolute path)
    out_dir: str
    dtype: str
    floor_db: float
    attrs: tuple = ()
    kinds: tuple = (featurekinds.LOGPOWER,)  # the feature kinds to compute, the log power first
    head: str = ""  # the head label of an older Stage 1 shard that does not record it


def read_stage1(stage1_dir) -> dict:
    """The Stage 1 manifest, after checking that the directory is complete Stage 1 output
    whose shards are the bytes the manifest lists (sha256), with the shapes, label lengths
    and sample rate Stage 2 needs; errors name the file and how to rewrite it."""
    stage1_dir = Path(stage1_dir)
    if scenefeatures.is_scenes(stage1_dir):
        return scenefeatures.read_scene_stage1(stage1_dir)
    manifest = read_manifest(stage1_dir, "spatialize", "featurize")
    if manifest.get("plan_only"):
        raise DataError(f"{stage1_dir} was written by spatialize --plan-only and holds no audio: train on it with "
                        "`bast-cli train STAGE1 --on-the-fly`, or render it first (spatialize into it without "
                        "--plan-only)")
    try:
        listed = [(s["path"], int(s["samples"]), s.get("sha256")) for s in manifest["shards"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{stage1_dir / 'manifest.json'}: malformed manifest ({type(exc).__name__}: {exc}); "
                        f"re-run bast-cli spatialize into {stage1_dir} to rewrite it") from None
    for rel, samples, sha256 in listed:
        check_stage1_shard(stage1_dir / rel, samples, sha256)
    return manifest


def _rewrite_hint(path: Path) -> str:
    return rewrite_hint(path, "spatialize")


def check_stage1_shard(path: Path, samples: int, sha256: str | None = None) -> None:
    """One Stage 1 shard as its manifest lists it (check_listed_shard: a regular file, the
    manifest's sha256 when given, readable), `samples` rows of 2 x 8000 audio at 16 kHz
    and every label as long as the audio."""
    path = Path(path)
    layout = check_listed_shard(path, sha256, "spatialize")
    missing = [n for n in ("audio",) + REQUIRED_LABELS if n not in layout.shapes]
    if missing:
        raise StageError(f"{path}: not a Stage 1 shard (missing {', '.join(missing)})")
    shape, fs = layout.shapes["audio"], layout.attrs.get("fs")
    lengths = {name: layout.shapes[name][0] if layout.shapes[name] else 0 for name in LABELS if name in layout.shapes}
    if shape != (samples, 2, SAMPLES):
        raise StageError(f"{path}: audio has shape {shape}; Stage 2 needs ({samples}, 2, {SAMPLES})")
    if fs != FS:
        raise StageError(f"{path}: sample rate {fs}; Stage 2 needs {FS} Hz")
    short = {name: n for name, n in lengths.items() if n != samples}
    if short:
        raise DataError(f"{path}: label(s) {', '.join(f'{k} ({n} rows)' for k, n in short.items())} do not match "
                        f"the {samples} rows of audio; {_rewrite_hint(path)}")


def run_task(task: FeatureTask, block: int = 256) -> list[ShardInfo]:
    """Spectrograms of one Stage 1 shard, read and computed `block` samples at a time
    (contiguous row ranges: one sequential read each)."""
    t0 = time.perf_counter()
    with h5py.File(task.source, "r") as f:
        labels = {name: (f[name].asstr()[()] if f[name].dtype.kind == "O" else f[name][()])
                  for name in LABELS if name in f}
        n = f["audio"].shape[0]
        if len(labels) < len(LABELS):
            env_names = json.loads(f.attrs["env_names"]) if "env_names" in f.attrs else []
            labels.update({k: v for k, v in older_defaults(labels["env"], env_names, task.head).items()
                           if k not in labels})
        out = {k.name: np.empty((n, *k.shape(SAMPLES)), dtype=k.dtype or task.dtype) for k in task.kinds}
        finite = np.ones(n, dtype=bool)
        for i in range(0, n, block):
            audio = f["audio"][i:i + block]
            ok = np.isfinite(audio).all(axis=(1, 2))
            if not ok.all():  # such a sample is dropped below; zeros keep the batch computable
                finite[i:i + block] = ok
                audio[~ok] = 0.0
            for name, values in _compute(task.kinds, audio, task.floor_db).items():
                out[name][i:i + block] = values
        attrs = {k: f.attrs[k] for k in ("env_names", "environment", "split", "head", "room") if k in f.attrs}
    failures = [{"clip_id": labels["clip_id"][i], "azimuth_deg": float(labels["azimuth_deg"][i]),
                 "path": task.source, "reason": "non-finite audio samples"} for i in np.flatnonzero(~finite)]
    keep = finite if failures else slice(None)
    arrays = {**{k.dataset: out[k.name][keep] for k in task.kinds},
              **{k: v[keep] for k, v in labels.items()}}
    attrs.update(dict(task.attrs))
    first = lambda k: str(labels[k][0]) if n else ""  # noqa: E731
    info = ShardInfo(index=task.index, path=f"shards/{shard_name(task.index)}", split=first("split"),
                     env=attrs.get("environment", ""), samples=int(arrays["spec"].shape[0]), clips=0, sha256="",
                     failures=failures, seconds=time.perf_counter() - t0, head=first("head"), room=first("room"))
    return [write_shard(Path(task.out_dir), info, arrays, attrs)]


def _compute(kinds, audio, floor_db: float) -> dict:
    """Each kind of a batch, by the kinds' own compute functions (the task carries the
    declarations, so that a kind registered in the caller's process reaches the workers)."""
    scratch: dict = {}
    return {k.name: k.compute(audio, floor_db, scratch) for k in sorted(kinds, key=lambda k: k.name == "logpower")}


def older_defaults(env: np.ndarray, env_names: list, head: str) -> dict:
    """head, room, snr_db and elevation_deg for the N samples of a Stage 1 shard that predates them."""
    n = len(env)
    rooms = np.array([env_names[e] if e < len(env_names) else "" for e in env], dtype=object)
    return {"head": np.full(n, head, dtype=object), "room": rooms,
            "snr_db": np.full(n, np.inf, dtype=np.float32), "elevation_deg": np.zeros(n, dtype=np.float32)}


def stage1_categories(stage1_dir: Path, manifest: dict) -> list[str]:
    """The sorted class list of a Stage 1 output: its manifest's, or for an older output
    the `category` labels of its shards."""
    listed = manifest_categories(manifest)
    if listed is not None:
        return listed
    found: set[str] = set()
    for s in manifest["shards"]:
        with h5py.File(stage1_dir / s["path"], "r") as f:
            found.update(f["category"].asstr()[()].tolist())
    return sorted(found)


def stage1_head(manifest: dict) -> str:
    """The head label of an older Stage 1 output: its HRIR file's stem (the bundled set's
    when none was given), or "" when it used several."""
    hrir = manifest.get("params", {}).get("hrir")
    if hrir is None:
        return default_hrir_path().stem
    return Path(hrir).stem if isinstance(hrir, str) else ""



def stage_params(stage1_dir: Path, manifest: dict, names, dtype: str, floor_db: float, splits) -> dict:
    """The parameters that determine a Stage 2 output; a re-run must match them to resume."""
    params = {
        "stage": "featurize",
        "stage1": str(stage1_dir),
        # What Stage 1 made (its parameters and shard checksums), not the manifest's bytes:
        # re-running a finished Stage 1 rewrites its manifest with a new date.
        "stage1_sha256": hashlib.sha256(json.dumps([manifest["params"], [s["sha256"] for s in manifest["shards"]]],
                                                   sort_keys=True).encode()).hexdigest(),
        "dtype": dtype,
        "stft": {**STFT_PARAMS, "floor_db": floor_db},
        "standardize": STANDARDIZE,
        "seed": manifest.get("seed"),
        "bast_version": __version__,
    }
    # Recorded only when held, so that outputs of the log power alone (or with the phase)
    # stay byte for byte what they were before feature kinds.
    if "phase" in names:
        params["phase"] = PHASE
    if set(names) - {"logpower", "phase"}:
        params["features"] = {n: featurekinds.get(n).record(SAMPLES, dtype) for n in names}
    if splits is not None:  # recorded only when chosen: a full featurize keeps its parameters
        params["splits"] = sorted(splits)
    return params

def featurize(stage1_dir, out_dir, *, dtype: str = "float16", floor_db: float = FLOOR_DB, phase: bool = False,
              features=None, client=None, splits: tuple[str, ...] | None = None,
              overwrite: bool = False, on_start: Callable[[int, int], None] | None = None,
              on_shard: Callable[[ShardInfo, int], None] | None = None) -> StageSummary:
    """Write Stage 2 shards for the Stage 1 output in `stage1_dir`; resumable. `features`:
    the feature kinds (names, or a comma-separated string; default the log power);
    `phase` adds the interaural phase. `splits`: only the shards of these splits (training
    on the fly featurizes the validation and test samples alone); None: every shard."""
    if dtype not in ("float16", "float32"):
        raise StageError(f"dtype {dtype!r}: choose float16 or float32")
    options.number(floor_db, "floor_db", hi=0, unit="dB")
    names = featurekinds.parse(features if isinstance(features, str) or features is None else ",".join(features),
                               phase)
    options.output_dir(out_dir, "OUT", inputs=[("the Stage 1 folder", stage1_dir)], owned=OWNED)
    if scenefeatures.is_scenes(stage1_dir):  # whole scenes and their label tracks (docs/scenes.md)
        return scenefeatures.featurize_scenes(stage1_dir, out_dir, dtype=dtype, floor_db=floor_db, features=names,
                                              client=client, splits=splits, overwrite=overwrite, on_start=on_start,
                                              on_shard=on_shard)
    stage1_dir, out_dir = Path(stage1_dir).resolve(), Path(out_dir)
    manifest = read_stage1(stage1_dir)
    params = stage_params(stage1_dir, manifest, names, dtype, floor_db, splits)
    shards = [s for s in manifest["shards"] if splits is None or s["split"] in splits]
    attrs = {"stage": "featurize", "fs": FS, "bast_version": __version__, "params": json.dumps(params, sort_keys=True)}
    head = stage1_head(manifest)
    tasks = [FeatureTask(s["index"], str(stage1_dir / s["path"]), str(out_dir), dtype, floor_db,
                         tuple(sorted(attrs.items())), featurekinds.kinds(names), head) for s in shards]
    planned = {s["index"]: s["samples"] for s in shards}
    carried = {"directions": manifest_directions(manifest), "categories": stage1_categories(stage1_dir, manifest)}
    stage = Stage(
        name="featurize", params=params, plan=lambda out_dir: tasks, run_task=run_task,
        shards_of=lambda t: [(t.index, planned[t.index])],
        describe=lambda t: f"shard {t.index} ({Path(t.source).name})",
        manifest_extra=lambda summary, shards: {
            "samples_failed": len(summary.failures),
            "spec_shape": [2, N_FREQ, n_frames(SAMPLES)],
            "spec_dtype": dtype,
            **({"phase_shape": [2, N_FREQ, n_frames(SAMPLES)], "phase": PHASE} if "phase" in names else {}),
            "standardize": STANDARDIZE,
            "stage1_totals": manifest.get("totals", {}),
        },
        manifest_keys=lambda summary, shards: {**carried, **featurekinds.manifest_entry(names, SAMPLES, dtype)})
    return run_stage(stage, out_dir, client=client, overwrite=overwrite, on_start=on_start, on_shard=on_shard)
