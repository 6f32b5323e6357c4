"""BAST's encoders: vit (the paper's), swin (shifted windows) and mamba (bidirectional state
spaces). Same embedding, integration and head; parameter counts per preset; the ViT's
outputs as they were before backbones; each backbone trains, evaluates, localizes and
reports on CPU."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from bast.errors import ConfigError
from bast.model.nets.bast import BAST, BASTConfig, count_parameters
from bast.model.nets.baselines import ASTConfig
from bast.model.runs.config import preset
from bast.model.nets.registry import build_model

TINY = dict(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0)


def _model(arch: str, name: str, **kw):
    torch.manual_seed(0)
    return build_model(arch, preset(name, arch=arch, **kw).model).eval()


# ----------------------------------------------------------------------------- the ViT unchanged


@pytest.mark.parametrize("arch, kw, expected", [
    # Outputs of main at 0271814 (before backbones), torch 2.13 CPU, seed 0, input seed 1.
    ("bast", dict(integration="sub", shared=False),
     [0.292738, 0.167526, 0.056551, -0.23606, 0.242028, -0.087413]),
    ("bast", dict(integration="concat", shared=True),
     [0.395392, 0.4095, 0.453261, 0.44803, 0.377205, 0.432595]),
    ("ast", {}, [0.745493, 1.026551, 0.444422, 0.978902, 0.850161, 0.971536]),
])
def test_the_vit_gives_the_outputs_it_gave_before_backbones(arch, kw, expected):
    """Same seed, same initial weights, same outputs: the backbone option draws no random
    number and adds no parameter for the ViT, and `backbone="vit"` is the default."""
    model = _model(arch, "tiny", **kw)
    assert model.cfg.backbone == "vit"
    x = torch.randn(3, 2, 129, 61, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).flatten()
    torch.testing.assert_close(y, torch.tensor(expected), atol=2e-6, rtol=0)
    if arch == "bast":  # the state dict's names are the ViT's as before
        assert "encoder_left.blocks.0.attn.qkv.weight" in model.state_dict()


# ----------------------------------------------------------------------------- parameter counts

# arch -> preset -> (vit, swin, mamba), BAST-NSP SUB (the presets' default) and ast.
COUNTS = {
    "bast": {"tiny": (248_546, 250_598, 191_234), "small": (1_828_802, 1_839_278, 1_336_898),
             "paper": (56_954_882, 57_006_866, 34_808_834)},
    "ast": {"tiny": (198_626, 199_994, 160_418), "small": (1_285_058, 1_292_042, 957_122),
            "paper": (57_217_026, 57_269_010, 35_070_978)},
}


@pytest.mark.parametrize("arch", ["bast", "ast"])
@pytest.mark.parametrize("name", ["tiny", "small", "paper"])
def test_parameter_counts_per_preset_and_backbone(arch, name):
    counts = []
    for backbone in ("vit", "swin", "mamba"):
        with torch.device("meta"):  # no memory, no time: the paper models have 50-57 M parameters
            counts.append(count_parameters(build_model(arch, preset(name, arch=arch, backbone=backbone).model)))
    assert tuple(counts) == COUNTS[arch][name]


def test_paper_counts_follow_from_the_blocks():
    """The paper presets' counts from their parts (docs/train.md): swin's block is the ViT's
    plus the qkv bias (3 x 1024) and a relative position bias table of (2*7-1)^2 x 16 heads;
    mamba's (D 1024, expand 0.5, state 8, convolution 3, dt rank 64) is in_proj 1024 x 1024
    (x and z, 512 each), per direction conv 512*3 + 512, x_proj 512 x 80, dt_proj 64 x 512 +
    512, A 512 x 8, D 512; out_proj 512 x 1024; two LayerNorms and the 1024-wide MLP."""
    vit_block, embed_head = 6_298_624, 263_168 + 4_098  # patch embedding, head (no learned position)
    swin_block = vit_block + 3 * 1024 + 13 * 13 * 16
    direction = 512 * 3 + 512 + 512 * 80 + 64 * 512 + 512 + 512 * 8 + 512
    mamba_block = 1024 * 1024 + 2 * direction + 512 * 1024 + 2 * 2048 + 2 * (1024 * 1024 + 1024)
    assert COUNTS["bast"]["paper"] == (embed_head + 9 * vit_block, embed_head + 9 * swin_block,
                                      embed_head + 9 * mamba_block)
    with torch.device("meta"):
        m = BAST(BASTConfig(backbone="swin", window=7))
        assert count_parameters(m.encoder_left.blocks[0]) == swin_block
        m = BAST(BASTConfig(backbone="mamba"))
        assert count_parameters(m.encoder_left.blocks[0]) == mamba_block


# ----------------------------------------------------------------------------- the shared parts


@pytest.mark.parametrize("backbone", ["swin", "mamba"])
@pytest.mark.parametrize("integration, shared", [("sub", False), ("add", True), ("concat", False)])
def test_only_the_encoder_changes(backbone, integration, shared):
    """Embedding, integration, SP/NSP sharing and head as the ViT's; outputs finite, each
    sample independent of the others in its batch."""
    torch.manual_seed(0)
    vit = BAST(BASTConfig(integration=integration, shared=shared, **TINY))
    other = BAST(BASTConfig(integration=integration, shared=shared, backbone=backbone, **TINY))
    shapes = lambda m, prefix: {k: v.shape for k, v in m.state_dict().items() if k.startswith(prefix)}
    for part in ("patch_embed", "norm", "head"):
        assert shapes(other, part) == shapes(vit, part)
    assert (other.encoder_left is other.encoder_right) == shared
    x = torch.randn(4, 2, 129, 61)
    other.eval()
    y = other(x)
    assert y.shape == (4, 2) and torch.isfinite(y).all()
    torch.testing.assert_close(other(x[1:2]), y[1:2], rtol=1e-4, atol=1e-5)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in other.parameters())


def test_bad_backbone_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="backbone"):
        BASTConfig(backbone="resnet")
    with pytest.raises(ConfigError, match="window"):
        BASTConfig(backbone="swin", window=0)
    with pytest.raises(ConfigError, match="cls_token"):
        BASTConfig(backbone="swin", cls_token=True)
    with pytest.raises(ConfigError, match="backbone"):
        ASTConfig(backbone="rnn")
    with pytest.raises(ConfigError, match="vit backbone"):
        BAST(BASTConfig(backbone="mamba", **TINY))(torch.randn(1, 2, 129, 61), return_attention=True)
    # The backbone is recorded as a model setting and chosen by the preset.
    cfg = preset("tiny", backbone="Swin")
    assert cfg.to_dict()["model"]["backbone"] == "swin" and cfg.model.window == 6
    assert preset("small", arch="ast", backbone="swin").model.window == 8


# ----------------------------------------------------------------------------- swin


def _swin_block(grid, window, shifted, dim=8):
    from bast.model.nets.swin import SwinBlock

    torch.manual_seed(0)
    block = SwinBlock(dim, 2, dim // 2, 16, 0.0, 0.0, grid, window, shifted).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    return block


def _influence(block, grid, source):
    """Which tokens' outputs change when token `source` (row, col) changes."""
    x = torch.randn(1, grid[0] * grid[1], block.norm1.normalized_shape[0])
    x2 = x.clone()
    x2[0, source[0] * grid[1] + source[1]] += torch.randn(x.shape[-1])  # not constant: LayerNorm removes that
    with torch.no_grad():
        diff = (block.mix(block.norm1(x2)) - block.mix(block.norm1(x))).abs().sum(-1)[0]
    return (diff > 1e-6).view(grid)


