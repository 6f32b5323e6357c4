"""SELD metrics as DCASE 2023 task 3 defines them (docs/seld.md); the files they read are
bast/dcase/files.py's.

Joint detection and localization on 1 s segments of ten 100 ms label frames (Mesaros et
al. 2019, with the multi-instance extension of Politis et al. 2020): the location-aware
error rate and F-score (a detection counts as true only within 20 degrees), the
class-dependent localization error and localization recall, macro-averaged over classes,
and the SELD score, the mean of ER, 1 - F, LE / 180 and 1 - LR.

Every rule follows the DCASE 2023 baseline's reference implementation
(sharathadavanne/seld-dcase2023, SELD_evaluation_metrics.py `SELDMetrics` and
cls_feature_class.py `segment_labels`, MIT licence), quirks included, so that scores equal
the challenge's; tests/dcase/test_seld_metrics.py checks them against its numbers. Pure numpy
and scipy: the CLI, the pipeline and the model's evaluation can all use it.

Rows are float arrays (n, 5): frame, class, source, azimuth_deg, elevation_deg, one per
active event per 100 ms frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from bast import options
from bast.dcase import dcase2024, dcase2025
from bast.dcase.editions import (
    READERS,
    check_edition,
    check_reference_distances,
    choose_edition,
    classes_of,
)
from bast.dcase.frames import FRAME_NOTES, ClassCounts
from bast.errors import ConfigError, DataError, MissingError

FRAMES_PER_SEGMENT = 10  # 1 s of 100 ms label frames
DOA_THRESHOLD_DEG = 20.0
# The reference divides by (eps + ...) everywhere; the same eps keeps results bit-close.
_EPS = np.finfo(np.float64).eps

# A reference without any event (docs/seld.md "Empty references"). The DCASE 2023 tool
# fails on an empty reference file (it takes the largest frame index of no rows); its
# formulas, applied to the counts, give ER = insertions / eps (about 1e15 per insertion)
# when something is predicted, and ER 0, F 0, LE 180, LR 0 (SELD 0.75) when nothing is.
# bast keeps the latter, DCASE's values, with a note; the former is no number: ER and the
# SELD score are undefined (NaN here, null in JSON, refused by `bast-cli seld-metrics`).
NO_EVENTS_NOTE = ("the reference holds no events to score: ER is 0 as nothing was predicted; F 0, LE 180 deg and "
                  "LR 0 are DCASE's values when there is nothing to detect or localize")
UNDEFINED_ER_NOTE = ("undefined: the reference holds no events to score, and the error rate divides by their "
                     "number (DCASE's formula gives insertions / 2.2e-16)")
SELD_NOTES = {"ER": UNDEFINED_ER_NOTE, "SELD": UNDEFINED_ER_NOTE, "er20": UNDEFINED_ER_NOTE,
              "seld_score": UNDEFINED_ER_NOTE, "error_rate": UNDEFINED_ER_NOTE}
NO_DISTANCE_NOTE = "not scored: DCASE 2023 scores directions only, not distances (--edition 2024 or 2025 does)"


# ----------------------------------------------------------------------------- counting


def _segments(rows: np.ndarray, n_frames: int) -> list[dict[int, dict[int, np.ndarray]]]:
    """Per 1 s segment, per class, per frame within the segment: the (azimuth, elevation)
    of its rows in file order. Frames from `n_frames` on are dropped, after rounding up
    to whole segments, as `segment_labels` does."""
    n_segments = int(np.ceil(n_frames / FRAMES_PER_SEGMENT))
    out: list[dict[int, dict[int, list]]] = [{} for _ in range(n_segments)]
    for frame, cls, _source, az, el in rows:
        segment = int(frame) // FRAMES_PER_SEGMENT
        if segment < n_segments:
            per_frame = out[segment].setdefault(int(cls), {})
            per_frame.setdefault(int(frame) % FRAMES_PER_SEGMENT, []).append((az, el))
    return [{c: {f: np.array(d) for f, d in sorted(frames.items())} for c, frames in seg.items()} for seg in out]


def _distance_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distances (len a, len b) in degrees, with the reference's formula
    (arccos of the clipped cosine) so that threshold decisions fall the same way."""
    az1, el1 = np.radians(a[:, None, 0]), np.radians(a[:, None, 1])
    az2, el2 = np.radians(b[None, :, 0]), np.radians(b[None, :, 1])
    cos = np.sin(el1) * np.sin(el2) + np.cos(el1) * np.cos(el2) * np.cos(np.abs(az1 - az2))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


