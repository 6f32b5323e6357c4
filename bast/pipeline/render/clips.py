"""The clip policy: loaded audio of any length, rate and channel count becomes 500 ms
mono clips at 16 kHz, or a readable reason why it cannot.

`prepare(audio, fs, policy)` returns `(clips, warnings)`: float32 arrays of exactly
`policy.samples` samples, and notes on what was done ("down-mixed 2 channels to mono",
"resampled from 44100 Hz", ...). It raises `ClipError` for unusable audio. The steps,
in order:

1. Checks. The sample rate must be a positive finite number ("invalid sample rate
   (<rate>)"); the samples real numbers in a (samples,) or (samples, channels) array
   ("no samples (0 frames)", "unexpected audio shape ..."); every sample finite
   ("contains NaN/Inf samples (<n> NaN, <m> Inf)"). Integer PCM arrays are scaled to
   [-1, 1).
2. Down-mix. Several channels are averaged into one, with a warning.
3. Silence. The RMS is measured after removing the mean (the DC offset). All samples
   zero: "digital silence (RMS -inf dBFS)". A constant non-zero signal, or one whose
   varying part is below `silence_dbfs` while its offset is not: "constant signal (DC
   offset only, ...)". Otherwise an RMS below `silence_dbfs` (default -90 dBFS, relative
   to a full scale of 1.0): "silent: RMS -97.3 dBFS below -90 dBFS". A DC offset larger
   than 0.01 (-40 dBFS) in a usable signal is subtracted, with a warning.
4. Resampling to `policy.fs` with `scipy.signal.resample_poly`, by the rational ratio
   `Fraction(policy.fs, fs).limit_denominator(1000)`; the warning says when that ratio
   only approximates the exact one.
5. Length (after resampling), CLI option --min-ms. Shorter than `min_ms`: "too short:
   40 ms < 100 ms minimum". From `min_ms` up to the clip length: zero-padded to the clip
   length, centred (the extra sample of an odd padding goes after the sound).
6. Long sounds, CLI option --long:
   * "loudest" (default): the one window of `samples` with the most energy (the first
     such window on a tie).
   * "split": consecutive windows from the start, in time order; a last partial piece of
     at least `min_ms` is zero-padded (centred), a shorter one dropped. Windows that are
     themselves silent (step 3's measure below `silence_dbfs`) are dropped with a
     warning naming their 0-based positions; if every window is silent, "all <n>
     segments are silent". The clips are returned in time order, silent ones left out;
     the caller names them `<clip_id>#0`, `#1`, ... in list order.
7. Normalisation, per output clip, CLI option --normalize: "rms" (default) scales the
   clip (padding included) to `target_rms_dbfs`, warning when a peak then exceeds full
   scale; "peak" scales its largest absolute sample to `target_peak`; "none" leaves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from bast.conventions import CLIP_SAMPLES, FS
from bast.errors import ClipError, ConfigError

LONG_MODES = ("loudest", "split")
NORMALIZE_MODES = ("rms", "peak", "none")
DC_REMOVE_ABOVE = 1e-2  # DC offsets larger than this (-40 dBFS) are subtracted before cutting


@dataclass(frozen=True)
class ClipPolicy:
    fs: int = FS
    samples: int = CLIP_SAMPLES  # 500 ms
    min_ms: float = 100.0  # shorter (after resampling) -> skipped; min..500 ms -> padded, centred
    long: str = "loudest"  # "loudest" window, or "split" into consecutive clips
    normalize: str = "rms"  # "rms" to target_rms_dbfs, "peak" to target_peak, or "none"
    target_rms_dbfs: float = -20.0
    silence_dbfs: float = -90.0  # RMS below this (after removing DC) = silence -> skipped
    target_peak: float = 0.9  # for normalize="peak"

    def __post_init__(self):
        if not isinstance(self.fs, (int, np.integer)) or self.fs <= 0:
            raise ConfigError(f"fs must be a positive integer, not {self.fs!r}")
        if not isinstance(self.samples, (int, np.integer)) or self.samples <= 0:
            raise ConfigError(f"samples must be a positive integer, not {self.samples!r}")
        if not 0 <= self.min_ms <= self.clip_ms:
            raise ConfigError(f"min_ms must be between 0 and the clip length ({self.clip_ms:g} ms), "
                             f"not {self.min_ms!r}")
        if self.long not in LONG_MODES:
            raise ConfigError(f"long must be one of {', '.join(LONG_MODES)}, not {self.long!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, "
                             f"not {self.normalize!r}")
        if not 0 < self.target_peak <= 1:
            raise ConfigError(f"target_peak must be in (0, 1], not {self.target_peak!r}")

    @property
    def clip_ms(self) -> float:
        return 1000.0 * self.samples / self.fs


DEFAULT_POLICY = ClipPolicy()


def _ms(v: float) -> str:
    """Milliseconds for messages: '40', '99.6'."""
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else -math.inf


def _ac_rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x - x.mean()) ** 2)))


def _as_float(audio) -> np.ndarray:
    a = np.asarray(audio)
    if a.dtype == bool or a.dtype.kind not in "iuf":
        raise ClipError(f"samples are not real numbers (dtype {a.dtype})")
    if a.dtype.kind in "iu":
        info = np.iinfo(a.dtype)
        a = a.astype(np.float64)
        if info.min == 0:  # unsigned PCM (8-bit WAV): centred on the middle value
            a -= (info.max + 1) / 2
            return a / ((info.max + 1) / 2)
        return a / -float(info.min)
    return a.astype(np.float64, copy=False)


def _check_rate(fs) -> Fraction:
    try:
        ok = not isinstance(fs, bool) and math.isfinite(float(fs)) and float(fs) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ClipError(f"invalid sample rate ({fs!r})")
    f = float(fs)
    return Fraction(int(f)) if f.is_integer() else Fraction(f)


def _pad_centred(x: np.ndarray, n: int) -> np.ndarray:
    left = (n - x.size) // 2
    out = np.zeros(n, dtype=np.float64)
    out[left:left + x.size] = x
    return out


def _normalise(clip: np.ndarray, policy: ClipPolicy, warnings: list[str], label: str) -> np.ndarray:
    if policy.normalize == "rms":
        rms = float(np.sqrt(np.mean(clip**2)))
        clip = clip * (10.0 ** (policy.target_rms_dbfs / 20.0) / rms)
        peak = float(np.max(np.abs(clip)))
        if peak > 1.0:
            warnings.append(f"{label}peak {_db(peak):+.1f} dBFS after RMS normalisation "
                            "(above full scale)")
    elif policy.normalize == "peak":
        clip = clip * (policy.target_peak / float(np.max(np.abs(clip))))
    return clip


def prepare(audio: np.ndarray, fs: int,
            policy: ClipPolicy = DEFAULT_POLICY) -> tuple[list[np.ndarray], list[str]]:
    """Clips of `policy.samples` float32 samples at `policy.fs` from `audio` sampled at
    `fs`, and warnings; see the module docstring. Raises ClipError with the reason."""
    warnings: list[str] = []
    rate = _check_rate(fs)
    a = _as_float(audio)
    _check_samples(a)  # 1. shape and finiteness
    a, after = _down_mix(a, warnings)  # 2. down-mix
    a = _remove_dc(a, policy, after, warnings)  # 3. silence, DC
    a = _resample(a, rate, policy.fs, warnings)  # 4. resample
    # 5. length
    dur_ms = 1000.0 * a.size / policy.fs
    if dur_ms < policy.min_ms:
        raise ClipError(f"too short: {_ms(dur_ms)} ms < {_ms(policy.min_ms)} ms minimum")
    pieces = _cut(a, policy, warnings)  # 6. cut
    # 7. normalise
    many = len(pieces) > 1
    clips = [_normalise(p, policy, warnings, f"segment {k}: " if many else "").astype(np.float32)
             for k, p in enumerate(pieces)]
    return clips, warnings


def _check_samples(a: np.ndarray) -> None:
    """(samples,) or (samples, channels), at least one of each, every sample finite."""
    if a.ndim == 2:
        if a.shape[1] == 0:
            raise ClipError("no channels")
    elif a.ndim != 1:
        raise ClipError(f"unexpected audio shape {a.shape} (expected (samples,) or "
                        "(samples, channels))")
    if a.shape[0] == 0:
        raise ClipError("no samples (0 frames)")
    finite = np.isfinite(a)
    if not finite.all():
        n_nan = int(np.isnan(a).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise ClipError(f"contains NaN/Inf samples ({n_nan} NaN, {n_inf} Inf)")


def _down_mix(a: np.ndarray, warnings: list[str]) -> tuple[np.ndarray, str]:
    """Mono, and the words the later reasons add when channels were mixed."""
    after = ""
    if a.ndim == 2:
        if a.shape[1] > 1:
            warnings.append(f"down-mixed {a.shape[1]} channels to mono")
            after = " after down-mix"
        a = a.mean(axis=1)
    return a, after


def _remove_dc(a: np.ndarray, policy: ClipPolicy, after: str, warnings: list[str]) -> np.ndarray:
    """Refuse silence and a constant signal; remove a DC offset above DC_REMOVE_ABOVE."""
    threshold = 10.0 ** (policy.silence_dbfs / 20.0)
    if not np.any(a):
        raise ClipError(f"digital silence (RMS -inf dBFS{after})")
    mean = float(a.mean())
    if np.ptp(a) == 0:
        raise ClipError(f"constant signal (DC offset only, value {a[0]:.3g}{after})")
    ac = _ac_rms(a)
    if ac < threshold:
        if abs(mean) >= threshold:
            raise ClipError(f"constant signal (DC offset only, value {mean:.3g}; the varying "
                            f"part has RMS {_db(ac):.1f} dBFS below {policy.silence_dbfs:g} dBFS)")
        raise ClipError(f"silent: RMS {_db(ac):.1f} dBFS below {policy.silence_dbfs:g} dBFS{after}")
    if abs(mean) > DC_REMOVE_ABOVE:
        a = a - mean
        warnings.append(f"removed a DC offset of {mean:.3g}")
    return a


def _resample(a: np.ndarray, rate: Fraction, fs: int, warnings: list[str]) -> np.ndarray:
    """`a` at `fs`: a polyphase resampling by the rate's ratio (denominator at most 1000)."""
    if rate == fs:
        return a
    from scipy.signal import resample_poly

    exact = Fraction(fs) / rate
    ratio = exact.limit_denominator(1000)
    a = resample_poly(a, ratio.numerator, ratio.denominator)
    shown = f"{int(rate)}" if rate.denominator == 1 else f"{float(rate):g}"
    note = f"resampled from {shown} Hz"
    if ratio != exact:
        err = float(ratio / exact) - 1.0
        note += (f" (ratio approximated as {ratio.numerator}/{ratio.denominator}, "
                 f"{err * 100:+.3g}% speed error)")
    warnings.append(note)
    return a


