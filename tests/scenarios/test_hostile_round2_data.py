"""Hostile input, second round (issue 29): scene shards checked like clip shards, sizes a
number can ask for refused before they are allocated, one rule for ranges of directions,
options a mode ignores refused. Each case: exit 1 and one `error:` line (no traceback), the
inputs' bytes unchanged, no hang, and (for sizes) no large allocation before the refusal.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from bast.errors import ConfigError, DataError
from bast.fileio import sha256_file
from helpers import cli, refused, snapshot
from test_hostile import cli_process

# What a refusal may allocate (numpy's arrays are traced by tracemalloc): far below any of
# the sizes refused here (hundreds of MiB to many GiB).
REFUSAL_PEAK_BYTES = 64 * 2**20


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A small scenes output (4 scenes of 1 s, anechoic) and its Stage 2."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.irs.sources import parse_direction_options
    from bast.pipeline.render.scenes import ScenesConfig, render_scenes

    out = tmp_path_factory.mktemp("round2")
    refs = DefaultCorpus(n_clips=16, seed=2, speech=False).list_clips()
    config = ScenesConfig(count=4, duration_s=1.0, events=(1, 2), max_overlap=2,
                          directions=parse_direction_options("0:360:90"), environments=("anechoic",), seed=2,
                          scenes_per_shard=2, test_fraction=0.25)
    render_scenes(refs, out / "s1", config)
    featurize(out / "s1", out / "s2")
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def first_shard(stage: Path) -> Path:
    manifest = json.loads((stage / "manifest.json").read_text())
    return stage / manifest["shards"][0]["path"]


def flip_byte(path: Path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


def audio_offset(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return f["audio"].id.get_offset() + 1000


def refused_as_corrupt(code: int, output: str, shard: Path, stage: str) -> None:
    refused(code, output, str(shard), "corrupt", f"bast-cli {stage}")
    assert "retry" not in output, output


# --------------------------------------------------------------------------- 2. scene shards


@pytest.mark.parametrize("where", ["audio", "metadata"])
def test_featurize_refuses_a_scene_shard_with_a_flipped_byte(scenes, tmp_path, where):
    s1 = copy_tree(scenes / "s1", tmp_path / "s1")
    shard = first_shard(s1)
    flip_byte(shard, audio_offset(shard) if where == "audio" else 100)
    before = snapshot(s1)
    refused_as_corrupt(*cli("featurize", s1, tmp_path / "s2", "--workers", "0"), shard, "scenes")
    assert snapshot(s1) == before and not (tmp_path / "s2" / "shards").exists()


@pytest.mark.parametrize("where", ["audio", "metadata"])
def test_export_dcase_refuses_a_scene_shard_with_a_flipped_byte(scenes, tmp_path, where):
    s1 = copy_tree(scenes / "s1", tmp_path / "s1")
    shard = first_shard(s1)
    flip_byte(shard, audio_offset(shard) if where == "audio" else 100)
    before = snapshot(s1)
    refused_as_corrupt(*cli("export-dcase", s1, tmp_path / "dcase"), shard, "scenes")
    assert snapshot(s1) == before and not list((tmp_path / "dcase").rglob("*.wav"))


def rewrite_with_checksum(stage: Path, shard: Path, edit) -> None:
    """Edit a shard and record its new sha256 in the manifest: only the shape checks can tell."""
    with h5py.File(shard, "r+") as f:
        edit(f)
    manifest = json.loads((stage / "manifest.json").read_text())
    for s in manifest["shards"]:
        if stage / s["path"] == shard:
            s["sha256"] = sha256_file(shard)
    (stage / "manifest.json").write_text(json.dumps(manifest))


def test_scene_label_offsets_that_do_not_index_the_rows_are_named(scenes, tmp_path):
    s1 = copy_tree(scenes / "s1", tmp_path / "s1")
    shard = first_shard(s1)

    def break_offsets(f):
        offsets = f["label_offsets"][()]
        offsets[-1] += 5
        f["label_offsets"][...] = offsets

    rewrite_with_checksum(s1, shard, break_offsets)
    refused(*cli("featurize", s1, tmp_path / "s2", "--workers", "0"), str(shard), "corrupt", "label_offsets")
    refused(*cli("export-dcase", s1, tmp_path / "dcase"), str(shard), "corrupt", "label_offsets")


def test_scene_labels_shorter_than_the_scenes_are_named(scenes, tmp_path):
    s1 = copy_tree(scenes / "s1", tmp_path / "s1")
    shard = first_shard(s1)

    def drop_a_room(f):
        rooms = f["room"].asstr()[()][:-1]
        del f["room"]
        f.create_dataset("room", data=np.array(rooms, dtype=object), dtype=h5py.string_dtype())

    rewrite_with_checksum(s1, shard, drop_a_room)
    refused(*cli("featurize", s1, tmp_path / "s2", "--workers", "0"), str(shard), "corrupt", "room (1 rows)")


def test_the_seld_loader_refuses_a_corrupt_scene_stage2_shard(scenes, tmp_path):
    from bast.model.data.loaders import Selection
    from bast.model.data.scenes import SceneWindows

    s2 = copy_tree(scenes / "s2", tmp_path / "s2")
    manifest = json.loads((s2 / "manifest.json").read_text())
    split = manifest["shards"][0]["split"]
    shard = s2 / manifest["shards"][0]["path"]
    flip_byte(shard, shard.stat().st_size // 2)
    sel = Selection.of(s2, split, "RI")
    with pytest.raises(DataError, match="corrupt") as info:
        SceneWindows(sel, 61, 3, "cpu")
    assert str(shard) in str(info.value) and "bast-cli featurize" in str(info.value)


# --------------------------------------------------------------------------- 3. sizes


def peak_of(fn):
    """(result or the exception, the peak of traced allocations while `fn` ran)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - the refusal is the result
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("args, size", [
    (["--elevations", "-40:90:0.001", "--interpolate"], "24.8 GiB"),
    (["--elevations", "-90:90:1e-300"], "GiB"),
    (["--azimuths", "0:360:0.1", "--elevations", "-90:90:1"], "3.45 GiB"),
])
@pytest.mark.parametrize("command", ["spatialize", "scenes"])
def test_a_grid_too_large_is_refused_before_it_is_made(tmp_path, command, args, size):
    (code, output), peak = peak_of(lambda: cli(command, "default", tmp_path / "out", "--sounds", "10", *args))
    refused(code, output, "directions would need", size, "at most 65,160")
    assert peak < REFUSAL_PEAK_BYTES and not (tmp_path / "out").exists()


