"""Read and write SOFA (AES69) impulse-response sets with h5py.

A SOFA file is netCDF4, which is HDF5 underneath, so h5py reads it without the netCDF
library. Whatever the convention, a file becomes an :class:`IRSet`: binaural impulse
responses (left ear first) with the direction of each one in the listener's head frame
(SOFA azimuth: 0 = ahead, 90 = left), resampled to the rate bast works at.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
from scipy.signal import resample_poly

from bast.conventions import FS
from bast.errors import SofaError
from bast.sphere import unit_vector


@dataclass(frozen=True)
class IRSet:
    """Binaural impulse responses and their directions.

    ir: (M, 2, N) float32, channel 0 = left ear. Directions are head-related: azimuth in
    [0, 360) counter-clockwise from straight ahead, elevation up from the horizontal plane.
    """

    ir: np.ndarray
    fs: int
    azimuth_deg: np.ndarray
    elevation_deg: np.ndarray
    distance_m: np.ndarray
    conventions: str = "SimpleFreeFieldHRIR"
    source: str = ""
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.ir.shape[0]

    def directions(self) -> np.ndarray:
        """Unit vectors (M, 3) of the directions, x ahead, y left, z up."""
        return unit_vector(self.azimuth_deg, self.elevation_deg)

    def indices(self, azimuths_deg, elevation_deg=0.0, tolerance_deg: float = 0.0) -> np.ndarray:
        """Index of the IR for each requested direction: `azimuths_deg` with `elevation_deg`
        (one elevation for all, or one per azimuth: (azimuth, elevation) pairs).

        An exact match (to 1e-3 deg) or the nearest direction within `tolerance_deg`
        (great-circle angle); otherwise a SofaError naming the nearest available ones.
        """
        azimuths, elevations = np.broadcast_arrays(np.atleast_1d(np.asarray(azimuths_deg, dtype=float)),
                                                   np.asarray(elevation_deg, dtype=float))
        want = unit_vector(azimuths, elevations)
        have = self.directions()
        # atan2(|u x v|, u . v): exact near 0 deg, where arccos of a rounded dot is not
        angles = np.degrees(np.arctan2(np.linalg.norm(np.cross(want[:, None, :], have[None, :, :]), axis=-1),
                                       want @ have.T))  # (A, M)
        best = np.argmin(angles, axis=1)
        allowed = max(tolerance_deg, 1e-3)
        for a, (az, el, i) in enumerate(zip(azimuths, elevations, best)):
            if angles[a, i] > allowed:
                near = np.argsort(angles[a])[:4]
                listed = ", ".join(
                    f"az {self.azimuth_deg[j]:.2f} el {self.elevation_deg[j]:.2f} ({angles[a, j]:.2f} deg away)"
                    for j in near
                )
                raise SofaError(
                    f"{self.source or 'IR set'}: no impulse response at azimuth {az:g} deg, "
                    f"elevation {el:g} deg within {tolerance_deg:g} deg; nearest: {listed}. "
                    "Allow a tolerance (--ir-tolerance), interpolate (--interpolate) or ask for a grid the set covers."
                )
        return best

    def select(self, azimuths_deg, elevation_deg=0.0, tolerance_deg: float = 0.0) -> np.ndarray:
        """The (A, 2, N) IR pairs for the requested directions (see `indices`)."""
        return self.ir[self.indices(azimuths_deg, elevation_deg, tolerance_deg)]

    def subset(self, index) -> IRSet:
        """The set of the IRs at `index` (an index array or a boolean mask), in that order."""
        index = np.asarray(index)
        return IRSet(self.ir[index], self.fs, self.azimuth_deg[index], self.elevation_deg[index],
                     self.distance_m[index], self.conventions, self.source, self.attrs)

    def at(self, azimuths_deg, elevation_deg=0.0, tolerance_deg: float = 0.0) -> IRSet:
        """The set's own IRs nearest the requested directions (see `indices`), labelled with
        the directions measured. For directions the set did not measure, see
        `bast.pipeline.irs.interpolate.interpolated_set`."""
        return self.subset(self.indices(azimuths_deg, elevation_deg, tolerance_deg))

    def horizontal_azimuths(self, tolerance_deg: float = 1e-3) -> np.ndarray:
        """Sorted azimuths available at elevation 0."""
        on_plane = np.abs(self.elevation_deg) <= tolerance_deg
        return np.unique(np.round(self.azimuth_deg[on_plane], 6) % 360.0)

    def elevations(self, decimals: int = 6) -> np.ndarray:
        """Sorted elevations the set measured (rounded to `decimals`)."""
        return np.unique(np.round(self.elevation_deg, decimals))


def resample_ir(ir: np.ndarray, fs_in: float, fs_out: int = FS) -> np.ndarray:
    """Resample impulse responses along the last axis, keeping the filter's gain.

    A polyphase resampler keeps the amplitude of a signal; an impulse response's gain is
    its sum, so it is scaled by fs_in / fs_out to keep the same transfer function.
    """
    if abs(fs_in - fs_out) < 1e-6:
        return ir.astype(np.float32, copy=False)
    ratio = Fraction(fs_out / fs_in).limit_denominator(10000)
    if abs(float(ratio) - fs_out / fs_in) > 1e-9:
        raise SofaError(f"cannot resample from {fs_in} Hz to {fs_out} Hz with a rational ratio")
    out = resample_poly(ir.astype(np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return (out * (fs_in / fs_out)).astype(np.float32)


# --------------------------------------------------------------------------- reading


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO" and value.size:
            return _text(value.reshape(-1)[0])
        if value.size == 1:
            return str(value.reshape(-1)[0])
    return str(value)


def _attr(obj, name: str, default: str = "") -> str:
    return _text(obj.attrs[name]) if name in obj.attrs else default


def _array(f: h5py.File, name: str, default=None) -> np.ndarray | None:
    if name not in f:
        return default
    return np.asarray(f[name][()], dtype=float)


def _positions(f: h5py.File, name: str) -> np.ndarray | None:
    """A position variable as cartesian metres, shape (K, 3) (K = 1, M or E)."""
    if name not in f:
        return None
    dset = f[name]
    values = np.asarray(dset[()], dtype=float)
    if values.ndim == 3:  # (R or E, C, I or M): used for emitters; take the first I/M
        values = values[..., 0]
    values = values.reshape(-1, 3)
    kind = _attr(dset, "Type", "cartesian").lower()
    units = _attr(dset, "Units", "").lower()
    if kind.startswith("spherical"):
        az, el, r = values[:, 0], values[:, 1], values[:, 2]
        if "rad" in units:
            az, el = np.degrees(az), np.degrees(el)
        return unit_vector(az, el) * r[:, None]
    if kind.startswith("cartesian"):
        return values
    raise SofaError(f"{name} has position type {kind!r}; bast reads cartesian or spherical")


def _head_frame(view: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rotation matrices (K, 3, 3) whose rows are the head's x (ahead), y (left), z (up)."""
    x = view / np.linalg.norm(view, axis=-1, keepdims=True)
    up = up - np.sum(up * x, axis=-1, keepdims=True) * x
    z = up / np.linalg.norm(up, axis=-1, keepdims=True)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-2)


