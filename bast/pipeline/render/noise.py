"""Noise at a chosen SNR, added to rendered binaural clips (docs/transfer-study.md).

SNR is 10 log10 of the clean binaural clip's energy (both ears, whole 500 ms clip) over the
added noise's energy (both ears, whole clip); it is met exactly for every sample.

* `diffuse`: independent white noise from many directions (a quasi-uniform Fibonacci set
  of 128 points on the sphere, each mapped to the head's nearest HRIR direction), each
  through its HRIR pair, summed. Its interaural coherence is the head's: high at low
  frequencies, near zero above about 1 kHz.
* `directional`: one to three noise sources at directions of the rendering grid, each an
  independent white noise through the HRIR pair of its direction, at equal power.

For speed each worker makes, once per head, a long noise bank (`BANK_SECONDS` of each
source through the head) and each sample takes seeded 8000-sample windows from it. The
draws for a sample come from a generator seeded by (seed, clip id, condition), so the noise
does not depend on how clips are grouped into shards, and a noisy render is the clean render
plus the noise: same seed, same clean part.
"""

from __future__ import annotations

import functools
import hashlib
import os

import numpy as np
import scipy.fft as sfft
from scipy.signal import fftconvolve

from bast.errors import ConfigError
from bast.pipeline.irs.sofa import IRSet, read_sofa

NOISE_KINDS = ("diffuse", "directional")
DIFFUSE_DIRECTIONS = 128
BANK_SECONDS = 8.0
NO_NOISE = float("inf")  # the snr_db label of a sample without noise


def parse_snr(text) -> tuple[float, float] | None:
    """'0' -> (0, 0); '-5:20' -> (-5, 20), drawn uniformly per sample; None/'' -> None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, (int, float)):
        return float(text), float(text)
    if isinstance(text, (tuple, list)):
        lo, hi = (float(v) for v in text)
    else:
        parts = str(text).strip().split(":")
        usage = f"--snr {text!r}: give a level in dB (0) or a range LO:HI (-5:20)"
        if len(parts) > 2:
            raise ConfigError(usage)
        try:
            lo, hi = float(parts[0]), float(parts[-1])
        except ValueError:
            raise ConfigError(usage) from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ConfigError(f"--snr {text!r}: the levels must be finite, low before high")
    return lo, hi


def fibonacci_directions(n: int) -> np.ndarray:
    """(n, 3) quasi-uniform unit vectors on the sphere (golden-angle spiral)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5**0.5) * k
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def _white(seed_parts, shape) -> np.ndarray:
    return np.random.default_rng(seed_parts).standard_normal(shape)


