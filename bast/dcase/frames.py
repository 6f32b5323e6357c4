"""Frame-wise SELD counting with distance, shared by the DCASE 2024 and 2025 editions
(bast/dcase/dcase2024.py, dcase2025.py; docs/seld.md).

From 2024 on, DCASE scores every 100 ms frame on its own (no 1 s segments): in each frame,
per class, the reference and predicted events are paired by the Hungarian algorithm on
their angular distance; a pair is a true positive when its angle is within the DOA
threshold and its relative distance error |d_pred - d_ref| / d_ref is at most the distance
threshold (and, with `require_onscreen`, the on-screen flags agree), else a spatial false
positive; unpaired predictions are false positives, unpaired references false negatives.
Every pair, hit or not, adds its angle, distance and relative distance errors to the
class-dependent localization errors. This is `SELDMetrics.update_seld_scores` of the 2024
and 2025 baselines (partha2409/DCASE2024_seld_baseline SELD_evaluation_metrics.py,
partha2409/DCASE2025_seld_baseline metrics.py, MIT licence), which differ only in how a
pair's angle is measured and how the rows of a frame become tracks; each edition's module
gives those two. Pure numpy and scipy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from bast.errors import ConfigError, DataError

# The reference divides by (eps + ...) everywhere; the same eps keeps results bit-close.
EPS = np.finfo(np.float64).eps


class ClassCounts:
    """Counts that add up over recordings: per-class arrays (`_PER_CLASS`, zeros when not
    given) and whole-set totals (`_TOTALS`); the base of each edition's counts dataclass."""

    _PER_CLASS: tuple = ()
    _TOTALS = ("substitutions", "deletions", "insertions", "recordings")

    def __post_init__(self):
        for name in self._PER_CLASS:
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.n_classes))

    def __add__(self, other):
        if other.n_classes != self.n_classes:
            raise ConfigError(f"counts of {self.n_classes} and {other.n_classes} classes cannot be added")
        out = type(self)(self.n_classes, **{n: getattr(self, n) + getattr(other, n) for n in self._PER_CLASS})
        for name in self._TOTALS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out


@dataclass
class FrameCounts(ClassCounts):
    """Counts summed over frames and recordings, per class: true positives, false positives
    (extra predictions), spatial false positives (paired, but beyond a threshold), false
    negatives, reference events, the pairs' summed angle, distance, relative distance
    errors and agreeing on-screen flags, and the pairs (`de_tp`) and unpaired events; and
    substitutions, deletions and insertions over all classes. Distances are in the
    edition's reference unit (2024: m, 2025: cm)."""

    n_classes: int
    tp: np.ndarray = field(default=None)
    fp: np.ndarray = field(default=None)
    fp_spatial: np.ndarray = field(default=None)
    fn: np.ndarray = field(default=None)
    n_ref: np.ndarray = field(default=None)
    total_doa: np.ndarray = field(default=None)
    total_dist: np.ndarray = field(default=None)
    total_reldist: np.ndarray = field(default=None)
    total_onscreen: np.ndarray = field(default=None)
    de_tp: np.ndarray = field(default=None)
    de_fp: np.ndarray = field(default=None)
    de_fn: np.ndarray = field(default=None)
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    recordings: int = 0

    _PER_CLASS = ("tp", "fp", "fp_spatial", "fn", "n_ref", "total_doa", "total_dist", "total_reldist",
                  "total_onscreen", "de_tp", "de_fp", "de_fn")


@dataclass(frozen=True)
class Rules:
    """How an edition scores a frame: `angles(ref, pred)` the (len ref, len pred) matrix of
    angular errors in degrees between value rows; the column of the distance and of the
    on-screen flag (None: none) in a value row; the thresholds of a true positive."""

    angles: Callable[[np.ndarray, np.ndarray], np.ndarray]
    distance_col: int
    onscreen_col: int | None
    doa_threshold: float
    reldist_threshold: float
    dist_threshold: float = np.inf
    require_onscreen: bool = False


def check_classes(rows: np.ndarray, n_classes: int, name: str) -> None:
    """Frame and class indices a recording's rows may hold."""
    if len(rows) and (rows[:, 0].min() < 0 or rows[:, 1].min() < 0):
        raise DataError(f"a {name} row has a negative frame or class index")
    if len(rows) and rows[:, 1].max() >= n_classes:
        raise DataError(f"a {name} row has class {int(rows[:, 1].max())}, but there are {n_classes} classes "
                        f"(0..{n_classes - 1})")


def count_frames(gt: dict, pred: dict, n_frames: int, n_classes: int, rules: Rules) -> FrameCounts:
    """`update_seld_scores` over frames 0..n_frames-1 of one recording. `gt` and `pred`:
    {frame: {class: (k, v) value rows in track order}} (the edition's `organize`)."""
    c = FrameCounts(n_classes, recordings=1)
    for frame in sorted(f for f in set(gt) | set(pred) if f < n_frames):
        g, p = gt.get(frame, {}), pred.get(frame, {})
        loc_fn = loc_fp = 0
        for k in sorted(set(g) | set(p)):  # a class in neither counts nothing
            if k in g:
                c.n_ref[k] += len(g[k])
            if k in g and k in p:
                fp, fn = _count_pairs(c, k, g[k], p[k], rules)
                loc_fp += fp
                loc_fn += fn
            elif k in g:
                loc_fn += len(g[k])
                c.fn[k] += len(g[k])
                c.de_fn[k] += len(g[k])
            elif k in p:
                loc_fp += len(p[k])
                c.fp[k] += len(p[k])
                c.de_fp[k] += len(p[k])
        c.substitutions += min(loc_fp, loc_fn)
        c.deletions += max(0, loc_fn - loc_fp)
        c.insertions += max(0, loc_fp - loc_fn)
    return c


