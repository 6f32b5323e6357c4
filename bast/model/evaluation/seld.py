"""SELD evaluation: window outputs stitched back into whole scenes, decoded to DCASE rows,
scored with the DCASE 2023 metrics (bast/dcase/metrics.py; docs/seld.md).

Windows are cut every 25 STFT frames (two label frames) and one more ends at the scene's
end (bast/model/data/scenes.py); a label frame's output is the mean of the multi-ACCDOA
vectors that the windows holding it gave it (up to 3 with 61-frame windows), then
`seld.decode` keeps the tracks longer than 0.5 and merges same-class tracks closer than
15 degrees. Scores are counted over all scenes at once, as DCASE does over recordings,
and with the DCASE tool's rules, so that `bast-cli seld-metrics` on the CSVs written
beside them (eval/seld/ref, eval/seld/pred) gives the same numbers.

A target with distance (`seld-distance`) gives every row a sixth column, the distance (in
metres as decoded, in cm in the DCASE rows and files), and its metrics add the relative
distance error of DCASE 2024 (`relative_distance_error`); the DCASE 2023 scores read the
first five columns, as the 2023 tool does.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from scipy.optimize import linear_sum_assignment

from bast.errors import DataError
from bast.fileio import write_json
from bast.model.targets.names import METRIC_NOTES
from bast.model.runs.runtime import Context, autocast, full_precision
from bast.model.data.scenes import SceneWindows
from bast.model.targets.adpit import adpit_loss, decode
from bast.model.targets.core import Seld
from bast.dcase.files import dcase_rows, write_dcase_csv
from bast.dcase.metrics import SeldScores, reference_frames, score_recordings
from bast.sphere import great_circle_deg


@torch.no_grad()
def predict_windows(model: torch.nn.Module, data: SceneWindows, target: Seld,
                    training_precision: Context | None = None) -> tuple[torch.Tensor, float]:
    """Every window's output (W, frames, tracks, classes, 3) float32 on the host, and the
    sum of the per-window ADPIT losses. Float32 unless `training_precision` (validation)."""
    model.eval()
    scope = contextlib.ExitStack()
    if training_precision is None:
        scope.enter_context(full_precision())
        scope.enter_context(torch.autocast(data.device.type, enabled=False))
    else:
        scope.enter_context(autocast(training_precision))
    outputs, loss_sum = [], 0.0
    with scope:
        for x, y, _ in data.batches():
            pred = target.shaped(model(x).float())
            loss_sum += float(adpit_loss(pred, y)) * len(x)
            outputs.append(pred.cpu())
    if not outputs:
        return torch.zeros((0, *target.label_shape)), 0.0
    return torch.cat(outputs), loss_sum


def stitch(outputs: torch.Tensor, data: SceneWindows) -> list[np.ndarray]:
    """Per scene of `data`, (label frames, tracks, classes, 3): each label frame's mean
    output over the windows that hold it; zeros (silence) where none does."""
    return stitch_windows(outputs, data.windows[:, [0, 2]].tolist(), [s.label_frames for s in data.scenes])


def stitch_windows(outputs, placements, label_frames) -> list[np.ndarray]:
    """The stitching of `stitch` for any windows: `outputs` (W, frames, tracks, classes, 3)
    of windows placed at `placements` [(recording, first label frame), ...], into
    recordings of `label_frames` [n, ...] label frames (`bast-cli localize` on a SELD run
    stitches a recording's windows with it as evaluation stitches scenes')."""
    out = outputs.double().numpy() if isinstance(outputs, torch.Tensor) else np.asarray(outputs, dtype=np.float64)
    shape = out.shape[2:]
    sums = [np.zeros((n, *shape)) for n in label_frames]
    counts = [np.zeros(n) for n in label_frames]
    for (rec, first), o in zip(placements, out):
        stop = min(first + len(o), len(counts[rec]))
        sums[rec][first:stop] += o[:stop - first]
        counts[rec][first:stop] += 1
    return [s / np.maximum(c, 1)[:, None, None, None] for s, c in zip(sums, counts)]


def as_dcase(rows) -> np.ndarray:
    """Rows (n, 5), or (n, 6) with the distance in metres last, as a DCASE file holds them
    (bast.dcase.files.dcase_rows: whole numbers, the distance in cm), float64."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim == 2 and rows.shape[1] == 6:
        rows = np.column_stack([rows[:, :5], rows[:, 5] * 100.0])
    return dcase_rows(rows).astype(np.float64).reshape(-1, rows.shape[-1] if rows.ndim == 2 else 5)


