"""The spectrogram BAST reads (docs/conventions.md), batched.

Per ear, exactly `scipy.signal.spectrogram(x, fs=16000, window=('tukey', 0.25),
nperseg=256, noverlap=128)` with scipy's remaining defaults: a periodic Tukey window, the
mean removed from each segment (detrend='constant'), a one-sided spectrum with every bin
but DC and Nyquist doubled, density scaling 1 / (fs * sum(window**2)). For 8000 samples:
129 frequencies (0-8000 Hz) x 61 frames. Then log power in dB, floored at `FLOOR_DB`
(the reference code took the log without a floor and patched the -inf afterwards).

The same function serves the featurize stage (batches of thousands) and a user with one
binaural clip at inference time.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy.signal import get_window

from bast.conventions import FS
from bast.errors import DataError
NPERSEG = 256
NOVERLAP = 128
WINDOW = ("tukey", 0.25)
FLOOR_DB = -150.0  # dB re 1/Hz; a PSD of 1e-15: 110 dB under a -20 dBFS white noise
STFT_PARAMS = {"fs": FS, "window": list(WINDOW), "nperseg": NPERSEG, "noverlap": NOVERLAP, "nfft": NPERSEG,
               "detrend": "constant", "return_onesided": True, "scaling": "density", "mode": "psd",
               "log": "10*log10(max(psd, 10**(floor_db/10)))", "floor_db": FLOOR_DB}


def n_frames(samples: int) -> int:
    return (samples - NOVERLAP) // (NPERSEG - NOVERLAP)


# scipy's own window, so the definition cannot drift; periodic (fftbins=True), as scipy's
# spectrogram uses it.
_WINDOW = get_window(WINDOW, NPERSEG, fftbins=True)
_WINDOW_SPECTRUM = sfft.rfft(_WINDOW)
_SCALE = np.full(NPERSEG // 2 + 1, 2.0 / (FS * np.sum(_WINDOW**2)))  # density, one-sided doubling
_SCALE[[0, -1]] /= 2  # DC and Nyquist are not doubled
_SCALE_DB = (10 * np.log10(_SCALE)).astype(np.float32)


def spectrogram_db(audio, floor_db: float = FLOOR_DB, chunk: int = 16) -> np.ndarray:
    """Log-power spectrograms (..., 129, frames) in dB, float32, of audio (..., samples).

    Any leading shape: one binaural clip (2, 8000) or a batch (B, 2, 8000). Computed in
    float64 (float32 FFTs drift by more than 0.01 dB in bins 100 dB under a strong
    component), `chunk` single-ear rows at a time: 16 rows (2 MB of frames) stay in cache
    and run twice as fast as 64 or more (measured 6,700 against 3,100 samples/s).
    """
    audio = np.asarray(audio)
    lead, n = audio.shape[:-1], audio.shape[-1]
    flat = audio.reshape(-1, n)
    out = np.empty((flat.shape[0], NPERSEG // 2 + 1, n_frames(n)), dtype=np.float32)
    for i in range(0, flat.shape[0], chunk):
        out[i:i + chunk] = _spectrogram_db(flat[i:i + chunk], floor_db)
    return out.reshape(lead + out.shape[1:])


def _stft(x: np.ndarray) -> np.ndarray:
    """Complex STFT (C, T, 129) of rows x (C, samples), float64, scipy's definition without
    the density scale."""
    x = x.astype(np.float64)
    hop = NPERSEG - NOVERLAP
    frames = np.lib.stride_tricks.sliding_window_view(x, NPERSEG, axis=-1)[:, ::hop]  # (C, T, 256), a view
    # detrend='constant' removes each segment's mean m before windowing; by linearity that is
    # rfft(w * f) - m * rfft(w), and m comes from sums of the hop-sized blocks.
    t = frames.shape[1]
    blocks = x[:, : (t + 1) * hop].reshape(x.shape[0], t + 1, hop).sum(axis=-1)
    means = (blocks[:, :-1] + blocks[:, 1:]) / NPERSEG
    return sfft.rfft(frames * _WINDOW, axis=-1) - means[..., None] * _WINDOW_SPECTRUM


def _power_floor(floor_db: float) -> np.ndarray:
    """The floor as a power before the density scale, per frequency."""
    return 10.0 ** (floor_db / 10.0) / _SCALE


def _db(spec: np.ndarray, floor_db: float) -> np.ndarray:
    power = spec.real**2 + spec.imag**2  # (C, T, 129), before the density scale
    # 10 log10(max(p * s, floor)) = 10 log10(max(p, floor / s)) + 10 log10(s), the log in float32
    # (its relative error, 1e-7, is 1e-6 dB).
    power = np.maximum(power, _power_floor(floor_db)).astype(np.float32)
    db = 10.0 * np.log10(power) + _SCALE_DB
    return db.transpose(0, 2, 1)


def _spectrogram_db(x: np.ndarray, floor_db: float) -> np.ndarray:
    return _db(_stft(x), floor_db)


def spectrogram_and_phase(audio, floor_db: float = FLOOR_DB, chunk: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Log-power spectrograms and the interaural phase of binaural audio (..., 2, samples).

    Returns (db, phase), both (..., 2, 129, frames) float32: `db` exactly as
    `spectrogram_db`; `phase[..., 0, :, :]` and `phase[..., 1, :, :]` are the cosine and
    sine of the angle of X_left * conj(X_right) per bin and frame (positive: the left ear
    leads), from the same STFT, and 0 where either ear's bin is at the floor (no phase to
    speak of). `chunk` clips at a time (16 single-ear rows, as `spectrogram_db`).
    """
    audio = np.asarray(audio)
    if audio.ndim < 2 or audio.shape[-2] != 2:
        raise DataError(f"binaural audio must be (..., 2, samples), got {audio.shape}")
    lead, n = audio.shape[:-2], audio.shape[-1]
    flat = audio.reshape(-1, 2, n)
    shape = (flat.shape[0], 2, NPERSEG // 2 + 1, n_frames(n))
    db, phase = np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)
    floor = _power_floor(floor_db)
    for i in range(0, flat.shape[0], chunk):
        clips = flat[i:i + chunk]
        spec = _stft(clips.reshape(-1, n))  # (2B, T, 129): left, right, left, right, ...
        db[i:i + chunk] = _db(spec, floor_db).reshape(len(clips), 2, *shape[2:])
        left, right = spec[0::2], spec[1::2]
        cross = left * np.conj(right)
        audible = (left.real**2 + left.imag**2 > floor) & (right.real**2 + right.imag**2 > floor)
        mag = np.abs(cross)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(audible, cross.real / mag, 0.0)
            sin = np.where(audible, cross.imag / mag, 0.0)
        phase[i:i + chunk, 0] = cos.transpose(0, 2, 1)
        phase[i:i + chunk, 1] = sin.transpose(0, 2, 1)
    return db.reshape(lead + shape[1:]), phase.reshape(lead + shape[1:])


def scipy_spectrogram_db(audio: np.ndarray, floor_db: float = FLOOR_DB) -> np.ndarray:
    """The reference definition with scipy itself, for tests and the benchmark's naive loop."""
    from scipy.signal import spectrogram

    _, _, psd = spectrogram(np.asarray(audio, dtype=np.float64), fs=FS, window=WINDOW, nperseg=NPERSEG,
                            noverlap=NOVERLAP)
    return 10.0 * np.log10(np.maximum(psd, 10.0 ** (floor_db / 10.0)))
