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
from bast.corpora.procedural import DefaultCorpus
from bast.errors import DataError
from bast.model.config import preset
from bast.model.train import train
from bast.model.transfer import evaluate_run, stored_evaluations
from bast.pipeline.featurize import featurize
from bast.pipeline.irs import parse_direction_options
from bast.pipeline.scenes import ScenesConfig, render_scenes
from bast.seld_metrics import read_dcase_csv, score_directories

KINDS = ("white_noise", "harmonic", "clicks")


@pytest.fixture(scope="module")
def seld_run(tmp_path_factory):
    """8 two-second anechoic scenes of 3 classes (up to 2 overlapping, half moving) and a
    tiny seldnet trained on them for 2 epochs (about 10 s on 2 cores)."""
    out = tmp_path_factory.mktemp("seldreport")
    refs = [r for r in DefaultCorpus(n_clips=60, seed=3, speech=False).list_clips() if r.category in KINDS]
    config = ScenesConfig(count=8, duration_s=2.0, events=(2, 3), max_overlap=2, moving=0.5, speed=(30, 90),
                          directions=parse_direction_options("0:360:30"), environments=("anechoic",), seed=3,
                          scenes_per_shard=2, test_fraction=0.25)
    render_scenes(refs, out / "s1", config)
    featurize(out / "s1", out / "s2")
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