def test_a_directions_csv_too_long_is_refused_while_it_is_read(tmp_path):
    rows = "\n".join(f"{(i % 3600) / 10:g},{(i // 3600) % 180 - 89}" for i in range(70_000))
    (tmp_path / "d.csv").write_text("azimuth,elevation\n" + rows + "\n")
    refused(*cli("scenes", "default", tmp_path / "out", "--directions", tmp_path / "d.csv"),
            "directions or more would need", "at most 65,160")


def dcase_pair(tmp_path: Path, pred_line: str) -> tuple[Path, Path]:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    (ref / "a.csv").write_text("0,1,0,10,0\n1,1,0,10,0\n")
    (pred / "a.csv").write_text(pred_line)
    return ref, pred


@pytest.mark.parametrize("line, words", [
    ("0,1000000000,0,10,0\n", ["class 1000000000", "classes would need", "GiB", "at most 1,000"]),
    ("1000000000,1,0,10,0\n", ["frame 1000000000", "frames would need", "7.45 GiB", "at most 864,000"]),
])
def test_a_dcase_row_of_a_huge_class_or_frame_is_refused_before_scoring(tmp_path, line, words):
    ref, pred = dcase_pair(tmp_path, line)
    before = snapshot(ref, pred)
    (code, output), peak = peak_of(lambda: cli_process("seld-metrics", ref, pred))
    refused(code, output, str(pred / "a.csv") + ":1", *words)
    assert snapshot(ref, pred) == before
    # the same file as a reference: refused too
    (code, output), _ = peak_of(lambda: cli("seld-metrics", pred, ref))
    refused(code, output, *words)


def test_seld_metrics_classes_option_is_sized(tmp_path):
    ref, pred = dcase_pair(tmp_path, "0,1,0,10,0\n")
    (code, output), peak = peak_of(lambda: cli("seld-metrics", ref, pred, "--classes", "1000000000"))
    refused(code, output, "--classes", "classes would need", "at most 1,000")
    assert peak < REFUSAL_PEAK_BYTES


