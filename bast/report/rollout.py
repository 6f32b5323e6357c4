"""Attention rollout (Abnar & Zuidema 2020) for BAST, and folding it onto the spectrogram.

The model hands back its attention weights as
``{"left": [L x (B, heads, T, T)], "right": [...], "center": [...]}`` (softmax weights,
rows sum to 1; row = query token, column = key token).

Rollout per layer: fuse the heads (mean by default), add the identity for the residual
connection, normalise every row to sum 1, and multiply onto what came before:

    A_l = rownorm(fuse(attn_l) + I),   R_l = A_l @ R_{l-1},   R_0 = I (or a given start)

R_l[i, j] is how much of input token j flows into token i after layer l. Every R_l is
row-stochastic (non-negative, rows sum to 1). As the paper does (section 5.5), TE-C's
rollout starts from the sum of the last TE-L and TE-R rollouts, row-normalised.

Token importance for one sample = the column means of the final rollout,
``importance[j] = mean_i R[i, j]``: BAST pools its output by the mean over tokens (no class
token), so the mean over query rows is exactly the weight with which input token j reaches
the pooled vector under the rollout's linear approximation. When the model has a class
token, its row (``R[0, 1:]``) is used instead, as in ViT rollout. Either way the
importances of one sample sum to 1.

Patch grid (docs/conventions.md): a (129 freq x 61 frame) spectrogram padded by 1 row before row 0 (the
0 Hz end, where the model's patch embedding pads) and 3 frames at the end (to 130 x 64), cut
into 16 x 16 patches with stride 6 gives 20 x 9 = 180 tokens, numbered row-major (token =
row * 9 + col; row = frequency patch index from 0 Hz up, col = time patch index).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from bast.errors import ConfigError
from bast.model.nets.bast import BASTConfig, padding_amounts, token_grid


def fold_geometry(cfg: BASTConfig) -> dict:
    """`fold_to_spectrogram`'s grid, patch, stride, shape and padding for a model config.
    PatchEmbed pads rows before row 0 (the 0 Hz end) and columns after the last frame."""
    rows, cols = padding_amounts(cfg)
    return dict(grid=token_grid(cfg), patch=cfg.patch, stride=cfg.stride, shape=(cfg.n_freq, cfg.n_time),
                pad=(0, cols), pad_before=(rows, 0))


# The defaults: the paper's grid, 20 x 9 patches over 129 x 61 padded by (1, 0) and (0, 3).
_PAPER = fold_geometry(BASTConfig())
GRID, PATCH, STRIDE, SHAPE = _PAPER["grid"], _PAPER["patch"], _PAPER["stride"], _PAPER["shape"]
PAD, PAD_BEFORE = _PAPER["pad"], _PAPER["pad_before"]  # after / before the spectrogram


def _as_tensor(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach()
    # bf16/fp16 attention (autocast) is multiplied out in float32 at least.
    return t.float() if t.dtype not in (torch.float32, torch.float64) else t


def fuse_heads(attn: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, H, T, T) -> (B, T, T) by the mean, max or min over heads; (B, T, T) passes."""
    attn = _as_tensor(attn)
    if attn.dim() == 3:
        return attn
    if attn.dim() != 4:
        raise ConfigError(f"attention must be (B, heads, T, T) or (B, T, T), got {tuple(attn.shape)}")
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise ConfigError(f"unknown head_fusion {head_fusion!r}; choose mean, max or min")


