"""The command line, as a user meets it."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bast import __version__
from bast.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


COMMANDS = {"spatialize", "scenes", "featurize", "train", "evaluate", "localize", "report", "demo", "irs",
            "seld-metrics", "export-dcase"}


def test_every_command_has_help():
    """Every command the app registers (a new one is covered without editing this list, and
    one dropped from it fails here) answers --help with its usage and its own summary."""
    import typer.main

    commands = typer.main.get_command(app).commands
    assert set(commands) == COMMANDS
    for name, command in sorted(commands.items()):
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output and name in result.output, name
        summary = " ".join(command.help.split(".")[0].split()[:3])
        assert summary and summary in " ".join(result.output.split()), name


def test_irs_measures_and_plots_both_environments(tmp_path, hall_bank):
    result = runner.invoke(app, ["irs", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "irs.json").read_text())
    assert set(figures) == {"anechoic", "hall"}
    for env in ("anechoic", "hall"):
        png = tmp_path / f"irs-{env}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        az = figures[env]["horizontal_azimuths"]
        assert figures[env]["itd_ms"][az.index(90.0)] > 0.5  # left ear leads at 90 deg
    assert figures["hall"]["reverberant"] and not figures["anechoic"]["reverberant"]
    assert figures["hall"]["rt60_s"]["1000"] == pytest.approx(0.8, rel=0.15)
    assert "direct-to-reverberant" in result.output


def test_irs_on_a_broken_file_gives_one_clear_error(tmp_path):
    bad = tmp_path / "broken.sofa"
    bad.write_text("this is not a SOFA file")
    result = runner.invoke(app, ["irs", "--env", "anechoic", "--hrir", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "broken.sofa" in result.output and isinstance(result.exception, SystemExit)


def test_irs_refuses_an_unknown_environment(tmp_path):
    result = runner.invoke(app, ["irs", "--env", "cathedral", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown environment" in result.output


def test_readme_and_ci_run_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    assert len(commands) >= 2, "README must start with the demo and the test commands"
    test_command = commands[1].strip()
    assert "pytest" in test_command
    assert test_command in ci


def test_procedural_training_sounds_with_a_recorded_test_folder(tmp_path):
    # --test with the default corpus: the folder's sounds are the test split, every
    # procedural sound is train or val (nothing drawn for test), and the source records it
    import h5py
    import numpy as np
    import soundfile as sf

    rec = tmp_path / "recorded"
    rec.mkdir()
    rng = np.random.default_rng(0)
    for name in ("door.wav", "voice.wav"):
        sf.write(rec / name, 0.1 * rng.standard_normal(8000), 16000)
    (rec / "notes.txt").write_text("not audio")
    out = tmp_path / "s1"
    result = runner.invoke(app, ["spatialize", "default", str(out), "--sounds", "6", "--no-speech", "--test", str(rec),
                                 "--azimuths", "0,90", "--env", "anechoic", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "8 sounds from default" in result.output and "1 non-audio files ignored" in result.output
    splits = {}
    for shard in sorted((out / "shards").glob("*.h5")):
        with h5py.File(shard) as f:
            for clip, split in zip(f["clip_id"].asstr()[()], f["split"].asstr()[()]):
                splits[clip] = split
    assert {c for c, s in splits.items() if s == "test"} == {"test/door.wav", "test/voice.wav"}
    assert len(splits) == 8 and all(s in ("train", "val") for c, s in splits.items() if c.startswith("default/"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["source"]["test"] == str(rec.resolve())


@pytest.mark.parametrize("args, named", [
    (["--device", "cuda"], "CUDA is not available"),
    (["--amp", "fp8"], "amp must be one of auto, bf16, none, not 'fp8'"),
    (["--set", "schedule=linear"], "schedule must be one of constant, cosine, not 'linear'"),
    (["--set", "nosuchkey=1"], "unknown setting(s) nosuchkey"),
    (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N"),
    (["--set", "lr=fast"], "lr must be a float"),
])
def test_train_refuses_a_bad_setting_in_one_line(small_features, tmp_path, args, named):
    import torch

    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    result = runner.invoke(app, ["train", str(small_features), "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 1, result.output
    assert named in result.output and isinstance(result.exception, SystemExit)
    assert result.output.strip().startswith("error:") and not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_demo_trains_bast_and_the_mlp_and_a_rerun_repeats_its_figures(tmp_path):
    """The demo end to end on a few sounds: both models trained, one report of both; run
    again, it redoes nothing and prints the same figures (no step depends on the clock)."""
    args = ["demo", "--out", str(tmp_path / "demo"), "--sounds", "12", "--workers", "0"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    figures = re.findall(r"(bast|mlp): test AD ([0-9.]+) deg", first.output)
    assert [name for name, _ in figures] == ["bast", "mlp"]
    page = (tmp_path / "demo" / "report" / "index.html").read_text()
    assert "BAST and the baselines side by side" in page and "MLP-MIX+phase" in page
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and re.findall(r"(bast|mlp): test AD ([0-9.]+) deg", second.output) == figures
