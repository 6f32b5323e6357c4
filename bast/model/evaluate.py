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
import contextlib
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from bast.conventions import SPEC_SHAPE, parse_environments
from bast.conventions import canonical_env as _canonical_env
from bast.errors import ConfigError, DataError, MissingError
from bast.fileio import atomic_write_text, json_default, sha256_file
from bast.model import losses
from bast.model.checkpoint import load_model, read_metrics, read_run_config
from bast.model.config import TrainConfig
from bast.model.data import EvalData, Selection, read_extra_labels
from bast.model.runtime import Context, autocast, full_precision, resolve_device
from bast.pipeline.shards import read_manifest

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
def predict(model: torch.nn.Module, data: EvalData, training_precision: Context | None = None) -> dict[str, np.ndarray]:
    """The per-sample table of `model` on `data` (this rank's shards), in float32: no
    autocast and no TF32, whatever the training precision, so that the final test,
    `evaluate` and `bast-cli report` give the same numbers for the same checkpoint (bf16
    would round every prediction to 8 bits of mantissa). Validation during training passes
    `training_precision` (the run's Context) and runs under its autocast and TF32 instead:
    it only ranks epochs, and in float32 it cost half a GPU epoch (issue 22)."""
    model.eval()
    rows: dict[str, list] = {k: [] for k in FIELDS}
    device_type = torch.device(data.device).type
    scope = contextlib.ExitStack()
    if training_precision is None:
        scope.enter_context(full_precision())
        scope.enter_context(torch.autocast(device_type, enabled=False))
    else:
        scope.enter_context(autocast(training_precision))
    with scope:
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


def evaluate(model: torch.nn.Module, data: EvalData, ctx: Context, loss_fn: Callable | None = None,
             training_precision: bool = False) -> tuple[dict, dict]:
    """AD and MSE (docs/conventions.md) on a split, overall and per environment, and the
    per-sample table; float32, or under ctx's training precision when
    `training_precision` (validation; see `predict`). With several ranks each evaluates its
    shards (`EvalData(..., rank, world)`) and every rank gets the whole split's result,
    the same as one process's."""
    table = predict(model, data, ctx if training_precision else None)
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
    labels = _extra_labels(test_sel.root, test_sel.shards)  # head, room, snr_db where Stage 1 wrote them
    table.update(labels)
    metrics["labels"] = sorted(labels)
    for label in labels:
        metrics[f"by_{label}"] = by_label(table, label)
    if not (metrics["n"] and math.isfinite(metrics["ad_deg"])):  # a NaN is never a result
        raise DataError(f"{run_dir}: the test of checkpoints/best.pt on {test_sel.root} gave AD {metrics['ad_deg']} "
                        f"over {metrics['n']} samples; nothing written to eval/test.json (non-finite spectra in the "
                        "test shards? re-run bast-cli featurize)")
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


# ----------------------------------------------------------------------------- a run on any data set
# `bast-cli evaluate RUN --on FEATURES`: the best checkpoint of a run on any Stage 2 data set
# (another head, room, noise level, recorded sounds), stored beside, never over, the run's own
# test evaluation (eval/test.json):
#
#   RUN/eval/<name>/metrics.json     overall, by_env, by_category, per_azimuth, by_<label>, keys
#   RUN/eval/<name>/predictions.csv  the per-sample table (FIELDS, then any extra shard labels)
#   RUN/eval/index.json              the sets evaluated, for the report
#
# <name> is the data set's folder name, the split (and environments when chosen) and a short
# hash of the folder's resolved path: kemar-s2-test-3f2a1c. Stored results are reused while
# the data (its parameters and shard checksums) and the checkpoint are unchanged.

EVAL_SPLITS = ("train", "val", "test", "all")
MAX_NUMERIC_GROUPS = 32  # a numeric label (e.g. snr_db) with more distinct values is binned
NUMERIC_BINS = 8


def features_manifest(features_dir) -> dict:
    """The manifest of a Stage 2 directory; errors name the folder and what it should be."""
    return read_manifest(features_dir, "featurize", "evaluation")


def data_sha256(manifest: dict) -> str:
    """What a Stage 2 directory holds: its parameters and its shards' checksums (not the
    manifest's bytes, which change with its date when a finished stage is re-run)."""
    content = [manifest.get("params"), [(s.get("path"), s.get("sha256")) for s in manifest.get("shards", [])]]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def spectrogram_params(manifest: dict) -> dict:
    """The parameters that decide what the model sees: STFT, standardisation, shape (the
    storage dtype does not matter)."""
    params, totals = manifest.get("params", {}), manifest.get("totals", {})
    return json.loads(json.dumps({"stft": params.get("stft"),
                                  "standardize": params.get("standardize", totals.get("standardize")),
                                  "spec_shape": totals.get("spec_shape")}))