def _count_pairs(c: FrameCounts, k: int, g: np.ndarray, p: np.ndarray, rules: Rules) -> tuple[int, int]:
    """One class in one frame that both hold: the Hungarian pairing on the angles, the
    pairs' errors and the counts; (false positives, false negatives) for S, D and I."""
    cost = rules.angles(g, p)
    rows, cols = linear_sum_assignment(cost)
    doa_err = cost[rows, cols]
    d = rules.distance_col
    dist_err = np.abs(g[rows, d] - p[cols, d])
    rel_err = dist_err / (g[rows, d] + EPS)
    if rules.onscreen_col is None:
        onscreen_ok = np.zeros(len(rows), dtype=bool)
    else:
        onscreen_ok = g[rows, rules.onscreen_col] == p[cols, rules.onscreen_col]
    wrong = ((doa_err > rules.doa_threshold) | (dist_err > rules.dist_threshold)
             | (rel_err > rules.reldist_threshold) | (~onscreen_ok & rules.require_onscreen))
    n_wrong, pairs = int(wrong.sum()), len(rows)
    extra, missed = max(0, len(p) - len(g)), max(0, len(g) - len(p))
    c.total_doa[k] += doa_err.sum()
    c.total_dist[k] += dist_err.sum()
    c.total_reldist[k] += rel_err.sum()
    c.total_onscreen[k] += onscreen_ok.sum()
    c.tp[k] += pairs - n_wrong
    c.de_tp[k] += pairs
    c.fp[k] += extra
    c.de_fp[k] += extra
    c.fp_spatial[k] += n_wrong
    c.fn[k] += missed
    c.de_fn[k] += missed
    return extra + n_wrong, missed


def nanmean(values) -> float:
    """The mean of the finite values; NaN (no warning) when there are none."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def per_pair(total: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """A class-dependent error: the class's summed error over its pairs (eps added, as the
    reference divides), NaN for a class without any pair."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / (pairs + EPS)
    return np.where(pairs == 0, np.nan, out)


def pooled(total: np.ndarray, pairs: np.ndarray) -> float:
    """The micro average of an error: summed over classes, NaN without any pair."""
    return float(total.sum() / float(pairs.sum() + EPS)) if pairs.sum() else float("nan")


def f_scores(c: FrameCounts, average: str) -> tuple[float, np.ndarray]:
    """The location-aware F-score, overall and per class (macro; per class as well under micro)."""
    class_f = c.tp / (EPS + c.tp + c.fp_spatial + 0.5 * (c.fp + c.fn))
    if average == "macro":
        return float(class_f.mean()), class_f
    if average == "micro":
        return float(c.tp.sum() / (EPS + c.tp.sum() + c.fp_spatial.sum() + 0.5 * (c.fp.sum() + c.fn.sum()))), class_f
    raise ConfigError(f"average must be 'macro' or 'micro', not {average!r}")


# Why a figure of the frame-wise editions has no value (null in JSON, with this beside it).
NO_PAIR_NOTE = "undefined: no prediction was paired with a reference event of its class in any frame"
FRAME_NOTES = {
    "doa_error_deg": NO_PAIR_NOTE, "distance_error_m": NO_PAIR_NOTE, "relative_distance_error": NO_PAIR_NOTE,
    "onscreen_accuracy": NO_PAIR_NOTE,
    "error_rate": "undefined: the reference holds no events to score, and the error rate divides by their number",
}


@dataclass(frozen=True)
class FrameScores:
    """The scores of a frame-wise edition: the location-aware F-score (fraction), the
    class-dependent DOA error (degrees), distance error (metres) and relative distance
    error, overall (`average`) and per class (`per_class`: name -> array); the 2024
    edition's error rate, localization recall and SELD score, the 2025 edition's on-screen
    accuracy (None where the edition has none); a figure without any pair to compute it
    from is NaN (null in JSON)."""

    edition: str
    average: str
    f: float
    doa_error: float
    distance_error_m: float
    relative_distance_error: float
    per_class: dict
    counts: FrameCounts
    thresholds: dict
    er: float | None = None
    lr: float | None = None
    seld: float | None = None
    onscreen_accuracy: float | None = None

    @property
    def note(self) -> str | None:
        """Why the scores are not what they seem: nothing to score, or nothing paired."""
        if not self.counts.n_ref.sum():
            return "the reference holds no events to score: F 0 and the localization errors undefined"
        if not self.counts.de_tp.sum():
            return "no prediction was paired with a reference event: the localization errors are undefined"
        return None

    def plain(self) -> dict:
        """The overall figures under plain names (None where the edition has none)."""
        return {"f_score": self.f, "doa_error_deg": self.doa_error, "distance_error_m": self.distance_error_m,
                "relative_distance_error": self.relative_distance_error, "error_rate": self.er,
                "localization_recall": self.lr, "seld_score": self.seld, "onscreen_accuracy": self.onscreen_accuracy}

    def to_dict(self) -> dict:
        c = self.counts
        classes = [{"class": k, **{name: float(v[k]) for name, v in self.per_class.items()},
                    "reference_events": int(c.n_ref[k]), "TP": int(c.tp[k]), "FP": int(c.fp[k] + c.fp_spatial[k]),
                    "FP_spatial": int(c.fp_spatial[k]), "FN": int(c.fn[k])} for k in range(c.n_classes)]
        return {"edition": self.edition, **({"note": self.note} if self.note else {}), "average": self.average,
                **{k: v for k, v in self.plain().items() if v is not None},
                "classes": classes, **self.thresholds,
                "substitutions": int(c.substitutions), "deletions": int(c.deletions), "insertions": int(c.insertions),
                "recordings": int(c.recordings)}
