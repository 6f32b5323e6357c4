"""Targets: what a model learns from a sample's labels (`bast-cli train --target NAME`).

A target is one declaration (a subclass of `Target`, registered by name in `TARGETS`):

- `label_shape`, `labels(columns)`: the per-sample label array (N, *label_shape) float32,
  made on the host from a shard's label columns (azimuth_deg, elevation_deg, category, ...);
  the loaders keep it beside the spectrograms and shuffle it with them;
- `encode(labels)`: that array, on the device, to what the loss compares the output with;
- `outputs`: the model's output size (written into the model config as `outputs`);
- `loss(pred, y)`: a scalar; a target may hold parameters (learned task weights), which
  `attach` adds to the model so that the optimizer and the checkpoints carry them;
- `decode(pred, y)`: per-sample columns of the predictions table, numpy: what the model
  predicted, in words (pred_azimuth_deg, pred_category, ...), and per-sample errors;
- `output_columns`: the table columns that hold the raw output, so a loss can be
  recomputed over a whole table (validation's loss picks the best checkpoint);
- `label_columns`: the shard labels the table keeps (the metrics read them).

The metrics of a table follow from its columns (bast/model/targets/metrics.py), so the report and
`bast-cli evaluate` need no target to read a stored table.

Built in: `azimuth` (the paper's 2-D unit vector and its losses; the default), `direction`
(the 3-D unit vector on the sphere, the same losses), `category` (cross-entropy over the
data set's classes) and the multitask `direction+category`, `azimuth+category`; on scenes,
`seld` (multi-ACCDOA) and `seld-distance` (with the source distance, DCASE 2024). A target
with per-frame labels (tracks over time) declares a `label_shape` of several axes; nothing
here assumes one label vector per sample beyond "the first axis is the sample".

Adding a target: subclass `Target` in any module and decorate it with `@register`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bast.errors import ConfigError
from bast.model.targets import losses, names
from bast.sphere import azimuth_elevation

TASK_WEIGHTS = ("fixed", "learned")


@dataclass(frozen=True)
class TargetSettings:
    """What a target is built from: the training settings it uses and the data's classes."""

    loss: str = "mix"  # direction losses: mse | ad | mix (hybrid)
    mix_weight: float = 1.0
    classes: tuple[str, ...] = ()  # the data set's sorted class list (category targets)
    task_weights: str = "fixed"  # multitask: fixed weights, or learned (Kendall et al. 2018)
    category_weight: float = 1.0  # multitask, fixed: weight of the category loss (direction: 1)
    window_frames: int = 61  # scene targets: STFT frames per window the model reads


class Target(nn.Module):
    """The interface (see the module docstring). An nn.Module so that a target may hold
    parameters; most hold none."""

    name: ClassVar[str] = ""
    label_shape: ClassVar[tuple[int, ...]] = ()
    label_columns: ClassVar[tuple[str, ...]] = ()
    uses_classes: ClassVar[bool] = False  # needs the data set's class list (TargetSettings.classes)
    scenes: ClassVar[bool] = False  # learned from windows of whole scenes (bast-cli scenes), not from clips;
    # the one clip-or-scene choice: torch-free code asks bast.model.targets.names.on_scenes
    best_by: ClassVar[str] = "val_loss"  # the validation figure (lower is better) that picks best.pt

    def __init__(self, settings: TargetSettings):
        super().__init__()
        self.settings = settings

    @property
    def outputs(self) -> int:
        raise NotImplementedError

    @property
    def output_columns(self) -> tuple[str, ...]:
        raise NotImplementedError

    def labels(self, columns: dict) -> np.ndarray:
        raise NotImplementedError

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, pred: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def model_settings(self, fields: set) -> dict:
        """The model config settings (of those in `fields`) this target fixes: the output size."""
        return {"outputs": self.outputs} if "outputs" in fields else {}

    def table_loss(self, table: dict) -> float:
        """The loss over a whole predictions table at once (validation's loss)."""
        pred = torch.from_numpy(np.stack([np.asarray(table[c]) for c in self.output_columns], axis=1)
                                .astype(np.float32))
        y = self.encode(torch.from_numpy(self.labels(table)))
        with torch.no_grad():
            return float(self.loss(pred, y))


