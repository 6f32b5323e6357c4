"""The DCASE 2024 and 2025 SELD metrics (bast/dcase/dcase2024.py, dcase2025.py) against
their reference implementations, the 2023 edition unchanged beside them, the choice of
edition, the 2024 and 2025 file formats, and what `seld-metrics` refuses.

The numbers in tests/data/seld/dcase2024/reference.json and dcase2025/reference.json were
produced by the baselines' own metric code, run outside this repository on the stored
cases beside them: partha2409/DCASE2024_seld_baseline at commit
0b0788729495250233a09f8d323369059a06929e (cls_compute_seld_results.py,
cls_feature_class.py, SELD_evaluation_metrics.py, parameters.py) and
partha2409/DCASE2025_seld_baseline at commit 42a48b6456b73be35ad0e1a9ffeb6ceef83ae0bd
(metrics.py, utils.py, parameters.py), both MIT licence, each through its
`ComputeSELDResults(params, ref_files_folder=...).get_SELD_Results(pred_dir)` with its
default parameters (20 deg, relative distance 1.0, frame-based; 2025 with on-screen not
required for modality 'audio' and required for 'audio_visual'), the case's class count,
macro and micro averages; under numpy 2.4.6 and scipy 1.17.1 with `np.NaN = np.nan` (removed
from numpy, used by the 2024 code) and the unused imports (IPython, torch's tensorboard,
torchvision's video features, librosa, cv2, PIL, sklearn, joblib, matplotlib) stubbed. As the
2024 tool reads the reference's distances in cm but a prediction's in metres (as its
baseline writes them), it was given the prediction CSVs with the distance divided by 100.
To redo it:

    PYTHONPATH=. python tests/data/seld/make_edition_cases.py cases      # the inputs (seeded)
    PYTHONPATH=. python tests/data/seld/make_edition_cases.py reference \
        --dcase2024 CHECKOUT_2024 --dcase2025 CHECKOUT_2025

(the script's docstring has the clone commands). The cases: random (three 5 s scenes of 4
classes: still and moving sources anywhere around, same-class overlaps, DOA errors of
2-25 deg, distances scaled by 0.4-2.4 so that some pass the relative error of 1.0, missed
rows, false alarms of present and absent classes, predictions past the reference's end,
one empty prediction file; 2025: a third of the events predicted at their front-back
mirror, on-screen flags wrong 15 % of the time, an empty reference file with predictions);
edge (the rules one at a time, listed in the script: a perfect direction, a predicted
distance of 0, a relative error of 1.01, rows of a frame in either order, a class never
present, a class only predicted; 2025: rear references predicted at their front mirror,
eleven same-class predictions in one frame, sources >= 10); random_self (2024: the random
references against themselves: the DOA error is 8.1e-4 deg, not 0, from the tool's 1e-10
in its normalisation).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bast.cli import app
from bast.dcase import dcase2024, dcase2025
from bast.dcase.files import (
    DCASE2025_HEADER,
    format_dcase2025_rows,
    read_dcase2024_csv,
    read_dcase2025_csv,
    write_dcase2024_csv,
    write_dcase2025_csv,
)
from bast.dcase.metrics import score_directories, score_folders
from bast.errors import ConfigError, DataError

DATA = Path(__file__).parents[1] / "data" / "seld"
REF_2024 = json.loads((DATA / "dcase2024" / "reference.json").read_text())
REF_2025 = json.loads((DATA / "dcase2025" / "reference.json").read_text())
N_CLASSES = {"random": 4, "edge": 5, "random_self": 4}
TOL = 1e-9


def _same(got, want, what: str) -> None:
    """A figure equal to the reference's: both undefined (bast NaN, the reference's NaN
    stored as null), or equal within TOL."""
    got = np.asarray(got, dtype=float)
    want = np.array([np.nan if w is None else w for w in np.atleast_1d(want)], dtype=float).reshape(got.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: undefined where")
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=0, atol=TOL, err_msg=what)


def _dirs_2024(case: str) -> tuple[Path, Path]:
    if case == "random_self":
        return DATA / "dcase2024" / "random" / "ref", DATA / "dcase2024" / "random" / "ref"
    return DATA / "dcase2024" / case / "ref", DATA / "dcase2024" / case / "pred"


@pytest.mark.parametrize("key", [f"{c}/{a}" for c, r in REF_2024.items() for a in r])
def test_2024_scores_equal_the_reference_implementation(key):
    case, average = key.split("/")
    want = REF_2024[case][average]
    s, edition, _ = score_folders(*_dirs_2024(case), n_classes=N_CLASSES[case], average=average)
    assert edition == "2024"
    got = {"ER": s.er, "F": s.f, "AngE": s.doa_error, "DistE": s.distance_error_m, "RelDistE": s.relative_distance_error,
           "LR": s.lr, "SELD": s.seld}
    for name, value in got.items():
        _same(value, want[name], name)
    if average == "macro":  # the tool's classwise rows: ER, F, AngE, DistE, RelDistE, LR, SELD
        pc = s.per_class
        for row, name in zip(want["classwise"], (None, "f_score", "doa_error_deg", "distance_error_m",
                                                 "relative_distance_error", "localization_recall", "seld_score")):
            _same(pc[name] if name else np.full(s.counts.n_classes, s.er), row, f"per class {name or 'ER'}")


@pytest.mark.parametrize("key", [f"{c}/{k}" for c, r in REF_2025.items() for k in r])
def test_2025_scores_equal_the_reference_implementation(key):
    case, track, average = key.split("/")
    want = REF_2025[case][f"{track}/{average}"]
    s, edition, _ = score_folders(DATA / "dcase2025" / case / "ref", DATA / "dcase2025" / case / "pred",
                                  n_classes=4, average=average, require_onscreen=track == "audiovisual")
    assert edition == "2025"
    got = {"F": s.f, "AngE": s.doa_error, "DistE": 100 * s.distance_error_m,  # the tool's is in cm
           "RelDistE": s.relative_distance_error, "OnscreenAq": s.onscreen_accuracy}
    for name, value in got.items():
        _same(value, want[name], name)
    if average == "macro":  # classwise rows: F, AngE, DistE (cm), RelDistE, OnscreenAq
        pc = s.per_class
        for row, (name, scale) in zip(want["classwise"], (("f_score", 1), ("doa_error_deg", 1), ("distance_error_m", 100),
                                                          ("relative_distance_error", 1), ("onscreen_accuracy", 1))):
            _same(scale * pc[name], row, f"per class {name}")


def test_the_cases_exercise_what_they_claim():
    """The stored cases hold what the docstring says, so the equality above covers it."""
    s = score_folders(DATA / "dcase2024" / "random" / "ref", DATA / "dcase2024" / "random" / "pred", n_classes=4)[0]
    c = s.counts
    assert c.tp.sum() > 20 and c.fp_spatial.sum() > 10 and c.fp.sum() > 10 and c.fn.sum() > 10
    mirrored = score_folders(DATA / "dcase2025" / "random" / "ref", DATA / "dcase2025" / "random" / "pred",
                             n_classes=4)[0]
    rear = [np.abs(read_dcase2025_csv(p)[:, 3]) > 90 for p in sorted((DATA / "dcase2025" / "random" / "ref").glob("*"))]
    assert sum(r.sum() for r in rear) > 30  # references behind the listener
    assert mirrored.f > 0.4 and mirrored.doa_error < 15  # their front mirrors count as right
    assert read_dcase2025_csv(DATA / "dcase2025" / "random" / "ref" / "scene-d.csv").shape == (0, 6)


def test_the_2025_edition_folds_the_rear_onto_the_front_and_2024_does_not():
    """Stereo cannot tell a source behind from its mirror in front: 2025 scores the mirror
    as right; 2024 (a 4-channel task) counts it as a spatial false positive."""
    az = np.arange(-180.0, 180.0, 1.0)
    folded = dcase2025.fold_azimuth(az)
    np.testing.assert_allclose(folded, dcase2025.fold_azimuth(180.0 - az))  # front-back mirror images
    assert np.all(np.abs(folded) <= 90)
    front = np.abs(az) <= 90
    np.testing.assert_array_equal(folded[front], az[front])
    ref = np.array([[f, 0, 0, 150, 0, 200] for f in range(11)], float)  # behind, left
    pred = ref.copy()
    pred[:, 3] = 30  # ahead, left: its mirror
    s25 = dcase2025.score_recordings([(ref[:, [0, 1, 2, 3, 5, 4]], pred[:, [0, 1, 2, 3, 5, 4]])], 1)
    assert s25.f == pytest.approx(1.0) and s25.doa_error == 0.0
    s24 = dcase2024.score_recordings([(ref, pred)], 1)
    assert s24.f == 0.0 and s24.doa_error == pytest.approx(120.0, abs=1e-3) and s24.counts.fp_spatial.sum() == 10


@pytest.mark.parametrize("edition", ["2024", "2025"])
def test_a_hit_needs_a_relative_distance_error_of_at_most_one(edition):
    ref = np.array([[f, 0, 0, 10, 0, 200] for f in range(11)], float)
    for pred_cm, hit in ((400, True), (401, False), (0, True), (100, True), (550, False)):
        pred = ref.copy()
        pred[:, 5] = pred_cm
        cols = [0, 1, 2, 3, 5, 4] if edition == "2025" else list(range(6))  # 2025 rows: azimuth, distance, onscreen
        s = (dcase2025 if edition == "2025" else dcase2024).score_recordings([(ref[:, cols], pred[:, cols])], 1)
        assert (s.f == pytest.approx(1.0)) is hit and (s.f == 0.0) is not hit, (pred_cm, s.f)
        assert s.relative_distance_error == pytest.approx(abs(pred_cm - 200) / 200)


def test_the_default_edition_is_the_newest_the_columns_allow():
    def edition(ref, pred):
        return score_folders(ref, pred, n_classes=4)[1:]

    assert edition(*_dirs_2024("random"))[0] == "2024"
    got, why = edition(DATA / "dcase2025" / "random" / "ref", DATA / "dcase2025" / "random" / "pred")
    assert got == "2025" and "header" in why
    got, why = edition(DATA / "random" / "ref", DATA / "random" / "pred")  # references with distance, predictions not
    assert got == "2023" and "scene-e.csv has 5 columns" in why
    assert edition(DATA / "random" / "ref", DATA / "random" / "ref")[0] == "2024"


def test_the_2023_edition_is_unchanged():
    """Chosen or named, DCASE 2023 gives what score_directories gave before editions
    (tests/dcase/test_seld_metrics.py pins those to its reference implementation)."""
    for case in ("random", "misses_false_alarms", "unaligned_and_empty", "two_tracks_one_class"):
        old = score_directories(DATA / case / "ref", DATA / case / "pred", n_classes=4)
        s, got, _ = score_folders(DATA / case / "ref", DATA / case / "pred", n_classes=4, edition="2023")
        assert got == "2023"
        assert (s.er, s.f, s.le, s.lr, s.seld) == (old.er, old.f, old.le, old.lr, old.seld)
    # chosen when a file has no distance column
    s, got, _ = score_folders(DATA / "random" / "ref", DATA / "random" / "pred", n_classes=4)
    assert got == "2023" and s.f == score_directories(DATA / "random" / "ref", DATA / "random" / "pred", n_classes=4).f


def _strict(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"{name} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_cli_json_holds_the_figures_under_plain_names(tmp_path):
    out = tmp_path / "s.json"
    ref, pred = _dirs_2024("edge")
    result = CliRunner().invoke(app, ["seld-metrics", str(ref), str(pred), "--classes", "5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "edition: DCASE 2024" in result.output and "the newest the files allow" in result.output
    d = _strict(out.read_text())
    want = REF_2024["edge"]["macro"]
    assert d["edition"] == "2024" and "distance column" in d["edition_reason"]
    for key, name in (("f_score", "F"), ("doa_error_deg", "AngE"), ("relative_distance_error", "RelDistE"),
                      ("distance_error_m", "DistE"), ("error_rate", "ER"), ("localization_recall", "LR"),
                      ("seld_score", "SELD")):
        assert d[key] == pytest.approx(want[name], abs=TOL), key
    never = d["classes"][4]  # class 4 never occurs: no pair, its errors undefined
    assert never["doa_error_deg"] is None and "no prediction was paired" in never["doa_error_deg_note"]
    assert never["f_score"] == 0.0
    out23 = tmp_path / "s23.json"
    result = CliRunner().invoke(app, ["seld-metrics", str(DATA / "random" / "ref"), str(DATA / "random" / "pred"),
                                      "--json", str(out23)])
    assert result.exit_code == 0, result.output
    d = _strict(out23.read_text())
    assert d["edition"] == "2023" and d["f_score"] == d["overall"]["F"] and d["doa_error_deg"] == d["overall"]["LE"]
    assert d["relative_distance_error"] is None and "DCASE 2023 scores directions only" in d["relative_distance_error_note"]


def test_cli_2025_with_the_onscreen_flag_required(tmp_path):
    out = tmp_path / "s.json"
    result = CliRunner().invoke(app, ["seld-metrics", str(DATA / "dcase2025" / "edge" / "ref"),
                                      str(DATA / "dcase2025" / "edge" / "pred"), "--onscreen",  # 2025: chosen
                                      "--classes", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    d, want = _strict(out.read_text()), REF_2025["edge"]["audiovisual/macro"]
    assert d["f_score"] == pytest.approx(want["F"], abs=TOL) and want["F"] < REF_2025["edge"]["audio/macro"]["F"]
    assert d["require_onscreen"] is True and d["onscreen_accuracy"] == pytest.approx(want["OnscreenAq"], abs=TOL)
    assert "seld_score" not in d  # DCASE 2025 has none


def test_2024_and_2025_files_round_trip(tmp_path):
    rows = np.array([[3, 1, 0, 190.4, -10.2, 150.4], [0, 0, 1, -45.0, 30.0, 200.0]])
    write_dcase2024_csv(tmp_path / "a.csv", rows)
    assert (tmp_path / "a.csv").read_text() == "0,0,1,-45,30,200\n3,1,0,-170,-10,150\n"
    np.testing.assert_array_equal(read_dcase2024_csv(tmp_path / "a.csv"), [[0, 0, 1, -45, 30, 200],
                                                                             [3, 1, 0, -170, -10, 150]])
    rows25 = np.array([[4, 2, 0, 150, 230, 0], [1, 0, 3, -100.4, 80, 1]])
    write_dcase2025_csv(tmp_path / "b.csv", rows25)
    assert (tmp_path / "b.csv").read_text() == f"{DCASE2025_HEADER}\n1,0,3,-100,80,1\n4,2,0,150,230,0\n"
    np.testing.assert_array_equal(read_dcase2025_csv(tmp_path / "b.csv"), [[1, 0, 3, -100, 80, 1], [4, 2, 0, 150, 230, 0]])
    write_dcase2025_csv(tmp_path / "empty.csv", np.zeros((0, 6)))
    assert read_dcase2025_csv(tmp_path / "empty.csv").shape == (0, 6)
    for bad in (rows[:, :5], rows * [1, 1, 1, 1, 1, -1]):
        with pytest.raises(ConfigError):
            write_dcase2024_csv(tmp_path / "c.csv", bad)
    with pytest.raises(ConfigError, match="on-screen"):
        format_dcase2025_rows(rows25 * [1, 1, 1, 1, 1, 2] + [0, 0, 0, 0, 0, 1])
    assert not (tmp_path / "c.csv").exists()


def _case(tmp_path, ref_text: str, pred_text: str | None = None) -> tuple[Path, Path]:
    for part, text in (("ref", ref_text), ("pred", ref_text if pred_text is None else pred_text)):
        (tmp_path / part).mkdir(exist_ok=True)
        (tmp_path / part / "scene.csv").write_text(text)
    return tmp_path / "ref", tmp_path / "pred"


def _refused(args, *phrases) -> None:
    result = CliRunner().invoke(app, ["seld-metrics", *map(str, args)])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output and "Traceback" not in result.output, result.output
    flat = " ".join(result.output.split())
    for phrase in phrases:
        assert phrase in flat, (phrase, flat)


ROWS24 = "0,0,0,10,0,200\n1,0,0,10,0,200\n"
ROWS25 = f"{DCASE2025_HEADER}\n0,0,0,10,200,1\n1,0,0,10,200,1\n"


@pytest.mark.parametrize("ref, pred, args, phrases", [
    (ROWS24 + "2,0,0,10,0\n", None, [], ["scene.csv:3: 5 columns; a DCASE 2024 row is"]),
    (ROWS24, ROWS24 + "2,0,0,10,0,-5\n", [], ["scene.csv:3: distance -5 cm is negative"]),
    (ROWS24, ROWS24 + "2,0,0,10,0,nan\n", [], ["scene.csv:3: a value that is not finite"]),
    (ROWS25, ROWS25 + "2,0,0,10,nan,1\n", [], ["scene.csv:4: a value that is not finite"]),
    (ROWS25, ROWS25 + "2,0,0,10,-1,1\n", [], ["scene.csv:4: distance -1 cm is negative"]),
    (ROWS25, ROWS25 + "2,0,0,10,100,2\n", [], ["scene.csv:4: onscreen 2"]),
    (ROWS25, ROWS25 + "2,0,0,10,100\n", [], ["scene.csv:4: 5 columns; a DCASE 2025 row is"]),
    (ROWS25, ROWS24, [], ["starts with DCASE 2025's header line", "give files of one format"]),
    (ROWS24, None, ["--edition", "2025"], ["--edition 2025 reads DCASE 2025 files", "scene.csv:1 has 6 columns"]),
    ("frame,class,source,azimuth,elevation,distance\n0,0,0,10,0,200\n", None, ["--edition", "2025"],
     ["no DCASE 2025 header line"]),
    ("0,0,0,10,0\n", None, ["--edition", "2024"], ["--edition 2024 scores distances", "scene.csv:1 has 5 columns"]),
    (ROWS25, None, ["--edition", "2023"], ["--edition 2023 reads rows", "has a header line"]),
    ("0,0,0,10,0,0\n1,0,0,10,0,200\n", None, [], ["a reference event at distance 0 cm (frame 0)"]),
    (ROWS24, None, ["--edition", "2026"], ["--edition 2026: DCASE editions scored are 2023, 2024, 2025"]),
    (ROWS24, None, ["--onscreen"], ["--onscreen: only DCASE 2025's files carry the on-screen flag",
                                    "scored by DCASE 2024"]),
])
def test_cli_refuses_what_an_edition_cannot_score_in_one_line(tmp_path, ref, pred, args, phrases):
    _refused([*_case(tmp_path, ref, pred), *args], *phrases)


def test_a_2025_file_without_its_header_is_refused_by_the_reader(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("0,0,0,10,200,1\n")
    with pytest.raises(DataError, match=r"no DCASE 2025 header line \(line 1 is '0,0,0,10,200,1'\)"):
        read_dcase2025_csv(path)


def test_an_evaluation_scores_rows_with_distances_by_2024():
    """A model's evaluation records the newest edition its rows allow: 2023 for rows
    without distances (today's SELD targets), 2024 when every row carries one."""
    from bast.model.evaluation.seld import metrics_of

    refs = [read_dcase2024_csv(p) for p in sorted((DATA / "dcase2024" / "random" / "ref").glob("*.csv"))]
    preds = [read_dcase2024_csv(p) for p in sorted((DATA / "dcase2024" / "random" / "pred").glob("*.csv"))]
    results = {"names": ["a", "b", "c"], "envs": ["anechoic"] * 3, "ref": refs, "pred": preds, "loss_sum": 1.0,
               "windows": 1}
    m = metrics_of(results, ["w", "x", "y", "z"])
    want = REF_2024["random"]["macro"]
    assert m["edition"] == "2024"
    assert (m["f20"], m["le_deg"], m["rde"], m["seld_score"]) == pytest.approx(
        (want["F"], want["AngE"], want["RelDistE"], want["SELD"]), abs=TOL)
    assert m["classes"][0]["class"] == "w" and m["classes"][0]["F"] == m["classes"][0]["f_score"]
    m23 = metrics_of(dict(results, ref=[r[:, :5] for r in refs], pred=[p[:, :5] for p in preds]), list("wxyz"))
    assert m23["edition"] == "2023" and "rde" not in m23 and math.isfinite(m23["le_deg"])


def test_predict_nothing_is_scored_by_the_runs_edition(tmp_path):
    from bast.report.seld import predict_nothing

    for part in ("ref", "pred"):
        (tmp_path / "eval" / "seld" / part).mkdir(parents=True)
    for p in (DATA / "dcase2024" / "random" / "ref").glob("*.csv"):
        for part in ("ref", "pred"):  # predictions: read by the 2023 path, not used
            (tmp_path / "eval" / "seld" / part / p.name).write_text(p.read_text())
    m = predict_nothing(tmp_path, 4, "2024")
    assert m["edition"] == "2024" and m["f20"] == 0.0 and m["er20"] == pytest.approx(1.0) and m["lr"] == 0.0
    assert math.isnan(m["le_deg"]) and m["seld_score"] == pytest.approx(1.0)  # mean of 1 - F alone
    m23 = predict_nothing(tmp_path, 4)
    assert m23["edition"] == "2023" and m23["le_deg"] == 180.0


def test_2024_without_reference_events_scores_f_and_leaves_the_error_rate_undefined(tmp_path):
    """2023 refuses such folders (its SELD score holds ER); 2024's SELD score does not, so
    F and the SELD score are given and only ER is null, with why."""
    ref, pred = _case(tmp_path, "", ROWS24)
    out = tmp_path / "s.json"
    result = CliRunner().invoke(app, ["seld-metrics", str(ref), str(pred), "--edition", "2024", "--json", str(out)])
    assert result.exit_code == 0, result.output
    d = _strict(out.read_text())
    assert d["f_score"] == 0.0 and d["seld_score"] == pytest.approx(1.0) and d["error_rate"] is None
    assert "divides by their number" in d["error_rate_note"] and "no events" in d["note"]
    assert d["doa_error_deg"] is None and "no prediction was paired" in d["doa_error_deg_note"]