def scene_results(model, data: SceneWindows, target: Seld, training_precision: Context | None = None) -> dict:
    """This rank's scenes: their names, environments, reference and predicted DCASE rows
    (with the distance in cm for a distance target), and the window loss sum and count."""
    outputs, loss_sum = predict_windows(model, data, target, training_precision)
    stitched = stitch(outputs, data)
    columns = 6 if target.distance else 5
    return {"names": [s.name for s in data.scenes], "envs": [s.env for s in data.scenes],
            # as the DCASE files hold them (whole degrees, cm), so the files score as the run did
            "ref": [as_dcase(s.rows[:, :columns]) for s in data.scenes],
            "pred": [as_dcase(decode(o)) for o in stitched],
            "loss_sum": loss_sum, "windows": len(outputs)}


def gather_results(results: dict, world: int) -> dict:
    """Every rank's scene results joined (DDP); one rank's as they are."""
    if world == 1:
        return results
    gathered: list = [None] * world
    dist.all_gather_object(gathered, results)
    joined = {k: [x for g in gathered for x in g[k]] for k in ("names", "envs", "ref", "pred")}
    joined.update(loss_sum=sum(g["loss_sum"] for g in gathered), windows=sum(g["windows"] for g in gathered))
    return joined


def relative_distance_error(recordings, n_classes: int) -> tuple[float, np.ndarray]:
    """The relative distance error of DCASE 2024 task 3 (RDE, class-dependent) of
    (reference rows, predicted rows) pairs, DCASE rows (n, 6) with the distance last (any
    unit, the same in both): overall, and per class (NaN for a class without a pair).

    bast's own until bast.dcase scores the 2024 edition, after the 2024 baseline's
    `SELDMetrics.update_seld_scores` with eval_dist (partha2409/DCASE2024_seld_baseline,
    SELD_evaluation_metrics.py): frame by frame, not in 1 s segments, over the reference's
    frames (its largest frame index, `reference_frames`); in each frame and class that both
    hold, reference and predicted events paired by the Hungarian algorithm on their angle;
    every pair counts (its DE_TP), within 20 degrees or not: |d_pred - d_ref| / d_ref. Per
    class the mean over its pairs; overall the mean over the classes that have any, as its
    macro average (np.nanmean); NaN when no class has a pair."""
    total, pairs = np.zeros(n_classes), np.zeros(n_classes)
    for ref, pred in recordings:
        n_frames = reference_frames(ref, pred)
        ref, pred = ref[ref[:, 0] < n_frames], pred[pred[:, 0] < n_frames]
        for frame, cls in sorted({(f, c) for f, c in ref[:, :2].astype(np.int64).tolist()}):
            r = ref[(ref[:, 0] == frame) & (ref[:, 1] == cls)]
            p = pred[(pred[:, 0] == frame) & (pred[:, 1] == cls)]
            if not len(p):
                continue
            az1, el1, az2, el2 = np.broadcast_arrays(r[:, None, 3], r[:, None, 4], p[None, :, 3], p[None, :, 4])
            i, j = linear_sum_assignment(great_circle_deg(az1, el1, az2, el2))
            # (d_ref + eps), as the reference: a reference at distance 0 gives a huge error, not a division by 0
            total[cls] += np.sum(np.abs(p[j, 5] - r[i, 5]) / (r[i, 5] + np.finfo(np.float64).eps))
            pairs[cls] += len(i)
    per_class = np.where(pairs > 0, total / np.maximum(pairs, 1), np.nan)
    return (float(np.nanmean(per_class)) if pairs.any() else math.nan), per_class


