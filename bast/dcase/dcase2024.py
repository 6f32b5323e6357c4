"""SELD metrics as DCASE 2024 task 3 defines them (docs/seld.md, "DCASE 2024").

Frame-wise location-aware detection with distance (bast/dcase/frames.py): a prediction is
a true positive when its class is right, its direction within 20 degrees of the reference
and its relative distance error |d_pred - d_ref| / d_ref at most 1.0. Reported: the
F-score F20, the class-dependent DOA error DOAE_CD (degrees), distance error (m) and
relative distance error RDE_CD, over all frame-wise pairs with no threshold, and, as the
baseline's tool does, the error rate, localization recall and its SELD score,
mean(1 - F, DOAE / 180, RDE) (a class without any pair: the mean of what it has).
Macro-averaged over classes (DOAE and RDE over the classes that have pairs).

Every rule follows the DCASE 2024 baseline's reference implementation
(partha2409/DCASE2024_seld_baseline, SELD_evaluation_metrics.py `SELDMetrics`,
cls_feature_class.py `organize_labels`, cls_compute_seld_results.py; MIT licence) with its
parameters (lad_doa_thresh 20, lad_reldist_thresh 1.0, evaluate_distance, frame-based),
quirks included; tests/dcase/test_seld_editions.py checks them against its numbers:

- directions become unit vectors (x, y, z) and the angle between two is the arccos of
  their dot product after dividing each by sqrt(x^2 + y^2 + z^2 + 1e-10): a perfect
  direction has an error of about 8e-4 degrees, not 0;
- the rows of a class in a frame are its tracks in file order (the source column only
  names them);
- a recording is scored over as many frames as its reference's largest frame index, so
  its last reference frame and predictions past it are not scored (as in 2023); a
  reference without rows, where the tool fails, is scored over its predictions' frames.

Rows are float arrays (n, 6): frame, class, source, azimuth, elevation, distance in cm;
distances are compared in metres, as the tool converts the reference's.
"""

from __future__ import annotations

import numpy as np

from bast.dcase.frames import (
    EPS,
    FrameCounts,
    FrameScores,
    Rules,
    check_classes,
    count_frames,
    f_scores,
    nanmean,
    per_pair,
    pooled,
)

EDITION = "2024"
DOA_THRESHOLD_DEG = 20.0
REL_DISTANCE_THRESHOLD = 1.0


def cartesian(rows: np.ndarray) -> np.ndarray:
    """(n, 4) value rows x, y, z, distance in m of rows (n, 6), with the reference's
    arithmetic (`convert_output_format_polar_to_cartesian`, `cm2m`)."""
    azi = rows[:, 3] * np.pi / 180.0
    ele = rows[:, 4] * np.pi / 180.0
    c = np.cos(ele)
    return np.stack([np.cos(azi) * c, np.sin(azi) * c, np.sin(ele), rows[:, 5] / 100.0], axis=1)


