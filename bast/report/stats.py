"""Statistics behind `bast-cli report`: the hemifield comparison of the paper's Fig. 3
and 4 (paired left / right errors, paired t-tests, Benjamini-Hochberg correction).

Input is a predictions table (`bast.model.targets.metrics`). Hemifields (docs/conventions.md):
left 10..170 deg, right 190..350 deg (0 and 180 belong to neither); the mirror of ``a``
across the median plane is ``360 - a``.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import numpy as np
from scipy import stats as _sps

from bast.errors import ConfigError
from bast.model.targets.metrics import azimuth_key, canonical_envs, filter_env

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
        raise ConfigError(f"unknown metric {metric!r}; choose from {sorted(_METRICS)}")
    if level not in ("azimuth", "clip", "sound"):
        raise ConfigError(f"unknown level {level!r}; choose 'azimuth', 'clip' or 'sound'")
    pred = filter_env(pred, env)
    az = azimuth_key(pred["azimuth_deg"])
    val = np.asarray(pred[field], dtype=np.float64)
    if level == "azimuth":
        return _azimuth_pairs(az, val)
    pairs = _clip_pairs(pred, az, val)
    if level == "clip":
        return (np.array([p[3] for p in pairs]), np.array([p[4] for p in pairs]),
                np.array([p[2] for p in pairs], dtype=np.float64))
    return _sound_pairs(pairs)


def _azimuth_pairs(az: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pair per mirrored azimuth pair: the mean at ``a`` and at ``360 - a``; keys ``a``."""
    sums: dict[float, list[float]] = defaultdict(lambda: [0.0, 0])
    for a, v in zip(az.tolist(), val.tolist()):
        s = sums[a]
        s[0] += v
        s[1] += 1
    left, right, keys = [], [], []
    for a in sorted(sums):
        mirror = azimuth_key(360.0 - a)
        if 0.0 < a < 180.0 and mirror in sums:
            left.append(sums[a][0] / sums[a][1])
            right.append(sums[mirror][0] / sums[mirror][1])
            keys.append(a)
    return np.array(left), np.array(right), np.array(keys, dtype=np.float64)


def _clip_pairs(pred: dict, az: np.ndarray, val: np.ndarray) -> list[tuple]:
    """(clip, env, a, left, right) for every (clip_id, env, a) found at both ``a`` and
    ``360 - a`` (duplicates averaged), sorted by clip, env and azimuth."""
    clips = np.asarray(pred["clip_id"], dtype=str)
    envs = canonical_envs(pred["env"])
    cell: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])
    for c, e, a, v in zip(clips.tolist(), envs.tolist(), az.tolist(), val.tolist()):
        s = cell[(c, e, a)]
        s[0] += v
        s[1] += 1
    pairs = []
    for (c, e, a), s in cell.items():
        if 0.0 < a < 180.0:
            r = cell.get((c, e, azimuth_key(360.0 - a)))
            if r is not None:
                pairs.append((c, e, a, s[0] / s[1], r[0] / r[1]))
    pairs.sort(key=lambda t: (t[0], t[1], t[2]))
    return pairs


def _sound_pairs(pairs: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clip pairs averaged per clip_id: one pair per sound; keys the clip_ids."""
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
        raise ConfigError(f"paired samples differ in length: {a.size} and {b.size}")
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
        raise ConfigError("p-values must lie in [0, 1]")
    order = ok[np.argsort(flat[ok], kind="mergesort")]
    # m / i >= 1, so p * m / i >= p; np.maximum keeps that true after rounding (p * 3 / 3
    # can come out one ulp below p, and an adjusted p-value below its own p is wrong).
    ranked = np.maximum(flat[order] * m / np.arange(1, m + 1), flat[order])
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
