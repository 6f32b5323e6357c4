"""Directions on the sphere, in SOFA's spherical coordinates (docs/conventions.md).

Azimuth in [0, 360) counter-clockwise from straight ahead (90 = left), elevation in
[-90, 90] up from the horizontal plane; unit vector (x, y, z) = (cos el cos az,
cos el sin az, sin el). Interaural-polar coordinates as in the AMT toolbox and the
HRTF-localization literature: lateral = asin(cos el sin az) in [-90, 90] (left positive),
polar = atan2(sin el, cos el cos az) in [-90, 270) (0 ahead, 90 above, 180 behind).

Pure numpy, no torch: every layer (rendering, scenes, metrics, the report) uses the same
definitions. All functions take degrees and broadcast over arrays.
"""

from __future__ import annotations

import numpy as np

_AXIS_EPS = 1e-12  # |x| or |z| of a unit vector below this is float noise of a zero


def wrap_azimuth(azimuth_deg):
    """Azimuths into [0, 360)."""
    out = np.mod(np.asarray(azimuth_deg, dtype=np.float64), 360.0)
    return np.where(out >= 360.0, 0.0, out)  # mod of a tiny negative number rounds to 360.0


def unit_vector(azimuth_deg, elevation_deg=0.0) -> np.ndarray:
    """Unit vectors (..., 3) of directions given in degrees."""
    az = np.radians(np.asarray(azimuth_deg, dtype=np.float64))
    el = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    az, el = np.broadcast_arrays(az, el)
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)


def azimuth_elevation(xyz) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth in [0, 360), elevation in [-90, 90]) in degrees of vectors (..., 3) of any
    non-zero length. At the poles the azimuth is 0."""
    xyz = np.asarray(xyz, dtype=np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    horizontal = np.hypot(x, y)
    elevation = np.degrees(np.arctan2(z, horizontal))
    # At a pole x and y are float noise (cos 90 deg = 6e-17): their angle is noise too, so 0.
    pole = horizontal <= _AXIS_EPS * np.abs(z)
    return np.where(pole, 0.0, wrap_azimuth(np.degrees(np.arctan2(y, x)))), np.where(pole, np.sign(z) * 90.0, elevation)


def great_circle_deg(az1, el1, az2, el2) -> np.ndarray:
    """Angle in degrees between two directions (the great-circle error), in [0, 180].

    atan2(|u x v|, u . v) rather than acos(u . v): exact near 0 and 180 degrees too."""
    u, v = unit_vector(az1, el1), unit_vector(az2, el2)
    cross = np.linalg.norm(np.cross(u, v), axis=-1)
    return np.degrees(np.arctan2(cross, np.sum(u * v, axis=-1)))


def lateral_polar(azimuth_deg, elevation_deg=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Interaural-polar (lateral in [-90, 90], polar in [-90, 270)) in degrees."""
    x, y, z = np.moveaxis(unit_vector(azimuth_deg, elevation_deg), -1, 0)
    # cos(270 deg) is -1.8e-16, not 0: without snapping, (270, -30) lands at polar 270 - 1e-14
    # (outside [-90, 270)) instead of -90, and (90, 0) at polar 180 for atan2(0, -0). Noise
    # of degrees-to-radians is ~1e-16; a real direction 1e-12 off the axis is 6e-11 deg off.
    x = np.where(np.abs(x) < _AXIS_EPS, 0.0, x)
    y = np.where(np.abs(y) < _AXIS_EPS, 0.0, y)
    z = np.where(np.abs(z) < _AXIS_EPS, 0.0, z)
    lateral = np.degrees(np.arcsin(np.clip(y, -1.0, 1.0)))
    polar = np.degrees(np.arctan2(z, x))  # (-180, 180]; 0 on the interaural axis (x = z = 0)
    polar = np.where(polar < -90.0, polar + 360.0, polar)  # [-90, 270)
    return lateral, polar


def from_lateral_polar(lateral_deg, polar_deg) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth, elevation) in degrees of interaural-polar coordinates."""
    lat = np.radians(np.asarray(lateral_deg, dtype=np.float64))
    pol = np.radians(np.asarray(polar_deg, dtype=np.float64))
    xyz = np.stack([np.cos(lat) * np.cos(pol), np.sin(lat) * np.ones_like(pol), np.cos(lat) * np.sin(pol)], axis=-1)
    return azimuth_elevation(xyz)
