"""Baselines beside BAST, trained and scored the same way (`bast-cli train --model NAME`).

All take what BAST takes: standardised log-power spectrograms (B, 2, 129, 61), channel 0
the left ear; then the channels of the other feature kinds of `features`
(bast/pipeline/features/kinds.py), e.g. the cos and sin of the interaural phase (featurize
--phase). All return (B, 2) = (x, y), no activation.

- `mlp`: the feed-forward localizer of Tang et al. (2022) on interaural features: per
  frequency band, each ear's log power, the interaural level difference and (with phase)
  the interaural phase, all averaged over time; two hidden layers.
- `cnn`: the CNN of the BAST paper's Table 1 (Chakrabarty & Habets 2019 as adapted there):
  three convolutions of 64 filters of size 2 x 1 over (frequency, time) of the stacked
  channels, one stream, then two dense layers.
- `ast`: one spectrogram transformer over both ears as input channels (AST / FAViT style):
  BAST's question, whether separate ear streams help, asked the other way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from bast.conventions import N_FRAMES, N_FREQ
from bast.errors import ConfigError
from bast.model.nets.bast import (OutputTokens, SinusoidalPosEmbed, padding_amounts, read_out,
                                  reset_special_parameters, token_grid)
from bast.model.nets.encoders import check_backbone, make_encoder
from bast.pipeline.features import kinds as featurekinds


class NetConfig:
    """to_dict / from_dict as BASTConfig has them; unknown keys refused by name."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} setting(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**d)

    def _positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")
        if not 0 <= getattr(self, "dropout", 0) < 1:
            raise ConfigError(f"dropout must be in [0, 1), not {self.dropout!r}")


def channels(features) -> int:
    """Input channels of the stacked feature kinds `features` (2: the log power; 4 with the phase)."""
    return featurekinds.channels(features)


def resolve_features(cfg) -> None:
    """A config's feature kinds from `features` and `phase` (older configs: phase only)."""
    cfg.features = featurekinds.model_features(cfg.features, cfg.phase)
    cfg.phase = "phase" in cfg.features


# ----------------------------------------------------------------------------- mlp


@dataclass
class MLPConfig(NetConfig):
    hidden: int = 512
    depth: int = 2  # hidden layers
    dropout: float = 0.1
    features: tuple = ()  # the feature kinds read (bast/pipeline/features/kinds.py); () = the log power
    phase: bool = False  # adds the phase to features (--phase, older configs)
    outputs: int = 2  # set by the target (bast/model/targets/core.py)
    n_freq: int = N_FREQ

    def __post_init__(self):
        resolve_features(self)
        self._positive("hidden", "depth", "n_freq")


