"""A run on any data set: `bast-cli evaluate RUN --on FEATURES`, and its cache."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np

from bast import options
from bast.conventions import parse_environments
from bast.errors import ConfigError, DataError, MissingError
from bast.fileio import sha256_file, write_json
from bast.model.runs.checkpoint import load_model, read_metrics, read_run_config
from bast.model.data.loaders import EvalData, Selection, data_classes
from bast.model.evaluation.evaluate import eval_device, score_clips
from bast.model.targets.metrics import load_predictions, per_azimuth, per_azimuth_by_env, save_predictions, summary
from bast.model.runs.runtime import Context
from bast.model.data.manifest import (check_spectrogram_params, current_spectrogram_params, data_sha256, features_manifest, is_scenes_manifest, spectrogram_params,
                                      window_spectrogram_params)
from bast.model.targets.core import target_of
from bast.model.targets.names import METRIC_NOTES, on_scenes
from bast.pipeline.features import kinds as featurekinds

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


def trained_spectrogram_params(run_dir) -> dict:
    """The spectrogram parameters a run was trained on: from its training features'
    manifest (config.json names the folder), else as recorded at an earlier evaluation,
    else (the training data gone) the parameters of this version of bast."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    manifest_path = Path(config.get("features_dir", "")) / "manifest.json"
    if config.get("features_dir") and manifest_path.exists():
        return spectrogram_params(features_manifest(manifest_path.parent))
    index = _read_index(run_dir)
    return index.get("trained_spectrogram") or current_spectrogram_params()


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
    # what evaluate writes, RUN/eval, is never the data it reads nor inside it
    options.output_dir(run_dir / "eval", "the run's evaluation folder", inputs=[("--on", features_dir)])
    config = read_run_config(run_dir)
    ckpt = run_dir / "checkpoints" / "best.pt"
    if not ckpt.exists():
        raise MissingError(f"{run_dir}: no checkpoints/best.pt to evaluate (a run that has not finished an epoch?)")
    manifest = features_manifest(features_dir)
    seld = _check_data_kind(run_dir, config, features_dir, manifest)
    trained = trained_spectrogram_params(run_dir)
    params = window_spectrogram_params if seld else (lambda p: p)  # scenes: their length is not the window's
    check_spectrogram_params(params(trained), params(spectrogram_params(manifest)), features_dir, run_dir)
    env_list = list(parse_environments(envs)) if envs else None
    name = eval_name(features_dir, split, env_list)
    out = run_dir / "eval" / name
    keys = {"features_dir": str(features_dir), "data_sha256": data_sha256(manifest), "split": split,
            "envs": env_list or "all", "checkpoint_sha256": sha256_file(ckpt)}
    stored = None if force else _stored_result(out, keys, seld)
    if stored is not None:
        _add_to_index(run_dir, name, stored, trained)
        return {**stored, "reused": True}

    shards = _eval_shards(manifest, features_dir, split, env_list)
    dev = eval_device(device)
    model, cfg = load_model(run_dir, "best", dev)
    featurekinds.require(manifest, cfg.model.features, features_dir, str(run_dir))
    sel = Selection(features_dir, shards, cfg.model.features).verify()
    ctx = Context(device=dev, amp_dtype=None)  # float32: a judgement, not a race
    head = {**keys, "name": name, "run_dir": str(run_dir.resolve()), "checkpoint": str(ckpt),
            "checkpoint_mtime": ckpt.stat().st_mtime, "checkpoint_epoch": _checkpoint_epoch(run_dir),
            "trained_on": config.get("features_dir"), "spectrogram": spectrogram_params(manifest)}
    result = (_evaluate_seld if seld else _evaluate_clips)(run_dir, out, model, cfg, sel, ctx, head)
    _add_to_index(run_dir, name, result, trained)
    return {**result, "reused": False}


def _check_data_kind(run_dir: Path, config: dict, features_dir: Path, manifest: dict) -> bool:
    """Whether the run works on scenes (`on_scenes`), after checking that the data holds
    what it reads: scenes for a scene target, clips for the others."""
    seld, scenes = on_scenes(config), is_scenes_manifest(manifest)
    if seld and not scenes:
        raise DataError(f"{features_dir} holds clips, and run {run_dir} is a SELD run (--target seld): evaluate it "
                        "on featurized scenes (bast-cli scenes, then featurize; docs/seld.md)")
    if scenes and not seld:
        raise DataError(f"{features_dir} holds scenes, and run {run_dir} was trained on single-source clips "
                        f"(--target {config.get('target', 'azimuth')}): only a SELD run (--target seld) reads "
                        "scenes; evaluate this run on featurized clips")
    return seld


