"""The Mamba backbone of BAST (`--backbone mamba`): bidirectional selective state spaces.

Each block is MambaVision's and Vision Mamba's: x + BiMamba(LN(x)), then x + MLP(LN(x)).
The mixer is Vision Mamba's bidirectional one ("v2", Zhu et al. 2024): one input projection
to (x, z), then two selective state-space scans over the patch sequence (frequency-major,
as the ViT's tokens), one forwards and one backwards, each with its own causal depthwise
convolution, input-dependent step size, B and C (`x_proj`, `dt_proj`), A and D; their
outputs, each gated by silu(z), are averaged and projected back. Parameter names follow
mamba-ssm's `Mamba` module (the backward scan's carry the suffix `_b` there; here they live
in `ssm_backward`).

The scan itself comes from a maintained package, and the weights are the same whichever
runs:

* everywhere: `mambapy` (alxndrTL/mamba.py; `pip install "bast[mamba]"`), a pure-PyTorch
  parallel (Blelloch) scan, `mambapy.pscan.pscan`;
* on a CUDA device, when `mamba-ssm` is installed (`pip install "bast[mamba-cuda]"`): its
  fused CUDA kernel `selective_scan_fn` (Gu & Dao's), which also folds in the softplus of
  the step size, D and the silu(z) gate.

The scan runs in float32 either way (as mamba-ssm keeps A and the state in float32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bast.errors import ConfigError
from bast.model.nets.layers import Mlp

SCAN_IMPLEMENTATIONS = ("auto", "torch", "cuda")


def _pscan():
    try:
        from mambapy.pscan import pscan
    except ImportError:
        raise ConfigError("the mamba backbone needs the mambapy package: pip install \"bast[mamba]\"") from None
    return pscan


def _cuda_scan():
    """mamba-ssm's fused kernel, or None when mamba-ssm is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(u, delta, A, B, C, D, z, delta_bias, impl: str = "auto"):
    """y_t = C_t h_t + D u_t, h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, dt = softplus(delta + bias),
    then y * silu(z). Shapes as mamba-ssm's: u, delta, z (B, ED, L); A (ED, N); B, C (B, N, L);
    D, delta_bias (ED,). Returns (B, ED, L), float32.

    impl: "cuda" = mamba-ssm's kernel (needs a CUDA tensor and mamba-ssm), "torch" =
    mambapy's parallel scan, "auto" = the kernel where it can run, else mambapy."""
    u, delta, B, C, z = (t.float() for t in (u, delta, B, C, z))
    if impl != "torch" and u.is_cuda:
        kernel = _cuda_scan()
        if kernel is not None:
            return kernel(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=True)
    if impl == "cuda":
        raise ConfigError("the CUDA selective scan needs a CUDA device and mamba-ssm: pip install \"bast[mamba-cuda]\"")
    pscan = _pscan()
    dt = F.softplus(delta.transpose(1, 2) + delta_bias)  # (B, L, ED)
    ut = u.transpose(1, 2)  # (B, L, ED)
    decay = torch.exp(dt.unsqueeze(-1) * A)  # (B, L, ED, N)
    drive = (dt * ut).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)  # (B, L, ED, N)
    h = pscan(decay, drive)  # (B, L, ED, N)
    y = (h @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1) + D * ut  # (B, L, ED)
    return (y * F.silu(z.transpose(1, 2))).transpose(1, 2)


class SelectiveSSM(nn.Module):
    """One direction's scan: causal depthwise conv, silu, input-dependent (dt, B, C), scan, gate."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.zeros(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.impl = "auto"  # set_scan_implementation; not a weight

    @torch.no_grad()
    def reset_special_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1):
        """mamba-ssm's initialisation (after BAST's generic one, which it overrides): dt_proj
        weight uniform in +-dt_rank^-0.5, its bias the inverse softplus of a step size
        log-uniform in [dt_min, dt_max], A = -(1, 2, ..., N) per channel (S4D-real), D = 1."""
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.D.shape[0]) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_log))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x, z (B, ED, L) -> (B, ED, L)."""
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])
        dbc = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        delta, b, c = torch.split(dbc, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj.weight @ delta.transpose(1, 2)  # (B, ED, L); bias added in the scan
        return selective_scan(x, delta, -torch.exp(self.A_log.float()), b.transpose(1, 2), c.transpose(1, 2),
                              self.D.float(), z, self.dt_proj.bias.float(), self.impl)


class BiMamba(nn.Module):
    """Vision Mamba's bidirectional mixer: (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, expand: float, d_state: int, d_conv: int):
        super().__init__()
        d_inner = int(expand * dim)
        dt_rank = math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.ssm_forward = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.ssm_backward = SelectiveSSM(d_inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B, ED, L) each
        y = self.ssm_forward(x, z)
        y_back = self.ssm_backward(x.flip(-1), z.flip(-1)).flip(-1)
        return self.out_proj(((y + y_back) / 2).transpose(1, 2).to(dtype))  # the scan ran in float32


class MambaBlock(nn.Module):
    """Pre-norm: x + BiMamba(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, mlp_dim: int, drop: float, expand: float, d_state: int, d_conv: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = BiMamba(dim, expand, d_state, d_conv)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MambaEncoder(nn.Module):
    """`depth` bidirectional Mamba blocks over the token sequence; no final LayerNorm."""

    def __init__(self, dim: int, depth: int, mlp_dim: int, drop: float, expand: float, d_state: int, d_conv: int):
        super().__init__()
        _pscan()  # a missing mambapy is one clear error when the model is built
        self.blocks = nn.ModuleList(MambaBlock(dim, mlp_dim, drop, expand, d_state, d_conv) for _ in range(depth))

    def forward(self, x: torch.Tensor, attn_maps: list | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def set_scan_implementation(model: nn.Module, impl: str) -> None:
    """Choose the scan of every Mamba block in `model`: auto, torch (mambapy) or cuda (mamba-ssm)."""
    if impl not in SCAN_IMPLEMENTATIONS:
        raise ConfigError(f"scan implementation must be one of {', '.join(SCAN_IMPLEMENTATIONS)}, not {impl!r}")
    for m in model.modules():
        if isinstance(m, SelectiveSSM):
            m.impl = impl