def current_spectrogram_params() -> dict:
    """What `bast-cli featurize` (and `bast-cli localize`) compute today."""
    from bast.pipeline.features import STFT_PARAMS
    from bast.pipeline.featurize import STANDARDIZE

    return json.loads(json.dumps({"stft": STFT_PARAMS, "standardize": STANDARDIZE, "spec_shape": list(SPEC_SHAPE)}))


def trained_spectrogram_params(run_dir) -> dict:
    """The spectrogram parameters a run was trained on: from its training features'
    manifest (config.json names the folder), else as recorded at an earlier evaluation,
    else (the training data gone) the parameters of this version of bast."""
    run_dir = Path(run_dir)
    config = _run_config(run_dir)
    manifest_path = Path(config.get("features_dir", "")) / "manifest.json"
    if config.get("features_dir") and manifest_path.exists():
        return spectrogram_params(features_manifest(manifest_path.parent))
    index = _read_index(run_dir)
    return index.get("trained_spectrogram") or current_spectrogram_params()


def check_spectrogram_params(trained: dict, data: dict, data_name, run_name) -> None:
    """Refuse data featurized otherwise than the run's training data, naming the parameter."""
    diffs = [f"{key}: trained on {a!r}, this data {b!r}" for key, a, b in _differences(trained, data)]
    if diffs:
        raise DataError(f"{data_name} was featurized with other spectrogram parameters than run {run_name} was "
                        f"trained on ({'; '.join(diffs)}); featurize its Stage 1 output again with this version "
                        "of bast (bast-cli featurize STAGE1 OUT)")


def eval_name(features_dir, split: str = "test", envs=None) -> str:
    """The folder name of one data set's results under RUN/eval/."""
    root = Path(features_dir).resolve()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", root.name).strip("-.") or "features"
    env_part = f"-{'+'.join(envs)}" if envs else ""
    return f"{stem}-{split}{env_part}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}"


def evaluate_run(run_dir, features_dir, split: str = "test", envs=None, device: str = "cpu",
                 force: bool = False) -> dict:
    """The best checkpoint of `run_dir` on `split` ('all': every split) of the Stage 2 data
    in `features_dir`, restricted to `envs` (None: every environment there).

    Writes RUN/eval/<name>/metrics.json and predictions.csv and lists the set in
    RUN/eval/index.json. Returns the metrics, with ``reused`` True when the stored result
    was still valid (same data checksum, checkpoint, split and environments) and `force` is
    False. Refuses (DataError) data whose spectrogram parameters differ from the run's
    training data, and a shard that does not match its manifest checksum.
    """
    run_dir = Path(run_dir)
    features_dir = Path(features_dir).resolve()
    if split not in EVAL_SPLITS:
        raise ConfigError(f"split {split!r}: choose from {', '.join(EVAL_SPLITS)}")
    config = _run_config(run_dir)
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.exists():
        raise MissingError(f"{run_dir}: no checkpoints/best.pt to evaluate (a run that has not finished an epoch?)")
    manifest = features_manifest(features_dir)
    trained = trained_spectrogram_params(run_dir)
    check_spectrogram_params(trained, spectrogram_params(manifest), features_dir, run_dir)
    env_list = list(parse_environments(envs)) if envs else None
    name = eval_name(features_dir, split, env_list)
    out = run_dir / "eval" / name
    keys = {"features_dir": str(features_dir), "data_sha256": data_sha256(manifest), "split": split,
            "envs": env_list or "all", "checkpoint_sha256": sha256_file(ckpt)}
    if not force and (out / "metrics.json").exists() and (out / "predictions.csv").exists():
        try:
            old = json.loads((out / "metrics.json").read_text())
        except ValueError:
            old = {}
        if all(old.get(k) == v for k, v in keys.items()):
            _add_to_index(run_dir, name, old, trained)
            return {**old, "reused": True}

    splits = ("train", "val", "test") if split == "all" else (split,)
    shards = tuple(s for s in manifest["shards"]
                   if s["split"] in splits and (env_list is None or s["env"] in env_list) and s["samples"])
    if not shards:
        have = manifest.get("totals", {}).get("samples_by_split", {})
        raise DataError(f"{features_dir}: no {split} samples" + (f" in {', '.join(env_list)}" if env_list else "")
                        + f" (it holds {', '.join(f'{k} {v}' for k, v in have.items()) or 'none'}); "
                        "choose another --split or --env")
    dev = eval_device(device)
    model, cfg = load_model(run_dir, "best", dev)
    if cfg.model.phase and not manifest.get("params", {}).get("phase"):
        raise DataError(f"{features_dir} holds no interaural phase, which {run_dir} reads; featurize it with "
                        "--phase")
    sel = Selection(features_dir, shards, cfg.model.phase).verify()
    ctx = Context(device=dev, amp_dtype=None)  # float32: a judgement, not a race
    data = EvalData(sel, cfg.eval_batch_size, dev, cfg.memory_budget_gb)
    _, table = evaluate(model, data, ctx)
    labels = _extra_labels(features_dir, shards)
    table.update(labels)

    result = {**keys, "name": name, "run_dir": str(run_dir.resolve()), "checkpoint": str(ckpt),
              "checkpoint_mtime": ckpt.stat().st_mtime, "checkpoint_epoch": _checkpoint_epoch(run_dir),
              "trained_on": config.get("features_dir"), "spectrogram": spectrogram_params(manifest),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary(table),
              "per_azimuth": _lists(per_azimuth(table)),
              "per_azimuth_by_env": {e: _lists(t) for e, t in per_azimuth_by_env(table).items()},
              "labels": sorted(labels)}
    for label, values in labels.items():
        result[f"by_{label}"] = by_label(table, label)
    out.mkdir(parents=True, exist_ok=True)
    save_predictions(table, out / "predictions.csv")
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1, default=json_default))
    _add_to_index(run_dir, name, result, trained)
    return {**result, "reused": False}


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


