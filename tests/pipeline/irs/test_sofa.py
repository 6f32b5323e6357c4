"""Tests of the SOFA reader and writer (bast.pipeline.irs.sofa).

The files are written with sofar, the SOFA reference implementation (netCDF4-based), the
way other tools write them, so the tests check that bast reads what the rest of the world
produces, not only what bast itself writes.

The synthetic HRIRs are physically meaningful: for a direction with lateral component
lat = sin(az) cos(el) (+1 = left), the left ear's impulse comes 0.35 ms * (1 - lat) after
a common onset and the right ear's 0.35 ms * (1 + lat), and the nearer ear is louder
(ILD = 10 dB * lat). So the left ear leads and is louder at azimuth 90 (SOFA: 90 = left),
and the ITD and ILD signs after reading tell whether bast kept the ears and directions
straight.
"""

from __future__ import annotations

import math
import warnings

import h5py
import numpy as np
import pytest
import sofar
from scipy import signal

from bast.pipeline.irs import acoustics
from bast.pipeline.irs.sources import default_hrir_path
from bast.pipeline.irs.sofa import FS, IRSet, SofaError, read_sofa, resample_ir, write_sofa

HEAD_DELAY_S = 0.35e-3  # half the largest ITD: 0.7 ms at the side, a human-sized head
MAX_ILD_DB = 10.0  # ILD at the side
ONSET_S = 2.0e-3  # common delay, leaving room for the 1 ms the ITD window looks back
HRIR_LENGTH_S = 6.0e-3
ITD_TOLERANCE_MS = 0.07


# --------------------------------------------------------------------------- helpers


def fractional_impulse(delay_s: float, fs: float, n: int, cutoff_hz: float = 6000.0,
                       half_width_s: float = 1.0e-3) -> np.ndarray:
    """A band-limited impulse at a fractional delay: a Blackman-windowed sinc with unit
    DC gain, band-limited below 8 kHz so that resampling to 16 kHz keeps its shape."""
    t = np.arange(n) / fs - delay_s
    h = 2 * cutoff_hz / fs * np.sinc(2 * cutoff_hz * t)
    u = t / half_width_s
    window = np.where(np.abs(u) < 1, 0.42 + 0.5 * np.cos(np.pi * u) + 0.08 * np.cos(2 * np.pi * u), 0.0)
    return h * window


def lateral(az_deg, el_deg):
    """The direction's component along the interaural axis, +1 at the left ear."""
    return np.sin(np.radians(az_deg)) * np.cos(np.radians(el_deg))


def expected_itd_ms(az_deg, el_deg=0.0):
    """Right-ear delay minus left-ear delay (positive when the left ear leads)."""
    return 2 * HEAD_DELAY_S * 1e3 * lateral(az_deg, el_deg)


def synthetic_hrirs(az_deg, el_deg, fs: float, n: int | None = None) -> np.ndarray:
    """(M, 2, N) HRIRs, left ear first, for the directions (az_deg, el_deg) at rate fs."""
    az_deg, el_deg = np.broadcast_arrays(np.atleast_1d(az_deg), np.atleast_1d(el_deg))
    n = n or int(round(HRIR_LENGTH_S * fs))
    out = np.zeros((az_deg.size, 2, n))
    for i, lat in enumerate(lateral(az_deg, el_deg)):
        out[i, 0] = 10 ** (MAX_ILD_DB * lat / 40) * fractional_impulse(ONSET_S + HEAD_DELAY_S * (1 - lat), fs, n)
        out[i, 1] = 10 ** (-MAX_ILD_DB * lat / 40) * fractional_impulse(ONSET_S + HEAD_DELAY_S * (1 + lat), fs, n)
    return out


def hrir_grid():
    """A 5-degree ring at elevation 0 plus 15-degree rings at -30 and +30 degrees."""
    az = [float(a) for a in range(0, 360, 5)]
    el = [0.0] * len(az)
    for ring in (-30.0, 30.0):
        ring_az = [float(a) for a in range(0, 360, 15)]
        az += ring_az
        el += [ring] * len(ring_az)
    return np.array(az), np.array(el)


def cartesian(az_deg, el_deg, r):
    """Spherical SOFA coordinates (degrees) to cartesian, x ahead, y left, z up."""
    az, el, r = np.broadcast_arrays(np.radians(az_deg), np.radians(el_deg), np.asarray(r, float))
    return np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], axis=-1)


