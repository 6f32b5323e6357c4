"""Training data made as it is asked for: every epoch new draws from a Stage 1 recipe,
rendered and featurized in loader worker processes (docs/train.md "Training on the fly").

Each epoch is `epoch_samples` samples, numbered 0 .. N-1; sample k is drawn from (seed,
epoch, k) alone (bast/pipeline/render/sampler.py), rendered with Stage 1's renderer and
featurized with Stage 2's feature kinds, stored as Stage 2 stores it (float16 unless the
held-out features are float32) and standardised as every loader standardises
(`model_input`). Under DDP rank r of w takes the contiguous numbers r*N/w .. (r+1)*N/w - 1:
disjoint, together the epoch. Batches are rendered ahead by `workers` processes (torch's
DataLoader; 0 renders in the training process); which process renders a batch never
changes what it holds, so results do not depend on the number of workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bast.errors import ConfigError
from bast.model.data import devicefeatures
from bast.model.data.loaders import model_input
from bast.model.targets.core import Target
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.render.recipe import Recipe
from bast.pipeline.render.sampler import DrawSettings, SampleRenderer, draw, prepare_batch

MAX_WORKERS = 64
MAX_EPOCH_SAMPLES = 100_000_000


@dataclass(frozen=True)
class Featurizer:
    """Stage 2's computation of the feature kinds `kinds`, stored as Stage 2 stores them."""

    kinds: tuple
    floor_db: float
    dtype: str = "float16"

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        parts = featurekinds.compute(self.kinds, audio, self.floor_db)
        return np.concatenate([parts[k].astype(featurekinds.get(k).dtype or self.dtype) for k in self.kinds], axis=1)


class _Batches(torch.utils.data.Dataset):
    """Batch (epoch, first, last) -> (features, label columns, sample numbers); runs in the
    loader's workers, each keeping its own SampleRenderer (clips, IR spectra, noise banks).
    `prepared`: the batch prepared for the device (`prepare_batch`) instead of features."""

    def __init__(self, recipe: Recipe, settings: DrawSettings, featurize: Featurizer, seed: int,
                 prepared: bool = False):
        self.recipe, self.settings, self.featurize, self.seed = recipe, settings, featurize, seed
        self.prepared = prepared
        self._renderer: SampleRenderer | None = None

    def renderer(self) -> SampleRenderer:
        if self._renderer is None:
            self._renderer = SampleRenderer(self.recipe, self.settings)
        return self._renderer

    def __len__(self) -> int:  # keys come from the sampler, not from 0 .. len - 1
        return 0

    def __getitem__(self, key):
        epoch, first, last = key
        r = self.renderer()
        numbers = np.arange(first, last)
        draws = draw(self.recipe, self.settings, self.seed, epoch, numbers,
                     r.elevation_limits() if self.settings.directions == "sphere" else (-90.0, 90.0))
        if self.prepared:
            return (*prepare_batch(r, draws), numbers)
        audio, labels = r.render(draws)
        return self.featurize(audio), labels, numbers


class _EpochKeys(torch.utils.data.Sampler):
    """The batches of this rank in the current epoch (set before each epoch)."""

    def __init__(self, first: int, per_rank: int, batch_size: int, steps: int):
        self.first, self.per_rank, self.batch_size, self.steps, self.epoch = first, per_rank, batch_size, steps, 0

    def __iter__(self):
        for b in range(self.steps):
            start = self.first + b * self.batch_size
            yield (self.epoch, start, start + self.batch_size)

    def __len__(self) -> int:
        return self.steps


def _as_is(item):
    return item


def init_worker(_):
    """A loader worker renders with numpy on one thread, at idle priority where the OS has
    one (Linux SCHED_IDLE): the training process keeps all its torch threads and the worker
    fills the cores' gaps between them (the optimizer's step, Python, the threads' waits).
    At normal priority a worker on a 2-core CPU took one core from the step's two threads
    whenever it ran, and the step waited for it (docs/performance.md). A worker whose
    queue runs dry gets the cores all the same: the training process then waits for it
    and leaves them free. Priority never changes what a batch holds."""
    torch.set_num_threads(1)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: the lowest nice instead
        try:
            os.nice(19)
        except OSError:
            pass


