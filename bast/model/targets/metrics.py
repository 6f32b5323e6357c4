"""Predictions tables and their metrics: torch-free (numpy), so the report and any script
read a run's tables without torch.

A predictions table is a dict of equal-length numpy arrays (what training writes to
``RUN_DIR/eval/test_predictions.csv``; `bast.model.targets.core` says which columns a target
adds). Every table has ``clip_id``, ``category`` (may be empty), ``env`` and
``azimuth_deg`` (true azimuth). Direction targets add:

- ``pred_x``, ``pred_y`` (and ``pred_z`` on the sphere): the model's output vector
- ``ad_deg`` (angular distance in degrees; on the sphere the great-circle error) and
  ``sq_err`` (squared Euclidean distance of label and prediction, summed over the
  coordinates; not halved, docs/conventions.md)
- on the sphere: ``elevation_deg`` (true), ``pred_azimuth_deg``, ``pred_elevation_deg``.

Category targets add ``pred_category`` and one ``logit_<i>`` column per class.
The metrics of a table follow from the columns it has.

Conventions (docs/conventions.md): SOFA azimuth, 0 deg ahead, 90 deg left, 180 deg behind,
270 deg right. The front-back mirror of ``a`` (across the interaural axis) is ``180 - a``.

No pandas: `load_predictions` reads the CSV with the csv module.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from bast.conventions import canonical_env as _canonical_env
from bast.fileio import atomic_path
from bast.errors import ConfigError, DataError
from bast.sphere import great_circle_deg, lateral_polar

STR_FIELDS = ("clip_id", "category", "env")
FLOAT_FIELDS = ("azimuth_deg", "pred_x", "pred_y", "ad_deg", "sq_err")
FIELDS = STR_FIELDS + FLOAT_FIELDS
# Every table has these; the others come with the target (a category run has no pred_x).
REQUIRED = STR_FIELDS + ("azimuth_deg",)

_AZ_DECIMALS = 6  # true azimuths are grouped after rounding to this many decimals


# ----------------------------------------------------------------------------- table I/O
def load_predictions(path) -> dict[str, np.ndarray]:
    """Read a predictions CSV (header row with the names in `FIELDS`) into numpy arrays.

    String fields become numpy unicode arrays, numeric fields float64. Extra columns are
    kept (as float when every value parses, else as strings). Environment aliases
    (RI01, RI02) are mapped to anechoic / hall. Raises DataError naming missing columns.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header row {','.join(FIELDS)}") from None
        missing = [name for name in REQUIRED if name not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
        cols: list[list[str]] = [[] for _ in header]
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
            for col, value in zip(cols, row):
                col.append(value)
    out: dict[str, np.ndarray] = {}
    for name, values in zip(header, cols):
        if name in STR_FIELDS:
            out[name] = np.array(values, dtype=str) if values else np.array([], dtype=str)
        elif name in FLOAT_FIELDS:
            try:
                out[name] = np.array([float(v) if v.strip() else math.nan for v in values], dtype=np.float64)
            except ValueError as e:
                raise DataError(f"{path}: column {name}: {e}") from None
        else:
            try:
                out[name] = np.array([float(v) for v in values], dtype=np.float64)
            except ValueError:
                out[name] = np.array(values, dtype=str)
    out["env"] = canonical_envs(out["env"])
    return out


def save_predictions(pred: dict, path) -> Path:
    """Write a predictions table as CSV with the header `FIELDS` (then any extra fields)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [k for k in FIELDS if k in pred] + [k for k in pred if k not in FIELDS]
    n = _n(pred)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:  # never half a table
        w = csv.writer(f)
        w.writerow(names)
        for i in range(n):
            w.writerow([_fmt(pred[name][i]) for name in names])
    return path


def make_predictions(azimuth_deg, pred_x, pred_y, clip_id=None, category=None, env=None) -> dict[str, np.ndarray]:
    """A predictions table from true azimuths and predicted vectors; AD and squared error
    are computed by the definitions of docs/conventions.md (`azimuth_ad_deg`, `azimuth_sq_err`).
    Missing clip_id / category / env default to running numbers / '' / 'anechoic'."""
    az = np.asarray(azimuth_deg, dtype=np.float64).ravel()
    px = np.asarray(pred_x, dtype=np.float64).ravel()
    py = np.asarray(pred_y, dtype=np.float64).ravel()
    n = az.size
    if px.size != n or py.size != n:
        raise ConfigError("azimuth_deg, pred_x and pred_y must have the same length")

    def strings(v, default):
        if v is None:
            return np.array([default(i) for i in range(n)], dtype=str)
        v = np.asarray(v, dtype=str).ravel()
        return np.full(n, v.item(), dtype=v.dtype) if v.size == 1 and n != 1 else v

    return {
        "clip_id": strings(clip_id, lambda i: f"clip{i:06d}"),
        "category": strings(category, lambda i: ""),
        "env": canonical_envs(strings(env, lambda i: "anechoic")),
        "azimuth_deg": az, "pred_x": px, "pred_y": py,
        "ad_deg": azimuth_ad_deg(az, px, py),
        "sq_err": azimuth_sq_err(az, px, py),
    }


def azimuth_ad_deg(azimuth_deg, pred_x, pred_y) -> np.ndarray:
    """Per-sample AD (docs/conventions.md): arccos of the cosine between label (cos az, sin az) and the
    prediction, clipped to [-1, 1], in degrees. NaN where the prediction is the zero vector."""
    a = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64))
    px, py = np.asarray(pred_x, dtype=np.float64), np.asarray(pred_y, dtype=np.float64)
    norm = np.hypot(px, py)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (np.cos(a) * px + np.sin(a) * py) / norm
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def azimuth_sq_err(azimuth_deg, pred_x, pred_y) -> np.ndarray:
    """Per-sample |C - C^|^2, summed over x and y (docs/conventions.md; not halved like nn.MSELoss)."""
    a = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64))
    return (np.cos(a) - np.asarray(pred_x, dtype=np.float64)) ** 2 + (np.sin(a) - np.asarray(pred_y, dtype=np.float64)) ** 2


def predicted_azimuth(pred: dict) -> np.ndarray:
    """Predicted azimuth in degrees, atan2(y, x) wrapped to [0, 360)."""
    return np.mod(np.rad2deg(np.arctan2(pred["pred_y"], pred["pred_x"])), 360.0)


def circular_distance_deg(a, b) -> np.ndarray:
    """Smallest angle between azimuths a and b in degrees, in [0, 180]."""
    d = np.mod(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), 360.0)
    return np.minimum(d, 360.0 - d)


def select(pred: dict, mask) -> dict[str, np.ndarray]:
    """The rows of `pred` where `mask` is true (a new dict of arrays)."""
    mask = np.asarray(mask, dtype=bool)
    return {k: np.asarray(v)[mask] for k, v in pred.items()}


def filter_env(pred: dict, env: str | None) -> dict[str, np.ndarray]:
    """Only the rows of one environment (aliases RI01 / RI02 accepted); None: all rows."""
    if env is None:
        return pred
    return select(pred, canonical_envs(pred["env"]) == _canonical_env(env))


# ----------------------------------------------------------------------------- summaries
def per_azimuth(pred: dict, env: str | None = None) -> dict[str, np.ndarray]:
    """Errors per true azimuth, azimuths sorted ascending (wrapped to [0, 360)).

    Returns arrays of equal length: ``azimuth_deg``, ``ad_deg`` (mean AD), ``median_ad_deg``,
    ``mse`` (mean squared error), ``n`` (sample count). `env` restricts to one environment;
    `per_azimuth_by_env` gives one such table per environment.
    """
    pred = filter_env(pred, env)
    az = azimuth_key(pred["azimuth_deg"])
    keys, inv = np.unique(az, return_inverse=True)
    n = np.bincount(inv, minlength=keys.size)
    ad = np.asarray(pred["ad_deg"], dtype=np.float64)
    se = np.asarray(pred["sq_err"], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_ad = np.bincount(inv, weights=ad, minlength=keys.size) / n
        mse = np.bincount(inv, weights=se, minlength=keys.size) / n
    med = np.array([np.median(ad[inv == i]) for i in range(keys.size)])
    return {"azimuth_deg": keys, "ad_deg": mean_ad, "median_ad_deg": med, "mse": mse, "n": n}


def per_azimuth_by_env(pred: dict) -> dict[str, dict[str, np.ndarray]]:
    """`per_azimuth` for each environment present, keyed by environment name (sorted)."""
    envs = canonical_envs(pred["env"])
    return {e: per_azimuth(select(pred, envs == e)) for e in sorted(set(envs.tolist()))}


def headline(pred: dict) -> dict:
    """The figures a table's columns allow, means over its rows: ad_deg and mse for a
    direction, accuracy for a class."""
    out = {}
    n = len(pred["azimuth_deg"])
    if "ad_deg" in pred:
        out["ad_deg"] = float(np.mean(pred["ad_deg"])) if n else math.nan
        out["mse"] = float(np.mean(pred["sq_err"])) if n else math.nan
    if "pred_category" in pred:
        out["accuracy"] = category_accuracy(pred)
    return out


def _group_summary(pred: dict, keys: np.ndarray, skip_empty: bool) -> dict[str, dict]:
    out = {}
    ad = np.asarray(pred["ad_deg"], dtype=np.float64) if "ad_deg" in pred else None
    se = np.asarray(pred["sq_err"], dtype=np.float64) if "sq_err" in pred else None
    for key in sorted(set(keys.tolist())):
        if skip_empty and key == "":
            continue
        m = keys == key
        row: dict = {}
        if ad is not None:
            row.update(ad_deg=float(np.mean(ad[m])), median_ad_deg=float(np.median(ad[m])),
                       mse=float(np.mean(se[m])))
        if "pred_category" in pred:
            row["accuracy"] = category_accuracy(select(pred, m))
        row["n"] = int(m.sum())
        out[key] = row
    return out


def by_category(pred: dict) -> dict[str, dict]:
    """{category: {ad_deg, median_ad_deg, mse, n}} (means over samples); rows with an empty
    category are skipped. Keys sorted by name."""
    return _group_summary(pred, np.asarray(pred["category"], dtype=str), skip_empty=True)


def by_env(pred: dict) -> dict[str, dict]:
    """{env: {ad_deg, median_ad_deg, mse, n}} (means over samples), keys sorted by name."""
    return _group_summary(pred, canonical_envs(pred["env"]), skip_empty=False)


def ad_histogram(pred: dict, bins=None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of AD: (counts, bin edges in degrees). Default bins: 1 deg wide, 0..180."""
    if bins is None:
        bins = np.arange(0.0, 181.0, 1.0)
    ad = np.asarray(pred["ad_deg"], dtype=np.float64)
    return np.histogram(ad[np.isfinite(ad)], bins=bins)


def front_back_confusion_rate(pred: dict, exclude_within_deg: float = 0.0) -> float:
    """Share of samples whose prediction lies nearer the front-back mirror of the truth.

    Definition: with true azimuth ``a``, predicted azimuth ``p = atan2(pred_y, pred_x)``
    and the front-back mirror ``m = (180 - a) mod 360`` (the reflection across the
    interaural axis: 30 <-> 150, 0 <-> 180, 300 <-> 240), a sample is a confusion when
    ``d(p, m) < d(p, a)`` strictly, ``d`` being the circular distance in degrees.
    The rate is (number of confusions) / (number of eligible samples), where samples are
    eligible unless their truth lies within `exclude_within_deg` of 90 or 270 deg (at 90 and
    270 the mirror is the truth itself; those two are always excluded, to 1e-6 deg).
    Near 90/270 the mirror is close to the truth, so a small lateral error can count as a
    confusion; raise `exclude_within_deg` (e.g. 20) to count only clear reversals.
    NaN when no sample is eligible.
    """
    a = np.mod(np.asarray(pred["azimuth_deg"], dtype=np.float64), 360.0)
    p = predicted_azimuth(pred)
    m = np.mod(180.0 - a, 360.0)
    lateral = np.minimum(circular_distance_deg(a, 90.0), circular_distance_deg(a, 270.0))
    eligible = lateral > max(float(exclude_within_deg), 1e-6)
    if not eligible.any():
        return math.nan
    confused = circular_distance_deg(p, m) < circular_distance_deg(p, a)
    return float(np.mean(confused[eligible]))


def summary(pred: dict) -> dict:
    """Overall numbers for the report, JSON-serialisable: n; for a direction ad_deg (mean),
    median_ad_deg, mse (mean squared error), front_back_rate; on the sphere also
    `sphere_errors`; for a class `category_metrics`; by_env, by_category."""
    n = int(len(pred["azimuth_deg"]))
    out: dict = {"n": n}
    if "ad_deg" in pred:
        ad = np.asarray(pred["ad_deg"], dtype=np.float64)
        se = np.asarray(pred["sq_err"], dtype=np.float64)
        out.update(ad_deg=float(np.mean(ad)) if n else math.nan,
                   median_ad_deg=float(np.median(ad)) if n else math.nan,
                   mse=float(np.mean(se)) if n else math.nan,
                   front_back_rate=front_back_confusion_rate(pred) if n else math.nan)
    if "pred_elevation_deg" in pred and n:
        out.update(sphere_errors(pred))
    if "pred_category" in pred:
        out.update(category_metrics(pred))
    out.update(by_env=by_env(pred), by_category=by_category(pred))
    return out


# ----------------------------------------------------------------------------- the sphere
# The definitions of the AMT toolbox (localizationerror) and of `spatialaudiometrics`
# (localisation_metrics.py), in SOFA coordinates (docs/sphere.md).
CONE_DEG = 45.0  # Poirier-Quinot et al. 2022: the cone of a precision / front-back response
QUADRANT_LATERAL_DEG = 30.0  # Middlebrooks 1999: responses this near the median plane count
CONFUSION_CLASSES = ("precision", "front-back", "in-cone", "off-cone")


def true_direction(pred: dict) -> tuple[np.ndarray, np.ndarray]:
    az = np.asarray(pred["azimuth_deg"], dtype=np.float64)
    el = np.asarray(pred.get("elevation_deg", np.zeros_like(az)), dtype=np.float64)
    return az, el


def predicted_direction(pred: dict) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth, elevation) in degrees of the predictions: from pred_azimuth_deg and
    pred_elevation_deg when the table has them, else atan2 of (pred_x, pred_y) at 0."""
    if "pred_elevation_deg" in pred:
        return (np.asarray(pred["pred_azimuth_deg"], dtype=np.float64),
                np.asarray(pred["pred_elevation_deg"], dtype=np.float64))
    az = predicted_azimuth(pred)
    return az, np.zeros_like(az)


def polar_weight(lateral_target_deg) -> np.ndarray:
    """0.5 cos(2 lateral) + 0.5: polar errors near the interaural axis, where the polar angle
    is ill-defined, count less (AMT, spatialaudiometrics)."""
    return 0.5 * np.cos(2 * np.radians(np.asarray(lateral_target_deg, dtype=np.float64))) + 0.5


def wrap180(angle_deg) -> np.ndarray:
    """Angles into [-180, 180)."""
    return np.mod(np.asarray(angle_deg, dtype=np.float64) + 180.0, 360.0) - 180.0


def confusion_classes(az_t, el_t, az_r, el_r, cone_deg: float = CONE_DEG) -> np.ndarray:
    """Per response, one of CONFUSION_CLASSES (Poirier-Quinot et al. 2022): `precision`
    within `cone_deg` (great circle) of the target; else `front-back` within `cone_deg` of
    the target's front-back mirror (azimuth 180 - az, same elevation); else `in-cone` when
    the lateral error is at most `cone_deg`; else `off-cone`."""
    err = great_circle_deg(az_t, el_t, az_r, el_r)
    mirror = great_circle_deg(180.0 - np.asarray(az_t, dtype=np.float64), el_t, az_r, el_r)
    lat_t, _ = lateral_polar(az_t, el_t)
    lat_r, _ = lateral_polar(az_r, el_r)
    return np.select([err <= cone_deg, mirror <= cone_deg, np.abs(lat_r - lat_t) <= cone_deg],
                     list(CONFUSION_CLASSES[:3]), CONFUSION_CLASSES[3])


def sphere_errors(pred: dict) -> dict:
    """Errors of directions on the sphere, in degrees unless named otherwise:

    - great_circle_deg (mean) and median_great_circle_deg;
    - azimuth_error_deg: mean circular |az_r - az_t|; elevation_error_deg: mean |el_r - el_t|;
    - lateral_error_deg: mean |lat_r - lat_t|;
    - polar_error_deg: mean |pol_r - pol_t| x (0.5 cos(2 lat_t) + 0.5), the difference of
      the polar angles in [-90, 270) as they are, unwrapped, as spatialaudiometrics and
      the AMT toolbox's accabspol take it;
    - quadrant_error_pct: among responses with |lat_r| <= 30, the share (%) whose polar
      error, wrapped to [-180, 180), exceeds 90 deg (Middlebrooks; NaN when none);
    - confusions_pct: the share (%) of each of CONFUSION_CLASSES."""
    az_t, el_t = true_direction(pred)
    az_r, el_r = predicted_direction(pred)
    gc = great_circle_deg(az_t, el_t, az_r, el_r)
    lat_t, pol_t = lateral_polar(az_t, el_t)
    lat_r, pol_r = lateral_polar(az_r, el_r)
    near_median = np.abs(lat_r) <= QUADRANT_LATERAL_DEG
    quadrant = (100.0 * float(np.mean(np.abs(wrap180(pol_r - pol_t))[near_median] > 90.0))
                if near_median.any() else math.nan)
    classes = confusion_classes(az_t, el_t, az_r, el_r)
    return {
        "great_circle_deg": float(np.mean(gc)), "median_great_circle_deg": float(np.median(gc)),
        "azimuth_error_deg": float(np.mean(circular_distance_deg(az_r, az_t))),
        "elevation_error_deg": float(np.mean(np.abs(el_r - el_t))),
        "lateral_error_deg": float(np.mean(np.abs(lat_r - lat_t))),
        "polar_error_deg": float(np.mean(np.abs(pol_r - pol_t) * polar_weight(lat_t))),
        "quadrant_error_pct": quadrant,
        "confusions_pct": {c: 100.0 * float(np.mean(classes == c)) for c in CONFUSION_CLASSES},
    }


def error_by_direction(pred: dict) -> dict[str, np.ndarray]:
    """Mean great-circle error per true (azimuth, elevation): arrays azimuth_deg,
    elevation_deg, error_deg, n (the map of the sphere in the report)."""
    az_t, el_t = true_direction(pred)
    az_r, el_r = predicted_direction(pred)
    gc = great_circle_deg(az_t, el_t, az_r, el_r)
    keys = np.stack([azimuth_key(az_t), np.round(el_t, _AZ_DECIMALS)], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    n = np.bincount(inv, minlength=len(uniq))
    return {"azimuth_deg": uniq[:, 0], "elevation_deg": uniq[:, 1],
            "error_deg": np.bincount(inv, weights=gc, minlength=len(uniq)) / np.maximum(n, 1), "n": n}


# ----------------------------------------------------------------------------- classes
def category_accuracy(pred: dict) -> float:
    """Share of rows whose pred_category is the true category (NaN for no rows)."""
    true = np.asarray(pred["category"], dtype=str)
    return float(np.mean(np.asarray(pred["pred_category"], dtype=str) == true)) if true.size else math.nan


def confusion_matrix(pred: dict, classes=None) -> tuple[list[str], np.ndarray]:
    """(classes, counts) with counts[i, j] = rows of true class i predicted as class j;
    classes default to the sorted union of the true and predicted ones."""
    true = np.asarray(pred["category"], dtype=str)
    guess = np.asarray(pred["pred_category"], dtype=str)
    classes = sorted(set(true.tolist()) | set(guess.tolist())) if classes is None else list(classes)
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, g in zip(true, guess):
        if t in index and g in index:
            counts[index[t], index[g]] += 1
    return classes, counts


def macro_f1(counts: np.ndarray) -> float:
    """Mean over the classes that occur (as truth or prediction) of their F1 score."""
    tp = np.diag(counts).astype(np.float64)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return math.nan
    f1 = 2 * tp / np.maximum(support + predicted, 1)
    return float(np.mean(f1[present]))


def category_metrics(pred: dict) -> dict:
    """accuracy, chance_accuracy (guessing uniformly among the model's classes: one per
    logit_<i> column, else the classes seen), macro_f1 and the confusion matrix (classes,
    counts) of a table with pred_category."""
    classes, counts = confusion_matrix(pred)
    n_classes = sum(1 for k in pred if k.startswith("logit_")) or len(classes)
    return {"accuracy": category_accuracy(pred), "chance_accuracy": 1.0 / n_classes if n_classes else math.nan,
            "macro_f1": macro_f1(counts), "confusion": {"classes": classes, "counts": counts.tolist()}}


MAX_NUMERIC_GROUPS = 32  # a numeric label (e.g. snr_db) with more distinct values is binned
NUMERIC_BINS = 8


def by_label(pred: dict, label: str) -> dict[str, dict]:
    """{value: {ad_deg, median_ad_deg, mse, n}} for any per-sample label of the table:
    strings as they are (empty skipped), numbers (e.g. snr_db) when they take at most
    MAX_NUMERIC_GROUPS values, keyed by their shortest text ('inf', 'none' for NaN), and in
    NUMERIC_BINS equal-width bins keyed by their centres when they take more."""
    values = np.asarray(pred[label])
    if values.dtype.kind in "iufb":
        values = values.astype(np.float64)
        finite = values[np.isfinite(values)]
        if np.unique(finite).size + 2 > MAX_NUMERIC_GROUPS:
            # Drawn from a range (e.g. --snr -5:20): NUMERIC_BINS equal-width bins, each
            # keyed by its centre; +inf (no noise) and NaN stay groups of their own.
            edges = np.linspace(finite.min(), finite.max(), NUMERIC_BINS + 1)
            centres = (edges[:-1] + edges[1:]) / 2
            k = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, NUMERIC_BINS - 1)
            keys = np.array(["none" if np.isnan(v) else f"{v:g}" if not np.isfinite(v) else f"{centres[i]:.3g}"
                             for v, i in zip(values, k)])
            return _group_summary(pred, keys, skip_empty=True)
        keys = np.array(["none" if np.isnan(v) else f"{v:g}" for v in values], dtype=str)
        return _group_summary(pred, keys, skip_empty=True)
    return _group_summary(pred, values.astype(str), skip_empty=True)



# ----------------------------------------------------------------------------- helpers
def _n(pred: dict) -> int:
    return int(np.asarray(pred["azimuth_deg"]).size)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def canonical_envs(envs) -> np.ndarray:
    envs = np.asarray(envs, dtype=str)
    if envs.size == 0:
        return envs
    uniq, inv = np.unique(envs, return_inverse=True)
    return np.array([_canonical_env(u) for u in uniq], dtype=str)[inv].reshape(envs.shape)


def azimuth_key(az):
    """Azimuth wrapped to [0, 360) and rounded, so that 350.0000001 and -10 meet 350."""
    w = np.round(np.mod(np.asarray(az, dtype=np.float64), 360.0), _AZ_DECIMALS)
    w = np.where(w >= 360.0, 0.0, w)
    return float(w) if np.ndim(w) == 0 else w