# What a set of binaural FIRs may be, beyond any real measurement's: sampled from 8 kHz
# (telephone band) to 768 kHz, at most 20 s long (a cathedral's tail), its loudest tap
# between -100 and +60 dB re 1 (HRIR and BRIR sets peak at 0.1-10; MIT KEMAR at 1.7).
MIN_FS, MAX_FS = 8000.0, 768000.0
MAX_IR_SECONDS = 20.0
MIN_PEAK, MAX_PEAK = 1e-5, 1e3


def check_levels(ir: np.ndarray, where: str) -> None:
    """Refuse a set (..., 2, N) that is silent, has a silent direction (both ears all
    zero) or is scaled absurdly: rendering through it would make silent or overflowing
    clips that still look like data."""
    peak = float(np.max(np.abs(ir)))
    if peak == 0.0:
        raise SofaError(f"{where}: every impulse response is zero (a silent set)")
    if not MIN_PEAK <= peak <= MAX_PEAK:
        raise SofaError(f"{where}: loudest tap {peak:.3g}; impulse responses peak between {MIN_PEAK:g} and "
                        f"{MAX_PEAK:g} (HRIR and BRIR sets at 0.1-10): the set is scaled wrongly")
    per_direction = np.abs(ir).max(axis=(1, -1)) if ir.ndim == 4 else np.abs(ir).max(axis=(-2, -1))
    silent = np.flatnonzero(per_direction.reshape(-1) == 0.0)
    if silent.size:
        raise SofaError(f"{where}: {silent.size} direction(s) with both ears all zero (first: measurement "
                        f"{silent[0]}); every direction needs an impulse response")


