"""SELD with source distance on a CPU: bast, seldnet and ast trained with
`--target seld-distance` (a) from a fixed set's Stage 2 and (b) on the fly from its scenes
folder, scored by the DCASE 2023, 2024 and 2025 editions (docs/seld.md, "With distance: a
fixed set against scenes on the fly").

    python benchmarks/study_seld_distance.py --out DIR [--models bast,seldnet,ast]
                                             [--variants fixed,fly,fixed-seld] [--epochs 8]

Runs, one after another, the exact commands below (printed as they start): the scenes
(hall, sources 1-3 m away), their Stage 2, then per model and variant a training into
DIR/runs/<model>-<variant>-e<epochs> (`fixed-seld`: a control, the fixed set with
`--target seld`, no distance), `bast-cli evaluate` on the Stage 2's test scenes, the
edition's `seld-metrics`, the three editions' scores (benchmarks/seld_editions.py), and the
baselines: predict nothing, and a constant distance (the mean distance of the training
label rows) on perfect detections and on each run's own detections. Resumable: a finished
step is skipped (a training that was cut off is resumed with --resume, its wall time added
up). Each invocation merges its runs into DIR/study.json and prints the table of all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import h5py

from bast.model.evaluation.runs import eval_name

HERE = Path(__file__).resolve().parent
SCENES = ("bast-cli scenes default {s1} --categories white_noise,harmonic,clicks --sounds 60 --count 240 "
          "--duration 5 --events 2:6 --max-overlap 2 --moving 0.5 --env hall --distance 1:3 --seed 0")
FEATURIZE = "bast-cli featurize {s1} {s2}"
TRAIN = {"fixed": "bast-cli train {s2} --out {run} --model {model} --target seld-distance --epochs {epochs} "
                  "--device cpu --seed 0",
         "fly": "bast-cli train {s1} --on-the-fly --out {run} --model {model} --target seld-distance "
                "--epochs {epochs} --device cpu --seed 0",
         # a control: the same fixed set without the distance output (scored by DCASE 2023 only)
         "fixed-seld": "bast-cli train {s2} --out {run} --model {model} --target seld --epochs {epochs} "
                       "--device cpu --seed 0"}
EVALUATE = "bast-cli evaluate {run} --on {s2} --device cpu"
CHECK = "bast-cli seld-metrics {seld}/ref {seld}/pred --edition {edition} --classes 3 --json {run}/seld-metrics-{edition}.json"
EDITIONS = sys.executable + " " + str(HERE / "seld_editions.py") + " {seld}/ref {seld}/pred --work {work} --json {json}"


def sh(template: str, **kw) -> float:
    """Run one command (its words formatted from `kw`), echoed first; its wall time in s."""
    cmd = template.format(**{k: str(v) for k, v in kw.items()})
    print("$", cmd, flush=True)
    t = time.perf_counter()
    subprocess.run(shlex.split(cmd), check=True)
    return time.perf_counter() - t


def mean_training_distance(s1: Path) -> float:
    """The mean distance (m) over the label rows (one per active event and 100 ms frame) of
    the training scenes: the constant an MSE-trained distance output would learn."""
    total, n = 0.0, 0
    for shard in sorted((s1 / "shards").glob("*.h5")):
        with h5py.File(shard, "r") as h:
            labels, offsets = h["labels"][:], h["label_offsets"][:]
            for i, split in enumerate(h["split"][:].astype(str)):
                if split == "train":
                    total += float(labels[offsets[i]:offsets[i + 1], 5].sum())
                    n += int(offsets[i + 1] - offsets[i])
    return total / n


def train_run(s1: Path, s2: Path, run: Path, model: str, variant: str, epochs: int) -> float:
    """Train (or resume) one run; its wall time in s, summed over the invocations."""
    wall = run / "wall_s.json"
    if (run / "eval" / "test.json").exists() and wall.exists():
        return sum(json.loads(wall.read_text()))
    times = json.loads(wall.read_text()) if wall.exists() else []
    resume = " --resume" if (run / "checkpoints" / "last.pt").exists() else ""
    times.append(sh(TRAIN[variant] + resume, s1=s1, s2=s2, run=run, model=model, epochs=epochs))
    wall.write_text(json.dumps(times) + "\n")
    return sum(times)


def score_run(s2: Path, run: Path, mean_d: float, distance: bool = True) -> dict:
    """evaluate on the Stage 2's test scenes, then the three editions of its CSVs, and the
    same detections with the constant mean distance (a run without distance: 2023 only)."""
    seld = run / "eval" / eval_name(s2) / "seld"
    if not seld.is_dir():
        sh(EVALUATE, run=run, s2=s2)
    edition = "2024" if distance else "2023"
    if not (run / f"seld-metrics-{edition}.json").exists():
        sh(CHECK, seld=seld, run=run, edition=edition)
    if not distance:
        scores = json.loads((run / "seld-metrics-2023.json").read_text())
        return {"run": {"2023": {k: scores[k] for k in ("f_score", "doa_error_deg", "error_rate",
                                                       "localization_recall", "seld_score")}, "2024": {}, "2025": {}}}
    out = {}
    for name, extra in (("run", ""), ("run_mean_distance", f" --distance-m {mean_d:.4f}")):
        path = run / f"editions-{name}.json"
        if not path.exists():
            sh(EDITIONS + extra, seld=seld, work=run / "editions", json=path)
        out[name] = json.loads(path.read_text())
    return out


def baselines(s2: Path, run: Path, out: Path, mean_d: float) -> dict:
    """Predict nothing, and the reference itself with the mean distance, on a run's test scenes."""
    seld = run / "eval" / eval_name(s2) / "seld"
    result = {}
    for name, extra in (("nothing", " --predict nothing"),
                        ("reference_mean_distance", f" --predict reference --distance-m {mean_d:.4f}")):
        path = out / f"baseline-{name}.json"
        if not path.exists():
            sh(EDITIONS + extra, seld=seld, work=out / "baseline-editions", json=path)
        result[name] = json.loads(path.read_text())
    return result