def write_hrir_sofa(path, az_deg, el_deg, fs: float, *, ir=None, positions: str = "degree",
                    signed_azimuth: bool = False, right_ear_first: bool = False, delay=None,
                    distance_m: float = 1.5):
    """Write a SimpleFreeFieldHRIR file with sofar; returns the path.

    positions: "degree" (spherical, the SOFA default), "radian" (spherical, radians) or
    "cartesian". signed_azimuth stores azimuths in [-180, 180) as many tools do.
    right_ear_first stores receiver 0 as the right ear (ReceiverPosition y = -0.09).
    """
    az_deg, el_deg = np.asarray(az_deg, float), np.asarray(el_deg, float)
    ir = synthetic_hrirs(az_deg, el_deg, fs) if ir is None else np.asarray(ir, float)
    s = sofar.Sofa("SimpleFreeFieldHRIR")
    s.Data_SamplingRate = fs
    stored_az = (az_deg + 180.0) % 360.0 - 180.0 if signed_azimuth else az_deg
    if positions == "cartesian":
        s.SourcePosition = cartesian(az_deg, el_deg, distance_m)
        s.SourcePosition_Type = "cartesian"
        s.SourcePosition_Units = "metre"
    else:
        s.SourcePosition = np.column_stack([stored_az, el_deg, np.full(az_deg.size, distance_m)])
    if right_ear_first:
        s.Data_IR = ir[:, ::-1]
        s.ReceiverPosition = np.array([[0.0, -0.09, 0.0], [0.0, 0.09, 0.0]])[:, :, None]
    else:
        s.Data_IR = ir
    if delay is not None:
        s.Data_Delay = np.asarray(delay, float)
    sofar.write_sofa(str(path), s)
    if positions == "radian":
        # sofar (AES69-2022 write rules) only writes degrees, but files from older tools
        # store radians; rewrite the variable the way such a file has it.
        with h5py.File(path, "r+") as f:
            sp = f["SourcePosition"]
            values = sp[()]
            values[:, :2] = np.radians(values[:, :2])
            sp[...] = values
            sp.attrs["Units"] = np.bytes_(b"radian, radian, metre")
    return path


def circular_diff_deg(a, b):
    """Signed smallest difference a - b between angles, in (-180, 180]."""
    return (np.asarray(a, float) - np.asarray(b, float) + 180.0) % 360.0 - 180.0


def index_of(irs: IRSet, az_deg: float, el_deg: float = 0.0) -> int:
    """Index of the exact direction in an IRSet (independent of IRSet.indices)."""
    hit = np.flatnonzero((np.abs(circular_diff_deg(irs.azimuth_deg, az_deg)) < 1e-6)
                         & (np.abs(irs.elevation_deg - el_deg) < 1e-6))
    assert hit.size == 1, f"expected one IR at az {az_deg} el {el_deg}, found {hit.size}"
    return int(hit[0])


def itd(pair) -> float:
    return acoustics.itd_ms(pair, FS)


def ild(pair) -> float:
    return acoustics.ild_db(pair, FS)


@pytest.fixture(scope="module")
def grid_48k(tmp_path_factory):
    """The synthetic grid at 48 kHz as sofar writes it, read by bast: (IRSet, az, el, path)."""
    az, el = hrir_grid()
    path = write_hrir_sofa(tmp_path_factory.mktemp("grid") / "grid48k.sofa", az, el, 48000)
    return read_sofa(path), az, el, path


# --------------------------------------------------------------------------- 1. HRIR sets


