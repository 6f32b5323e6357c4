"""What a target's name says without building it, torch-free: whether the target works on
whole scenes (`bast-cli scenes`) or on single-source clips (`bast-cli spatialize`).

A target declares it (`Target.scenes`, bast/model/targets/core.py); registering a target
records its name here, so that the places which hold only a run's config.json or a
metrics file (the report, the CLI, a stored evaluation) make the clip-or-scene choice
with the same answer and without importing torch. The built-in scene targets are listed
below so that the answer holds before core.py is imported.
"""

from __future__ import annotations

DEFAULT = "azimuth"  # a run's config.json without a "target": the paper's
_SCENE_TARGETS: set[str] = {"seld", "seld-distance"}


# Why a figure of a test or an evaluation is undefined, written beside it as "<key>_note"
# where it is null (strict JSON: never NaN; bast.fileio.strict).
METRIC_NOTES = {
    "ad_deg": "no test samples", "median_ad_deg": "no test samples", "mse": "no test samples",
    "front_back_rate": "no test sample off the interaural axis (truths at 90 or 270 deg only)",
    "quadrant_error_pct": "no response within 30 deg of the median plane",
    "accuracy": "no test samples", "chance_accuracy": "no classes", "macro_f1": "no class occurs",
    "loss": "no windows scored",
    # SELD (bast/dcase/metrics.py SELD_NOTES): test scenes without any event
    "er20": "undefined: the test scenes hold no events, and the error rate divides by their number",
    "seld_score": "undefined: the test scenes hold no events, and the error rate divides by their number",
    # SELD with distance, scored by DCASE 2024 (bast/dcase/frames.py NO_PAIR_NOTE, the same words:
    # not imported, so that this module stays light): the localization errors without pairs
    "le_deg": "undefined: no prediction was paired with a reference event of its class in any frame",
    "rde": "undefined: no prediction was paired with a reference event of its class in any frame",
    "distance_error_m": "undefined: no prediction was paired with a reference event of its class in any frame",
    "RDE": "undefined: no prediction was paired with a reference event of its class in any frame",
}


def declare(name: str, scenes: bool) -> None:
    """Record whether the target `name` works on scenes (`register` in core.py calls it)."""
    if scenes:
        _SCENE_TARGETS.add(name)
    else:
        _SCENE_TARGETS.discard(name)


def on_scenes(target) -> bool:
    """Whether a target learns from and is scored on whole scenes (windows cut from them,
    DCASE scores) rather than clips (a per-sample table). `target`: its name, or a dict
    that names it under "target" (a run's config.json, eval/test.json, an evaluation's
    metrics.json); no name is the default target, a clip target."""
    name = target.get("target") if isinstance(target, dict) else target
    return (name or DEFAULT) in _SCENE_TARGETS