def _cut(a: np.ndarray, policy: ClipPolicy, warnings: list[str]) -> list[np.ndarray]:
    """The clip-length pieces of `a`: padded when shorter, else by the long-sound policy."""
    n, size = a.size, policy.samples
    if n <= size:
        if n < size:
            warnings.append(f"zero-padded {_ms(1000.0 * n / policy.fs)} ms to {_ms(policy.clip_ms)} ms (centred)")
        return [_pad_centred(a, size)]
    if policy.long == "loudest":
        return [_loudest(a, policy, warnings)]
    return _split(a, policy, warnings)


def _loudest(a: np.ndarray, policy: ClipPolicy, warnings: list[str]) -> np.ndarray:
    """The window of the clip length with the most energy."""
    n, size = a.size, policy.samples
    c = np.concatenate(([0.0], np.cumsum(a * a)))
    start = int(np.argmax(c[size:] - c[:-size]))
    piece = a[start:start + size].copy()
    warnings.append(f"took the loudest {_ms(policy.clip_ms)} ms window "
                    f"({start / policy.fs:.2f}-{(start + size) / policy.fs:.2f} s "
                    f"of {n / policy.fs:.2f} s)")
    if _ac_rms(piece) < 10.0 ** (policy.silence_dbfs / 20.0):  # cannot happen for a non-silent whole; kept safe
        raise ClipError(f"silent: loudest window RMS {_db(_ac_rms(piece)):.1f} dBFS "
                        f"below {policy.silence_dbfs:g} dBFS")
    return piece