def diffuse_bank(hrirs: IRSet, seed: int, seconds: float = BANK_SECONDS, directions: int = DIFFUSE_DIRECTIONS) -> np.ndarray:
    """(2, L) float32 diffuse noise through `hrirs`, unit mean power per ear-sample.

    Circular convolution in the frequency domain, a few directions at a time: the bank
    wraps around seamlessly and costs about 0.3 s per head."""
    n = sfft.next_fast_len(int(seconds * hrirs.fs), real=True)
    which = np.argmax(fibonacci_directions(directions) @ hrirs.directions().T, axis=1)
    rng = np.random.default_rng([seed, 0xD1FF])
    total = np.zeros((2, n // 2 + 1), dtype=np.complex128)
    for start in range(0, directions, 16):
        idx = which[start:start + 16]
        x = sfft.rfft(rng.standard_normal((len(idx), n)), axis=-1)  # (D, F)
        h = sfft.rfft(hrirs.ir[idx].astype(float), n, axis=-1)  # (D, 2, F)
        total += np.einsum("df,dcf->cf", x, h)
    out = sfft.irfft(total, n, axis=-1)
    return (out / np.sqrt(np.mean(out**2))).astype(np.float32)


def directional_bank(hrirs: IRSet, azimuths_deg, seed: int, seconds: float = BANK_SECONDS / 2,
                     elevations_deg=0.0) -> np.ndarray:
    """(A, 2, L) float32: an independent white noise through the HRIR pair of each direction
    (azimuths, at one elevation or one per azimuth), each scaled to unit mean power per ear-sample."""
    n = int(seconds * hrirs.fs)
    # The head's nearest direction to each azimuth: an interferer need not sit exactly on the
    # grid, and a head rendered with --ir-tolerance may have none there.
    pairs = hrirs.select(azimuths_deg, elevations_deg, tolerance_deg=180.0).astype(float)
    out = np.empty((len(pairs), 2, n), dtype=np.float32)
    for a, pair in enumerate(pairs):
        x = _white([seed, 0xD12, a], n)
        y = np.stack([fftconvolve(x, pair[c])[:n] for c in (0, 1)])
        out[a] = y / np.sqrt(np.mean(y**2))
    return out


@functools.lru_cache(maxsize=8)
def _bank(kind: str, hrir_path: str, mtime_ns: int, azimuths: tuple, seed: int, elevations: tuple = ()) -> np.ndarray:
    hrirs = read_sofa(hrir_path)
    if kind == "diffuse":
        return diffuse_bank(hrirs, seed)
    return directional_bank(hrirs, azimuths, seed, elevations_deg=elevations if elevations else 0.0)


def noise_bank(kind: str, hrir_path: str, azimuths, seed: int, elevations=()) -> np.ndarray:
    """The noise bank of a head, kept for the worker's lifetime (read-only). `elevations`:
    one per azimuth, or () for the horizontal plane."""
    if kind not in NOISE_KINDS:
        raise ConfigError(f"--noise {kind!r}: choose {' or '.join(NOISE_KINDS)}")
    azimuths = tuple(float(a) for a in azimuths) if kind == "directional" else ()
    elevations = tuple(float(e) for e in elevations) if kind == "directional" else ()
    return _bank(kind, str(hrir_path), os.stat(hrir_path).st_mtime_ns, azimuths, seed, elevations)


def _rng(*parts) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def add_noise(audio: np.ndarray, clip_ids, n_az: int, *, kind: str, bank: np.ndarray, snr_range: tuple[float, float],
              seed: int, condition: str) -> np.ndarray:
    """Add noise in place to `audio` (C * n_az, 2, n): clip after clip, `n_az` azimuths each.
    Returns snr_db (C * n_az,) float32: the SNR drawn per sample, +inf where the clean
    sample is silent (no noise is added to it).

    Per clip, the SNRs come from (seed, clip id) alone, so a clip gets the same SNR at an
    azimuth in every condition; the noise windows from (seed, clip id, condition).
    """
    n = audio.shape[-1]
    snr = np.full(audio.shape[0], NO_NOISE, dtype=np.float32)
    lo, hi = snr_range
    for c, clip in enumerate(clip_ids):
        rows = slice(c * n_az, (c + 1) * n_az)
        levels = _rng(seed, "snr", clip).uniform(lo, hi, n_az) if hi > lo else np.full(n_az, lo)
        rng = _rng(seed, "noise", clip, condition)
        noise = np.zeros((n_az, 2, n), dtype=np.float32)
        if kind == "diffuse":
            for a, t in enumerate(rng.integers(0, bank.shape[-1] - n, n_az)):
                noise[a] = bank[:, t:t + n]  # slices, not fancy indexing: 5x faster
        else:
            count = rng.integers(1, min(3, bank.shape[0]) + 1, n_az)  # one to three sources
            for a in range(n_az):
                sources = rng.choice(bank.shape[0], count[a], replace=False)
                starts = rng.integers(0, bank.shape[-1] - n, count[a])
                for s, t in zip(sources, starts):
                    noise[a] += bank[s, :, t:t + n]
        snr[rows] = mix_at_snr(audio[rows], noise, levels)
    return snr


def mix_at_snr(clean: np.ndarray, noise: np.ndarray, levels) -> np.ndarray:
    """Add `noise` (k, 2, n) to `clean` (k, 2, n) in place, each scaled so that the sample's
    SNR over both ears is `levels` (k,) dB. Returns the SNRs, +inf where the clean sample is
    silent or the noise is (nothing is added there). Stage 1 and training on the fly both
    mix through here."""
    k = clean.shape[0]
    e_clean = np.square(clean).reshape(k, -1).sum(axis=1, dtype=np.float64)
    e_noise = np.square(noise).reshape(k, -1).sum(axis=1, dtype=np.float64)
    ok = (e_clean > 0) & (e_noise > 0)
    gain = np.where(ok, np.sqrt(e_clean / np.maximum(e_noise, 1e-300) / 10 ** (np.asarray(levels) / 10)), 0.0)
    noise *= gain.astype(np.float32)[:, None, None]
    clean += noise
    return np.where(ok, levels, NO_NOISE).astype(np.float32)


def noise_window(kind: str, bank: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """One sample's noise (2, n) from a bank, by `add_noise`'s rules: a window of the diffuse
    noise, or one to three directional sources, each a window of its own."""
    if kind == "diffuse":
        t = int(rng.integers(0, bank.shape[-1] - n))
        return bank[:, t:t + n].copy()
    out = np.zeros((2, n), dtype=np.float32)
    count = int(rng.integers(1, min(3, bank.shape[0]) + 1))
    for s, t in zip(rng.choice(bank.shape[0], count, replace=False), rng.integers(0, bank.shape[-1] - n, count)):
        out += bank[s, :, t:t + n]
    return out
