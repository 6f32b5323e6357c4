"""The default corpus: sounds synthesised from a seed, so training needs no download.

`DefaultCorpus` (recipe ``"default"``) lists `n_clips` clips of 500 ms at 16 kHz. Clip i
is of kind ``kinds[i % len(kinds)]``, so every kind is (nearly) equally common, and its
audio comes from ``np.random.default_rng([seed, i])`` alone: the same seed and index give
the same samples whatever `n_clips` is, and `load` rebuilds a clip from its reference.

The kinds are chosen to differ in how much direction information they carry once
spatialised. Broadband noise bursts excite every frequency band, so interaural time and
level differences and the pinna cues are all available and they localise well; clicks
and impacts add sharp onsets that help too. Narrowband sounds - band-pass noise, AM
tones, sweeps at any one instant - leave only the cues of a few bands, and pure tones
are notoriously ambiguous. Harmonic complexes, vowels and (when espeak-ng is installed)
synthetic speech sit in between, and resemble what a listener meets in real rooms.

Kinds and their category strings: ``white_noise``, ``pink_noise``, ``brown_noise``,
``bandpass_noise``, ``harmonic``, ``sweep``, ``am_tone``, ``clicks``, ``impact``,
``vowel`` and, optionally, ``speech`` (see `bast.datasets.speech`).

Every generator returns exactly `N_SAMPLES` float32 samples: the sound (often shorter than
500 ms) at a random offset with silence around it, peak-normalised to `PEAK`.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
from scipy import signal

from bast.conventions import CLIP_SAMPLES as N_SAMPLES  # 500 ms
from bast.conventions import FS
from bast.datasets import speech as _speech
from bast.datasets.base import ClipError, ClipRef, register
from bast import options
from bast.errors import ConfigError, MissingToolError

PEAK = 0.5  # peak amplitude after normalisation
MAX_SOUNDS = 1_000_000  # clips of one procedural corpus (the demo takes 290)
SOUND_LISTING_BYTES = 1024  # a ClipRef and its place in the splits while a run is planned
NYQUIST = FS / 2


# ---------------------------------------------------------------- shared helpers


def _duration(rng: np.random.Generator, lo_s: float, hi_s: float) -> int:
    """A random length in samples between lo_s and hi_s seconds (at most N_SAMPLES)."""
    return min(N_SAMPLES, int(round(rng.uniform(lo_s, hi_s) * FS)))


def _ramps(rng: np.random.Generator, n: int, lo_s: float = 0.002, hi_s: float = 0.05) -> np.ndarray:
    """Envelope of length n: raised-cosine onset and offset ramps of random lengths."""
    env = np.ones(n)
    for side in (0, 1):
        k = min(n // 2, max(1, int(rng.uniform(lo_s, hi_s) * FS)))
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
        if side == 0:
            env[:k] *= ramp
        else:
            env[n - k :] *= ramp[::-1]
    return env


def _shaped_noise(rng: np.random.Generator, n: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Gaussian noise of length n whose amplitude spectrum is gain(f) (f in Hz)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / FS)
    return np.fft.irfft(spec * gain(f), n)


def _finish(rng: np.random.Generator, sound: np.ndarray) -> np.ndarray:
    """Place `sound` at a random offset in N_SAMPLES of silence and peak-normalise it."""
    sound = np.asarray(sound, dtype=np.float64)[:N_SAMPLES]
    out = np.zeros(N_SAMPLES)
    start = int(rng.integers(0, N_SAMPLES - sound.size + 1))
    out[start : start + sound.size] = sound
    peak = np.max(np.abs(out))
    if not np.isfinite(peak) or peak <= 0:
        raise ClipError("procedural generator produced silence or non-finite samples")
    return (out * (PEAK / peak)).astype(np.float32)


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """Two-pole resonance at `freq` Hz with -3 dB `bandwidth` Hz, unity gain at DC."""
    r = np.exp(-np.pi * bandwidth / FS)
    a = [1.0, -2 * r * np.cos(2 * np.pi * freq / FS), r * r]
    return signal.lfilter([sum(a)], a, x)


# ---------------------------------------------------------------- the generators


def _noise_burst(rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise burst of 150-500 ms with power spectrum 1/f**exponent and random ramps."""
    n = _duration(rng, 0.15, 0.5)
    f_floor = 20.0  # keep the coloured noises free of DC drift

    def gain(f):
        g = np.maximum(f, f_floor) ** (-exponent / 2)
        g[f < f_floor] = 0.0
        return g

    x = _shaped_noise(rng, n, gain) if exponent else rng.standard_normal(n)
    return _finish(rng, x * _ramps(rng, n))