def read_sofa(path, fs: int = FS) -> IRSet:
    """Load a SOFA file of binaural FIRs as an IRSet at `fs` (16 kHz by default).

    Reads SimpleFreeFieldHRIR, GeneralFIR and the room conventions (SingleRoomSRIR,
    SingleRoomMIMOSRIR, MultiSpeakerBRIR, ...). Directions come from SourcePosition (plus
    EmitterPosition where there are several emitters) relative to ListenerPosition, in the
    frame of ListenerView/ListenerUp, so sets that turn the head instead of moving the
    source work too. Data.Delay is applied. Any failure is a SofaError naming the file.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the open
        raise SofaError(f"{path}: not a regular file")
    try:
        with h5py.File(path, "r") as f:
            return _read(f, path, fs)
    except SofaError:
        raise
    except FileNotFoundError:
        raise SofaError(f"{path}: no such file") from None
    except OSError as exc:
        raise SofaError(f"{path}: not a SOFA file (cannot open as HDF5/netCDF4: {exc})") from None
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise SofaError(f"{path}: malformed SOFA file ({type(exc).__name__}: {exc})") from None


def _read(f: h5py.File, path: Path, fs_out: int) -> IRSet:
    where = str(path)
    conventions = _check_header(f, where)
    ir = _ir_array(f, where)  # (M, R, E, N)
    m, r, e, n = ir.shape
    fs_in = _sampling_rate(f, where, n)
    if not np.all(np.isfinite(ir)):
        raise SofaError(f"{where}: Data.IR holds NaN or Inf values")
    check_levels(ir, where)

    ir = _apply_delay(ir, _array(f, "Data.Delay"), where)
    ir = _left_first(ir, f)
    az, el, dist = _directions(f, where, m, e)

    ir = ir.transpose(0, 2, 1, 3).reshape(m * e, 2, ir.shape[-1])  # (M*E, 2, N + delay)
    ir = resample_ir(ir, fs_in, fs_out)
    attrs = {k: _text(v) for k, v in f.attrs.items()}
    attrs["OriginalSamplingRate"] = f"{fs_in:g}"
    return IRSet(
        ir=ir,
        fs=fs_out,
        azimuth_deg=az,
        elevation_deg=el,
        distance_m=dist,
        conventions=conventions,
        source=where,
        attrs=attrs,
    )


def _check_header(f: h5py.File, where: str) -> str:
    """The file's SOFAConventions, once it is a SOFA file of impulse responses."""
    if _attr(f, "Conventions") != "SOFA":
        raise SofaError(f"{where}: not a SOFA file (global attribute Conventions is not 'SOFA')")
    conventions = _attr(f, "SOFAConventions")
    if _attr(f, "DataType", "FIR").upper() not in ("FIR", "FIR-E", "FIRE"):
        raise SofaError(
            f"{where}: DataType {_attr(f, 'DataType')!r}; bast needs impulse responses (FIR)"
        )
    if "Data.IR" not in f:
        raise SofaError(f"{where}: no Data.IR variable ({conventions or 'unknown conventions'})")
    return conventions


def _ir_array(f: h5py.File, where: str) -> np.ndarray:
    """Data.IR as (M, R=2, E, N) float64, whatever the layout it is stored in."""
    ir = np.asarray(f["Data.IR"][()], dtype=np.float64)
    if ir.ndim == 4 and _attr(f, "DataType", "FIR").upper() == "FIR-E":
        ir = ir.transpose(0, 1, 3, 2)  # SOFA 2 FIR-E stores (M, R, N, E); FIRE stores (M, R, E, N)
    if ir.ndim == 3:
        ir = ir[:, :, None, :]  # (M, R, E=1, N)
    if ir.ndim != 4:
        raise SofaError(f"{where}: Data.IR has shape {ir.shape}; expected (M, R, N) or (M, R, E, N)")
    m, r, e, n = ir.shape
    if r != 2:
        raise SofaError(f"{where}: {r} receivers; binaural sets have 2 (left and right ear)")
    if n == 0 or m == 0:
        raise SofaError(f"{where}: Data.IR is empty (shape {ir.shape})")
    return ir


def _sampling_rate(f: h5py.File, where: str, n: int) -> float:
    """Data.SamplingRate in Hz: one, in bast's range, and IRs of `n` samples not too long at it."""
    rate = _array(f, "Data.SamplingRate")
    if rate is None or rate.size == 0:
        raise SofaError(f"{where}: no Data.SamplingRate")
    if np.ptp(rate) > 0:
        raise SofaError(f"{where}: the sampling rate varies between measurements")
    fs_in = float(rate.reshape(-1)[0])
    if not np.isfinite(fs_in) or fs_in <= 0:
        raise SofaError(f"{where}: sampling rate {fs_in} is not positive")
    if not MIN_FS <= fs_in <= MAX_FS:
        raise SofaError(f"{where}: sampling rate {fs_in:g} Hz; bast reads sets sampled from {MIN_FS:g} to "
                        f"{MAX_FS:g} Hz (is Data.SamplingRate in Hz?)")
    if n / fs_in > MAX_IR_SECONDS:
        raise SofaError(f"{where}: impulse responses {n / fs_in:g} s long; at most {MAX_IR_SECONDS:g} s")
    return fs_in