@dataclass
class SeldCounts(ClassCounts):
    """What the metrics are computed from, summed over segments and recordings: per class
    true and false positives, spatial false positives (right class, over the threshold),
    false negatives, reference tracks, the localization error sum and its counts; and
    substitutions, deletions and insertions over all classes."""

    n_classes: int
    tp: np.ndarray = field(default=None)
    fp: np.ndarray = field(default=None)
    fp_spatial: np.ndarray = field(default=None)
    fn: np.ndarray = field(default=None)
    n_ref: np.ndarray = field(default=None)
    total_de: np.ndarray = field(default=None)
    de_tp: np.ndarray = field(default=None)
    de_fp: np.ndarray = field(default=None)
    de_fn: np.ndarray = field(default=None)
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    recordings: int = 0

    _PER_CLASS = ("tp", "fp", "fp_spatial", "fn", "n_ref", "total_de", "de_tp", "de_fp", "de_fn")


def reference_frames(ref_rows: np.ndarray, pred_rows: np.ndarray) -> int:
    """The number of frames a recording is scored over when its length is not given.

    As the DCASE 2023 tool: the largest frame index of the reference (not that plus one,
    so the last reference frame is dropped when its index is a multiple of ten). A
    reference without rows, where the tool fails, is scored over its predictions' frames."""
    if len(ref_rows):
        return int(ref_rows[:, 0].max())
    return int(pred_rows[:, 0].max()) + 1 if len(pred_rows) else 0


def count_recording(ref_rows, pred_rows, n_classes: int, *, n_frames: int | None = None,
                    doa_threshold: float = DOA_THRESHOLD_DEG) -> SeldCounts:
    """Counts of one recording's predicted rows against its reference rows (both (n, 5))."""
    ref = np.asarray(ref_rows, dtype=np.float64).reshape(-1, 5)
    pred = np.asarray(pred_rows, dtype=np.float64).reshape(-1, 5)
    for name, rows in (("reference", ref), ("prediction", pred)):
        if len(rows) and (rows[:, 0].min() < 0 or rows[:, 1].min() < 0):
            raise DataError(f"a {name} row has a negative frame or class index")
        if len(rows) and rows[:, 1].max() >= n_classes:
            raise DataError(f"a {name} row has class {int(rows[:, 1].max())}, but there are {n_classes} classes "
                            f"(0..{n_classes - 1})")
    if n_frames is None:
        n_frames = reference_frames(ref, pred)
    c = SeldCounts(n_classes, recordings=1)
    for gt, pr in zip(_segments(ref, n_frames), _segments(pred, n_frames)):
        _count_segment(c, gt, pr, doa_threshold)
    return c


