"""The stored DCASE 2024 and 2025 SELD cases (tests/data/seld/dcase2024, dcase2025) and the
reference implementations' scores of them (reference.json beside them), as
tests/dcase/test_seld_editions.py reads them.

    # 1. the inputs: seeded, so they come out the same
    PYTHONPATH=. python tests/data/seld/make_edition_cases.py cases
    # 2. the reference scores, with the baselines' own metric code outside this repository:
    git clone https://github.com/partha2409/DCASE2024_seld_baseline /tmp/b24   # then, in it:
    git -C /tmp/b24 checkout 0b0788729495250233a09f8d323369059a06929e
    git clone https://github.com/partha2409/DCASE2025_seld_baseline /tmp/b25
    git -C /tmp/b25 checkout 42a48b6456b73be35ad0e1a9ffeb6ceef83ae0bd
    PYTHONPATH=. python tests/data/seld/make_edition_cases.py reference --dcase2024 /tmp/b24 --dcase2025 /tmp/b25

Step 2 imports the baselines' files unchanged (2024: cls_compute_seld_results.py,
cls_feature_class.py, SELD_evaluation_metrics.py, parameters.py; 2025: metrics.py,
utils.py, parameters.py) and scores each case with their `ComputeSELDResults(params,
ref_files_folder=...).get_SELD_Results(pred_dir)`, the path their training scripts take.
What it needs around them, and nothing else: the imports the metrics never use (IPython,
torch's tensorboard, torchvision's video features, librosa, cv2, PIL, sklearn, joblib,
matplotlib) are stubbed; numpy 2 lost `np.NaN`, which the 2024 code uses, so it is set to `np.nan`; the
reference CSVs are copied into the one split folder the tools expect (ref/dev-test/); and
the 2024 tool reads the reference's distances in cm (`cm2m=True`) but a prediction's as
written, in metres, as its baseline writes them, so the prediction CSVs (in cm, the task's
format, as bast reads them) are given to it with the distance divided by 100 (written
with `repr`, so the tool parses the same double bast computes). Parameters: the
baselines' defaults (2024: frame-based, evaluate_distance, lad_doa_thresh 20,
lad_reldist_thresh 1, lad_dist_thresh inf; 2025: lad_doa_thresh 20, lad_reldist_thresh 1,
lad_dist_thresh inf, lad_req_onscreen False for modality 'audio', True for
'audio_visual'), the case's class count, average 'macro' and 'micro'.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

from bast.dcase.files import write_dcase2024_csv, write_dcase2025_csv

HERE = Path(__file__).parent
N_CLASSES = {"dcase2024/random": 4, "dcase2024/edge": 5, "dcase2025/random": 4, "dcase2025/edge": 4}


# ----------------------------------------------------------------------------- cases


def _events(rng, n_frames: int, n_classes: int, n_events: int) -> list[dict]:
    """Random events: class, source, onset, length, a start azimuth (anywhere, behind too),
    elevation and distance (cm), still or moving in azimuth and distance; one event is a
    second of the first's class at the same time (same-class overlap)."""
    out = []
    for e in range(n_events):
        cls = int(rng.integers(n_classes)) if e != 1 else out[0]["cls"]
        onset = int(rng.integers(0, n_frames - 8)) if e != 1 else out[0]["onset"] + 2
        moving = rng.random() < 0.5
        out.append({"cls": cls, "onset": onset, "length": int(rng.integers(6, 30)),
                    "az": rng.uniform(-180, 180), "speed": rng.uniform(-8, 8) if moving else 0.0,
                    "el": rng.uniform(-40, 40), "dist": rng.uniform(60, 500),
                    "dspeed": rng.uniform(-6, 6) if moving else 0.0})
    for e in out:
        e["source"] = sum(o["cls"] == e["cls"] for o in out[:out.index(e)])
    return out


def _rows(events: list[dict], n_frames: int) -> np.ndarray:
    """Label rows frame, class, source, azimuth, elevation, distance (cm) of events."""
    rows = []
    for e in events:
        for f in range(e["onset"], min(e["onset"] + e["length"], n_frames)):
            t = f - e["onset"]
            az = (e["az"] + e["speed"] * t + 180) % 360 - 180
            rows.append([f, e["cls"], e["source"], az, e["el"], max(30.0, e["dist"] + e["dspeed"] * t)])
    return np.array(rows).reshape(-1, 6)


