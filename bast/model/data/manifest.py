"""What a Stage 2 folder is: its manifest, what it holds (a checksum of its parameters and
shards), the spectrogram parameters that decide what a model sees, and whether it holds
clips or scenes. Training, evaluation and inference all read these facts; they live here,
below all three, so that none reaches into another for them."""

from __future__ import annotations

import hashlib
import json

from bast.conventions import SPEC_SHAPE
from bast.errors import DataError
from bast.pipeline.stage.shards import read_manifest


def features_manifest(features_dir) -> dict:
    """The manifest of a Stage 2 directory; errors name the folder and what it should be."""
    return read_manifest(features_dir, "featurize", "evaluation")


def data_sha256(manifest: dict) -> str:
    """What a Stage 2 directory holds: its parameters and its shards' checksums (not the
    manifest's bytes, which change with its date when a finished stage is re-run)."""
    content = [manifest.get("params"), [(s.get("path"), s.get("sha256")) for s in manifest.get("shards", [])]]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def spectrogram_params(manifest: dict) -> dict:
    """The parameters that decide what the model sees: STFT, standardisation, shape (the
    storage dtype does not matter)."""
    params, totals = manifest.get("params", {}), manifest.get("totals", {})
    return json.loads(json.dumps({"stft": params.get("stft"),
                                  "standardize": params.get("standardize", totals.get("standardize")),
                                  "spec_shape": totals.get("spec_shape")}))


def current_spectrogram_params() -> dict:
    """What `bast-cli featurize` (and `bast-cli localize`) compute today."""
    from bast.pipeline.features.stft import STFT_PARAMS
    from bast.pipeline.features.featurize import STANDARDIZE

    return json.loads(json.dumps({"stft": STFT_PARAMS, "standardize": STANDARDIZE, "spec_shape": list(SPEC_SHAPE)}))


def window_spectrogram_params(params: dict) -> dict:
    """What decides a SELD run's input: the STFT alone. Scenes have any length (their
    spec_shape is the scene's), and the loader standardises each window as a clip is
    standardised (bast/model/data/scenes.py), which a scenes manifest does not record."""
    return {"stft": params.get("stft")}


def check_spectrogram_params(trained: dict, data: dict, data_name, run_name) -> None:
    """Refuse data featurized otherwise than the run's training data, naming the parameter."""
    diffs = [f"{key}: trained on {a!r}, this data {b!r}" for key, a, b in differences(trained, data)]
    if diffs:
        raise DataError(f"{data_name} was featurized with other spectrogram parameters than run {run_name} was "
                        f"trained on ({'; '.join(diffs)}); featurize its Stage 1 output again with this version "
                        "of bast (bast-cli featurize STAGE1 OUT)")


def is_scenes_manifest(manifest: dict) -> bool:
    """Whether a Stage 2 manifest is of featurized scenes (bast-cli scenes), not clips."""
    params = manifest.get("params", {})
    return bool(isinstance(params, dict) and params.get("scenes"))


def differences(a, b, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
    elif a != b:
        yield prefix, a, b
