"""bast.sphere: SOFA spherical and interaural-polar coordinates (shared/SPEC.md section 10)."""

import numpy as np
import pytest

from bast.sphere import (azimuth_elevation, from_lateral_polar, great_circle_deg, lateral_polar, unit_vector,
                         wrap_azimuth)


def test_axes_follow_sofa():
    np.testing.assert_allclose(unit_vector(0, 0), [1, 0, 0], atol=1e-12)  # ahead
    np.testing.assert_allclose(unit_vector(90, 0), [0, 1, 0], atol=1e-12)  # left
    np.testing.assert_allclose(unit_vector(123, 90), [0, 0, 1], atol=1e-12)  # above, any azimuth


def test_round_trip_over_the_sphere():
    rng = np.random.default_rng(0)
    az, el = rng.uniform(0, 360, 1000), rng.uniform(-89, 89, 1000)
    az2, el2 = azimuth_elevation(unit_vector(az, el) * rng.uniform(0.1, 10, (1000, 1)))
    np.testing.assert_allclose(el2, el, atol=1e-9)
    np.testing.assert_allclose(np.abs(np.angle(np.exp(1j * np.radians(az2 - az)))), 0, atol=1e-9)
    assert ((az2 >= 0) & (az2 < 360)).all()


def test_great_circle_matches_the_dot_product_and_is_exact_at_the_ends():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 360, (2, 500))
    e = rng.uniform(-90, 90, (2, 500))
    expect = np.degrees(np.arccos(np.clip(np.sum(unit_vector(a[0], e[0]) * unit_vector(a[1], e[1]), -1), -1, 1)))
    np.testing.assert_allclose(great_circle_deg(a[0], e[0], a[1], e[1]), expect, atol=1e-6)
    assert great_circle_deg(10, 20, 10, 20) == pytest.approx(0, abs=1e-12)
    assert great_circle_deg(0, 0, 180, 0) == pytest.approx(180, abs=1e-12)
    assert great_circle_deg(0, 0, 1e-7, 0) == pytest.approx(1e-7, rel=1e-6)  # acos would give 0


@pytest.mark.parametrize("az, el, lat, pol", [
    (0, 0, 0, 0), (90, 0, 90, None), (270, 0, -90, None), (270, 30, -60, 90), (180, 0, 0, 180), (0, 90, 0, 90),
    (0, -40, 0, -40), (180, 30, 0, 150), (30, 0, 30, 0), (150, 0, 30, 180),
])
def test_lateral_polar_landmarks(az, el, lat, pol):
    la, po = lateral_polar(az, el)
    assert la == pytest.approx(lat, abs=1e-9)
    if pol is not None:  # on the interaural axis (lateral +-90) the polar angle is undefined
        assert po == pytest.approx(pol, abs=1e-9)


@pytest.mark.parametrize("az, el, lat, pol", [
    # worked by hand: x = cos el cos az, y = cos el sin az, z = sin el; lat = asin y, pol = atan2(z, x)
    (270, -30, -60, -90),   # x = cos 270 = 0 exactly: polar -90, not 270 (float noise of cos 270)
    (-90, -30, -60, -90), (90, -30, 60, -90), (90, 30, 60, 90), (270, 30, -60, 90),
    (90, 0, 90, 0), (270, 0, -90, 0), (-90, 0, -90, 0),  # the interaural axis: x = z = 0, polar 0
    (0, 90, 0, 90), (180, 90, 0, 90), (0, -90, 0, -90), (180, -90, 0, -90), (270, -90, 0, -90),  # the poles
    (180, 0, 0, 180), (180, -30, 0, 210), (0, -30, 0, -30),
])
def test_lateral_polar_exact_at_the_boundaries(az, el, lat, pol):
    la, po = lateral_polar(az, el)
    assert la == pytest.approx(lat, abs=1e-9) and po == pytest.approx(pol, abs=1e-9)
    assert -90.0 <= po < 270.0 and -90.0 <= la <= 90.0


def test_lateral_polar_round_trip_and_ranges():
    rng = np.random.default_rng(2)
    az, el = rng.uniform(0, 360, 1000), rng.uniform(-89, 89, 1000)
    lat, pol = lateral_polar(az, el)
    assert ((lat >= -90) & (lat <= 90)).all() and ((pol >= -90) & (pol < 270)).all()
    np.testing.assert_allclose(great_circle_deg(*from_lateral_polar(lat, pol), az, el), 0, atol=1e-6)


def test_front_back_mirror_keeps_the_lateral_angle():
    # a cone of confusion: az and 180 - az have the same lateral angle, polar mirrored about 90
    lat1, pol1 = lateral_polar(40.0, 10.0)
    lat2, pol2 = lateral_polar(140.0, 10.0)
    assert lat1 == pytest.approx(lat2) and pol1 + pol2 == pytest.approx(180.0)


def test_wrap_azimuth():
    np.testing.assert_allclose(wrap_azimuth([-10, 360, 725, -1e-20]), [350, 0, 5, 0])


def test_the_poles_have_azimuth_0_whatever_the_noise():
    # unit_vector(123, 90) has x, y of 1e-17 (cos 90 deg is not 0 in floats): not azimuth 123
    for az in (0.0, 123.0, 270.0):
        for el in (90.0, -90.0):
            a, e = azimuth_elevation(unit_vector(az, el))
            assert a == 0.0 and e == el
    a, e = azimuth_elevation(unit_vector([10.0, 350.0], [89.9, -89.9]))
    np.testing.assert_allclose(a, [10.0, 350.0], atol=1e-9)  # near, not at, a pole: kept
