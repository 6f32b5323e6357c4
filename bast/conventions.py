"""The conventions every stage shares, in one place (docs/conventions.md explains them).

Sample rate, clip length, spectrogram shape, the label hop of sound scenes, the azimuth grid,
environment names and the names of the splits. Everything else imports these; nothing here imports the rest of bast.
"""

from __future__ import annotations

import numpy as np

FS = 16000  # Hz, every clip, every stage
CLIP_SAMPLES = 8000  # 500 ms
N_FREQ = 129  # spectrogram rows per ear: nperseg 256, one-sided, 0-8000 Hz
N_FRAMES = 61  # spectrogram frames per ear: (8000 - 128) // 128
SPEC_SHAPE = (2, N_FREQ, N_FRAMES)  # (ear, frequency, frame); ear 0 is the left ear

# Sound scenes are labelled per 100 ms frame, DCASE's label resolution: the scene labels,
# the SELD targets, the DCASE CSV frames and the localized predictions all use this hop.
LABEL_HOP_S = 0.1
LABEL_SAMPLES = int(round(LABEL_HOP_S * FS))  # 1600

# SOFA (AES69) azimuths: 0 ahead, 90 left, 180 behind, 270 right; 36 directions by default.
DEFAULT_AZIMUTHS = np.arange(0.0, 360.0, 10.0)

# Environments, in the order their codes are stored in the shards (`env` = index here).
ENVIRONMENTS = ("anechoic", "hall")
# The paper's data names (RI01 anechoic, RI02 the hall, RI both) and its figure labels
# (AE, RV) are accepted wherever an environment is named.
ENV_ALIASES = {
    "anechoic": ("anechoic",), "ri01": ("anechoic",), "ae": ("anechoic",),
    "hall": ("hall",), "ri02": ("hall",), "rv": ("hall",),
    "ri": ENVIRONMENTS, "both": ENVIRONMENTS, "all": ENVIRONMENTS,
}

SPLITS = ("train", "val", "test")


def parse_environments(names) -> tuple[str, ...]:
    """Environment names (or the paper's aliases RI01/RI02/RI) to canonical names, in order."""
    from bast.errors import ConfigError

    if isinstance(names, str):
        names = [n for n in names.replace(",", " ").split() if n]
    out: list[str] = []
    for name in names:
        key = name.strip().lower()
        if key not in ENV_ALIASES:
            raise ConfigError(f"unknown environment {name!r}; choose from anechoic, hall, RI01, RI02, RI")
        out += [e for e in ENV_ALIASES[key] if e not in out]
    return tuple(out)


def canonical_env(name: str) -> str:
    """One environment's canonical name; a name that is not an alias is kept as it is."""
    key = str(name).strip()
    aliases = ENV_ALIASES.get(key.lower(), ())
    return aliases[0] if len(aliases) == 1 else key