def _split(a: np.ndarray, policy: ClipPolicy, warnings: list[str]) -> list[np.ndarray]:
    """Consecutive clips; a last piece of at least min_ms padded, a shorter one dropped, and
    silent segments dropped."""
    n, size = a.size, policy.samples
    full = n // size
    pieces = [a[k * size:(k + 1) * size].copy() for k in range(full)]
    rest = n - full * size
    rest_ms = 1000.0 * rest / policy.fs
    if rest:
        if rest_ms >= policy.min_ms:
            pieces.append(_pad_centred(a[full * size:], size))
            warnings.append(f"split into {len(pieces)} clips; the last ({_ms(rest_ms)} ms) "
                            "zero-padded (centred)")
        else:
            warnings.append(f"split into {full} clips; dropped a last piece of "
                            f"{_ms(rest_ms)} ms < {_ms(policy.min_ms)} ms")
    else:
        warnings.append(f"split into {full} clips")
    threshold = 10.0 ** (policy.silence_dbfs / 20.0)
    silent = [k for k, p in enumerate(pieces) if _ac_rms(p) < threshold]
    if len(silent) == len(pieces):
        raise ClipError(f"all {len(pieces)} segments are silent (RMS below "
                        f"{policy.silence_dbfs:g} dBFS)")
    if silent:
        warnings.append(f"dropped {len(silent)} silent segment(s) of {len(pieces)} "
                        f"(0-based positions {', '.join(map(str, silent))})")
        pieces = [p for k, p in enumerate(pieces) if k not in set(silent)]
    return pieces