@pytest.mark.parametrize("fs, signed_azimuth", [(48000, False), (44100, True)])
def test_simple_free_field_hrir_directions_and_binaural_cues(tmp_path, fs, signed_azimuth):
    az, el = hrir_grid()
    path = write_hrir_sofa(tmp_path / f"hrir_{fs}.sofa", az, el, fs, signed_azimuth=signed_azimuth)
    n_in = int(round(HRIR_LENGTH_S * fs))
    irs = read_sofa(path)

    # Output at bast's rate, float32, (M, 2, N) with N scaled by the rate ratio.
    assert irs.fs == FS == 16000
    assert irs.ir.dtype == np.float32
    assert irs.ir.shape[:2] == (az.size, 2)
    assert abs(irs.ir.shape[2] - n_in * FS / fs) <= 1
    assert irs.conventions == "SimpleFreeFieldHRIR"
    assert irs.attrs["OriginalSamplingRate"] == str(fs)

    # Directions come back in [0, 360) whatever range the file used, in file order.
    assert np.all((irs.azimuth_deg >= 0) & (irs.azimuth_deg < 360))
    np.testing.assert_allclose(irs.azimuth_deg, az % 360, atol=1e-6)
    np.testing.assert_allclose(irs.elevation_deg, el, atol=1e-6)
    np.testing.assert_allclose(irs.distance_m, 1.5, atol=1e-9)
    np.testing.assert_array_equal(irs.horizontal_azimuths(), np.arange(0, 360, 5))

    # The cardinal directions: the left ear leads and is louder at 90 (left), the right
    # at 270; front and back are symmetric.
    front, left, back, right = irs.select([0, 90, 180, 270])
    assert itd(left) > 0.5 and ild(left) > 5.0
    assert itd(right) < -0.5 and ild(right) < -5.0
    for pair in (front, back):
        assert abs(itd(pair)) < 0.03
        assert abs(ild(pair)) < 0.5

    # Every direction, elevated rings included, has the ITD it was built with.
    measured = np.array([itd(pair) for pair in irs.ir])
    np.testing.assert_allclose(measured, expected_itd_ms(az, el), atol=ITD_TOLERANCE_MS)
    # And the ILD, which resampling must not change.
    measured_ild = np.array([ild(pair) for pair in irs.ir])
    np.testing.assert_allclose(measured_ild, MAX_ILD_DB * lateral(az, el), atol=1.0)


# --------------------------------------------------------------------------- 2. gain


@pytest.mark.parametrize("fs", [44100, 48000, 96000])
def test_resampling_keeps_the_dc_gain_of_the_impulse_responses(tmp_path, fs):
    # A polyphase resampler keeps a signal's amplitude, but an IR's gain is its sum, which
    # would drop by fs/16000 without the compensation resample_ir applies.
    n = int(0.05 * fs)
    lowpass = np.zeros(n)
    taps = 0.8 * signal.firwin(151, 1500.0, fs=fs)  # DC gain 0.8
    lowpass[100:100 + taps.size] = taps
    box = np.zeros(n)
    length = int(0.01 * fs)
    box[200:200 + length] = 0.5 / length  # a 10 ms constant block, DC gain 0.5
    ir = np.stack([lowpass, box])[None]  # (1, 2, N)
    path = write_hrir_sofa(tmp_path / "dc.sofa", [0.0], [0.0], fs, ir=ir)

    irs = read_sofa(path)
    sums = irs.ir[0].astype(float).sum(axis=-1)
    np.testing.assert_allclose(sums, [0.8, 0.5], rtol=0.01)
    # resample_ir on its own, too.
    direct = resample_ir(ir, fs, FS)
    np.testing.assert_allclose(direct[0].sum(axis=-1), [0.8, 0.5], rtol=0.01)


def test_resample_ir_is_a_no_op_at_the_target_rate():
    ir = np.random.default_rng(0).standard_normal((3, 2, 50))
    out = resample_ir(ir, FS, FS)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ir.astype(np.float32))


# --------------------------------------------------------------------------- 3. coordinates


def test_radians_and_cartesian_source_positions_give_the_same_directions(tmp_path):
    az, el = hrir_grid()
    ir = synthetic_hrirs(az, el, 48000)
    sets = {
        kind: read_sofa(write_hrir_sofa(tmp_path / f"{kind}.sofa", az, el, 48000, ir=ir,
                                        positions=kind, signed_azimuth=True))
        for kind in ("degree", "radian", "cartesian")
    }
    with h5py.File(tmp_path / "radian.sofa") as f:  # the file really holds radians
        assert np.abs(f["SourcePosition"][:, 0]).max() < 2 * np.pi
    reference = sets["degree"]
    for kind in ("radian", "cartesian"):
        got = sets[kind]
        assert np.all((got.azimuth_deg >= 0) & (got.azimuth_deg < 360)), kind
        np.testing.assert_allclose(circular_diff_deg(got.azimuth_deg, reference.azimuth_deg), 0, atol=1e-6)
        np.testing.assert_allclose(got.elevation_deg, reference.elevation_deg, atol=1e-6)
        np.testing.assert_allclose(got.distance_m, 1.5, atol=1e-9)
        np.testing.assert_array_equal(got.ir, reference.ir)
        # Exact selection works on the converted directions (no 359.99999 for 0).
        np.testing.assert_array_equal(got.select([0, 90, 180, 270]), reference.select([0, 90, 180, 270]))