def test_swin_attends_within_windows_and_shifting_crosses_their_borders():
    grid = (11, 5)  # the tiny preset's grid; window 6 -> 6 x 5 windows over a 12 x 5 padding
    plain = _influence(_swin_block(grid, 6, False), grid, (5, 2))  # the last row of the first window
    assert plain[:6].all() and not plain[6:].any()
    shifted_block = _swin_block(grid, 6, True)
    assert shifted_block.shift == (3, 0)  # one window spans the 5 columns: no shift across them
    shifted = _influence(shifted_block, grid, (5, 2))
    assert shifted[3:9].all() and not shifted[:3].any() and not shifted[9:].any()
    # After the cyclic shift, the grid's first and last rows share a window but are masked
    # apart: a token at the top does not reach the bottom (nor padding rows, none here).
    top = _influence(shifted_block, grid, (0, 0))
    assert top[:3].all() and not top[3:].any()


def test_swin_with_one_window_is_global_attention_plus_the_bias():
    """A window as large as the grid: plain multi-head attention with the relative bias."""
    grid = (4, 3)
    block = _swin_block(grid, 7, False)
    assert block.window == (4, 3) and block.shift == (0, 0)
    x = torch.randn(2, 12, 8)
    a = block.attn
    q, k, v = a.qkv(x).reshape(2, 12, 3, 2, 4).permute(2, 0, 3, 1, 4)
    bias = a.relative_position_bias_table[a.relative_position_index].permute(2, 0, 1)
    ref = ((q @ k.transpose(-2, -1)) / 2 + bias).softmax(-1) @ v
    ref = a.proj(ref.transpose(1, 2).reshape(2, 12, 8))
    torch.testing.assert_close(block.mix(x), ref)
    # Offsets, not positions: cells (0,0)-(1,1) and (2,1)-(3,2) share one bias entry.
    idx = a.relative_position_index
    assert idx[0 * 3 + 0, 1 * 3 + 1] == idx[2 * 3 + 1, 3 * 3 + 2] != idx[0, 1]


