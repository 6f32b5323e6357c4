"""Labels, metrics and losses (docs/conventions.md; paper eq. 2 and 3).

A label is the unit vector C = (cos az, sin az), azimuth in SOFA convention (0 deg ahead,
90 deg left). The model predicts C^ = (x, y) freely; its azimuth is atan2(y, x).

* Angular distance AD = arccos(<C, C^> / (|C| |C^|)), cosine clipped to [-1, 1]; a metric in
  degrees, a loss in radians / pi (so 0..1).
* Squared error |C - C^|^2 summed over x and y. The reference code's nn.MSELoss averages over
  the two coordinates as well, i.e. half of this; we do not copy that.
* MIX ("hybrid") = MSE + weight * AD loss, 1:1 by default.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from bast.errors import ConfigError

EPS = 1e-8  # norms below this count as this (a zero prediction is 90 deg from everything)
AD_LOSS_CLIP = 1e-7  # the AD loss clips the cosine to [-1 + clip, 1 - clip]: finite gradients


def azimuth_to_vector(az_deg) -> torch.Tensor:
    """Azimuths in degrees (N,) -> unit vectors (N, 2) = (cos az, sin az)."""
    az = torch.as_tensor(az_deg)
    if not az.is_floating_point():
        az = az.to(torch.get_default_dtype())
    rad = torch.deg2rad(az)
    return torch.stack((torch.cos(rad), torch.sin(rad)), dim=-1)


def vector_to_azimuth(v: torch.Tensor) -> torch.Tensor:
    """Vectors (..., 2) -> azimuth in degrees in [0, 360), atan2(y, x)."""
    az = torch.rad2deg(torch.atan2(v[..., 1], v[..., 0])) % 360.0
    return torch.where(az >= 360.0, az - 360.0, az)  # -tiny % 360 rounds to 360.0 in float


def _cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    norms = pred.norm(dim=-1).clamp_min(EPS) * target.norm(dim=-1).clamp_min(EPS)
    return (pred * target).sum(dim=-1) / norms


def angular_distance_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample angular distance in degrees (N,). Computed in float64: arccos near +-1
    turns a float32 rounding of the cosine into hundredths of a degree."""
    cos = _cosine(pred.double(), target.double()).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).to(pred.dtype if pred.is_floating_point() else torch.float64)


def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample |C - C^|^2, summed over x and y (N,)."""
    return (pred - target).pow(2).sum(dim=-1)


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return squared_error(pred, target).mean()


def ad_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean angular distance in radians / pi. The cosine is clipped just inside [-1, 1], so
    arccos's gradient (-1 / sqrt(1 - c^2)) stays finite, and is zero at a perfect prediction."""
    cos = _cosine(pred, target).clamp(-1.0 + AD_LOSS_CLIP, 1.0 - AD_LOSS_CLIP)
    return torch.arccos(cos).mean() / math.pi


def mix_loss(pred: torch.Tensor, target: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """The paper's hybrid loss: MSE + weight * AD loss."""
    return mse_loss(pred, target) + weight * ad_loss(pred, target)


LOSS_NAMES = ("mse", "ad", "mix")


def make_loss(name: str, mix_weight: float = 1.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """"mse", "ad" or "mix" (alias "hybrid"), any case -> loss(pred, target) -> scalar."""
    key = name.lower()
    if key == "hybrid":
        key = "mix"
    if key == "mse":
        return mse_loss
    if key == "ad":
        return ad_loss
    if key == "mix":
        return partial(mix_loss, weight=mix_weight)
    raise ConfigError(f"unknown loss {name!r}: use one of {LOSS_NAMES} (or 'hybrid')")
