"""HRIRs at directions a set did not measure: onset-aligned barycentric interpolation.

    pairs = interpolate(irs, azimuth_deg=[12.0, 100.0], elevation_deg=[-35.0, 45.0])  # (2, 2, N)
    grid = interpolated_set(irs, az, el)            # an IRSet labelled with the requested directions

The measured directions, as unit vectors, span a convex hull whose faces are the
triangles of a triangulation of the sphere (scipy.spatial.ConvexHull; for points on a
sphere it is their spherical Delaunay triangulation). A direction u falls in the face its
ray from the centre crosses: u = a v1 + b v2 + c v3 with a, b, c >= 0, and (a, b, c) / (a + b
+ c) are its barycentric weights.

The three IRs are onset-aligned before they are combined: each ear's IR is split into its
minimum-phase version (which starts at sample 0) and a delay. The two ears' delays are set
so that their mean is the pair's onset (where the envelope below 3 kHz reaches -10 dB of
its peak, against the same point of the minimum-phase version) and their difference gives
the minimum-phase pair the measured pair's ITD (the peak of the interaural
cross-correlation below 1.5 kHz, as acoustics.itd_ms measures it); see `delays`. The
magnitude responses are averaged in dB with the weights, the result is made minimum phase,
and each ear's delay, interpolated with the same weights, is put back; so the interaural
delay is interpolated as a delay. Averaging the aligned IRs themselves (time-domain
alignment by onset) was tried first: the pinna's fine structure differs in phase between
neighbours and cancelled above 3 kHz, 4.6 dB of spectral distortion against nearest
neighbour's 1.5 dB (leave-one-out, bundled KEMAR). A direction the set measured (to 1e-3
deg) gets its measured IR unchanged.

Where the set has a gap (the bundled KEMAR has nothing below -40 deg) the face crossing it
joins the gap's rim, so directions there are extrapolated from the rim; directions farther
than `max_distance_deg` from every measured one are refused. A set whose directions all
lie in one plane (a horizontal ring) is interpolated along its ring.

Leave-one-out figures against the nearest-neighbour choice: `bast-cli irs
--interpolation-check`, docs/sphere.md (KEMAR) and docs/impulse-responses.md (measured human
heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfreqz
from scipy.spatial import ConvexHull
from scipy.spatial import QhullError

from bast.errors import SofaError
from bast.pipeline.irs.sofa import IRSet
from bast.sphere import azimuth_elevation, great_circle_deg, unit_vector, wrap_azimuth

DELAY_UPSAMPLE = 4  # interaural lags: the cross-correlation on a 4x finer grid
DELAY_LOWPASS_HZ = 1500.0  # the interaural delay from the band below 1.5 kHz, where the ITD is the cue
MAX_ITD_MS = 1.0  # and within +-1 ms (as acoustics.itd_ms)
ONSET_LOWPASS_HZ = 3000.0  # onsets: the envelope below 3 kHz reaching -10 dB of its peak
ONSET_DB = -10.0
ONSET_LEAD_MS = 1.0  # IRs are delayed by this before their envelope is taken (a minimum-phase one starts at 0)
MAX_DISTANCE_DEG = 30.0  # refuse directions farther than this from every measured one
EXACT_DEG = 1e-3  # a measured direction: its own IR
FLOOR = 1e-8  # magnitudes are floored here (-160 dB) before taking logs


def minimum_phase(magnitude: np.ndarray, nfft: int) -> np.ndarray:
    """The minimum-phase spectrum (..., nfft // 2 + 1) of magnitude responses on an rfft
    grid of `nfft` points (homomorphic: fold the real cepstrum onto positive quefrencies)."""
    cepstrum = np.fft.irfft(np.log(np.maximum(magnitude, FLOOR)), nfft, axis=-1)
    fold = np.zeros(nfft)
    fold[0] = fold[nfft // 2] = 1.0
    fold[1:nfft // 2] = 2.0
    return np.exp(np.fft.rfft(cepstrum * fold, nfft, axis=-1))


def _lowpass_power(nfft: int, fs: int, cutoff_hz: float) -> np.ndarray:
    """|H|^2 on the rfft grid of a 4th-order Butterworth low-pass: what filtering forwards
    and backwards (sosfiltfilt, as acoustics.itd_ms does) does to a spectrum."""
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    _, response = sosfreqz(butter(4, cutoff_hz, fs=fs, output="sos"), worN=f, fs=fs)
    return np.abs(response) ** 2


def _peak(cc: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """The lag (on cc's grid, signed) of the peak at `lag` refined by the parabola through
    it and its neighbours."""
    fine = cc.shape[-1]
    left = np.take_along_axis(cc, ((lag - 1) % fine)[..., None], -1)[..., 0]
    peak = np.take_along_axis(cc, lag[..., None], -1)[..., 0]
    right = np.take_along_axis(cc, ((lag + 1) % fine)[..., None], -1)[..., 0]
    curvature = left - 2 * peak + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    return np.where(lag > fine // 2, lag - fine, lag) + offset


def interaural_lags(spectra: np.ndarray, nfft: int, fs: int) -> np.ndarray:
    """How many samples (fractional) each pair's right ear lags its left, from spectra
    (M, 2, nfft // 2 + 1): the peak of their cross-correlation below DELAY_LOWPASS_HZ within
    +-MAX_ITD_MS, on a DELAY_UPSAMPLE-times finer grid refined by a parabola: the ITD as
    acoustics.itd_ms measures it (positive: the left ear leads), over the whole IR. (In
    acoustics.itd_ms's window of the direct sound instead, leave-one-out gave the same
    figures on the KEMAR, the spherical head and both human heads of
    docs/impulse-responses.md at 48 kHz, and on the spherical head with a floor reflection
    added 5 ms after the direct sound.)"""
    fine = nfft * DELAY_UPSAMPLE
    cc = np.fft.irfft(spectra[:, 1] * np.conj(spectra[:, 0]) * _lowpass_power(nfft, fs, DELAY_LOWPASS_HZ), fine, axis=-1)
    lags = np.fft.fftfreq(fine, 1.0 / fine)
    inside = np.abs(lags) <= MAX_ITD_MS * fs / 1000 * DELAY_UPSAMPLE
    return _peak(cc, np.argmax(np.where(inside, cc, -np.inf), axis=-1)) / DELAY_UPSAMPLE


def onsets(spectra: np.ndarray, nfft: int, fs: int) -> np.ndarray:
    """Each IR's onset (samples, fractional) from its spectrum (..., nfft // 2 + 1): where
    the envelope of the IR low-passed at ONSET_LOWPASS_HZ first reaches ONSET_DB of its
    peak, between samples by linear interpolation (the envelope below 3 kHz is smooth at
    the sampling rates of HRIR sets, and the onset sets only when the pair starts, not its
    ITD). The IR is delayed by ONSET_LEAD_MS first (and the onset taken back), so
    that the envelope of a minimum-phase IR, which starts at sample 0, does not wrap round."""
    f = np.fft.rfftfreq(nfft, 1.0)
    lead = ONSET_LEAD_MS * fs / 1000
    shaped = spectra * np.sqrt(_lowpass_power(nfft, fs, ONSET_LOWPASS_HZ)) * np.exp(-2j * np.pi * f * lead)
    one_sided = np.zeros(shaped.shape[:-1] + (nfft,), dtype=np.complex128)  # the analytic signal's spectrum
    one_sided[..., :shaped.shape[-1]] = 2 * shaped
    one_sided[..., 0] = shaped[..., 0]
    one_sided[..., nfft // 2] = shaped[..., -1]
    envelope = np.abs(np.fft.ifft(one_sided, axis=-1))
    level = envelope.max(axis=-1, keepdims=True) * 10 ** (ONSET_DB / 20)
    k = np.maximum(np.argmax(envelope >= level, axis=-1), 1)
    below = np.take_along_axis(envelope, (k - 1)[..., None], -1)
    above = np.take_along_axis(envelope, k[..., None], -1)
    crossing = k - 1 + ((level - below) / np.maximum(above - below, 1e-30))[..., 0]
    return crossing - lead


def delays(spectra: np.ndarray, minimum: np.ndarray, nfft: int, fs: int) -> np.ndarray:
    """Each ear's delay (M, 2) (samples, fractional) behind its minimum-phase version, from
    the spectra (M, 2, nfft // 2 + 1) of the IRs and of their minimum-phase versions. Their
    mean is the pair's onset delay (`onsets`, the mean over ears); their difference makes
    the minimum-phase pair's ITD that of the measured pair (`interaural_lags`): since
    delaying one ear shifts the interaural cross-correlation by as much, the right ear's
    delay less the left's is the measured pair's lag less the minimum-phase pair's.

    Not each ear's own cross-correlation with its minimum-phase version (which this was):
    measured IRs are not a minimum-phase filter and a delay (reflections after the direct
    sound, a low-frequency roll-off), and below 1.5 kHz that cross-correlation has peaks a
    period of its band apart whose heights differ little; on a measured human head at 48
    kHz one ear or the other took the wrong one at about one direction in ten, so the
    interpolated ITD was off by 100 us on average (docs/impulse-responses.md)."""
    common = (onsets(spectra, nfft, fs) - onsets(minimum, nfft, fs)).mean(axis=-1)
    itd = interaural_lags(spectra, nfft, fs) - interaural_lags(minimum, nfft, fs)
    return np.stack([common - itd / 2, common + itd / 2], axis=-1)


@dataclass(frozen=True)
class _Prepared:
    """What every query needs, computed once per set: unit vectors, log magnitudes, delays."""

    directions: np.ndarray  # (M, 3)
    log_magnitude: np.ndarray  # (M, 2, F), natural log, on an rfft grid of nfft points
    delays: np.ndarray  # (M, 2) samples
    ir: np.ndarray  # (M, 2, N)
    nfft: int

    @classmethod
    def of(cls, irs: IRSet) -> _Prepared:
        n = irs.ir.shape[-1]
        nfft = max(1024, 1 << int(np.ceil(np.log2(4 * n))))  # long enough for the cepstrum not to alias
        spectra = np.fft.rfft(irs.ir.astype(np.float64), nfft, axis=-1)
        magnitude = np.abs(spectra)
        return cls(irs.directions(), np.log(np.maximum(magnitude, FLOOR)),
                   delays(spectra, minimum_phase(magnitude, nfft), nfft, irs.fs), irs.ir, nfft)

    def without(self, index: int) -> _Prepared:
        keep = np.arange(len(self.directions)) != index
        return _Prepared(self.directions[keep], self.log_magnitude[keep], self.delays[keep], self.ir[keep], self.nfft)


class Interpolator:
    """HRIRs of one set at any direction. Build once, call for many directions."""

    def __init__(self, irs: IRSet, *, max_distance_deg: float = MAX_DISTANCE_DEG, _prepared: _Prepared | None = None):
        self.source = irs.source or "IR set"
        self.fs = irs.fs
        self.max_distance_deg = max_distance_deg
        self.p = _prepared or _Prepared.of(irs)
        if len(self.p.directions) < 2:
            raise SofaError(f"{self.source}: interpolation needs at least two measured directions")
        self.triangles = self._triangulate()

    def _triangulate(self) -> np.ndarray | None:
        """(T, 3) vertex indices of the faces, or None for a set in one plane (a ring)."""
        d = self.p.directions
        if len(d) >= 4 and np.linalg.matrix_rank(d - d.mean(axis=0), tol=1e-6) == 3:
            try:
                return ConvexHull(d).simplices
            except QhullError as exc:
                raise SofaError(f"{self.source}: cannot triangulate its directions ({exc})") from None
        return None

    def weights(self, azimuth_deg, elevation_deg) -> tuple[np.ndarray, np.ndarray]:
        """(Q, 3) vertex indices and (Q, 3) barycentric weights (summing to 1) of each direction."""
        u = unit_vector(np.atleast_1d(azimuth_deg), elevation_deg).reshape(-1, 3)
        nearest = np.empty(len(u), dtype=int)
        best = np.empty(len(u))
        for start in range(0, len(u), 4096):  # (4096, M) at a time, never (Q, M): 24.8 GiB for a fine grid
            cos = u[start:start + 4096] @ self.p.directions.T
            nearest[start:start + 4096] = np.argmax(cos, axis=1)
            best[start:start + 4096] = cos[np.arange(len(cos)), nearest[start:start + 4096]]
        angle = np.degrees(np.arccos(np.clip(best, -1, 1)))
        far = angle > self.max_distance_deg
        if np.any(far):
            az, el = azimuth_elevation(u[far][0])
            raise SofaError(f"{self.source}: azimuth {float(az):g}, elevation {float(el):g} deg is more than "
                            f"{self.max_distance_deg:g} deg from every measured direction; interpolation would "
                            "be a guess there")
        if self.triangles is None:
            idx, w = self._ring_weights(u)
        else:
            idx, w = self._face_weights(u)
        exact = angle <= EXACT_DEG
        idx[exact] = nearest[exact, None]
        w[exact] = (1.0, 0.0, 0.0)
        return idx, w

    def _face_weights(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        verts = self.p.directions[self.triangles]  # (T, 3 vertices, 3 coordinates)
        inverse = np.linalg.inv(np.transpose(verts, (0, 2, 1)))  # solves u = V @ w per face
        idx = np.empty((len(u), 3), dtype=int)
        w = np.empty((len(u), 3))
        for start in range(0, len(u), 256):
            q = u[start:start + 256]
            raw = np.einsum("tij,qj->qti", inverse, q)  # (Q, T, 3)
            # The face the ray crosses has no negative weight; where the hull does not hold
            # the centre, rays cross two faces and the outer one (smaller sum) is the surface.
            ok = raw.min(axis=-1) >= -1e-9
            score = np.where(ok, raw.sum(axis=-1), np.inf)
            face = np.argmin(score, axis=1)
            missing = ~ok[np.arange(len(q)), face]
            if np.any(missing):  # outside every face's cone: only for sets that cover a cap
                face[missing] = np.argmax(raw.min(axis=-1)[missing], axis=1)
            chosen = np.clip(raw[np.arange(len(q)), face], 0.0, None)
            idx[start:start + 256] = self.triangles[face]
            w[start:start + 256] = chosen / chosen.sum(axis=-1, keepdims=True)
        return idx, w

    def _ring_weights(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A set in one plane: the two ring neighbours, weighted by angle along the ring."""
        d = self.p.directions
        normal = np.linalg.svd(d - d.mean(axis=0))[2][-1]
        a = np.cross(normal, d[0])
        a /= np.linalg.norm(a)
        b = np.cross(normal, a)
        angle = lambda v: np.mod(np.arctan2(v @ a, v @ b), 2 * np.pi)  # noqa: E731
        ring = angle(d)
        order = np.argsort(ring)
        sorted_ring = ring[order]
        q = angle(u)
        hi = np.searchsorted(sorted_ring, q) % len(order)
        lo = (hi - 1) % len(order)
        span = np.mod(sorted_ring[hi] - sorted_ring[lo], 2 * np.pi)
        span = np.where(span == 0, 2 * np.pi, span)
        t = np.mod(q - sorted_ring[lo], 2 * np.pi) / span
        idx = np.stack([order[lo], order[hi], order[lo]], axis=-1)
        w = np.stack([1 - t, t, np.zeros_like(t)], axis=-1)
        return idx, w

    def __call__(self, azimuth_deg, elevation_deg=0.0) -> np.ndarray:
        """(Q, 2, N) float32 IR pairs at the requested directions (azimuths with one
        elevation, or (azimuth, elevation) pairs)."""
        idx, w = self.weights(azimuth_deg, elevation_deg)
        p = self.p
        n = p.ir.shape[-1]
        out = np.empty((len(idx), 2, n), dtype=np.float32)
        f = np.arange(p.nfft // 2 + 1) / p.nfft  # cycles per sample
        for start in range(0, len(idx), 256):
            i, wq = idx[start:start + 256], w[start:start + 256]  # (B, 3)
            magnitude = np.exp(np.einsum("bk,bkcf->bcf", wq, p.log_magnitude[i]))  # dB averaged
            delay = np.einsum("bk,bkc->bc", wq, p.delays[i])  # (B, 2): each ear's delay, interpolated
            spectrum = minimum_phase(magnitude, p.nfft) * np.exp(-2j * np.pi * delay[..., None] * f)
            out[start:start + 256] = np.fft.irfft(spectrum, p.nfft, axis=-1)[..., :n]
        exact = w[:, 0] == 1.0
        out[exact] = p.ir[idx[exact, 0]]
        return out


def interpolate(irs: IRSet, azimuth_deg, elevation_deg=0.0, *, max_distance_deg: float = MAX_DISTANCE_DEG) -> np.ndarray:
    """(Q, 2, N) float32 HRIR pairs of `irs` at the requested directions, interpolated from
    the measured ones (see the module's docstring). A pure function of its inputs."""
    return Interpolator(irs, max_distance_deg=max_distance_deg)(azimuth_deg, elevation_deg)


def interpolated_set(irs: IRSet, azimuth_deg, elevation_deg=0.0, *,
                     max_distance_deg: float = MAX_DISTANCE_DEG) -> IRSet:
    """An IRSet of `irs` interpolated at the requested directions, labelled with them
    (azimuths wrapped into [0, 360)); distance: the set's median."""
    az, el = np.broadcast_arrays(np.atleast_1d(np.asarray(azimuth_deg, dtype=float)),
                                 np.asarray(elevation_deg, dtype=float))
    pairs = interpolate(irs, az, el, max_distance_deg=max_distance_deg)
    return IRSet(pairs, irs.fs, wrap_azimuth(az), el.astype(float).copy(),
                 np.full(len(az), float(np.median(irs.distance_m))), irs.conventions,
                 irs.source, {**irs.attrs, "BastInterpolated": "onset-aligned barycentric (bast)"})


def leave_one_out(irs: IRSet, index: int, prepared: _Prepared | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Direction `index` of the set rebuilt from the others: (interpolated pair (2, N),
    nearest other direction's pair (2, N)). `prepared` (from `_Prepared.of(irs)`) saves
    recomputing the spectra for every index."""
    p = (prepared or _Prepared.of(irs)).without(index)
    az, el = irs.azimuth_deg[index], irs.elevation_deg[index]
    interp = Interpolator(irs, max_distance_deg=180.0, _prepared=p)(az, el)[0]
    nearest = np.argmin(great_circle_deg(az, el, *azimuth_elevation(p.directions)))
    return interp, p.ir[nearest]


def prepare(irs: IRSet) -> _Prepared:
    """The per-set work of interpolation, to share between many `leave_one_out` calls."""
    return _Prepared.of(irs)