@pytest.mark.parametrize("args, words", [
    (["--count", "1000000000"], ["--count", "scenes would need", "at most 1,000,000"]),
    (["--events", "1:100000000"], ["--events", "events per scene would need", "at most 1,000"]),
    (["--max-overlap", "100000000"], ["--max-overlap", "from 1 to 1000"]),
    (["--scenes-per-shard", "100000", "--duration", "600"], ["--scenes-per-shard", "would need", "GiB"]),
    (["--sounds", "1000000000000"], ["--sounds", "procedural sounds would need", "at most 1,000,000"]),
])
def test_a_scene_count_too_large_is_refused_before_any_work(tmp_path, args, words):
    (code, output), peak = peak_of(lambda: cli("scenes", "default", tmp_path / "out", *args))
    refused(code, output, *words)
    assert peak < REFUSAL_PEAK_BYTES and not (tmp_path / "out" / "shards").exists()


# --------------------------------------------------------------------------- 6. ranges


def test_a_directions_csv_azimuth_outside_0_360_is_refused_not_wrapped(tmp_path):
    for az in ("400", "360", "-20"):
        (tmp_path / "d.csv").write_text(f"azimuth,elevation\n0,0\n{az},10\n")
        for command in ("spatialize", "scenes"):
            refused(*cli(command, "default", tmp_path / "out", "--directions", tmp_path / "d.csv"),
                    f"direction ({az}, 10)", "[0, 360)")
    # the same rule as --azimuths
    refused(*cli("spatialize", "default", tmp_path / "out", "--azimuths", "360"), "360 excluded")


@pytest.mark.parametrize("line, words", [
    ("0,1,0,999,0\n", ["azimuth 999", "[-180, 180]"]),
    ("0,1,0,-181,0\n", ["azimuth -181", "[-180, 180]"]),
    ("0,1,0,10,91\n", ["elevation 91", "[-90, 90]"]),
])
def test_dcase_rows_outside_their_ranges_are_refused_alike(tmp_path, line, words):
    ref, pred = dcase_pair(tmp_path, line)
    refused(*cli("seld-metrics", ref, pred), str(pred / "a.csv") + ":1", *words)


def test_dcase_rows_at_the_ends_of_their_ranges_are_read(tmp_path):
    from bast.dcase.files import parse_dcase_csv

    rows = parse_dcase_csv("0,1,0,180,90\n1,1,0,-180,-90\n")
    assert rows[:, 3].tolist() == [180, -180] and rows[:, 4].tolist() == [90, -90]


@pytest.mark.parametrize("command", ["spatialize", "scenes"])
def test_directions_all_with_explicit_azimuths_is_refused_not_dropped(tmp_path, command):
    refused(*cli(command, "default", tmp_path / "out", "--directions", "all", "--azimuths", "0:360:90"),
            "--azimuths 0:360:90 with --directions all", "give one or the other")


@pytest.mark.parametrize("args, words", [
    (["--speed", "1e6", "--moving", "0.5"], ["--speed", "at most 360 deg/s"]),
    (["--events", "0"], ["--events", "at least one"]),
    (["--events", "2.5"], ["--events", "whole numbers"]),
])
def test_scene_numbers_without_meaning_are_refused(tmp_path, args, words):
    refused(*cli("scenes", "default", tmp_path / "out", *args), *words)


def test_window_options_on_clip_targets_are_refused(tmp_path):
    for opt in ("--window-frames", "--window-hop"):
        refused(*cli("train", tmp_path, "--out", tmp_path / "run", opt, "100"), opt, "--target seld",
                "ignored")
    assert not (tmp_path / "run").exists()


def test_library_checks_say_the_same():
    from bast.pipeline.irs.sources import check_directions, parse_direction_options

    with pytest.raises(ConfigError, match="24.8 GiB"):
        parse_direction_options("0:360:10", "-40:90:0.001")
    with pytest.raises(ConfigError, match=r"\[0, 360\)"):
        check_directions([[400.0, 0.0]], "directions")
    assert check_directions([[0.0, -90.0], [359.5, 90.0]], "directions").shape == (2, 2)


def test_a_model_too_large_to_train_is_refused_before_it_is_built(scenes, tmp_path):
    before = snapshot(scenes / "s2")
    refused(*cli("train", scenes / "s2", "--out", tmp_path / "run", "--target", "seld", "--set", "dim=100000"),
            "model settings", "parameters in training would need", "GiB")
    assert snapshot(scenes / "s2") == before and not (tmp_path / "run" / "checkpoints").exists()


def test_speed_without_moving_events_is_refused_not_ignored(tmp_path):
    refused(*cli("scenes", "default", tmp_path / "out", "--speed", "30"), "--speed 30", "--moving 0")
