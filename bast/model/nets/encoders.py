"""The encoder of TE-L, TE-R and TE-C, chosen by `backbone` (docs/train.md): "vit" (the
paper's blocks), "swin" (shifted-window attention over the patch grid) or "mamba"
(bidirectional selective state spaces over the patch sequence)."""

from __future__ import annotations

from torch import nn

from bast.errors import ConfigError
from bast.model.nets.layers import Encoder
from bast.model.nets.mamba import MambaEncoder
from bast.model.nets.swin import SwinEncoder

BACKBONES = ("vit", "swin", "mamba")  # the encoder of TE-L, TE-R and TE-C (docs/train.md)


def check_backbone(cfg) -> None:
    """The backbone settings of a BAST or ast config, refused by name when out of range."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, not {cfg.backbone!r}")
    for name in ("window", "d_state", "d_conv"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be positive, not {getattr(cfg, name)!r}")
    if int(cfg.expand * cfg.dim) < 1:
        raise ConfigError(f"expand must be positive, not {cfg.expand!r}")
    if cfg.backbone != "vit" and getattr(cfg, "cls_token", False):
        raise ConfigError(f"cls_token needs the vit backbone: the {cfg.backbone} encoder works on the patch grid")
    if cfg.out_tokens < 0:
        raise ConfigError(f"out_tokens must be >= 0, not {cfg.out_tokens!r}")
    if cfg.out_tokens and cfg.backbone != "vit":
        raise ConfigError(f"output tokens (out_tokens, --target seld) need the vit backbone: the {cfg.backbone} "
                          "encoder works on the patch grid, which extra tokens do not belong to")
    if cfg.out_tokens and cfg.outputs % cfg.out_tokens:
        raise ConfigError(f"outputs {cfg.outputs} do not split evenly among {cfg.out_tokens} output tokens")


def make_encoder(backbone: str, width: int, *, depth: int, heads: int, head_dim: int, mlp_dim: int, drop: float,
                 proj_drop: float, grid: tuple[int, int], window: int, expand: float, d_state: int, d_conv: int,
                 first_shifted: bool = False) -> nn.Module:
    """TE-L, TE-R or TE-C at token width `width`: (B, tokens, width) -> (B, tokens, width).
    `first_shifted` (swin): this encoder continues a path whose last block was unshifted."""
    if backbone == "swin":
        return SwinEncoder(width, depth, heads, head_dim, mlp_dim, drop, proj_drop, grid, window, first_shifted)
    if backbone == "mamba":
        return MambaEncoder(width, depth, mlp_dim, drop, expand, d_state, d_conv)
    return Encoder(width, depth, heads, head_dim, mlp_dim, drop, proj_drop)