def _directions(f: h5py.File, where: str, m: int, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(azimuth_deg, elevation_deg, distance_m), each (M*E,): source (+ emitter) relative to
    the listener, in the listener's frame."""
    src = _positions(f, "SourcePosition")
    if src is None:
        raise SofaError(f"{where}: no SourcePosition")
    emit = _positions(f, "EmitterPosition")
    lis = _positions(f, "ListenerPosition")
    lis = np.zeros((1, 3)) if lis is None else lis
    view = _positions(f, "ListenerView")
    view = np.array([[1.0, 0.0, 0.0]]) if view is None else view
    up = _array(f, "ListenerUp")
    up = np.array([[0.0, 0.0, 1.0]]) if up is None else up.reshape(-1, 3)

    def per_m(a: np.ndarray, name: str) -> np.ndarray:
        if a.shape[0] not in (1, m):
            raise SofaError(f"{where}: {name} has {a.shape[0]} rows for {m} measurements")
        return np.broadcast_to(a, (m, 3))

    src, lis, view, up = (per_m(a, k) for a, k in
                          ((src, "SourcePosition"), (lis, "ListenerPosition"),
                           (view, "ListenerView"), (up, "ListenerUp")))
    if e > 1:
        if emit is None or emit.shape[0] != e:
            raise SofaError(f"{where}: {e} emitters but EmitterPosition does not list them")
        pos = src[:, None, :] + emit[None, :, :]  # (M, E, 3); emitters offset from the source
    else:
        pos = src[:, None, :]
    rel = pos - lis[:, None, :]
    local = np.einsum("mij,mej->mei", _head_frame(view, up), rel).reshape(-1, 3)
    dist = np.linalg.norm(local, axis=-1)
    if np.any(dist <= 0):
        raise SofaError(f"{where}: a source coincides with the listener; its direction is undefined")
    # Rounded to 1e-6 deg so that 0 deg does not come back as 359.99999999.
    az = np.round(np.degrees(np.arctan2(local[:, 1], local[:, 0])), 6) % 360.0
    el = np.degrees(np.arcsin(np.clip(local[:, 2] / dist, -1, 1)))
    return az, el, dist


def _apply_delay(ir: np.ndarray, delay: np.ndarray | None, where: str) -> np.ndarray:
    """Prepend Data.Delay (samples; shape (I or M, R) or (I or M, R, E)) to each IR."""
    if delay is None or not np.any(delay):
        return ir
    m, r, e, n = ir.shape
    d = delay.reshape(delay.shape[0], r, -1) if delay.ndim >= 2 else delay.reshape(1, -1, 1)
    try:
        d = np.broadcast_to(d, (m, r, e))
    except ValueError:
        raise SofaError(f"{where}: Data.Delay shape {delay.shape} does not fit Data.IR {ir.shape}") from None
    if np.any(d < 0):
        raise SofaError(f"{where}: negative Data.Delay")
    # Delays in SOFA are in samples; fractional ones are rounded (a half-sample error at
    # 44.1 kHz is 11 us, well under the 10 us/deg ITD resolution that matters here).
    d = np.rint(d).astype(int)
    out = np.zeros((m, r, e, n + d.max()), dtype=ir.dtype)
    for idx in np.ndindex(m, r, e):
        k = d[idx]
        out[idx][k:k + n] = ir[idx]
    return out


def _left_first(ir: np.ndarray, f: h5py.File) -> np.ndarray:
    """Swap receivers when ReceiverPosition puts the left ear (+y) second."""
    if "ReceiverPosition" not in f:
        return ir
    try:
        rp = _positions(f, "ReceiverPosition")
    except SofaError:
        return ir
    if rp is not None and rp.shape[0] >= 2 and rp[0, 1] < rp[1, 1]:
        return ir[:, ::-1]
    return ir


# --------------------------------------------------------------------------- writing


def write_sofa(
    path,
    irs: IRSet,
    *,
    conventions: str = "SimpleFreeFieldHRIR",
    attrs: dict | None = None,
    source_positions: np.ndarray | None = None,
    listener_position=(0.0, 0.0, 0.0),
    listener_view=(1.0, 0.0, 0.0),
    room: dict | None = None,
) -> Path:
    """Write an IRSet as a SOFA 2.1 file (netCDF4-compatible HDF5), atomically.

    By default the source positions are spherical (azimuth, elevation, distance) around a
    listener at the origin looking along +x, as SimpleFreeFieldHRIR wants. For a room
    (conventions="GeneralFIR") pass cartesian `source_positions` (M, 3) in room
    coordinates, the listener's position and view, and `room` = {"corner_a", "corner_b"}
    (the shoebox's opposite corners).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    m, r, n = irs.ir.shape
    glob = _global_attributes(conventions, attrs, room)
    try:
        with h5py.File(tmp, "w", libver="earliest") as f:
            for k, v in glob.items():
                f.attrs[k] = np.bytes_(v.encode("utf-8"))
            var = _variable_writer(f, {"M": m, "R": r, "N": n, "E": 1, "I": 1, "C": 3})
            if source_positions is None:
                sp = np.stack([irs.azimuth_deg, irs.elevation_deg, irs.distance_m], axis=-1)
                var("SourcePosition", sp, "MC", Type="spherical", Units="degree, degree, metre")
            else:
                var("SourcePosition", source_positions, "MC", Type="cartesian", Units="metre")
            var("ListenerPosition", np.reshape(listener_position, (1, 3)), "IC", Type="cartesian", Units="metre")
            var("ListenerView", np.reshape(listener_view, (1, 3)), "IC", Type="cartesian", Units="metre")
            var("ListenerUp", [[0.0, 0.0, 1.0]], "IC")
            var("ReceiverPosition", np.array([[0, 0.09, 0], [0, -0.09, 0]], float)[:, :, None], "RCI",
                Type="cartesian", Units="metre")
            var("EmitterPosition", np.zeros((1, 3, 1)), "ECI", Type="cartesian", Units="metre")
            if conventions == "SimpleFreeFieldHRIR":
                var("SourceUp", [[0.0, 0.0, 1.0]], "IC")
                var("SourceView", [[1.0, 0.0, 0.0]], "IC", Type="cartesian", Units="metre")
            if room is not None:
                var("RoomCornerA", np.reshape(room["corner_a"], (1, 3)), "IC", Type="cartesian", Units="metre")
                var("RoomCornerB", np.reshape(room["corner_b"], (1, 3)), "IC", Type="cartesian", Units="metre")
            var("Data.IR", irs.ir, "MRN", dtype=np.float32)  # bast's IRs are float32 anyway
            var("Data.SamplingRate", [float(irs.fs)], "I", Units="hertz")
            var("Data.Delay", np.zeros((1, r)), "IR")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _global_attributes(conventions: str, attrs: dict | None, room: dict | None) -> dict[str, str]:
    """The SOFA 2.1 global attributes the conventions require, then the caller's `attrs`."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    from bast import __version__

    glob = {
        "Conventions": "SOFA",
        "Version": "2.1",
        "SOFAConventions": conventions,
        "SOFAConventionsVersion": "1.0",
        "APIName": "bast",
        "APIVersion": __version__,
        "AuthorContact": "",
        "Organization": "",
        "License": "No license provided, ask the author for permission",
        "DataType": "FIR",
        "RoomType": "free field" if room is None else "shoebox",
        "Title": "",
        "DateCreated": now,
        "DateModified": now,
        "Comment": "",
        "History": "",
        "References": "",
        "Origin": "",
    }
    if conventions == "SimpleFreeFieldHRIR":
        glob.update({"DatabaseName": "", "ListenerShortName": ""})
    glob.update({k: str(v) for k, v in (attrs or {}).items()})
    return glob


def _variable_writer(f: h5py.File, dims: dict[str, int]) -> Callable[..., h5py.Dataset]:
    """Write the netCDF dimensions `dims` (name -> size) as dimension scales; return
    var(name, data, dim_names, dtype=float64, **attributes), which writes a variable over
    them (one dimension letter per axis)."""
    scales = {}
    for name, size in dims.items():
        ds = f.create_dataset(name, data=np.arange(size, dtype=np.float64))
        ds.make_scale(name)
        ds.attrs["NAME"] = np.bytes_(b"This is a netCDF dimension but not a netCDF variable.%10d" % size)
        scales[name] = ds

    def var(name, data, dim_names, dtype=np.float64, **attributes):
        d = f.create_dataset(name, data=np.asarray(data, dtype=dtype))
        for axis, dn in enumerate(dim_names):
            d.dims[axis].attach_scale(scales[dn])
        for k, v in attributes.items():
            d.attrs[k] = np.bytes_(v.encode())
        return d

    return var