def white_noise(rng: np.random.Generator) -> np.ndarray:
    """White noise burst: flat spectrum, the easiest sound to localise."""
    return _noise_burst(rng, 0.0)


def pink_noise(rng: np.random.Generator) -> np.ndarray:
    """Pink noise burst: -3 dB per octave (equal energy per octave)."""
    return _noise_burst(rng, 1.0)


def brown_noise(rng: np.random.Generator) -> np.ndarray:
    """Brown (red) noise burst: -6 dB per octave, energy mostly below 1 kHz."""
    return _noise_burst(rng, 2.0)


def bandpass_noise(rng: np.random.Generator, centre_hz: float | None = None, width_oct: float | None = None) -> np.ndarray:
    """Noise in one band: log-random centre 300 Hz-6 kHz, 1/3 to 2 octaves wide.

    The band is cut with a brick-wall filter in the frequency domain (clipped at 7.8 kHz).
    `centre_hz` and `width_oct` fix the band (for tests); otherwise they are drawn.
    """
    centre = np.exp(rng.uniform(np.log(300.0), np.log(6000.0))) if centre_hz is None else centre_hz
    width = rng.uniform(1 / 3, 2.0) if width_oct is None else width_oct
    lo, hi = centre * 2 ** (-width / 2), min(centre * 2 ** (width / 2), 0.975 * NYQUIST)
    n = _duration(rng, 0.15, 0.5)
    x = _shaped_noise(rng, n, lambda f: ((f >= lo) & (f <= hi)).astype(float))
    return _finish(rng, x * _ramps(rng, n, 0.005, 0.05))


