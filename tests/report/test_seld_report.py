"""A trained SELD run after training: `evaluate` on scenes, `report` with its SELD tables and
timelines, `localize` on binaural recordings writing DCASE CSVs (docs/seld.md)."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from bast.cli import app
from bast.errors import DataError
from bast.model.runs.config import preset
from bast.model.train import train
from bast.model.evaluation.runs import evaluate_run, stored_evaluations
from bast.pipeline.features.featurize import featurize
from bast.dcase.files import read_dcase_csv
from bast.dcase.metrics import score_directories
from helpers import SELD_KINDS, render_seld_scenes

KINDS = SELD_KINDS


@pytest.fixture(scope="module")
def seld_run(tmp_path_factory):
    """8 two-second anechoic scenes of 3 classes (up to 2 overlapping, half moving) and a
    tiny seldnet trained on them for 2 epochs (about 10 s on 2 cores)."""
    out = tmp_path_factory.mktemp("seldreport")
    render_seld_scenes(out, count=8, duration_s=2.0, events=(2, 3), scenes_per_shard=2)
    cfg = preset("tiny", arch="seldnet", target="seld", epochs=2, batch_size=16, device="cpu", seed=0)
    train(out / "s2", out / "run", cfg)
    return out


@pytest.fixture
def run(seld_run, tmp_path):
    """A copy of the trained run, so that each test writes into its own."""
    shutil.copytree(seld_run / "run", tmp_path / "run")
    return tmp_path / "run"


def test_evaluate_on_scenes_writes_the_final_tests_outputs_and_reuses_them(seld_run, run):
    m = evaluate_run(run, seld_run / "s2", split="test", device="cpu")
    out = run / "eval" / m["name"]
    test = json.loads((run / "eval" / "test.json").read_text())
    # the same checkpoint on the same test scenes: the final test's numbers and files
    for k in ("n", "f20", "er20", "le_deg", "lr", "seld_score", "windows"):
        assert m[k] == pytest.approx(test[k]), k
    assert m["target"] == "seld" and m["classes_list"] == sorted(KINDS) and not m["reused"]
    for part in ("ref", "pred"):
        names = sorted(p.name for p in (out / "seld" / part).glob("*.csv"))
        assert names == sorted(p.name for p in (run / "eval" / "seld" / part).glob("*.csv")) and names
        for name in names:
            assert (out / "seld" / part / name).read_text() == (run / "eval" / "seld" / part / name).read_text()
    again = score_directories(out / "seld" / "ref", out / "seld" / "pred", n_classes=3)
    assert again.f == pytest.approx(m["f20"]) and again.seld == pytest.approx(m["seld_score"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["data_sha256"] == m["data_sha256"] and saved["checkpoint_sha256"]
    listed = stored_evaluations(run)[m["name"]]
    assert listed["target"] == "seld" and listed["f20"] == pytest.approx(m["f20"]) and listed["n"] == 2
    # stored: reused while data and checkpoint are unchanged; all scenes: another set
    assert evaluate_run(run, seld_run / "s2", split="test", device="cpu")["reused"]
    every = evaluate_run(run, seld_run / "s2", split="all", device="cpu")
    assert every["n"] == 8 and every["name"] != m["name"]
    assert len(list((run / "eval" / every["name"] / "seld" / "pred").glob("*.csv"))) == 8


def test_evaluate_refuses_clips_for_a_seld_run_and_scenes_for_a_clip_run(seld_run, run, tmp_path):
    # a clip run (its config says so; refused before its checkpoint loads) on scenes
    with pytest.raises(DataError, match="holds scenes, and run .* single-source clips"):
        clip_run = tmp_path / "cliprun"
        clip_run.mkdir()
        config = json.loads((run / "config.json").read_text())
        config.update(target="azimuth", arch="mlp")
        (clip_run / "config.json").write_text(json.dumps(config))
        (clip_run / "checkpoints").mkdir()
        shutil.copy(run / "checkpoints" / "best.pt", clip_run / "checkpoints" / "best.pt")
        evaluate_run(clip_run, seld_run / "s2", device="cpu")
    # a clip Stage 2 folder (its manifest, which is what decides) for the SELD run
    manifest = {"stage": "featurize", "params": {"stage": "featurize"}, "shards": [], "totals": {}}
    fake = tmp_path / "clips"
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="holds clips, and run .* is a SELD run"):
        evaluate_run(run, fake, device="cpu")
    res = CliRunner().invoke(app, ["evaluate", str(run), "--on", str(fake), "--device", "cpu"])
    assert res.exit_code == 1 and "error:" in res.output and "SELD run" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) <= 3  # one message, no traceback


def _scene_wavs(seld_run, out: Path, split: str = "test") -> dict[str, Path]:
    """The Stage 1 audio of the `split` scenes as float WAVs (exactly the samples featurized)."""
    wavs = {}
    out.mkdir(parents=True, exist_ok=True)
    for shard in sorted((seld_run / "s1" / "shards").glob("*.h5")):
        with h5py.File(shard, "r") as f:
            ids, splits = f["scene_id"].asstr()[()], f["split"].asstr()[()]
            for i in np.flatnonzero(splits == split):
                wavs[str(ids[i])] = out / f"{ids[i]}.wav"
                sf.write(wavs[str(ids[i])], f["audio"][i].T, 16000, subtype="FLOAT")
    return wavs


def test_localize_on_a_scenes_audio_gives_what_evaluate_gave_for_that_scene(seld_run, run, tmp_path):
    """The same model, the same windows: localize (features float32 from the WAV) and
    evaluate (features stored in float16 by featurize) agree up to that rounding."""
    from bast.model.data.loaders import Selection
    from bast.model.inference.localize import load_localizer, load_target
    from bast.model.data.scenes import SceneWindows
    from bast.model.evaluation.seld import predict_windows, stitch
    from bast.model.inference.seld import localize_recording

    m = evaluate_run(run, seld_run / "s2", split="test", device="cpu")
    wavs = _scene_wavs(seld_run, tmp_path / "wav")
    assert len(wavs) == 2
    res = CliRunner().invoke(app, ["localize", str(run), *map(str, wavs.values()), "--out", str(tmp_path / "loc"),
                                   "--device", "cpu"])
    assert res.exit_code == 0, res.output
    compared = 0
    for scene, wav in wavs.items():
        got = read_dcase_csv(tmp_path / "loc" / f"{scene}.csv")
        want = read_dcase_csv(run / "eval" / m["name"] / "seld" / "pred" / f"{scene}_anechoic.csv")
        assert len(want) > 10  # the tiny model predicts events here, so the comparison has rows to compare
        a, b = set(map(tuple, got.tolist())), set(map(tuple, want.tolist()))
        # float16 rounding may flip a track lying at the 0.5 threshold, or a degree of direction: a few rows
        assert len(a ^ b) <= max(2, len(b) // 20), (len(a ^ b), len(b))
        compared += len(a & b)
        summary = json.loads((tmp_path / "loc" / f"{scene}.json").read_text())
        assert summary["target"] == "seld" and summary["label_frames"] == 20 and summary["rows"] == len(got)
        assert (tmp_path / "loc" / f"{scene}.png").stat().st_size > 10_000
    assert compared > 20
    # the stitched outputs themselves: within float16 rounding of the input, and a window
    # misplaced by one label frame, or another scene, would be far outside that
    model, dev = load_localizer(run, "cpu")
    target = load_target(run)
    data = SceneWindows(Selection.of(seld_run / "s2", "test", "RI"), 61, 3, "cpu")
    outputs, _ = predict_windows(model, data, target)
    stitched = dict(zip((s.scene_id for s in data.scenes), stitch(outputs, data)))
    for scene, wav in wavs.items():
        loc = localize_recording(model, wav, target, 61, dev)
        other = stitched[next(k for k in stitched if k != scene)]
        assert loc.output.shape == stitched[scene].shape == (20, 3, 3, 3)
        assert np.abs(loc.output - stitched[scene]).max() < 5e-3
        assert np.abs(loc.output[1:] - stitched[scene][:-1]).max() > 0.05
        assert np.abs(loc.output - other).max() > 0.05


def test_localize_on_a_seld_run_skips_a_short_file_and_reads_other_rates(seld_run, run, tmp_path):
    from scipy.signal import resample_poly

    wav = next(iter(_scene_wavs(seld_run, tmp_path / "wav").values()))
    audio, _ = sf.read(wav, dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, audio[:4000], 16000)  # 250 ms: no 61-frame window
    fast = tmp_path / "fast.wav"
    sf.write(fast, resample_poly(audio, 3, 1, axis=0), 48000, subtype="FLOAT")
    res = CliRunner().invoke(app, ["localize", str(run), str(short), str(fast), "--out", str(tmp_path / "loc"),
                                   "--device", "cpu"])
    assert res.exit_code == 1
    assert "error:" in res.output and "short.wav: 250 ms long" in res.output and "496 ms" in res.output
    assert not (tmp_path / "loc" / "short.csv").exists()
    rows = read_dcase_csv(tmp_path / "loc" / "fast.csv")  # resampled to 16 kHz: the same 20 frames
    assert len(rows) and rows[:, 0].max() <= 19 and set(np.unique(rows[:, 1])) <= {0, 1, 2}
    assert json.loads((tmp_path / "loc" / "fast.json").read_text())["sample_rate_in"] == 48000
    # a SELD run's windows are its own: the clip options are refused, not ignored
    res = CliRunner().invoke(app, ["localize", str(run), str(wav), "--out", str(tmp_path / "loc2"), "--hop-ms", "50"])
    assert res.exit_code == 1 and "SELD run" in res.output and not (tmp_path / "loc2").exists()


def test_the_report_layer_reads_seld_results_without_torch():
    import subprocess
    import sys

    code = "import sys, bast.report.seld; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_report_with_a_seld_run_beside_a_single_source_run(seld_run, run, tmp_path):
    from bast.datasets.procedural import DefaultCorpus
    from bast.pipeline.render.spatialize import SpatializeConfig, spatialize
    from bast.report.figures import seld_timeline

    refs = DefaultCorpus(n_clips=12, seed=4, speech=False).list_clips()
    spatialize(refs, tmp_path / "c1", SpatializeConfig(azimuths=(0.0, 90.0, 180.0, 270.0), seed=4,
                                                      samples_per_shard=16))
    featurize(tmp_path / "c1", tmp_path / "c2")
    train(tmp_path / "c2", tmp_path / "clip", preset("tiny", arch="mlp", batch_size=16, device="cpu", epochs=1))
    evaluate_run(run, seld_run / "s2", split="all", device="cpu")
    shutil.rmtree(run / "eval" / "seld")  # the report runs the final test again for it
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", str(run), str(tmp_path / "clip"), "--out", str(out),
                                   "--rollout-samples", "0"])
    assert res.exit_code == 0, res.output
    assert "predict nothing: F20 0.0 %, ER20 1.00, LE 180.0 deg, LR 0.0 %" in res.output and "test AD" in res.output
    test = json.loads((run / "eval" / "test.json").read_text())
    assert len(list((run / "eval" / "seld" / "pred").glob("*.csv"))) == test["n"] == 2
    rows = (out / "seld.csv").read_text().splitlines()
    assert rows[0] == "run,model,backbone,parameters,epochs,scenes,f20,er20,le_deg,lr,seld_score,edition,rde" \
        and len(rows) == 3
    mine = rows[1].split(",")
    assert mine[1] == "seldnet" and float(mine[6]) == pytest.approx(test["f20"])
    assert float(mine[10]) == pytest.approx(test["seld_score"])
    nothing = rows[2].split(",")
    assert nothing[0] == "predict nothing" and int(nothing[5]) == 2
    # scored, not assumed: F 0, ER 1 (every reference track deleted), LE 180, LR 0, SELD 1
    assert [float(v) for v in nothing[6:11]] == pytest.approx([0.0, 1.0, 180.0, 0.0, 1.0])
    # both scored by DCASE 2023: the run's rows carry no predicted distance
    assert mine[11] == nothing[11] == test["edition"] == "2023"
    assert mine[12] == nothing[12] == ""  # DCASE 2023 scores no distance: no relative distance error
    classes = (out / "seld_classes.csv").read_text().splitlines()
    assert [c.split(",")[1] for c in classes[1:]] == sorted(KINDS)
    assert classes[0].split(",")[6] == "rde" and all(c.split(",")[6] == "" for c in classes[1:])  # 2023: no distance
    page = (out / "index.html").read_text()
    for heading in ("SELD: detection", "SELD per class", "SELD runs on other data sets", "Runs</h2>"):
        assert heading in page, heading
    timelines = sorted(p.name for p in (out / "figures").glob("*_seld_*.png"))
    assert timelines == ["run_seld_0.png", "run_seld_1.png"]  # its 2 test scenes (at most 3 drawn)
    assert page.count("data:image/png") == len(list((out / "figures").glob("*.png")))
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 1 and next(iter(summary["runs"])).startswith("MLP")  # the clip run alone
    assert any("seldnet" in k for k in summary["seld"])
    # a scene where nothing is predicted, and one without reference, still draw
    assert seld_timeline(np.zeros((0, 5)), tmp_path / "empty.png", KINDS, ref_rows=np.zeros((0, 5))).exists()