# --------------------------------------------------------------------------- 4. Data.Delay


@pytest.mark.parametrize(
    "delay, expected_itd_samples",
    [
        ([[10, 20]], [10, 10]),  # (I, R): the same for every measurement
        ([[10, 20], [24, 0]], [10, -24]),  # (M, R): per measurement
    ],
    ids=["delay-IR", "delay-MR"],
)
def test_data_delay_is_applied_per_ear(tmp_path, delay, expected_itd_samples):
    fs = 48000
    az, el = np.array([0.0, 180.0]), np.zeros(2)  # identical ears: any ITD comes from Data.Delay
    ir = synthetic_hrirs(az, el, fs)
    plain = read_sofa(write_hrir_sofa(tmp_path / "plain.sofa", az, el, fs, ir=ir))
    delayed = read_sofa(write_hrir_sofa(tmp_path / "delayed.sofa", az, el, fs, ir=ir, delay=delay))

    for m in range(2):
        assert abs(itd(plain.ir[m])) < 0.01
        # Delay in samples at the file's rate: 10 samples at 48 kHz = 0.208 ms.
        want_ms = expected_itd_samples[m] / fs * 1e3
        assert itd(delayed.ir[m]) == pytest.approx(want_ms, abs=0.03)

    # The left ear's onset moves by its own delay (10 samples at 48 kHz = 3.3 at 16 kHz).
    shift = acoustics.onset(delayed.ir[0, 0]) - acoustics.onset(plain.ir[0, 0])
    assert abs(shift - np.asarray(delay)[0, 0] * FS / fs) <= 1
    # Nothing is cut off: the IRs grow by the largest delay.
    assert delayed.ir.shape[-1] >= plain.ir.shape[-1] + np.max(delay) * FS / fs - 1


# --------------------------------------------------------------------------- 5. receiver order


def test_right_ear_first_receiver_order_is_swapped_to_left_first(tmp_path):
    az, el = np.array([0.0, 90.0, 180.0, 270.0]), np.zeros(4)
    ir = synthetic_hrirs(az, el, 48000)
    normal = read_sofa(write_hrir_sofa(tmp_path / "normal.sofa", az, el, 48000, ir=ir))
    swapped_path = write_hrir_sofa(tmp_path / "swapped.sofa", az, el, 48000, ir=ir, right_ear_first=True)
    with h5py.File(swapped_path) as f:  # receiver 0 of the file is the right ear
        assert f["ReceiverPosition"][0, 1, 0] < 0
    swapped = read_sofa(swapped_path)

    np.testing.assert_array_equal(swapped.ir, normal.ir)
    left = swapped.select([90])[0]
    assert itd(left) > 0.5 and ild(left) > 5.0  # channel 0 is the left ear


# --------------------------------------------------------------------------- 6. head rotation


@pytest.mark.parametrize("view_type", ["cartesian", "spherical"])
def test_head_rotation_in_listener_view_gives_head_related_azimuths(tmp_path, view_type):
    # A BRIR set that turns the head instead of moving the source: the source stays 1 m
    # in front of the listener's position in the room (+x), the head yaws. Turning the
    # head to the right by 90 deg (view (0, -1, 0)) puts the source at the left (az 90).
    fs = 48000
    yaw = np.array([0.0, -90.0, 90.0, 180.0, 30.0, -45.0])  # counter-clockwise, from above
    expected_az = (-yaw) % 360.0
    listener = np.array([[2.0, 3.0, 1.5]])
    s = sofar.Sofa("GeneralFIR")
    s.Data_IR = synthetic_hrirs(expected_az, 0.0, fs)
    s.Data_SamplingRate = fs
    s.Data_Delay = np.zeros((1, 2))
    s.ReceiverPosition = np.array([[0.0, 0.09, 0.0], [0.0, -0.09, 0.0]])
    s.ListenerPosition = listener
    s.SourcePosition = listener + [[1.0, 0.0, 0.0]]
    s.SourcePosition_Type = "cartesian"
    s.SourcePosition_Units = "metre"
    if view_type == "cartesian":
        s.ListenerView = cartesian(yaw, 0.0, 1.0)
    else:
        s.ListenerView = np.column_stack([yaw, np.zeros_like(yaw), np.ones_like(yaw)])
        s.ListenerView_Type = "spherical"
        s.ListenerView_Units = "degree, degree, metre"
    path = tmp_path / "rotating_head.sofa"
    sofar.write_sofa(str(path), s)

    irs = read_sofa(path)
    assert irs.conventions == "GeneralFIR"
    np.testing.assert_allclose(circular_diff_deg(irs.azimuth_deg, expected_az), 0, atol=1e-6)
    np.testing.assert_allclose(irs.elevation_deg, 0, atol=1e-6)
    np.testing.assert_allclose(irs.distance_m, 1.0, atol=1e-9)
    # The head turned right hears the source on the left.
    assert itd(irs.select([90])[0]) > 0.5
    assert itd(irs.select([270])[0]) < -0.5


