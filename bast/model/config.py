"""Training settings: `TrainConfig`, the presets, and the checks that refuse a bad setting
by name (docs/train.md lists every setting)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bast.errors import ConfigError
from bast.model.bast import BASTConfig


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # BASTConfig fields
    loss: str = "mix"  # mse | ad | mix (hybrid)
    mix_weight: float = 1.0  # weight of the AD term in mix
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
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | none
    compile: bool = False  # torch.compile the model (GPU)
    deterministic: bool = False
    memory_budget_gb: float = 8.0  # selected samples up to this stay resident on the device
    eval_batch_size: int = 256

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


PRESETS: dict[str, dict] = {
    # The paper (section 4.4): D 1024, 16 heads, MLP 1024, 3 layers per encoder, stride 6
    # (180 patches), dropout 0.2, Adam at a fixed 1e-4, batch 48, 50 epochs. A GPU job:
    # about 65 GFLOP per training sample.
    "paper": dict(model={}, lr=1e-4, schedule="constant", warmup_steps=0, batch_size=48, epochs=50),
    # A mid-size model for a CPU box or a small GPU: 4 layers' worth of capacity at 1/5 width.
    "small": dict(model=dict(dim=192, heads=6, mlp_dim=384, depth=2, stride=8, dropout=0.1), lr=5e-4,
                  warmup_steps=200, batch_size=64, epochs=20),
    # Trains in minutes on 2 CPU cores: one layer per encoder, stride 12 (55 tokens: the
    # token count sets the CPU cost), warm-up and cosine decay. No dropout: in a 4.5-minute
    # budget the model underfits, and dropout costs a third of the CPU throughput (measured
    # on 196 training sounds: test AD 30.8 deg with 0.1, 26.4 with 0, 24.4-25.9 over three
    # seeds with 0 and the 16 epochs its speed allows; docs/performance.md).
    "tiny": dict(model=dict(dim=96, heads=4, mlp_dim=192, depth=1, stride=12, dropout=0.0), lr=1e-3,
                 warmup_steps=100, batch_size=64, epochs=16, max_minutes=4.5),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A preset with any field overridden; model fields may be given at the top level."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    base = dict(PRESETS[name], preset=name)
    model = dict(base.pop("model"))
    model_fields = {f.name for f in dataclasses.fields(BASTConfig)}
    for key in list(overrides):
        if key in model_fields:
            model[key] = overrides.pop(key)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**{**base, **overrides, "model": model})
    BASTConfig(**cfg.model)  # fail early on a bad model field
    return cfg


# What a resumed run may change: how long it runs, and where (not what it learns from).
RESUME_CHANGES = ("epochs", "max_minutes", "device", "compile", "memory_budget_gb", "eval_batch_size")