TARGETS: dict[str, type[Target]] = {}


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: make a target available to `--target cls.name`."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} declares no name")
    TARGETS[cls.name] = cls
    names.declare(cls.name, cls.scenes)  # the clip-or-scene answer for torch-free readers
    return cls


def make_target(name: str, settings: TargetSettings | None = None) -> Target:
    """The target `name` built from `settings`; an unknown name is refused with the list."""
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return TARGETS[name](settings or TargetSettings())


def target_of(cfg) -> Target:
    """The target of a training config (TrainConfig)."""
    return make_target(cfg.target, TargetSettings(loss=cfg.loss, mix_weight=cfg.mix_weight,
                                                  classes=tuple(cfg.classes), task_weights=cfg.task_weights,
                                                  category_weight=cfg.category_weight,
                                                  window_frames=cfg.window_frames))


def attach(model: nn.Module, target: Target) -> nn.Module:
    """Give the model the target's parameters (learned task weights) as a submodule, so that
    the optimizer, DDP and the checkpoints carry them; a target without parameters adds
    nothing (the model's state_dict stays what it was)."""
    if any(True for _ in target.parameters()):
        model.add_module("target_loss", target)
    return model


def needs_classes(name: str) -> bool:
    """Whether target `name` needs the data set's class list."""
    return make_target_class(name).uses_classes


def make_target_class(name: str) -> type[Target]:
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return TARGETS[name]


# ----------------------------------------------------------------------------- directions
@register
class Azimuth(Target):
    """The paper's target: the unit vector (cos az, sin az); MSE, AD or their mix."""

    name = "azimuth"
    label_shape = ()
    label_columns = ("azimuth_deg",)

    def __init__(self, settings: TargetSettings):
        super().__init__(settings)
        self._loss = losses.make_loss(settings.loss, settings.mix_weight)

    outputs = 2
    output_columns = ("pred_x", "pred_y")

    def labels(self, columns: dict) -> np.ndarray:
        return np.asarray(columns["azimuth_deg"], dtype=np.float32)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return losses.azimuth_to_vector(labels)

    def loss(self, pred, y):
        return self._loss(pred, y)

    def decode(self, pred, y) -> dict[str, np.ndarray]:
        p = pred.cpu().numpy()
        return {"pred_x": p[:, 0], "pred_y": p[:, 1],
                "ad_deg": losses.angular_distance_deg(pred, y).cpu().numpy(),
                "sq_err": losses.squared_error(pred, y).cpu().numpy()}


@register
class Direction(Azimuth):
    """The 3-D unit vector (cos el cos az, cos el sin az, sin el); the same losses on the
    sphere (AD is then the great-circle error). Shards without elevation read as 0."""

    name = "direction"
    label_shape = (2,)
    label_columns = ("azimuth_deg", "elevation_deg")
    outputs = 3
    output_columns = ("pred_x", "pred_y", "pred_z")

    def labels(self, columns: dict) -> np.ndarray:
        az = np.asarray(columns["azimuth_deg"], dtype=np.float32)
        el = columns.get("elevation_deg")
        el = np.zeros_like(az) if el is None else np.asarray(el, dtype=np.float32)
        return np.stack([az, el], axis=1)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        az, el = torch.deg2rad(labels[:, 0]), torch.deg2rad(labels[:, 1])
        return torch.stack((torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)), dim=-1)

    def decode(self, pred, y) -> dict[str, np.ndarray]:
        p = pred.cpu().numpy()
        az, el = azimuth_elevation(p.astype(np.float64))
        return {"pred_x": p[:, 0], "pred_y": p[:, 1], "pred_z": p[:, 2],
                "ad_deg": losses.angular_distance_deg(pred, y).cpu().numpy(),
                "sq_err": losses.squared_error(pred, y).cpu().numpy(),
                "pred_azimuth_deg": az, "pred_elevation_deg": el}


