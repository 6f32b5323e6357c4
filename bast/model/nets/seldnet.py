"""`seldnet`: the DCASE 2023 task 3 baseline's convolutional-recurrent SELD network, on
bast's binaural spectrograms (docs/seld.md).

Layer for layer the baseline's `SeldModel` (sharathadavanne/seld-dcase2023,
seldnet_model.py and the defaults of parameters.py): three convolution blocks (3 x 3
convolution of 64 filters, batch norm, ReLU, max pooling, dropout 0.05) pooling frequency
by 4, 4 and 2; two bidirectional GRU layers of 128 whose two directions are multiplied
after a tanh; two multi-head self-attention layers (8 heads) each with a residual and
layer norm; one linear layer of 128 and a linear output with tanh, T tracks x C classes x 3.
The module names are the baseline's, so its state dict loads.

What differs is the input: bast's (B, 2, 129, frames) log power per ear (plus the cos and
sin of the interaural phase with `phase`), 8 ms frames instead of 20 ms. The baseline pools
time by 5 in its first block to reach its 100 ms label frames; here the first block pools
time adaptively (max) to the label frames the window spans (`n_label_frames`: 61 frames
-> 5), so any window length works. Output: (B, label frames, T, C, 3) multi-ACCDOA.

With `distance` (the `seld-distance` target), a fourth output per track and class, the
distance in metres, as the DCASE 2024 baseline (partha2409/DCASE2024_seld_baseline,
seldnet_model.py): its output layer grows to T x 4 x C, and the distance is left linear
(that baseline's output is linear throughout; its tanh for the direction and ReLU for the
distance are commented out, "no significant changes in the results"), where x, y, z keep
this model's tanh; decoding sets a negative distance to 0, as the baseline's does.

Parameters (tests/model/nets/test_seldnet.py checks them):

| config                                                  | parameters |
|---------------------------------------------------------|-----------:|
| default: 2 ears, 129 bins, 13 classes                   |    832,565 |
| phase, 64 bins, 13 classes (the reference on 4 x 64)    |    735,413 |
| the published baseline: 7 x 64 FOA input (reference)    |    737,141 |
| `tiny` preset, 2 ears, 3 classes                        |     30,091 |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bast.conventions import N_FREQ
from bast.errors import ConfigError
from bast.model.nets.baselines import NetConfig, channels, resolve_features
from bast.model.targets.adpit import N_TRACKS, n_label_frames


@dataclass
class SELDnetConfig(NetConfig):
    classes: int = 13  # DCASE 2023 (STARSS23); set from the data set's class list
    tracks: int = N_TRACKS
    features: tuple = ()  # the feature kinds read (bast/pipeline/features/kinds.py); () = the log power
    phase: bool = False  # adds the phase to features
    n_freq: int = N_FREQ
    filters: int = 64  # nb_cnn2d_filt
    f_pool: tuple = (4, 4, 2)  # f_pool_size: one conv block per entry
    rnn_size: int = 128
    rnn_layers: int = 2
    attn_layers: int = 2  # nb_self_attn_layers
    heads: int = 8
    fnn_size: int = 128
    fnn_layers: int = 1
    dropout: float = 0.05
    label_frames: int = 0  # output frames per window; 0: those the window spans (n_label_frames)
    distance: bool = False  # a distance (metres) per track and class too (--target seld-distance)

    def __post_init__(self):
        resolve_features(self)
        self.f_pool = tuple(int(p) for p in self.f_pool)
        self._positive("classes", "tracks", "n_freq", "filters", "rnn_size", "rnn_layers", "heads", "fnn_size")
        if not self.f_pool or min(self.f_pool) < 1:
            raise ConfigError(f"f_pool must list one positive pooling factor per conv block, not {self.f_pool!r}")
        if self.n_freq // _prod(self.f_pool) < 1:
            raise ConfigError(f"{self.n_freq} frequency bins cannot be pooled by {self.f_pool}")
        if self.rnn_size % self.heads:
            raise ConfigError(f"rnn_size {self.rnn_size} must be a multiple of heads {self.heads}")
        if self.attn_layers < 0 or self.fnn_layers < 0:
            raise ConfigError("attn_layers and fnn_layers must be >= 0")


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


# `tiny` trains on 2 CPU cores in minutes; `paper` is the baseline's published size.
SELDNET_PRESETS = {
    "tiny": dict(filters=16, rnn_size=32, rnn_layers=1, attn_layers=1, heads=4, fnn_size=32),
    "small": dict(filters=32, rnn_size=64, heads=4, fnn_size=64),
    "paper": dict(),
}


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class SELDnet(nn.Module):
    """(B, channels, n_freq, frames) -> (B, label frames, tracks, classes, 3), or 4 with distance."""

    def __init__(self, cfg: SELDnetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SELDnetConfig()
        self.conv_block_list = nn.ModuleList()
        for k, pool in enumerate(cfg.f_pool):
            self.conv_block_list.append(ConvBlock(cfg.filters if k else channels(cfg.features), cfg.filters))
            self.conv_block_list.append(nn.MaxPool2d((1, pool)))  # (time, frequency); time: see forward
            self.conv_block_list.append(nn.Dropout2d(cfg.dropout))
        self.gru = nn.GRU(cfg.filters * (cfg.n_freq // _prod(cfg.f_pool)), cfg.rnn_size, num_layers=cfg.rnn_layers,
                          batch_first=True, dropout=cfg.dropout if cfg.rnn_layers > 1 else 0.0, bidirectional=True)
        self.mhsa_block_list = nn.ModuleList(
            nn.MultiheadAttention(cfg.rnn_size, cfg.heads, dropout=cfg.dropout, batch_first=True)
            for _ in range(cfg.attn_layers))
        self.layer_norm_list = nn.ModuleList(nn.LayerNorm(cfg.rnn_size) for _ in range(cfg.attn_layers))
        widths = [cfg.rnn_size] + [cfg.fnn_size] * cfg.fnn_layers
        self.fnn_list = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.axes = 3 + bool(cfg.distance)  # x, y, z[, distance]
        self.fnn_list.append(nn.Linear(widths[-1], cfg.tracks * self.axes * cfg.classes))

    def forward(self, x: torch.Tensor, n_labels: int | None = None) -> torch.Tensor:
        b, _, _, frames = x.shape
        n_labels = n_labels or self.cfg.label_frames or n_label_frames(frames)
        x = x.transpose(2, 3)  # (B, ch, time, frequency), as the baseline
        for k, layer in enumerate(self.conv_block_list):
            x = layer(x)
            if k == 1:  # the first block's pooling: time to label frames (the baseline's max pool by 5)
                x = F.adaptive_max_pool2d(x, (n_labels, x.shape[-1]))
        x = x.transpose(1, 2).flatten(2)  # (B, labels, filters * frequency)
        x, _ = self.gru(x)
        x = torch.tanh(x)
        x = x[..., x.shape[-1] // 2:] * x[..., :x.shape[-1] // 2]  # backward x forward direction
        for attn, norm in zip(self.mhsa_block_list, self.layer_norm_list):
            x = norm(x + attn(x, x, x, need_weights=False)[0])
        for fnn in self.fnn_list[:-1]:
            x = fnn(x)  # no activation between them, as in the baseline
        if self.axes == 3:
            x = torch.tanh(self.fnn_list[-1](x))
            # the baseline's output order is (track, axis, class)
            return x.unflatten(-1, (self.cfg.tracks, 3, self.cfg.classes)).transpose(-1, -2)
        x = self.fnn_list[-1](x).unflatten(-1, (self.cfg.tracks, self.axes, self.cfg.classes)).transpose(-1, -2)
        return torch.cat((torch.tanh(x[..., :3]), x[..., 3:]), dim=-1)  # the distance linear (2024 baseline)