def _stored_result(out: Path, keys: dict, seld: bool) -> dict | None:
    """The stored metrics of out/ when they are still valid (all files there, the same `keys`)."""
    written = ("metrics.json", "seld") if seld else ("metrics.json", "predictions.csv")
    if not all((out / w).exists() for w in written):
        return None
    try:
        old = json.loads((out / "metrics.json").read_text())
    except ValueError:
        return None
    return old if all(old.get(k) == v for k, v in keys.items()) else None


def _eval_shards(manifest: dict, features_dir: Path, split: str, env_list) -> tuple:
    """The shards of `split` ('all': every split) in `env_list` (None: all) that hold samples."""
    splits = ("train", "val", "test") if split == "all" else (split,)
    shards = tuple(s for s in manifest["shards"]
                   if s["split"] in splits and (env_list is None or s["env"] in env_list) and s["samples"])
    if not shards:
        have = manifest.get("totals", {}).get("samples_by_split", {})
        raise DataError(f"{features_dir}: no {split} samples" + (f" in {', '.join(env_list)}" if env_list else "")
                        + f" (it holds {', '.join(f'{k} {v}' for k, v in have.items()) or 'none'}); "
                        "choose another --split or --env")
    return shards


def _evaluate_clips(run_dir: Path, out: Path, model, cfg, sel: Selection, ctx: Context, head: dict) -> dict:
    """A clip run on clips: out/metrics.json and out/predictions.csv (`score_clips`, as the final test)."""
    data = EvalData(sel, cfg.eval_batch_size, ctx.device, cfg.memory_budget_gb, target=target_of(cfg))
    result, table = score_clips(model, data, ctx, lambda table: _set_figures(table, head, run_dir, sel.root))
    out.mkdir(parents=True, exist_ok=True)
    save_predictions(table, out / "predictions.csv")
    write_json(out / "metrics.json", result, METRIC_NOTES)
    return result


def _set_figures(table: dict, head: dict, run_dir: Path, root: Path) -> dict:
    """The figures of an evaluation's metrics.json, in its layout: `head` (what was evaluated
    on what), when, the table's summary and AD per azimuth (overall and per environment)."""
    predicted = [np.asarray(v) for k, v in table.items() if k.startswith("pred_") or k == "ad_deg"]
    broken = sum(int((~np.isfinite(v)).sum()) for v in predicted if v.dtype.kind == "f")
    if broken or not predicted or not len(predicted[0]):  # a NaN is never a result
        raise DataError(f"{run_dir}: {broken} predicted values on {root} are not finite numbers (NaN or Inf "
                        f"weights in {head['checkpoint']}?); nothing written. Train the run again")
    figures = {**head, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary(table),
               **({"per_azimuth": _lists(per_azimuth(table)),
                   "per_azimuth_by_env": {e: _lists(t) for e, t in per_azimuth_by_env(table).items()}}
                  if "ad_deg" in table else {})}
    if isinstance(figures.get("front_back_rate"), float) and not np.isfinite(figures["front_back_rate"]):
        figures["front_back_rate"] = None  # absent: every sample at 90 or 270 deg, where it is undefined
    return figures


def _evaluate_seld(run_dir: Path, out: Path, model, cfg, sel: Selection, ctx: Context, head: dict) -> dict:
    """A SELD run on scenes: what its final test writes (bast/model/evaluation/seld.py `seld_test`),
    here out/metrics.json and the DCASE CSVs under out/seld/{ref,pred}."""
    from bast.model.data.scenes import SceneWindows
    from bast.model.evaluation.seld import seld_test

    target = target_of(cfg)
    classes = data_classes(sel.root)
    if classes != tuple(target.classes):  # a row's class is an index into the list: another list mislabels rows
        raise DataError(f"{sel.root}: its scenes have the classes {', '.join(classes) or 'none'}, run {run_dir} was "
                        f"trained on {', '.join(target.classes)}; SELD evaluation needs scenes of the same classes")
    data = SceneWindows(sel, cfg.window_frames, len(target.classes), ctx.device, batch_size=cfg.eval_batch_size,
                        distance=target.distance)
    (out / "metrics.json").unlink(missing_ok=True)  # no metrics file vouches for CSVs half rewritten
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return seld_test(model, data, ctx, target, out, {**head, "created": created}, metrics_file="metrics.json")


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



def _checkpoint_epoch(run_dir: Path):
    rows = read_metrics(run_dir)
    losses_ = [(r["val_loss"], r["epoch"]) for r in rows if r.get("val_loss") is not None]
    return min(losses_)[1] if losses_ else None


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
    headline = ("target", "edition", "f20", "er20", "le_deg", "lr", "seld_score",
                *(("rde",) if "rde" in metrics else ())) if on_scenes(metrics) else (
        "ad_deg", "median_ad_deg", "mse", "front_back_rate")
    sets[name] = {k: metrics.get(k) for k in ("features_dir", "split", "envs", "data_sha256", "n", *headline,
                                              "created")}
    sets[name]["metrics"] = f"eval/{name}/metrics.json"
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "eval" / "index.json", index, METRIC_NOTES)

