"""Stage 1 in 3-D: elevations, every measured direction, directions from a CSV,
interpolated HRIRs, rooms with elevated sources, and the labels Stage 2 carries."""

import hashlib
import json

import h5py
import numpy as np
import pytest
from scipy.signal import fftconvolve
from typer.testing import CliRunner

from bast.cli import app
from bast.datasets import load_clip
from bast.datasets.procedural import DefaultCorpus
from bast.errors import ConfigError
from bast.fileio import sha256_file
from bast.pipeline.render.clips import prepare
from bast.pipeline.irs.hall import SPEED_OF_SOUND, HallSpec, build_hall, fractional_delays
from bast.pipeline.irs.interpolate import interpolate
from bast.pipeline.irs.sources import load_hrirs, parse_elevations
from bast.pipeline.render.spatialize import SpatializeConfig, spatialize
from bast.sphere import great_circle_deg
from test_spatialize import read_all

FS = 16000


def refs(n=2, seed=3):
    return DefaultCorpus(n_clips=n, seed=seed, speech=False).list_clips()


def expected_audio(ref, policy, pair):
    audio, fs = load_clip(ref)
    clip = prepare(audio, fs, policy)[0][0].astype(float)
    return np.stack([fftconvolve(clip, pair[c].astype(float))[:8000] for c in (0, 1)])


def test_directions_all_renders_every_measured_direction(tmp_path):
    out = tmp_path / "s1"
    result = CliRunner().invoke(app, ["spatialize", "default", str(out), "--sounds", "2", "--env", "anechoic",
                                      "--directions", "all", "--workers", "0", "--val-fraction", "0",
                                      "--test-fraction", "0"])
    assert result.exit_code == 0, result.output
    kemar = load_hrirs()
    data = read_all(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["directions"]) == len(kemar) == 710
    for clip in np.unique(data["clip_id"]):
        rows = data["clip_id"] == clip
        # The labels are the SOFA's own directions, every one of them, in the set's order.
        np.testing.assert_allclose(data["azimuth_deg"][rows], kemar.azimuth_deg, atol=1e-4)
        np.testing.assert_allclose(data["elevation_deg"][rows], kemar.elevation_deg, atol=1e-4)
    np.testing.assert_allclose(np.array(manifest["directions"]), np.stack([kemar.azimuth_deg, kemar.elevation_deg], 1),
                               atol=1e-6)
    assert manifest["categories"] == sorted(set(data["category"]))
    assert data["elevation_deg"].dtype == np.float32 and data["elevation_deg"].shape == (2 * 710,)


def test_elevation_grid_renders_the_grid_asked_for(tmp_path):
    out = tmp_path / "s1"
    clips = refs(2)
    config = SpatializeConfig(azimuths=tuple(np.arange(0.0, 360.0, 30.0)), elevations=tuple(parse_elevations("-30:30:10")[0]),
                              environments=("anechoic",), seed=1, val_fraction=0.0, test_fraction=0.0)
    spatialize(clips, out, config)
    data = read_all(out)
    got = {(round(float(a), 3), round(float(e), 3)) for a, e in zip(data["azimuth_deg"], data["elevation_deg"])}
    assert got == {(float(a), float(e)) for a in range(0, 360, 30) for e in range(-30, 31, 10)}
    assert len(data["azimuth_deg"]) == 2 * 12 * 7
    kemar = load_hrirs()
    by_id = {r.clip_id: r for r in clips}
    for i in (0, 17, 40, 83):  # each sample is its clip through the HRIR of its own direction
        pair = kemar.select([data["azimuth_deg"][i]], data["elevation_deg"][i])[0]
        want = expected_audio(by_id[data["clip_id"][i]], config.policy, pair)
        np.testing.assert_allclose(data["audio"][i], want, atol=2e-6 * np.abs(want).max())
    # --elevations LO:HI limits --directions all
    limited = CliRunner().invoke(app, ["spatialize", "default", str(tmp_path / "lim"), "--sounds", "2", "--env", "anechoic",
                                       "--directions", "all", "--elevations", "-10:10", "--workers", "0"])
    assert limited.exit_code == 0, limited.output
    manifest = json.loads((tmp_path / "lim" / "manifest.json").read_text())
    assert len(manifest["directions"]) == 3 * 72 and {e for _, e in manifest["directions"]} == {-10.0, 0.0, 10.0}