def test_listener_up_tilts_and_rolls_the_head(tmp_path):
    # SingleRoomSRIR has ListenerUp: the head pitched up by 30 deg hears a source ahead in
    # the horizontal plane 30 deg below; a head rolled so that its top points to the room's
    # left (+y) hears a source above it on its right (az 270).
    c, sn = math.cos(math.radians(30)), math.sin(math.radians(30))
    views = np.array([[c, 0.0, sn], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    ups = np.array([[-sn, 0.0, c], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    offsets = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    expected_az, expected_el = np.array([0.0, 270.0, 90.0]), np.array([-30.0, 0.0, 0.0])
    listener = np.array([4.0, 2.5, 1.2])
    m = len(views)
    s = sofar.Sofa("SingleRoomSRIR")
    s.Data_IR = synthetic_hrirs(expected_az, expected_el, 48000)
    s.Data_SamplingRate = 48000
    s.Data_Delay = np.zeros((1, 2))
    s.ListenerPosition = np.tile(listener, (m, 1))
    s.SourcePosition = listener + offsets
    s.ListenerView = views
    s.ListenerUp = ups
    s.ReceiverPosition = np.array([[90.0, 0.0, 0.09], [-90.0, 0.0, 0.09]])[:, :, None]  # spherical
    s.ReceiverView = np.tile([[1.0, 0.0, 0.0]], (2, 1))[:, :, None]
    s.ReceiverUp = np.tile([[0.0, 0.0, 1.0]], (2, 1))[:, :, None]
    s.MeasurementDate = np.zeros(m)
    # netCDF4 with numpy 2 cannot write sofar's string variables; they are optional.
    s.delete("ReceiverDescriptions")
    s.delete("EmitterDescriptions")
    path = tmp_path / "srir.sofa"
    sofar.write_sofa(str(path), s)

    irs = read_sofa(path)
    np.testing.assert_allclose(irs.elevation_deg, expected_el, atol=1e-6)
    np.testing.assert_allclose(circular_diff_deg(irs.azimuth_deg, expected_az), 0, atol=1e-6)
    assert itd(irs.ir[2]) > 0.5  # az 90: left ear first


# --------------------------------------------------------------------------- 7. emitters


def _multi_emitter_sofa(path, conventions: str, fs: int = 48000):
    """Two head orientations (yaw 0 and 90) x three loudspeakers (emitters) at azimuths
    0, 90 and 270, 2 m from a source position at the listener's origin. Each IR is the
    synthetic HRIR of the direction it should come back with, so the ITD checks that the
    (M, E) order of the IRs matches the directions. Returns the expected (az, el)."""
    emitter_az = np.array([0.0, 90.0, 270.0])
    yaw = np.array([0.0, 90.0])
    expected_az = ((emitter_az[None, :] - yaw[:, None]) % 360.0).reshape(-1)  # M-major
    m, e = yaw.size, emitter_az.size
    hrirs = synthetic_hrirs(expected_az, 0.0, fs).reshape(m, e, 2, -1)  # (M, E, 2, N)
    views = cartesian(yaw, 0.0, 1.0)
    if conventions == "MultiSpeakerBRIR":
        # SOFA 1.0 FIRE layout: Data.IR is (M, R, E, N). sofar flags MultiSpeakerBRIR as
        # deprecated (superseded by SingleRoomMIMOSRIR) and refuses to write it, but such
        # files are common; its private writer writes it without the final check.
        with warnings.catch_warnings():  # "preliminary conventions version 0.3": expected
            warnings.simplefilter("ignore", UserWarning)
            s = sofar.Sofa("MultiSpeakerBRIR", verify=False)
        s.Data_IR = hrirs.transpose(0, 2, 1, 3)
        s.SourcePosition = np.zeros((1, 3))
        s.SourcePosition_Type = "cartesian"
        s.SourcePosition_Units = "metre"
        s.EmitterPosition = cartesian(emitter_az, 0.0, 2.0)[:, :, None]
        s.EmitterView = np.tile([[1.0, 0.0, 0.0]], (e, 1))[:, :, None]
        s.EmitterUp = np.tile([[0.0, 0.0, 1.0]], (e, 1))[:, :, None]
        s.ListenerView = views
        s.ListenerUp = np.array([[0.0, 0.0, 1.0]])
        s.Data_Delay = np.zeros((1, 2, e))
        s.Data_SamplingRate = fs
        s.verify(issue_handling="return")  # updates the dimensions for writing
        sofar.io._write_sofa(str(path), s, verify=False)
    else:
        # SOFA 2.x FIR-E layout (SingleRoomMIMOSRIR): Data.IR is (M, R, N, E).
        s = sofar.Sofa("SingleRoomMIMOSRIR")
        s.Data_IR = hrirs.transpose(0, 2, 3, 1)
        s.Data_SamplingRate = fs
        s.SourcePosition = np.zeros((m, 3))
        s.ListenerPosition = np.zeros((m, 3))
        s.ListenerView = views
        s.ListenerUp = np.array([[0.0, 0.0, 1.0]])
        s.ReceiverPosition = np.array([[90.0, 0.0, 0.09], [-90.0, 0.0, 0.09]])[:, :, None]
        s.ReceiverView = np.tile([[1.0, 0.0, 0.0]], (2, 1))[:, :, None]
        s.ReceiverUp = np.tile([[0.0, 0.0, 1.0]], (2, 1))[:, :, None]
        s.EmitterPosition = np.column_stack([emitter_az, np.zeros(e), np.full(e, 2.0)])[:, :, None]  # spherical
        s.EmitterView = np.tile([[1.0, 0.0, 0.0]], (e, 1))[:, :, None]
        s.EmitterUp = np.tile([[0.0, 0.0, 1.0]], (e, 1))[:, :, None]
        s.MeasurementDate = np.zeros(m)
        s.Data_Delay = np.zeros((m, 2, e))
        s.delete("ReceiverDescriptions")  # see test_listener_up_tilts_and_rolls_the_head
        s.delete("EmitterDescriptions")
        sofar.write_sofa(str(path), s)
    return expected_az, np.zeros_like(expected_az)


@pytest.mark.parametrize("conventions", ["MultiSpeakerBRIR", "SingleRoomMIMOSRIR"])
def test_multi_emitter_sets_give_one_direction_per_measurement_and_emitter(tmp_path, conventions):
    path = tmp_path / f"{conventions}.sofa"
    expected_az, expected_el = _multi_emitter_sofa(path, conventions)
    with h5py.File(path) as f:
        assert f["Data.IR"].ndim == 4
        assert f.attrs["SOFAConventions"] in (conventions, conventions.encode())

    irs = read_sofa(path)
    assert len(irs) == 2 * 3  # M * E
    assert irs.ir.shape[:2] == (6, 2)
    assert abs(irs.ir.shape[2] - HRIR_LENGTH_S * FS) <= 1  # N, not E, is the sample axis
    np.testing.assert_allclose(circular_diff_deg(irs.azimuth_deg, expected_az), 0, atol=1e-6)
    np.testing.assert_allclose(irs.elevation_deg, expected_el, atol=1e-6)
    np.testing.assert_allclose(irs.distance_m, 2.0, atol=1e-9)
    measured = np.array([itd(pair) for pair in irs.ir])
    np.testing.assert_allclose(measured, expected_itd_ms(expected_az), atol=ITD_TOLERANCE_MS)


# --------------------------------------------------------------------------- 8. selection


def test_selection_off_the_grid_needs_a_tolerance(grid_48k):
    irs, _, _, path = grid_48k
    with pytest.raises(SofaError) as excinfo:
        irs.select([2.0])
    message = str(excinfo.value)
    # The message names the nearest available directions and the file.
    assert "az 0.00" in message and "az 5.00" in message
    assert str(path) in message

    # Within a tolerance the nearest direction is taken: 2 -> 0 and 3.5 -> 5.
    np.testing.assert_array_equal(irs.select([2.0], tolerance_deg=3), irs.ir[[index_of(irs, 0.0)]])
    np.testing.assert_array_equal(irs.select([3.5], tolerance_deg=3), irs.ir[[index_of(irs, 5.0)]])
    np.testing.assert_array_equal(irs.indices([2.0, 3.5, 91.0], tolerance_deg=3),
                                  [index_of(irs, 0.0), index_of(irs, 5.0), index_of(irs, 90.0)])
    # A tolerance that is too small still fails.
    with pytest.raises(SofaError):
        irs.select([2.0], tolerance_deg=1.0)


def test_exact_selection_tolerates_float_error_and_other_angle_ranges(grid_48k):
    irs, _, _, _ = grid_48k
    assert irs.indices([359.9999999])[0] == index_of(irs, 0.0)
    assert irs.indices([90.0000001])[0] == index_of(irs, 90.0)
    assert irs.indices([-90.0])[0] == index_of(irs, 270.0)
    assert irs.indices([450.0])[0] == index_of(irs, 90.0)
    # Elevated rings are selected by elevation.
    assert irs.indices([90.0], elevation_deg=30.0)[0] == index_of(irs, 90.0, 30.0)
    assert irs.indices([45.0], elevation_deg=-30.0)[0] == index_of(irs, 45.0, -30.0)
    with pytest.raises(SofaError):
        irs.select([5.0], elevation_deg=30.0)  # the elevated rings are on a 15 deg grid


# --------------------------------------------------------------------------- 9. bad files


def _valid_sofa(path):
    return write_hrir_sofa(path, [0.0, 90.0], [0.0, 0.0], 48000)


def _text_file(path):
    path.write_text("this is not a SOFA file\n")


def _empty_file(path):
    path.write_bytes(b"")


def _truncated(path):
    data = _valid_sofa(path.with_name("whole.sofa")).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _hdf5_without_conventions(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("Data.IR", data=np.zeros((1, 2, 8)))
        f.create_dataset("Data.SamplingRate", data=[48000.0])


def _netcdf_not_sofa(path):
    _valid_sofa(path)
    with h5py.File(path, "r+") as f:
        f.attrs["Conventions"] = np.bytes_(b"CF-1.8")


def _three_receivers(path):
    s = sofar.Sofa("GeneralFIR")
    s.Data_IR = np.random.default_rng(1).standard_normal((2, 3, 64))
    s.SourcePosition = np.array([[0.0, 0.0, 1.0], [90.0, 0.0, 1.0]])
    s.ReceiverPosition = np.array([[0.0, 0.09, 0.0], [0.0, -0.09, 0.0], [0.0, 0.0, 0.1]])
    s.Data_Delay = np.zeros((1, 3))
    sofar.write_sofa(str(path), s)


def _missing_data_ir(path):
    _valid_sofa(path)
    with h5py.File(path, "r+") as f:
        del f["Data.IR"]


def _nan_in_data_ir(path):
    ir = synthetic_hrirs([0.0, 90.0], [0.0, 0.0], 48000)
    ir[1, 0, 40] = np.nan
    write_hrir_sofa(path, [0.0, 90.0], [0.0, 0.0], 48000, ir=ir)


def _transfer_functions(path):
    s = sofar.Sofa("SimpleFreeFieldHRTF")
    s.Data_Real = np.ones((1, 2, 5))
    s.Data_Imag = np.zeros((1, 2, 5))
    s.N = np.linspace(0, 20000, 5)
    sofar.write_sofa(str(path), s)


def _nonexistent(path):
    pass  # nothing written


@pytest.mark.parametrize(
    "make, reason",
    [
        (_text_file, "not a SOFA file"),
        (_empty_file, "not a SOFA file"),
        (_truncated, "not a SOFA file"),
        (_hdf5_without_conventions, "Conventions"),
        (_netcdf_not_sofa, "Conventions"),
        (_three_receivers, "3 receivers"),
        (_missing_data_ir, "Data.IR"),
        (_nan_in_data_ir, "NaN"),
        (_transfer_functions, "DataType"),
        (_nonexistent, "no such file"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_malformed_files_raise_one_sofa_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.sofa"
    make(path)
    with pytest.raises(SofaError) as excinfo:
        read_sofa(path)
    error = excinfo.value
    assert isinstance(error, ValueError)
    assert str(path) in str(error)
    assert reason in str(error)
    # One error, not a chained h5py/KeyError traceback.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


# --------------------------------------------------------------------------- 10. writing


def _sofar_accepts(path):
    """sofar reads the file (verifying it on the way) and finds no issue at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sofar warning about the file fails the test
        s = sofar.read_sofa(str(path))
        s.verify()
        assert s.verify(issue_handling="return") is None
    return s


def test_write_sofa_round_trip_simple_free_field(tmp_path, grid_48k):
    irs = grid_48k[0]
    path = write_sofa(tmp_path / "out" / "hrirs.sofa", irs, attrs={"Title": "round trip"})
    back = read_sofa(path)
    np.testing.assert_array_equal(back.ir, irs.ir)
    assert back.fs == irs.fs == FS
    np.testing.assert_allclose(circular_diff_deg(back.azimuth_deg, irs.azimuth_deg), 0, atol=1e-6)
    np.testing.assert_allclose(back.elevation_deg, irs.elevation_deg, atol=1e-6)
    np.testing.assert_allclose(back.distance_m, irs.distance_m, atol=1e-9)
    assert back.conventions == "SimpleFreeFieldHRIR"
    assert back.attrs["Title"] == "round trip"
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file

    s = _sofar_accepts(path)
    assert s.GLOBAL_SOFAConventions == "SimpleFreeFieldHRIR"
    assert s.Data_IR.shape == irs.ir.shape
    assert s.Data_SamplingRate == FS


def test_write_sofa_round_trip_general_fir_room(tmp_path, grid_48k):
    # A room measurement: cartesian source positions in room coordinates around a
    # listener at (2, 3, 1.2) who looks along +y; read back, the directions are again
    # relative to the head.
    irs = grid_48k[0]
    listener, view = np.array([2.0, 3.0, 1.2]), np.array([0.0, 1.0, 0.0])
    head_x, head_y, head_z = view, np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])  # y = z x x
    local = cartesian(irs.azimuth_deg, irs.elevation_deg, irs.distance_m)
    positions = listener + local[:, :1] * head_x + local[:, 1:2] * head_y + local[:, 2:] * head_z
    path = write_sofa(tmp_path / "room.sofa", irs, conventions="GeneralFIR", source_positions=positions,
                      listener_position=listener, listener_view=view,
                      room={"corner_a": (0.0, 0.0, 0.0), "corner_b": (8.0, 10.0, 3.5)})
    back = read_sofa(path)
    assert back.conventions == "GeneralFIR"
    np.testing.assert_array_equal(back.ir, irs.ir)
    np.testing.assert_allclose(circular_diff_deg(back.azimuth_deg, irs.azimuth_deg), 0, atol=1e-6)
    np.testing.assert_allclose(back.elevation_deg, irs.elevation_deg, atol=1e-6)
    np.testing.assert_allclose(back.distance_m, irs.distance_m, atol=1e-9)
    assert itd(back.select([90])[0]) > 0.5

    s = _sofar_accepts(path)
    assert s.GLOBAL_SOFAConventions == "GeneralFIR"
    np.testing.assert_allclose(s.SourcePosition, positions)
    np.testing.assert_allclose(np.ravel(s.ListenerPosition), listener)


# --------------------------------------------------------------------------- 11. bundled set


def test_bundled_mit_kemar_set():
    path = default_hrir_path()
    irs = read_sofa(path)
    assert len(irs) == 710
    assert irs.fs == FS
    assert irs.conventions == "SimpleFreeFieldHRIR"
    np.testing.assert_array_equal(irs.horizontal_azimuths(), np.arange(0, 360, 5))

    front, left, back, right = irs.select([0, 90, 180, 270])
    assert 0.5 < itd(left) < 0.8  # left ear leads at 90 (left)
    assert -0.8 < itd(right) < -0.5
    assert itd(right) == pytest.approx(-itd(left), abs=0.05)
    assert abs(itd(front)) < 0.05 and abs(itd(back)) < 0.05
    assert ild(left) > 5.0 and ild(right) < -5.0

    # Provenance travels with the file.
    assert "Gardner" in irs.attrs["References"]
    assert "slab" in irs.attrs["Origin"]
    _sofar_accepts(path)