def _count_segment(c: SeldCounts, gt: dict, pr: dict, threshold: float) -> None:
    """`SELDMetrics.update_seld_scores` for one segment; its comments are kept where the
    rule is not obvious."""
    loc_fn = loc_fp = 0
    for k in range(c.n_classes):
        # a class's "tracks" in a segment: the most same-class events in one of its frames
        n_gt = max(len(d) for d in gt[k].values()) if k in gt else 0
        n_pr = max(len(d) for d in pr[k].values()) if k in pr else 0
        c.n_ref[k] += n_gt
        if k in gt and k in pr:
            # Per frame present in both, reference and predicted directions are paired by
            # the Hungarian algorithm; a reference "track" is its row's position within
            # the frame, and its error is the mean over the frames it was paired in.
            dist: dict[int, list[float]] = {}
            for frame, gt_doas in gt[k].items():
                if frame not in pr[k]:
                    continue
                cost = _distance_deg(gt_doas, pr[k][frame])
                rows, cols = linear_sum_assignment(cost)
                for r, col in zip(rows, cols):
                    dist.setdefault(int(r), []).append(cost[r, col])
            if not dist:
                # no frame in common: the reference counts the *predicted* tracks as
                # false negatives (SELD_evaluation_metrics.py, "if no tracks are found")
                loc_fn += n_pr
                c.fn[k] += n_pr
                c.de_fn[k] += n_pr
                continue
            for errors in dist.values():
                mean = sum(errors) / len(errors)
                c.total_de[k] += mean
                c.de_tp[k] += 1
                if mean <= threshold:
                    c.tp[k] += 1
                else:
                    loc_fp += 1
                    c.fp_spatial[k] += 1
            if n_pr > n_gt:
                loc_fp += n_pr - n_gt
                c.fp[k] += n_pr - n_gt
                c.de_fp[k] += n_pr - n_gt
            elif n_pr < n_gt:
                loc_fn += n_gt - n_pr
                c.fn[k] += n_gt - n_pr
                c.de_fn[k] += n_gt - n_pr
        elif k in gt:
            loc_fn += n_gt
            c.fn[k] += n_gt
            c.de_fn[k] += n_gt
        elif k in pr:
            loc_fp += n_pr
            c.fp[k] += n_pr
            c.de_fp[k] += n_pr
    c.substitutions += min(loc_fp, loc_fn)
    c.deletions += max(0, loc_fn - loc_fp)
    c.insertions += max(0, loc_fp - loc_fn)


# ----------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class SeldScores:
    """ER and F (fractions, F at the DOA threshold), LE (degrees) and LR (fraction), and
    the SELD score; overall (macro: the mean over classes; micro: pooled counts) and per
    class (macro only; the error rate is one number for all classes, as in DCASE)."""

    er: float
    f: float
    le: float
    lr: float
    seld: float
    average: str
    class_f: np.ndarray
    class_le: np.ndarray
    class_lr: np.ndarray
    class_seld: np.ndarray
    counts: SeldCounts

    @property
    def note(self) -> str | None:
        """Why the scores are not what they seem: a reference without events."""
        if self.counts.n_ref.sum():
            return None
        return UNDEFINED_ER_NOTE if np.isnan(self.er) else NO_EVENTS_NOTE

    def plain(self) -> dict:
        """The overall figures under the plain names every edition uses."""
        return {"f_score": self.f, "doa_error_deg": self.le, "error_rate": self.er, "localization_recall": self.lr,
                "seld_score": self.seld}

    def to_dict(self) -> dict:
        c = self.counts
        return {**({"note": self.note} if self.note else {}),
            "average": self.average,
            "overall": {"ER": self.er, "F": self.f, "LE": self.le, "LR": self.lr, "SELD": self.seld},
            "classes": [{"class": k, "F": float(self.class_f[k]), "LE": float(self.class_le[k]),
                         "LR": float(self.class_lr[k]), "SELD": float(self.class_seld[k]),
                         "f_score": float(self.class_f[k]), "doa_error_deg": float(self.class_le[k]),
                         "localization_recall": float(self.class_lr[k]), "seld_score": float(self.class_seld[k]),
                         "reference_tracks": int(c.n_ref[k]), "TP": int(c.tp[k]),
                         "FP": int(c.fp[k] + c.fp_spatial[k]), "FN": int(c.fn[k])} for k in range(c.n_classes)],
            "substitutions": int(c.substitutions), "deletions": int(c.deletions), "insertions": int(c.insertions),
            "recordings": int(c.recordings),
        }


def seld_score(er, f, le, lr):
    """The DCASE 2023 SELD score (lower is better): mean of ER, 1 - F, LE / 180, 1 - LR."""
    er, f, le, lr = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (er, f, le, lr)))
    return np.mean([er, 1 - f, le / 180.0, 1 - lr], axis=0)


