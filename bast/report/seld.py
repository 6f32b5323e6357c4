"""The SELD part of `bast-cli report`: what a SELD run's evaluation wrote, read back (docs/seld.md).

A SELD run (`train --target seld`) has no per-sample table: its final test wrote
RUN/eval/test.json (DCASE scores overall, per class, per environment) and one DCASE CSV
per test scene under RUN/eval/seld/ref and RUN/eval/seld/pred; `bast-cli evaluate` the
same under RUN/eval/<set>/. Everything here reads those files (`read_dcase_csv`), with no
model and no torch, and scores the "predict nothing" baseline on the reference CSVs with the
same metrics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from bast.errors import DataError, MissingError
from bast.dcase.files import read_dcase2024_csv, read_dcase_csv
from bast.dcase.metrics import score_recordings
from bast.model.targets.names import on_scenes

HEADLINE = ("f20", "er20", "le_deg", "lr", "seld_score")


def csv_dirs(run_dir) -> tuple[Path, Path]:
    """(reference, prediction) CSV folders of a run's final test."""
    root = Path(run_dir) / "eval" / "seld"
    return root / "ref", root / "pred"


def edition_of(test: dict) -> str:
    """The DCASE edition a stored SELD evaluation was scored by; runs from before editions
    were recorded were all scored by 2023."""
    return str(test.get("edition", "2023"))


def check_stored_test(run_dir, test: dict) -> None:
    """A SELD run's stored test must hold finite scores over some scenes and its CSVs (in
    DCASE 2024, the DOA error may be undefined: no prediction paired with an event)."""
    optional = ("le_deg",) if edition_of(test) != "2023" else ()
    bad = [k for k in HEADLINE if k not in optional
           and (not isinstance(test.get(k), (int, float)) or not np.isfinite(test[k]))]
    if not test.get("n") or bad:
        raise DataError(f"{run_dir}: eval/test.json holds no usable SELD test ({', '.join(bad) or 'no scenes'}); "
                        "its training did not end with a test evaluation (bast-cli train writes it)")
    ref, pred = csv_dirs(run_dir)
    if not ref.is_dir() or not pred.is_dir():
        raise MissingError(f"{run_dir}: no eval/seld/ref and eval/seld/pred (the DCASE CSVs of its test scenes); "
                           "run `bast-cli evaluate` or train it again")


def scene_rows(run_dir, limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(scene name, reference rows, predicted rows) of a run's test scenes, by name; the
    first `limit` when given. A reference without a prediction file is an error naming it."""
    ref_dir, pred_dir = csv_dirs(run_dir)
    names = sorted(p.stem for p in ref_dir.glob("*.csv"))[:limit]
    return [(n, read_dcase_csv(ref_dir / f"{n}.csv"), read_dcase_csv(pred_dir / f"{n}.csv")) for n in names]


def reference_key(run_dir) -> str:
    """What a run's reference CSVs hold (names and bytes), so runs tested on the same scenes
    share one "predict nothing" row."""
    h = hashlib.sha256()
    for p in sorted(csv_dirs(run_dir)[0].glob("*.csv")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def predict_nothing(run_dir, n_classes: int, edition: str = "2023") -> dict:
    """The DCASE scores of a system that detects nothing, on a run's test scenes: its
    reference CSVs against empty predictions, by the run's `edition` (2023: F 0, ER 1,
    LR 0, LE 180 by the metrics' rules; 2024: F 0, ER 1, LR 0, the DOA and distance
    errors undefined; computed, not assumed)."""
    ref_dir, _ = csv_dirs(run_dir)
    if edition == "2023":
        refs = [ref for _, ref, _ in scene_rows(run_dir)]
    else:
        refs = [read_dcase2024_csv(p) for p in sorted(ref_dir.glob("*.csv"))]
    pairs = [(ref, np.zeros((0, ref.shape[1]))) for ref in refs]
    if not pairs:
        raise DataError(f"{run_dir}: no reference CSVs in eval/seld/ref")
    s = score_recordings(pairs, n_classes, edition=edition)
    out = {"n": len(pairs), "edition": edition, "f20": s.f, "er20": s.er,
           "le_deg": s.le if edition == "2023" else s.doa_error, "lr": s.lr, "seld_score": s.seld}
    return out if edition == "2023" else {**out, "rde": s.relative_distance_error}


def stored_sets(run_dir) -> dict[str, dict]:
    """The SELD evaluations of a run on other data (`bast-cli evaluate`), from eval/index.json."""
    path = Path(run_dir) / "eval" / "index.json"
    try:
        sets = json.loads(path.read_text()).get("sets", {}) if path.exists() else {}
    except ValueError:
        return {}
    return {k: v for k, v in sets.items() if isinstance(v, dict) and on_scenes(v)}
