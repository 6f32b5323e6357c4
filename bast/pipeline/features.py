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


def _spectrogram_db(x: np.ndarray, floor_db: float) -> np.ndarray:
    x = x.astype(np.float64)
    hop = NPERSEG - NOVERLAP
    frames = np.lib.stride_tricks.sliding_window_view(x, NPERSEG, axis=-1)[:, ::hop]  # (C, T, 256), a view
    # detrend='constant' removes each segment's mean m before windowing; by linearity that is
    # rfft(w * f) - m * rfft(w), and m comes from sums of the hop-sized blocks.
    t = frames.shape[1]
    blocks = x[:, : (t + 1) * hop].reshape(x.shape[0], t + 1, hop).sum(axis=-1)
    means = (blocks[:, :-1] + blocks[:, 1:]) / NPERSEG
    spec = sfft.rfft(frames * _WINDOW, axis=-1) - means[..., None] * _WINDOW_SPECTRUM
    power = spec.real**2 + spec.imag**2  # (C, T, 129), before the density scale
    # 10 log10(max(p * s, floor)) = 10 log10(max(p, floor / s)) + 10 log10(s), the log in float32
    # (its relative error, 1e-7, is 1e-6 dB).
    power = np.maximum(power, 10.0 ** (floor_db / 10.0) / _SCALE).astype(np.float32)
    db = 10.0 * np.log10(power) + _SCALE_DB
    return db.transpose(0, 2, 1)




def scipy_spectrogram_db(audio: np.ndarray, floor_db: float = FLOOR_DB) -> np.ndarray:
    """The reference definition with scipy itself, for tests and the benchmark's naive loop."""
    from scipy.signal import spectrogram

    _, _, psd = spectrogram(np.asarray(audio, dtype=np.float64), fs=FS, window=WINDOW, nperseg=NPERSEG,
                            noverlap=NOVERLAP)
    return 10.0 * np.log10(np.maximum(psd, 10.0 ** (floor_db / 10.0)))