# ----------------------------------------------------------------------------- classes
@register
class Category(Target):
    """The sound's class: one logit per class of the data set, cross-entropy. A sample whose
    class the run never saw (evaluation on other data) has label -1: no loss, never right."""

    name = "category"
    label_shape = ()
    label_columns = ("category",)
    uses_classes = True

    def __init__(self, settings: TargetSettings):
        super().__init__(settings)
        if not settings.classes:
            raise ConfigError(f"target {self.name!r} needs the data set's classes, and this data has none "
                              "(no category labels)")
        self.classes = tuple(settings.classes)
        self._index = {c: i for i, c in enumerate(self.classes)}

    @property
    def outputs(self) -> int:
        return len(self.classes)

    @property
    def output_columns(self) -> tuple[str, ...]:
        return tuple(f"logit_{i}" for i in range(len(self.classes)))

    def labels(self, columns: dict) -> np.ndarray:
        return np.array([self._index.get(str(c), -1) for c in np.asarray(columns["category"], dtype=str)],
                        dtype=np.float32)

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return labels.long()

    def loss(self, pred, y):
        return F.cross_entropy(pred, y, ignore_index=-1)

    def decode(self, pred, y) -> dict[str, np.ndarray]:
        p = pred.cpu().numpy()
        out = {f"logit_{i}": p[:, i] for i in range(p.shape[1])}
        out["pred_category"] = np.asarray(self.classes, dtype=str)[p.argmax(axis=1)]
        return out


# ----------------------------------------------------------------------------- multitask
class Multitask(Target):
    """Several targets on one output: the model's output is their outputs side by side, the
    labels theirs side by side, the loss a weighted sum. Fixed weights (1 for the first,
    `category_weight` for the second), or learned ones (Kendall, Gal and Cipolla 2018: a
    log-variance s per task, loss exp(-s) L + s/2 for the classifier, (exp(-s) L + s) / 2 for
    the regression)."""

    parts: ClassVar[tuple[type[Target], ...]] = ()

    def __init__(self, settings: TargetSettings):
        super().__init__(settings)
        if settings.task_weights not in TASK_WEIGHTS:
            raise ConfigError(f"task_weights must be one of {', '.join(TASK_WEIGHTS)}, not {settings.task_weights!r}")
        self.tasks = nn.ModuleList([p(settings) for p in self.parts])
        self.fixed = (1.0,) + (settings.category_weight,) * (len(self.parts) - 1)
        self.log_vars = nn.Parameter(torch.zeros(len(self.parts))) if settings.task_weights == "learned" else None
        self.label_columns = tuple(dict.fromkeys(c for t in self.tasks for c in t.label_columns))

    @property
    def outputs(self) -> int:
        return sum(t.outputs for t in self.tasks)

    @property
    def output_columns(self) -> tuple[str, ...]:
        return tuple(c for t in self.tasks for c in t.output_columns)

    def _widths(self, sizes):
        edges = np.cumsum([0, *sizes])
        return list(zip(edges[:-1], edges[1:]))

    def _label_widths(self):
        return self._widths([int(np.prod(t.label_shape)) for t in self.tasks])

    @property
    def label_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (sum(int(np.prod(t.label_shape)) for t in self.tasks),)

    def labels(self, columns: dict) -> np.ndarray:
        return np.concatenate([t.labels(columns).reshape(len(columns["azimuth_deg"]), -1) for t in self.tasks],
                              axis=1)

    def _split(self, labels: torch.Tensor):
        return [labels[:, a:b].reshape(-1, *t.label_shape) for t, (a, b) in zip(self.tasks, self._label_widths())]

    def encode(self, labels: torch.Tensor):
        return tuple(t.encode(part) for t, part in zip(self.tasks, self._split(labels)))

    def _outputs(self, pred):
        return [pred[:, a:b] for a, b in self._widths([t.outputs for t in self.tasks])]

    def loss(self, pred, y):
        parts = [t.loss(p, target) for t, p, target in zip(self.tasks, self._outputs(pred), y)]
        if self.log_vars is None:
            return sum(w * part for w, part in zip(self.fixed, parts))
        total = pred.new_zeros(())
        for task, part, s in zip(self.tasks, parts, self.log_vars):
            if isinstance(task, Category):
                total = total + torch.exp(-s) * part + 0.5 * s
            else:
                total = total + 0.5 * (torch.exp(-s) * part + s)
        return total

    def decode(self, pred, y) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for t, p, target in zip(self.tasks, self._outputs(pred), y):
            out.update(t.decode(p, target))
        return out