def metrics_of(results: dict, classes, distance: bool = False) -> dict:
    """The DCASE scores of scene results, overall, per class (by name) and per environment;
    with `distance` (rows of 6 columns), the relative distance error too (`rde`, per class
    `RDE`)."""
    n_classes = len(classes)

    def score(keep) -> tuple[dict, SeldScores | None, np.ndarray | None]:
        pairs = [(r, p) for r, p, k in zip(results["ref"], results["pred"], keep) if k]
        if not pairs:
            return {"n": 0}, None, None
        s = score_recordings([(r[:, :5], p[:, :5]) for r, p in pairs], n_classes)  # DCASE 2023: 5 columns
        out = {"n": len(pairs), "er20": s.er, "f20": s.f, "le_deg": s.le, "lr": s.lr, "seld_score": s.seld,
               **({"note": s.note} if s.note else {})}
        rde = None
        if distance:
            out["rde"], rde = relative_distance_error(pairs, n_classes)
        return out, s, rde

    overall, scores, rde = score([True] * len(results["names"]))
    metrics = {**overall, "loss": results["loss_sum"] / results["windows"] if results["windows"] else math.nan,
               "windows": results["windows"]}
    if scores is not None:
        d = scores.to_dict()
        metrics["classes"] = [{**c, "class": classes[c["class"]], **({"RDE": rde[c["class"]]} if distance else {})}
                              for c in d["classes"]]
        metrics.update({k: d[k] for k in ("substitutions", "deletions", "insertions")})
    metrics["by_env"] = {env: score([e == env for e in results["envs"]])[0] for env in sorted(set(results["envs"]))}
    return metrics


def seld_evaluate(model, data: SceneWindows, ctx: Context, target: Seld,
                  training_precision: bool = False) -> tuple[dict, dict]:
    """The SELD metrics of `model` on the scenes of `data` (every rank's, gathered), and the
    scene results (rows per scene)."""
    results = gather_results(scene_results(model, data, target, ctx if training_precision else None), data.world)
    return metrics_of(results, target.classes, target.distance), results


def write_dcase(results: dict, out_dir: Path) -> None:
    """eval/seld/ref/NAME.csv and eval/seld/pred/NAME.csv per scene, NAME = scene id and
    environment: `bast-cli seld-metrics out/ref out/pred` scores them as the run did."""
    for part in ("ref", "pred"):
        (out_dir / part).mkdir(parents=True, exist_ok=True)
        keep = set(results["names"])
        # files of scenes this evaluation does not hold (an earlier one on other data) would
        # be scored with these by `seld-metrics` on the folders: removed
        for stale in (out_dir / part).glob("*.csv"):
            if stale.stem not in keep:
                stale.unlink()
    for name, ref, pred in zip(results["names"], results["ref"], results["pred"]):
        write_dcase_csv(out_dir / "ref" / f"{name}.csv", ref)
        write_dcase_csv(out_dir / "pred" / f"{name}.csv", pred)


def seld_test(model, data: SceneWindows, ctx: Context, target: Seld, out_dir: Path, extra: dict,
              metrics_file: str = "test.json") -> dict:
    """The final test of a SELD run (or `evaluate` on other scenes): out_dir/test.json
    (metrics, per class and environment, `extra`; `evaluate` names it metrics.json) and
    the DCASE CSVs under out_dir/seld, written before the metrics file that vouches for them."""
    metrics, results = seld_evaluate(model, data, ctx, target)
    # ER (and the SELD score) alone may be undefined: test scenes without events (null in JSON, with a note)
    if not metrics["n"] or not all(math.isfinite(float(metrics[k])) for k in ("loss", "f20", "le_deg", "lr")):
        raise DataError(f"the SELD test on {data.sel.root} gave loss {metrics.get('loss')} over {metrics['n']} "
                        "scenes; nothing written (non-finite spectra? re-run bast-cli featurize)")
    metrics.update(target=target.name, classes_list=list(target.classes), window_frames=data.length,
                   label_frames_per_window=data.label_frames, **extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_dcase(results, out_dir / "seld")
    write_json(out_dir / metrics_file, metrics, METRIC_NOTES)
    return metrics
