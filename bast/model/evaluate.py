"""Evaluation: a trained model on a split, the per-sample predictions table and its
summaries (overall, per environment, per category, per azimuth). Training calls it for
validation and the final test; the report and `bast-cli evaluate` call it too.

A predictions table is a dict of equal-length numpy arrays with the fields of `FIELDS`
(what training writes to ``RUN_DIR/eval/test_predictions.csv``):

- ``clip_id`` (str), ``category`` (str, may be empty), ``env`` (str: anechoic or hall)
- ``azimuth_deg`` (true azimuth), ``pred_x``, ``pred_y`` (the model's output vector)
- ``ad_deg`` (angular distance in degrees) and ``sq_err`` (squared Euclidean distance of
  the label and the prediction, summed over x and y; not halved, docs/conventions.md).

Conventions (docs/conventions.md): SOFA azimuth, 0 deg ahead, 90 deg left, 180 deg behind,
270 deg right. The front-back mirror of ``a`` (across the interaural axis) is ``180 - a``.

No pandas: `load_predictions` reads the CSV with the csv module.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import json
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from bast.conventions import canonical_env as _canonical_env
from bast.errors import DataError
from bast.fileio import atomic_write_text
from bast.model import losses
from bast.model.checkpoint import load_model
from bast.model.config import TrainConfig
from bast.model.data import EvalData, Selection
from bast.model.runtime import Context, full_precision

STR_FIELDS = ("clip_id", "category", "env")
FLOAT_FIELDS = ("azimuth_deg", "pred_x", "pred_y", "ad_deg", "sq_err")
FIELDS = STR_FIELDS + FLOAT_FIELDS

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
        missing = [name for name in FIELDS if name not in header]
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
    are computed by the definitions of docs/conventions.md (`angular_distance_deg`, `squared_error`).
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
    """Per-sample AD (docs/conventions.md): arccos of the cosine between label (cos az, sin az) and the
    prediction, clipped to [-1, 1], in degrees. NaN where the prediction is the zero vector."""
    a = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64))
    px, py = np.asarray(pred_x, dtype=np.float64), np.asarray(pred_y, dtype=np.float64)
    norm = np.hypot(px, py)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (np.cos(a) * px + np.sin(a) * py) / norm
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def squared_error(azimuth_deg, pred_x, pred_y) -> np.ndarray:
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


# ----------------------------------------------------------------------------- a model on a split
@torch.no_grad()
def predict(model: torch.nn.Module, data: EvalData) -> dict[str, np.ndarray]:
    """The per-sample table of `model` on `data` (this rank's shards), in float32: no
    autocast and no TF32, whatever the training precision, so that the final test, a
    validation and `bast-cli report` give the same numbers for the same checkpoint (bf16
    would round every prediction to 8 bits of mantissa)."""
    model.eval()
    rows: dict[str, list] = {k: [] for k in FIELDS}
    device_type = torch.device(data.device).type
    with full_precision(), torch.autocast(device_type, enabled=False):
        for x, y, labels in data.batches():
            pred = model(x).float()
            ad, se = losses.angular_distance_deg(pred, y).cpu().numpy(), losses.squared_error(pred, y).cpu().numpy()
            p = pred.cpu().numpy()
            for k in ("clip_id", "category", "env", "azimuth_deg"):
                rows[k].append(labels[k])
            rows["pred_x"].append(p[:, 0])
            rows["pred_y"].append(p[:, 1])
            rows["ad_deg"].append(ad)
            rows["sq_err"].append(se)
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in rows.items()}


def merge_shards(tables: list[dict], shards, world: int) -> dict[str, np.ndarray]:
    """The tables of `world` ranks, rank r having evaluated shards r, r + w, ... in order,
    joined back into the split's stored order."""
    cursors, pieces = [0] * world, []
    for i, s in enumerate(shards):
        r, n = i % world, s["samples"]
        pieces.append({k: v[cursors[r]:cursors[r] + n] for k, v in tables[r].items()})
        cursors[r] += n
    return {k: np.concatenate([p[k] for p in pieces]) if pieces else np.zeros(0) for k in FIELDS}


def table_metrics(table: dict, loss_fn: Callable | None = None) -> dict:
    """n, AD and MSE (and the loss, over the whole table at once) overall and per environment."""
    n = len(table["ad_deg"])
    metrics = {"n": n, "ad_deg": float(table["ad_deg"].mean()) if n else float("nan"),
               "mse": float(table["sq_err"].mean()) if n else float("nan")}
    if loss_fn is not None and n:
        pred = torch.from_numpy(np.stack([table["pred_x"], table["pred_y"]], axis=1).astype(np.float32))
        target = losses.azimuth_to_vector(torch.from_numpy(np.asarray(table["azimuth_deg"], dtype=np.float32)))
        metrics["loss"] = float(loss_fn(pred, target))
    metrics["by_env"] = by_env(table)
    return metrics


def evaluate(model: torch.nn.Module, data: EvalData, ctx: Context, loss_fn: Callable | None = None) -> tuple[dict, dict]:
    """AD and MSE (docs/conventions.md) on a split, overall and per environment, and the
    per-sample table; float32 (see `predict`). With several ranks each evaluates its
    shards (`EvalData(..., rank, world)`) and every rank gets the whole split's result,
    the same as one process's."""
    table = predict(model, data)
    if data.world > 1:
        gathered: list = [None] * data.world
        dist.all_gather_object(gathered, table)
        table = merge_shards(gathered, data.sel.shards, data.world)
    return table_metrics(table, loss_fn), table


def final_test(run_dir: Path, test_sel: Selection, cfg: TrainConfig, ctx: Context) -> dict:
    """The best checkpoint on the test split: eval/test.json and eval/test_predictions.csv."""
    model, _ = load_model(run_dir, "best", ctx.device)
    data = EvalData(test_sel, cfg.eval_batch_size, ctx.device, cfg.memory_budget_gb)
    metrics, table = evaluate(model, data, ctx)
    metrics.update(median_ad_deg=float(np.median(table["ad_deg"])) if len(table["ad_deg"]) else float("nan"),
                   by_category=by_category(table), checkpoint="best", test_env=cfg.test_env)
    (run_dir / "eval").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "eval" / "test.json", json.dumps(metrics, indent=1))
    save_predictions(table, run_dir / "eval" / "test_predictions.csv")
    return metrics


# ----------------------------------------------------------------------------- helpers
def _n(pred: dict) -> int:
    return int(np.asarray(pred["azimuth_deg"]).size)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


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