def row(name: str, s: dict, wall_s: float | None) -> str:
    def f(edition, key, scale=1.0, spec=".3f"):
        v = s[edition].get(key)
        return "-" if v is None else format(v * scale, spec)
    return (f"| {name} | {f('2024', 'f_score', 100, '.1f')} | {f('2024', 'doa_error_deg', 1, '.1f')} | "
            f"{f('2024', 'relative_distance_error')} | {f('2024', 'seld_score')} | "
            f"{f('2023', 'f_score', 100, '.1f')} | {f('2023', 'error_rate', 1, '.2f')} | "
            f"{f('2023', 'doa_error_deg', 1, '.1f')} | {f('2023', 'localization_recall', 100, '.1f')} | "
            f"{f('2023', 'seld_score')} | {f('2025', 'f_score', 100, '.1f')} | "
            f"{f('2025', 'doa_error_deg', 1, '.1f')} | {f('2025', 'relative_distance_error')} | "
            f"{'' if wall_s is None else f'{wall_s / 60:.1f} min'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="bast,seldnet")
    ap.add_argument("--variants", default="fixed,fly")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    s1, s2 = args.out / "s1", args.out / "s2"
    if not (s1 / "manifest.json").exists():
        sh(SCENES, s1=s1)
    if not (s2 / "manifest.json").exists():
        sh(FEATURIZE, s1=s1, s2=s2)
    mean_d = mean_training_distance(s1)
    print(f"mean training distance (label rows): {mean_d:.4f} m", flush=True)
    runs, ref_run = {}, None
    for model in args.models.split(","):
        for variant in args.variants.split(","):
            run = args.out / "runs" / f"{model}-{variant}-e{args.epochs}"
            wall_s = train_run(s1, s2, run, model, variant, args.epochs)
            distance = variant != "fixed-seld"
            runs[run.name] = {"wall_s": wall_s, **score_run(s2, run, mean_d, distance)}
            ref_run = ref_run or (run if distance else None)
    path = args.out / "study.json"  # every invocation's runs, merged
    study = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    study["runs"].update(runs)
    study.update(mean_training_distance_m=mean_d)
    if ref_run is not None:  # the test scenes are the same for every run
        study["baselines"] = baselines(s2, ref_run, args.out, mean_d)
    path.write_text(json.dumps(study, indent=1) + "\n")
    runs, base = study["runs"], study["baselines"]
    print("| run | F20 (2024) | DOAE | RDE | SELD (2024) | F20 (2023) | ER20 | LE | LR | SELD (2023) | "
          "F20 (2025) | DOAE (2025) | RDE (2025) | training |")
    for name, r in runs.items():
        print(row(name, r["run"], r["wall_s"]))
        if "run_mean_distance" in r:
            print(row(name + ", mean distance", r["run_mean_distance"], None))
    print(row("predict nothing", base["nothing"], None))
    print(row("reference, mean distance", base["reference_mean_distance"], None))


if __name__ == "__main__":
    main()
