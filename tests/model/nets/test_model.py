"""The BAST model (SPEC 7) and its losses (SPEC 2).

Full-size models (D = 1024) are built on the meta device to count parameters (no memory, no
init cost); one full-size paper model runs one forward pass at batch 1. Everything else runs
on a small configuration.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bast.model import (
    BAST,
    BASTConfig,
    ad_loss,
    angular_distance_deg,
    azimuth_to_vector,
    count_parameters,
    make_loss,
    mix_loss,
    mse_loss,
    padding_amounts,
    reference_config,
    sinusoidal_embedding,
    squared_error,
    token_grid,
    vector_to_azimuth,
)

VARIANTS = [(shared, integ) for shared in (False, True) for integ in ("add", "sub", "concat")]
REFERENCE_COUNTS = {
    (False, "add"): 57_141_250,
    (False, "sub"): 57_141_250,
    (False, "concat"): 76_038_146,
    (True, "add"): 38_245_378,
    (True, "sub"): 38_245_378,
    (True, "concat"): 57_142_274,
}


def small(**kw) -> BASTConfig:
    base = dict(dim=32, heads=4, mlp_dim=64, depth=1, stride=12, dropout=0.0)
    base.update(kw)
    return BASTConfig(**base)


def meta_model(cfg: BASTConfig) -> BAST:
    with torch.device("meta"):
        return BAST(cfg)


def spectrograms(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, 129, 61, generator=g)


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("shared,integration", VARIANTS)
def test_reference_parameter_counts_exact(shared, integration):
    model = meta_model(reference_config(shared, integration))
    assert count_parameters(model) == REFERENCE_COUNTS[(shared, integration)]


def test_reference_counts_by_part():
    """The docstring table of bast/model/nets/bast.py, part by part."""
    m = meta_model(reference_config(False, "concat"))
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert n(m.patch_embed) == 16 * 16 * 1024 + 1024 == 263_168
    assert n(m.pos_embed) == 181 * 1024
    assert n(m.cls_token) == 1024
    assert n(m.encoder_left.blocks[0]) == 6_298_624
    assert n(m.encoder_center.blocks[0]) == 12_596_224
    assert n(m.encoder_left) == n(m.encoder_right) == 18_895_872
    assert n(m.encoder_center) == 37_788_672
    assert n(m.norm) + n(m.head) == 8_194
    assert m.encoder_left.blocks[0].attn.qkv.bias is None


def test_paper_model_is_reference_minus_pos_embedding_and_cls_token():
    for shared, integration in VARIANTS:
        paper = count_parameters(meta_model(BASTConfig(shared=shared, integration=integration)))
        ref = REFERENCE_COUNTS[(shared, integration)]
        learned_pos = (180 + 1) * 1024
        cls = 1024
        assert ref - paper == learned_pos + cls == 186_368


def test_shared_encoder_is_one_module():
    sp, nsp = BAST(small(shared=True)), BAST(small(shared=False))
    assert sp.encoder_left is sp.encoder_right
    assert nsp.encoder_left is not nsp.encoder_right
    n_enc = sum(p.numel() for p in sp.encoder_left.parameters())
    assert count_parameters(nsp) - count_parameters(sp) == n_enc


# ----------------------------------------------------------------------------- embedding


def test_token_grid_and_padding():
    assert padding_amounts(BASTConfig()) == (1, 3)
    assert token_grid(BASTConfig()) == (20, 9)
    assert token_grid(BASTConfig(stride=12)) == (11, 5)
    assert padding_amounts(BASTConfig(stride=12)) == (7, 3)
    for stride in range(1, 17):
        cfg = BASTConfig(stride=stride)
        ph, pw = padding_amounts(cfg)
        assert (129 + ph - 16) % stride == 0 and (61 + pw - 16) % stride == 0
        assert ph < stride and pw < stride  # minimal
    assert BAST(small(stride=12)).n_patches == 55


def test_embedding_output_shape():
    x = spectrograms(3)
    for stride, n in ((6, 180), (12, 55)):
        for cls in (False, True):
            m = BAST(small(stride=stride, cls_token=cls))
            assert m.patch_embed(x[:, :1]).shape == (3, n, 32)
            assert m.embed(x[:, :1]).shape == (3, n + cls, 32)


@pytest.mark.parametrize("padding", ["zero", "reflect"])
def test_patch_embedding_is_reference_unfold_linear(padding):
    """Conv2d(1, D, 16, 6) on the padded ear == the reference's Pad + Unfold + Linear, with
    rows padded before row 0 and columns after the last frame (ReflectionPad2d((0, 3, 1, 0)))."""
    torch.manual_seed(0)
    m = BAST(small(stride=6, padding=padding))
    x = spectrograms(2)[:, :1]
    mode = "reflect" if padding == "reflect" else "constant"
    padded = F.pad(x, (0, 3, 1, 0), mode=mode)
    assert padded.shape[-2:] == (130, 64)
    patches = F.unfold(padded, kernel_size=16, stride=6).transpose(1, 2)  # (B, 180, 256), row-major grid
    conv = m.patch_embed.proj
    expected = patches @ conv.weight.reshape(32, 256).T + conv.bias
    torch.testing.assert_close(m.patch_embed(x), expected, rtol=1e-5, atol=1e-5)


def test_position_embeddings():
    sin = BAST(small())
    assert "pos_embed.pos" in dict(sin.named_buffers())
    assert all("pos_embed" not in name for name, _ in sin.named_parameters())
    assert "pos_embed.pos" not in sin.state_dict()  # a function of the config
    torch.testing.assert_close(sin.pos_embed.pos[0], sinusoidal_embedding(55, 32))
    pe = sinusoidal_embedding(180, 1024)
    assert torch.allclose(pe[0, 0::2], torch.zeros(512)) and torch.allclose(pe[0, 1::2], torch.ones(512))
    assert math.isclose(pe[3, 0].item(), math.sin(3.0), rel_tol=1e-6)
    assert math.isclose(pe[3, 1].item(), math.cos(3.0), rel_tol=1e-6)

    learned = BAST(small(pos_embedding="learned", cls_token=True))
    params = dict(learned.named_parameters())
    assert params["pos_embed.pos"].shape == (1, 56, 32)
    assert params["cls_token.token"].shape == (1, 1, 32)
    assert not dict(learned.named_buffers())


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("shared,integration", VARIANTS)
def test_forward_shapes_all_variants(shared, integration):
    torch.manual_seed(0)
    m = BAST(small(shared=shared, integration=integration, dropout=0.2))
    x = spectrograms(3)
    m.train()
    assert m(x).shape == (3, 2)
    m.eval()
    feats = m.forward_features(x)
    width = 64 if integration == "concat" else 32
    assert feats.shape == (3, 55, width)
    assert m.forward_head(feats).shape == (3, 2)
    out = m(x)
    assert out.shape == (3, 2) and torch.isfinite(out).all()


def test_full_size_paper_model_forward_once():
    torch.manual_seed(0)
    m = BAST(BASTConfig()).eval()
    with torch.no_grad():
        feats = m.forward_features(spectrograms(1))
        out = m.forward_head(feats)
    assert feats.shape == (1, 180, 1024)
    assert out.shape == (1, 2) and torch.isfinite(out).all()


def test_reference_config_forward_small():
    cfg = BASTConfig.from_dict({**reference_config(False, "concat").to_dict(),
                                "dim": 32, "heads": 4, "mlp_dim": 64, "depth": 1})
    m = BAST(cfg).eval()
    feats = m.forward_features(spectrograms(2))
    assert feats.shape == (2, 181, 64)  # class token + 180 patches, L and R joined
    assert m(spectrograms(2)).shape == (2, 2)


def test_ear_swap_symmetry():
    x = spectrograms(4)
    swapped = x.flip(1)
    torch.manual_seed(0)
    sp_add = BAST(small(shared=True, integration="add")).eval()
    torch.testing.assert_close(sp_add(swapped), sp_add(x), rtol=0, atol=0)

    torch.manual_seed(0)
    nsp_add = BAST(small(shared=False, integration="add")).eval()
    assert not torch.allclose(nsp_add(swapped), nsp_add(x), atol=1e-4)

    # SP + SUB: swapping the ears negates TE-C's input exactly (not the output: TE-C is nonlinear).
    torch.manual_seed(0)
    sp_sub = BAST(small(shared=True, integration="sub")).eval()
    seen = []
    hook = sp_sub.integrate.register_forward_hook(lambda mod, args, out: seen.append(out))
    sp_sub(x), sp_sub(swapped)
    hook.remove()
    torch.testing.assert_close(seen[1], -seen[0], rtol=0, atol=0)
    # and the left/right attention maps trade places
    _, a = sp_sub(x, return_attention=True)
    _, b = sp_sub(swapped, return_attention=True)
    torch.testing.assert_close(a["left"][0], b["right"][0])
    torch.testing.assert_close(a["right"][0], b["left"][0])


@pytest.mark.parametrize("integration", ["add", "sub", "concat"])
def test_integration_of_encoder_outputs(integration):
    """ADD = L + R, SUB = L - R (left minus right, as the reference code), CONCAT = [L, R]."""
    torch.manual_seed(0)
    m = BAST(small(shared=False, integration=integration)).eval()
    outs = {}
    m.encoder_left.register_forward_hook(lambda mod, a, o: outs.__setitem__("L", o))
    m.encoder_right.register_forward_hook(lambda mod, a, o: outs.__setitem__("R", o))
    m.encoder_center.register_forward_hook(lambda mod, a, o: outs.__setitem__("C_in", a[0]))
    x = spectrograms(2)
    m(x)
    left, right = outs["L"], outs["R"]
    # each ear goes through its own encoder: channel 0 is the left ear
    torch.testing.assert_close(left, m.encoder_left(m.embed(x[:, :1])))
    expected = {"add": left + right, "sub": left - right, "concat": torch.cat((left, right), -1)}[integration]
    torch.testing.assert_close(outs["C_in"], expected, rtol=0, atol=0)


def test_head_means_over_all_tokens_including_cls():
    torch.manual_seed(0)
    m = BAST(small(cls_token=True, pos_embedding="learned")).eval()
    tokens = torch.randn(2, 56, 32)
    tokens[:, 0] += 5.0  # a class token unlike the rest
    with torch.no_grad():
        out = m.forward_head(tokens)
        torch.testing.assert_close(out, m.head(m.norm(tokens.mean(1))))
        assert not torch.allclose(out, m.head(m.norm(tokens[:, 1:].mean(1))), atol=1e-3)


def test_ears_are_not_interchangeable_in_sub():
    torch.manual_seed(0)
    m = BAST(small(shared=True, integration="sub")).eval()
    x = spectrograms(2)
    assert not torch.allclose(m(x), m(x.flip(1)), atol=1e-4)


@pytest.mark.parametrize("shared,integration", [(False, "sub"), (True, "concat")])
def test_attention_maps(shared, integration):
    torch.manual_seed(0)
    cfg = small(shared=shared, integration=integration, depth=2, cls_token=True, pos_embedding="learned")
    m = BAST(cfg).eval()
    x = spectrograms(3)
    with torch.no_grad():
        pred = m(x)
        pred_a, maps = m(x, return_attention=True)
    torch.testing.assert_close(pred_a, pred, rtol=1e-5, atol=1e-5)
    assert set(maps) == {"left", "right", "center"}
    for key in maps:
        assert len(maps[key]) == 2
        for w in maps[key]:
            assert w.shape == (3, 4, 56, 56)
            assert (w >= 0).all()
            torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 56))
    assert not torch.allclose(maps["left"][0], maps["center"][0])


def test_dropout_active_in_train_mode_only():
    torch.manual_seed(0)
    m = BAST(small(dropout=0.5))
    x = spectrograms(2)
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- config, init


def test_config_roundtrip_and_validation():
    cfg = reference_config(True, "CONCAT")
    assert cfg.integration == "concat"
    d = json.loads(json.dumps(cfg.to_dict()))
    assert BASTConfig.from_dict(d) == cfg
    assert BASTConfig.from_dict({}) == BASTConfig()
    with pytest.raises(ValueError):
        BASTConfig.from_dict({"depht": 3})
    with pytest.raises(ValueError):
        BASTConfig(integration="mul")
    with pytest.raises(ValueError):
        BASTConfig(dim=30, heads=4)
    paper = BASTConfig()
    assert (paper.pos_embedding, paper.cls_token, paper.padding, paper.dropout) == ("sinusoidal", False, "zero", 0.2)
    ref = reference_config()
    assert (ref.pos_embedding, ref.cls_token, ref.padding, ref.shared, ref.integration) == \
        ("learned", True, "reflect", False, "sub")


def test_init_deterministic_and_timm_style():
    torch.manual_seed(123)
    a = BAST(small(cls_token=True, pos_embedding="learned"))
    torch.manual_seed(123)
    b = BAST(small(cls_token=True, pos_embedding="learned"))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        assert torch.equal(va, vb)
    big = BAST(BASTConfig(depth=1))
    w = big.encoder_left.blocks[0].mlp.fc1.weight
    # trunc_normal_(std=0.02) with timm's (and torch's) default bounds +-2 (absolute, not 2 std)
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.count_nonzero(big.encoder_left.blocks[0].mlp.fc1.bias) == 0
    norm = big.encoder_left.blocks[0].norm1
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


# ----------------------------------------------------------------------------- losses


def test_azimuth_vector_roundtrip():
    az = torch.arange(0.0, 360.0, 10.0)
    v = azimuth_to_vector(az)
    assert v.shape == (36, 2)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(36))
    torch.testing.assert_close(azimuth_to_vector(torch.tensor([90.0])), torch.tensor([[0.0, 1.0]]), atol=1e-7, rtol=0)
    back = vector_to_azimuth(v)
    assert ((back >= 0) & (back < 360)).all()
    torch.testing.assert_close(back, az, atol=1e-4, rtol=0)
    assert vector_to_azimuth(torch.tensor([[0.0, -1.0]])).item() == pytest.approx(270.0)
    assert vector_to_azimuth(torch.tensor([[1.0, -1e-9]])).item() < 360.0


def test_angular_distance():
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert angular_distance_deg(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert angular_distance_deg(x, y).item() == pytest.approx(90.0)
    assert angular_distance_deg(x, -x).item() == pytest.approx(180.0)
    v = azimuth_to_vector(torch.arange(0.0, 360.0, 10.0))
    assert torch.all(angular_distance_deg(v, v) < 1e-3)
    assert angular_distance_deg(3 * v, v).max().item() < 1e-3  # scale-invariant
    other = azimuth_to_vector(torch.arange(0.0, 360.0, 10.0) + 25.0)
    torch.testing.assert_close(angular_distance_deg(3 * other, v), angular_distance_deg(other, v))
    torch.testing.assert_close(angular_distance_deg(other, v), torch.full((36,), 25.0), atol=1e-3, rtol=0)
    # a zero prediction is finite (90 deg from anything), not NaN
    assert angular_distance_deg(torch.zeros(1, 2), x).item() == pytest.approx(90.0)
    assert angular_distance_deg(x, y).shape == (1,)


def test_squared_error_and_mse_not_halved():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(squared_error(x, -x), torch.tensor([4.0, 4.0]))
    assert mse_loss(x, -x).item() == pytest.approx(4.0)  # nn.MSELoss would give 2
    assert mse_loss(x, x).item() == 0.0


def test_ad_and_mix_loss():
    v = azimuth_to_vector(torch.tensor([0.0, 90.0, 200.0]))
    w = azimuth_to_vector(torch.tensor([90.0, 90.0, 20.0]))  # 90, 0, 180 deg apart
    assert ad_loss(v, w).item() == pytest.approx((0.5 + 0.0 + 1.0) / 3, abs=1e-3)
    assert ad_loss(2.5 * v, w).item() == pytest.approx(ad_loss(v, w).item(), abs=1e-6)
    assert mix_loss(v, w).item() == pytest.approx(mse_loss(v, w).item() + ad_loss(v, w).item())
    assert mix_loss(v, w, weight=0.25).item() == pytest.approx(mse_loss(v, w).item() + 0.25 * ad_loss(v, w).item())
    assert make_loss("mse") is mse_loss and make_loss("AD") is ad_loss
    for name in ("mix", "hybrid", "MIX"):
        assert make_loss(name)(v, w).item() == pytest.approx(mix_loss(v, w).item())
    assert make_loss("mix", mix_weight=2.0)(v, w).item() == pytest.approx(mix_loss(v, w, 2.0).item())
    with pytest.raises(ValueError):
        make_loss("l1")


def test_ad_loss_gradients_finite():
    target = azimuth_to_vector(torch.arange(0.0, 360.0, 45.0))
    for pred0 in (target.clone(), -target, torch.zeros_like(target), target + 0.1):
        pred = pred0.clone().requires_grad_(True)
        for loss_fn in (ad_loss, mix_loss):
            pred.grad = None
            loss_fn(pred, target).backward()
            assert torch.isfinite(pred.grad).all(), (pred0, loss_fn)
    # away from the optimum the gradient turns the prediction towards the target
    pred = azimuth_to_vector(torch.tensor([30.0])).requires_grad_(True)
    target = azimuth_to_vector(torch.tensor([0.0]))
    ad_loss(pred, target).backward()
    stepped = pred.detach() - 0.1 * pred.grad
    assert angular_distance_deg(stepped, target).item() < 30.0


def test_small_model_overfits_tiny_batch():
    torch.manual_seed(0)
    m = BAST(small())
    x = spectrograms(8, seed=1)
    target = azimuth_to_vector(torch.arange(8) * 45.0)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(200):
        loss = mse_loss(m(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    m.eval()
    with torch.no_grad():
        assert angular_distance_deg(m(x), target).mean().item() < 10.0


def test_model_is_an_nn_module_with_identity_for_disabled_features():
    m = BAST(small())
    assert isinstance(m.cls_token, nn.Identity)
    assert isinstance(BAST(small(cls_token=True)).cls_token, nn.Module)


@pytest.mark.parametrize("shared", [False, True])
def test_checkpoint_roundtrip(shared, tmp_path):
    torch.manual_seed(0)
    cfg = small(shared=shared, cls_token=True, pos_embedding="learned")
    m = BAST(cfg).eval()
    torch.save({"config": cfg.to_dict(), "model": m.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    torch.manual_seed(1)
    m2 = BAST(BASTConfig.from_dict(ckpt["config"])).eval()
    m2.load_state_dict(ckpt["model"])
    assert (m2.encoder_left is m2.encoder_right) == shared
    x = spectrograms(2)
    torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