def test_swin_outputs_do_not_depend_on_padding(monkeypatch):
    """Padded tokens are masked out of every key set: a 7 x 5 grid padded to 8 x 8 for 4 x 4
    windows (shifted) gives the same outputs whether the pad holds zeros or junk."""
    grid = (7, 5)
    block = _swin_block(grid, 4, True)
    assert block.window == (4, 4) and block.shift == (2, 2)
    x = torch.randn(2, 35, 8)
    with torch.no_grad():
        y = block(x)
        pad = torch.nn.functional.pad
        monkeypatch.setattr(torch.nn.functional, "pad", lambda t, p, *a, **k: pad(t, p, value=1e3))
        y_junk = block(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y_junk, y)


# ----------------------------------------------------------------------------- mamba


def test_the_selective_scan_is_the_recurrence():
    """mambapy's parallel scan, with bast's discretisation, equals the recurrence written out:
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t h_t + D u_t, times silu(z_t)."""
    from bast.model.nets.mamba import selective_scan

    g = torch.Generator().manual_seed(0)
    b, e, n, length = 2, 5, 3, 13  # a length that is no power of two (mambapy pads)
    u, delta, z = (torch.randn(b, e, length, generator=g) for _ in range(3))
    bb, cc = torch.randn(b, n, length, generator=g), torch.randn(b, n, length, generator=g)
    a = -torch.rand(e, n, generator=g) - 0.1
    d, bias = torch.randn(e, generator=g), torch.randn(e, generator=g)
    y = selective_scan(u, delta, a, bb, cc, d, z, bias, impl="torch")
    dt = torch.nn.functional.softplus(delta + bias[:, None])  # (b, e, L)
    h = torch.zeros(b, e, n)
    ref = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * a) * h + (dt[:, :, t] * u[:, :, t])[..., None] * bb[:, None, :, t]
        ref.append((h * cc[:, None, :, t]).sum(-1) + d * u[:, :, t])
    ref = torch.stack(ref, -1) * torch.nn.functional.silu(z)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_mamba_mixer_reads_the_sequence_both_ways():
    """Bidirectional: the first token's output depends on the last token and vice versa
    (a one-way causal scan would leave the first token blind to the rest)."""
    from bast.model.nets.mamba import BiMamba

    torch.manual_seed(0)
    mixer = BiMamba(16, 1, 4, 3)
    for m in mixer.modules():
        if hasattr(m, "reset_special_parameters"):
            m.reset_special_parameters()
    x = torch.randn(1, 20, 16)
    with torch.no_grad():
        y = mixer(x)
        x2 = x.clone()
        x2[0, -1] += torch.randn(16)
        first = (mixer(x2)[0, 0] - y[0, 0]).abs().max()
        x3 = x.clone()
        x3[0, 0] += torch.randn(16)
        last = (mixer(x3)[0, -1] - y[0, -1]).abs().max()
    assert first > 1e-6 and last > 1e-6
    # mamba-ssm's initialisation survives BAST's generic one: A = -(1..N), D = 1, dt in [1e-3, 0.1].
    model = BAST(BASTConfig(backbone="mamba", **TINY))
    ssm = model.encoder_left.blocks[0].mixer.ssm_forward
    torch.testing.assert_close(-torch.exp(ssm.A_log[0]), -torch.arange(1.0, 9.0))
    dt = torch.nn.functional.softplus(ssm.dt_proj.bias)
    assert torch.all(ssm.D == 1) and 1e-3 * 0.99 <= dt.min() and dt.max() <= 0.1 * 1.01


