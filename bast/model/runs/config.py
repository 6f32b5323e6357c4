"""Training settings: `TrainConfig`, the presets, and the checks that refuse a bad setting
by name (docs/train.md lists every setting)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from bast.conventions import parse_environments
from bast.errors import ConfigError
from bast.model.data.devicefeatures import RENDER_PLACES  # training on the fly
from bast.model.nets.bast import BASTConfig
from bast.model.nets.registry import BACKBONE_PRESETS, BASELINE_PRESETS, MODELS, model_config
from bast.model.targets.core import TARGETS, TASK_WEIGHTS
from bast.pipeline.render.sampler import (  # training on the fly
    DIRECTION_MODES as SAMPLE_DIRECTIONS,
    MAX_FRESH_PER_EPOCH,
    DrawSettings,
)

LOSSES = ("mse", "ad", "mix", "hybrid")  # hybrid: the paper's name for mix
SCHEDULES = ("constant", "cosine")
AMP_MODES = ("auto", "bf16", "none")
# torch.compile's modes; reduce-overhead captures CUDA graphs (on a GPU; ignored on a CPU).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# What picks the best checkpoint (best.pt): the lowest validation loss, or for SELD targets
# the lowest validation SELD score (DCASE 2023); auto: the target's own choice.
BEST_BY = ("auto", "val_loss", "val_seld_score")


@dataclass
class TrainConfig:
    """Every training setting. `arch` names the model (bast, mlp, cnn, ast: see
    bast/model/nets/registry.py) and `model` is its typed config (a `BASTConfig` for bast);
    `to_dict` writes it as a plain dict (config.json, checkpoints) and a dict is accepted in
    its place (old checkpoints). A wrong name, type or value raises ConfigError naming the
    setting."""

    preset: str = "tiny"
    model: BASTConfig = field(default_factory=BASTConfig)  # or the config of `arch`
    arch: str = "bast"
    # What the model learns (bast/model/targets/core.py): azimuth (paper), direction, category,
    # direction+category, azimuth+category.
    target: str = "azimuth"
    loss: str = "mix"  # mse | ad | mix (hybrid): the direction loss
    mix_weight: float = 1.0  # weight of the AD term in mix
    task_weights: str = "fixed"  # multitask targets: fixed, or learned (Kendall et al. 2018)
    category_weight: float = 1.0  # multitask, fixed weights: the category loss's (direction's: 1)
    # The data set's classes, sorted (category targets); filled in from the training data.
    classes: tuple = ()
    lr: float = 1e-3
    schedule: str = "cosine"  # constant (paper) | cosine (after a linear warm-up)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine floor, as a fraction of lr
    weight_decay: float = 0.0  # plain Adam, as in the paper
    batch_size: int = 64
    epochs: int = 10
    max_minutes: float | None = None  # stop after the epoch that crosses this budget
    train_env: str = "RI"  # environments trained on (anechoic, hall, RI01, RI02, RI)
    test_env: str = "RI"  # environments evaluated on
    # Train (and validate) on these heads / rooms only (comma-separated names as in the
    # shards' head and room labels; "" = all). The test split is what Stage 1 put there.
    train_heads: str = ""
    train_rooms: str = ""
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | none
    # torch.compile the model; None: on a GPU (an uncompiled paper-preset step launches
    # about 735 small kernels, near launch-bound), off on a CPU (compiling costs more than
    # a tiny model's run saves).
    compile: bool | None = None
    compile_mode: str = "default"  # torch.compile's mode when compiling (COMPILE_MODES)
    deterministic: bool = False
    memory_budget_gb: float = 8.0  # selected samples up to this stay resident on the device
    eval_batch_size: int = 256
    # Validate every val_every epochs (and after the last): validation picks the best
    # checkpoint, so an epoch without it cannot become the best one.
    val_every: int = 1
    # The validation figure that picks best.pt (BEST_BY): auto resolves, when the run starts,
    # to the target's (`Target.best_by`: val_loss; val_seld_score for the SELD targets, as
    # DCASE picks by SELD score); config.json records what it resolved to.
    best_by: str = "auto"
    # Scene data (--target seld): windows of window_frames STFT frames (61 = 500 ms = 5 label
    # frames, what the clip models read; longer for seldnet) cut from whole scenes every
    # window_hop frames for training (evaluation cuts them every 25 frames, two label
    # frames, and stitches them back into scenes: docs/seld.md).
    window_frames: int = 61
    window_hop: int = 25
    # Training on the fly (docs/train.md): samples drawn anew every epoch from the recipe of
    # the Stage 1 folder `stage1_dir`, rendered and featurized by `loader_workers` processes.
    # Validation and test are that folder's own, featurized once.
    on_the_fly: bool = False
    stage1_dir: str = ""
    fresh_sounds: bool = False  # new procedural sounds every epoch
    fresh_per_epoch: int = 0  # with fresh_sounds: new sounds an epoch, each reused; 0 = one per sample
    sample_directions: str = "grid"  # grid | circle | sphere
    epoch_samples: int = 0  # samples per epoch; 0 = as many as Stage 1's training split holds
    gain_db: float = 6.0  # a gain drawn in [-gain_db, +gain_db] dB per sample
    onset_ms: float = 50.0  # an onset shift drawn in [-onset_ms, +onset_ms] ms per sample
    loader_workers: int = 1  # processes rendering ahead (0: in the training process)
    # Where the convolution and the feature STFT run: auto (on the device when it is CUDA,
    # else in the workers), workers (numpy) or device (torch, batched; any device).
    render_device: str = "auto"

    def __post_init__(self):
        if self.arch not in MODELS:
            raise ConfigError(f"unknown model {self.arch!r}; choose from {', '.join(MODELS)}")
        kind = MODELS[self.arch][0]
        if isinstance(self.model, dict):
            _check_types(kind, self.model, "model setting ")
            _check_model_ranges(kind, self.model)  # before the config divides by heads
            self.model = model_config(self.arch, self.model)
        elif not isinstance(self.model, kind):
            raise ConfigError(f"model must be a {kind.__name__} or a dict for --model {self.arch}, "
                              f"not {type(self.model).__name__}")
        _check_types(TrainConfig, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                   if f.name != "model"})
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.task_weights not in TASK_WEIGHTS:
            raise ConfigError(f"task_weights must be one of {', '.join(TASK_WEIGHTS)}, not {self.task_weights!r}")
        if not isinstance(self.classes, (list, tuple)) or not all(isinstance(c, str) for c in self.classes):
            raise ConfigError(f"classes must be a list of names, not {self.classes!r}")
        self.classes = tuple(self.classes)
        if self.loss.lower() not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        self.loss = self.loss.lower()  # --loss MSE is mse: the report looks losses up by name
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, not {self.amp!r}")
        if self.best_by not in BEST_BY:
            raise ConfigError(f"best_by must be one of {', '.join(BEST_BY)}, not {self.best_by!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, not {self.compile_mode!r}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        for name in ("train_env", "test_env"):
            try:
                parse_environments(getattr(self, name))
            except ConfigError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        _check_model_ranges(kind, dataclasses.asdict(self.model))
        # Every number in its range; NaN fails every comparison, so each test is written
        # as "inside", never as "not outside".
        if self.sample_directions not in SAMPLE_DIRECTIONS:
            raise ConfigError(f"sample_directions must be one of {', '.join(SAMPLE_DIRECTIONS)}, "
                              f"not {self.sample_directions!r}")
        if self.render_device not in RENDER_PLACES:
            raise ConfigError(f"render_device must be one of {', '.join(RENDER_PLACES)}, not {self.render_device!r}")
        for name, allowed, inside in _RANGES:
            value = getattr(self, name)
            if value is not None and not inside(value):
                raise ConfigError(f"{name} must be {allowed}, not {value!r}")
        # after the ranges, which name every setting alike: the draw settings' rules across
        # settings (--fresh-per-epoch without --fresh-sounds), before any work
        DrawSettings(fresh_sounds=self.fresh_sounds, fresh_per_epoch=self.fresh_per_epoch,
                     directions=self.sample_directions, gain_db=self.gain_db, onset_ms=self.onset_ms)

    def to_dict(self) -> dict:
        """Plain JSON types; `model` as a dict (what config.json and checkpoints hold)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From `to_dict` or a run's config.json (its extra keys, such as features_dir, are
        not settings and are skipped); `model` may be a dict."""
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        # config.json of older runs wrote the resolved device and autocast dtype over the
        # settings: "torch.bfloat16" / "None" for amp
        if d.get("amp") in _RESOLVED_AMP:
            d["amp"] = _RESOLVED_AMP[d["amp"]]
        # runs from before best_by (their checkpoints hold a validation loss as the best)
        d.setdefault("best_by", "val_loss")
        return cls(**d)


_RESOLVED_AMP = {"torch.bfloat16": "bf16", "None": "none"}

SEED_LIMIT = 2 ** 32  # numpy's and torch's generators take any seed in [0, 2^32)

# (setting, its allowed range in words, the test): every numeric TrainConfig setting.
_RANGES: tuple[tuple[str, str, Callable], ...] = (
    ("lr", "a finite number > 0", lambda v: 0 < v < math.inf),
    ("mix_weight", "a finite number >= 0", lambda v: 0 <= v < math.inf),
    ("category_weight", "a finite number >= 0", lambda v: 0 <= v < math.inf),
    ("weight_decay", "a finite number >= 0", lambda v: 0 <= v < math.inf),
    ("min_lr_ratio", "in [0, 1]", lambda v: 0 <= v <= 1),
    ("warmup_steps", "a whole number >= 0", lambda v: v >= 0),
    ("batch_size", "a whole number >= 1", lambda v: v >= 1),
    ("eval_batch_size", "a whole number >= 1", lambda v: v >= 1),
    ("epochs", "a whole number >= 1 (a run with no epoch has no model to test)", lambda v: v >= 1),
    ("val_every", "a whole number >= 1", lambda v: v >= 1),
    ("window_frames", "a whole number in [16, 100000] (STFT frames)", lambda v: 16 <= v <= 100000),
    ("window_hop", "a whole number >= 1 (STFT frames)", lambda v: v >= 1),
    ("seed", f"a whole number in [0, {SEED_LIMIT - 1}]", lambda v: 0 <= v < SEED_LIMIT),
    ("memory_budget_gb", "a number >= 0 (GB)", lambda v: 0 <= v <= math.inf),
    ("max_minutes", "a number > 0 (minutes) or null", lambda v: 0 < v <= math.inf),
    ("epoch_samples", "a whole number in [0, 100000000] (0: Stage 1's training split)", lambda v: 0 <= v <= 10**8),
    ("fresh_per_epoch", f"a whole number in [0, {MAX_FRESH_PER_EPOCH}] (0: a new sound for every sample)",
     lambda v: 0 <= v <= MAX_FRESH_PER_EPOCH),
    ("gain_db", "in [0, 40] dB", lambda v: 0 <= v <= 40),
    ("onset_ms", "in [0, 250] ms", lambda v: 0 <= v <= 250),
    ("loader_workers", "a whole number in [0, 64]", lambda v: 0 <= v <= 64),
)


# Model counts where 0 means none / "from the window": output tokens of bast and ast (0: the
# mean-pooled head), seldnet's label frames (0: from the window) and optional layers.
_MAY_BE_ZERO = {"out_tokens", "label_frames", "attn_layers", "fnn_layers"}


def _check_model_ranges(kind: type, values: dict) -> None:
    """Model sizes are whole numbers >= 1 and dropout rates lie in [0, 1), by name (every
    model config's int and float fields are one or the other)."""
    hints = {f.name: str(f.type) for f in dataclasses.fields(kind)}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if hints.get(name) == "int" and name in _MAY_BE_ZERO and not value >= 0:
            raise ConfigError(f"model setting {name} must be a whole number >= 0, not {value!r}")
        if hints.get(name) == "int" and name not in _MAY_BE_ZERO and not value >= 1:
            raise ConfigError(f"model setting {name} must be a whole number >= 1, not {value!r}")
        if hints.get(name) == "float" and "dropout" in name and not 0 <= value < 1:
            raise ConfigError(f"model setting {name} must be in [0, 1), not {value!r}")


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_types(cls, values: dict, prefix: str = "") -> None:
    """Refuse a value of the wrong type by the setting's name (e.g. --set lr=abc)."""
    hints = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None:  # unknown names are refused elsewhere (BASTConfig.from_dict, preset)
            continue
        optional = hint.endswith("| None")
        base = hint.split("|")[0].strip()
        if value is None and optional:
            continue
        allowed = _TYPES.get(base)
        if allowed is None:
            continue
        if not isinstance(value, allowed) or (base != "bool" and isinstance(value, bool)):
            raise ConfigError(f"{prefix}{name} must be {'an' if base == 'int' else 'a'} {base}"
                              f"{' or null' if optional else ''}, not {value!r}")


PRESETS: dict[str, dict] = {
    # The paper (section 4.4): D 1024, 16 heads, MLP 1024, 3 layers per encoder, stride 6
    # (180 patches), dropout 0.2, Adam at a fixed 1e-4, batch 48, 50 epochs. A GPU job:
    # about 65 GFLOP per training sample.
    "paper": dict(model={}, lr=1e-4, schedule="constant", warmup_steps=0, batch_size=48, epochs=50),
    # A mid-size model for a CPU box or a small GPU: 4 layers' worth of capacity at 1/5 width.
    "small": dict(model=dict(dim=192, heads=6, mlp_dim=384, depth=2, stride=8, dropout=0.1), lr=5e-4,
                  warmup_steps=200, batch_size=64, epochs=20),
    # Trains in minutes on 2 CPU cores: one layer per encoder, stride 12 (55 tokens: the
    # token count sets the CPU cost), warm-up and cosine decay. No dropout: in a few minutes
    # the model underfits, and dropout costs a third of the CPU throughput (measured on 196
    # training sounds: test AD 30.8 deg with 0.1, 26.4 with 0, 24.4-25.9 over three seeds
    # with 0 and 16 epochs; docs/performance.md). A fixed number of epochs, no time budget:
    # the same seed gives the same model on any machine.
    "tiny": dict(model=dict(dim=96, heads=4, mlp_dim=192, depth=1, stride=12, dropout=0.0), lr=1e-3,
                 warmup_steps=100, batch_size=64, epochs=16),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A preset of the model `arch` (default bast) with any field overridden; model fields
    may be given at the top level. A baseline's preset takes BAST's training settings of
    the same name, then its own (bast/model/nets/registry.py)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    arch = overrides.get("arch", "bast")
    if arch not in MODELS:
        raise ConfigError(f"unknown model {arch!r}; choose from {', '.join(MODELS)}")
    base = dict(PRESETS[name], preset=name)
    if arch != "bast":
        base.update(BASELINE_PRESETS[arch][name])
    model = dict(base.pop("model"))
    model_fields = {f.name for f in dataclasses.fields(MODELS[arch][0])}
    backbone = overrides.get("backbone", "vit")
    if "backbone" in model_fields and isinstance(backbone, str) and backbone.lower() in BACKBONE_PRESETS:
        model.update(BACKBONE_PRESETS[backbone.lower()][name])
    for key in list(overrides):
        if key in model_fields:
            model[key] = overrides.pop(key)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    return TrainConfig(**{**base, **overrides, "model": model})


# What a resumed run may change: how long it runs, and where (not what it learns from).
RESUME_CHANGES = ("epochs", "max_minutes", "device", "compile", "compile_mode", "memory_budget_gb", "eval_batch_size", "val_every",
                  "loader_workers", "render_device")
