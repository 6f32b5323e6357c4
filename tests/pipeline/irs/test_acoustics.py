"""The measurements themselves, on signals whose answer is known by construction."""

import numpy as np
import pytest

from bast.pipeline.irs import acoustics

FS = 16000


def decaying_noise(t60: float, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    return rng.normal(size=t.size) * np.exp(-acoustics.LN_1E6 / 2 * t / t60)  # amplitude: half the energy rate


def fractional_impulse(delay_s: float, n: int = 256, gain: float = 1.0) -> np.ndarray:
    """Band-limited impulse at a fractional delay (Hann-windowed sinc)."""
    k = np.arange(n)
    x = k - delay_s * FS
    return gain * np.sinc(x) * np.where(np.abs(x) < 32, 0.5 + 0.5 * np.cos(np.pi * x / 32), 0.0)


@pytest.mark.parametrize("t60", [0.4, 0.8, 1.5])
def test_decay_time_of_exponential_noise(t60):
    h = decaying_noise(t60, seconds=max(1.0, 1.5 * t60))
    assert acoustics.decay_time(h, FS) == pytest.approx(t60, rel=0.05)
    rt = acoustics.rt60(h, FS, fit_db=(-5, -35))
    for fc in (500.0, 1000.0, 2000.0):
        assert rt[fc] == pytest.approx(t60, rel=0.08)


def test_band_split_sums_to_the_input():
    x = np.random.default_rng(1).normal(size=(2, 3000))
    bands = acoustics.band_split(x, FS)
    assert bands.shape == (len(acoustics.OCTAVES_HZ), 2, 3000)
    np.testing.assert_allclose(bands.sum(axis=0), x, atol=1e-9)
    # and each band holds mostly its own octave
    spec = np.abs(np.fft.rfft(bands[2, 0], 8192)) ** 2
    f = np.fft.rfftfreq(8192, 1 / FS)
    inside = spec[(f > 354) & (f < 707)].sum()
    assert inside / spec.sum() > 0.6


@pytest.mark.parametrize("itd", [0.0, 0.3, -0.45, 0.7])
def test_itd_of_delayed_impulses(itd):
    base = 0.004
    left = fractional_impulse(base + max(-itd, 0) / 1000)
    right = fractional_impulse(base + max(itd, 0) / 1000)
    assert acoustics.itd_ms(np.stack([left, right]), FS) == pytest.approx(itd, abs=0.01)


def test_ild_sign_and_size():
    left, right = fractional_impulse(0.004, gain=2.0), fractional_impulse(0.004)
    assert acoustics.ild_db(np.stack([left, right]), FS) == pytest.approx(20 * np.log10(2), abs=0.01)
    assert acoustics.ild_db(np.stack([right, left]), FS) == pytest.approx(-20 * np.log10(2), abs=0.01)


def test_drr_of_a_constructed_response():
    h = np.zeros(FS)
    h[160] = 1.0  # direct sound at 10 ms, energy 1
    rng = np.random.default_rng(2)
    h[400:] = rng.normal(size=FS - 400) * 0.01  # reverberation starts at 25 ms
    expected = 10 * np.log10(1.0 / np.sum(h[400:] ** 2))
    assert acoustics.drr_db(h, FS) == pytest.approx(expected, abs=1e-6)


def test_predicted_drr_matches_the_critical_distance_form():
    v, t, r = 560.0, 0.8, 1.0
    critical = 0.057 * np.sqrt(v / t)  # the textbook constant, sqrt(0.161 / 16 pi) = 0.0566 rounded
    assert acoustics.predicted_drr_db(v, t, r) == pytest.approx(20 * np.log10(critical / r), abs=0.1)


def test_coherence_of_identical_delayed_and_independent_tails():
    noise = decaying_noise(0.8, seed=3)
    other = decaying_noise(0.8, seed=4)
    delayed = np.concatenate([np.zeros(8), noise[:-8]])  # 0.5 ms: inside the +-1 ms lag range
    assert acoustics.interaural_coherence(np.stack([noise, noise]), FS, 1000.0) == pytest.approx(1.0, abs=1e-6)
    assert acoustics.interaural_coherence(np.stack([noise, delayed]), FS, 1000.0) > 0.99
    for fc in (125.0, 2000.0):
        assert acoustics.interaural_coherence(np.stack([noise, other]), FS, fc) < (0.6 if fc < 200 else 0.2)