def test_default_output_is_unchanged_apart_from_the_elevation_label(tmp_path):
    """sha256 of the audio of this run as made by main before elevations existed (commit
    0271814); every other dataset was compared there too and is identical."""
    out = tmp_path / "s1"
    spatialize(DefaultCorpus(n_clips=3, seed=5, speech=False).list_clips(), out, SpatializeConfig(seed=5))
    h = hashlib.sha256()
    manifest = json.loads((out / "manifest.json").read_text())
    for s in manifest["shards"]:
        with h5py.File(out / s["path"]) as f:
            h.update(f["audio"][()].tobytes())
            assert np.all(f["elevation_deg"][()] == 0)
    assert h.hexdigest() == "c1bb2c58bec30b9db18d1ace004999ba687f8b0d92e42cbed3514313a03bb1ae"
    params = json.loads((out / "params.json").read_text())
    assert not {"elevations", "directions", "interpolate"} & set(params)  # so older outputs still resume


def test_directions_from_a_csv_with_interpolation(tmp_path):
    csv = tmp_path / "dirs.csv"
    csv.write_text("azimuth,elevation\n12.5,-35\n100,45\n340,3\n0,0\n")
    out = tmp_path / "s1"
    result = CliRunner().invoke(app, ["spatialize", "default", str(out), "--sounds", "2", "--env", "anechoic",
                                      "--directions", str(csv), "--interpolate", "--workers", "0"])
    assert result.exit_code == 0, result.output
    data = read_all(out)
    manifest = json.loads((out / "manifest.json").read_text())
    np.testing.assert_allclose(manifest["directions"], [[12.5, -35], [100, 45], [340, 3], [0, 0]])
    kemar = load_hrirs()
    pairs = interpolate(kemar, [12.5, 100.0, 340.0, 0.0], [-35.0, 45.0, 3.0, 0.0])
    np.testing.assert_array_equal(pairs[3], kemar.select([0.0])[0])  # a measured direction is its own HRIR
    clip = DefaultCorpus(n_clips=2, seed=0, speech=False).list_clips()
    by_id = {r.clip_id: r for r in clip}
    for i in range(4):
        want = expected_audio(by_id[data["clip_id"][i]], SpatializeConfig().policy, pairs[i])
        np.testing.assert_allclose(data["audio"][i], want, atol=2e-6 * np.abs(want).max())
    # Without --interpolate, these directions are not in the set: one clear error.
    refused = CliRunner().invoke(app, ["spatialize", "default", str(tmp_path / "no"), "--sounds", "2", "--env", "anechoic",
                                       "--directions", str(csv), "--workers", "0"])
    assert refused.exit_code == 1 and "--interpolate" in refused.output


