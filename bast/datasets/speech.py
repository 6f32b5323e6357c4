"""Synthetic speech for the default corpus, from the espeak-ng speech synthesiser.

Speech is the sound people most often want to localise, and no procedural generator
matches its mix of voiced harmonics, noisy fricatives and fast onsets. espeak-ng is small,
free and deterministic, so it can speak a word or short phrase picked by the clip's random
generator, in one of a few languages and voice variants, at a random speed and pitch,
without any download beyond the program itself. It is optional: the default corpus
includes the ``speech`` kind only where `available()`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from bast.datasets.base import ClipError

EXECUTABLE = "espeak-ng"
MISSING = "espeak-ng is not installed (not found on PATH), so speech clips cannot be synthesised"

# voice -> words and short phrases in its language
PHRASES: dict[str, tuple[str, ...]] = {
    "en": (
        "hello", "over here", "watch out", "where are you", "seven", "thank you",
        "left", "right", "behind you", "good morning", "listen", "yes", "no",
        "wait for me", "come in", "the quick brown fox", "nine", "twenty two",
        "excuse me", "stop", "turn around", "it is raining", "coffee", "microphone",
    ),
    "en-us": (
        "hey there", "what time is it", "okay", "thirty", "follow me", "help",
        "let's go", "hurry up", "see you later", "over there", "one two three",
        "sound check", "that's right", "hi", "welcome back", "good night",
    ),
    "de": (
        "hallo", "guten Tag", "achtung", "wo bist du", "danke schön", "links",
        "rechts", "sieben", "hier drüben", "bis später", "ja", "nein", "komm her",
    ),
    "fr": (
        "bonjour", "attention", "où es-tu", "merci beaucoup", "à gauche",
        "à droite", "sept", "par ici", "à bientôt", "oui", "non", "viens ici",
    ),
    "es": (
        "hola", "cuidado", "dónde estás", "muchas gracias", "izquierda",
        "derecha", "siete", "aquí", "hasta luego", "sí", "no", "ven aquí",
    ),
}
# espeak-ng voice variants: default male, then some male and female timbres
VARIANTS = ("", "+m3", "+m7", "+f2", "+f3", "+f4")


def available() -> bool:
    """Whether espeak-ng can be run here."""
    return shutil.which(EXECUTABLE) is not None


def _espeak(text: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Run espeak-ng into a temporary WAV file and read it back as float64 mono."""
    exe = shutil.which(EXECUTABLE)
    if exe is None:
        raise ClipError(MISSING)
    with tempfile.TemporaryDirectory(prefix="bast-espeak-") as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), "--", text]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClipError(f"espeak-ng failed: {exc}") from None
        if proc.returncode != 0 or not wav.exists():
            raise ClipError(f"espeak-ng failed (exit {proc.returncode}): {proc.stderr.strip()[:200]}")
        audio, sr = sf.read(str(wav), dtype="float64", always_2d=True)
    return audio.mean(axis=1), int(sr)


def speak(rng: np.random.Generator, fs: int, n_samples: int, peak: float) -> np.ndarray:
    """A spoken word or phrase chosen by `rng`: resampled to `fs`, cut to its loudest
    `n_samples` (or padded with silence at a random offset), peak-normalised to `peak`."""
    voices = list(PHRASES)
    voice = voices[int(rng.integers(len(voices)))]
    text = PHRASES[voice][int(rng.integers(len(PHRASES[voice])))]
    variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
    speed = int(rng.integers(120, 221))  # words per minute (espeak-ng default 175)
    pitch = int(rng.integers(20, 81))  # 0-99 (default 50)
    offset_u = rng.random()  # where a short utterance goes in the clip

    audio, sr = _espeak(text, voice + variant, speed, pitch)
    if sr != fs:
        g = gcd(fs, sr)
        audio = resample_poly(audio, fs // g, sr // g)
    if audio.size > n_samples:  # the loudest window of n_samples
        energy = np.concatenate([[0.0], np.cumsum(audio**2)])
        start = int(np.argmax(energy[n_samples:] - energy[:-n_samples]))
        audio = audio[start : start + n_samples]
    out = np.zeros(n_samples)
    start = int(offset_u * (n_samples - audio.size + 1))
    out[start : start + audio.size] = audio
    top = np.max(np.abs(out)) if out.size else 0.0
    if not np.isfinite(top) or top <= 1e-6:
        raise ClipError(f"espeak-ng produced silence for {text!r} ({voice}{variant})")
    return (out * (peak / top)).astype(np.float32)
