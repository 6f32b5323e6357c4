"""SELD training scenes made as they are asked for: every epoch new scenes drawn from a
`bast-cli scenes` folder's recipe, rendered and featurized in loader worker processes, cut
into training windows (docs/seld.md "New scenes every epoch").

Each epoch is `epoch_scenes` scenes, numbered 0 .. N-1; scene k is drawn from (seed, epoch,
k) alone and rendered by the scenes stage's own functions
(bast/pipeline/render/scenesampler.py), featurized with Stage 2's feature kinds and held as
a scene Stage 2 shard is read (float16, `read_scene_shard`). Its windows are those the Stage 2
loader cuts (`SceneWindows`: every `hop` frames, `window_starts`), with the same targets
(`window_rows`, `encode`) and the same model input (`model_input` of each window). Scenes
are rendered in chunks of `SCENES_PER_CHUNK` by `workers` processes (torch's DataLoader; 0
renders in the training process); the windows of a chunk are shuffled from (seed, epoch,
the chunk's first scene) and batched in order, a batch's remainder carried into the next
chunk. Which process renders a chunk never changes it, so results do not depend on the
number of workers. Under DDP rank r of w takes the scene numbers r*N/w .. (r+1)*N/w - 1:
disjoint, together the epoch; every rank makes the same number of steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bast.errors import ConfigError, DataError
from bast.model.data.loaders import model_input
from bast.model.data.onthefly import MAX_EPOCH_SAMPLES, MAX_WORKERS, Featurizer, init_worker
from bast.model.targets.adpit import N_TRACKS, encode
from bast.pipeline.features.scenes import window_label_frames, window_labels, window_rows, window_starts
from bast.pipeline.features.stft import n_frames
from bast.pipeline.render.scenesampler import SceneDraw, SceneRecipe, SceneRenderer, draw_scenes

# Scenes rendered together by one worker; their windows are shuffled together (a 5 s scene
# makes 24 windows of 61 frames at a hop of 25: a chunk holds 12 batches of 64).
SCENES_PER_CHUNK = 32


class SceneCutter:
    """The training windows of featurized scenes, as `SceneWindows` cuts them: first frames
    every `hop`, the multi-ACCDOA target of each window's label frames."""

    def __init__(self, length: int, hop: int, n_classes: int, *, tracks: int = N_TRACKS, distance: bool = False):
        self.length, self.hop, self.n_classes, self.tracks, self.distance = length, hop, n_classes, tracks, distance
        self.label_frames = window_labels(length)

    def starts(self, frames: int) -> np.ndarray:
        return window_starts(frames, self.length, self.hop)

    def cut(self, frames: int, rows: list[np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
        """Windows (n, 3) int64 (scene, first frame, first label frame) of scenes of `frames`
        STFT frames with label rows `rows` (one (R, 6) array per scene), and their targets."""
        starts = self.starts(frames)
        windows, targets = [], []
        for i, r in enumerate(rows):
            r = np.asarray(r, dtype=np.float64)  # as read_scene_shard reads the stored float32 rows
            for start in starts:
                windows.append((i, int(start), int(window_label_frames(int(start), self.length)[0])))
                targets.append(encode(window_rows(r, int(start), self.length), self.label_frames, self.n_classes,
                                      n_tracks=self.tracks, distance=self.distance))
        shape = (0, self.label_frames, self.tracks, self.n_classes, 3 + self.distance)
        return (np.array(windows, dtype=np.int64).reshape(-1, 3),
                torch.stack(targets) if targets else torch.zeros(shape))


def window_input(spec: torch.Tensor, windows: torch.Tensor, length: int, kinds) -> torch.Tensor:
    """The model input of `windows` (scene, first frame, ...) of `spec` (S, channels, 129, F),
    as `SceneWindows.cut` makes it."""
    return model_input(spec.unfold(-1, length, 1)[windows[:, 0], :, :, windows[:, 1]], kinds)


class _SceneChunks(torch.utils.data.Dataset):
    """Chunk (epoch, first, last) -> (features (S, channels, 129, F) float16, windows (n, 3)
    shuffled, their targets, their ids); runs in the loader's workers, each keeping its own
    SceneRenderer (the sounds it loaded)."""

    def __init__(self, recipe: SceneRecipe, featurize: Featurizer, cutter: SceneCutter, seed: int):
        self.recipe, self.featurize, self.cutter, self.seed = recipe, featurize, cutter, seed
        self._renderer: SceneRenderer | None = None

    def __len__(self) -> int:  # keys come from the sampler
        return 0

    def render(self, draws: list[SceneDraw]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The draws' features, float16 as a scene shard is read, and label rows."""
        if self._renderer is None:
            self._renderer = SceneRenderer(self.recipe)
        audio, _, rows = self._renderer.render(draws)
        return self.featurize(audio).astype(np.float16, copy=False), rows

    def __getitem__(self, key):
        epoch, first, last = key
        draws = draw_scenes(self.recipe, self.seed, epoch, range(first, last))
        spec, rows = self.render(draws)
        windows, targets = self.cutter.cut(spec.shape[-1], rows)
        per_scene = len(windows) // max(1, len(draws))
        # a window's id: its scene's number times the windows per scene, plus its place there
        ids = (first + windows[:, 0]) * per_scene + np.tile(np.arange(per_scene), len(draws))
        order = np.random.default_rng([int(self.seed), int(epoch), int(first), 0x5CE]).permutation(len(windows))
        return spec, windows[order], targets[torch.from_numpy(order)], torch.from_numpy(ids[order])


class _ChunkKeys(torch.utils.data.Sampler):
    """The chunks of this rank's scenes in the current epoch (set before each epoch)."""

    def __init__(self, first: int, count: int, chunk: int):
        self.first, self.count, self.chunk, self.epoch = first, count, chunk, 0

    def __iter__(self):
        for start in range(self.first, self.first + self.count, self.chunk):
            yield (self.epoch, start, min(start + self.chunk, self.first + self.count))

    def __len__(self) -> int:
        return -(-self.count // self.chunk)


def _as_is(item):
    return item


class SceneFlyData:
    """Training batches (x, target, window ids) of scenes drawn anew every epoch; the
    interface of `SceneWindows` in training (len = steps per epoch, `epoch(e)`)."""

    resident, share_bytes, shards_read = False, 0, ()

    def __init__(self, recipe: SceneRecipe, featurize: Featurizer, epoch_scenes: int, batch_size: int, device, *,
                 length: int, hop: int, n_classes: int, distance: bool = False, seed: int = 0, rank: int = 0,
                 world: int = 1, workers: int = 1):
        if not 1 <= epoch_scenes <= MAX_EPOCH_SAMPLES:
            raise ConfigError(f"--epoch-samples must be in [1, {MAX_EPOCH_SAMPLES}] scenes, not {epoch_scenes}")
        if not 0 <= workers <= MAX_WORKERS:
            raise ConfigError(f"--loader-workers must be in [0, {MAX_WORKERS}], not {workers}")
        if not recipe.train_sounds():  # said here, not from inside a loader worker
            raise DataError(f"{recipe.stage1}: no training sounds to draw scenes from")
        self.recipe, self.device, self.kinds, self.length = recipe, torch.device(device), featurize.kinds, length
        self.epoch_scenes, self.batch_size, self.rank, self.world = epoch_scenes, batch_size, rank, world
        self.cutter = SceneCutter(length, hop, n_classes, distance=distance)
        frames = n_frames(recipe.config.n_samples)
        self.per_scene = len(self.cutter.starts(frames))
        if not self.per_scene:
            raise DataError(f"{recipe.stage1}: its scenes have {frames} frames, shorter than a window of {length} "
                            "(--window-frames)")
        per_rank = epoch_scenes // world  # every rank makes the same number of steps
        self.steps = per_rank * self.per_scene // batch_size
        self.per_rank = per_rank * self.per_scene  # windows per rank and epoch
        self.keys = _ChunkKeys(rank * epoch_scenes // world, per_rank, SCENES_PER_CHUNK)
        self.chunks = _SceneChunks(recipe, featurize, self.cutter, seed)
        self.loader = torch.utils.data.DataLoader(
            self.chunks, batch_size=None, sampler=self.keys, num_workers=workers, collate_fn=_as_is,
            persistent_workers=workers > 0, worker_init_fn=init_worker if workers else None,
            prefetch_factor=2 if workers else None)

    def __len__(self) -> int:
        return self.steps

    def describe(self) -> str:
        workers = self.loader.num_workers
        return (f"on the fly: {self.epoch_scenes:,} scenes an epoch drawn anew from {self.recipe.stage1} "
                f"({len(self.recipe.train_sounds())} training sounds, {len(self.recipe.conditions)} conditions), "
                f"{self.per_scene} windows of {self.length} frames each, shuffled in chunks of {SCENES_PER_CHUNK} "
                f"scenes, rendered by {workers or 'the training'} process{'es' if workers > 1 else ''}")

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This rank's batches of `epoch`: each chunk's shuffled windows in order, a batch
        crossing from one chunk into the next; windows are cut as their batch is made."""
        self.keys.epoch = epoch
        queue: list = []  # [features, windows, targets, ids, windows taken] of the chunks not used up
        held = made = 0
        for spec, windows, targets, ids in self.loader:
            queue.append([torch.from_numpy(spec).to(self.device, non_blocking=True),
                          torch.from_numpy(windows).to(self.device), targets.to(self.device), ids, 0])
            held += len(windows)
            while held >= self.batch_size and made < self.steps:
                held, made = held - self.batch_size, made + 1
                yield self._take(queue, self.batch_size)

    def _take(self, queue: list, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next `n` windows of the queue's chunks: (x, target, ids)."""
        xs, ys, ids = [], [], []
        while n:
            spec, windows, targets, wid, at = queue[0]
            k = min(n, len(windows) - at)
            xs.append(window_input(spec, windows[at:at + k], self.length, self.kinds))
            ys.append(targets[at:at + k])
            ids.append(wid[at:at + k])
            n -= k
            queue[0][4] = at + k
            if at + k == len(windows):
                queue.pop(0)
        return torch.cat(xs), torch.cat(ys), torch.cat(ids)


def scene_heldout_features(recipe: SceneRecipe, run_dir, kinds, on_start=None, on_shard=None) -> Path:
    """RUN/heldout: the validation and test scenes of the recipe's folder, featurized once
    with Stage 2's code (resumable), so that a run on the fly is validated and tested on
    exactly the scenes a run from Stage 2 would be."""
    from bast.pipeline.features.featurize import featurize

    out = Path(run_dir) / "heldout"
    featurize(recipe.stage1, out, features=tuple(kinds), splits=("val", "test"), on_start=on_start,
              on_shard=on_shard)
    return out
