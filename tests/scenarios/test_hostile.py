"""Hostile but realistic input, for every command but `train`: each case gets one `error:`
line naming what is wrong (exit 1), never a traceback, a hang or a NaN called a result,
and loses nothing (the inputs' bytes are unchanged).

Cases that could hang (a FIFO, zero workers) run the CLI in a subprocess with a timeout.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from bast import options
from helpers import cli, refused, small_run, snapshot
from bast.errors import ConfigError, DataError, SofaError, StorageError
from bast.fileio import sha256_file

ROOT = Path(__file__).resolve().parents[2]
HANG_LIMIT_S = 60


# --------------------------------------------------------------------------- helpers




def cli_process(*args, cwd=None) -> tuple[int, str]:
    """The CLI in its own process, killed after HANG_LIMIT_S: a hang fails the test."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    try:
        done = subprocess.run([sys.executable, "-m", "bast.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=HANG_LIMIT_S, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bast-cli {' '.join(map(str, args))} hung (> {HANG_LIMIT_S} s)")
    return done.returncode, " ".join((done.stdout + done.stderr).split())



# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Stage 1 (8 sounds x 4 azimuths, anechoic), Stage 2, and a one-epoch run."""
    return small_run(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def stage1(data, tmp_path) -> Path:
    """A private copy of the Stage 1 output, free to damage."""
    copy = tmp_path / "s1"
    shutil.copytree(data / "s1", copy)
    return copy


def first_shard(stage1: Path) -> Path:
    return stage1 / json.loads((stage1 / "manifest.json").read_text())["shards"][0]["path"]


def relist(stage1: Path) -> None:
    """Record the shards' present checksums, as if Stage 1 had written them so."""
    manifest = json.loads((stage1 / "manifest.json").read_text())
    for s in manifest["shards"]:
        s["sha256"] = sha256_file(stage1 / s["path"])
    (stage1 / "manifest.json").write_text(json.dumps(manifest))


def sofa_copy(tmp_path: Path, name: str, change) -> Path:
    """The bundled KEMAR set, copied, with `change(h5py file)` applied."""
    from bast.pipeline.irs.sources import default_hrir_path

    path = tmp_path / name
    shutil.copy(default_hrir_path(), path)
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _silent(f):
    f["Data.IR"][...] = 0.0


def _huge(f):
    f["Data.IR"][...] = f["Data.IR"][()] * 1e30


def _one_hertz(f):
    f["Data.SamplingRate"][...] = 1.0


def _one_silent_direction(f):
    ir = f["Data.IR"][()]
    ir[3] = 0.0
    f["Data.IR"][...] = ir


BAD_SETS = [(_silent, "zero"), (_huge, "scaled wrongly"), (_one_hertz, "sampling rate 1 Hz"),
            (_one_silent_direction, "both ears all zero")]
SPATIALIZE = ("spatialize", "default")
SMALL = ("--sounds", "4", "--no-speech", "--env", "anechoic", "--azimuths", "0,90")


# --------------------------------------------------------------------------- options: one line, exit 1


@pytest.mark.parametrize("option, value, words", [
    ("--azimuths", "400", ["--azimuths 400", "0 to 360"]),
    ("--azimuths", "-90", ["--azimuths -90", "270"]),
    ("--azimuths", "0,0", ["given twice"]),
    ("--azimuths", "0:360:0.0001", ["at most 3600"]),
    ("--azimuths", "nan", ["--azimuths nan"]),
    ("--samples-per-shard", "0", ["--samples-per-shard 0", "from 1"]),
    ("--test-fraction", "-0.1", ["--test-fraction -0.1", "from 0 to 1"]),
    ("--val-fraction", "1", ["--val-fraction 1", "1 excluded"]),
    ("--val-fraction", "nan", ["--val-fraction nan"]),
    ("--ir-tolerance", "-1", ["--ir-tolerance -1", "from 0 to 180"]),
    ("--rooms", "-1", ["--rooms -1", "from 0"]),
    ("--test-rooms", "-3", ["--test-rooms -3"]),
    ("--rt60", "nan", ["--rt60 nan", "0.1 to 10 s"]),
    ("--rt60", "0", ["--rt60 0"]),
    ("--scheduler", "junk", ["--scheduler 'junk'", "tcp://host:8786"]),
    ("--workers", "100000", ["--workers 100000", "from 0 to 512"]),
    ("--seed", "-1", ["seed", "-1"]),
    ("--snr", "inf", ["--snr"]),
    ("--min-ms", "nan", ["min_ms"]),
    ("--examples", "-1", ["--examples -1"]),
])
def test_spatialize_refuses_an_out_of_range_option(tmp_path, option, value, words):
    args = {"--azimuths": "0,90", "--env": "anechoic"}
    args[option] = value
    flat = [x for kv in args.items() for x in kv]
    refused(*cli(*SPATIALIZE, tmp_path / "out", "--sounds", 4, "--no-speech", *flat), *words)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_zero_or_negative_workers_never_hang(stage1, tmp_path):
    # --workers -1 used to start a cluster of no workers and wait for them forever
    before = snapshot(stage1)
    refused(*cli_process(*SPATIALIZE, tmp_path / "a", *SMALL, "--workers", "-1"), "--workers -1", "0 to 512")
    refused(*cli_process("featurize", stage1, tmp_path / "b", "--workers", "-1"), "--workers -1")
    refused(*cli_process("irs", "--env", "anechoic", "--workers", "-1", "--out", tmp_path / "c"), "--workers -1")
    assert snapshot(stage1) == before


def test_a_malformed_scheduler_address_is_one_line(stage1, tmp_path):
    refused(*cli("featurize", stage1, tmp_path / "b", "--scheduler", "no-such-host.invalid"), "--scheduler")
    refused(*cli("featurize", stage1, tmp_path / "b", "--scheduler", "tcp://"), "--scheduler")


def test_output_that_is_an_existing_file_is_refused(stage1, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    refused(*cli(*SPATIALIZE, taken, *SMALL), f"{taken}", "existing file")
    refused(*cli("featurize", stage1, taken), "existing file")
    refused(*cli("irs", "--env", "anechoic", "--out", taken), "existing file")
    refused(*cli("demo", "--out", taken, "--sounds", "10"), "existing file")
    assert taken.read_text() == "keep me"


def test_a_csv_manifest_not_in_utf8_is_named(tmp_path):
    csv = tmp_path / "sounds.csv"
    csv.write_bytes("path,category\nbruit_\u00e9t\u00e9.wav,noise\n".encode("latin-1"))
    before = snapshot(csv)
    refused(*cli("spatialize", csv, tmp_path / "out", "--env", "anechoic"), str(csv), "UTF-8")
    assert snapshot(csv) == before


def test_a_fifo_as_sound_source_is_refused_not_read(tmp_path):
    fifo = tmp_path / "sounds.csv"
    os.mkfifo(fifo)
    refused(*cli_process("spatialize", fifo, tmp_path / "out", "--env", "anechoic"), "FIFO")


@pytest.mark.parametrize("change, words", BAD_SETS, ids=[c.__name__.strip("_") for c, _ in BAD_SETS])
def test_broken_ir_sets_are_refused_by_spatialize_and_irs(tmp_path, change, words):
    # an all-zero HRIR set used to render, featurize and train (AD 90 deg) with exit 0, and
    # `irs` printed ITD -1.000 and ILD nan for it; a set at 1 Hz tried to allocate 35 GiB
    bad = sofa_copy(tmp_path, "bad.sofa", change)
    before = snapshot(bad)
    refused(*cli(*SPATIALIZE, tmp_path / "out", *SMALL, "--hrir", bad), str(bad), words)
    refused(*cli("irs", "--env", "anechoic", "--hrir", bad, "--out", tmp_path / "irs"), str(bad), words)
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "irs" / "irs.json").exists()
    assert snapshot(bad) == before


def test_a_fifo_as_sofa_file_is_refused_not_read(tmp_path):
    fifo = tmp_path / "head.sofa"
    os.mkfifo(fifo)
    refused(*cli_process(*SPATIALIZE, tmp_path / "out", *SMALL, "--hrir", fifo), "FIFO")
    refused(*cli_process("irs", "--env", "anechoic", "--hrir", fifo, "--out", tmp_path / "irs"), "FIFO")


@pytest.mark.parametrize("args, words", [
    (["--tolerance", "-1"], ["--tolerance -1"]),
    (["--rt60", "inf"], ["--rt60 inf"]),
    (["--rooms", "-1"], ["--rooms -1"]),
    (["--test-rooms", "2000"], ["--test-rooms 2000", "0 to 1000"]),
    (["--azimuths", "0,360"], ["--azimuths 360"]),
    (["--seed", "-5"], ["--seed -5"]),
])
def test_irs_refuses_out_of_range_options_before_any_work(tmp_path, args, words):
    refused(*cli("irs", "--env", "anechoic", "--out", tmp_path / "irs", *args), *words)
    assert not (tmp_path / "irs" / "irs.json").exists()


# --------------------------------------------------------------------------- no stage touches its inputs


def test_featurize_into_its_own_input_deletes_nothing(stage1):
    # `featurize OUT OUT --overwrite` used to delete the Stage 1 shards, manifest and IRs
    before = snapshot(stage1)
    refused(*cli("featurize", stage1, stage1, "--overwrite"), "is the Stage 1 folder")
    refused(*cli("featurize", stage1, stage1 / "features", "--overwrite"), "inside the Stage 1 folder")
    assert snapshot(stage1) == before


def test_overwrite_never_clears_an_input_that_lies_in_the_output(stage1, tmp_path):
    # a head kept in an old output's irs/ folder would go with `--overwrite`
    head = stage1 / "irs" / "anechoic.sofa"
    before = snapshot(stage1)
    refused(*cli(*SPATIALIZE, stage1, *SMALL, "--hrir", head, "--overwrite"), str(head), "--overwrite clears")
    assert snapshot(stage1) == before


def test_spatialize_output_inside_the_sound_folder_is_refused(tmp_path):
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    sf.write(sounds / "a.wav", 0.1 * np.random.default_rng(0).standard_normal(8000), 16000)
    before = snapshot(sounds)
    refused(*cli("spatialize", sounds, sounds / "out", "--env", "anechoic", "--azimuths", "0,90"),
            "inside the sound source")
    assert snapshot(sounds) == before


# --------------------------------------------------------------------------- what a stage reads is verified


def test_featurize_refuses_a_stage1_shard_with_flipped_bytes(stage1, tmp_path):
    # same size, bytes flipped in the middle: used to pass with fresh checksums downstream
    shard = first_shard(stage1)
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    shard.write_bytes(bytes(data))
    before = snapshot(stage1)
    refused(*cli("featurize", stage1, tmp_path / "out"), str(shard), "sha256", "bast-cli spatialize")
    assert snapshot(stage1) == before and not (tmp_path / "out" / "manifest.json").exists()


def test_featurize_refuses_labels_shorter_than_the_audio(stage1, tmp_path):
    shard = first_shard(stage1)
    with h5py.File(shard, "r+") as f:
        az = f["azimuth_deg"][()]
        del f["azimuth_deg"]
        f["azimuth_deg"] = az[:-1]
    relist(stage1)  # the manifest agrees with the bytes: only the lengths are wrong
    refused(*cli("featurize", stage1, tmp_path / "out"), str(shard), "azimuth_deg", f"{len(az) - 1} rows")


@pytest.mark.parametrize("damage, words", [
    (lambda m: m.write_text(m.read_text()[: len(m.read_text()) // 2]), ["unreadable manifest"]),
    (lambda m: m.write_bytes(b""), ["unreadable manifest"]),
    (lambda m: m.write_text("[1, 2]"), ["not a bast manifest"]),
    (lambda m: m.write_text(json.dumps({"stage": "spatialize", "shards": [{"path": 3}]})), ["malformed manifest"]),
], ids=["torn", "empty", "a-list", "bad-entry"])
def test_a_torn_stage1_manifest_is_named_with_the_command_that_rewrites_it(stage1, tmp_path, damage, words):
    manifest = stage1 / "manifest.json"
    damage(manifest)
    refused(*cli("featurize", stage1, tmp_path / "out"), str(manifest), "bast-cli spatialize", *words)


def test_a_truncated_stage1_shard_is_named(stage1, tmp_path):
    shard = first_shard(stage1)
    shard.write_bytes(shard.read_bytes()[:1000])
    relist(stage1)
    refused(*cli("featurize", stage1, tmp_path / "out"), str(shard), "unreadable HDF5 shard", "bast-cli spatialize")


def test_a_fifo_in_place_of_a_shard_is_refused_not_read(stage1, tmp_path):
    shard = first_shard(stage1)
    shard.unlink()
    os.mkfifo(shard)
    refused(*cli_process("featurize", stage1, tmp_path / "out"), str(shard.name), "not a regular file")


def test_a_stage_cleans_temporary_files_only_where_it_writes(stage1, tmp_path):
    # Stage 1 inside Stage 2's folder is allowed; its files, even temporary-looking ones
    # (another run's shard in the making), are not Stage 2's to delete
    inner = tmp_path / "data"
    inner.mkdir()
    shutil.move(stage1, inner / "s1")
    pending = inner / "s1" / "shards" / ".shard-00099.h5.4242.tmp"
    pending.write_bytes(b"another run's shard in the making")
    before = snapshot(inner / "s1")
    code, out = cli("featurize", inner / "s1", inner, "--workers", "0")
    assert code == 0, out
    assert snapshot(inner / "s1") == before and (inner / "manifest.json").exists()


def test_a_torn_params_file_is_named_not_a_traceback(stage1, tmp_path):
    out = tmp_path / "out"
    assert cli("featurize", stage1, out, "--workers", "0")[0] == 0
    (out / "params.json").write_text('{"stage": "featu')
    refused(*cli("featurize", stage1, out), "params.json", "--overwrite")


def test_a_torn_stage2_manifest_is_named_by_evaluate(data, tmp_path):
    s2 = tmp_path / "s2"
    shutil.copytree(data / "s2", s2)
    text = (s2 / "manifest.json").read_text()
    (s2 / "manifest.json").write_text(text[: len(text) // 3])
    run = tmp_path / "run"
    shutil.copytree(data / "run", run)
    refused(*cli("evaluate", run, "--on", s2, "--device", "cpu"), "manifest.json", "bast-cli featurize")


# --------------------------------------------------------------------------- disk full


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_at_start_is_one_line_and_leaves_no_temporary_file(stage1, tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_text", _enospc)
    before = snapshot(stage1)
    refused(*cli("featurize", stage1, tmp_path / "out"), "params.json", "No space left on device")
    assert not list((tmp_path / "out").rglob("*.tmp")) and snapshot(stage1) == before


def test_disk_full_while_writing_a_shard_is_one_line(stage1, tmp_path, monkeypatch):
    import bast.pipeline.stage.shards as shards

    real = h5py.File

    def full(name, mode="r", *args, **kwargs):  # reading works; writing meets a full disk
        if mode != "r":
            raise OSError("Unable to synchronously create file (file write failed: errno = 28, "
                          "error message = 'No space left on device')")
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(shards.h5py, "File", full)
    refused(*cli("featurize", stage1, tmp_path / "out", "--workers", "0"), "No space left on device", "shard-00000.h5")
    assert not list((tmp_path / "out").rglob("*.tmp")) and not (tmp_path / "out" / "manifest.json").exists()


def test_a_full_disk_met_anywhere_is_one_line_not_a_traceback(data, tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "mkdir", full)
    refused(*cli("report", data / "run", "--out", tmp_path / "rep", "--rollout-samples", "0"),
            "No space left on device", "rep")


def test_atomic_writes_leave_the_old_file_whole_when_the_disk_is_full(tmp_path, monkeypatch):
    from bast.fileio import atomic_path, atomic_write_text

    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(StorageError, match="metrics.json"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    with pytest.raises(StorageError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            _enospc()
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


# --------------------------------------------------------------------------- localize


def _wav(path: Path, seconds: float = 2.0, bad=None) -> Path:
    x = 0.1 * np.random.default_rng(1).standard_normal((int(seconds * 16000), 2))
    if bad is not None:
        x[5000, 0] = bad
    sf.write(path, x, 16000, subtype="FLOAT", format="WAV")
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_localize_refuses_audio_with_a_non_finite_sample(data, tmp_path, bad):
    # used to mark 15 of 16 good windows silent and print a NaN mean
    wav = _wav(tmp_path / "rec.wav", bad=bad)
    before = snapshot(wav)
    refused(*cli("localize", data / "run", wav, "--out", tmp_path / "loc", "--device", "cpu"), str(wav),
            "NaN" if np.isnan(bad) else "Inf", "0.312 s")
    assert not (tmp_path / "loc" / "rec.json").exists() and snapshot(wav) == before


@pytest.mark.parametrize("args, words", [
    (["--hop-ms", "0.001"], ["--hop-ms 0.001", "from 10 to 60000 ms"]),
    (["--hop-ms", "inf"], ["--hop-ms inf"]),
    (["--hop-ms", "nan"], ["--hop-ms nan"]),
    (["--window-ms", "nan"], ["--window-ms nan"]),
    (["--window-ms", "250"], ["--window-ms 250", "500 ms"]),
    (["--device", "cuda:x"], ["cuda:x"]),
])
def test_localize_refuses_out_of_range_options(data, tmp_path, args, words):
    wav = _wav(tmp_path / "rec.wav")
    refused(*cli("localize", data / "run", wav, "--out", tmp_path / "loc", *args), *words)
    assert not (tmp_path / "loc").exists()


def test_a_fifo_given_as_a_wav_to_localize_is_refused_not_read(data, tmp_path):
    fifo = tmp_path / "live.wav"
    os.mkfifo(fifo)
    refused(*cli_process("localize", data / "run", fifo, "--out", tmp_path / "loc", "--device", "cpu"), "FIFO")


def test_localize_never_writes_into_the_run_or_over_an_input(data, tmp_path):
    run = data / "run"
    before = snapshot(run)
    wav = _wav(tmp_path / "rec.wav")
    refused(*cli("localize", run, wav, "--out", run, "--device", "cpu"), "is the run")
    refused(*cli("localize", run, wav, "--out", run / "loc", "--device", "cpu"), "inside the run")
    taken = tmp_path / "taken"
    taken.write_text("keep")
    refused(*cli("localize", run, wav, "--out", taken, "--device", "cpu"), "existing file")
    csv_named = _wav(tmp_path / "take.csv")  # a WAV named .csv: its output would replace it
    refused(*cli("localize", run, csv_named, "--out", tmp_path, "--device", "cpu"), "write over the input")
    assert snapshot(run) == before and taken.read_text() == "keep"


def test_a_silent_recording_has_no_mean_azimuth_rather_than_nan(data, tmp_path):
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros((16000, 2)), 16000)
    code, out = cli("localize", data / "run", wav, "--out", tmp_path / "loc", "--device", "cpu")
    assert code == 0, out
    summary = json.loads((tmp_path / "loc" / "quiet.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"{c} in the summary"))
    assert summary["circular_mean_azimuth_deg"] is None and summary["median_confidence"] is None
    assert summary["silent_windows"] == summary["windows"] > 0


# --------------------------------------------------------------------------- evaluate, report, demo


def test_evaluate_refuses_to_call_nan_predictions_a_result(data, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(data / "run", run)
    ckpt = run / "checkpoints" / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, ckpt)
    refused(*cli("evaluate", run, "--on", data / "s2", "--device", "cpu"), "not finite", "nothing written")
    assert not list((run / "eval").glob("s2-*/metrics.json"))


def test_evaluate_results_hold_no_nan(data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(data / "run", run)
    code, out = cli("evaluate", run, "--on", data / "s2", "--device", "cpu", "--split", "all")
    assert code == 0, out
    assert "nan" not in out.lower()
    written = sorted((run / "eval").glob("*/metrics.json"))
    assert written, "evaluate wrote no metrics.json"  # an empty glob would check nothing
    for path in written:
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))


@pytest.mark.parametrize("args, words", [
    (["--split", "junk"], ["split 'junk'"]),
    (["--env", "cathedral"], ["cathedral"]),
    (["--device", "tpu"], ["tpu"]),
])
def test_evaluate_refuses_bad_options(data, args, words):
    before = snapshot(data / "run")
    refused(*cli("evaluate", data / "run", "--on", data / "s2", *args), *words)
    assert snapshot(data / "run") == before


def test_report_refuses_bad_options_and_outputs_inside_a_run(data, tmp_path):
    run = data / "run"
    before = snapshot(run)
    refused(*cli("report", run, "--out", tmp_path / "rep", "--rollout-samples", "-1"), "--rollout-samples -1")
    refused(*cli("report", run, "--out", run / "report"), "inside the run")
    refused(*cli("report", run, "--out", run), "is the run")
    assert snapshot(run) == before


@pytest.mark.parametrize("args, words", [
    (["--sounds", "0"], ["--sounds 0", "from 10"]),
    (["--sounds", "-5"], ["--sounds -5"]),
    (["--seed", "-1"], ["--seed -1"]),
    (["--workers", "-1"], ["--workers -1"]),
])
def test_demo_refuses_bad_options_before_any_work(tmp_path, args, words):
    refused(*cli("demo", "--out", tmp_path / "demo", *args), *words)
    assert not (tmp_path / "demo" / "stage1").exists()


# --------------------------------------------------------------------------- the checks themselves


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "x", None, True])
def test_number_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(ConfigError, match="--x"):
        options.number(value, "--x", lo=0, hi=1)


def test_number_names_the_range_and_accepts_its_ends():
    assert options.number(0, "--x", lo=0, hi=1) == 0.0 and options.count("7", "--n", 1, 7) == 7
    with pytest.raises(ConfigError, match=r"--n 2.5: must be an integer from 1 to 7"):
        options.count(2.5, "--n", 1, 7)
    with pytest.raises(ConfigError, match=r"from 0 to 1, 1 excluded"):
        options.fraction(1.0, "--f")


@pytest.mark.parametrize("address, ok", [("tcp://10.0.0.1:8786", True), ("localhost:8786", True),
                                         ("tls://[::1]:8786", True), ("junk", False), ("tcp://host", False),
                                         ("http://host:80/x", False)])
def test_scheduler_addresses(address, ok):
    if ok:
        assert options.scheduler(address) == address
    else:
        with pytest.raises(ConfigError, match="--scheduler"):
            options.scheduler(address)


def test_the_library_checks_what_the_cli_checks(data, tmp_path):
    # the checks live in the library: a library caller gets the same refusals
    from bast.model.inference.localize import read_binaural
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.irs.sources import load_hrirs
    from bast.pipeline.render.spatialize import SpatializeConfig

    with pytest.raises(ConfigError, match="--samples-per-shard"):
        SpatializeConfig(samples_per_shard=0)
    with pytest.raises(ConfigError, match="--azimuths"):
        SpatializeConfig(azimuths=(400.0,))
    with pytest.raises(ConfigError, match="is the Stage 1 folder"):
        featurize(data / "s1", data / "s1", overwrite=True)
    with pytest.raises(SofaError, match="zero"):
        load_hrirs(sofa_copy(tmp_path, "zero.sofa", _silent))
    with pytest.raises(DataError, match="NaN"):
        read_binaural(_wav(tmp_path / "n.wav", bad=np.nan))


# --------------------------------------------------------------------------- scenes and seld-metrics


def test_scenes_into_an_existing_file_is_refused_and_the_file_kept(tmp_path):
    target = tmp_path / "afile"
    target.write_bytes(b"keep me")
    refused(*cli("scenes", "default", target, "--count", "2", "--sounds", "10"), "OUT", "existing file")
    assert target.read_bytes() == b"keep me"


def test_seld_metrics_on_a_csv_not_in_utf8_names_the_file(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "a.csv").write_bytes(b"\xff\xfe1,2\n")
    refused(*cli("seld-metrics", ref, ref), str(ref / "a.csv"), "UTF-8")
    assert (ref / "a.csv").read_bytes() == b"\xff\xfe1,2\n"
