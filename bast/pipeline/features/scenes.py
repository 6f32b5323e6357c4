"""Stage 2 for scenes: the Tukey STFT of whole scenes, with per-frame label tracks.

`featurize` sends a `bast-cli scenes` output here. Per scene, the same log-power
spectrogram (and, with phase, the same interaural phase) as for clips
(bast/pipeline/features/stft.py), over the whole scene: 2 x 129 x F frames, F = (samples -
128) // 128 (624 for 5 s). Beside it, the labels as tracks aligned to those frames: for
STFT frame t (samples 128 t .. 128 t + 255), the 100 ms label frame of its centre
(`stft_label_frames`), and up to `max_overlap` events active there, in slots by track
index (`frame_tracks`). Training windows (61 frames = 500 ms, as the models read) are cut
from this by the loader (`cut_window`), not stored twice.
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

from bast import __version__
from bast.conventions import FS, LABEL_SAMPLES, N_FRAMES, N_FREQ
from bast.errors import ConfigError
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.features.stft import NOVERLAP, NPERSEG, STFT_PARAMS, n_frames
from bast.pipeline.render.scenes import read_scenes
from bast.pipeline.stage.runner import Stage, StageSummary, run_stage
from bast.pipeline.stage.shards import ShardInfo, StageError, shard_name, write_shard

HOP = NPERSEG - NOVERLAP
TRACKS = ("track_category (N, F, T) int16: class index, -1 where the slot is empty; track_index (N, F, T) int16: "
          "the event's track index, -1 empty; track_azimuth_deg, track_elevation_deg, track_distance_m (N, F, T) "
          "float32, 0 where empty; F = STFT frames, T = max_overlap slots filled in order of track index")


def stft_label_frames(frames: int) -> np.ndarray:
    """(frames,) the 100 ms label frame of each STFT frame's centre sample."""
    return (np.arange(frames) * HOP + NPERSEG // 2) // LABEL_SAMPLES


def frame_tracks(rows: np.ndarray, frames: int, slots: int) -> dict[str, np.ndarray]:
    """Per-STFT-frame label tracks (F, slots) of one scene's label rows (R, 6)."""
    label_frame = stft_label_frames(frames)
    out = {"track_category": np.full((frames, slots), -1, dtype=np.int16),
           "track_index": np.full((frames, slots), -1, dtype=np.int16),
           "track_azimuth_deg": np.zeros((frames, slots), dtype=np.float32),
           "track_elevation_deg": np.zeros((frames, slots), dtype=np.float32),
           "track_distance_m": np.zeros((frames, slots), dtype=np.float32)}
    by_frame: dict[int, list] = {}
    for r in rows[np.lexsort((rows[:, 2], rows[:, 0]))] if len(rows) else ():
        by_frame.setdefault(int(r[0]), []).append(r)
    for t, k in enumerate(label_frame):
        for slot, r in enumerate(by_frame.get(int(k), ())[:slots]):
            out["track_category"][t, slot], out["track_index"][t, slot] = r[1], r[2]
            out["track_azimuth_deg"][t, slot], out["track_elevation_deg"][t, slot] = r[3], r[4]
            out["track_distance_m"][t, slot] = r[5]
    return out


def window_label_frames(start: int, length: int) -> np.ndarray:
    """The 100 ms label frames whose centre samples lie in the window of `length` STFT
    frames from frame `start` (samples 128 start .. 128 (start + length - 1) + 256)."""
    first_sample, end_sample = start * HOP, (start + length - 1) * HOP + NPERSEG
    centres = (np.arange(-(-end_sample // LABEL_SAMPLES) + 1) + 0.5) * LABEL_SAMPLES
    return np.flatnonzero((centres >= first_sample) & (centres < end_sample))


# Windows that start on a multiple of 25 STFT frames (3,200 samples, two label frames) all
# hold the same label frames at the same places; others may hold one fewer.
ALIGNED_HOP = 2 * LABEL_SAMPLES // HOP


def window_labels(length: int) -> int:
    """How many label frames an aligned window of `length` STFT frames holds (61 -> 5,
    250 -> 20): the model's output frames per window."""
    return len(window_label_frames(0, length))


def window_starts(frames: int, length: int, hop: int) -> np.ndarray:
    """First frames of the windows cut from a scene of `frames` STFT frames: every `hop`
    frames, and one more ending at the scene's end so that its last label frames are
    covered; windows that would hold another number of label frames than an aligned one
    (`window_labels`) are left out. Empty when the scene is shorter than a window."""
    if length > frames:
        return np.zeros(0, dtype=np.int64)
    starts = list(range(0, frames - length + 1, hop))
    if starts[-1] != frames - length:
        starts.append(frames - length)
    want = window_labels(length)
    return np.array([s for s in starts if len(window_label_frames(s, length)) == want], dtype=np.int64)


@dataclass(frozen=True)
class SceneWindow:
    spec: np.ndarray  # (2, 129, length) dB
    phase: np.ndarray | None  # (2, 129, length) cos, sin, or None
    tracks: dict  # name -> (length, T), as frame_tracks
    label_frames: np.ndarray  # (length,) the label frame of each STFT frame, from the window's first one
    rows: np.ndarray  # (R, 6) the label rows of the label frames whose centres lie in the window, frames re-based


def cut_window(spec: np.ndarray, tracks: dict, rows: np.ndarray, start: int, length: int = N_FRAMES,
               phase: np.ndarray | None = None) -> SceneWindow:
    """The training window of `length` STFT frames from frame `start` of one featurized
    scene (its spec (2, 129, F), tracks (F, T) each, label rows (R, 6), optional phase):
    the features as the models read them, the tracks of those frames, and the label rows
    of the 100 ms frames whose centre falls in the window, numbered from its first frame."""
    frames = spec.shape[-1]
    if not 0 <= start <= frames - length:
        raise ConfigError(f"window [{start}, {start + length}) is outside the scene's {frames} frames")
    cut = slice(start, start + length)
    inside = window_label_frames(start, length)
    label_frame = stft_label_frames(frames)[cut]
    first_label = int(inside[0]) if inside.size else int(label_frame[0])
    return SceneWindow(spec=spec[..., cut], phase=None if phase is None else phase[..., cut],
                       tracks={k: v[cut] for k, v in tracks.items()}, label_frames=label_frame - first_label,
                       rows=window_rows(rows, start, length))


def window_rows(rows: np.ndarray, start: int, length: int) -> np.ndarray:
    """The label rows (R, 6) of the label frames whose centres lie in the window, their
    frames numbered from the window's first such label frame."""
    inside = window_label_frames(start, length)
    rows = np.asarray(rows).reshape(-1, 6)
    out = rows[np.isin(rows[:, 0], inside)].copy()
    if inside.size:
        out[:, 0] -= inside[0]
    return out


@dataclass(frozen=True)
class SceneFeatureTask:
    index: int
    source: str
    out_dir: str
    dtype: str
    floor_db: float
    slots: int
    attrs: tuple = ()
    kinds: tuple = (featurekinds.LOGPOWER,)  # the feature kinds to compute, the log power first


def run_task(task: SceneFeatureTask) -> list[ShardInfo]:
    """Spectrograms and label tracks of one Stage 1 scene shard, scene by scene."""
    t0 = time.perf_counter()
    with h5py.File(task.source, "r") as f:
        n, _, samples = f["audio"].shape
        frames = n_frames(samples)
        copied = {k: (f[k].asstr()[()] if f[k].dtype.kind == "O" else f[k][()])
                  for k in f if k != "audio"}
        out = {k.name: np.empty((n, k.channels, N_FREQ, frames), dtype=k.dtype or task.dtype) for k in task.kinds}
        tracks: dict[str, list] = {}
        for i in range(n):
            audio = f["audio"][i]
            if not np.isfinite(audio).all():
                raise StageError(f"{task.source}: scene {copied['scene_id'][i]} has non-finite samples")
            scratch: dict = {}
            for k in sorted(task.kinds, key=lambda k: k.name == "logpower"):  # the log power last (featurekinds)
                out[k.name][i] = k.compute(audio[None], task.floor_db, scratch)[0]
            rows = copied["labels"][copied["label_offsets"][i]:copied["label_offsets"][i + 1]]
            for k, v in frame_tracks(rows, frames, task.slots).items():
                tracks.setdefault(k, []).append(v)
        attrs = {k: f.attrs[k] for k in ("env_names", "environment", "split", "head", "room", "categories",
                                          "label_columns", "label_hop_s") if k in f.attrs}
    empty = {"track_category": np.int16, "track_index": np.int16}
    arrays = {**{k.dataset: out[k.name] for k in task.kinds},
              **{k: np.stack(v) if v else np.zeros((0, frames, task.slots), dtype=empty.get(k, np.float32))
                 for k, v in tracks.items()},
              **copied}
    attrs.update(dict(task.attrs))
    first = lambda k: str(copied[k][0]) if n else ""  # noqa: E731
    info = ShardInfo(index=task.index, path=f"shards/{shard_name(task.index)}", split=first("split"),
                     env=attrs.get("environment", ""), samples=n, clips=0, sha256="", failures=[],
                     seconds=time.perf_counter() - t0, head=first("head"), room=first("room"))
    return [write_shard(Path(task.out_dir), info, arrays, attrs)]


def is_scenes(stage1_dir) -> bool:
    """Whether `stage1_dir` holds `bast-cli scenes` output (its manifest or pinned parameters say so)."""
    for name in ("manifest.json", "params.json"):
        path = Path(stage1_dir) / name
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                return False  # the reader of the Stage 1 output names the torn file
            if not isinstance(data, dict):
                return False
            params = data.get("params")
            return data.get("stage") == "scenes" or (isinstance(params, dict) and params.get("stage") == "scenes")
    return False


def read_scene_stage1(stage1_dir) -> dict:
    """The manifest of a finished scenes output, every shard checked against it (sha256,
    shapes, label lengths: bast.pipeline.render.scenes.check_scene_shard) before any work."""
    return read_scenes(Path(stage1_dir), "featurize")


def featurize_scenes(stage1_dir, out_dir, *, dtype: str = "float16", floor_db: float, features=("logpower",),
                     client=None, splits: tuple[str, ...] | None = None, overwrite: bool = False,
                     on_start: Callable[[int, int], None] | None = None,
                     on_shard: Callable[[ShardInfo, int], None] | None = None) -> StageSummary:
    """Stage 2 shards (spec, the other feature kinds of `features`, label tracks, the Stage 1 labels) of a scenes
    output; resumable, like `featurize`. `splits`: only the shards of these splits (SELD
    training on the fly featurizes the validation and test scenes alone); None: every shard."""
    stage1_dir, out_dir = Path(stage1_dir).resolve(), Path(out_dir)
    manifest = read_scene_stage1(stage1_dir)
    p1 = manifest["params"]
    frames = n_frames(int(round(p1["duration_s"] * FS)))
    slots = int(p1["max_overlap"])
    params = {
        "stage": "featurize",
        "scenes": True,
        "stage1": str(stage1_dir),
        "stage1_sha256": hashlib.sha256(json.dumps([p1, [s["sha256"] for s in manifest["shards"]]],
                                                   sort_keys=True).encode()).hexdigest(),
        "dtype": dtype,
        "stft": {**STFT_PARAMS, "floor_db": floor_db},
        "tracks": TRACKS,
        "seed": manifest.get("seed"),
        "bast_version": __version__,
    }
    names = featurekinds.normalize(features)
    samples = int(round(p1["duration_s"] * FS))
    if splits is not None:  # recorded only when chosen: a full featurize keeps its parameters
        params["splits"] = sorted(splits)
    if "phase" in names:  # as before feature kinds, so that such outputs stay what they were
        params["phase"] = "cos and sin of the angle of X_left * conj(X_right), float16, as for clips"
    if set(names) - {"logpower", "phase"}:
        params["features"] = {n: featurekinds.get(n).record(samples, dtype) for n in names}
    attrs = {"stage": "featurize", "fs": FS, "bast_version": __version__, "params": json.dumps(params, sort_keys=True)}
    tasks = [SceneFeatureTask(s["index"], str(stage1_dir / s["path"]), str(out_dir), dtype, floor_db, slots,
                              tuple(sorted(attrs.items())), featurekinds.kinds(names)) for s in manifest["shards"]
             if splits is None or s["split"] in splits]
    planned = {s["index"]: s["samples"] for s in manifest["shards"]}
    totals = manifest.get("totals", {})
    stage = Stage(
        name="featurize", params=params, plan=lambda out_dir: tasks, run_task=run_task,
        shards_of=lambda t: [(t.index, planned[t.index])],
        describe=lambda t: f"scene shard {t.index} ({Path(t.source).name})",
        manifest_extra=lambda summary, shards: {
            "scenes": True, "spec_shape": [2, N_FREQ, frames], "spec_dtype": dtype,
            **({"phase_shape": [2, N_FREQ, frames]} if "phase" in names else {}),
            "categories": totals.get("categories", []), "label_hop_s": totals.get("label_hop_s"),
            "label_columns": totals.get("label_columns"), "track_slots": slots, "tracks": TRACKS,
            "window_frames": N_FRAMES, "stage1_totals": totals,
        },
        manifest_keys=lambda summary, shards: featurekinds.manifest_entry(names, samples, dtype),
        key_prefix="bast-featurize-scenes")
    return run_stage(stage, out_dir, client=client, overwrite=overwrite, on_start=on_start, on_shard=on_shard)