def angles(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Angles in degrees between value rows, as `distance_between_cartesian_coordinates`."""
    x1, y1, z1 = (g[:, None, i] for i in range(3))
    x2, y2, z2 = (p[None, :, i] for i in range(3))
    n1 = np.sqrt(x1 ** 2 + y1 ** 2 + z1 ** 2 + 1e-10)
    n2 = np.sqrt(x2 ** 2 + y2 ** 2 + z2 ** 2 + 1e-10)
    x1, y1, z1, x2, y2, z2 = x1 / n1, y1 / n1, z1 / n1, x2 / n2, y2 / n2, z2 / n2
    dot = np.clip(x1 * x2 + y1 * y2 + z1 * z2, -1, 1)
    return np.arccos(dot) * 180 / np.pi


def organize(rows: np.ndarray, n_frames: int) -> dict:
    """{frame: {class: (k, 4) value rows}} of frames below `n_frames`, file order within a
    class (`organize_labels`: a repeated source takes a new track after the others)."""
    values = cartesian(rows)
    out: dict[int, dict[int, list]] = {}
    for row, v in zip(rows, values):
        if row[0] < n_frames:
            out.setdefault(int(row[0]), {}).setdefault(int(row[1]), []).append(v)
    return {f: {k: np.array(v) for k, v in per.items()} for f, per in out.items()}


def scored_frames(ref: np.ndarray, pred: np.ndarray) -> int:
    """The frames a recording is scored over: the reference's largest frame index (the
    tool's `max(gt_dict.keys())`); without reference rows (the tool fails) the
    predictions' frames."""
    if len(ref):
        return int(ref[:, 0].max())
    return int(pred[:, 0].max()) + 1 if len(pred) else 0


def count_recording(ref_rows, pred_rows, n_classes: int, *, n_frames: int | None = None,
                    doa_threshold: float = DOA_THRESHOLD_DEG,
                    reldist_threshold: float = REL_DISTANCE_THRESHOLD) -> FrameCounts:
    """Counts of one recording's predicted rows against its reference rows (both (n, 6))."""
    ref = np.asarray(ref_rows, dtype=np.float64).reshape(-1, 6)
    pred = np.asarray(pred_rows, dtype=np.float64).reshape(-1, 6)
    check_classes(ref, n_classes, "reference")
    check_classes(pred, n_classes, "prediction")
    if n_frames is None:
        n_frames = scored_frames(ref, pred)
    rules = Rules(angles, distance_col=3, onscreen_col=None, doa_threshold=doa_threshold,
                  reldist_threshold=reldist_threshold)
    return count_frames(organize(ref, n_frames), organize(pred, n_frames), n_frames, n_classes, rules)


def seld_score(f, doa_error, rde) -> float:
    """The 2024 tool's SELD score (its `early_stopping_metric` with distance): the mean of
    1 - F, DOAE / 180 and RDE over those that are defined."""
    return nanmean([1 - f, doa_error / 180, rde])


def scores(c: FrameCounts, average: str = "macro", *, doa_threshold: float = DOA_THRESHOLD_DEG,
           reldist_threshold: float = REL_DISTANCE_THRESHOLD) -> FrameScores:
    """The metrics of accumulated counts (`SELDMetrics.compute_seld_scores`, eval_dist).
    A class without any pair has no DOA or distance error (NaN): the macro averages are
    over the classes that have one, its SELD score 1 - F alone."""
    f, class_f = f_scores(c, average)
    errors = c.substitutions + c.deletions + c.insertions
    # no reference events but some predicted: the tool's errors / eps is no error rate
    er = errors / (c.n_ref.sum() + EPS) if c.n_ref.sum() or not errors else float("nan")
    class_doa, class_dist = per_pair(c.total_doa, c.de_tp), per_pair(c.total_dist, c.de_tp)
    class_rde = per_pair(c.total_reldist, c.de_tp)
    class_lr = c.de_tp / (EPS + c.de_tp + c.de_fn)
    class_seld = np.array([seld_score(*v) for v in zip(class_f, class_doa, class_rde)])
    if average == "macro":
        doa, dist, rde = nanmean(class_doa), nanmean(class_dist), nanmean(class_rde)
        lr, seld = float(class_lr.mean()), float(class_seld.mean())
    else:
        doa, dist, rde = pooled(c.total_doa, c.de_tp), pooled(c.total_dist, c.de_tp), pooled(c.total_reldist, c.de_tp)
        lr = float(c.de_tp.sum() / (EPS + c.de_tp.sum() + c.de_fn.sum()))
        seld = seld_score(f, doa, rde)
    per_class = {"f_score": class_f, "doa_error_deg": class_doa, "distance_error_m": class_dist,
                 "relative_distance_error": class_rde, "localization_recall": class_lr, "seld_score": class_seld}
    return FrameScores(EDITION, average, f, doa, dist, rde, per_class, c,
                       {"doa_threshold_deg": doa_threshold, "relative_distance_threshold": reldist_threshold},
                       er=float(er), lr=lr, seld=seld)


def score_recordings(recordings, n_classes: int, *, doa_threshold: float = DOA_THRESHOLD_DEG,
                     reldist_threshold: float = REL_DISTANCE_THRESHOLD, average: str = "macro") -> FrameScores:
    """Scores of (reference rows, predicted rows[, n_frames]) of every recording, counted together."""
    total = FrameCounts(n_classes)
    for ref, pred, *n_frames in recordings:
        total = total + count_recording(ref, pred, n_classes, n_frames=n_frames[0] if n_frames else None,
                                        doa_threshold=doa_threshold, reldist_threshold=reldist_threshold)
    return scores(total, average, doa_threshold=doa_threshold, reldist_threshold=reldist_threshold)