def harmonic(rng: np.random.Generator, f0: float | None = None) -> np.ndarray:
    """Harmonic complex: f0 80-400 Hz, 3 to all harmonics up to 7.5 kHz, random phases,
    spectral tilt 0 to -12 dB per octave. `f0` fixes the fundamental (for tests)."""
    f0 = np.exp(rng.uniform(np.log(80.0), np.log(400.0))) if f0 is None else f0
    k_max = int(7500 // f0)
    k = np.arange(1, int(rng.integers(min(3, k_max), k_max + 1)) + 1)
    tilt_db_oct = rng.uniform(-12.0, 0.0)
    amps = 10 ** (tilt_db_oct * np.log2(k) / 20)
    phases = rng.uniform(0, 2 * np.pi, k.size)
    n = _duration(rng, 0.2, 0.5)
    t = np.arange(n) / FS
    x = (amps[:, None] * np.sin(2 * np.pi * f0 * k[:, None] * t + phases[:, None])).sum(axis=0)
    return _finish(rng, x * _ramps(rng, n, 0.005, 0.05))


def sweep(rng: np.random.Generator, f_start: float | None = None, f_end: float | None = None, log: bool | None = None) -> np.ndarray:
    """Chirp, linear or logarithmic, up or down, between a random low (100 Hz-1 kHz) and
    high (2-7 kHz) frequency, 200-500 ms. The arguments fix the sweep (for tests)."""
    lo = np.exp(rng.uniform(np.log(100.0), np.log(1000.0)))
    hi = np.exp(rng.uniform(np.log(2000.0), np.log(7000.0)))
    up = rng.random() < 0.5
    method = "logarithmic" if (rng.random() < 0.5 if log is None else log) else "linear"
    f_start = (lo if up else hi) if f_start is None else f_start
    f_end = (hi if up else lo) if f_end is None else f_end
    n = _duration(rng, 0.2, 0.5)
    t = np.arange(n) / FS
    x = signal.chirp(t, f0=f_start, t1=t[-1], f1=f_end, method=method, phi=rng.uniform(0, 360))
    return _finish(rng, x * _ramps(rng, n, 0.005, 0.02))


def am_tone(rng: np.random.Generator) -> np.ndarray:
    """Sinusoidally amplitude-modulated tone: carrier 250 Hz-5 kHz, modulation 2-40 Hz,
    depth 50-100 %, 300-500 ms: narrowband, with a slow envelope."""
    fc = np.exp(rng.uniform(np.log(250.0), np.log(5000.0)))
    fm = np.exp(rng.uniform(np.log(2.0), np.log(40.0)))
    depth = rng.uniform(0.5, 1.0)
    n = _duration(rng, 0.3, 0.5)
    t = np.arange(n) / FS
    env = 1 + depth * np.sin(2 * np.pi * fm * t + rng.uniform(0, 2 * np.pi))
    x = env * np.sin(2 * np.pi * fc * t + rng.uniform(0, 2 * np.pi))
    return _finish(rng, x * _ramps(rng, n, 0.005, 0.02))


def clicks(rng: np.random.Generator) -> np.ndarray:
    """Click train: 5-100 clicks per second with a little timing jitter; each click a
    0.5-3 ms exponentially decaying broadband noise transient."""
    rate = np.exp(rng.uniform(np.log(5.0), np.log(100.0)))
    n = max(_duration(rng, 0.2, 0.5), min(N_SAMPLES, int(2.2 * FS / rate)))  # two clicks at least
    period = FS / rate
    onsets = np.arange(0.0, n - 1, period) + rng.uniform(-0.05, 0.05, int(np.ceil((n - 1) / period))) * period
    onsets = np.clip(np.round(onsets).astype(int), 0, n - 1)
    click_len = int(rng.uniform(0.0005, 0.003) * FS) + 1
    x = np.zeros(n)
    for start in onsets:
        click = rng.standard_normal(click_len) * np.exp(-np.arange(click_len) / (click_len / 4))
        seg = x[start : start + click_len]
        seg += click[: seg.size]
    return _finish(rng, x)


def impact(rng: np.random.Generator) -> np.ndarray:
    """Struck object: 3-8 damped sinusoids (modes at 150 Hz-6 kHz, T60 30-500 ms, higher
    modes dying faster) started by a 1-8 ms noise transient."""
    n_modes = int(rng.integers(3, 9))
    freqs = np.exp(rng.uniform(np.log(150.0), np.log(6000.0), n_modes))
    t60 = np.exp(rng.uniform(np.log(0.03), np.log(0.5), n_modes)) * (freqs / 150.0) ** -0.25
    t60 = np.clip(t60, 0.02, 0.5)
    amps = np.exp(rng.uniform(np.log(0.2), 0.0, n_modes))
    n = min(N_SAMPLES, int(t60.max() * FS))
    t = np.arange(n) / FS
    decay = np.exp(-np.log(1000.0) * t[None, :] / t60[:, None])  # -60 dB at t60
    modes = amps[:, None] * decay * np.sin(2 * np.pi * freqs[:, None] * t + rng.uniform(0, 2 * np.pi, (n_modes, 1)))
    x = modes.sum(axis=0)
    k = int(rng.uniform(0.001, 0.008) * FS)
    x[:k] += rng.uniform(0.3, 1.0) * np.abs(x).max() * rng.standard_normal(k) * np.exp(-np.arange(k) / (k / 5))
    return _finish(rng, x)


# F1-F3 (Hz) of a few vowels (adult male averages, Peterson & Barney style).
VOWEL_FORMANTS = {
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
    "ae": (660, 1720, 2410),
    "er": (490, 1350, 1690),
}


def vowel(rng: np.random.Generator) -> np.ndarray:
    """Vowel-like sound: a glottal pulse train (f0 85-280 Hz with jitter and vibrato)
    through 3-5 formant resonators, 200-500 ms."""
    n = _duration(rng, 0.2, 0.5)
    t = np.arange(n) / FS
    f0 = np.exp(rng.uniform(np.log(85.0), np.log(280.0)))
    vib_rate, vib_depth = rng.uniform(4.0, 7.0), rng.uniform(0.0, 0.03)
    f0_t = f0 * (1 + vib_depth * np.sin(2 * np.pi * vib_rate * t + rng.uniform(0, 2 * np.pi)))
    jitter = signal.lfilter([0.02], [1.0, -0.98], rng.standard_normal(n))  # slow random wander
    f0_t *= 1 + rng.uniform(0.003, 0.015) * jitter / jitter.std()
    phase = np.cumsum(f0_t) / FS + rng.random()
    pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0])).astype(float)
    # glottal source: pulses through a two-pole low-pass (-12 dB/oct) ...
    source = signal.lfilter([1.0], [1.0, -1.9, 0.9025], pulses)
    source = np.diff(source, prepend=0.0)  # ... and lip radiation (+6 dB/oct)
    name = list(VOWEL_FORMANTS)[int(rng.integers(len(VOWEL_FORMANTS)))]
    scale = rng.uniform(0.9, 1.2)  # speaker size
    formants = [f * scale * rng.uniform(0.95, 1.05) for f in VOWEL_FORMANTS[name]]
    formants += [3300.0 * scale, 3750.0 * scale][: int(rng.integers(0, 3))]
    x = source
    for i, f in enumerate(formants):
        x = _resonator(x, min(f, 0.9 * NYQUIST), bandwidth=rng.uniform(50.0, 90.0) + 20.0 * i)
    return _finish(rng, x * _ramps(rng, n, 0.01, 0.05))