def _predict(rng, ref: np.ndarray, n_frames: int, n_classes: int, mirror: bool) -> np.ndarray:
    """A system's rows: each reference row missed 1 in 10, its direction off by an error of
    its event's size (2-25 deg), its distance scaled by its event's factor (0.4-2.4: some
    beyond the relative error threshold 1.0), front-back mirrored per event when `mirror`;
    then false alarms of any class, some past the reference's end; source 0 throughout
    (a repeated source within a frame), rows of a frame shuffled."""
    out = []
    for (cls, source), rows in _groups(ref).items():
        sigma, factor, flip = rng.uniform(2, 25), rng.uniform(0.4, 2.4), mirror and rng.random() < 0.4
        for r in rows:
            if rng.random() < 0.1:
                continue
            az = (180 - r[3] if flip else r[3]) + rng.normal(0, sigma)
            out.append([r[0], cls, 0, (az + 180) % 360 - 180, np.clip(r[4] + rng.normal(0, sigma), -90, 90),
                        r[5] * factor * rng.uniform(0.9, 1.1)])
    for _ in range(4):
        start, cls = int(rng.integers(0, n_frames + 4)), int(rng.integers(n_classes))
        az, el, dist = rng.uniform(-180, 180), rng.uniform(-30, 30), rng.uniform(60, 500)
        out += [[f, cls, 0, az, el, dist] for f in range(start, start + int(rng.integers(2, 6)))]
    out = np.array(out).reshape(-1, 6)
    return out[np.lexsort((rng.random(len(out)), out[:, 0]))]


def _groups(rows: np.ndarray) -> dict:
    keys = sorted({(int(r[1]), int(r[2])) for r in rows})
    return {k: [r for r in rows if (int(r[1]), int(r[2])) == k] for k in keys}


def _onscreen(rows: np.ndarray, rng, flip: float) -> np.ndarray:
    """The on-screen flag of rows: within the 100 deg field of view ahead, flipped at `flip`."""
    on = (np.abs(rows[:, 3]) <= 50).astype(float)
    wrong = rng.random(len(rows)) < flip
    return np.where(wrong, 1 - on, on)


def _as_2025(rows: np.ndarray, onscreen: np.ndarray) -> np.ndarray:
    return np.column_stack([rows[:, :4], rows[:, 5], onscreen]) if len(rows) else np.zeros((0, 6))


def random_cases(seed: int = 2024) -> None:
    """dcase2024/random and dcase2025/random: three 5 s scenes of 4 classes each; 2024's
    third prediction empty; 2025's also an empty reference (header only) with predictions
    and an empty prediction."""
    rng = np.random.default_rng(seed)
    for edition in ("dcase2024", "dcase2025"):
        for name in ("a", "b", "c"):
            ref = _rows(_events(rng, 50, 4, 6), 50)
            pred = _predict(rng, ref, 50, 4, mirror=edition == "dcase2025")
            if edition == "dcase2024":
                _write24(edition, "random", name, ref, pred if name != "c" else np.zeros((0, 6)))
            else:
                _write25("random", name, _as_2025(ref, _onscreen(ref, rng, 0.0)),
                         _as_2025(pred, _onscreen(pred, rng, 0.15)) if name != "c" else np.zeros((0, 6)))
        if edition == "dcase2025":
            pred = _predict(rng, _rows(_events(rng, 50, 4, 3), 50), 50, 4, mirror=True)
            _write25("random", "d", np.zeros((0, 6)), _as_2025(pred, _onscreen(pred, rng, 0.0)))


def _write24(edition: str, case: str, name: str, ref, pred) -> None:
    for part, rows in (("ref", ref), ("pred", pred)):
        (HERE / edition / case / part).mkdir(parents=True, exist_ok=True)
        write_dcase2024_csv(HERE / edition / case / part / f"scene-{name}.csv", rows)


def _write25(case: str, name: str, ref, pred) -> None:
    for part, rows in (("ref", ref), ("pred", pred)):
        (HERE / "dcase2025" / case / part).mkdir(parents=True, exist_ok=True)
        write_dcase2025_csv(HERE / "dcase2025" / case / part / f"scene-{name}.csv", rows)


def edge_cases() -> None:
    """dcase2024/edge and dcase2025/edge: the rules one at a time (see EDGE_2024, EDGE_2025)."""
    for name, (ref, pred) in EDGE_2024.items():
        _write24("dcase2024", "edge", name, np.array(ref, float).reshape(-1, 6), np.array(pred, float).reshape(-1, 6))
    for name, (ref, pred) in EDGE_2025.items():
        _write25("edge", name, np.array(ref, float).reshape(-1, 6), np.array(pred, float).reshape(-1, 6))


def _span(frames, cls, source, *values) -> list[list]:
    return [[f, cls, source, *values] for f in frames]