def test_a_missing_mambapy_is_one_clear_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mambapy", None)
    monkeypatch.setitem(sys.modules, "mambapy.pscan", None)
    with pytest.raises(ConfigError, match=r"bast\[mamba\]"):
        BAST(BASTConfig(backbone="mamba", **TINY))
    with pytest.raises(ConfigError, match="mamba-cuda"):  # the CUDA kernels asked for on a CPU
        from bast.model.nets.mamba import selective_scan

        selective_scan(*(torch.zeros(1, 1, 2),) * 2, torch.zeros(1, 1), *(torch.zeros(1, 1, 2),) * 2,
                       torch.zeros(1), torch.zeros(1, 1, 2), torch.zeros(1), impl="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mamba_on_cuda_gives_the_cpu_outputs():
    """Same weights on CPU (mambapy) and CUDA (mamba-ssm's kernel where installed, else
    mambapy on the GPU), float32, within float tolerance."""
    from bast.model.nets.mamba import set_scan_implementation

    torch.manual_seed(0)
    model = BAST(BASTConfig(backbone="mamba", **TINY)).eval()
    x = torch.randn(4, 2, 129, 61)
    with torch.no_grad():
        cpu = model(x)
        model.cuda()
        set_scan_implementation(model, "auto")
        gpu = model(x.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_each_backbone_trains_evaluates_localizes_and_reports(small_features, tmp_path):
    """train --backbone B (one epoch of a tiny model on the anechoic half), the checkpoint
    records it, evaluate on the test split, localize a clip, and one report with Table 1's
    backbone column."""
    from typer.testing import CliRunner

    from bast.cli import app
    from bast.model.runs.checkpoint import load_checkpoint

    import numpy as np
    import soundfile as sf

    clip = tmp_path / "noise.wav"  # one second of binaural noise, the left ear louder
    noise = np.random.default_rng(0).standard_normal((16000, 2)) * [0.2, 0.05]
    sf.write(clip, noise, 16000)
    runner = CliRunner()
    runs = []
    for backbone in ("vit", "swin", "mamba"):
        run = tmp_path / backbone
        result = runner.invoke(app, [
            "train", str(small_features), "--out", str(run), "--backbone", backbone, "--epochs", "1",
            "--env", "anechoic", "--test-env", "anechoic", "--device", "cpu", "--batch-size", "32",
            *[f"--set={k}={v}" for k, v in dict(dim=32, heads=4, mlp_dim=64, warmup_steps=2).items()]])
        assert result.exit_code == 0, result.output
        assert json.loads((run / "config.json").read_text())["model"]["backbone"] == backbone
        ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
        assert ckpt["config"]["model"]["backbone"] == backbone
        test = json.loads((run / "eval" / "test.json").read_text())
        # chance is 90 deg (azimuths all round); one epoch gives about 45 on this data
        assert test["n"] > 0 and test["ad_deg"] < 65, test["ad_deg"]
        result = runner.invoke(app, ["evaluate", str(run), "--on", str(small_features), "--env", "anechoic",
                                     "--device", "cpu"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["localize", str(run), str(clip), "--out", str(tmp_path / f"loc-{backbone}"),
                                     "--device", "cpu"])
        assert result.exit_code == 0, result.output
        lines = (tmp_path / f"loc-{backbone}" / "noise.csv").read_text().splitlines()
        assert len(lines) > 2  # a header and windows
        column = lines[0].split(",").index("azimuth_deg")
        azimuths = [float(line.split(",")[column]) for line in lines[1:]]
        assert all(45 <= a <= 135 for a in azimuths), azimuths  # the louder left ear: on the left (90 deg)
        runs.append(run)
    result = runner.invoke(app, ["report", *map(str, runs), "--out", str(tmp_path / "report"), "--rollout-samples", "1"])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "report" / "table1.csv").read_text().splitlines()
    assert rows[0].endswith(",backbone") and sorted(r.rsplit(",", 1)[1] for r in rows[1:]) == ["mamba", "swin", "vit"]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Mamba-NSP-SUB-MIX" in page and "Swin-NSP-SUB-MIX" in page and "fork 1.60" in page
    assert (tmp_path / "report" / "figures" / "rollout_0.png").exists()  # from the ViT run
