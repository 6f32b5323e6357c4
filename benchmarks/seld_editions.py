"""Score a seld-distance run's DCASE CSVs by the DCASE 2023, 2024 and 2025 editions at once
(docs/seld.md, "With distance: a fixed set against scenes on the fly").

    python benchmarks/seld_editions.py REF_DIR PRED_DIR --work DIR [--classes N]
                                       [--predict nothing|reference] [--distance-m D] [--json OUT]

REF_DIR/PRED_DIR: the six-column CSVs (frame, class, source, azimuth, elevation, distance in
cm) that `bast-cli evaluate` (RUN/eval/<set>/seld/{ref,pred}) or a run's test (RUN/eval/seld)
writes for a `seld-distance` run. 2024 scores them as they are; 2023 reads their first five
columns; 2025 needs its own files (a header line, no elevation), so both folders are
converted into DIR/2025/{ref,pred} with `write_dcase2025_csv`, the azimuth folded to the
front as `bast.dcase.dcase2025.fold_azimuth` folds it (as `--stereo-dcase2025` exports),
the distance in cm, every event off screen, and scored from there.

Baselines, on the same reference: `--predict nothing` scores empty predictions;
`--predict reference` predicts the reference itself (perfect detection and direction);
`--distance-m D` replaces every predicted distance by D metres (e.g. the mean training
distance), so that the RDE of a run's own detections can be set beside the RDE of a
constant distance on exactly the same pairs. Prints one line per edition; `--json` writes
them all (strict JSON: an undefined figure is null).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np

from bast.dcase.dcase2025 import fold_azimuth
from bast.dcase.files import read_dcase2024_csv, write_dcase2025_csv
from bast.dcase.metrics import pair_csv_files, score_folders, score_pairs
from bast.fileio import atomic_write_text


def _predictions(ref: np.ndarray, pred: np.ndarray, predict: str, distance_m: float | None) -> np.ndarray:
    """The prediction rows (n, 6, distance in cm) a baseline asks for."""
    rows = {"run": pred, "nothing": np.zeros((0, 6)), "reference": ref}[predict].copy()
    if distance_m is not None:
        rows[:, 5] = round(distance_m * 100)
    return rows


def dcase2025_rows(rows: np.ndarray) -> np.ndarray:
    """Six-column 2024 rows as the 2025 task's: frame, class, source, folded azimuth,
    distance (cm), on-screen 0."""
    return np.column_stack([rows[:, :3], fold_azimuth(rows[:, 3]), rows[:, 5], np.zeros(len(rows))])


def _plain(scores) -> dict:
    """The plain-named overall figures, NaN as None (strict JSON)."""
    return {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
            for k, v in scores.plain().items() if v is not None}


def distance_pairs(pairs) -> dict:
    """Whether the predicted distances follow the true ones: over every frame and class with
    exactly one reference and one predicted event (pairs no matching can get wrong), their
    number, the mean true and predicted distance (m), the predicted spread and the Pearson
    correlation of predicted and true distance (None with fewer than 3 pairs)."""
    both = []
    for ref, pred in pairs:
        for frame, cls in {(int(r[0]), int(r[1])) for r in ref}:
            g = ref[(ref[:, 0] == frame) & (ref[:, 1] == cls)]
            p = pred[(pred[:, 0] == frame) & (pred[:, 1] == cls)]
            if len(g) == 1 and len(p) == 1:
                both.append((g[0, 5] / 100, p[0, 5] / 100))
    d = np.array(both).reshape(-1, 2)
    ok = len(d) >= 3 and d[:, 1].std() > 0
    return {"n": len(d), "ref_mean_m": float(d[:, 0].mean()) if len(d) else None,
            "pred_mean_m": float(d[:, 1].mean()) if len(d) else None,
            "pred_std_m": float(d[:, 1].std()) if len(d) else None,
            "corr": float(np.corrcoef(d.T)[0, 1]) if ok else None}


def score_editions(ref_dir: Path, pred_dir: Path, work: Path, n_classes: int, predict: str = "run",
                   distance_m: float | None = None) -> dict:
    """{"2023": ..., "2024": ..., "2025": ...}: each edition's plain figures of the
    predictions (or the baseline) against the reference."""
    files = pair_csv_files(ref_dir, pred_dir)
    pairs = [(read_dcase2024_csv(r), _predictions(read_dcase2024_csv(r), read_dcase2024_csv(p), predict, distance_m))
             for r, p in files]
    out = {"2023": _plain(score_pairs([(r[:, :5], p[:, :5]) for r, p in pairs], n_classes, "2023")),
           "2024": _plain(score_pairs(pairs, n_classes, "2024"))}
    # F20 with no distance condition: how many hits the relative distance error <= 1 took away
    out["2024"]["f_score_any_distance"] = float(score_pairs(pairs, n_classes, "2024", reldist_threshold=math.inf).f)
    shutil.rmtree(work / "2025", ignore_errors=True)  # this call's files only: pairing is by name
    for sub in ("ref", "pred"):
        (work / "2025" / sub).mkdir(parents=True)
    for (ref_path, _), (ref, pred) in zip(files, pairs):
        write_dcase2025_csv(work / "2025" / "ref" / ref_path.name, dcase2025_rows(ref))
        write_dcase2025_csv(work / "2025" / "pred" / ref_path.name, dcase2025_rows(pred))
    scores, edition, _ = score_folders(work / "2025" / "ref", work / "2025" / "pred", edition="2025",
                                       n_classes=n_classes)
    out[edition] = _plain(scores)
    return {"reference": str(ref_dir), "prediction": str(pred_dir), "predict": predict, "distance_m": distance_m,
            "files": len(files), "classes": n_classes, **out, "distance_pairs": distance_pairs(pairs)}


def _line(edition: str, s: dict) -> str:
    def fmt(key, scale=1.0, spec=".3f"):
        v = s.get(key)
        return "-" if v is None else format(v * scale, spec)
    line = f"{edition}: F20 {fmt('f_score', 100, '.1f')} %, DOA {fmt('doa_error_deg', 1, '.1f')} deg"
    if edition != "2023":
        line += f", RDE {fmt('relative_distance_error')}"
    if edition == "2023":
        line += f", ER20 {fmt('error_rate')}, LR {fmt('localization_recall', 100, '.1f')} %"
    if edition != "2025":
        line += f", SELD {fmt('seld_score')}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref", type=Path)
    ap.add_argument("pred", type=Path)
    ap.add_argument("--work", type=Path, required=True, help="where the 2025 files are written")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--predict", choices=("run", "nothing", "reference"), default="run")
    ap.add_argument("--distance-m", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = score_editions(args.ref, args.pred, args.work, args.classes, args.predict, args.distance_m)
    for edition in ("2023", "2024", "2025"):
        print(_line(edition, result[edition]))
    d = result["distance_pairs"]
    print(f"distance on {d['n']} single-event pairs: correlation with the truth "
          f"{'-' if d['corr'] is None else format(d['corr'], '.3f')}, predicted mean "
          f"{'-' if d['pred_mean_m'] is None else format(d['pred_mean_m'], '.2f')} m")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    main()
