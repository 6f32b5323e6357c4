"""The models `bast-cli train --model NAME` can train, their configurations and presets.

Every model takes standardised spectrograms (B, 2, 129, 61), plus the channels of the other
feature kinds its config's `features` names (bast/pipeline/features/kinds.py: the interaural
phase adds two; `phase=True` is short for it), and returns (B, 2) = (x, y). They
share the loader, losses, checkpoints, resume, evaluation and report.
"""

from __future__ import annotations

from torch import nn

from bast.errors import ConfigError
from bast.model.nets.bast import BAST, BASTConfig
from bast.model.nets.baselines import AST, CNN, MLP, ASTConfig, CNNConfig, MLPConfig
from bast.model.nets.seldnet import SELDNET_PRESETS, SELDnet, SELDnetConfig

MODELS: dict[str, tuple[type, type]] = {
    "bast": (BASTConfig, BAST),
    "mlp": (MLPConfig, MLP),
    "cnn": (CNNConfig, CNN),
    "ast": (ASTConfig, AST),
    "seldnet": (SELDnetConfig, SELDnet),  # scenes only (--target seld): the DCASE baseline
}

# Per model and preset: the model's settings and the training settings that differ from
# the BAST preset of the same name. `tiny` trains in minutes on 2 CPU cores; `paper` is
# the GPU-sized model (for BAST, the paper's).
BASELINE_PRESETS: dict[str, dict[str, dict]] = {
    "mlp": {
        # Tang et al. 2022 trained 2-3 hidden layers of a few hundred units.
        "tiny": dict(model=dict(hidden=512, depth=2, dropout=0.1), lr=1e-3, warmup_steps=50, batch_size=64,
                     epochs=30),
        "small": dict(model=dict(hidden=1024, depth=3, dropout=0.1), lr=1e-3, warmup_steps=100, batch_size=128,
                      epochs=40),
        "paper": dict(model=dict(hidden=1024, depth=3, dropout=0.1), lr=1e-3, warmup_steps=200, batch_size=256,
                      epochs=50),
    },
    "cnn": {
        # 2 x 1 convolutions over all 129 x 61 bins cost about 0.2 GFLOP a sample with 32
        # filters: 77 training samples/s on 2 CPU cores, 267 with 16 (measured).
        "tiny": dict(model=dict(filters=16, hidden=256, dropout=0.3), lr=1e-3, warmup_steps=100, batch_size=64,
                     epochs=4),
        "small": dict(model=dict(filters=64, hidden=512, dropout=0.5), lr=5e-4, warmup_steps=200, batch_size=64,
                      epochs=20),
        "paper": dict(model=dict(filters=64, hidden=512, dropout=0.5), lr=1e-4, warmup_steps=0, schedule="constant",
                      batch_size=48, epochs=50),
    },
    "ast": {
        "tiny": dict(model=dict(dim=96, heads=4, mlp_dim=192, depth=2, stride=12, dropout=0.0), lr=1e-3,
                     warmup_steps=100, batch_size=64, epochs=16),
        "small": dict(model=dict(dim=192, heads=6, mlp_dim=384, depth=4, stride=8, dropout=0.1), lr=5e-4,
                      warmup_steps=200, batch_size=64, epochs=20),
        # BAST's width and depth (3 x 3 layers) in one stream, at the paper's patch stride.
        "paper": dict(model=dict(dim=1024, heads=16, mlp_dim=1024, depth=9, stride=6, dropout=0.2), lr=1e-4,
                      warmup_steps=0, schedule="constant", batch_size=48, epochs=50),
    },
    # The DCASE 2023 baseline trains with Adam at 1e-3, batch 128, 100 epochs (parameters.py);
    # its windows are 5 s: --window-frames 624 reads as long a context.
    "seldnet": {
        "tiny": dict(model=SELDNET_PRESETS["tiny"], lr=1e-3, warmup_steps=50, batch_size=32, epochs=16),
        "small": dict(model=SELDNET_PRESETS["small"], lr=1e-3, warmup_steps=100, batch_size=64, epochs=40),
        "paper": dict(model=SELDNET_PRESETS["paper"], lr=1e-3, warmup_steps=0, schedule="constant", batch_size=128,
                      epochs=100),
    },
}


# Per backbone (`--backbone`, BAST and ast) and preset: the encoder's own settings, applied
# over the model's preset; width, depth, heads, MLP, patch stride and the training settings
# stay the preset's, so the three backbones of one preset differ only in the encoder.
# swin: windows that tile the preset's patch grid (tiny 11 x 5: 6 x 5 windows, 2 of them;
# small 16 x 7: 8 x 7, 2; paper 20 x 9: the fork's 7 x 7, 6 of them over a 21 x 14 padding).
# mamba: MambaVision's mixer sizes (x and z each half the token width, state 8, convolution
# 3), as the fork uses it.
# Parameter counts of the paper presets beside the ViT's: docs/train.md (tests check them).
BACKBONE_PRESETS: dict[str, dict[str, dict]] = {
    "vit": {"tiny": {}, "small": {}, "paper": {}},
    "swin": {"tiny": dict(window=6), "small": dict(window=8), "paper": dict(window=7)},
    "mamba": {name: dict(expand=0.5, d_state=8, d_conv=3) for name in ("tiny", "small", "paper")},
}


def model_config(arch: str, settings: dict):
    """The typed config of `arch` from a dict; unknown models and settings refused by name."""
    if arch not in MODELS:
        raise ConfigError(f"unknown model {arch!r}; choose from {', '.join(MODELS)}")
    return MODELS[arch][0].from_dict(dict(settings))


def build_model(arch: str, cfg) -> nn.Module:
    """A freshly initialised model of `arch` with config `cfg` (typed, or a dict)."""
    if isinstance(cfg, dict):
        cfg = model_config(arch, cfg)
    return MODELS[arch][1](cfg)


# What training holds per parameter: float32 weights, their gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


def check_model_size(arch: str, cfg) -> int:
    """The parameters of `arch` with `cfg`, counted on the meta device (nothing allocated);
    a model whose training state would not fit bast.options' memory budget (`--set dim=100000`)
    is a ConfigError naming the size, before any weight is made. 0 when the model cannot
    be built on the meta device (its real build then says why)."""
    import torch

    from bast import options

    try:
        with torch.device("meta"):
            model = build_model(arch, cfg)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - an op the meta device lacks: no estimate, no refusal
        return 0
    n = sum(p.numel() for p in model.parameters())
    return options.budget(n, TRAINING_BYTES_PER_PARAMETER, "model settings (--preset, --set dim/depth/...)",
                          f"{arch} parameters in training")


def model_fields(arch: str) -> set[str]:
    from dataclasses import fields

    return {f.name for f in fields(model_config(arch, {}))}
