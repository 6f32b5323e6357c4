"""The `seldnet` baseline (bast.model.nets.seldnet): the DCASE 2023 baseline's layers, on bast input."""

from __future__ import annotations

import pytest
import torch

from bast.errors import ConfigError
from bast.model.nets.bast import count_parameters
from bast.model.targets.adpit import adpit_loss, encode
from bast.model.nets.seldnet import SELDNET_PRESETS, SELDnet, SELDnetConfig

# The DCASE 2023 baseline's SeldModel (sharathadavanne/seld-dcase2023 at commit 24d14c9,
# seldnet_model.py, parameters.py defaults: 64 filters, f_pool [4, 4, 2], t_pool [5, 1, 1],
# 2 GRU layers of 128, 2 attention layers of 8 heads, 1 fnn layer of 128, 13 classes,
# multi-ACCDOA output 117), built with in_feat_shape (1, 4, 250, 64), out_shape (1, 50, 117):
# 735,413 parameters. With every parameter set by `_fill` (sorted by name) and in eval mode,
# its output on `_input()`: the sum of absolute values and the first and last six values.
REFERENCE_PARAMETERS = 735_413
REFERENCE_ABS_SUM = 4246.4462890625
REFERENCE_FIRST = [-0.4717499613761902, 0.05820050835609436, 0.5683560967445374, -0.09102584421634674,
                   -0.6022552847862244, 0.03400487080216408]  # output[0, 0, :6]
REFERENCE_LAST = [-0.45326006412506104, -0.46534010767936707, 0.3751300275325775, 0.293161004781723,
                  -0.4661080837249756, -0.19284488260746002]  # output[1, -1, -6:]


def _fill(model):
    with torch.no_grad():
        for k, (_, p) in enumerate(sorted(model.named_parameters())):
            p.copy_(torch.sin(torch.arange(p.numel(), dtype=torch.float32) * 0.7 + k).reshape(p.shape) * 0.1)


def _input():  # the reference's (batch, channels, time, mel) layout
    return torch.sin(torch.arange(2 * 4 * 250 * 64, dtype=torch.float32) * 0.013).reshape(2, 4, 250, 64) * 2


def test_the_reference_sizes_give_the_reference_parameter_count_and_output():
    model = SELDnet(SELDnetConfig(classes=13, phase=True, n_freq=64))
    assert count_parameters(model) == REFERENCE_PARAMETERS
    _fill(model)
    model.eval()
    with torch.no_grad():
        out = model(_input().transpose(2, 3), 50)  # bast's (batch, channels, frequency, time)
    assert out.shape == (2, 50, 3, 13, 3)
    flat = out.transpose(-1, -2).flatten(-3)  # the reference's (track, axis, class) order
    assert flat.abs().sum().item() == pytest.approx(REFERENCE_ABS_SUM, rel=1e-5)
    torch.testing.assert_close(flat[0, 0, :6], torch.tensor(REFERENCE_FIRST), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat[1, -1, -6:], torch.tensor(REFERENCE_LAST), atol=1e-5, rtol=0)


def test_parameter_counts_of_the_docstring_table():
    assert count_parameters(SELDnet()) == 832_565
    tiny = SELDnetConfig.from_dict(dict(SELDNET_PRESETS["tiny"], classes=3))
    assert count_parameters(SELDnet(tiny)) == 30_091


@pytest.mark.parametrize("frames, labels", [(61, 5), (124, 10), (250, 20)])
def test_any_window_gives_one_output_per_label_frame(frames, labels):
    model = SELDnet(SELDnetConfig.from_dict(dict(SELDNET_PRESETS["tiny"], classes=4, phase=True)))
    out = model(torch.randn(3, 4, 129, frames))
    assert out.shape == (3, labels, 3, 4, 3)
    assert out.abs().max() <= 1.0  # tanh


def test_seldnet_learns_a_fixed_target_with_adpit():
    torch.manual_seed(0)
    model = SELDnet(SELDnetConfig.from_dict(dict(SELDNET_PRESETS["tiny"], classes=2, dropout=0.0)))
    x = torch.randn(4, 2, 129, 61)
    rows = torch.tensor([[f, 0, 0, 60.0, 0.0] for f in range(5)] + [[f, 1, 0, -90.0, 20.0] for f in range(2, 5)])
    target = encode(rows.numpy(), 5, 2).expand(4, -1, -1, -1, -1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = adpit_loss(model(x), target).item()
    for _ in range(8):
        opt.zero_grad()
        loss = adpit_loss(model(x), target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown"):
        SELDnetConfig.from_dict({"filter": 3})
    with pytest.raises(ConfigError, match="pooled"):
        SELDnetConfig(n_freq=16)
    with pytest.raises(ConfigError, match="heads"):
        SELDnetConfig(rnn_size=100, heads=8)