# 2024, 5 classes (class 4 never occurs): a perfect direction (error ~8e-4 deg, not 0); a
# predicted distance 0 (relative error eps-close to 1.0: still a hit), one of exactly twice
# the reference's (1.0: a hit, the threshold is strict) and one 1 cm beyond twice (1.01: a
# miss); two same-class events with the rows of a frame in
# the other order and one direction 15 deg off, then a third, extra prediction; a class
# only predicted; a direction 30 deg off at the right distance; the last reference frame
# (20, not scored) and a prediction past it; b: an empty prediction file.
EDGE_2024 = {
    "a": (_span(range(10), 0, 0, 0, 0, 200) + _span(range(2, 8), 1, 0, 90, 0, 100)
          + [r for f in range(6) for r in ([f, 2, 0, 10, 0, 300], [f, 2, 1, 100, 20, 300])]
          + _span(range(11, 14), 0, 0, 0, 0, 400) + _span(range(15, 18), 0, 0, -150, -30, 400)
          + _span([20], 0, 0, 45, 0, 150),
          _span(range(10), 0, 0, 0, 0, 200) + _span(range(2, 6), 1, 0, 90, 0, 0) + _span(range(6, 8), 1, 0, 90, 0, 201)
          + [r for f in range(4) for r in ([f, 2, 0, 115, 20, 300], [f, 2, 0, 12, 0, 310])]
          + [r for f in range(4, 6) for r in ([f, 2, 0, 10, 0, 300], [f, 2, 0, 100, 20, 300], [f, 2, 0, 60, 0, 300])]
          + _span(range(10, 13), 3, 0, -60, 10, 250) + _span(range(11, 14), 0, 0, 0, 0, 800)
          + _span(range(15, 18), 0, 0, -120, -30, 400)
          + _span([20, 25], 0, 0, 45, 0, 150)),
    "b": (_span(range(6), 1, 0, -90, 0, 120), []),
}

# 2025, 4 classes: a rear direction predicted at its front mirror (150 vs 30, -170 vs -10:
# no error), with the on-screen flag wrong; 100 vs 95 (folded 80 vs 85); 179 vs -179
# (folded 1 vs -1); a distance of twice the reference's (relative error 1.0: a hit); eleven predictions of one class in one frame (the 11th overwrites
# track 0) against two references with source 12 (>= 10: the lowest free track); the last
# reference frame (20) and a prediction past it; b: an empty reference with predictions
# (not scored); c: an empty prediction.
EDGE_2025 = {
    "a": (_span(range(5), 0, 0, 150, 200, 0) + _span(range(5), 1, 0, -170, 100, 0) + _span(range(5, 10), 2, 0, 100, 300, 0)
          + _span(range(10, 13), 3, 0, 179, 300, 0) + _span(range(6, 9), 1, 0, 60, 400, 1) + _span([15], 0, 12, 20, 200, 1) + _span([15], 0, 12, -40, 250, 1)
          + _span([20], 2, 0, 0, 100, 1),
          _span(range(5), 0, 0, 30, 200, 0) + _span(range(5), 1, 0, -10, 150, 1) + _span(range(5, 10), 2, 0, 95, 300, 0)
          + _span(range(10, 13), 3, 0, -179, 300, 0) + _span(range(6, 9), 1, 0, 60, 800, 1)
          + [[15, 0, s, 10 * s - 50, 200, 1] for s in range(11)]
          + _span([20, 26], 2, 0, 0, 100, 1)),
    "b": ([], _span(range(3, 9), 1, 0, 40, 200, 1)),
    "c": (_span(range(4), 3, 0, -30, 150, 1), []),
}


# ----------------------------------------------------------------------------- reference scores

STUBS = ("IPython", "cls_vid_features", "PIL", "PIL.Image", "sklearn", "sklearn.preprocessing", "joblib",
         "matplotlib", "matplotlib.pyplot", "librosa", "librosa.feature", "cv2",
         "torch.utils.tensorboard")


def _import_baseline(folder: Path, names: tuple[str, ...]) -> list:
    """The baseline's modules `names`, imported from `folder` with the unused imports stubbed."""
    for name in STUBS:
        sys.modules.setdefault(name, mock.MagicMock())
    for name in ("parameters", "utils", "metrics"):
        sys.modules.pop(name, None)
    sys.path.insert(0, str(folder))
    try:
        return [__import__(n) for n in names]
    finally:
        sys.path.remove(str(folder))


