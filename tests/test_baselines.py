"""The baseline models and BAST's phase input: shapes, features, configs refused by name."""

from __future__ import annotations

import pytest
import torch

from bast.errors import ConfigError
from bast.model.bast import BAST, BASTConfig, count_parameters, ears
from bast.model.baselines import AST, CNN, MLP, ASTConfig, CNNConfig, MLPConfig

TINY = dict(dim=32, heads=2, mlp_dim=64, depth=1, stride=12, dropout=0.0)


@pytest.mark.parametrize("phase", [False, True])
@pytest.mark.parametrize("make", [lambda p: MLP(MLPConfig(phase=p)), lambda p: CNN(CNNConfig(phase=p)),
                                  lambda p: AST(ASTConfig(phase=p)), lambda p: BAST(BASTConfig(phase=p, **TINY))])
def test_every_model_maps_spectrograms_to_a_vector(make, phase):
    torch.manual_seed(0)
    model = make(phase).eval()
    x = torch.randn(5, 4 if phase else 2, 129, 61)
    y = model(x)
    assert y.shape == (5, 2) and torch.isfinite(y).all()
    # Samples are independent: a batch gives what its samples give one by one.
    torch.testing.assert_close(model(x[2:3]), y[2:3], rtol=1e-4, atol=1e-5)


def test_phase_adds_only_input_channels():
    """With phase, BAST's patch embedding takes 3 channels per ear and nothing else grows."""
    plain, with_phase = BAST(BASTConfig(**TINY)), BAST(BASTConfig(phase=True, **TINY))
    patch = TINY["dim"] * 16 * 16  # two more input channels of 16 x 16 weights per output
    assert count_parameters(with_phase) - count_parameters(plain) == 2 * patch


def test_each_ear_hears_the_phase_from_its_own_side():
    x = torch.randn(3, 4, 129, 61)
    left, right = ears(x, phase=True)
    torch.testing.assert_close(left, torch.stack([x[:, 0], x[:, 2], x[:, 3]], 1))
    torch.testing.assert_close(right, torch.stack([x[:, 1], x[:, 2], -x[:, 3]], 1))
    # A left-right mirror of the scene (ears swapped, the phase's sine negated) swaps the ears.
    mirror = torch.stack([x[:, 1], x[:, 0], x[:, 2], -x[:, 3]], 1)
    m_left, m_right = ears(mirror, phase=True)
    torch.testing.assert_close(m_left, right)
    torch.testing.assert_close(m_right, left)


def test_mlp_features_are_time_averages_and_the_ild():
    x = torch.randn(2, 4, 129, 61)
    f = MLP.features(x)
    mean = x.mean(-1)
    assert f.shape == (2, 5 * 129)
    torch.testing.assert_close(f[:, 258:387], mean[:, 0] - mean[:, 1])
    torch.testing.assert_close(f[:, 387:], mean[:, 2:].flatten(1))


def test_unknown_or_bad_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match="nosuch"):
        MLPConfig.from_dict({"nosuch": 1})
    with pytest.raises(ConfigError, match="hidden"):
        MLPConfig(hidden=0)
    with pytest.raises(ConfigError, match="dropout"):
        CNNConfig(dropout=1.5)
    with pytest.raises(ConfigError, match="divisible"):
        ASTConfig(dim=30, heads=4)
