"""Numbers behind `bast-cli report`: errors per azimuth, sound and room, hemifield tests.

Input is a predictions table: a dict of equal-length numpy arrays with the fields of
`FIELDS` (what training writes to ``RUN_DIR/eval/test_predictions.csv``):

- ``clip_id`` (str), ``category`` (str, may be empty), ``env`` (str: anechoic or hall)
- ``azimuth_deg`` (true azimuth), ``pred_x``, ``pred_y`` (the model's output vector)
- ``ad_deg`` (angular distance in degrees) and ``sq_err`` (squared Euclidean distance of
  the label and the prediction, summed over x and y; SPEC 2, not halved).

Conventions (SPEC 1): SOFA azimuth, 0 deg ahead, 90 deg left, 180 deg behind, 270 deg
right. Hemifields: left 10..170 deg, right 190..350 deg (0 and 180 belong to neither); the
mirror of ``a`` across the median plane is ``360 - a``; its front-back mirror (across the
interaural axis) is ``180 - a``.

No pandas: `load_predictions` reads the CSV with the csv module.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats as _sps

STR_FIELDS = ("clip_id", "category", "env")
FLOAT_FIELDS = ("azimuth_deg", "pred_x", "pred_y", "ad_deg", "sq_err")
FIELDS = STR_FIELDS + FLOAT_FIELDS

ENV_ALIASES = {"anechoic": "anechoic", "ri01": "anechoic", "ae": "anechoic",
               "hall": "hall", "ri02": "hall", "rv": "hall"}

_AZ_DECIMALS = 6  # true azimuths are grouped after rounding to this many decimals


# ----------------------------------------------------------------------------- table I/O
def load_predictions(path) -> dict[str, np.ndarray]:
    """Read a predictions CSV (header row with the names in `FIELDS`) into numpy arrays.

    String fields become numpy unicode arrays, numeric fields float64. Extra columns are
    kept (as float when every value parses, else as strings). Environment aliases
    (RI01, RI02) are mapped to anechoic / hall. Raises ValueError naming missing columns.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a header row {','.join(FIELDS)}") from None
        missing = [name for name in FIELDS if name not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
        cols: list[list[str]] = [[] for _ in header]
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
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
                raise ValueError(f"{path}: column {name}: {e}") from None
        else:
            try:
                out[name] = np.array([float(v) for v in values], dtype=np.float64)
            except ValueError:
                out[name] = np.array(values, dtype=str)
    out["env"] = _canonical_envs(out["env"])
    return out


def save_predictions(pred: dict, path) -> Path:
    """Write a predictions table as CSV with the header `FIELDS` (then any extra fields)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(FIELDS) + [k for k in pred if k not in FIELDS]
    n = _n(pred)
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed: never half a table
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i in range(n):
            w.writerow([_fmt(pred[name][i]) for name in names])
    os.replace(tmp, path)
    return path


def make_predictions(azimuth_deg, pred_x, pred_y, clip_id=None, category=None, env=None) -> dict[str, np.ndarray]:
    """A predictions table from true azimuths and predicted vectors; AD and squared error
    are computed by the SPEC 2 definitions (`angular_distance_deg`, `squared_error`).
    Missing clip_id / category / env default to running numbers / '' / 'anechoic'."""
    az = np.asarray(azimuth_deg, dtype=np.float64).ravel()
    px = np.asarray(pred_x, dtype=np.float64).ravel()
    py = np.asarray(pred_y, dtype=np.float64).ravel()
    n = az.size
    if px.size != n or py.size != n:
        raise ValueError("azimuth_deg, pred_x and pred_y must have the same length")

    def strings(v, default):
        if v is None:
            return np.array([default(i) for i in range(n)], dtype=str)
        v = np.asarray(v, dtype=str).ravel()
        return np.full(n, v.item(), dtype=v.dtype) if v.size == 1 and n != 1 else v

    return {
        "clip_id": strings(clip_id, lambda i: f"clip{i:06d}"),
        "category": strings(category, lambda i: ""),
        "env": _canonical_envs(strings(env, lambda i: "anechoic")),
        "azimuth_deg": az, "pred_x": px, "pred_y": py,
        "ad_deg": angular_distance_deg(az, px, py),
        "sq_err": squared_error(az, px, py),
    }


def angular_distance_deg(azimuth_deg, pred_x, pred_y) -> np.ndarray:
    """Per-sample AD (SPEC 2): arccos of the cosine between label (cos az, sin az) and the
    prediction, clipped to [-1, 1], in degrees. NaN where the prediction is the zero vector."""
    a = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64))
    px, py = np.asarray(pred_x, dtype=np.float64), np.asarray(pred_y, dtype=np.float64)
    norm = np.hypot(px, py)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (np.cos(a) * px + np.sin(a) * py) / norm
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def squared_error(azimuth_deg, pred_x, pred_y) -> np.ndarray:
    """Per-sample |C - C^|^2, summed over x and y (SPEC 2; not halved like nn.MSELoss)."""
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
    return select(pred, _canonical_envs(pred["env"]) == _canonical_env(env))


# ----------------------------------------------------------------------------- summaries
def per_azimuth(pred: dict, env: str | None = None) -> dict[str, np.ndarray]:
    """Errors per true azimuth, azimuths sorted ascending (wrapped to [0, 360)).

    Returns arrays of equal length: ``azimuth_deg``, ``ad_deg`` (mean AD), ``median_ad_deg``,
    ``mse`` (mean squared error), ``n`` (sample count). `env` restricts to one environment;
    `per_azimuth_by_env` gives one such table per environment.
    """
    pred = filter_env(pred, env)
    az = _az_key(pred["azimuth_deg"])
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
    envs = _canonical_envs(pred["env"])
    return {e: per_azimuth(select(pred, envs == e)) for e in sorted(set(envs.tolist()))}


def _group_summary(pred: dict, keys: np.ndarray, skip_empty: bool) -> dict[str, dict]:
    out = {}
    ad = np.asarray(pred["ad_deg"], dtype=np.float64)
    se = np.asarray(pred["sq_err"], dtype=np.float64)
    for key in sorted(set(keys.tolist())):
        if skip_empty and key == "":
            continue
        m = keys == key
        out[key] = {"ad_deg": float(np.mean(ad[m])), "median_ad_deg": float(np.median(ad[m])),
                    "mse": float(np.mean(se[m])), "n": int(m.sum())}
    return out


def by_category(pred: dict) -> dict[str, dict]:
    """{category: {ad_deg, median_ad_deg, mse, n}} (means over samples); rows with an empty
    category are skipped. Keys sorted by name."""
    return _group_summary(pred, np.asarray(pred["category"], dtype=str), skip_empty=True)


def by_env(pred: dict) -> dict[str, dict]:
    """{env: {ad_deg, median_ad_deg, mse, n}} (means over samples), keys sorted by name."""
    return _group_summary(pred, _canonical_envs(pred["env"]), skip_empty=False)


def error_histogram(pred: dict, bins=None) -> tuple[np.ndarray, np.ndarray]:
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
    """Overall numbers for the report, JSON-serialisable: n, ad_deg (mean), median_ad_deg,
    mse (mean squared error), front_back_rate, by_env, by_category."""
    ad = np.asarray(pred["ad_deg"], dtype=np.float64)
    se = np.asarray(pred["sq_err"], dtype=np.float64)
    n = int(ad.size)
    return {
        "n": n,
        "ad_deg": float(np.mean(ad)) if n else math.nan,
        "median_ad_deg": float(np.median(ad)) if n else math.nan,
        "mse": float(np.mean(se)) if n else math.nan,
        "front_back_rate": front_back_confusion_rate(pred) if n else math.nan,
        "by_env": by_env(pred),
        "by_category": by_category(pred),
    }


# ----------------------------------------------------------------------------- hemifields
_METRICS = {"ad_deg": "ad_deg", "ad": "ad_deg", "sq_err": "sq_err", "mse": "sq_err"}


def hemifield_pairs(pred: dict, metric: str = "ad_deg", level: str = "sound",
                    env: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paired left / right observations for the hemifield test (paper Fig. 3 and 4).

    A left azimuth ``a`` (10..170 deg, i.e. 0 < a < 180) is paired with its mirror
    ``360 - a`` in the right hemifield. `metric` is ``"ad_deg"`` (alias ``"ad"``) or
    ``"sq_err"`` (alias ``"mse"``). Returns ``(left, right, keys)``:

    - ``level="azimuth"`` (the paper's design): one pair per mirrored azimuth pair; left =
      mean metric over all samples at ``a``, right = mean at ``360 - a``; keys = ``a``.
      Default grid: 17 pairs.
    - ``level="clip"``: one pair per (clip_id, env, a) found at both ``a`` and ``360 - a``
      (the same sound in the same room at mirrored places; duplicates are averaged);
      keys = ``a`` for each pair.
    - ``level="sound"`` (default): the "clip" pairs averaged per clip_id, so one pair per
      sound: left = the sound's mean metric over its left positions, right = the mean over
      exactly the mirrored right positions (same environments); keys = the clip_ids.

    Why "sound" is the default: pairing by clip and mirrored azimuth controls for the sound
    (a hard sound is hard on both sides, so its difficulty cancels in the difference) and
    for the room, and needs no balanced table: a sample missing on one side drops only its
    own pair. But a paired t-test also needs independent pairs, and the 17 x 2 "clip" pairs
    of one sound are not independent (a sound the model hears as slightly leftward biases
    all of them), so at "clip" level the test counts every position as a new replication
    and its p-values come out too small. The test sounds are the random sample (azimuths
    and rooms are fixed conditions), so one matched pair per sound is the unit that makes
    the t-test valid. "azimuth" reproduces the paper (17 pairs; each a mean over the same
    sounds only when the table is balanced).
    """
    field = _METRICS.get(metric)
    if field is None:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(_METRICS)}")
    if level not in ("azimuth", "clip", "sound"):
        raise ValueError(f"unknown level {level!r}; choose 'azimuth', 'clip' or 'sound'")
    pred = filter_env(pred, env)
    az = _az_key(pred["azimuth_deg"])
    val = np.asarray(pred[field], dtype=np.float64)

    if level == "azimuth":
        sums: dict[float, list[float]] = defaultdict(lambda: [0.0, 0])
        for a, v in zip(az.tolist(), val.tolist()):
            s = sums[a]
            s[0] += v
            s[1] += 1
        left, right, keys = [], [], []
        for a in sorted(sums):
            mirror = _az_key(360.0 - a)
            if 0.0 < a < 180.0 and mirror in sums:
                left.append(sums[a][0] / sums[a][1])
                right.append(sums[mirror][0] / sums[mirror][1])
                keys.append(a)
        return np.array(left), np.array(right), np.array(keys, dtype=np.float64)

    clips = np.asarray(pred["clip_id"], dtype=str)
    envs = _canonical_envs(pred["env"])
    cell: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])
    for c, e, a, v in zip(clips.tolist(), envs.tolist(), az.tolist(), val.tolist()):
        s = cell[(c, e, a)]
        s[0] += v
        s[1] += 1
    pairs = []  # (clip, env, a, left, right)
    for (c, e, a), s in cell.items():
        if 0.0 < a < 180.0:
            r = cell.get((c, e, _az_key(360.0 - a)))
            if r is not None:
                pairs.append((c, e, a, s[0] / s[1], r[0] / r[1]))
    pairs.sort(key=lambda t: (t[0], t[1], t[2]))
    if level == "clip":
        return (np.array([p[3] for p in pairs]), np.array([p[4] for p in pairs]),
                np.array([p[2] for p in pairs], dtype=np.float64))
    per_clip: dict[str, list] = defaultdict(lambda: [0.0, 0.0, 0])
    for c, _, _, lv, rv in pairs:
        s = per_clip[c]
        s[0] += lv
        s[1] += rv
        s[2] += 1
    keys = sorted(per_clip)
    return (np.array([per_clip[k][0] / per_clip[k][2] for k in keys]),
            np.array([per_clip[k][1] / per_clip[k][2] for k in keys]),
            np.array(keys, dtype=str))