def scores(c: SeldCounts, average: str = "macro") -> SeldScores:
    """The metrics of accumulated counts (`SELDMetrics.compute_seld_scores`). A class with
    no matched track has LE 180 degrees; one that never occurs scores F 0 and LR 0 under
    the macro average, as in the reference."""
    errors = c.substitutions + c.deletions + c.insertions
    # no reference events but some predicted: DCASE's errors / eps is no error rate
    er = errors / (c.n_ref.sum() + _EPS) if c.n_ref.sum() or not errors else float("nan")
    class_f = c.tp / (_EPS + c.tp + c.fp_spatial + 0.5 * (c.fp + c.fn))
    class_le = np.where(c.de_tp == 0, 180.0, c.total_de / (c.de_tp + _EPS))
    class_lr = c.de_tp / (_EPS + c.de_tp + c.de_fn)
    class_seld = seld_score(er, class_f, class_le, class_lr)
    if average == "macro":
        f, le, lr = class_f.mean(), class_le.mean(), class_lr.mean()
        seld = class_seld.mean()
    elif average == "micro":
        f = c.tp.sum() / (_EPS + c.tp.sum() + c.fp_spatial.sum() + 0.5 * (c.fp.sum() + c.fn.sum()))
        le = c.total_de.sum() / (c.de_tp.sum() + _EPS) if c.de_tp.sum() else 180.0
        lr = c.de_tp.sum() / (_EPS + c.de_tp.sum() + c.de_fn.sum())
        seld = seld_score(er, f, le, lr)
    else:
        raise ConfigError(f"average must be 'macro' or 'micro', not {average!r}")
    return SeldScores(float(er), float(f), float(le), float(lr), float(seld), average,
                      class_f, class_le, class_lr, class_seld, c)


def score_recordings(recordings, n_classes: int, *, doa_threshold: float = DOA_THRESHOLD_DEG,
                     average: str = "macro", edition: str = "2023"):
    """Scores of (reference rows, predicted rows) or (reference rows, predicted rows,
    n_frames) pairs, counted over all recordings together: DCASE 2023's (SeldScores) of
    rows (n, 5), or with `edition` "2024" or "2025" that edition's `FrameScores` of its
    rows (n, 6) at its default distance threshold (`score_pairs` for the others)."""
    return score_pairs(recordings, n_classes, check_edition(edition), doa_threshold=doa_threshold, average=average)


def score_pairs(recordings, n_classes: int, edition: str, *, doa_threshold: float = DOA_THRESHOLD_DEG,
                reldist_threshold: float = 1.0, require_onscreen: bool = False, average: str = "macro"):
    """The scores of recordings (as `score_recordings`) by `edition`, with its thresholds."""
    if edition == "2024":
        return dcase2024.score_recordings(recordings, n_classes, doa_threshold=doa_threshold,
                                          reldist_threshold=reldist_threshold, average=average)
    if edition == "2025":
        return dcase2025.score_recordings(recordings, n_classes, doa_threshold=doa_threshold,
                                          reldist_threshold=reldist_threshold, require_onscreen=require_onscreen,
                                          average=average)
    total = SeldCounts(n_classes)
    for rec in recordings:
        ref, pred, *n_frames = rec
        total = total + count_recording(ref, pred, n_classes, n_frames=n_frames[0] if n_frames else None,
                                        doa_threshold=doa_threshold)
    return scores(total, average)


def pair_csv_files(ref_dir, pred_dir) -> list[tuple[Path, Path]]:
    """(reference, prediction) CSV paths matched by file name; both folders are searched
    recursively (DCASE keeps references in one folder per split). Missing and extra
    predictions, and names found twice, raise DataError listing them."""
    found = {}
    for role, folder in (("reference", Path(ref_dir)), ("prediction", Path(pred_dir))):
        if not folder.is_dir():
            raise (DataError(f"{folder}: not a folder; give the folder of {role} CSV files") if folder.exists()
                   else MissingError(f"{folder}: no such {role} folder"))
        names: dict[str, Path] = {}
        for path in sorted(folder.rglob("*.csv")):
            if path.name in names:
                raise DataError(f"{path.name} is in the {role} folder twice: {names[path.name]} and {path}")
            names[path.name] = path
        if not names:
            raise DataError(f"{folder}: no .csv files in the {role} folder")
        found[role] = names
    ref, pred = found["reference"], found["prediction"]
    missing, extra = sorted(set(ref) - set(pred)), sorted(set(pred) - set(ref))
    if missing or extra:
        parts = ([f"{len(missing)} reference file(s) without a prediction: {', '.join(missing[:10])}"] if missing else []) \
            + ([f"{len(extra)} prediction file(s) without a reference: {', '.join(extra[:10])}"] if extra else [])
        raise DataError("; ".join(parts) + ("" if len(missing) <= 10 and len(extra) <= 10 else " ..."))
    return [(ref[name], pred[name]) for name in sorted(ref)]