KINDS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "white_noise": white_noise,
    "pink_noise": pink_noise,
    "brown_noise": brown_noise,
    "bandpass_noise": bandpass_noise,
    "harmonic": harmonic,
    "sweep": sweep,
    "am_tone": am_tone,
    "clicks": clicks,
    "impact": impact,
    "vowel": vowel,
}
SPEECH = "speech"


def synthesise(kind: str, seed: int, index: int) -> np.ndarray:
    """The N_SAMPLES float32 samples of clip `index` of kind `kind` under `seed`."""
    rng = np.random.default_rng([seed, index])
    if kind == SPEECH:
        return _speech.speak(rng, FS, N_SAMPLES, PEAK)
    try:
        generator = KINDS[kind]
    except KeyError:
        raise ClipError(f"unknown procedural sound kind {kind!r}") from None
    return generator(rng)


@register("default")
class DefaultCorpus:
    """Procedural corpus of `n_clips` clips, balanced over the kinds, reproducible from
    `seed`. speech: None includes espeak-ng speech when it is installed, True requires
    it (RuntimeError when missing), False leaves it out."""

    def __init__(self, n_clips: int = 200, seed: int = 0, speech: bool | None = None):
        if int(n_clips) < 0:
            raise ConfigError(f"n_clips must be >= 0, got {n_clips}")
        # listed whole before any is drawn: refused before the list is made
        options.budget(n_clips, SOUND_LISTING_BYTES, f"--sounds {n_clips}", "procedural sounds", most=MAX_SOUNDS)
        if int(seed) < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.n_clips, self.seed = int(n_clips), int(seed)
        if speech is None:
            speech = _speech.available()
        elif speech and not _speech.available():
            raise MissingToolError(_speech.MISSING + "; install it (e.g. apt-get install espeak-ng) or pass speech=False")
        self.speech = bool(speech)
        self.kinds = list(KINDS) + ([SPEECH] if self.speech else [])
        # Why a kind is absent: two users whose corpora differ can tell why from the manifest.
        self.missing: dict[str, str] = {} if self.speech else {
            SPEECH: "left out (speech=False)" if speech is False and _speech.available() else _speech.MISSING}

    def note(self) -> str | None:
        """A line for the user when a kind is missing, else None."""
        if not self.missing:
            return None
        why = "; ".join(f"no {k} clips: {v}" for k, v in self.missing.items())
        return f"{why}; the other {len(self.kinds)} kinds fill the {self.n_clips} sounds (recorded in the manifest)"

    def manifest_info(self) -> dict:
        """What the manifest records of this corpus: its kinds and why any is missing."""
        return {"kinds": list(self.kinds), "missing_kinds": dict(self.missing)}

    def list_clips(self) -> list[ClipRef]:
        width = max(5, len(str(self.n_clips - 1)))
        refs = []
        for i in range(self.n_clips):
            kind = self.kinds[i % len(self.kinds)]
            locator = json.dumps({"kind": kind, "index": i, "seed": self.seed}, separators=(",", ":"))
            refs.append(ClipRef(f"default/{kind}-{i:0{width}d}", self.name, locator, category=kind))
        return refs

    @staticmethod
    def load(ref: ClipRef) -> tuple[np.ndarray, int]:
        try:
            spec = json.loads(ref.locator)
            kind, seed, index = str(spec["kind"]), int(spec["seed"]), int(spec["index"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ClipError(f"bad procedural locator {ref.locator!r}: {exc}") from None
        if seed < 0 or index < 0:
            raise ClipError(f"bad procedural locator {ref.locator!r}: negative seed or index")
        return synthesise(kind, seed, index), FS
