"""The transformer blocks every network here shares: multi-head self-attention, the MLP,
the pre-norm block and the ViT encoder (BAST's TE-L, TE-R and TE-C; the swin and mamba
encoders reuse `Mlp`). Written as the reference code has them: the parameter counts in
bast/model/nets/bast.py pin them down."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention, qkv without bias (as the reference code; the counts need it).

    The attention width is heads * head_dim, independent of the token width `dim` (in CONCAT,
    TE-C maps 2D tokens to a D-wide attention and back).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        """(B, N, dim) -> ((B, N, dim), softmax weights (B, heads, N, N) or None).

        The weights are formed explicitly only when asked; otherwise the fused
        F.scaled_dot_product_attention runs (flash / memory-efficient kernels on GPU).
        """
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if need_weights:
            weights = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(dim=-1)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj_drop(self.proj(out)), weights


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, drop: float, proj_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim, proj_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, drop)

    def forward(self, x: torch.Tensor, need_weights: bool = False):
        y, weights = self.attn(self.norm1(x), need_weights)
        x = x + y
        return x + self.mlp(self.norm2(x)), weights


class Encoder(nn.Module):
    """`depth` blocks; no final LayerNorm (the reference has none: the counts say so)."""

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, mlp_dim: int,
                 drop: float, proj_drop: float):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, head_dim, mlp_dim, drop, proj_drop) for _ in range(depth))

    def forward(self, x: torch.Tensor, attn_maps: list | None = None) -> torch.Tensor:
        """Appends each layer's attention weights to `attn_maps` when one is given."""
        for block in self.blocks:
            x, weights = block(x, attn_maps is not None)
            if attn_maps is not None:
                attn_maps.append(weights)
        return x
