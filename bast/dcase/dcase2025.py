"""SELD metrics as DCASE 2025 task 3 (stereo SELD) defines them (docs/seld.md, "DCASE 2025").

Stereo cannot tell front from back, nor up from down: the 2025 task scores the azimuth
only, each one folded to the front half-plane first (a direction behind, azimuth a in
(90, 180], counts as 180 - a; one in [-180, -90) as -180 - a), so that 150 deg (behind,
left) and 30 deg (ahead, left) are the same answer. The angular error of a pair is the
difference of the folded azimuths. Detection is frame-wise with distance as in 2024
(bast/dcase/frames.py): a prediction is a true positive when its class is right, its
folded azimuth within 20 degrees and its relative distance error at most 1.0 (and, for the
audio-visual track, `require_onscreen`, its on-screen flag right). Reported: F20, DOAE_CD
(degrees), the distance error (m; the tool's is in cm) and RDE_CD, and the on-screen
accuracy of the pairs; macro-averaged over classes. The 2025 tool has no error rate,
localization recall or SELD score (its baseline picks checkpoints by F).

Every rule follows the DCASE 2025 baseline's reference implementation
(partha2409/DCASE2025_seld_baseline, metrics.py `SELDMetrics` and `ComputeSELDResults`,
utils.py `load_labels`, `organize_labels`, `fold_az_angle`,
`least_distance_between_gt_pred`; MIT licence) with its parameters (lad_doa_thresh 20,
lad_reldist_thresh 1.0, lad_req_onscreen False for audio), quirks included;
tests/dcase/test_seld_editions.py checks them against its numbers:

- a recording is scored over as many frames as its reference's largest frame index: the
  last reference frame and predictions past it are not scored, and a reference file
  without rows scores nothing at all, its predictions included;
- the rows of a class in a frame become at most 10 tracks: a row takes its source index
  as its track when that is below 10 and free, else the lowest free track; an 11th row
  overwrites track 0 (the tool warns).

Rows are float arrays (n, 6): frame, class, source, azimuth, distance in cm, on-screen.
"""

from __future__ import annotations

import numpy as np

from bast.dcase.frames import (
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

EDITION = "2025"
DOA_THRESHOLD_DEG = 20.0
REL_DISTANCE_THRESHOLD = 1.0
MAX_TRACKS = 10  # `organize_labels(max_tracks=10)`


def fold_azimuth(azimuth_deg) -> np.ndarray:
    """Azimuths (degrees) folded to the front, [-90, 90], as `fold_az_angle`: the mirror
    image across the interaural axis of a direction behind."""
    az = (np.asarray(azimuth_deg, dtype=np.float64) + 180) % 360 - 180
    folded = az.copy()
    back_right = (-180 <= az) & (az < -90)
    back_left = (90 < az) & (az <= 180)
    folded[back_right] = -180 - az[back_right]
    folded[back_left] = 180 - az[back_left]
    return folded


def angles(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """|folded azimuth difference| in degrees between value rows (azimuth first)."""
    return np.abs(fold_azimuth(g[:, None, 0]) - fold_azimuth(p[None, :, 0]))


def organize(rows: np.ndarray, n_frames: int) -> dict:
    """{frame: {class: (k, 3) value rows azimuth, distance in cm, on-screen}} of frames below
    `n_frames`, in the tool's track order (`organize_labels`)."""
    tracks: dict[int, dict[int, dict[int, tuple]]] = {}
    for frame, cls, source, az, dist, onscreen in rows:
        if frame >= n_frames:
            continue
        per = tracks.setdefault(int(frame), {}).setdefault(int(cls), {})
        if source not in per and source < MAX_TRACKS:
            track = int(source)
        else:
            free = set(range(MAX_TRACKS)) - per.keys()
            track = min(free) if free else 0  # the tool overwrites track 0 beyond 10 tracks
        per[track] = (az, dist, onscreen)
    return {f: {k: np.array(list(t.values())) for k, t in per.items()} for f, per in tracks.items()}


def scored_frames(ref: np.ndarray) -> int:
    """The frames a recording is scored over: the reference's largest frame index, 0
    without reference rows (`ComputeSELDResults`)."""
    return int(ref[:, 0].max()) if len(ref) else 0


def count_recording(ref_rows, pred_rows, n_classes: int, *, n_frames: int | None = None,
                    doa_threshold: float = DOA_THRESHOLD_DEG, reldist_threshold: float = REL_DISTANCE_THRESHOLD,
                    require_onscreen: bool = False) -> FrameCounts:
    """Counts of one recording's predicted rows against its reference rows (both (n, 6))."""
    ref = np.asarray(ref_rows, dtype=np.float64).reshape(-1, 6)
    pred = np.asarray(pred_rows, dtype=np.float64).reshape(-1, 6)
    check_classes(ref, n_classes, "reference")
    check_classes(pred, n_classes, "prediction")
    if n_frames is None:
        n_frames = scored_frames(ref)
    rules = Rules(angles, distance_col=1, onscreen_col=2, doa_threshold=doa_threshold,
                  reldist_threshold=reldist_threshold, require_onscreen=require_onscreen)
    return count_frames(organize(ref, n_frames), organize(pred, n_frames), n_frames, n_classes, rules)


def scores(c: FrameCounts, average: str = "macro", *, doa_threshold: float = DOA_THRESHOLD_DEG,
           reldist_threshold: float = REL_DISTANCE_THRESHOLD, require_onscreen: bool = False) -> FrameScores:
    """The metrics of accumulated counts (`SELDMetrics.compute_seld_scores`); distances in
    metres (the tool's, in cm, / 100)."""
    f, class_f = f_scores(c, average)
    class_doa, class_dist = per_pair(c.total_doa, c.de_tp), per_pair(c.total_dist, c.de_tp) / 100.0
    class_rde, class_on = per_pair(c.total_reldist, c.de_tp), per_pair(c.total_onscreen, c.de_tp)
    if average == "macro":
        doa, dist, rde, onscreen = (nanmean(v) for v in (class_doa, class_dist, class_rde, class_on))
    else:
        doa, rde = pooled(c.total_doa, c.de_tp), pooled(c.total_reldist, c.de_tp)
        dist, onscreen = pooled(c.total_dist, c.de_tp) / 100.0, pooled(c.total_onscreen, c.de_tp)
    per_class = {"f_score": class_f, "doa_error_deg": class_doa, "distance_error_m": class_dist,
                 "relative_distance_error": class_rde, "onscreen_accuracy": class_on}
    return FrameScores(EDITION, average, f, doa, dist, rde, per_class, c,
                       {"doa_threshold_deg": doa_threshold, "relative_distance_threshold": reldist_threshold,
                        "require_onscreen": require_onscreen}, onscreen_accuracy=onscreen)


def score_recordings(recordings, n_classes: int, *, doa_threshold: float = DOA_THRESHOLD_DEG,
                     reldist_threshold: float = REL_DISTANCE_THRESHOLD, require_onscreen: bool = False,
                     average: str = "macro") -> FrameScores:
    """Scores of (reference rows, predicted rows[, n_frames]) of every recording, counted together."""
    total = FrameCounts(n_classes)
    for ref, pred, *n_frames in recordings:
        total = total + count_recording(ref, pred, n_classes, n_frames=n_frames[0] if n_frames else None,
                                        doa_threshold=doa_threshold, reldist_threshold=reldist_threshold,
                                        require_onscreen=require_onscreen)
    return scores(total, average, doa_threshold=doa_threshold, reldist_threshold=reldist_threshold,
                  require_onscreen=require_onscreen)