class MLP(nn.Module):
    """Time-averaged interaural features -> (x, y)."""

    def __init__(self, cfg: MLPConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or MLPConfig()
        width = cfg.n_freq * (channels(cfg.features) + 1)  # L, R, ILD [, cos, sin, other kinds] per band
        layers: list[nn.Module] = [nn.LayerNorm(width)]
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, cfg.outputs)

    @staticmethod
    def features(x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> (B, F * (C + 1)): every channel averaged over time, plus the ILD.
        With phase the averaged (cos, sin) is the mean resultant of the per-frame phases."""
        mean = x.mean(dim=-1)  # (B, C, F)
        ild = mean[:, 0] - mean[:, 1]
        return torch.cat([mean[:, :2].flatten(1), ild, mean[:, 2:].flatten(1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.features(x)))


# ----------------------------------------------------------------------------- cnn


@dataclass
class CNNConfig(NetConfig):
    filters: int = 64
    conv_layers: int = 3
    kernel_freq: int = 2  # 2 x 1 filters: neighbouring frequency bands, one frame
    hidden: int = 512
    dropout: float = 0.5  # Chakrabarty & Habets' dense layers
    features: tuple = ()  # the feature kinds read (bast/pipeline/features/kinds.py); () = the log power
    phase: bool = False  # adds the phase to features (--phase, older configs)
    outputs: int = 2  # set by the target (bast/model/targets/core.py)
    n_freq: int = N_FREQ

    def __post_init__(self):
        resolve_features(self)
        self._positive("filters", "conv_layers", "kernel_freq", "hidden", "n_freq")
        if self.conv_layers * (self.kernel_freq - 1) >= self.n_freq:
            raise ConfigError("the convolutions would consume every frequency band")


class CNN(nn.Module):
    """Conv(2 x 1) x 3 over the stacked channels, mean over time, two dense layers."""

    def __init__(self, cfg: CNNConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CNNConfig()
        convs: list[nn.Module] = []
        c = channels(cfg.features)
        for _ in range(cfg.conv_layers):
            convs += [nn.Conv2d(c, cfg.filters, kernel_size=(cfg.kernel_freq, 1)), nn.ReLU()]
            c = cfg.filters
        self.convs = nn.Sequential(*convs)
        bands = cfg.n_freq - cfg.conv_layers * (cfg.kernel_freq - 1)
        self.dense = nn.Sequential(
            nn.Linear(cfg.filters * bands, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.head = nn.Linear(cfg.hidden, cfg.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Time-averaging after the convolutions: the filters see single frames (as the
        # original, which classified frame by frame), the dense layers a clip.
        return self.head(self.dense(self.convs(x).mean(dim=-1).flatten(1)))


# ----------------------------------------------------------------------------- ast


@dataclass
class ASTConfig(NetConfig):
    n_freq: int = N_FREQ
    n_time: int = N_FRAMES
    patch: int = 16
    stride: int = 12
    dim: int = 96
    heads: int = 4
    mlp_dim: int = 192
    depth: int = 2
    dropout: float = 0.0
    padding: str = "zero"
    features: tuple = ()  # the feature kinds read (bast/pipeline/features/kinds.py); () = the log power
    phase: bool = False  # adds the phase to features (--phase, older configs)
    outputs: int = 2  # set by the target (bast/model/targets/core.py)
    # The encoder, as BAST's (BASTConfig): vit, swin or mamba, and their settings.
    backbone: str = "vit"
    window: int = 7
    expand: float = 0.5
    d_state: int = 8
    d_conv: int = 3
    out_tokens: int = 0  # output tokens, one per output frame (M2M-AST; --target seld), as BAST's

    def __post_init__(self):
        resolve_features(self)
        self.backbone = self.backbone.lower()
        check_backbone(self)
        self._positive("n_freq", "n_time", "patch", "stride", "dim", "heads", "mlp_dim", "depth")
        if self.dim % self.heads or self.dim % 2:
            raise ConfigError(f"dim {self.dim} must be even and divisible by heads {self.heads}")
        if self.padding != "zero":
            raise ConfigError("the ast baseline pads with zeros only")


class AST(nn.Module):
    """Both ears (and the phase) as channels of one patch embedding, one encoder, mean,
    LayerNorm, Linear: BAST without its separate ear streams."""

    def __init__(self, cfg: ASTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ASTConfig()
        ph, pw = padding_amounts(cfg)
        self.pad = nn.ZeroPad2d((0, pw, ph, 0))
        self.proj = nn.Conv2d(channels(cfg.features), cfg.dim, kernel_size=cfg.patch, stride=cfg.stride)
        rows, cols = token_grid(cfg)
        self.pos_embed = SinusoidalPosEmbed(rows * cols, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = make_encoder(cfg.backbone, cfg.dim, depth=cfg.depth, heads=cfg.heads, head_dim=cfg.dim // cfg.heads,
                                    mlp_dim=cfg.mlp_dim, drop=cfg.dropout, proj_drop=0.0, grid=(rows, cols),
                                    window=cfg.window, expand=cfg.expand, d_state=cfg.d_state, d_conv=cfg.d_conv)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.outputs // max(1, cfg.out_tokens))
        reset_special_parameters(self)  # swin's and mamba's own initialisation; nothing for vit
        self.out_tokens = nn.Identity()
        if cfg.out_tokens:  # made last, so the other weights draw what they drew without it
            self.out_tokens = OutputTokens(cfg.out_tokens, cfg.dim)
            nn.init.trunc_normal_(self.out_tokens.tokens, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(self.pad(x)).flatten(2).transpose(1, 2)
        tokens = self.encoder(self.out_tokens(self.drop(self.pos_embed(tokens))))
        return read_out(self.head, self.norm, tokens, self.cfg.out_tokens)