def row_normalize(m: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum (rows of zeros stay zero)."""
    s = m.sum(dim=-1, keepdim=True)
    return m / torch.where(s == 0, torch.ones_like(s), s)


def rollout(attentions, start=None, head_fusion: str = "mean") -> list[torch.Tensor]:
    """Cumulative attention rollout after each layer: a list of (B, T, T) tensors.

    attentions: one (B, heads, T, T) tensor per layer, first layer first. start: (B, T, T)
    or (T, T), the rollout entering the first layer (row-normalised here; negative entries
    are an error); None means the identity.
    """
    attentions = list(attentions)
    if not attentions:
        return []
    first = fuse_heads(attentions[0], head_fusion)
    b, t, _ = first.shape
    eye = torch.eye(t, dtype=first.dtype, device=first.device)
    if start is None:
        r = eye.expand(b, t, t)
    else:
        r = _as_tensor(start).to(device=first.device, dtype=first.dtype)
        if r.dim() == 2:
            r = r.expand(b, t, t)
        if r.shape != (b, t, t):
            raise ConfigError(f"start has shape {tuple(r.shape)}, expected {(b, t, t)}")
        if (r < 0).any():
            raise ConfigError("start must be non-negative")
        r = row_normalize(r)
    out = []
    for layer, attn in enumerate(attentions):
        a = first if layer == 0 else fuse_heads(attn, head_fusion).to(first.dtype)
        if a.shape != (b, t, t):
            raise ConfigError(f"layer {layer}: attention {tuple(a.shape)} does not match {(b, t, t)}")
        a = row_normalize(a + eye)  # residual connection: half the signal skips attention
        r = a @ r
        out.append(r)
    return out


def bast_rollout(attn: dict, head_fusion: str = "mean") -> dict[str, list[torch.Tensor]]:
    """Rollouts of the three BAST encoders: {"left": [...], "right": [...], "center": [...]}
    (one (B, T, T) tensor per layer). TE-L and TE-R start from the identity; TE-C starts from
    (R_left_last + R_right_last), row-normalised, whatever the integration (paper 5.5)."""
    out = {"left": rollout(attn["left"], head_fusion=head_fusion),
           "right": rollout(attn["right"], head_fusion=head_fusion)}
    if attn.get("center"):
        if not out["left"] or not out["right"]:
            raise ConfigError("TE-C rollout needs TE-L and TE-R attention")
        start = row_normalize(out["left"][-1] + out["right"][-1])
        out["center"] = rollout(attn["center"], start=start, head_fusion=head_fusion)
    else:
        out["center"] = []
    return out


def token_importance(r, cls_token: bool = False) -> np.ndarray:
    """Importance of each input token from a rollout (T, T) or (B, T, T): the mean over
    query rows (no class token), or the class token's row without its own column. Returns
    (T,) / (B, T) (or T - 1 with a class token) as float64 numpy; each sums to 1."""
    r = _as_tensor(r).double().cpu().numpy()
    if cls_token:
        w = r[..., 0, 1:]
        s = w.sum(axis=-1, keepdims=True)
        return w / np.where(s == 0, 1.0, s)
    return r.mean(axis=-2)


def tokens_to_grid(weights, grid=GRID, cls_token: bool = False) -> np.ndarray:
    """Per-token weights (T,) to the (rows, cols) patch grid, row-major (token = r * cols +
    c). With `cls_token` the first weight (the class token's) is dropped first."""
    w = np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
    if cls_token:
        w = w[..., 1:]
    rows, cols = grid
    if w.shape[-1] != rows * cols:
        raise ConfigError(f"{w.shape[-1]} tokens do not fill a {rows} x {cols} grid")
    return w.reshape(w.shape[:-1] + (rows, cols))


@lru_cache(maxsize=8)
def _fold_matrix(grid, patch, stride, shape, pad, pad_before) -> np.ndarray:
    """(T, H * W): bin (h, w) of the unpadded spectrogram gets 1 / (number of patches
    covering it) from each token whose patch covers it."""
    rows, cols = grid
    h, w = shape
    hp = pad_before[0] + h + pad[0]
    wp = pad_before[1] + w + pad[1]
    if (hp - patch) // stride + 1 != rows or (wp - patch) // stride + 1 != cols:
        raise ConfigError(f"grid {grid} does not match shape {shape} with pad {pad_before}+{pad}, "
                         f"patch {patch}, stride {stride} (gives {(hp - patch) // stride + 1} x "
                         f"{(wp - patch) // stride + 1})")
    cover = np.zeros((rows * cols, hp, wp), dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            cover[r * cols + c, r * stride:r * stride + patch, c * stride:c * stride + patch] = 1.0
    cover = cover[:, pad_before[0]:pad_before[0] + h, pad_before[1]:pad_before[1] + w]
    count = cover.sum(axis=0)
    if (count == 0).any():
        raise ConfigError("some spectrogram bins are covered by no patch")
    m = (cover / count).reshape(rows * cols, h * w)
    m.setflags(write=False)
    return m


def fold_to_spectrogram(token_weights, grid=GRID, patch: int = PATCH, stride: int = STRIDE,
                        shape=SHAPE, pad=PAD, cls_token: bool = False, pad_before=PAD_BEFORE) -> np.ndarray:
    """Spread per-token weights over the spectrogram bins their patches cover.

    token_weights: (T,) or (..., T), or already a (..., rows, cols) grid. Each bin gets the
    average weight of the patches that cover it (bins near the edges are covered by fewer
    patches, so a plain sum would darken them). Padding: `pad` rows / columns were added
    after the spectrogram (top frequency end, last frames) and `pad_before` before it (0 Hz
    end, first frames); the defaults are the model's for the paper grid. The padded bins
    are cut away. Returns (..., 129, 61) for the default shape. A single
    non-zero token lights exactly its patch's real bins; equal weights give a flat map.
    """
    w = np.asarray(token_weights.detach().cpu() if isinstance(token_weights, torch.Tensor) else token_weights,
                   dtype=np.float64)
    rows, cols = grid
    if w.ndim >= 2 and w.shape[-2:] == (rows, cols):
        w = w.reshape(w.shape[:-2] + (rows * cols,))
    elif cls_token:
        w = w[..., 1:]
    if w.shape[-1] != rows * cols:
        raise ConfigError(f"{w.shape[-1]} token weights do not match a {rows} x {cols} grid")
    m = _fold_matrix(tuple(grid), int(patch), int(stride), tuple(shape), tuple(pad), tuple(pad_before))
    return (w @ m).reshape(w.shape[:-1] + tuple(shape))


def rollout_maps(attn: dict, sample: int = 0, grid=GRID, cls_token: bool = False,
                 head_fusion: str = "mean", **fold) -> dict[str, np.ndarray]:
    """Spectrogram-shaped importance maps of one sample from the model's attention dict:
    {"left", "right", "center"} (center only when TE-C attention is given), each the final
    layer's rollout -> `token_importance` -> `fold_to_spectrogram`."""
    rolls = bast_rollout(attn, head_fusion=head_fusion)
    out = {}
    for name, layers in rolls.items():
        if layers:
            imp = token_importance(layers[-1][sample], cls_token=cls_token)
            out[name] = fold_to_spectrogram(imp, grid=grid, **fold)
    return out
