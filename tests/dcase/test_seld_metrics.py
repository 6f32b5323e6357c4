"""SELD metrics (bast.dcase.metrics) against the DCASE 2023 task 3 reference implementation.

The numbers in REFERENCE were produced by the DCASE 2023 baseline's own code,
sharathadavanne/seld-dcase2023 at commit 24d14c9ebe6878062dc3b68eb07dd0100722f530 (MIT
licence), run outside this repository on the stored cases in tests/data/seld/:
`cls_compute_seld_results.ComputeSELDResults(params, ref_files_folder=...)
.get_SELD_Results(pred_dir)` (use_polar_format=True, lad_doa_thresh=20, average 'macro'
and 'micro', unique_classes as N_CLASSES below), which reads the references with
`cls_feature_class.FeatureClass.load_output_format_file`, cuts 1 s segments with
`FeatureClass.segment_labels` and scores with `SELD_evaluation_metrics.SELDMetrics`
(`update_seld_scores`, `compute_seld_scores`). As that path expects the baseline's
Cartesian predictions, the polar prediction CSVs were converted with the baseline's
`convert_output_format_polar_to_cartesian` and written with its
`write_output_format_file`; the same SELDMetrics on the polar predictions directly gave
the same numbers within 1e-9. Run under numpy 2.4.6 with `np.float = float` (removed
from numpy, used there for eps) and the unused imports IPython, sklearn, joblib and
librosa stubbed. `random_self` scores the random case's references against themselves.

The cases: misses_false_alarms (a class never detected, a direction 30 deg off, false
alarms of present and absent classes, event-free frames); two_tracks_one_class (two and
three simultaneous events of one class, rows of a frame in either order);
unaligned_and_empty (two recordings: predictions in other frames of the same segment,
predictions past the reference's end, an empty prediction file, a last reference frame
at index 20); random (two 6 s scenes of 4 classes, still and moving sources, same-class
overlaps, DOA noise of 3-25 deg, missed frames, false alarms; drawn once with a seed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bast.errors import ConfigError, DataError
from bast.dcase.files import format_dcase_rows, read_dcase_csv, write_dcase_csv
from bast.dcase.metrics import count_recording, pair_csv_files, score_directories, score_recordings

DATA = Path(__file__).parents[1] / "data" / "seld"
N_CLASSES = {"misses_false_alarms": 3, "two_tracks_one_class": 2, "unaligned_and_empty": 2, "random": 4,
             "random_self": 4}

REFERENCE = {
    'misses_false_alarms/macro': dict(ER=0.6666666666666666, F=0.26666666666666666, LE=72.20011786880133, LR=0.6666666666666666, SELD=0.5336112748177796,
         class_f=[0.8, 0.0, 0.0],
         class_le=[7.066574389261592, 29.5337792171424, 180.0],
         class_lr=[1.0, 1.0, 0.0],
         class_seld=[0.22648135331841884, 0.4576858044682533, 0.9166666666666666],
         ),
    'misses_false_alarms/micro': dict(ER=0.6666666666666666, F=0.3333333333333333, LE=20.546897285990077, LR=0.8333333333333334, SELD=0.40353735734165286),
    'two_tracks_one_class/macro': dict(ER=0.2, F=0.9444444444444443, LE=8.24188377667673, LR=0.9999999999999999, SELD=0.07533594968982885,
         class_f=[0.8888888888888888, 0.9999999999999998],
         class_le=[5.310871684103215, 11.172895869250246],
         class_lr=[1.0, 0.9999999999999998],
         class_seld=[0.08515398845014337, 0.06551791092951434],
         ),
    'two_tracks_one_class/micro': dict(ER=0.2, F=0.9090909090909091, LE=6.483276521132621, LR=1.0, SELD=0.08173182345106804),
    'unaligned_and_empty/macro': dict(ER=0.6666666666666666, F=0.4999999999999999, LE=90.0, LR=0.4999999999999999, SELD=0.5416666666666667,
         class_f=[0.0, 0.9999999999999998],
         class_le=[180.0, 0.0],
         class_lr=[0.0, 0.9999999999999998],
         class_seld=[0.9166666666666666, 0.16666666666666677],
         ),
    'unaligned_and_empty/micro': dict(ER=0.6666666666666666, F=0.5, LE=0.0, LR=0.3333333333333333, SELD=0.4583333333333333),
    'random/macro': dict(ER=0.5172413793103449, F=0.6510172490048651, LE=11.715397710349729, LR=0.9131944444444444, SELD=0.2545288071740779,
         class_f=[0.7368421052631579, 0.8, 0.35294117647058826, 0.7142857142857143],
         class_le=[4.308028034940679, 12.388753553208788, 19.055083235250148, 11.1097260179993],
         class_lr=[0.7777777777777778, 0.875, 1.0, 1.0],
         class_seld=[0.25663874633810324, 0.22776694698482064, 0.317540444092231, 0.21616909128115666],
         ),
    'random/micro': dict(ER=0.5172413793103449, F=0.6461538461538462, LE=11.737829995251596, LR=0.9, SELD=0.2590744249491963),
    'random_self/macro': dict(ER=0.0, F=1.0, LE=8.004127933608693e-08, LR=1.0, SELD=1.1116844352234295e-10,
         class_f=[1.0, 1.0, 1.0, 1.0],
         class_le=[1.0672170578144923e-07, 2.1344341156289847e-07, 0.0, 0.0],
         class_lr=[1.0, 1.0, 1.0, 1.0],
         class_seld=[1.4822459136312394e-10, 2.964491827262479e-10, 0.0, 0.0],
         ),
    'random_self/micro': dict(ER=0.0, F=1.0, LE=8.832141168119936e-08, LR=1.0, SELD=1.2266862733499912e-10),
}


def _dirs(case: str) -> tuple[Path, Path]:
    if case == "random_self":
        return DATA / "random" / "ref", DATA / "random" / "ref"
    return DATA / case / "ref", DATA / case / "pred"


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_scores_equal_the_dcase2023_reference_implementation(key):
    case, average = key.split("/")
    want = REFERENCE[key]
    got = score_directories(*_dirs(case), n_classes=N_CLASSES[case], average=average)
    for name in ("ER", "F", "LE", "LR", "SELD"):
        assert getattr(got, name.lower()) == pytest.approx(want[name], abs=1e-9), name
    if average == "macro":
        for name in ("class_f", "class_le", "class_lr", "class_seld"):
            np.testing.assert_allclose(getattr(got, name), want[name], atol=1e-9, err_msg=name)


def test_a_reference_scored_against_itself_is_perfect():
    for case in N_CLASSES:
        if case == "random_self":
            continue
        s = score_directories(DATA / case / "ref", DATA / case / "ref", n_classes=N_CLASSES[case])
        present = s.counts.n_ref > 0
        assert s.er == 0.0
        np.testing.assert_allclose(s.class_f[present], 1.0)
        np.testing.assert_allclose(s.class_lr[present], 1.0)
        assert np.all(s.class_le[present] < 1e-6)  # arccos of a cosine rounded to 1 - 1e-16


def test_recordings_are_counted_together_not_averaged():
    pairs = [(read_dcase_csv(r), read_dcase_csv(p)) for r, p in pair_csv_files(*_dirs("random"))]
    one = [count_recording(r, p, 4) for r, p in pairs]
    both = score_recordings(pairs, 4)
    assert both.counts.n_ref.sum() == sum(c.n_ref.sum() for c in one)
    np.testing.assert_array_equal(both.counts.tp, one[0].tp + one[1].tp)


def test_the_doa_threshold_decides_true_positives():
    ref = np.array([[f, 0, 0, 0.0, 0.0] for f in range(10)])
    pred = ref.copy()
    pred[:, 3] = 25.0  # 25 deg off in every frame
    assert score_recordings([(ref, pred, 10)], 1).f == 0.0
    assert score_recordings([(ref, pred, 10)], 1, doa_threshold=30).f == pytest.approx(1.0)
    s = score_recordings([(ref, pred, 10)], 1)
    assert s.le == pytest.approx(25.0) and s.lr == pytest.approx(1.0) and s.er == pytest.approx(1.0)


def test_csv_rows_round_trip_in_dcase_form(tmp_path):
    rows = np.array([[3, 1, 0, 190.4, -10.2, 150], [0, 0, 1, -45.0, 30.0, 200], [3, 2, 0, 359.6, 89.9, 80]])
    path = tmp_path / "scene.csv"
    write_dcase_csv(path, rows)
    assert path.read_text() == "0,0,1,-45,30,200\n3,1,0,-170,-10,150\n3,2,0,0,90,80\n"
    np.testing.assert_array_equal(read_dcase_csv(path), [[0, 0, 1, -45, 30], [3, 1, 0, -170, -10], [3, 2, 0, 0, 90]])
    assert format_dcase_rows(np.zeros((0, 5))) == ""


def test_the_baselines_cartesian_rows_are_read_as_directions(tmp_path):
    path = tmp_path / "pred.csv"
    path.write_text("4,2,0,0.0,1.0,0.0,0\n5,2,0,0.5,0.0,0.5,0\n")
    np.testing.assert_allclose(read_dcase_csv(path), [[4, 2, 0, 90, 0], [5, 2, 0, 0, 45]], atol=1e-12)


@pytest.mark.parametrize("text, message", [
    ("frame,class,source,azimuth,elevation\n", "no header"),
    ("0,1,0,10\n", "4 columns"),
    ("0,1,0,10,95\n", "elevation 95"),
    ("0.5,1,0,10,5\n", "whole numbers"),
    ("0,-1,0,10,5\n", "whole numbers"),
    ("0,1,0,nan,5\n", "not finite"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text("1,0,0,0,0\n\n" + text)
    with pytest.raises(DataError, match=message) as info:
        read_dcase_csv(path)
    assert f"{path}:3" in str(info.value)


def test_missing_and_extra_files_are_named(tmp_path):
    (tmp_path / "ref" / "split").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    for name in ("a.csv", "b.csv"):
        (tmp_path / "ref" / "split" / name).write_text("0,0,0,0,0\n")
    for name in ("b.csv", "c.csv"):
        (tmp_path / "pred" / name).write_text("0,0,0,0,0\n")
    with pytest.raises(DataError, match=r"without a prediction: a\.csv.*without a reference: c\.csv"):
        pair_csv_files(tmp_path / "ref", tmp_path / "pred")


def test_classes_beyond_the_count_and_bad_options_are_refused():
    rows = np.array([[0, 3, 0, 0.0, 0.0]])
    with pytest.raises(DataError, match="class 3"):
        count_recording(rows, rows, 3)
    with pytest.raises(DataError, match="negative"):
        count_recording(rows * [-1, 1, 1, 1, 1] - [1, 0, 0, 0, 0], rows, 4)
    with pytest.raises(ConfigError, match="average"):
        score_recordings([(rows, rows)], 4, average="weighted")


def test_cli_scores_a_reference_against_itself_perfectly(tmp_path):
    from typer.testing import CliRunner

    from bast.cli import app

    out = tmp_path / "scores.json"
    # the references carry a distance column: without --edition they would be scored by DCASE 2024
    result = CliRunner().invoke(app, ["seld-metrics", str(DATA / "random" / "ref"), str(DATA / "random" / "ref"),
                                      "--edition", "2023", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "F 100.0 %" in result.output and "ER 0.000" in result.output and "LE 0.0 deg" in result.output
    import json

    d = json.loads(out.read_text())
    assert d["overall"]["F"] == pytest.approx(1.0) and d["overall"]["ER"] == 0.0
    assert d["overall"]["LE"] < 1e-6 and d["recordings"] == 2 and d["n_classes"] == 4


def test_cli_scores_predictions_and_names_a_missing_file(tmp_path):
    from typer.testing import CliRunner

    from bast.cli import app

    result = CliRunner().invoke(app, ["seld-metrics", str(DATA / "random" / "ref"), str(DATA / "random" / "pred")])
    assert result.exit_code == 0, result.output
    assert f"F {100 * REFERENCE['random/macro']['F']:.1f} %" in result.output
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "scene-e.csv").write_text((DATA / "random" / "pred" / "scene-e.csv").read_text())
    result = CliRunner().invoke(app, ["seld-metrics", str(DATA / "random" / "ref"), str(tmp_path / "pred")])
    assert result.exit_code == 1 and "error:" in result.output and "scene-f.csv" in result.output
