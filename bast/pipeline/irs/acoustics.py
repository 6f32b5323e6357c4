"""Room-acoustic and binaural measurements of impulse responses.

These are the checks a user runs on an HRIR or BRIR set before rendering with it, and the
ones the tests hold the lecture hall to: ITD and ILD of the direct sound, reverberation
time from the Schroeder decay, direct-to-reverberant ratio and interaural coherence of the
late tail. Measurements use ordinary octave-band Butterworth filters (IEC 61260 style), so
they do not share code with the way the hall is synthesised.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

OCTAVES_HZ = (125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0)
LN_1E6 = np.log(1e6)  # 60 dB of energy decay


def octave_filter(x: np.ndarray, fc: float, fs: int, order: int = 3) -> np.ndarray:
    """Zero-phase octave band around `fc` (edges fc/sqrt2, fc*sqrt2), along the last axis."""
    hi = min(fc * np.sqrt(2.0), 0.95 * fs / 2)
    sos = signal.butter(order, [fc / np.sqrt(2.0), hi], btype="bandpass", fs=fs, output="sos")
    return signal.sosfiltfilt(sos, x, axis=-1)


def band_split(x: np.ndarray, fs: int, centres=OCTAVES_HZ) -> np.ndarray:
    """Split `x` (last axis) into octave bands whose sum gives back `x` exactly.

    Zero-phase FFT masks shaped as hats on a log-frequency axis, one per centre, forming a
    partition of unity: the lowest band takes everything below its centre, the highest
    everything above. Used to shape synthetic reverberation band by band.
    """
    n = x.shape[-1]
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    logf = np.log2(np.maximum(f, 1e-3))
    logc = np.log2(np.asarray(centres, dtype=float))
    masks = np.empty((len(centres), f.size))
    for b in range(len(centres)):
        up = np.ones_like(f) if b == 0 else np.clip((logf - logc[b - 1]) / (logc[b] - logc[b - 1]), 0, 1)
        down = np.ones_like(f) if b == len(centres) - 1 else np.clip((logc[b + 1] - logf) / (logc[b + 1] - logc[b]), 0, 1)
        masks[b] = np.minimum(up, down)
    spec = np.fft.rfft(x, nfft, axis=-1)
    out = np.fft.irfft(spec[..., None, :] * masks, nfft, axis=-1)[..., :n]
    return np.moveaxis(out, -2, 0)  # (B, ..., n)


def schroeder_db(h: np.ndarray) -> np.ndarray:
    """Schroeder backward-integrated energy decay in dB re its start (last axis)."""
    e = np.cumsum((h**2)[..., ::-1], axis=-1)[..., ::-1]
    return 10 * np.log10(np.maximum(e / np.maximum(e[..., :1], 1e-300), 1e-30))


def decay_time(h: np.ndarray, fs: int, fit_db: tuple[float, float] = (-5.0, -25.0)) -> float:
    """Reverberation time (s) from a line fit to the Schroeder decay between `fit_db`
    (T20 by default, T30 with (-5, -35)), extrapolated to 60 dB."""
    edc = schroeder_db(np.asarray(h, dtype=float))
    start, stop = np.argmax(edc <= fit_db[0]), np.argmax(edc <= fit_db[1])
    if stop <= start + 1:
        return float("nan")  # the decay never reaches the lower fit limit
    t = np.arange(start, stop) / fs
    slope = np.polyfit(t, edc[start:stop], 1)[0]
    return float(-60.0 / slope) if slope < 0 else float("nan")


def rt60(h: np.ndarray, fs: int, bands=OCTAVES_HZ, fit_db=(-5.0, -25.0)) -> dict[float, float]:
    """Reverberation time per octave band of a single-channel IR."""
    return {fc: decay_time(octave_filter(h, fc, fs), fs, fit_db) for fc in bands}


def onset(h: np.ndarray, threshold_db: float = -20.0) -> int:
    """First sample (over all channels) within `threshold_db` of the peak: the direct sound."""
    a = np.abs(np.asarray(h)).reshape(-1, np.shape(h)[-1]).max(axis=0)
    return int(np.argmax(a >= a.max() * 10 ** (threshold_db / 20)))


def direct_window(fs: int, start: int, before_ms: float = 1.0, after_ms: float = 2.5) -> slice:
    """Samples of the direct sound: from `before_ms` before its onset to `after_ms` after.
    2.5 ms holds the head and pinna response and ends before the first reflection of a
    listener seated 1.2 m above the floor (4.7 ms later for a source 1 m away)."""
    return slice(max(0, start - int(round(before_ms * fs / 1000))), start + int(round(after_ms * fs / 1000)))


def itd_ms(pair: np.ndarray, fs: int, max_ms: float = 1.0, lowpass_hz: float = 1500.0, upsample: int = 8) -> float:
    """Interaural time difference of the direct sound (ms): positive when the left ear
    leads. Peak of the interaural cross-correlation of the pair low-passed at
    `lowpass_hz` (where the ITD is the cue that matters and the pinna's high-frequency
    ripples do not create side peaks), within +-`max_ms`, on an `upsample`-times finer grid."""
    w = direct_window(fs, onset(pair))
    sos = signal.butter(4, lowpass_hz, fs=fs, output="sos")
    low = signal.sosfiltfilt(sos, np.asarray(pair, dtype=float), axis=-1)
    left, right = (signal.resample_poly(low[c, w], upsample, 1) for c in (0, 1))
    cc = signal.correlate(right, left, mode="full")
    lags = np.arange(-len(left) + 1, len(right))
    keep = np.abs(lags) <= max_ms * fs * upsample / 1000
    return float(lags[keep][np.argmax(cc[keep])] / (fs * upsample) * 1000)


def ild_db(pair: np.ndarray, fs: int) -> float:
    """Interaural level difference of the direct sound (dB): positive when the left ear is louder."""
    w = direct_window(fs, onset(pair))
    el, er = (np.sum(np.asarray(pair[c], dtype=float)[w] ** 2) for c in (0, 1))
    return float(10 * np.log10(el / er))


def drr_db(irs: np.ndarray, fs: int) -> float:
    """Direct-to-reverberant energy ratio (dB) of one IR (..., N) or the energy-average of
    many (e.g. all azimuths and both ears, which averages out the ears' directivity)."""
    irs = np.asarray(irs, dtype=float).reshape(-1, np.shape(irs)[-1])
    direct = reverb = 0.0
    for h in irs:
        w = direct_window(fs, onset(h))
        e = h**2
        d = e[w].sum()
        direct += d
        reverb += e[w.stop:].sum()  # what comes before the window is silence
    return float(10 * np.log10(direct / reverb))


def predicted_drr_db(volume_m3: float, rt60_s: float, distance_m: float, directivity: float = 1.0) -> float:
    """Diffuse-field prediction: DRR = 10 log10(Q A / (16 pi r^2)), A = 0.161 V / T (Sabine).
    Equivalently 20 log10(r_c / r) with the critical distance r_c = 0.057 sqrt(Q V / T)."""
    area = 0.161 * volume_m3 / rt60_s
    return float(10 * np.log10(directivity * area / (16 * np.pi * distance_m**2)))


def interaural_coherence(pair: np.ndarray, fs: int, fc: float, start_s: float = 0.08, max_lag_ms: float = 1.0) -> float:
    """Interaural coherence of the part of a BRIR after `start_s`, in the octave band `fc`:
    the largest |normalised cross-correlation| within +-`max_lag_ms` (IACC, ISO 3382).
    The whole response is filtered before the tail is cut out: filtering the cut tail
    would add the filter's edge transients to both ears alike."""
    band = octave_filter(np.asarray(pair, dtype=float), fc, fs)
    left, right = band[0, int(start_s * fs):], band[1, int(start_s * fs):]
    norm = np.sqrt(np.sum(left**2) * np.sum(right**2))
    if norm == 0:
        return float("nan")
    cc = signal.correlate(left, right, mode="full") / norm
    mid, lag = len(right) - 1, int(round(max_lag_ms * fs / 1000))
    return float(np.max(np.abs(cc[mid - lag: mid + lag + 1])))