class OnTheFlyData:
    """Training batches (x, target, sample numbers) drawn anew every epoch; the interface of
    `ResidentData` (len = steps per epoch, `epoch(e)`)."""

    resident, share_bytes, shards_read = False, 0, ()

    def __init__(self, recipe: Recipe, settings: DrawSettings, featurize: Featurizer, epoch_samples: int,
                 batch_size: int, device, seed: int = 0, rank: int = 0, world: int = 1,
                 target: Target | None = None, workers: int = 1, render_device: str = "workers"):
        if not 1 <= epoch_samples <= MAX_EPOCH_SAMPLES:
            raise ConfigError(f"--epoch-samples must be in [1, {MAX_EPOCH_SAMPLES}], not {epoch_samples}")
        if not 0 <= workers <= MAX_WORKERS:
            raise ConfigError(f"--loader-workers must be in [0, {MAX_WORKERS}], not {workers}")
        self.target, self.device, self.kinds = target, torch.device(device), featurize.kinds
        self.epoch_samples, self.batch_size, self.rank, self.world = epoch_samples, batch_size, rank, world
        first = rank * epoch_samples // world
        per_rank = epoch_samples // world  # every rank makes the same number of steps
        self.steps = per_rank // batch_size
        self.keys = _EpochKeys(first, per_rank, batch_size, self.steps)
        # where the convolution and the STFT run (docs/train.md "Training on the fly", --render-device)
        self.place = devicefeatures.resolve_place(render_device, self.device)
        self.featurize, self.on_device = featurize, None
        if self.place == "device":
            devicefeatures.check_kinds(featurize.kinds)
            self.on_device = devicefeatures.DeviceRenderer(SampleRenderer(recipe, settings), self.device)
        self.batches = _Batches(recipe, settings, featurize, seed, prepared=self.place == "device")
        self.loader = torch.utils.data.DataLoader(
            self.batches, batch_size=None, sampler=self.keys, num_workers=workers, collate_fn=_as_is,
            persistent_workers=workers > 0, worker_init_fn=init_worker if workers else None,
            prefetch_factor=4 if workers else None)

    def __len__(self) -> int:
        return self.steps

    def describe(self) -> str:
        s = self.batches.settings
        return (f"on the fly: {self.epoch_samples:,} samples an epoch drawn anew from {self.batches.recipe.stage1} "
                f"({(f'{s.fresh_per_epoch:,} fresh procedural sounds an epoch' if s.fresh_per_epoch else 'fresh procedural sounds') if s.fresh_sounds else f'{len(self.batches.recipe.train_sounds())} training sounds'}, "
                f"{s.directions} directions, gain +-{s.gain_db:g} dB, onset +-{s.onset_ms:g} ms), "
                f"{'prepared' if self.on_device else 'rendered'} by "
                f"{self.loader.num_workers or 'the training'} process{'es' if self.loader.num_workers > 1 else ''}"
                + (f", convolved and featurized on {self.device}" if self.on_device else ""))

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self.keys.epoch = epoch
        for item, labels, numbers in self.loader:
            if self.on_device:
                # labels keep the SNRs drawn (a silent sample, mixed with no noise, would read
                # +inf in the numpy path's): reading the device's back would wait for it
                audio, _ = self.on_device.render(item)
                spec = devicefeatures.stacked(self.kinds, audio, self.featurize.floor_db, self.featurize.dtype)
            else:
                spec = torch.from_numpy(item).to(self.device, non_blocking=True)
            x = model_input(spec, self.kinds)
            y = self.target.encode(torch.from_numpy(self.target.labels(labels)).to(self.device))
            yield x, y, torch.from_numpy(numbers)


def heldout_features(recipe: Recipe, run_dir, kinds, on_start=None, on_shard=None) -> Path:
    """RUN/heldout: the validation and test samples of the recipe's Stage 1 folder,
    featurized once with Stage 2's code (resumable), so that a run on the fly is validated
    and tested on exactly the samples a run from Stage 2 would be. A folder written by
    `spatialize --plan-only` holds no audio: its validation and test shards are rendered
    first, by spatialize itself, into RUN/heldout-stage1 (the shards a full run writes)."""
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.render.spatialize import spatialize

    stage1 = recipe.stage1
    if recipe.plan_only:
        stage1 = Path(run_dir) / "heldout-stage1"
        spatialize(list(recipe.refs), stage1, recipe.config, source=recipe.source, splits=("val", "test"),
                   on_start=on_start, on_shard=on_shard)
    out = Path(run_dir) / "heldout"
    featurize(stage1, out, features=tuple(kinds), splits=("val", "test"), on_start=on_start, on_shard=on_shard)
    return out


def default_epoch_samples(recipe: Recipe) -> int:
    """As many samples as Stage 1's training split holds (sounds x directions x conditions)."""
    return len(recipe.train_sounds()) * len(recipe.grid[0]) * len(recipe.conditions)


def describe_recipe(recipe: Recipe) -> dict:
    """What config.json records of the recipe a run draws from."""
    return {"stage1": str(recipe.stage1), "train_sounds": len(recipe.train_sounds()),
            "conditions": [{"env": c.env, "head": c.head, "room": c.room, "irs": recipe.ir_paths[c.key]}
                           for c in recipe.conditions],
            "directions": len(recipe.grid[0]), "noise": ({"kind": recipe.config.noise,
                                                         "snr_db": list(recipe.config.snr_db)}
                                                        if recipe.config.snr_db is not None else None),
            "source": recipe.source}