def _plain(value):
    """Strict JSON values: NaN as null, arrays as lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    value = float(value)
    return None if math.isnan(value) else value


def _layout(case: Path, tmp: Path, metres: bool) -> tuple[Path, Path]:
    """The tool's layout of a case: ref/dev-test/*.csv and pred/*.csv; 2024's predictions
    with distances in metres (`metres`)."""
    ref, pred = tmp / "ref" / "dev-test", tmp / "pred"
    ref.mkdir(parents=True)
    pred.mkdir()
    for path in sorted((case / "ref").glob("*.csv")):
        shutil.copy(path, ref / path.name)
    for path in sorted((case / "pred").glob("*.csv")):
        lines = path.read_text().splitlines()
        if metres:
            lines = [",".join(w[:5] + [repr(float(w[5]) / 100)]) for w in (line.split(",") for line in lines)]
        (pred / path.name).write_text("".join(line + "\n" for line in lines))
    return tmp / "ref", pred


def score_2024(folder: Path, case: Path, n_classes: int) -> dict:
    """The 2024 tool's scores of a case folder (ref/, pred/), macro and micro."""
    (tool,) = _import_baseline(folder, ("cls_compute_seld_results",))
    np.NaN = np.nan  # used by SELD_evaluation_metrics.py, removed in numpy 2
    params = tool.parameters.get_params()
    out = {}
    for average in ("macro", "micro"):
        params.update(unique_classes=n_classes, average=average)
        with tempfile.TemporaryDirectory() as tmp:
            ref, pred = _layout(case, Path(tmp), metres=True)
            er, f, ang, dist, rel, lr, seld, classwise = tool.ComputeSELDResults(params, ref_files_folder=str(ref)) \
                .get_SELD_Results(str(pred))
        out[average] = {"ER": _plain(er), "F": _plain(f), "AngE": _plain(ang), "DistE": _plain(dist),
                        "RelDistE": _plain(rel), "LR": _plain(lr), "SELD": _plain(seld),
                        "classwise": _plain(classwise) if average == "macro" else None}
    return out


def score_2025(folder: Path, case: Path, n_classes: int) -> dict:
    """The 2025 tool's scores of a case folder, audio (on-screen not required) and
    audio-visual (required) tracks, macro and micro."""
    metrics, parameters = _import_baseline(folder, ("metrics", "parameters"))
    out = {}
    for track, modality, onscreen in (("audio", "audio", False), ("audiovisual", "audio_visual", True)):
        for average in ("macro", "micro"):
            params = dict(parameters.params, nb_classes=n_classes, average=average, modality=modality,
                          lad_req_onscreen=onscreen)
            with tempfile.TemporaryDirectory() as tmp:
                ref, pred = _layout(case, Path(tmp), metres=False)
                f, ang, dist, rel, on, classwise = metrics.ComputeSELDResults(params, ref_files_folder=str(ref)) \
                    .get_SELD_Results(str(pred))
            out[f"{track}/{average}"] = {"F": _plain(f), "AngE": _plain(ang), "DistE": _plain(dist),
                                         "RelDistE": _plain(rel), "OnscreenAq": _plain(on),
                                         "classwise": _plain(classwise) if average == "macro" else None}
    return out


def reference(dcase2024: Path, dcase2025: Path) -> None:
    """reference.json of each edition: every case, and (2024) the random references scored
    against themselves."""
    for edition, score, folder in (("dcase2024", score_2024, dcase2024), ("dcase2025", score_2025, dcase2025)):
        cases = {c.split("/")[1]: score(folder, HERE / c, n) for c, n in N_CLASSES.items() if c.startswith(edition)}
        if edition == "dcase2024":
            with tempfile.TemporaryDirectory() as tmp:
                for part in ("ref", "pred"):
                    shutil.copytree(HERE / edition / "random" / "ref", Path(tmp) / part)
                cases["random_self"] = score(folder, Path(tmp), N_CLASSES["dcase2024/random"])
        (HERE / edition / "reference.json").write_text(json.dumps(cases, indent=1, allow_nan=False) + "\n")
        print(f"{HERE / edition / 'reference.json'}: {', '.join(cases)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("cases", help="write the inputs (seeded)")
    ref = sub.add_parser("reference", help="score the inputs with the baselines' code, write reference.json")
    ref.add_argument("--dcase2024", type=Path, required=True, help="a checkout of partha2409/DCASE2024_seld_baseline")
    ref.add_argument("--dcase2025", type=Path, required=True, help="a checkout of partha2409/DCASE2025_seld_baseline")
    args = parser.parse_args()
    if args.step == "cases":
        random_cases()
        edge_cases()
    else:
        reference(args.dcase2024, args.dcase2025)


if __name__ == "__main__":
    main()