def score_directories(ref_dir, pred_dir, *, n_classes: int | None = None,
                      doa_threshold: float = DOA_THRESHOLD_DEG, average: str = "macro", edition: str | None = "2023"):
    """Scores of every prediction CSV in `pred_dir` against the reference CSV of the same
    name in `ref_dir`. Without `n_classes`, the classes are 0 to the largest index seen.
    DCASE 2023's (SeldScores) unless `edition` names another: "2024" or "2025" give the
    `FrameScores` of that edition's files, None those of the newest the files allow
    (`score_folders` says which, and why)."""
    return score_folders(ref_dir, pred_dir, edition=edition, n_classes=n_classes, doa_threshold=doa_threshold,
                         average=average)[0]


def score_folders(ref_dir, pred_dir, *, edition: str | None = None, n_classes: int | None = None,
                  doa_threshold: float = DOA_THRESHOLD_DEG, reldist_threshold: float = 1.0,
                  require_onscreen: bool = False, average: str = "macro"):
    """(scores, edition, why) of every prediction CSV in `pred_dir` against the reference CSV
    of the same name in `ref_dir`, by `edition` (None: the newest the files allow; why says
    which rule chose it). Files and options the edition cannot score are refused."""
    # 180 deg is the farthest two directions can be: a larger threshold would count any
    # direction as a hit (NaN or inf used to be scored)
    options.number(doa_threshold, "--threshold", lo=0.0, hi=180.0, lo_open=True, unit="deg")
    options.number(reldist_threshold, "relative distance threshold", lo=0.0, lo_open=True)
    if n_classes is not None and n_classes < 1:
        raise ConfigError(f"the number of classes must be positive, not {n_classes}")
    files = pair_csv_files(ref_dir, pred_dir)
    edition, why = choose_edition([p for pair in files for p in pair], edition)
    if require_onscreen and edition != "2025":
        raise ConfigError(f"--onscreen: only DCASE 2025's files carry the on-screen flag; these are scored by DCASE "
                          f"{edition} ({why})")
    read = READERS[edition]
    pairs = [(read(r), read(p)) for r, p in files]
    check_reference_distances(pairs, [r for r, _ in files], edition)
    if edition == "2023" and not any(len(ref) for ref, _ in pairs) and any(len(pred) for _, pred in pairs):
        raise DataError(f"{ref_dir}: the reference holds no events in any file, but the predictions do; the error rate "
                        "and the SELD score are undefined without reference events (DCASE's formula divides by "
                        "their number: ER = insertions / 2.2e-16), so nothing is scored")
    n_classes = classes_of(pairs, n_classes, f"{ref_dir} or {pred_dir}")
    return score_pairs(pairs, n_classes, edition, doa_threshold=doa_threshold, reldist_threshold=reldist_threshold,
                       require_onscreen=require_onscreen, average=average), edition, why


def scores_json(scores, edition: str, why: str) -> tuple[dict, dict]:
    """(what `seld-metrics --json` writes of `scores` by `edition`, the notes for its
    undefined figures): the edition, why it was used, the overall figures under plain
    names (f_score, doa_error_deg, relative_distance_error, distance_error_m, and the
    edition's others), per class and the counts. 2023's older keys (overall: ER, F, LE, LR,
    SELD) stay, and its distance figures are null with a note."""
    if edition == "2023":
        d = {"edition": edition, "edition_reason": why, **scores.plain(), "relative_distance_error": None,
             "distance_error_m": None, **scores.to_dict()}
        return d, {**SELD_NOTES, "relative_distance_error": NO_DISTANCE_NOTE, "distance_error_m": NO_DISTANCE_NOTE}
    return {"edition": edition, "edition_reason": why, **scores.to_dict()}, FRAME_NOTES
