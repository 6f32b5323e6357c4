"""Training and evaluation windows cut from whole scenes (`--target seld`, docs/seld.md).

A scene Stage 2 shard holds whole scenes (2 x 129 x F log power, plus the other feature
kinds) and their 100 ms label rows (bast/pipeline/features/scenes.py). The loader keeps the
scenes resident on the device (a 5 s scene is 320 KB in float16: 10,000 scenes are 3 GB)
and cuts windows of `length` STFT frames from them as it batches; each window's target is
the multi-ACCDOA tensor of the label frames whose centres it holds (bast/model/targets/adpit.py),
made once when the scenes load (with `distance`, each event's distance in metres beside its
vector: the `seld-distance` target). Nothing is stored twice.

- `SceneWindows(..., shuffle=True)`: training; windows every `hop` frames, a seeded
  shuffle each epoch; under DDP each rank holds a contiguous cut of the scenes (shards in a
  seeded order, as `data.rank_share` cuts clips) and reads only the shards it lies in, and
  every rank makes the same number of steps.
- `SceneWindows(..., shuffle=False)`: evaluation; windows every 25 frames (two label
  frames, so that every window holds the same label frames at the same places) plus one
  ending at the scene's end, in order; `bast/model/evaluation/seld.py` stitches their outputs back
  into scenes.

Each window is standardised on its own (`model_input`), as a clip is: the models see what
they see in training whatever the scene around the window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from bast.errors import DataError
from bast.model.data.loaders import Selection, corrupt_shard, model_input, rank_share, verify_shard
from bast.model.targets.adpit import encode
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.features.scenes import (ALIGNED_HOP, stft_label_frames, window_label_frames, window_labels,
                                         window_rows, window_starts)
from bast.pipeline.stage.shards import ShardLayout, check_ragged

@dataclass
class Scene:
    """One scene's labels: what it is, its label rows (R, 6) and its length in label frames."""

    scene_id: str
    env: str
    head: str
    room: str
    rows: np.ndarray
    frames: int  # STFT frames
    label_frames: int  # 100 ms label frames of the whole scene

    @property
    def name(self) -> str:
        """A file name for the scene in one condition (DCASE CSVs): scene id and environment."""
        return f"{self.scene_id}_{self.env}"


def is_scene_data(features_dir) -> bool:
    """Whether a Stage 2 folder holds featurized scenes (not clips)."""
    from bast.model.data.manifest import features_manifest, is_scenes_manifest

    return is_scenes_manifest(features_manifest(features_dir))


def read_scene_shard(path: Path, features=featurekinds.DEFAULT) -> tuple[np.ndarray, list[Scene]]:
    """The stacked feature kinds (N, channels, 129, F) float16 of a scene shard, and its scenes."""
    try:
        with h5py.File(path, "r") as f:
            parts = [f[k.dataset][()].astype(np.float16, copy=False) for k in featurekinds.kinds(features)]
            spec = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            labels = f["labels"][()].astype(np.float64)
            offsets = f["label_offsets"][()]
            names = np.asarray(json.loads(f.attrs["env_names"]), dtype=object)
            env = names[f["env"][()]]
            ids, heads, rooms = (f[k].asstr()[()] for k in ("scene_id", "head", "room"))
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise corrupt_shard(path, exc) from None
    n = len(spec)
    short = {k: len(v) for k, v in (("scene_id", ids), ("env", env), ("head", heads), ("room", rooms)) if len(v) != n}
    if short:
        raise corrupt_shard(path, f"label(s) {', '.join(f'{k} ({m} rows)' for k, m in short.items())} do not "
                                  f"match its {n} scenes")
    layout = ShardLayout({"labels": labels.shape, "label_offsets:values": np.asarray(offsets)}, {})
    check_ragged(path, layout, n, "label_offsets", "labels", "featurize")
    frames = spec.shape[-1]
    n_labels = int(stft_label_frames(frames)[-1]) + 1 if frames else 0
    scenes = [Scene(str(ids[i]), str(env[i]), str(heads[i]), str(rooms[i]), labels[offsets[i]:offsets[i + 1]],
                    frames, n_labels) for i in range(len(spec))]
    return spec, scenes


