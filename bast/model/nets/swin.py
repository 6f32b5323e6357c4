"""The Swin backbone of BAST (`--backbone swin`): shifted-window attention over the patch grid.

Liu et al. 2021 (Swin Transformer), as the BAST fork (Heterochromi/BAST) uses it through
timm's `SwinTransformerBlock`: each block attends within non-overlapping windows of
`window x window` patches of the (frequency x time) patch grid, with a learned relative
position bias per head, and every second block shifts the windows by half a window so
that information crosses window borders. One stage, no patch merging: the grid keeps its
size, so integration (ADD/SUB/CONCAT) and the head work exactly as with the ViT encoder.

Why written here and not imported from timm: timm's layers import torchvision
(timm.layers.create_norm), and PyPI's torchvision pins its own torch, so requiring timm
would replace or break the CPU torch that bast installs (`pip install torch==2.13.0 &&
pip install -e .` then fails to import timm.layers). The block below has timm's structure
and parameter layout (qkv with bias, relative position bias table of (2w-1)^2 x heads,
pre-norm, GELU MLP); it differs in three places, each for a reason:

* the windows fit a 20 x 9 grid: a window side is min(window, grid side), the grid is
  padded at the end to whole windows, and padded tokens are masked out of every key set
  (timm lets zero-padded tokens take part in attention), so outputs do not depend on
  padding;
* the attention width is heads x head_dim, as in bast's ViT blocks (in CONCAT, TE-C maps
  2D-wide tokens to a D-wide attention); timm's is the token width;
* the shift alternates along the whole path of a token, TE-L then TE-C: with one block per
  encoder (the tiny preset) TE-L is unshifted and TE-C shifted. (The fork sets
  shift_size=0 in every block, so its windows never shift.)
"""

from __future__ import annotations

import torch
from torch import nn

from bast.model.nets.layers import Mlp


def window_shape(grid: tuple[int, int], window: int) -> tuple[int, int]:
    """Window side per axis: `window`, or the whole axis when the grid is smaller."""
    return min(window, grid[0]), min(window, grid[1])


def shift_shape(grid: tuple[int, int], window: int) -> tuple[int, int]:
    """Half a window per axis; 0 on an axis that one window covers (nothing to shift)."""
    wh, ww = window_shape(grid, window)
    return (wh // 2 if grid[0] > wh else 0), (ww // 2 if grid[1] > ww else 0)


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """(N, N), N = wh * ww: index into the bias table of the offset between two window cells."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)


def to_windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) with H, W whole windows -> (B * nW, wh * ww, C), windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def from_windows(x: torch.Tensor, b: int, h: int, w: int, wh: int, ww: int) -> torch.Tensor:
    """Inverse of `to_windows`."""
    x = x.view(b, h // wh, w // ww, wh, ww, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def attention_mask(grid: tuple[int, int], window: int, shift: tuple[int, int]) -> torch.Tensor:
    """(nW, N, N) additive mask: -inf where a key is padding or, after the cyclic shift, comes
    from another region of the grid than the query (Swin's shifted-window mask); 0 on the
    diagonal always, so a padded query still has a key (its output is discarded)."""
    wh, ww = window_shape(grid, window)
    hp, wp = -(-grid[0] // wh) * wh, -(-grid[1] // ww) * ww
    region = torch.zeros(hp, wp)
    label = 0
    # Label each original position: the first `shift` rows (columns) wrap round to the far
    # end when the grid is rolled back by `shift`, next to tokens they are not adjacent to.
    for rows in ((slice(0, shift[0]), slice(shift[0], None)) if shift[0] else (slice(None),)):
        for cols in ((slice(0, shift[1]), slice(shift[1], None)) if shift[1] else (slice(None),)):
            region[rows, cols] = label
            label += 1
    pad = torch.ones(hp, wp, dtype=torch.bool)
    pad[:grid[0], :grid[1]] = False
    # The same cyclic shift the tokens get, so labels travel with their tokens.
    region = torch.roll(region, (-shift[0], -shift[1]), (0, 1))
    pad = torch.roll(pad, (-shift[0], -shift[1]), (0, 1))
    region = to_windows(region[None, :, :, None], wh, ww)[..., 0]  # (nW, N)
    pad = to_windows(pad[None, :, :, None], wh, ww)[..., 0]
    blocked = (region[:, :, None] != region[:, None, :]) | pad[:, None, :]
    blocked &= ~torch.eye(wh * ww, dtype=torch.bool)
    return torch.zeros(blocked.shape).masked_fill(blocked, float("-inf"))


class WindowAttention(nn.Module):
    """Multi-head self-attention within each window, plus a learned relative position bias."""

    def __init__(self, dim: int, heads: int, head_dim: int, window: tuple[int, int], proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner)  # with bias, as Swin
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        wh, ww = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), heads))
        self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)

    def reset_special_parameters(self):
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # as Swin

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B * nW, N, dim), mask (nW, N, N) -> (B * nW, N, dim)."""
        bw, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)  # (heads, N, N)
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5 + bias
        nw = mask.shape[0]
        scores = (scores.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, self.heads * self.head_dim)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """Pre-norm: x + W-MSA or SW-MSA(LN(x)), then x + MLP(LN(x)); tokens (B, rows * cols, dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, drop: float, proj_drop: float,
                 grid: tuple[int, int], window: int, shifted: bool):
        super().__init__()
        self.grid = grid
        self.window = window_shape(grid, window)
        self.shift = shift_shape(grid, window) if shifted else (0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, head_dim, self.window, proj_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, drop)
        self.register_buffer("mask", attention_mask(grid, window, self.shift), persistent=False)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Window attention of normalised tokens (B, L, C), L = rows * cols."""
        b, _, c = x.shape
        (h, w), (wh, ww), (sh, sw) = self.grid, self.window, self.shift
        x = x.view(b, h, w, c)
        x = nn.functional.pad(x, (0, 0, 0, -w % ww, 0, -h % wh))  # whole windows: pad at the end
        hp, wp = x.shape[1], x.shape[2]
        if sh or sw:
            x = torch.roll(x, (-sh, -sw), (1, 2))
        y = from_windows(self.attn(to_windows(x, wh, ww), self.mask), b, hp, wp, wh, ww)
        if sh or sw:
            y = torch.roll(y, (sh, sw), (1, 2))
        return y[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SwinEncoder(nn.Module):
    """`depth` Swin blocks, shifted and unshifted alternately (starting as `first_shifted`
    says); no final LayerNorm, as the ViT encoder. No class token: tokens are the grid."""

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, mlp_dim: int, drop: float,
                 proj_drop: float, grid: tuple[int, int], window: int, first_shifted: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, head_dim, mlp_dim, drop, proj_drop, grid, window, shifted=(i + first_shifted) % 2 == 1)
            for i in range(depth))

    def forward(self, x: torch.Tensor, attn_maps: list | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