def stored_evaluations(run_dir) -> dict[str, dict]:
    """The data sets a run was evaluated on (RUN/eval/index.json), by name, in the order
    they were first evaluated; each entry holds the headline figures and the metrics path."""
    return _read_index(Path(run_dir)).get("sets", {})


def load_stored(run_dir, name: str) -> tuple[dict, dict]:
    """(metrics, predictions table) of one stored evaluation of a run."""
    d = Path(run_dir) / "eval" / name
    if not (d / "metrics.json").exists():
        raise MissingError(f"{d}: no stored evaluation (bast-cli evaluate writes it)")
    return json.loads((d / "metrics.json").read_text()), load_predictions(d / "predictions.csv")


def _run_config(run_dir: Path) -> dict:
    return read_run_config(run_dir)


def _checkpoint_epoch(run_dir: Path):
    rows = read_metrics(run_dir)
    losses_ = [(r["val_loss"], r["epoch"]) for r in rows if r.get("val_loss") is not None]
    return min(losses_)[1] if losses_ else None


def eval_device(device) -> torch.device:
    """One process's device for evaluation or localization (auto: a GPU when there is one);
    the same rules and messages as training's --device."""
    dev, _ = resolve_device(str(device), cuda_available=torch.cuda.is_available(),
                            device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return dev


def _extra_labels(root: Path, shards) -> dict[str, np.ndarray]:
    """Extra labels of the shards, concatenated in shard order; a label some shards lack
    is empty ('' or NaN) there."""
    parts = [read_extra_labels(root / s["path"]) for s in shards]
    names = sorted({k for part in parts for k in part})
    out = {}
    for name in names:
        numeric = all(part[name].dtype.kind == "f" for part in parts if name in part)
        cols = [part[name] if name in part else np.full(s["samples"], np.nan if numeric else "")
                for part, s in zip(parts, shards)]
        out[name] = np.concatenate(cols).astype(np.float64 if numeric else str)
    return out


def _differences(a, b, prefix: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
    elif a != b:
        yield prefix, a, b


def _lists(table: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in table.items()}


def _read_index(run_dir: Path) -> dict:
    path = run_dir / "eval" / "index.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def _add_to_index(run_dir: Path, name: str, metrics: dict, trained: dict) -> None:
    index = _read_index(run_dir)
    index["trained_spectrogram"] = trained
    sets = index.setdefault("sets", {})
    sets[name] = {k: metrics.get(k) for k in ("features_dir", "split", "envs", "data_sha256", "n", "ad_deg",
                                              "median_ad_deg", "mse", "front_back_rate", "created")}
    sets[name]["metrics"] = f"eval/{name}/metrics.json"
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "eval" / "index.json", json.dumps(index, indent=1, default=json_default))

