"""Hostile input, second round (issue 29): outputs that would land on an input, nonsense
reported as success, and files that cannot be used, on the scene, SELD and training
commands. Each refusal is one `error:` line (exit 1), never a traceback, leaves the inputs'
bytes unchanged and writes nothing; a bad file never stops the good files after it.

Cases that read audio or could block run the CLI in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bast import options
from helpers import cli, refused, small_run, snapshot
from bast.errors import ConfigError
from helpers import render_seld_scenes

ROOT = Path(__file__).resolve().parents[2]
HANG_LIMIT_S = 120


# --------------------------------------------------------------------------- helpers




def cli_process(*args) -> tuple[int, str]:
    """The CLI in its own process, killed after HANG_LIMIT_S: a hang fails the test."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    try:
        done = subprocess.run([sys.executable, "-m", "bast.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=HANG_LIMIT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bast-cli {' '.join(map(str, args))} hung (> {HANG_LIMIT_S} s)")
    return done.returncode, done.stdout + done.stderr



def strict_json(path: Path):
    """The file parsed as strict JSON: NaN or Infinity fail the test."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))


def wav(path: Path, samples: int = 32000, channels: int = 2) -> Path:
    x = 0.1 * np.random.default_rng(1).standard_normal((samples, channels))
    sf.write(path, x, 16000)
    return path


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Stage 1 (8 sounds x 4 azimuths, anechoic), Stage 2 and a one-epoch run."""
    return small_run(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def seld(tmp_path_factory):
    """8 two-second scenes (Stage 1 and 2) and a seldnet trained one epoch on them, with
    its test's DCASE CSVs (run/eval/seld/{ref,pred})."""
    from bast.model.runs.config import preset
    from bast.model.train import train

    root = tmp_path_factory.mktemp("seld")
    render_seld_scenes(root, count=8, duration_s=2.0, events=(2, 3), scenes_per_shard=2)
    train(root / "s2", root / "run", preset("tiny", arch="seldnet", target="seld", epochs=1, batch_size=16,
                                            device="cpu", seed=0))
    return root


@pytest.fixture
def dcase(seld, tmp_path) -> Path:
    """A private copy of the SELD run's reference and predicted CSVs."""
    shutil.copytree(seld / "run" / "eval" / "seld", tmp_path / "dcase")
    return tmp_path / "dcase"


@pytest.fixture
def sounds(tmp_path) -> Path:
    folder = tmp_path / "sounds"
    folder.mkdir()
    for i in range(3):
        wav(folder / f"s{i}.wav", 16000, 1)
    return folder


# --------------------------------------------------------------------------- 1. no output on an input


def test_seld_metrics_json_never_replaces_a_prediction(dcase, tmp_path):
    # `seld-metrics REF PRED --json PRED/a.csv` used to replace a prediction file with JSON
    pred = dcase / "pred"
    first = sorted(pred.glob("*.csv"))[0]
    before = snapshot(dcase)
    refused(*cli("seld-metrics", dcase / "ref", pred, "--json", first), "--json", "PRED_DIR")
    refused(*cli("seld-metrics", dcase / "ref", pred, "--json", pred / "scores.json"), "inside PRED_DIR")
    refused(*cli("seld-metrics", dcase / "ref", pred, "--json", dcase / "ref" / "scores.json"), "inside REF_DIR")
    assert snapshot(dcase) == before and not (pred / "scores.json").exists()


def test_seld_metrics_json_on_a_folder_is_one_line(dcase, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    refused(*cli("seld-metrics", dcase / "ref", dcase / "pred", "--json", folder), "--json", "a folder")
    assert not list(folder.iterdir())


def test_seld_metrics_json_in_a_new_folder_is_written(dcase, tmp_path):
    code, out = cli("seld-metrics", dcase / "ref", dcase / "pred", "--json", tmp_path / "new" / "scores.json")
    assert code == 0, out
    assert strict_json(tmp_path / "new" / "scores.json")["recordings"] > 0


def test_export_dcase_never_writes_into_the_scenes_folder(seld, tmp_path):
    s1 = tmp_path / "s1"
    shutil.copytree(seld / "s1", s1)
    before = snapshot(s1)
    refused(*cli("export-dcase", s1, s1), "is the scenes folder")
    refused(*cli("export-dcase", s1, s1 / "dcase"), "inside the scenes folder")
    out = tmp_path / "export"
    refused(*cli("export-dcase", out / "stereo_dev", out), "stereo_dev")  # what the export writes holds the input
    assert snapshot(s1) == before and not (s1 / "stereo_dev").exists()


def test_scenes_export_into_the_sound_folder_is_refused_before_any_work(sounds, tmp_path):
    # `scenes SRC OUT --export-dcase SRC` used to write stereo_dev/ and metadata_dev/ among the sounds
    before = snapshot(sounds)
    common = ("--count", "2", "--duration", "1", "--env", "anechoic", "--azimuths", "0,90", "--workers", "0")
    refused(*cli("scenes", sounds, tmp_path / "out", "--export-dcase", sounds, *common), "--export-dcase",
            "the sound source")
    refused(*cli("scenes", sounds, tmp_path / "out", "--export-dcase", sounds / "dcase", *common), "inside")
    refused(*cli("scenes", sounds, tmp_path / "out", "--export-dcase", tmp_path / "out", *common), "the scenes folder")
    assert snapshot(sounds) == before
    assert not (tmp_path / "out").exists() and sorted(p.name for p in sounds.iterdir()) == ["s0.wav", "s1.wav", "s2.wav"]


def test_train_never_writes_a_run_into_its_data(clip, seld, tmp_path):
    for s2, extra in ((clip / "s2", ()), (seld / "s2", ("--target", "seld", "--model", "seldnet"))):
        before = snapshot(s2)
        refused(*cli("train", s2, "--out", s2, "--epochs", "1", *extra), "is the Stage 2 folder")
        refused(*cli("train", s2, "--out", s2 / "run", "--epochs", "1", *extra), "inside the Stage 2 folder")
        assert snapshot(s2) == before and not (s2 / "run").exists() and not (s2 / "config.json").exists()


def test_train_on_the_fly_never_writes_into_its_stage1(clip):
    s1 = clip / "s1"
    before = snapshot(s1)
    refused(*cli("train", s1, "--on-the-fly", "--out", s1 / "run", "--epochs", "1"), "inside the Stage 1 folder")
    assert snapshot(s1) == before and not (s1 / "run").exists()


def test_train_never_writes_where_its_data_lies(clip, tmp_path):
    # a run folder whose checkpoints/ or eval/ would hold the data it reads
    s2 = tmp_path / "run" / "eval" / "s2"
    shutil.copytree(clip / "s2", s2)
    before = snapshot(s2)
    refused(*cli("train", s2, "--out", tmp_path / "run", "--epochs", "1"), "lies in", "eval")
    assert snapshot(s2) == before and not (tmp_path / "run" / "config.json").exists()


def test_evaluate_never_writes_into_the_data_it_reads(clip, tmp_path):
    # a run kept inside a Stage 2 folder: its eval/ would be written into that data
    s2 = tmp_path / "s2"
    shutil.copytree(clip / "s2", s2)
    shutil.copytree(clip / "run", s2 / "run")
    before = snapshot(s2)
    refused(*cli("evaluate", s2 / "run", "--on", s2, "--device", "cpu"), "evaluation folder", "inside --on")
    refused(*cli("evaluate", s2 / "run", "--on", s2 / "run", "--device", "cpu"), "inside --on")
    assert snapshot(s2) == before


def test_output_file_check(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("0,0,0,0,0\n")
    with pytest.raises(ConfigError, match="is an input"):
        options.output_file(data / "a.csv", "--json", inputs=[data / "a.csv"])
    with pytest.raises(ConfigError, match="is inside DATA"):
        options.output_file(data / "x.json", "--json", inputs=[("DATA", data)])
    with pytest.raises(ConfigError, match="a folder"):
        options.output_file(data, "--json")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        options.output_file(fifo, "--json")
    assert options.output_file(tmp_path / "new" / "x.json", "--json", inputs=[("DATA", data)]).name == "x.json"


# --------------------------------------------------------------------------- 4. no nonsense as success


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5", "180.5", "1e9"])
def test_seld_metrics_refuses_a_threshold_that_is_no_angle(dcase, value):
    refused(*cli("seld-metrics", dcase / "ref", dcase / "pred", "--threshold", value), f"--threshold {value}"[:13],
            "0 to 180")


def test_seld_metrics_accepts_the_ends_of_the_threshold(dcase):
    for value in ("180", "0.5"):
        assert cli("seld-metrics", dcase / "ref", dcase / "pred", "--threshold", value)[0] == 0


def _empty_reference(tmp_path: Path, prediction: str) -> tuple[Path, Path]:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for name in ("a.csv", "b.csv"):
        (ref / name).write_text("")
        (pred / name).write_text(prediction)
    return ref, pred


def test_an_empty_reference_with_predictions_is_refused_not_scored(tmp_path):
    # used to score ER 9e15 (insertions / eps) with exit 0
    ref, pred = _empty_reference(tmp_path, "3,0,0,10,0\n4,1,0,20,0\n")
    before = snapshot(ref, pred)
    refused(*cli("seld-metrics", ref, pred, "--classes", "2", "--json", tmp_path / "s.json"), "no events",
            "undefined")
    assert snapshot(ref, pred) == before and not (tmp_path / "s.json").exists()


def test_predicting_nothing_on_empty_scenes_is_scored_as_dcase_does(tmp_path):
    # DCASE 2023's formulas on empty counts: ER 0/eps = 0, F 0/eps = 0, LE 180 (no true
    # positive), LR 0, SELD mean(0, 1, 1, 1) = 0.75; said in a note, and in the JSON
    ref, pred = _empty_reference(tmp_path, "")
    code, out = cli("seld-metrics", ref, pred, "--classes", "2", "--json", tmp_path / "s.json")
    assert code == 0, out
    assert "note:" in out and "no events" in out
    d = strict_json(tmp_path / "s.json")
    assert d["overall"] == {"ER": 0.0, "F": 0.0, "LE": 180.0, "LR": 0.0, "SELD": 0.75}
    assert "no events" in d["note"]


def test_model_scores_of_empty_scenes_are_strict_json_with_a_note():
    from bast.dcase.metrics import score_recordings
    from bast.fileio import json_text
    from bast.model.targets.names import METRIC_NOTES

    empty = np.zeros((0, 5))
    nothing = score_recordings([(empty, empty, 20)], 3)
    assert (nothing.er, nothing.f, nothing.le, nothing.lr, nothing.seld) == (0.0, 0.0, 180.0, 0.0, 0.75)
    assert "no events" in nothing.note
    wrong = score_recordings([(empty, np.array([[1, 0, 0, 10.0, 0.0]]), 20)], 3)
    assert math.isnan(wrong.er) and math.isnan(wrong.seld) and "undefined" in wrong.note
    text = json_text({"er20": wrong.er, "seld_score": wrong.seld, "f20": wrong.f}, METRIC_NOTES)
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))
    assert d["er20"] is None and "no events" in d["er20_note"] and d["seld_score"] is None and d["f20"] == 0.0


def test_strict_json_puts_null_and_the_reason_for_every_non_finite_number():
    from bast.fileio import json_text

    value = {"le_deg": np.float32("nan"), "n": np.int64(3), "by_env": {"hall": {"mse": math.inf}},
             "curve": np.array([1.0, np.nan]), "ok": 1.5}
    d = json.loads(json_text(value, {"le_deg": "no true positive"}), parse_constant=lambda c: pytest.fail(c))
    assert d == {"le_deg": None, "le_deg_note": "no true positive", "n": 3, "ok": 1.5, "curve": [1.0, None],
                 "by_env": {"hall": {"mse": None, "mse_note": d["by_env"]["hall"]["mse_note"]}}}
    assert d["by_env"]["hall"]["mse_note"]


def test_every_json_a_run_writes_is_strict(clip, seld):
    for run in (clip / "run", seld / "run"):
        paths = [run / "config.json", run / "eval" / "test.json"]
        assert all(p.exists() for p in paths)
        for path in paths:
            strict_json(path)
        for line in (run / "metrics.jsonl").read_text().splitlines():
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


def test_a_classifier_of_one_category_is_refused_and_writes_nothing(tmp_path):
    # used to report accuracy 1.0 beside chance 1.0 without a word
    common = ("--workers", "0")
    code, out = cli("spatialize", "default", tmp_path / "s1", "--sounds", "10", "--no-speech", "--categories",
                    "white_noise", "--env", "anechoic", "--azimuths", "0,90", *common)
    assert code == 0, out
    assert cli("featurize", tmp_path / "s1", tmp_path / "s2", *common)[0] == 0
    before = snapshot(tmp_path / "s2")
    for target in ("category", "direction+category"):
        refused(*cli("train", tmp_path / "s2", "--out", tmp_path / "run", "--target", target, "--epochs", "1"),
                f"--target {target}", "1 sound category", "white_noise")
    assert not (tmp_path / "run").exists() and snapshot(tmp_path / "s2") == before


# --------------------------------------------------------------------------- 5. files that cannot be used


def _bad_audio(folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    good = wav(folder / "good.wav")
    sf.write(folder / "empty.wav", np.zeros((0, 2)), 16000)
    sf.write(folder / "tiny.wav", np.zeros((10, 2)), 16000)
    data = good.read_bytes()
    (folder / "cut.wav").write_bytes(data[: len(data) // 3])  # truncated: libsndfile reads what is there
    (folder / "junk.wav").write_bytes(b"RIFF\x00\x00")
    return {p.stem: p for p in folder.iterdir()}


@pytest.mark.parametrize("kind", ["clip", "seld"])
def test_localize_names_each_bad_recording_and_goes_on(clip, seld, tmp_path, kind):
    # a 0-sample WAV on a SELD run used to end in a traceback, the files after it not processed
    run = (clip if kind == "clip" else seld) / "run"
    files = _bad_audio(tmp_path / "audio")
    order = [files[n] for n in ("empty", "junk", "tiny", "cut", "good")]
    before = snapshot(tmp_path / "audio")
    code, out = cli_process("localize", run, *order, "--out", tmp_path / "loc", "--device", "cpu")
    assert code == 1 and "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 3, out
    for name, words in (("empty", "no samples"), ("junk", "cannot read it as audio"), ("tiny", "long")):
        assert any(str(files[name]) in line and words in line for line in lines), (name, out)
    for stem in ("cut", "good"):  # the good files after the bad ones are processed
        strict_json(tmp_path / "loc" / f"{stem}.json")
        assert (tmp_path / "loc" / f"{stem}.csv").exists()
    assert not (tmp_path / "loc" / "empty.json").exists() and snapshot(tmp_path / "audio") == before


def test_stage1_skips_unusable_sounds_and_renders_the_rest(tmp_path):
    files = _bad_audio(tmp_path / "sounds")
    before = snapshot(tmp_path / "sounds")
    code, out = cli_process("scenes", tmp_path / "sounds", tmp_path / "sc", "--count", "2", "--duration", "1",
                            "--env", "anechoic", "--azimuths", "0,90", "--workers", "0")
    assert code == 3 and "Traceback" not in out, out
    reasons = {json.loads(line)["clip_id"]: json.loads(line)["reason"]
               for line in (tmp_path / "sc" / "failures.jsonl").read_text().splitlines()}
    assert {"empty.wav", "junk.wav", "tiny.wav"} <= set(reasons), reasons
    assert "good.wav" not in reasons and snapshot(tmp_path / "sounds") == before
    assert files["good"].exists()


def test_a_dcase_csv_with_a_bom_is_read_like_one_without(dcase, tmp_path):
    # a spreadsheet's CSV starts with a UTF-8 BOM
    plain = cli("seld-metrics", dcase / "ref", dcase / "pred")
    for path in (dcase / "ref").glob("*.csv"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, out = cli("seld-metrics", dcase / "ref", dcase / "pred")
    assert code == 0 and out == plain[1], out


def test_a_directions_csv_with_a_latin1_byte_is_one_line(tmp_path):
    csv = tmp_path / "dirs.csv"
    csv.write_bytes("azimuth,elevation\n0,0\n90,0\n# caf\u00e9\n".encode("latin-1"))
    before = snapshot(csv)
    refused(*cli("spatialize", "default", tmp_path / "out", "--sounds", "10", "--no-speech", "--env", "anechoic",
                 "--directions", csv), "UTF-8", "0xe9")
    assert snapshot(csv) == before and not (tmp_path / "out").exists()


def test_a_directions_csv_with_a_bom_is_accepted(tmp_path):
    csv = tmp_path / "dirs.csv"
    csv.write_bytes(b"\xef\xbb\xbfazimuth,elevation\n0,0\n90,0\n")
    from bast.pipeline.irs.sources import read_directions_csv

    assert read_directions_csv(csv).tolist() == [[0.0, 0.0], [90.0, 0.0]]


def test_seld_metrics_on_a_fifo_or_a_file_in_place_of_a_folder_is_one_line(dcase):
    # a FIFO named like a prediction would block the read forever
    fifo = sorted((dcase / "pred").glob("*.csv"))[0]
    fifo.unlink()
    os.mkfifo(fifo)
    code, out = cli_process("seld-metrics", dcase / "ref", dcase / "pred")
    refused(code, out, "FIFO", fifo.name)
    a_file = sorted((dcase / "ref").glob("*.csv"))[0]
    refused(*cli("seld-metrics", a_file, dcase / "ref"), str(a_file), "not a folder")


def test_a_report_never_writes_into_the_data_of_its_runs(clip):
    s2 = clip / "s2"
    before = snapshot(s2)
    refused(*cli("report", clip / "run", "--out", s2 / "report", "--rollout-samples", "0"), "the data of run")
    assert snapshot(s2) == before and not (s2 / "report").exists()


def test_localize_refuses_a_recording_at_an_absurd_sample_rate(clip, tmp_path):
    # a 1 Hz header would resample a small file into gigabytes
    odd = tmp_path / "odd.wav"
    sf.write(odd, np.zeros((1000, 2)), 1)
    good = wav(tmp_path / "good.wav")
    code, out = cli_process("localize", clip / "run", odd, good, "--out", tmp_path / "loc", "--device", "cpu")
    refused(code, out, str(odd), "sample rate 1 Hz")
    assert (tmp_path / "loc" / "good.csv").exists() and not (tmp_path / "loc" / "odd.csv").exists()


def test_a_silent_recording_says_why_it_has_no_mean_azimuth(clip, tmp_path):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, np.zeros((16000, 2)), 16000)
    code, out = cli("localize", clip / "run", quiet, "--out", tmp_path / "loc", "--device", "cpu")
    assert code == 0, out
    summary = strict_json(tmp_path / "loc" / "quiet.json")
    assert summary["circular_mean_azimuth_deg"] is None and "silent" in summary["circular_mean_azimuth_deg_note"]


def _latin1_name(folder: Path, stem: bytes) -> Path:
    """A file whose name holds a Latin-1 byte (not UTF-8), as an old archive leaves them."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + stem + b"\xe9.wav"))


def test_a_sound_named_in_latin1_is_skipped_with_a_note(sounds, tmp_path):
    odd = _latin1_name(sounds, b"caf")
    shutil.copy(sounds / "s0.wav", odd)
    code, out = cli_process("spatialize", sounds, tmp_path / "out", "--env", "anechoic", "--azimuths", "0,90",
                            "--workers", "0")
    assert code == 0 and "Traceback" not in out, out
    assert "not UTF-8" in out
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["totals"]["inputs"] == 3
    refused(*cli_process("spatialize", odd, tmp_path / "one", "--env", "anechoic", "--azimuths", "0,90"),
            "not UTF-8")


def test_localize_names_a_recording_named_in_latin1_and_goes_on(clip, tmp_path):
    good = wav(tmp_path / "good.wav")
    odd = _latin1_name(tmp_path, b"rec")
    shutil.copy(good, odd)
    refused(*cli_process("localize", clip / "run", odd, good, "--out", tmp_path / "loc", "--device", "cpu"),
            "not UTF-8")
    assert (tmp_path / "loc" / "good.json").exists() and len(list((tmp_path / "loc").iterdir())) == 3
