"""HRIR interpolation (bast/pipeline/irs/interpolate.py) and its leave-one-out check."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bast.cli import app
from bast.errors import SofaError
from bast.pipeline.irs import acoustics
from bast.pipeline.irs import check as ircheck
from bast.pipeline.irs.interpolate import Interpolator, interpolate
from bast.pipeline.irs.sources import load_hrirs
from bast.pipeline.irs.sofa import write_sofa

FS = 16000


@pytest.fixture(scope="module")
def kemar():
    return load_hrirs()


def test_leave_one_out_beats_the_nearest_neighbour(kemar):
    """Every 10th KEMAR direction (71 of 710, every elevation ring but the pole's single
    direction), rebuilt from all the others."""
    loo = ircheck.interpolation_check(kemar, only=range(0, len(kemar), 10))
    o = loo["overall"]
    assert loo["directions"] == 71 and len(loo["by_elevation"]) == 13
    assert o["sd_db_interpolated"]["mean"] < 0.8 * o["sd_db_nearest"]["mean"]
    assert o["itd_error_us_interpolated"]["mean"] < 0.5 * o["itd_error_us_nearest"]["mean"]
    assert o["itd_error_us_interpolated"]["median"] < o["itd_error_us_nearest"]["median"]


def test_a_measured_direction_is_its_own_hrir_and_between_two_the_itd_is_between(kemar):
    np.testing.assert_array_equal(interpolate(kemar, [90.0, 35.0], 0.0), kemar.select([90.0, 35.0]))
    # Half-way between 30 and 35 deg on the horizontal plane: an ITD between theirs.
    itd = lambda pair: acoustics.itd_ms(pair, FS, upsample=32)  # noqa: E731
    mid = interpolate(kemar, [32.5], 0.0)[0]
    a, b = itd(kemar.select([30.0])[0]), itd(kemar.select([35.0])[0])
    assert min(a, b) < itd(mid) < max(a, b)
    # And its magnitude response lies between theirs (dB, below 6 kHz, where neighbours are close).
    f = np.fft.rfftfreq(512, 1 / FS)
    band = (f > 200) & (f < 6000)
    mag = lambda h: 20 * np.log10(np.abs(np.fft.rfft(h, 512))[..., band])  # noqa: E731
    lo, hi = np.minimum(mag(kemar.select([30.0])[0]), mag(kemar.select([35.0])[0])), \
        np.maximum(mag(kemar.select([30.0])[0]), mag(kemar.select([35.0])[0]))
    inside = (mag(mid) >= lo - 0.5) & (mag(mid) <= hi + 0.5)
    assert inside.mean() > 0.9


def test_weights_are_barycentric_over_an_enclosing_triangle(kemar):
    ip = Interpolator(kemar)
    az, el = np.array([12.3, 100.0, 250.0, 0.0]), np.array([-37.0, 55.0, 5.0, 89.0])
    idx, w = ip.weights(az, el)
    assert np.all(w >= 0) and np.allclose(w.sum(axis=1), 1.0)
    u = np.stack([np.cos(np.radians(el)) * np.cos(np.radians(az)), np.cos(np.radians(el)) * np.sin(np.radians(az)),
                  np.sin(np.radians(el))], axis=-1)
    p = np.einsum("qk,qkc->qc", w, kemar.directions()[idx])  # a point of the face, on the ray of u
    np.testing.assert_allclose(p / np.linalg.norm(p, axis=1, keepdims=True), u, atol=1e-9)


def test_a_horizontal_ring_interpolates_along_the_ring_and_refuses_far_directions(kemar, tmp_path):
    ring = kemar.subset(np.flatnonzero(np.abs(kemar.elevation_deg) < 1e-6))
    mid = interpolate(ring, [2.5], 0.0)[0]
    a, b = ring.select([0.0])[0], ring.select([5.0])[0]
    itd = lambda pair: acoustics.itd_ms(pair, FS, upsample=32)  # noqa: E731
    assert min(itd(a), itd(b)) <= itd(mid) <= max(itd(a), itd(b))
    with pytest.raises(SofaError, match="more than 30 deg"):
        interpolate(ring, [0.0], 60.0)


def test_cli_interpolation_check_prints_the_table(kemar, tmp_path):
    small = kemar.subset(np.flatnonzero(np.isin(np.round(kemar.elevation_deg), [-20.0, 0.0, 20.0])
                                        & np.isclose(np.mod(kemar.azimuth_deg, 20.0), 0.0)))
    path = write_sofa(tmp_path / "small.sofa", small)
    result = CliRunner().invoke(app, ["irs", "--interpolation-check", "--hrir", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "leave-one-out" in result.output and "SD nearest" in result.output and "all (mean)" in result.output
    loo = json.loads((tmp_path / "o" / "irs.json").read_text())["interpolation_check"]
    assert loo["directions"] == len(small) == 54
    o = loo["overall"]
    assert o["itd_error_us_interpolated"]["mean"] < o["itd_error_us_nearest"]["mean"]
