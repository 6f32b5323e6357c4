"""Feature kinds: what Stage 2 computes from binaural audio and a model reads (docs/featurize.md).

A feature kind is one declaration (a `FeatureKind`, registered by name in `FEATURE_KINDS`):

- `name`: what `bast-cli featurize --features` and `train --features` call it;
- `dataset`: the HDF5 dataset of a Stage 2 shard that holds it, (N, channels, 129, frames);
- `channels`, `title` (in words, for messages), `description` (what the values are: it goes
  into the Stage 2 manifest) and `params` (its settings, recorded beside it);
- `compute(audio, floor_db, scratch)`: binaural audio (B, 2, samples) -> (B, channels, 129,
  frames) float32 on the log power's grid (the same STFT frames), so that kinds stack as
  channels of one input; `scratch` is a dict shared by the kinds of one batch (a kind
  computed from the same STFT as another may leave the other's result there);
- `dtype`: how the shard stores it (None: the stage's `--dtype`, as the log power);
- how a model reads it: `standardize` (per sample over all its channels jointly, mean 0 and
  std 1, as the log power) or as it is (values already of order 1, as the phase's cos and
  sin), `frame_average` (a model may average it over the frames: per-frame values are noisy),
  and which channels each ear's stream of BAST sees: `left` and `right`, (channel, sign)
  pairs (the phase: both ears see its cos, the right ear its sine negated, so that a
  left-right mirror of the scene is a swap of the ears).

Built in: `logpower` (always first: the 2 x 129 x 61 Tukey log power of the paper, dataset
`spec`) and `phase` (cos and sin of the interaural phase, dataset `phase`). The Stage 2
manifest lists the kinds it holds (`features`); training records the kinds a run reads and
evaluate, transfer and localize check and compute them from here.

Adding a kind: build a `FeatureKind` in any module and pass it to `register` before the
data is featurized (and, in a run that reads it, before the run is trained or loaded). No
torch here: Stage 2 workers import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from bast.conventions import N_FREQ
from bast.errors import ConfigError, DataError
from bast.pipeline.features.stft import n_frames, spectrogram_and_phase, spectrogram_db

DEFAULT = ("logpower",)


@dataclass(frozen=True)
class FeatureKind:
    name: str
    dataset: str
    channels: int
    compute: Callable[[np.ndarray, float, dict], np.ndarray]
    title: str = ""
    description: str = ""
    params: dict = field(default_factory=dict, hash=False, compare=False)
    dtype: str | None = None
    standardize: bool = False
    frame_average: bool = False
    left: tuple = ()  # ((channel, sign), ...) that BAST's left-ear stream sees
    right: tuple = ()

    def shape(self, samples: int) -> list[int]:
        """One sample's array in a shard, for clips of `samples` samples."""
        return [self.channels, N_FREQ, n_frames(samples)]

    def record(self, samples: int, dtype: str) -> dict:
        """The manifest's entry for this kind."""
        return {"name": self.name, "dataset": self.dataset, "channels": self.channels, "shape": self.shape(samples),
                "dtype": self.dtype or dtype, "description": self.description, "params": dict(self.params)}


FEATURE_KINDS: dict[str, FeatureKind] = {}


def register(kind: FeatureKind) -> FeatureKind:
    """Make `kind` available by its name; its channels must be mapped to the ears."""
    if not kind.name or "," in kind.name:
        raise ConfigError(f"a feature kind needs a name without commas, not {kind.name!r}")
    if kind.channels < 1 or not kind.left or not kind.right:
        raise ConfigError(f"feature kind {kind.name!r}: declare its channels and what each ear sees (left, right)")
    taken = {k.dataset: k.name for k in FEATURE_KINDS.values() if k.name != kind.name}
    if kind.dataset in taken or kind.dataset in RESERVED:
        raise ConfigError(f"feature kind {kind.name!r}: dataset {kind.dataset!r} is taken")
    FEATURE_KINDS[kind.name] = kind
    return kind


def get(name: str) -> FeatureKind:
    if name not in FEATURE_KINDS:
        raise ConfigError(f"unknown feature kind {name!r}; choose from {', '.join(FEATURE_KINDS)}")
    return FEATURE_KINDS[name]


def kinds(names) -> tuple[FeatureKind, ...]:
    return tuple(get(n) for n in names)