@register
class DirectionCategory(Multitask):
    name = "direction+category"
    parts = (Direction, Category)
    uses_classes = True


@register
class AzimuthCategory(Multitask):
    name = "azimuth+category"
    parts = (Azimuth, Category)
    uses_classes = True


# ----------------------------------------------------------------------------- scenes (SELD)
@register
class Seld(Target):
    """Sound event localization and detection on windows of whole scenes: the multi-ACCDOA
    target (label frames x tracks x classes x 3 per window) with the ADPIT loss
    (bast/model/targets/adpit.py, docs/seld.md). A window of `window_frames` STFT frames holds
    `frames` label frames (61 -> 5); the model's output is their vectors, flat or shaped.
    Windows, their labels and the scene-level metrics are the scene loader's and
    bast/model/evaluation/seld.py's: a window has no per-sample table row."""

    name = "seld"
    uses_classes = True
    scenes = True
    # as DCASE picks its best model: the DCASE 2023 baseline by the lowest validation SELD
    # score (sharathadavanne/seld-dcase2023, train_seldnet.py: `val_seld_scr <= best_seld_scr`)
    best_by = "val_seld_score"
    distance: ClassVar[bool] = False  # a distance (metres) per track and class beside x, y, z
    label_columns = ()
    output_columns = ()

    def __init__(self, settings: TargetSettings):
        super().__init__(settings)
        from bast.model.targets.adpit import N_TRACKS
        from bast.pipeline.features.scenes import window_labels

        if not settings.classes:
            raise ConfigError(f"target {self.name!r} needs the data set's classes, and this data has none")
        self.classes = tuple(settings.classes)
        self.tracks = N_TRACKS
        self.window_frames = int(settings.window_frames)
        self.frames = window_labels(self.window_frames)
        if self.frames < 1:
            raise ConfigError(f"a window of {self.window_frames} frames holds no 100 ms label frame")

    @property
    def label_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.frames, self.tracks, len(self.classes), 3 + self.distance)

    @property
    def outputs(self) -> int:
        return int(np.prod(self.label_shape))

    def model_settings(self, fields: set) -> dict:
        """Flat-output models (mlp, cnn) get the whole window's vectors from their head;
        bast and ast one output token per label frame (M2M-AST); seldnet its classes and
        tracks, and whether it outputs distances. Every model reads windows of `window_frames`."""
        wanted = {"outputs": self.outputs, "out_tokens": self.frames, "n_time": self.window_frames,
                  "classes": len(self.classes), "tracks": self.tracks, "label_frames": self.frames,
                  "distance": self.distance}
        if "classes" in fields:  # seldnet: its own output layout
            wanted.pop("outputs")
        return {k: v for k, v in wanted.items() if k in fields}

    def labels(self, columns: dict) -> np.ndarray:
        raise ConfigError(f"the {self.name} target's labels are cut from whole scenes by the scene loader "
                          "(bast/model/data/scenes.py), not read from clip columns")

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        return labels

    def shaped(self, pred: torch.Tensor) -> torch.Tensor:
        """The model's output as (B, frames, tracks, classes, 3 or 4)."""
        return pred.reshape(pred.shape[0], *self.label_shape)

    def loss(self, pred, y):
        from bast.model.targets.adpit import adpit_loss

        return adpit_loss(self.shaped(pred).float(), y)

    def decode(self, pred, y) -> dict[str, np.ndarray]:
        raise ConfigError("seld outputs are stitched into whole scenes and decoded there (bast/model/evaluation/seld.py)")


@register
class SeldDistance(Seld):
    """SELD with the source distance, as the DCASE 2024 task 3 baseline: per label frame,
    track and class the multi-ACCDOA vector and the distance in metres (label frames x
    tracks x classes x 4), ADPIT over both (bast/model/targets/adpit.py); decoding gives
    each detected event's distance, the DCASE CSVs carry it (cm) and evaluation reports the
    relative distance error (docs/seld.md)."""

    name = "seld-distance"
    distance = True


def chance_accuracy(classes) -> float:
    """The accuracy of guessing uniformly among the classes."""
    return 1.0 / len(classes) if len(classes) else math.nan