class SceneWindows:
    """Windows of `length` frames from the scenes of a selection, resident on `device`."""

    def __init__(self, sel: Selection, length: int, n_classes: int, device, *, batch_size: int = 64,
                 hop: int = ALIGNED_HOP, shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1,
                 tracks: int = 3, distance: bool = False):
        self.sel, self.length, self.n_classes = sel, int(length), int(n_classes)
        self.device, self.batch_size, self.shuffle, self.seed = torch.device(device), batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.hop = hop if shuffle else ALIGNED_HOP
        self.label_frames = window_labels(self.length)
        sizes = [s["samples"] for s in sel.shards]
        offsets = np.cumsum([0, *sizes])
        if shuffle:  # training: this rank's contiguous cut of the scenes, shards in a seeded order
            share = rank_share(sizes, seed, rank, world)
            keep = {i: share[(share >= offsets[i]) & (share < offsets[i + 1])] - offsets[i] for i in range(len(sizes))}
        else:  # evaluation: whole shards dealt round-robin; the ranks' scene results are gathered
            keep = {i: np.arange(sizes[i]) for i in range(rank, len(sizes), world)}
        specs, self.scenes, windows, targets = [], [], [], []
        for i, s in enumerate(sel.shards):
            if not len(keep.get(i, ())):
                continue  # another rank's: not read
            verify_shard(sel.root / s["path"], s.get("sha256"))  # once per process (train verified it already)
            spec, scenes = read_scene_shard(sel.root / s["path"], sel.features)
            if spec.shape[-1] < self.length:
                raise DataError(f"{sel.root / s['path']}: its scenes have {spec.shape[-1]} frames, shorter than a "
                                f"window of {self.length} (--window-frames)")
            spec, scenes = spec[keep[i]], [scenes[j] for j in keep[i]]
            for j, scene in enumerate(scenes):
                for start in window_starts(scene.frames, self.length, self.hop):
                    rows = window_rows(scene.rows, int(start), self.length)
                    windows.append((len(self.scenes), int(start), int(window_label_frames(int(start), self.length)[0])))
                    targets.append(encode(rows, self.label_frames, self.n_classes, n_tracks=tracks, distance=distance))
                self.scenes.append(scene)
            specs.append(torch.from_numpy(spec).to(self.device))
        self.spec = torch.cat(specs) if specs else torch.zeros((0, *sel.shape[:2], self.length), dtype=torch.float16)
        self.windows = torch.tensor(windows, dtype=torch.long).reshape(-1, 3)  # (scene, start frame, first label)
        self.targets = (torch.stack(targets) if targets else
                        torch.zeros((0, self.label_frames, tracks, self.n_classes, 3 + distance))).to(self.device)
        self.resident, self.share_bytes = True, self.spec.numel() * 2 + self.targets.numel() * 4
        # Every rank makes the same number of steps: scenes of one data set have one length, so
        # the same windows each, and the smallest share is n // world scenes.
        per_scene = len(self.windows) // len(self.scenes) if self.scenes else 0
        self.per_rank = per_scene * (int(offsets[-1]) // world) if world > 1 else len(self.windows)
        self.steps = self.per_rank // batch_size if shuffle else -(-len(self.windows) // batch_size)

    def __len__(self) -> int:
        return self.steps

    @property
    def samples(self) -> int:
        return len(self.windows)

    def cut(self, pick: torch.Tensor) -> torch.Tensor:
        """The model input of windows `pick` (indices into self.windows): (B, channels, 129, length) float32."""
        w = self.windows[pick].to(self.device)
        # a view of every window of every scene; indexing copies only the batch's
        x = self.spec.unfold(-1, self.length, 1)[w[:, 0], :, :, w[:, 1]]
        return model_input(x, self.sel.features)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Training batches (x, target, window index), shuffled from (seed, epoch, rank) alone."""
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch * 31 + self.rank)
        perm = torch.randperm(len(self.windows), generator=g)[:self.per_rank]
        for b in range(self.steps):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.cut(idx), self.targets[idx.to(self.device)], idx

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every window in order: (x, target, window index)."""
        for a in range(0, len(self.windows), self.batch_size):
            idx = torch.arange(a, min(a + self.batch_size, len(self.windows)))
            yield self.cut(idx), self.targets[idx.to(self.device)], idx