def paired_t_test(a, b) -> tuple[float, float]:
    """Two-sided paired t-test of a against b (scipy.stats.ttest_rel): (t, p).

    t > 0 when a is larger on average. Pairs with a NaN on either side are dropped; with
    fewer than 2 pairs left, or no variation in the differences, returns (nan, nan).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sps.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue)


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (FDR), same shape as the input.

    Step-up: with the m finite p-values sorted ascending, p_(i) * m / i, then the running
    minimum from the largest rank down (monotone), capped at 1. NaNs stay NaN and do not
    count in m. Equals scipy.stats.false_discovery_control(p, method='bh') without NaNs.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    flat = p.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    m = ok.size
    if m == 0:
        return out
    if np.any((flat[ok] < 0) | (flat[ok] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = ok[np.argsort(flat[ok], kind="mergesort")]
    ranked = flat[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    res = out.ravel()
    res[order] = adjusted
    return res.reshape(p.shape)


def hemifield_tests(preds: dict[str, dict], metric: str = "ad_deg", level: str = "sound",
                    env: str | None = None) -> dict[str, dict]:
    """For several conditions (label -> predictions table): hemifield pairs, paired t-test
    and BH-adjusted p over the conditions, as the paper's Fig. 3/4 do.

    Returns {label: {left, right, keys, t, p, p_adj, n}}; feed ``(left, right, p_adj)`` to
    `bast.report.figures.hemifield_boxplots`.
    """
    out = {}
    for label, pred in preds.items():
        left, right, keys = hemifield_pairs(pred, metric=metric, level=level, env=env)
        t, p = paired_t_test(left, right)
        out[label] = {"left": left, "right": right, "keys": keys, "t": t, "p": p, "n": int(left.size)}
    adj = benjamini_hochberg([v["p"] for v in out.values()])
    for v, pa in zip(out.values(), adj):
        v["p_adj"] = float(pa)
    return out


# ----------------------------------------------------------------------------- helpers
def _n(pred: dict) -> int:
    return int(np.asarray(pred["azimuth_deg"]).size)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def _canonical_env(name: str) -> str:
    return ENV_ALIASES.get(str(name).strip().lower(), str(name).strip())


def _canonical_envs(envs) -> np.ndarray:
    envs = np.asarray(envs, dtype=str)
    if envs.size == 0:
        return envs
    uniq, inv = np.unique(envs, return_inverse=True)
    return np.array([_canonical_env(u) for u in uniq], dtype=str)[inv].reshape(envs.shape)


def _az_key(az):
    """Azimuth wrapped to [0, 360) and rounded, so that 350.0000001 and -10 meet 350."""
    w = np.round(np.mod(np.asarray(az, dtype=np.float64), 360.0), _AZ_DECIMALS)
    w = np.where(w >= 360.0, 0.0, w)
    return float(w) if np.ndim(w) == 0 else w
