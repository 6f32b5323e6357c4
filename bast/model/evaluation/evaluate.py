"""Evaluation: a trained model on a split, in float32: the per-sample predictions table
(bast/model/targets/metrics.py) and its metrics. Training calls it for validation and the final
test (eval/test.json, eval/test_predictions.csv); `bast.model.evaluation.runs` for other data sets.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from bast.errors import DataError
from bast.fileio import write_json
from bast.model.targets.names import METRIC_NOTES
from bast.model.targets import losses
from bast.model.runs.checkpoint import load_model
from bast.model.runs.config import TrainConfig
from bast.model.data.loaders import EvalData, Selection, read_extra_labels
from bast.model.targets.metrics import FIELDS, by_category, by_env, by_label, headline, save_predictions, summary
from bast.model.runs.runtime import Context, autocast, full_precision, resolve_device
from bast.model.targets.core import Target, target_of

# ----------------------------------------------------------------------------- a model on a split
@torch.no_grad()
def predict(model: torch.nn.Module, data: EvalData, training_precision: Context | None = None) -> dict[str, np.ndarray]:
    """The per-sample table of `model` on `data` (this rank's shards), in float32: no
    autocast and no TF32, whatever the training precision, so that the final test,
    `evaluate` and `bast-cli report` give the same numbers for the same checkpoint (bf16
    would round every prediction to 8 bits of mantissa). Validation during training passes
    `training_precision` (the run's Context) and runs under its autocast and TF32 instead:
    it only ranks epochs, and in float32 it cost half a GPU epoch. Its columns: the labels,
    then what the data's target decodes from the output (`Target.decode`)."""
    model.eval()
    target = data.target
    keep = tuple(dict.fromkeys(("clip_id", "category", "env", "azimuth_deg") + tuple(target.label_columns)))
    rows: dict[str, list] = {}
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
            for k in keep:
                rows.setdefault(k, []).append(labels[k])
            for k, v in target.decode(pred, y).items():
                rows.setdefault(k, []).append(v)
    if not rows:  # no sample: the columns of the target, empty
        return {k: np.zeros(0) for k in keep + tuple(target.decode(
            torch.zeros(0, target.outputs), target.encode(torch.zeros(0, *target.label_shape))))}
    return {k: np.concatenate(v) for k, v in rows.items()}


def merge_shards(tables: list[dict], shards, world: int) -> dict[str, np.ndarray]:
    """The tables of `world` ranks, rank r having evaluated shards r, r + w, ... in order,
    joined back into the split's stored order."""
    cursors, pieces = [0] * world, []
    for i, s in enumerate(shards):
        r, n = i % world, s["samples"]
        pieces.append({k: v[cursors[r]:cursors[r] + n] for k, v in tables[r].items()})
        cursors[r] += n
    names = list(tables[0]) if tables else list(FIELDS)
    return {k: np.concatenate([p[k] for p in pieces]) if pieces else np.zeros(0) for k in names}


def table_metrics(table: dict, loss: Target | Callable | None = None) -> dict:
    """n and the target's headline figures (AD and MSE for directions, accuracy for
    classes), the loss over the whole table at once when given (a Target, or for the
    azimuth a loss function (pred, target)), and the same per environment."""
    n = len(table["azimuth_deg"])
    metrics = {"n": n, **headline(table)}
    if loss is not None and n:
        if isinstance(loss, Target):
            metrics["loss"] = loss.table_loss(table)
        else:
            pred = torch.from_numpy(np.stack([table["pred_x"], table["pred_y"]], axis=1).astype(np.float32))
            target = losses.azimuth_to_vector(torch.from_numpy(np.asarray(table["azimuth_deg"], dtype=np.float32)))
            metrics["loss"] = float(loss(pred, target))
    metrics["by_env"] = by_env(table)
    return metrics


def evaluate(model: torch.nn.Module, data: EvalData, ctx: Context, loss: Target | Callable | None = None,
             training_precision: bool = False) -> tuple[dict, dict]:
    """The headline metrics (docs/conventions.md) on a split, overall and per environment,
    and the per-sample table; float32, or under ctx's training precision when
    `training_precision` (validation; see `predict`). With several ranks each evaluates
    its shards (`EvalData(..., rank, world)`) and every rank gets the whole split's result,
    the same as one process's."""
    table = predict(model, data, ctx if training_precision else None)
    if data.world > 1:
        gathered: list = [None] * data.world
        dist.all_gather_object(gathered, table)
        table = merge_shards(gathered, data.sel.shards, data.world)
    return table_metrics(table, loss), table


def score_clips(model: torch.nn.Module, data: EvalData, ctx: Context,
                figures: Callable[[dict], dict]) -> tuple[dict, dict]:
    """The one metrics-table scorer of a checkpoint on clips, for the final test
    (eval/test.json) and `bast-cli evaluate` (eval/<set>/metrics.json): the predictions
    table of `model` on `data` in float32 (`evaluate`), the figures `figures(table)` makes
    of it (each file's own headline layout; it raises when they are no result), then the
    extra labels of the shards (head, room, snr_db where Stage 1 wrote them): `labels` and
    one breakdown `by_<label>` each, their columns added to the table. Returns (metrics,
    table)."""
    _, table = evaluate(model, data, ctx)
    metrics = figures(table)
    labels = extra_labels(data.sel.root, data.sel.shards)
    table.update(labels)
    metrics["labels"] = sorted(labels)
    for label in labels:
        metrics[f"by_{label}"] = by_label(table, label)
    return metrics, table


def final_test(run_dir: Path, test_sel: Selection, cfg: TrainConfig, ctx: Context) -> dict:
    """The best checkpoint on the test split: eval/test.json and eval/test_predictions.csv
    (SELD: eval/test.json and the DCASE CSVs of the test scenes, bast/model/evaluation/seld.py)."""
    model, _ = load_model(run_dir, "best", ctx.device)
    target = target_of(cfg)
    if target.scenes:
        from bast.model.data.scenes import SceneWindows
        from bast.model.evaluation.seld import seld_test

        data = SceneWindows(test_sel, cfg.window_frames, len(target.classes), ctx.device,
                            batch_size=cfg.eval_batch_size, distance=target.distance)
        return seld_test(model, data, ctx, target, run_dir / "eval",
                         {"checkpoint": "best", "best_by": cfg.best_by, "test_env": cfg.test_env})
    data = EvalData(test_sel, cfg.eval_batch_size, ctx.device, cfg.memory_budget_gb, target=target)
    metrics, table = score_clips(model, data, ctx, lambda table: _test_figures(table, cfg, run_dir, test_sel.root))
    (run_dir / "eval").mkdir(exist_ok=True)
    write_json(run_dir / "eval" / "test.json", metrics, METRIC_NOTES)
    save_predictions(table, run_dir / "eval" / "test_predictions.csv")
    return metrics


def _test_figures(table: dict, cfg: TrainConfig, run_dir: Path, root: Path) -> dict:
    """The figures of eval/test.json, in its layout: n, the headline and by_env
    (`table_metrics`), median AD, by_category, which checkpoint; a target other than the
    paper's azimuth adds its name and the rest of the table's summary."""
    metrics = table_metrics(table)
    if "ad_deg" in table:
        metrics["median_ad_deg"] = float(np.median(table["ad_deg"])) if len(table["ad_deg"]) else float("nan")
    metrics.update(by_category=by_category(table), checkpoint="best", test_env=cfg.test_env)
    if cfg.target != "azimuth":  # the paper's target keeps its test.json as it was
        metrics.update(target=cfg.target, **{k: v for k, v in summary(table).items() if k not in metrics})
    # A NaN is never a result: the headline figures present (AD for a direction, accuracy for
    # classes; a declared target may report others) must be finite numbers, over some samples.
    headline_ = [k for k in ("ad_deg", "mse", "accuracy", "loss") if metrics.get(k) is not None]
    if not metrics["n"] or not all(math.isfinite(float(metrics[k])) for k in headline_):
        raise DataError(f"{run_dir}: the test of checkpoints/best.pt on {root} gave "
                        f"{', '.join(f'{k} {metrics[k]}' for k in headline_) or 'no figures'} over {metrics['n']} "
                        "samples; nothing written to eval/test.json (non-finite spectra in the test shards? re-run "
                        "bast-cli featurize)")
    return metrics


def eval_device(device) -> torch.device:
    """One process's device for evaluation or localization (auto: a GPU when there is one);
    the same rules and messages as training's --device."""
    dev, _ = resolve_device(str(device), cuda_available=torch.cuda.is_available(),
                            device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return dev


def extra_labels(root: Path, shards) -> dict[str, np.ndarray]:
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


