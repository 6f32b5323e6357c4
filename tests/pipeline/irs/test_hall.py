"""Physical validation of the bundled KEMAR HRIRs and the simulated lecture hall
(default settings), against what acoustics says a real head in a real hall gives."""

import numpy as np
import pytest

from bast.pipeline.irs import acoustics
from bast.pipeline.irs import hall
from bast.pipeline.irs.hall import HallSpec
from bast.pipeline.irs.sources import DEFAULT_AZIMUTHS, IRSources, load_hrirs

FS = 16000
AZ = list(DEFAULT_AZIMUTHS)


def at(pairs, azimuth):
    return pairs[AZ.index(azimuth)]


@pytest.fixture(scope="module")
def hall_pairs(hall_bank):
    return hall_bank.select(DEFAULT_AZIMUTHS)


@pytest.mark.parametrize("env", ["anechoic", "hall"])
def test_direct_sound_itd_and_ild(env, anechoic_pairs, hall_pairs):
    pairs = anechoic_pairs if env == "anechoic" else hall_pairs
    # An adult head: 0.5-0.8 ms at the side, the near ear leading and louder.
    assert 0.5 <= acoustics.itd_ms(at(pairs, 90.0), FS) <= 0.8
    assert -0.8 <= acoustics.itd_ms(at(pairs, 270.0), FS) <= -0.5
    for front_or_back in (0.0, 180.0):
        assert abs(acoustics.itd_ms(at(pairs, front_or_back), FS)) < 0.05
    assert acoustics.ild_db(at(pairs, 90.0), FS) > 3.0
    assert acoustics.ild_db(at(pairs, 270.0), FS) < -3.0


def test_itd_and_ild_agree_between_anechoic_and_hall(anechoic_pairs, hall_pairs):
    itd_a = np.array([acoustics.itd_ms(p, FS) for p in anechoic_pairs])
    itd_h = np.array([acoustics.itd_ms(p, FS) for p in hall_pairs])
    ild_a = np.array([acoustics.ild_db(p, FS) for p in anechoic_pairs])
    ild_h = np.array([acoustics.ild_db(p, FS) for p in hall_pairs])
    # One 62.5 us sample at 16 kHz is the grid of the rendering; the ITD search is 8x finer.
    np.testing.assert_allclose(itd_h, itd_a, atol=0.02)
    np.testing.assert_allclose(ild_h, ild_a, atol=1.0)  # a reflection may touch the 2.5 ms window
    # The ITD grows monotonically from ahead to the left side, as it must.
    assert np.all(np.diff(itd_a[:10]) > 0)


def test_rt60_meets_the_target(hall_pairs):
    # T30 in the 500 Hz and 1 kHz octaves, each BRIR and ear, from the Schroeder decay.
    t30 = np.array([[acoustics.rt60(p[c], FS, bands=(500.0, 1000.0), fit_db=(-5, -35))[fc]
                     for fc in (500.0, 1000.0)] for p in hall_pairs for c in (0, 1)])
    assert np.mean(t30) == pytest.approx(0.8, rel=0.15)
    assert np.all(np.abs(t30.mean(axis=1) / 0.8 - 1) < 0.15)


def test_late_tail_coherence_is_that_of_a_diffuse_field(hall_pairs):
    coh = np.array([[acoustics.interaural_coherence(p, FS, fc, start_s=0.08) for fc in (125.0, 2000.0, 4000.0)]
                    for p in hall_pairs])
    # 125 Hz: the ears are 0.18 m apart, a fifteenth of a wavelength: nearly the same signal.
    # One BRIR's 125 Hz tail holds only ~10 independent samples, so the figure is the mean.
    assert coh[:, 0].mean() >= 0.7
    # Above 2 kHz the ears hear independent sums of reflections: every BRIR stays low.
    assert np.all(coh[:, 1:] < 0.35)


def test_direct_to_reverberant_ratio_matches_diffuse_field_theory(hall_pairs):
    spec = HallSpec()
    predicted = acoustics.predicted_drr_db(spec.volume_m3, spec.rt60_s, spec.distance_m)
    # The energy mean over all azimuths and both ears averages the ears' directivity out.
    assert acoustics.drr_db(hall_pairs, FS) == pytest.approx(predicted, abs=4.0)


def test_rt60_is_a_parameter():
    spec = HallSpec(rt60_s=1.4)
    bank = hall.build_hall([0.0, 90.0], load_hrirs(), spec)
    t30 = [acoustics.rt60(p[0], FS, bands=(500.0, 1000.0), fit_db=(-5, -35)) for p in bank.ir]
    assert np.mean([list(r.values()) for r in t30]) == pytest.approx(1.4, rel=0.15)
    assert bank.ir.shape[-1] == spec.n_samples  # long enough for the decay


def test_same_seed_same_bank_other_seed_other_tail():
    hrirs = load_hrirs()
    a = hall.build_hall([90.0], hrirs, HallSpec(seed=1))
    b = hall.build_hall([90.0], hrirs, HallSpec(seed=1))
    c = hall.build_hall([90.0], hrirs, HallSpec(seed=2))
    np.testing.assert_array_equal(a.ir, b.ir)
    late = slice(int(0.2 * FS), None)
    assert not np.allclose(a.ir[..., late], c.ir[..., late])
    # Until the floor reflection (path 2.6 m against 1 m: 4.7 ms after the direct sound at
    # 2.9 ms) only the direct sound has arrived, and it does not depend on the walls.
    direct = slice(0, int(0.007 * FS))
    np.testing.assert_allclose(a.ir[..., direct], c.ir[..., direct], atol=1e-6)


def test_bank_is_cached_and_stored_as_sofa(hall_bank, monkeypatch):
    import sofar

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached bank was rebuilt")

    monkeypatch.setattr(hall, "build_hall", no_rebuild)
    again = IRSources().irset("hall", DEFAULT_AZIMUTHS)
    np.testing.assert_array_equal(again.ir, hall_bank.ir)
    files = list(hall.cache_dir().glob("hall-*.sofa"))
    assert files, "no cached SOFA file"
    sofa = sofar.read_sofa(str(files[0]), verbose=False)
    sofa.verify()
    assert sofa.GLOBAL_SOFAConventions == "GeneralFIR"
    # Another RT60 is another bank: it must not be served from this cache entry.
    with pytest.raises(AssertionError, match="rebuilt"):
        IRSources(hall=HallSpec(rt60_s=0.5)).irset("hall", DEFAULT_AZIMUTHS)


def test_a_measured_brir_file_replaces_the_simulation(tmp_path, hall_bank):
    path = hall.save_bank(tmp_path / "measured.sofa", hall_bank, HallSpec())
    pairs = IRSources(brir=path).pairs("hall", [90.0, 270.0])
    np.testing.assert_array_equal(pairs, hall_bank.select([90.0, 270.0]))