def parse(text: str | None, phase: bool = False) -> tuple[str, ...]:
    """Names from `--features a,b` (None: the default) and `--phase` (adds phase); the log
    power is always first (every model's standardised channels), no name twice."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()] or list(DEFAULT)
    if phase and "phase" not in names:
        names.append("phase")
    return normalize(names)


def normalize(names) -> tuple[str, ...]:
    names = [str(n) for n in names]
    for n in names:
        get(n)
    if len(set(names)) != len(names):
        raise ConfigError(f"--features {','.join(names)}: a kind is named twice")
    if "logpower" in names:
        names.remove("logpower")
    return ("logpower", *names)


def model_features(features, phase: bool) -> tuple[str, ...]:
    """The kinds a model config reads: its `features` (the log power when empty), and the
    phase when `phase` is set (`--phase`, and configs of before feature kinds)."""
    names = list(features or DEFAULT)
    if phase and "phase" not in names:
        names.append("phase")
    return normalize(names)


def channels(names) -> int:
    """Input channels of a model that reads the kinds `names`."""
    return sum(k.channels for k in kinds(names))


def ear_channels(names) -> int:
    """Channels each ear's stream of BAST sees."""
    return sum(len(k.left) for k in kinds(names))


def manifest_features(manifest: dict) -> tuple[str, ...]:
    """The kinds a Stage 2 output holds: its manifest's `features`, or (older outputs) the
    log power and, when its parameters record one, the phase."""
    listed = manifest.get("features")
    if listed:
        return tuple(str(k["name"]) for k in listed)
    return ("logpower", "phase") if manifest.get("params", {}).get("phase") else DEFAULT


def require(manifest: dict, names, where, reader: str = "this model") -> None:
    """A DataError naming the first kind in `names` that the Stage 2 output (its manifest)
    lacks and the featurize option that adds it."""
    held = manifest_features(manifest)
    for name in names:
        if name not in held:
            kind = FEATURE_KINDS.get(name)
            stage1 = manifest.get("params", {}).get("stage1", "STAGE1")
            wanted = ",".join(dict.fromkeys([*held, *names]))
            raise DataError(f"{where} holds no {kind.title if kind else name} (feature kind {name!r}), which "
                            f"{reader} reads; it holds {', '.join(held)}. Featurize with it: "
                            f"bast-cli featurize {stage1} OUT --features {wanted}")


def manifest_entry(names, samples: int, dtype: str) -> dict:
    """The Stage 2 manifest's `features`: every kind held, with its dataset, shape and
    parameters; nothing for the log power alone, which is what a manifest without the key
    holds (`manifest_features`), so that such outputs stay what they were before kinds."""
    if tuple(names) == DEFAULT:
        return {}
    return {"features": [get(n).record(samples, dtype) for n in names]}


def compute(names, audio, floor_db: float) -> dict[str, np.ndarray]:
    """Every kind of `names` for binaural audio (B, 2, samples): {name: (B, C, 129, frames)}.
    The log power is computed last, so that a kind from the same STFT can hand it over."""
    audio = np.asarray(audio)
    if audio.ndim != 3 or audio.shape[1] != 2:
        raise DataError(f"binaural audio must be (batch, 2, samples), got {audio.shape}")
    scratch: dict = {}
    order = sorted(names, key=lambda n: n == "logpower")
    return {n: get(n).compute(audio, floor_db, scratch) for n in order}


def stacked(names, audio, floor_db: float) -> np.ndarray:
    """The kinds `names` of audio (B, 2, samples) as one array (B, channels, 129, frames),
    float32, channels in the order of `names` (what a shard reader stacks)."""
    parts = compute(names, audio, floor_db)
    return np.concatenate([parts[n] for n in names], axis=1)


# ----------------------------------------------------------------------------- built in
def _logpower(audio, floor_db, scratch):
    if "logpower" in scratch:  # computed with the phase, from the same STFT
        return scratch.pop("logpower")
    return spectrogram_db(audio, floor_db)


def _phase(audio, floor_db, scratch):
    db, phase = spectrogram_and_phase(audio, floor_db)
    scratch["logpower"] = db
    return phase


# Names no kind may use as its dataset: the labels and tracks of a shard.
RESERVED = {"audio", "azimuth_deg", "elevation_deg", "env", "clip_id", "split", "category", "head", "room",
            "snr_db"}

LOGPOWER = register(FeatureKind(
    name="logpower", dataset="spec", channels=2, compute=_logpower, title="log power",
    description="spec (N, 2, 129, frames): Tukey log-power spectrogram of each ear in dB (docs/conventions.md)",
    standardize=True, left=((0, 1),), right=((1, 1),)))

PHASE_DESCRIPTION = ("phase (N, 2, 129, frames) float16: cos and sin of the angle of X_left * conj(X_right) per "
                     "bin and frame, from the same STFT; 0 where either ear's bin is at the floor")
PHASE = register(FeatureKind(
    name="phase", dataset="phase", channels=2, compute=_phase, title="interaural phase",
    description=PHASE_DESCRIPTION, dtype="float16",  # cos and sin in [-1, 1]: float16 keeps them to 5e-4
    frame_average=True, left=((0, 1), (1, 1)), right=((0, 1), (1, -1))))
