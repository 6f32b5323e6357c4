"""Stage 1 conditions: several heads, generated rooms, noise at a chosen SNR, held-out
heads and rooms, and the labels Stage 2 carries (docs/transfer-study.md)."""

import dataclasses
import hashlib
import json

import h5py
import numpy as np
import pytest
import pyroomacoustics as pra
from typer.testing import CliRunner

from bast.cli import app
from bast.datasets.procedural import DefaultCorpus
from bast.errors import ConfigError
from bast.fileio import sha256_file
from bast.pipeline.irs import acoustics
from bast.pipeline.irs import hall
from bast.pipeline.irs import check as ircheck
from bast.pipeline.render import noise
from bast.pipeline.irs.hall import HallSpec
from bast.pipeline.irs.sources import default_hrir_path, load_hrirs
from bast.pipeline.irs.rooms import RoomRanges, draw_rooms
from bast.pipeline.irs.sofa import read_sofa, write_sofa
from bast.pipeline.render.conditions import SpatializeConfig, layout
from bast.pipeline.render.spatialize import spatialize
from test_spatialize import read_all

FS = 16000
QUARTERS = (0.0, 90.0, 180.0, 270.0)
FAST_ROOMS = RoomRanges(width_m=(5.0, 9.0), length_m=(6.0, 10.0), height_m=(2.6, 3.5), rt60_s=(0.35, 0.6),
                        distance_m=(1.0, 1.5), n_rays=4000)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Two heads: a copy of the bundled KEMAR (A) and a KEMAR with a slower, quieter
    right ear (B), each its own SOFA file."""
    root = tmp_path_factory.mktemp("heads")
    kemar = load_hrirs()
    a = write_sofa(root / "headA.sofa", kemar, attrs={"ListenerShortName": "head A"})
    ir = kemar.ir.copy()
    ir[:, 1] = np.roll(ir[:, 1], 1, axis=-1) * 0.8
    b = write_sofa(root / "headB.sofa", dataclasses.replace(kemar, ir=ir), attrs={"ListenerShortName": "head B"})
    return str(a), str(b)


def refs(n=10, seed=3):
    return DefaultCorpus(n_clips=n, seed=seed, speech=False).list_clips()


# --------------------------------------------------------------------------- rooms


def test_rooms_are_drawn_deterministically_inside_their_ranges():
    ranges = RoomRanges()
    rooms = draw_rooms(6, seed=4)
    assert rooms == draw_rooms(6, seed=4) and rooms[:3] == draw_rooms(3, seed=4)  # a prefix does not depend on n
    assert rooms != draw_rooms(6, seed=5)
    test = draw_rooms(2, seed=4, test=True)
    assert [r.name for r in test] == ["testroom-00", "testroom-01"] and [r.name for r in rooms[:2]] == ["room-00", "room-01"]
    assert not {r.spec for r in test} & {r.spec for r in rooms}
    for r in rooms + test:
        s = r.spec
        w, l, h = s.size_m
        assert ranges.width_m[0] <= w <= ranges.width_m[1] and ranges.length_m[0] <= l <= ranges.length_m[1]
        assert ranges.height_m[0] <= h <= ranges.height_m[1] and ranges.rt60_s[0] <= s.rt60_s <= ranges.rt60_s[1]
        assert ranges.distance_m[0] <= s.distance_m <= ranges.distance_m[1]
        assert ranges.listener_height_m[0] <= s.listener_m[2] <= ranges.listener_height_m[1]
        sources = s.source_positions(np.arange(0.0, 360.0, 5.0))
        # every source inside the room, at least the margin from every wall (3 mm of rounding)
        assert np.all(sources[:, :2] >= ranges.wall_margin_m - 3e-3)
        assert np.all(sources[:, :2] <= np.array([w, l]) - ranges.wall_margin_m + 3e-3)
        assert len(s.wall_factors) == 6 and all(0.5 - 1e-3 <= f <= 2.0 + 1e-3 for f in s.wall_factors)
    with pytest.raises(ValueError, match="floor"):
        draw_rooms(1, 0, RoomRanges(width_m=(2.0, 3.0)))


def test_default_hall_keeps_its_cache_key():
    # The key as computed before wall factors existed: the default hall's cached bank stays valid.
    spec, hrirs, az = HallSpec(), load_hrirs(), np.arange(0.0, 360.0, 10.0)
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "wall_factors"}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update(az.astype(np.float64).tobytes())
    h.update(np.ascontiguousarray(hrirs.ir).tobytes())
    h.update(np.asarray(hrirs.azimuth_deg).tobytes() + np.asarray(hrirs.elevation_deg).tobytes())
    h.update(f"alg{hall.ALGORITHM_VERSION}".encode())
    assert hall.cache_key(spec, az, hrirs) == h.hexdigest()[:16]
    other = dataclasses.replace(spec, wall_factors=(1.0, 1.0, 1.0, 1.0, 2.0, 0.5))
    assert hall.cache_key(other, az, hrirs) != hall.cache_key(spec, az, hrirs)
    assert isinstance(spec.materials(0.2), pra.Material) and isinstance(other.materials(0.2), dict)
    assert other.materials(0.6)["floor"].energy_absorption["coeffs"][0] == pytest.approx(0.99)  # capped


# --------------------------------------------------------------------------- layout


def test_layout_crosses_heads_and_rooms_and_holds_out_test_ones(heads):
    a, b = heads
    lay = layout(SpatializeConfig(hrir=(a,), test_hrir=(b,), rooms=2, test_rooms=1, room_ranges=FAST_ROOMS))
    train = {(c.env, c.head, c.room) for c in lay.splits["train"]}
    assert train == {("anechoic", "headA", "anechoic"), ("hall", "headA", "room-00"), ("hall", "headA", "room-01")}
    assert lay.splits["val"] == lay.splits["train"]
    assert {(c.env, c.head, c.room) for c in lay.splits["test"]} == {("anechoic", "headB", "anechoic"),
                                                                     ("hall", "headB", "testroom-00")}
    assert len({c.key for c in lay.conditions().values()}) == 5
    # two heads, no held-out ones: both heads everywhere, the default hall
    lay = layout(SpatializeConfig(hrir=(a, b)))
    assert {(c.head, c.room) for c in lay.splits["test"]} == {(h, r) for h in ("headA", "headB") for r in ("anechoic", "hall")}
    # the default stays what it was: one head, anechoic and hall, keyed by environment
    assert [c.key for c in layout(SpatializeConfig()).splits["train"]] == ["anechoic", "hall"]
    assert layout(SpatializeConfig()).splits["train"][0].head == default_hrir_path().stem


@pytest.mark.parametrize("kwargs, match", [
    ({"test_hrir": "A"}, "also a training head"),
    ({"rooms": 2, "environments": ("anechoic",)}, "hall environment"),
    ({"snr_db": (0, 0), "noise": "pink"}, "--noise"),
    ({"rooms": -1}, "--rooms"),
    ({"hrir": ("A", "A")}, "two files"),
])
def test_layout_refuses_what_it_cannot_do(heads, kwargs, match):
    kwargs = {k: ({"A": heads[0]}.get(v, v) if isinstance(v, str) else
                  tuple(heads[0] if x == "A" else x for x in v) if k == "hrir" else v) for k, v in kwargs.items()}
    with pytest.raises(ConfigError, match=match):
        layout(SpatializeConfig(**{"hrir": (heads[0],), **kwargs}))
    with pytest.raises(ConfigError, match="--snr"):
        noise.parse_snr("5:-5")


# --------------------------------------------------------------------------- end to end


def test_a_held_out_head_is_only_in_the_test_split(tmp_path, heads):
    a, b = heads
    out = tmp_path / "s1"
    result = CliRunner().invoke(app, ["spatialize", "default", str(out), "--sounds", "12", "--no-speech", "--seed", "3",
                                      "--hrir", a, "--test-hrir", b, "--env", "anechoic", "--azimuths", "0,90,180,270",
                                      "--samples-per-shard", "16", "--workers", "0"])
    assert result.exit_code == 0, result.output
    data = read_all(out)
    test = data["split"] == "test"
    assert test.any() and (~test).any()
    assert set(data["head"][test]) == {"headB"} and set(data["head"][~test]) == {"headA"}
    assert set(data["room"]) == {"anechoic"} and np.all(np.isinf(data["snr_db"]))
    manifest = json.loads((out / "manifest.json").read_text())
    for s in manifest["shards"]:  # one head and room per shard, in the manifest and the shard
        with h5py.File(out / s["path"]) as f:
            assert set(f["head"].asstr()[()]) <= {s["head"]} and set(f["room"].asstr()[()]) <= {s["room"]}
            assert f.attrs["head"] == s["head"]
        assert (s["head"] == "headB") == (s["split"] == "test")
    assert manifest["totals"]["samples_by_head"]["headB"] == test.sum()
    assert manifest["totals"]["heads"]["headB"] == {"path": b, "listener": "head B", "test_only": True}
    assert sorted(p.name for p in (out / "irs").glob("*.sofa")) == ["anechoic--headA.sofa", "anechoic--headB.sofa"]
    # head B's right ear is B's: one sample later and 0.8 x
    hb = read_sofa(out / "irs" / "anechoic--headB.sofa").select([90.0])[0]
    np.testing.assert_allclose(hb[1, 1:], 0.8 * load_hrirs().select([90.0])[0][1, :-1], atol=1e-6)


def noise_runs(tmp_path_factory, heads, kind, snr):
    base = dict(azimuths=QUARTERS, environments=("anechoic",), seed=7, hrir=heads[0])
    root = tmp_path_factory.mktemp(f"noise-{kind}")
    spatialize(refs(), root / "clean", SpatializeConfig(samples_per_shard=16, **base))
    spatialize(refs(), root / "noisy", SpatializeConfig(samples_per_shard=16, snr_db=snr, noise=kind, **base))
    spatialize(refs(), root / "regrouped", SpatializeConfig(samples_per_shard=8, snr_db=snr, noise=kind, **base))
    return read_all(root / "clean"), read_all(root / "noisy"), read_all(root / "regrouped")


def test_diffuse_noise_meets_the_snr_and_has_the_heads_coherence(tmp_path_factory, heads):
    clean, noisy, regrouped = noise_runs(tmp_path_factory, heads, "diffuse", "0")
    np.testing.assert_array_equal(clean["clip_id"], noisy["clip_id"])
    np.testing.assert_array_equal(clean["azimuth_deg"], noisy["azimuth_deg"])
    assert np.all(noisy["snr_db"] == 0.0) and np.all(np.isinf(clean["snr_db"]))
    diff = noisy["audio"].astype(np.float64) - clean["audio"]
    e_clean = np.sum(clean["audio"].astype(np.float64) ** 2, axis=(1, 2))
    snr = 10 * np.log10(e_clean / np.sum(diff**2, axis=(1, 2)))
    assert np.all(np.abs(snr) < 0.05)  # per sample; the acceptance asks 0.5 dB
    # The same noise whatever the grouping into shards: deterministic per clip and condition.
    order = {(c, a): i for i, (c, a) in enumerate(zip(regrouped["clip_id"], regrouped["azimuth_deg"]))}
    idx = [order[(c, a)] for c, a in zip(noisy["clip_id"], noisy["azimuth_deg"])]
    np.testing.assert_array_equal(regrouped["audio"][idx], noisy["audio"])
    # Coherence of the difference (the noise), as ircheck measures a tail's IACC, over all
    # samples one after another (a 500 ms clip holds few 125 Hz periods).
    pair = np.concatenate(list(diff), axis=-1)  # (2, samples * 8000)
    low = acoustics.interaural_coherence(pair, FS, 125.0, start_s=0.0)
    high = acoustics.interaural_coherence(pair, FS, 4000.0, start_s=0.0)
    assert low >= 0.6 and abs(high) <= 0.35, (low, high)
    # Different clips get different noise windows.
    assert not np.allclose(diff[0], diff[len(QUARTERS)])


def test_directional_noise_draws_its_snr_per_sample(tmp_path_factory, heads):
    clean, noisy, _ = noise_runs(tmp_path_factory, heads, "directional", "-5:10")
    diff = noisy["audio"].astype(np.float64) - clean["audio"]
    measured = 10 * np.log10(np.sum(clean["audio"].astype(np.float64) ** 2, axis=(1, 2)) / np.sum(diff**2, axis=(1, 2)))
    np.testing.assert_allclose(measured, noisy["snr_db"], atol=0.05)
    assert noisy["snr_db"].min() >= -5 and noisy["snr_db"].max() <= 10 and np.std(noisy["snr_db"]) > 2
    # Interferers are point sources through the head: the noise is strongly lateralised in
    # some samples (|ILD| > 3 dB), unlike diffuse noise.
    ild = 10 * np.log10(np.sum(diff[:, 0] ** 2, axis=-1) / np.sum(diff[:, 1] ** 2, axis=-1))
    assert np.max(np.abs(ild)) > 3.0


def test_a_silent_clip_gets_no_noise():
    bank = noise.diffuse_bank(load_hrirs(), seed=0, seconds=1.0)
    audio = np.zeros((2, 2, 8000), dtype=np.float32)
    audio[1] = np.random.default_rng(0).normal(size=(2, 8000))
    snr = noise.add_noise(audio, ["a"], 2, kind="diffuse", bank=bank, snr_range=(3.0, 3.0), seed=0, condition="x")
    assert np.isinf(snr[0]) and snr[1] == 3.0 and not audio[0].any()


def test_generated_rooms_render_held_out_and_pass_the_checks(tmp_path, heads):
    out = tmp_path / "s1"
    config = SpatializeConfig(azimuths=QUARTERS, environments=("hall",), seed=1, hrir=heads[0], rooms=3, test_rooms=1,
                              room_ranges=FAST_ROOMS, samples_per_shard=40)
    spatialize(refs(8), out, config)
    data = read_all(out)
    assert set(data["room"]) == {"room-00", "room-01", "room-02", "testroom-00"}
    test = data["split"] == "test"
    assert set(data["room"][test]) == {"testroom-00"} and "testroom-00" not in set(data["room"][~test])
    assert set(data["env"]) == {1}  # every room is of the reverberant class
    manifest = json.loads((out / "manifest.json").read_text())
    anechoic = ircheck.measure(load_hrirs())
    for name, room in manifest["totals"]["rooms"].items():
        bank = read_sofa(out / manifest["totals"]["irs"][name])
        spec = room["simulated"]
        m = ircheck.measure(bank, acoustics.predicted_drr_db(spec["volume_m3"], spec["rt60_s"], spec["distance_m"]))
        checks = ircheck.check_room(m, anechoic, spec["rt60_s"])
        assert all(c["ok"] for c in checks), (name, checks)
        assert room["test_only"] == name.startswith("test")


def test_stage2_carries_the_labels_and_fills_them_for_older_shards(tmp_path, heads):
    from bast.pipeline.features.featurize import featurize

    s1 = tmp_path / "s1"
    spatialize(refs(6), s1, SpatializeConfig(azimuths=QUARTERS, seed=2, hrir=(heads[0], heads[1]), snr_db="0:6",
                                             samples_per_shard=20))
    featurize(s1, tmp_path / "s2")
    one, two = read_all(s1), read_all(tmp_path / "s2")
    for k in ("head", "room", "snr_db", "clip_id"):
        np.testing.assert_array_equal(two[k], one[k])
    assert set(two["head"]) == {"headA", "headB"} and set(two["room"]) == {"anechoic", "hall"}
    assert json.loads((tmp_path / "s2" / "manifest.json").read_text())["totals"]["samples_by_room"]["hall"] == len(one["room"]) // 2

    # An older Stage 1 output: no head, room or snr_db datasets.
    old = tmp_path / "old"
    spatialize(refs(4), old, SpatializeConfig(azimuths=QUARTERS, seed=2, samples_per_shard=20))
    for p in (old / "shards").glob("*.h5"):
        with h5py.File(p, "a") as f:
            for k in ("head", "room", "snr_db"):
                del f[k]
    manifest = json.loads((old / "manifest.json").read_text())  # as an older Stage 1 listed its shards
    for s in manifest["shards"]:
        s["sha256"] = sha256_file(old / s["path"])
    (old / "manifest.json").write_text(json.dumps(manifest))
    featurize(old, tmp_path / "old2")
    data = read_all(tmp_path / "old2")
    assert set(data["head"]) == {default_hrir_path().stem}
    names = ["anechoic", "hall"]
    assert list(data["room"]) == [names[e] for e in data["env"]] and np.all(np.isinf(data["snr_db"]))


def test_cli_options_for_conditions(tmp_path, heads):
    folder = tmp_path / "heads"
    folder.mkdir()
    for h in heads:
        (folder / h.split("/")[-1]).write_bytes(open(h, "rb").read())
    runner = CliRunner()
    base = ["spatialize", "default", "--sounds", "4", "--no-speech", "--env", "anechoic", "--azimuths", "0,90",
            "--workers", "0"]
    result = runner.invoke(app, base[:1] + [base[1], str(tmp_path / "a")] + base[2:] + ["--hrir", str(folder),
                                                                                        "--snr", "10", "--noise", "directional"])
    assert result.exit_code == 0, result.output
    data = read_all(tmp_path / "a")
    assert set(data["head"]) == {"headA", "headB"} and np.all(data["snr_db"] == 10.0)
    for extra, message in ((["--noise", "diffuse"], "--noise needs --snr"), (["--snr", "loud"], "--snr"),
                           (["--rooms", "2"], "hall environment"), (["--hrir", str(tmp_path / "nope")], "--hrir")):
        result = runner.invoke(app, base[:1] + [base[1], str(tmp_path / "b")] + base[2:] + extra)
        assert result.exit_code == 1 and message in result.output and isinstance(result.exception, SystemExit), result.output


def test_irs_checks_generated_rooms(tmp_path):
    result = CliRunner().invoke(app, ["irs", "--rooms", "1", "--seed", "3", "--azimuths", "0:360:30", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "irs.json").read_text())
    assert list(figures) == ["room-00"] and (tmp_path / "irs-room-00.png").exists()
    assert all(c["ok"] for c in figures["room-00"]["checks"]) and "pass" in result.output
    spec = draw_rooms(1, 3)[0].spec  # the room spatialize --rooms 1 --seed 3 renders in
    assert figures["room-00"]["room"]["size_m"] == list(spec.size_m)
    assert figures["room-00"]["room"]["rt60_s"] == spec.rt60_s