@pytest.mark.parametrize("args, message", [
    (["--elevations", "95"], "[-90, 90]"),
    (["--elevations", "-40:0"], "LO:HI limits"),
    (["--directions", "missing.csv"], "no such file"),
])
def test_bad_direction_options_give_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["spatialize", "default", str(tmp_path / "x"), "--sounds", "2", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("az,el\n0,0\n")
    result = CliRunner().invoke(app, ["spatialize", "default", str(tmp_path / "y"), "--sounds", "2", "--directions", str(bad)])
    assert result.exit_code == 1 and "azimuth,elevation" in result.output
    with pytest.raises(ConfigError):
        SpatializeConfig(directions=((0.0, 100.0),))


def test_an_elevated_source_in_a_room_arrives_through_the_hrir_of_its_elevation():
    """The direct sound of a source at (90, 40) deg in a room is the HRIR of (90, 40) deg,
    delayed by d/c and attenuated by 1/d, until the first reflection arrives."""
    spec = HallSpec(size_m=(16.0, 16.0, 12.0), listener_m=(8.0, 8.0, 5.0), rt60_s=0.4, n_rays=2000,
                    distance_m=1.5)
    kemar = load_hrirs()
    bank = build_hall([90.0, 90.0], kemar, spec, elevations_deg=[40.0, -30.0])
    np.testing.assert_array_equal(bank.elevation_deg, [40.0, -30.0])
    positions = spec.source_positions([90.0, 90.0], [40.0, -30.0])
    np.testing.assert_allclose(np.linalg.norm(positions - spec.listener_m, axis=1), 1.5)
    np.testing.assert_allclose(positions[:, 2] - 5.0, 1.5 * np.sin(np.radians([40.0, -30.0])))
    # The first reflection (from the nearest surface) comes well after the direct window.
    start, kernel = fractional_delays(np.array([1.5 / SPEED_OF_SOUND * FS]))
    for a, el in enumerate((40.0, -30.0)):
        errors = {}
        for candidate in (40.0, 0.0, -30.0):
            hrir = kemar.select([90.0], candidate)[0].astype(float)
            direct = np.stack([np.convolve(kernel[0], hrir[c]) for c in (0, 1)]) / 1.5
            expect = np.zeros((2, bank.ir.shape[-1]))
            expect[:, start[0]:start[0] + direct.shape[-1]] = direct
            window = slice(0, start[0] + direct.shape[-1])
            got = bank.ir[a][:, window]
            errors[candidate] = np.sqrt(np.sum((got - expect[:, window]) ** 2) / np.sum(expect[:, window] ** 2))
        assert errors[el] < 1e-3, errors  # float32 storage
        assert all(errors[el] * 100 < e for c, e in errors.items() if c != el), errors


def test_a_room_sphere_shrinks_to_keep_sources_off_floor_and_ceiling():
    spec = HallSpec(size_m=(6.0, 6.0, 2.6), listener_m=(3.0, 3.0, 1.7), distance_m=1.5)
    assert spec.fitted([0.0]) == spec
    fitted = spec.fitted([-40.0, 0.0, 90.0])
    z = fitted.source_positions([0.0, 0.0, 0.0], [-40.0, 0.0, 90.0])[:, 2]
    assert np.all(z >= 0.3 - 1e-9) and np.all(z <= 2.3 + 1e-9)
    assert fitted.distance_m == pytest.approx(0.6)  # (2.6 - 0.3 - 1.7) / sin 90


def test_rooms_render_elevated_sources_with_interpolated_direct_sound(tmp_path):
    from bast.pipeline.irs.rooms import RoomRanges, draw_rooms

    # Low rooms: a source 1-1.2 m away at 60 deg elevation would be within 0.3 m of the ceiling.
    fast = RoomRanges(width_m=(5.0, 6.0), length_m=(6.0, 7.0), height_m=(2.5, 2.6), rt60_s=(0.3, 0.4),
                      listener_height_m=(1.6, 1.7), distance_m=(1.0, 1.2), n_rays=2000)
    config = SpatializeConfig(directions=((45.0, 60.0), (200.0, -25.0)), interpolate=True, rooms=1, room_ranges=fast,
                              environments=("hall",), seed=2)
    drawn = draw_rooms(1, 2, fast)[0].spec
    assert drawn.listener_m[2] + drawn.distance_m * np.sin(np.radians(60.0)) > drawn.size_m[2] - 0.3
    out = tmp_path / "s1"
    spatialize(refs(2), out, config)
    data = read_all(out)
    assert {(float(a), float(e)) for a, e in zip(data["azimuth_deg"], data["elevation_deg"])} == {(45.0, 60.0), (200.0, -25.0)}
    manifest = json.loads((out / "manifest.json").read_text())
    room = manifest["totals"]["rooms"]["room-00"]["simulated"]
    height, ear = room["size_m"][2], room["listener_m"][2]
    assert ear + room["distance_m"] * np.sin(np.radians(60.0)) <= height - 0.3 + 1e-6
    assert ear - room["distance_m"] * np.sin(np.radians(25.0)) >= 0.3 - 1e-6
    assert room["distance_m"] < drawn.distance_m


def test_stage2_carries_elevation_and_categories_and_reads_older_shards_as_elevation_0(tmp_path):
    from bast.pipeline.features.featurize import featurize

    s1 = tmp_path / "s1"
    spatialize(refs(3), s1, SpatializeConfig(azimuths=(0.0, 90.0), elevations=(-20.0, 20.0), environments=("anechoic",),
                                             seed=2))
    featurize(s1, tmp_path / "s2")
    one, two = read_all(s1), read_all(tmp_path / "s2")
    np.testing.assert_array_equal(two["elevation_deg"], one["elevation_deg"])
    assert set(two["elevation_deg"]) == {-20.0, 20.0}
    m1 = json.loads((s1 / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "s2" / "manifest.json").read_text())
    assert m2["categories"] == m1["categories"] == sorted(set(one["category"]))
    assert m2["directions"] == m1["directions"] == [[0.0, -20.0], [90.0, -20.0], [0.0, 20.0], [90.0, 20.0]]

    for p in (s1 / "shards").glob("*.h5"):  # an older Stage 1 output: no elevation label, no class list
        with h5py.File(p, "a") as f:
            del f["elevation_deg"]
    m1.pop("categories"), m1.pop("directions")
    for s in m1["shards"]:  # as an older Stage 1 listed its shards (featurize verifies the checksums)
        s["sha256"] = sha256_file(s1 / s["path"])
    (s1 / "manifest.json").write_text(json.dumps(m1))
    featurize(s1, tmp_path / "old2")
    old = read_all(tmp_path / "old2")
    assert np.all(old["elevation_deg"] == 0) and old["elevation_deg"].dtype == np.float32
    assert json.loads((tmp_path / "old2" / "manifest.json").read_text())["categories"] == sorted(set(one["category"]))


def test_interpolated_grid_labels_are_the_requested_directions():
    kemar = load_hrirs()
    from bast.pipeline.irs.interpolate import interpolated_set

    s = interpolated_set(kemar, [-5.0, 362.5], [12.0, -33.0])
    np.testing.assert_allclose(s.azimuth_deg, [355.0, 2.5])
    assert great_circle_deg(s.azimuth_deg, s.elevation_deg, [355.0, 2.5], [12.0, -33.0]).max() < 1e-9
