"""`bast-cli report`: trained runs -> one self-contained HTML page, PNG figures, JSON and CSV.

    build_report(["runs/nsp-sub-mix", "runs/nsp-add-mix"], "report/")

Each run directory is what `bast-cli train` writes. A run without a stored test
evaluation is evaluated here (its best checkpoint on its test split).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bast import options
from bast.conventions import parse_environments
from bast.errors import ConfigError, DataError, MissingError
from bast.fileio import atomic_path, atomic_write_text, write_json
from bast.model.evaluation import evaluate
from bast.model.evaluation import runs as transfer
from bast.model.targets import metrics as ev
from bast.model.targets.names import METRIC_NOTES, on_scenes
from bast.report import figures, stats
from bast.report import seld as seldreport
from bast.report.paper import PAPER_BASELINES, PAPER_TABLE3, TABLE1_BY_BACKBONE

INTEGRATIONS = ("concat", "add", "sub")
BACKBONES = ("vit", "swin", "mamba")
LOSSES = ("mse", "ad", "mix")
MAX_SELD_TIMELINES = 3  # example test scenes drawn per SELD run
MAX_ROLLOUT_SAMPLES = 64  # attention rollout figures per run: each is a forward pass and a PNG
ENV_NAMES = {"anechoic": "AE (anechoic)", "hall": "RV (hall)"}


@dataclass
class Run:
    path: Path
    config: dict
    metrics: list
    test: dict
    pred: dict
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.path.name

    @property
    def seld(self) -> bool:
        """A SELD run (--target seld): scored on scenes, no per-sample table (report/seld.py)."""
        return on_scenes(self.config)

    @property
    def arch(self) -> str:
        return self.config.get("arch", "bast")

    @property
    def features(self) -> tuple[str, ...]:
        """The feature kinds the run read (older runs: the log power, and the phase when set)."""
        model = self.config["model"]
        names = list(model.get("features") or ("logpower",))
        if model.get("phase") and "phase" not in names:
            names.append("phase")
        return tuple(names)

    @property
    def phase(self) -> bool:
        return "phase" in self.features

    @property
    def train_minutes(self) -> float:
        """Training time over all epochs (validation excluded), from metrics.jsonl."""
        return sum(r.get("seconds", 0.0) for r in self.metrics) / 60

    @property
    def mode(self) -> str:
        if self.arch != "bast":
            return self.arch.upper()
        return "SP" if self.config["model"].get("shared", False) else "NSP"

    @property
    def loss(self) -> str:
        return {"hybrid": "mix"}.get(self.config["loss"], self.config["loss"])

    @property
    def integration(self) -> str:
        return self.config["model"].get("integration", "sub")

    @property
    def backbone(self) -> str:
        """The encoder (vit, swin, mamba); runs from before backbones are vit."""
        return self.config["model"].get("backbone", "vit")

    @property
    def train_env(self) -> str:
        envs = parse_environments(self.config.get("train_env", "RI"))
        return "both" if len(envs) > 1 else envs[0]

    @property
    def label(self) -> str:
        if self.seld:  # no azimuth loss or integration: the model and its encoder
            backbone = f" ({self.backbone})" if self.arch in ("bast", "ast") and self.backbone != "vit" else ""
            return f"{self.arch}{backbone} SELD ({self.name})"
        env = "" if self.train_env == "both" else f", trained {self.train_env}"
        model = f"{self.mode}-{self.integration.upper()}" if self.arch == "bast" else self.mode
        if self.backbone != "vit":
            model = f"{self.backbone.capitalize()}-{model}"
        target = self.config.get("target", "azimuth")
        task = "" if target == "azimuth" else f" -> {target}"
        return f"{model}-{self.loss.upper()}{''.join(f'+{k}' for k in self.features if k != 'logpower')}{task}{env} ({self.name})"


def load_run(path, device: str = "cpu") -> Run:
    path = Path(path)
    from bast.model.runs.checkpoint import read_metrics, read_run_config

    config = read_run_config(path)  # a missing or torn file: an error naming it
    rows = read_metrics(path)
    if on_scenes(config):  # its final test: eval/test.json and the DCASE CSVs of its scenes
        if not (path / "eval" / "test.json").exists() or not seldreport.csv_dirs(path)[0].is_dir():
            _evaluate(path, config, device)
        test = json.loads((path / "eval" / "test.json").read_text())
        return Run(path, config, [r for r in rows if "epoch" in r and "train_loss" in r], test, {})
    if not (path / "eval" / "test_predictions.csv").exists():
        _evaluate(path, config, device)
    test = json.loads((path / "eval" / "test.json").read_text())
    return Run(path, config, [r for r in rows if "epoch" in r and "train_loss" in r], test,
               ev.load_predictions(path / "eval" / "test_predictions.csv"))


def _evaluate(path: Path, config: dict, device: str) -> None:
    from bast.model.runs.config import TrainConfig
    from bast.model.data.loaders import Selection
    from bast.model.runs.runtime import Context

    if not (path / "checkpoints" / "best.pt").exists():
        raise MissingError(f"{path}: no stored evaluation and no checkpoints/best.pt to evaluate")
    cfg = TrainConfig.from_dict(config)
    evaluate.final_test(path, Selection.of(config["features_dir"], "test", cfg.test_env, cfg.model.features), cfg,
                  Context(device=evaluate.eval_device(device), amp_dtype=None))


# --------------------------------------------------------------------------- building


def _check_finite(run) -> None:
    """A run whose test predictions are missing or not finite (what it predicted: the
    pred_* columns and the angular distance) is refused: its training did not end well."""
    cols = [k for k in run.pred if k.startswith("pred_") or k == "ad_deg"]
    values = [np.asarray(run.pred[k]) for k in cols]
    n = len(values[0]) if values else 0
    bad = any(v.dtype.kind == "f" and not np.isfinite(v).all() for v in values)
    if not n or bad:
        raise DataError(f"{run.path}: {'no test predictions' if not n else 'test predictions that are not finite'}"
                        "; its training did not end with a usable test evaluation (bast-cli train writes it)")


# What a report writes in its folder besides CSV files: no run may lie there.
REPORT_OWNED = ("figures", "index.html", "summary.json")


def build_report(run_dirs, out_dir, rollout_samples: int = 2, device: str = "cpu",
                 per_set_figures: bool = False) -> tuple[Path, dict]:
    """Write REPORT/index.html (self-contained), figures/*.png, summary.json and CSVs.

    Runs evaluated on other data sets (`bast-cli evaluate`) add the generalisation
    matrix; `per_set_figures` adds a polar plot and per-category bars for each set."""
    out = Path(out_dir)
    device = str(evaluate.eval_device(device))  # auto, cpu, cuda, cuda:N; no CUDA is one clear error
    options.count(rollout_samples, "--rollout-samples", 0, MAX_ROLLOUT_SAMPLES)
    if not run_dirs:
        raise ConfigError("no runs given")
    options.output_dir(out, "--out", inputs=_report_inputs(run_dirs), owned=REPORT_OWNED)
    runs = _load_runs(run_dirs, device)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"runs": {}}
    seld_runs, runs = [r for r in runs if r.seld], [r for r in runs if not r.seld]
    sections = _runs_table(runs, out, summary)
    directions = [r for r in runs if "ad_deg" in r.pred]  # the azimuth figures: runs with a direction
    if directions:
        sections += _direction_sections(directions, fig_dir, out, summary, per_set_figures)
    sections += [_run_section(r, fig_dir) for r in runs]
    if seld_runs:
        sections += _seld_sections(seld_runs, fig_dir, out, summary)
    if rollout_samples:
        # rollout needs the ViT's global attention maps
        explained = next((r for r in runs if r.arch == "bast" and r.backbone == "vit"), None)
        if explained is not None:
            sections.append(_rollout_section(explained, fig_dir, rollout_samples, device))

    write_json(out / "summary.json", summary, METRIC_NOTES)
    page = _page(sections, out)
    atomic_write_text(out / "index.html", page)
    return out / "index.html", summary


def _report_inputs(run_dirs) -> list[tuple[str, str]]:
    """What a report reads: the runs, and the data each was trained on (attention rollout
    reads its test samples), named for messages. A run whose config cannot be read is
    named by `load_run` later."""
    inputs = []
    for p in run_dirs:
        inputs.append(("the run", p))
        try:
            data = json.loads((Path(p) / "config.json").read_text()).get("features_dir")
        except (OSError, ValueError, AttributeError):
            data = None
        if isinstance(data, str):
            inputs.append((f"the data of run {p}", data))
    return inputs


def _load_runs(run_dirs, device: str) -> list[Run]:
    """The runs, each with a usable test (a NaN is never a result: a run without finite test
    predictions is refused); runs of the same folder name (a/run, b/run) named apart."""
    runs = [load_run(p, device) for p in run_dirs]
    for r in runs:
        if r.seld:
            seldreport.check_stored_test(r.path, r.test)
        else:
            _check_finite(r)
    names = [r.path.name for r in runs]
    for r in runs:  # they keep apart in labels and files
        if names.count(r.path.name) > 1:
            r.name = f"{r.path.parent.name}-{r.path.name}"
    return runs


def _runs_table(runs: list[Run], out: Path, summary: dict) -> list[str]:
    """The clip runs at a glance (runs.csv), their summaries into summary["runs"]."""
    rows = []
    for r in runs:
        s = ev.summary(r.pred)
        summary["runs"][r.label] = {"path": str(r.path), "summary": s, "test": r.test, "config": r.config}
        rows.append([r.label, r.config.get("preset", ""), f"{r.config.get('parameters', 0):,}",
                     r.config.get("train_env", ""), str(len(r.metrics)),
                     *(f"{s[k]:{f}}" if k in s else "" for k, f in (("ad_deg", ".2f"), ("median_ad_deg", ".2f"),
                                                                    ("mse", ".4f"), ("front_back_rate", ".3f"))),
                     str(s["n"])])
    head = ["run", "preset", "parameters", "trained on", "epochs", "test AD (deg)", "median AD (deg)",
            "test MSE", "front-back confusions", "test samples"]
    if not runs:
        return []
    _write_csv(out / "runs.csv", head, rows)
    return [_section("Runs", "Test-set figures of each run's best checkpoint (lowest validation loss). "
                     "AD: angular distance between predicted and true direction; MSE: squared distance "
                     "between the (x, y) unit vectors (not halved; see docs/conventions.md).", _table(head, rows))]


def _direction_sections(runs: list[Run], fig_dir: Path, out: Path, summary: dict, per_set_figures: bool) -> list[str]:
    """The paper's tables and figures of the runs that predict a direction."""
    sections = [t for t in (_table1(runs, out),) if t]
    sections += [_models(runs, fig_dir, out), _per_azimuth(runs, fig_dir), _hemifields(runs, fig_dir, out, summary)]
    sections += [t for t in (_table3(runs, out), _generalisation(runs, fig_dir, out, summary, per_set_figures)) if t]
    return sections


def _table1(runs: list[Run], out: Path) -> str:
    """Table 1 of the paper: backbone x SP/NSP x loss x integration, AD and MSE, best AD in
    bold; the paper trained these on both rooms, so runs trained on one room go to Table 3
    instead. Published figures beside each cell: the paper's for the ViT, the BAST fork's
    for Mamba (AD only), none for Swin."""
    both = [r for r in runs if r.train_env == "both" and r.arch == "bast"] or [r for r in runs if r.arch == "bast"]
    if not both:
        return ""
    cells = {(r.backbone, r.mode, r.loss, r.integration): r for r in both}
    best = min(r.test["ad_deg"] for r in both)
    head = ["backbone", "mode", "loss"] + [i.upper() for i in INTEGRATIONS]
    rows, csv_rows = [], []
    for backbone in BACKBONES:
        published = TABLE1_BY_BACKBONE[backbone]
        source = "paper" if backbone == "vit" else "fork"
        for mode in ("NSP", "SP"):
            for loss in LOSSES:
                if not any((backbone, mode, loss, i) in cells for i in INTEGRATIONS):
                    continue
                row = [backbone, mode, {"mix": "hybrid"}.get(loss, loss).upper()]
                for i in INTEGRATIONS:
                    paper = published.get((mode, loss, i))
                    paper_txt = (f"{source} {paper[0]:.2f}" + (f" / {paper[1]:.3f}" if paper[1] is not None else "")
                                 if paper else "")
                    if (backbone, mode, loss, i) in cells:
                        r = cells[(backbone, mode, loss, i)]
                        ours = f"{r.test['ad_deg']:.2f} / {r.test['mse']:.4f}"
                        ours = f"<b>{ours}</b>" if r.test["ad_deg"] == best else ours
                        row.append(f"{ours}<br><small>{paper_txt}</small>")
                        csv_rows.append([mode, loss, i, r.test["ad_deg"], r.test["mse"], paper[0] if paper else "",
                                         paper[1] if paper and paper[1] is not None else "", backbone])
                    else:
                        row.append(f"<small>{paper_txt}</small>")
                rows.append(row)
    _write_csv(out / "table1.csv", ["mode", "loss", "integration", "ad_deg", "mse", "paper_ad_deg", "paper_mse",
                                    "backbone"], csv_rows)
    return _section("Table 1: backbone x integration x loss x parameter sharing",
                    "Test AD (deg) / MSE of these runs, best AD in bold, with the published figures for the same "
                    "cell: the paper's for the ViT backbone, the BAST fork's (Heterochromi/BAST, AD only) for "
                    "Mamba, none for Swin (their data: 4,600 real-life training sounds; the paper may report MSE "
                    "halved, as nn.MSELoss does). Cells without a run show the published value only.",
                    _table(head, rows, raw=True))


def _models(runs: list[Run], fig_dir: Path, out: Path) -> str:
    """Every run side by side, BAST and baselines, with the paper's quoted figures for the
    same model and loss (their data), and test AD against training time."""
    head = ["run", "model", "input", "loss", "parameters", "epochs", "training (min)", "test AD (deg)",
            "test MSE", "paper AD / MSE"]
    rows, csv_rows = [], []
    for r in sorted(runs, key=lambda r: r.test["ad_deg"]):
        if r.arch == "bast":
            paper = TABLE1_BY_BACKBONE[r.backbone].get((r.mode, r.loss, r.integration))
        else:
            paper = PAPER_BASELINES.get(({"cnn": "CNN", "ast": "FAViT"}.get(r.arch, ""), r.loss, None))
        quoted = (f"{paper[0]:.2f}" + (f" / {paper[1]:.3f}" if paper[1] is not None else "")) if paper else ""
        values = [r.label, r.arch if r.backbone == "vit" else f"{r.arch} ({r.backbone})", " + ".join("power" if k == "logpower" else k for k in r.features), r.loss,
                  r.config.get("parameters", 0), len(r.metrics), r.train_minutes, r.test["ad_deg"], r.test["mse"]]
        csv_rows.append(values + [paper[0] if paper else "", paper[1] if paper and paper[1] is not None else ""])
        rows.append(values[:4] + [f"{values[4]:,}", str(values[5]), f"{values[6]:.1f}", f"{values[7]:.2f}",
                                  f"{values[8]:.4f}", quoted])
    _write_csv(out / "models.csv", head[:-1] + ["paper_ad_deg", "paper_mse"], csv_rows)
    png = figures.accuracy_vs_time({r.label: (r.train_minutes, r.test["ad_deg"]) for r in runs},
                                   fig_dir / "accuracy_vs_time.png")
    return _section("Table 1, every model: BAST and the baselines side by side",
                    "Each run's test figures on its own data, best first, with its training time; "
                    "\"paper\" quotes the BAST paper's Table 1 for the same model and loss (BAST-NSP/SP; CNN; "
                    "FAViT, the paper's single-stream transformer, beside bast's ast; for BAST with the Mamba backbone, "
                    "the BAST fork's figures), on their data. The mlp "
                    "baseline (Tang et al. 2022) is not in the paper. \"phase\": the interaural phase as input "
                    "(featurize --phase).", _table(head, rows) + _img(png))


def _per_azimuth(runs: list[Run], fig_dir: Path) -> str:
    lines = {}
    for r in runs:
        t = ev.per_azimuth(r.pred)
        lines[r.label] = (t["azimuth_deg"], t["ad_deg"])
    png = figures.polar_ad(lines, fig_dir / "polar_ad.png", title="Angular distance per azimuth (test set)")
    _write_csv(fig_dir.parent / "per_azimuth.csv", ["run", "azimuth_deg", "ad_deg"],
               [[label, a, d] for label, (az, ad) in lines.items() for a, d in zip(az, ad)])
    return _section("Angular distance per azimuth (paper Fig. 2)",
                    "Mean test AD at each true azimuth, one line per run. The listener is seen from above, facing "
                    "up: 0° ahead, 90° left, 180° behind, 270° right.", _img(png))


def _hemifields(runs: list[Run], fig_dir: Path, out: Path, summary: dict) -> str:
    parts, csv_rows = [], []
    for metric, name in (("ad_deg", "AD (deg)"), ("sq_err", "MSE")):
        tests = stats.hemifield_tests({r.label: r.pred for r in runs}, metric=metric)
        summary.setdefault("hemifield", {})[metric] = {k: {kk: v[kk] for kk in ("t", "p", "p_adj", "n")}
                                                       for k, v in tests.items()}
        png = figures.hemifield_boxplots({k: (v["left"], v["right"], v["p_adj"]) for k, v in tests.items()},
                                         name, fig_dir / f"hemifield_{metric}.png",
                                         title=f"Left vs right hemifield, {name}")
        parts.append(_img(png))
        for k, v in tests.items():
            csv_rows.append([k, metric, v["n"], v["t"], v["p"], v["p_adj"]])
    head = ["run", "metric", "pairs", "t", "p", "p (BH-adjusted)"]
    _write_csv(out / "hemifield.csv", head, csv_rows)
    rows = [[r[0], r[1], str(r[2]), f"{r[3]:.2f}", f"{r[4]:.3g}", f"{r[5]:.3g}"] for r in csv_rows]
    return _section("Left vs right hemifield (paper Fig. 3, 4)",
                    "Errors at mirrored azimuths (a in 10..170° against 360 − a), paired per test sound (each "
                    "sound's mean over its mirrored pairs and rooms: one independent pair per sound). Two-sided "
                    "paired t-tests, Benjamini-Hochberg correction across the runs; t > 0: larger errors on the "
                    "left.", "".join(parts) + _table(head, rows))


def _table3(runs: list[Run], out: Path) -> str:
    """Train environment x test environment, when the runs trained on different ones."""
    if len({r.train_env for r in runs}) < 2:
        return ""
    head = ["trained on"] + [ENV_NAMES[e] for e in ("anechoic", "hall")]
    rows, csv_rows = [], []
    for r in runs:
        row = [f"{r.train_env} ({r.name})"]
        for e in ("anechoic", "hall"):
            m = r.test["by_env"].get(e)
            paper = PAPER_TABLE3.get((r.train_env, e))
            txt = f"{m['ad_deg']:.2f} / {m['mse']:.4f}" if m else "not tested"
            row.append(txt + (f"<br><small>paper {paper[0]:.2f}</small>" if paper else ""))
            csv_rows.append([r.label, r.train_env, e, m["ad_deg"] if m else "", m["mse"] if m else "",
                             paper[0] if paper else ""])
        rows.append(row)
    _write_csv(out / "table3.csv", ["run", "train_env", "test_env", "ad_deg", "mse", "paper_ad_deg"], csv_rows)
    return _section("Table 3: trained on one room, tested on the other",
                    "Test AD (deg) / MSE per test environment, with the paper's NSP-SUB-hybrid figures.",
                    _table(head, rows, raw=True))


def _generalisation(runs: list[Run], fig_dir: Path, out: Path, summary: dict, per_set_figures: bool) -> str:
    """Rows: runs; columns: the run's own test split, then every data set any run was
    evaluated on (RUN/eval/index.json); cells: AD / MSE. Table 3 is the special case of
    one room's data evaluated by runs trained on either room."""
    stored = {r.label: transfer.stored_evaluations(r.path) for r in runs}
    names: list[str] = []
    for sets in stored.values():
        names += [n for n in sets if n not in names]
    if not names:
        return ""
    cols = ["own test split"] + names
    ad = np.full((len(runs), len(cols)), np.nan)
    mse = np.full_like(ad, np.nan)
    rows, csv_rows = [], []
    for i, r in enumerate(runs):
        ad[i, 0], mse[i, 0] = r.test["ad_deg"], r.test["mse"]
        csv_rows.append([r.label, "own test split", r.config.get("features_dir", ""), "test", r.test["ad_deg"],
                         r.test.get("median_ad_deg", ""), r.test["mse"], r.test["n"]])
        for j, name in enumerate(names, start=1):
            m = stored[r.label].get(name)
            if m:
                ad[i, j], mse[i, j] = m["ad_deg"], m["mse"]
                csv_rows.append([r.label, name, m["features_dir"], m["split"], m["ad_deg"], m["median_ad_deg"],
                                 m["mse"], m["n"]])
        rows.append([r.label] + [f"{a:.2f} / {e:.4f}" if np.isfinite(a) else "not evaluated"
                                 for a, e in zip(ad[i], mse[i])])
    _write_csv(out / "generalisation.csv", ["run", "data_set", "features_dir", "split", "ad_deg", "median_ad_deg",
                                            "mse", "n"], csv_rows)
    summary["generalisation"] = {"columns": cols, "runs": [r.label for r in runs], "ad_deg": ad, "mse": mse}
    png = figures.generalisation_matrix(ad, [r.label for r in runs], cols, fig_dir / "generalisation.png", mse=mse)
    where = {n: next(s[n] for s in stored.values() if n in s) for n in names}
    notes = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(str(where[n]['features_dir']))}, split "
                    f"{html.escape(str(where[n]['split']))}, environments {html.escape(str(where[n]['envs']))}</li>"
                    for n in names)
    parts = [_table(["run"] + cols, rows), f"<ul>{notes}</ul>", _img(png)]
    if per_set_figures:
        parts += _per_set_figures(runs, names, fig_dir)
    return _section("Generalisation: runs x data sets",
                    "Test AD (deg) / MSE of each run's best checkpoint on its own test split and on every data set "
                    "it was evaluated on with <code>bast-cli evaluate RUN --on FEATURES</code> (another head, room, "
                    "noise level, recorded sounds). Table 3 (train room x test room) is the special case of "
                    "data sets of one room each. Numbers: generalisation.csv.", "".join(parts))


def _per_set_figures(runs: list[Run], names: list[str], fig_dir: Path) -> list[str]:
    """Per evaluated set: AD per azimuth (one line per run) and per-category bars per run."""
    parts = []
    for k, name in enumerate(names):
        lines, bars = {}, []
        for r in runs:
            if name not in transfer.stored_evaluations(r.path):
                continue
            m, _ = transfer.load_stored(r.path, name)
            pa = m["per_azimuth"]
            lines[r.label] = (pa["azimuth_deg"], pa["ad_deg"])
            if m.get("by_category"):
                bars.append(figures.category_bars(m["by_category"], fig_dir / f"set{k}_{r.name}_categories.png",
                                                  title=f"AD per sound category on {name}: {r.label}"))
        parts.append(_img(figures.polar_ad(lines, fig_dir / f"set{k}_polar_ad.png",
                                           title=f"Angular distance per azimuth on {name}")))
        parts += [_img(b) for b in bars]
    return parts


def _run_section(r: Run, fig_dir: Path) -> str:
    stem = r.name
    directions = "ad_deg" in r.pred  # a category-only run predicts no direction
    imgs = [figures.scatter_pred_vs_true(r.pred, fig_dir / f"{stem}_scatter.png", title=f"Predicted vs true azimuth: {r.label}"),
            figures.error_histogram(r.pred, fig_dir / f"{stem}_errors.png", title=f"Angular distance: {r.label}")
            ] if directions else []
    cats = ev.by_category(r.pred) if directions else {}
    if cats:
        imgs.append(figures.category_bars(cats, fig_dir / f"{stem}_categories.png",
                                          title=f"AD per sound category: {r.label}"))
    if r.metrics:
        imgs.append(figures.training_curves(r.metrics, fig_dir / f"{stem}_training.png", title=f"Training: {r.label}"))
    conditions = []  # the Stage 1 conditions the test split holds: heads, rooms, noise
    for label in r.test.get("labels", []):
        groups = ev.by_label(r.pred, label) if label in r.pred and directions else {}
        if len(groups) < 2:
            continue
        if label == "snr_db":
            imgs.append(figures.ad_by_value(groups, fig_dir / f"{stem}_ad_by_snr.png", "SNR (dB)",
                                            title=f"AD against SNR: {r.label}"))
        conditions.append(f"Per {label}: " + ", ".join(f"{k} {v['ad_deg']:.1f}° (n={v['n']})"
                                                        for k, v in sorted(groups.items())) + ".")
    s = ev.summary(r.pred)
    if "pred_elevation_deg" in r.pred:  # a run on the sphere
        imgs.insert(0, figures.sphere_error_map(ev.error_by_direction(r.pred), fig_dir / f"{stem}_sphere.png",
                                                title=f"Great-circle error over the sphere: {r.label}"))
        imgs.insert(1, figures.lateral_polar_scatter(r.pred, fig_dir / f"{stem}_lateral_polar.png",
                                                     title=f"Lateral and polar angles: {r.label}"))
        conf = ", ".join(f"{k} {v:.1f} %" for k, v in s["confusions_pct"].items())
        conditions.append(f"On the sphere: great-circle error {s['great_circle_deg']:.1f}°, azimuth "
                          f"{s['azimuth_error_deg']:.1f}°, elevation {s['elevation_error_deg']:.1f}°, lateral "
                          f"{s['lateral_error_deg']:.1f}°, polar {s['polar_error_deg']:.1f}°, quadrant error "
                          f"{s['quadrant_error_pct']:.1f} %; responses: {conf} (docs/sphere.md).")
    if "pred_category" in r.pred:
        classes, counts = ev.confusion_matrix(r.pred, r.config.get("classes") or None)  # every class the run knew
        imgs.append(figures.confusion_matrix(classes, counts, fig_dir / f"{stem}_confusion.png",
                                             title=f"Sound classes: {r.label}"))
        conditions.append(f"Sound classes: accuracy {s['accuracy']:.1%} (chance {s['chance_accuracy']:.1%}), "
                          f"macro F1 {s['macro_f1']:.3f}.")
    text = (" ".join(conditions) + " " if conditions else "") + ("" if not directions else f"Front-back confusion rate {s['front_back_rate']:.3f} (predictions nearer the front-back mirror of the "
            f"true azimuth than to it, 90° and 270° excluded). "
            + ("Per category: " + ", ".join(f"{c} {v['ad_deg']:.1f}°" for c, v in sorted(cats.items(), key=lambda kv: kv[1]['ad_deg']))
               + ". Broadband sounds carry interaural cues in every band; narrowband ones in a few." if cats else ""))
    return _section(f"Run {r.label}", text, "".join(_img(p) for p in imgs))


def _seld_sections(runs: list[Run], fig_dir: Path, out: Path, summary: dict) -> list[str]:
    """SELD runs: the DCASE scores beside "predict nothing" on the same test scenes, per
    class, on other data sets, and timelines of a few test scenes per run (docs/seld.md)."""
    sections = [_seld_scores(runs, out, summary), _seld_classes(runs, out)]
    other = _seld_other_sets(runs)
    if other:
        sections.append(other)
    return sections + [_seld_run_section(r, fig_dir) for r in runs]


def _seld_scores(runs: list[Run], out: Path, summary: dict) -> str:
    """Each SELD run's test scores beside "predict nothing" on its test scenes, by the
    same DCASE edition (seld.csv); into summary["seld"]."""
    head = ["run", "model", "backbone", "parameters", "epochs", "test scenes", "DCASE", "F20 (%)", "ER20",
            "LE / DOAE (deg)", "LR (%)", "RDE", "SELD score"]
    rows, csv_rows, nothing = [], [], {}
    summary["seld"] = {}
    for r in runs:
        t, edition = r.test, seldreport.edition_of(r.test)
        backbone = r.backbone if r.arch in ("bast", "ast") else ""
        values = [r.label, r.arch, backbone, r.config.get("parameters", 0), len(r.metrics), t["n"],
                  *(t[k] for k in seldreport.HEADLINE), edition, t.get("rde")]
        csv_rows.append(values)
        summary["seld"][r.label] = {"path": str(r.path), "test": t, "config": r.config}
        key = (seldreport.reference_key(r.path), edition)
        nothing.setdefault(key, (r, seldreport.predict_nothing(r.path, len(t["classes_list"]), edition)))
    for first, m in nothing.values():
        where = f" (test scenes of {first.name})" if len(nothing) > 1 else ""
        csv_rows.append([f"predict nothing{where}", "", "", 0, 0, m["n"], *(m[k] for k in seldreport.HEADLINE),
                         m["edition"], m.get("rde")])
        summary["seld"][f"predict nothing{where}"] = m
    for v in csv_rows:
        rows.append([*v[:3], f"{v[3]:,}", str(v[4]), str(v[5]), v[11], _cell(v[6], ".1f", 100), _cell(v[7], ".2f"),
                     _cell(v[8], ".1f"), _cell(v[9], ".1f", 100), _rde_cell(v[11], v[12]), _cell(v[10], ".3f")])
    # an undefined figure is an empty cell, never "nan"; rde is empty for DCASE 2023 too (no distance)
    _write_csv(out / "seld.csv", ["run", "model", "backbone", "parameters", "epochs", "scenes", "f20", "er20",
                                  "le_deg", "lr", "seld_score", "edition", "rde"],
               [[_defined(x) for x in v] for v in csv_rows])
    return _section("SELD: detection, classification and localization of every source over time",
                    "Each SELD run's best checkpoint on its test scenes, scored the DCASE task 3 way of the "
                    "edition in the DCASE column (docs/seld.md). 2023: F20 and ER20, the location-aware "
                    "F-score and error rate at 20°, on 1 s segments; LE and LR, the class-dependent "
                    "localization error and recall; SELD score = mean(ER, 1 − F, LE / 180, 1 − LR). 2024 (runs "
                    "whose rows carry distances): frame-wise, a hit also needs a relative distance error of at "
                    "most 1; DOAE the class-dependent DOA error, RDE the relative distance error |d̂ − d| / d; "
                    "SELD score = mean(1 − F, DOAE / 180, RDE). "
                    "Macro averages over classes; lower SELD scores are better. "
                    "\"predict nothing\": the same metrics on the reference CSVs with no prediction at all. "
                    "Numbers: seld.csv; the DCASE CSVs: RUN/eval/seld/{ref,pred} "
                    "(<code>bast-cli seld-metrics</code> scores them again).", _table(head, rows))


def _rde_cell(edition: str, value) -> str:
    """The relative distance error of a SELD result for a table: "-" where its edition
    (2023) scores no distance."""
    return "-" if edition == "2023" else _cell(value, ".3f")


def _defined(value):
    """A CSV cell: a number that is not finite (an undefined figure) as None (empty)."""
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _cell(value, spec: str, scale: float = 1.0) -> str:
    """A figure for a table; an undefined one (null, NaN) as "undefined"."""
    if value is None or not np.isfinite(float(value)):
        return "undefined"
    return format(scale * value, spec)


def _seld_classes(runs: list[Run], out: Path) -> str:
    """The scores per class of each SELD run's test (seld_classes.csv)."""
    head = ["run", "class", "reference tracks", "F20 (%)", "LE (deg)", "LR (%)", "RDE", "SELD", "TP", "FP", "FN"]
    rows, csv_rows = [], []
    for r in runs:
        edition = seldreport.edition_of(r.test)
        for c in r.test.get("classes", []):
            rde = c.get("RDE") if edition != "2023" else None
            csv_rows.append([r.label, c["class"], c["reference_tracks"], c["F"], c["LE"], c["LR"], _defined(rde), c["SELD"],
                             c["TP"], c["FP"], c["FN"]])
            rows.append([r.label, c["class"], str(c["reference_tracks"]), _cell(c["F"], ".1f", 100),
                         _cell(c["LE"], ".1f"), _cell(c["LR"], ".1f", 100), _rde_cell(edition, rde),
                         _cell(c["SELD"], ".3f"), str(c["TP"]), str(c["FP"]), str(c["FN"])])
    _write_csv(out / "seld_classes.csv", ["run", "class", "reference_tracks", "f20", "le_deg", "lr", "rde", "seld", "tp",
                                          "fp", "fn"], csv_rows)
    return _section("SELD per class", "F20, LE, LR, RDE (DCASE 2024: the class's relative distance error; "
                    "\"-\" in 2023, which scores no distance) and the class's SELD score (with the one ER of all "
                    "classes) on each run's test scenes; TP, FP (wrong place or extra track) and FN counted "
                    "over 1 s segments (DCASE 2023) or frames (2024; LE is then DOAE). Numbers: seld_classes.csv.", _table(head, rows))


def _seld_other_sets(runs: list[Run]) -> str:
    """The SELD runs' stored evaluations on other scenes (`bast-cli evaluate`); '' when none."""
    other = {r.label: seldreport.stored_sets(r.path) for r in runs}
    if not any(other.values()):
        return ""
    head = ["run", "data set", "split", "scenes", "DCASE", "F20 (%)", "ER20", "LE / DOAE (deg)", "LR (%)", "RDE",
            "SELD score"]
    rows = [[label, name, str(m.get("split")), str(m.get("n")), seldreport.edition_of(m), _cell(m["f20"], ".1f", 100),
             _cell(m["er20"], ".2f"), _cell(m["le_deg"], ".1f"), _cell(m["lr"], ".1f", 100),
             _rde_cell(seldreport.edition_of(m), m.get("rde")), _cell(m["seld_score"], ".3f")]
            for label, sets in other.items() for name, m in sets.items()]
    return _section("SELD runs on other data sets", "Stored results of <code>bast-cli evaluate RUN --on "
                    "SCENES</code> (RUN/eval/&lt;set&gt;/metrics.json and its seld/ CSVs).", _table(head, rows))


def _seld_run_section(r: Run, fig_dir: Path) -> str:
    """One SELD run: timelines of its first test scenes and its training curves."""
    classes = r.test["classes_list"]
    imgs = [figures.seld_timeline(pred, fig_dir / f"{r.name}_seld_{k}.png", classes, ref_rows=ref,
                                  title=f"{name}: {r.label}")
            for k, (name, ref, pred) in enumerate(seldreport.scene_rows(r.path, MAX_SELD_TIMELINES))]
    if r.metrics:
        imgs.append(figures.training_curves(r.metrics, fig_dir / f"{r.name}_training.png",
                                            title=f"Training: {r.label}"))
    t = r.test
    return _section(f"Run {r.label}", f"Test scenes: {t['n']}, {t['windows']} windows of "
                    f"{t['window_frames']} frames. Timelines of its first {len(imgs) - bool(r.metrics)} "
                    "test scenes: reference tracks as thick faded lines, predicted events as points, "
                    "one colour per class; azimuth (DCASE: counter-clockwise, 90° left) above, elevation "
                    "below.", "".join(_img(p) for p in imgs))


def _rollout_section(run: Run, fig_dir: Path, n: int, device: str) -> str:
    """Attention rollout of a few test samples, per layer and folded onto the spectrograms."""
    import torch

    from bast.model.runs.checkpoint import load_model
    from bast.model.data.loaders import Selection, model_input, read_shard
    from bast.report import rollout

    model, cfg = load_model(run.path, "best", device)
    sel = Selection.of(run.config["features_dir"], "test", cfg.test_env, cfg.model.features)
    chosen = _pick_samples(run.pred, n)
    offsets = np.cumsum([0] + [s["samples"] for s in sel.shards])
    geometry = rollout.fold_geometry(model.cfg)
    cls = bool(model.cfg.cls_token)
    parts = []
    for number, row in enumerate(chosen):
        k = int(np.searchsorted(offsets, row, side="right") - 1)
        shard = read_shard(sel.root / sel.shards[k]["path"], sel.features)
        spec = torch.from_numpy(shard["spec"][row - offsets[k]].astype(np.float32))[None]
        with torch.no_grad():
            pred, attn = model(model_input(spec, sel.features).to(device), return_attention=True)
        rolled = rollout.bast_rollout(attn)
        maps = {enc: rollout.fold_to_spectrogram(rollout.token_importance(rolled[enc][-1][0], cls), **geometry)
                for enc in ("left", "right", "center")}
        az = float(run.pred["azimuth_deg"][row])
        pa = float(np.degrees(np.arctan2(pred[0, 1].item(), pred[0, 0].item())) % 360)
        title = (f"{run.pred['category'][row] or 'sound'} {run.pred['clip_id'][row]}, {run.pred['env'][row]}, "
                 f"true {az:.0f}°, predicted {pa:.0f}°")
        stem = f"rollout_{number}"
        parts.append(_img(figures.rollout_figure(spec[0, :2].numpy(), maps["left"], maps["right"], fig_dir / f"{stem}.png",
                                               title=title, center_map=maps["center"])))
        parts.append(_img(figures.rollout_layers({e: [m[0] for m in rolled[e]] for e in rolled}, geometry["grid"],
                                                 fig_dir / f"{stem}_layers.png", title=f"Rollout per layer: {title}")))
    return _section(f"Attention rollout (paper Fig. 5, 6): {run.label}",
                    "Where the model looks. Rollout (Abnar & Zuidema 2020): per layer the head-averaged attention "
                    "plus the identity (the residual path), rows normalised, multiplied through the layers; TE-C "
                    "starts from the normalised sum of the TE-L and TE-R rollouts. A token's importance is its "
                    "mean weight over all query rows (BAST averages its tokens), spread over the spectrogram bins "
                    "its patch covers.", "".join(parts))


def _pick_samples(pred: dict, n: int) -> list[int]:
    """Test rows to explain: broadband noise at 90 and 270 deg where there is such, else the first rows."""
    rows = []
    for az in (90.0, 270.0, 0.0, 180.0):
        hit = np.flatnonzero((pred["azimuth_deg"] == az) & (pred["category"] == "white_noise"))
        if hit.size == 0:
            hit = np.flatnonzero(pred["azimuth_deg"] == az)
        if hit.size:
            rows.append(int(hit[0]))
        if len(rows) == n:
            break
    return rows or list(range(min(n, len(pred["azimuth_deg"]))))


# --------------------------------------------------------------------------- HTML


def _section(title: str, text: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2><p>{text}</p>{body}</section>"


def _table(head, rows, raw: bool = False) -> str:
    esc = (lambda x: x) if raw else html.escape
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'
            f'<figcaption>figures/{html.escape(Path(path).name)}</figcaption></figure>')


def _page(sections: list[str], out: Path) -> str:
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}"
             "img{max-width:100%;height:auto}figcaption{font-size:small;color:#666}section{margin-bottom:2.5em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>bast report</title><style>{style}</style>"
            f"</head><body><h1>bast report</h1><p>Azimuth convention (SOFA): 0° ahead, 90° left, 180° behind, "
            f"270° right. Numbers: summary.json, runs.csv, table1.csv, per_azimuth.csv, hemifield.csv "
            f"(SELD runs: seld.csv, seld_classes.csv).</p>"
            + "".join(sections) + "</body></html>")


def _write_csv(path: Path, head, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)

