"""SELD evaluation: window outputs stitched back into whole scenes, decoded to DCASE rows,
scored with the DCASE metrics of the target's edition (bast/dcase/: 2023 for `seld`, 2024
for `seld-distance`, whose rows carry a distance; recorded as "edition"; docs/seld.md).

Windows are cut every 25 STFT frames (two label frames) and one more ends at the scene's
end (bast/model/data/scenes.py); a label frame's output is the mean of the multi-ACCDOA
vectors that the windows holding it gave it (up to 3 with 61-frame windows), then
`seld.decode` keeps the tracks longer than 0.5 and merges same-class tracks closer than
15 degrees. Scores are counted over all scenes at once, as DCASE does over recordings,
and with the DCASE tool's rules, so that `bast-cli seld-metrics` on the CSVs written
beside them (eval/seld/ref, eval/seld/pred) gives the same numbers.

A target with distance (`seld-distance`) gives every row a sixth column, the distance (in
metres as decoded, in cm in the DCASE rows and files), and is scored by DCASE 2024
(bast/dcase/dcase2024.py: a hit also needs a relative distance error of at most 1; the DOA
error, relative distance error `rde` and distance error; its SELD score, which picks the
best checkpoint); `seld` rows have five columns and are scored by DCASE 2023.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bast.errors import DataError
from bast.fileio import write_json
from bast.model.targets.names import METRIC_NOTES
from bast.model.runs.runtime import Context, autocast, full_precision
from bast.model.data.scenes import SceneWindows
from bast.model.targets.adpit import adpit_loss, decode
from bast.model.targets.core import Seld
from bast.dcase.editions import rows_edition
from bast.dcase.files import dcase_rows, write_dcase_csv
from bast.dcase.frames import FRAME_NOTES, NO_PAIR_NOTE, FrameScores
from bast.dcase.metrics import SeldScores, score_recordings


# The notes of undefined figures: a run's (DCASE 2024's localization errors without pairs
# among them), and per class by the edition's plain names and the report's LE.
NOTES = {**METRIC_NOTES, **FRAME_NOTES, "LE": NO_PAIR_NOTE}
# What an edition may leave undefined by its own definition (null with a note), so that a
# validation epoch is not marked non-finite for it: DCASE 2024's DOA and distance errors
# while no prediction pairs with a reference event (an early epoch that predicts nothing),
# and the error rate (with 2023's SELD score) of scenes without events.
MAY_BE_UNDEFINED = ("le_deg", "rde", "distance_error_m", "er20", "seld_score")


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


def metrics_of(results: dict, classes, edition: str | None = None) -> dict:
    """The DCASE scores of scene results, overall, per class (by name) and per environment,
    by `edition` ("edition"; None: the newest the rows allow, 2024 when every reference
    and predicted row carries a distance, a sixth column in cm, else 2023). The headline
    keys are the same in both (f20, er20, le_deg: DOAE in 2024, lr, seld_score: each
    edition's own); 2024 adds rde and distance_error_m (per class, RDE)."""
    n_classes = len(classes)
    if edition is None:
        edition = rows_edition(zip(results["ref"], results["pred"]))

    def score(keep) -> tuple[dict, SeldScores | FrameScores | None]:
        pairs = [(r, p) for r, p, k in zip(results["ref"], results["pred"], keep) if k]
        if not pairs:
            return {"n": 0}, None
        # 2023 reads the first five columns, as its tool does
        s = score_recordings([(r[:, :5], p[:, :5]) if edition == "2023" else (r, p) for r, p in pairs], n_classes,
                             edition=edition)
        head = {"n": len(pairs), "er20": s.er, "f20": s.f, "lr": s.lr, "seld_score": s.seld}
        if edition == "2023":
            head["le_deg"] = s.le
        else:
            head.update(le_deg=s.doa_error, rde=s.relative_distance_error, distance_error_m=s.distance_error_m)
        return {**head, **({"note": s.note} if s.note else {})}, s

    overall, scores = score([True] * len(results["names"]))
    metrics = {"edition": edition, **overall,
               "loss": results["loss_sum"] / results["windows"] if results["windows"] else math.nan,
               "windows": results["windows"]}
    if scores is not None:
        d = scores.to_dict()
        metrics["classes"] = [{**_report_keys(c), "class": classes[c["class"]]} for c in d["classes"]]
        metrics.update({k: d[k] for k in ("substitutions", "deletions", "insertions")})
    metrics["by_env"] = {env: score([e == env for e in results["envs"]])[0] for env in sorted(set(results["envs"]))}
    return metrics


def _report_keys(c: dict) -> dict:
    """A class's scores with the keys `bast-cli report` reads in every edition (F, LE, LR,
    SELD, reference_tracks: DCASE 2023's names; RDE) beside the edition's plain names."""
    if "F" in c:
        return c
    return {**c, "F": c["f_score"], "LE": c["doa_error_deg"], "LR": c["localization_recall"], "SELD": c["seld_score"],
            "RDE": c["relative_distance_error"], "reference_tracks": c["reference_events"]}


def seld_evaluate(model, data: SceneWindows, ctx: Context, target: Seld,
                  training_precision: bool = False) -> tuple[dict, dict]:
    """The SELD metrics of `model` on the scenes of `data` (every rank's, gathered), and the
    scene results (rows per scene)."""
    results = gather_results(scene_results(model, data, target, ctx if training_precision else None), data.world)
    return metrics_of(results, target.classes, edition="2024" if target.distance else "2023"), results


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
    # ER (and the SELD score) alone may be undefined: test scenes without events (null in JSON, with a note);
    # so may DCASE 2024's DOA error, when no prediction pairs with a reference event
    needed = ("loss", "f20", "lr") + (("le_deg",) if metrics["edition"] == "2023" else ())
    if not metrics["n"] or not all(math.isfinite(float(metrics[k])) for k in needed):
        raise DataError(f"the SELD test on {data.sel.root} gave loss {metrics.get('loss')} over {metrics['n']} "
                        "scenes; nothing written (non-finite spectra? re-run bast-cli featurize)")
    metrics.update(target=target.name, classes_list=list(target.classes), window_frames=data.length,
                   label_frames_per_window=data.label_frames, **extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_dcase(results, out_dir / "seld")
    write_json(out_dir / metrics_file, metrics, NOTES)
    return metrics
