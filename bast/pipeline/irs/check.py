"""Measure an HRIR or BRIR set and draw it: the work of `bast-cli irs`, which prints
what these functions return.

    m = check_environment(IRSources(), "hall", azimuths, out=Path("bast-irs"))    # ITD, ILD, RT60, DRR, IACC
    rooms = check_generated_rooms(draw_rooms(3, seed=0), hrir, azimuths, out=...)  # + physics checks
    loo = interpolation_check(load_hrirs())                                         # interpolation vs nearest

Figures are checked against physics where there is a prediction (RT60 target, diffuse-field
DRR, the head's anechoic ITD/ILD): docs/impulse-responses.md, docs/transfer-study.md;
interpolation's leave-one-out: docs/sphere.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bast.errors import DataError
from bast.fileio import atomic_path, write_json
from bast.pipeline.irs import acoustics
from bast.pipeline.irs.rooms import room_record
from bast.pipeline.irs.sofa import IRSet

CARDINAL = (0.0, 90.0, 180.0, 270.0)


def is_reverberant(irs: IRSet) -> bool:
    """A set with energy well after its direct sound (more than 5% past 50 ms) is a room."""
    cut = int(0.05 * irs.fs)
    if irs.ir.shape[-1] <= cut:
        return False
    e = np.sum(irs.ir.astype(float) ** 2, axis=-1)
    late = np.sum(irs.ir[..., cut:].astype(float) ** 2, axis=-1)
    return bool(np.median(late / np.maximum(e, 1e-30)) > 0.05)


def measure(irs: IRSet, expected_drr_db: float | None = None) -> dict:
    """The figures of a set on its horizontal plane: ITD/ILD per azimuth and, for a room,
    RT60 per octave (T20), DRR and the late tail's interaural coherence per octave, each
    averaged over azimuths (and ears)."""
    fs = irs.fs
    az = irs.horizontal_azimuths()
    if az.size == 0:
        raise DataError(f"{irs.source}: no impulse responses at elevation 0")
    pairs = irs.select(az)
    out: dict = {
        "source": irs.source,
        "conventions": irs.conventions,
        "fs": fs,
        "directions": len(irs),
        "taps": int(irs.ir.shape[-1]),
        "horizontal_azimuths": az.tolist(),
        "itd_ms": [acoustics.itd_ms(p, fs) for p in pairs],
        "ild_db": [acoustics.ild_db(p, fs) for p in pairs],
        "reverberant": is_reverberant(irs),
    }
    if out["reverberant"]:
        bands = acoustics.OCTAVES_HZ
        rt = np.array([[acoustics.rt60(p[c], fs)[fc] for fc in bands] for p in pairs for c in (0, 1)])
        coh = np.array([[acoustics.interaural_coherence(p, fs, fc) for fc in bands] for p in pairs])
        out.update(
            rt60_s={str(int(fc)): float(np.nanmean(rt[:, i])) for i, fc in enumerate(bands)},
            drr_db=acoustics.drr_db(pairs, fs),
            coherence={str(int(fc)): float(np.nanmean(coh[:, i])) for i, fc in enumerate(bands)},
        )
        if expected_drr_db is not None:
            out["drr_predicted_db"] = expected_drr_db
    return out


def cardinal_rows(m: dict) -> list[tuple[float, float, float]]:
    """(azimuth, ITD ms, ILD dB) at 0, 90, 180 and 270 deg where the set has them."""
    az = np.asarray(m["horizontal_azimuths"])
    rows = []
    for a in CARDINAL:
        hit = np.flatnonzero(np.isclose(az, a, atol=1e-3))
        if hit.size:
            rows.append((a, m["itd_ms"][hit[0]], m["ild_db"][hit[0]]))
    return rows


def plot(irs: IRSet, m: dict, path: Path, title: str) -> Path:
    """A 2 x 2 PNG: the IR pair at 90 deg, ITD/ILD against azimuth, and either the
    magnitude responses (anechoic) or the energy decay and interaural coherence (room)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = irs.fs
    az = np.asarray(m["horizontal_azimuths"])
    probe = float(az[np.argmin(np.abs(((az - 90.0) + 180) % 360 - 180))])
    pair = irs.select([probe])[0].astype(float)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    fig.suptitle(f"{title}\nazimuth: 0 deg ahead, 90 deg left (SOFA convention); channel L = left ear")
    _plot_pair(axes[0, 0], pair, fs, probe, m["reverberant"])
    _plot_cues(axes[0, 1], az, m)
    if not m["reverberant"]:
        _plot_spectra(axes[1, 0], pair, fs, probe)
        axes[1, 1].axis("off")
        axes[1, 1].text(0.0, 0.5, "Anechoic set: no reverberation to measure.\n"
                        f"{m['directions']} directions, {m['taps']} taps at {fs} Hz.", fontsize=11)
    else:
        _plot_decay(axes[1, 0], pair, fs, probe, m)
        _plot_coherence(axes[1, 1], m)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _plot_pair(ax, pair: np.ndarray, fs: int, probe: float, reverberant: bool) -> None:
    """The IR pair's first 12 ms (80 ms in a room)."""
    span = int(0.012 * fs) if not reverberant else int(0.08 * fs)
    t = np.arange(min(span, pair.shape[-1])) / fs * 1000
    ax.plot(t, pair[0, : t.size], label="left ear", lw=1)
    ax.plot(t, pair[1, : t.size], label="right ear", lw=1, alpha=0.8)
    ax.set(title=f"Impulse responses at azimuth {probe:g} deg", xlabel="time (ms)", ylabel="amplitude")
    ax.legend()


def _plot_cues(ax, az: np.ndarray, m: dict) -> None:
    """The direct sound's ITD (left axis) and ILD (right axis) against azimuth."""
    ax.plot(az, m["itd_ms"], "o-", ms=3, color="C0")
    ax.set(title="Direct sound: ITD and ILD", xlabel="azimuth (deg)", ylabel="ITD (ms), + = left ear leads")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(np.arange(0, 361, 45))
    ax2 = ax.twinx()
    ax2.plot(az, m["ild_db"], "s-", ms=3, color="C3")
    ax2.set_ylabel("ILD (dB), + = left ear louder", color="C3")


def _plot_spectra(ax, pair: np.ndarray, fs: int, probe: float) -> None:
    """Both ears' magnitude responses (1024-point FFT), on a log frequency axis."""
    nfft = 1024
    f = np.fft.rfftfreq(nfft, 1 / fs)
    for c, name in ((0, "left ear"), (1, "right ear")):
        mag = 20 * np.log10(np.abs(np.fft.rfft(pair[c], nfft)) + 1e-12)
        ax.semilogx(f[1:], mag[1:], label=name)
    ax.set(title=f"Magnitude responses at azimuth {probe:g} deg", xlabel="frequency (Hz)", ylabel="dB")
    ax.legend()


def _plot_decay(ax, pair: np.ndarray, fs: int, probe: float, m: dict) -> None:
    """The left ear's Schroeder decay per octave band, with its T20."""
    for fc in acoustics.OCTAVES_HZ:
        edc = acoustics.schroeder_db(acoustics.octave_filter(pair[0], fc, fs))
        ax.plot(np.arange(edc.size) / fs, edc, label=f"{int(fc)} Hz: T20 {m['rt60_s'][str(int(fc))]:.2f} s", lw=1)
    ax.set(title=f"Energy decay (Schroeder), left ear, azimuth {probe:g} deg", xlabel="time (s)",
           ylabel="level (dB)", ylim=(-70, 2))
    ax.legend(fontsize=8)


def _plot_coherence(ax, m: dict) -> None:
    """The late tail's IACC per octave band, and the DRR (with its diffuse-field prediction)."""
    labels = list(m["coherence"].keys())
    ax.bar(labels, [m["coherence"][k] for k in labels], color="C2")
    ax.set(title="Late tail (after 80 ms): interaural coherence (IACC)", xlabel="octave band (Hz)",
           ylabel="IACC, mean over azimuths", ylim=(0, 1))
    drr = f"DRR {m['drr_db']:.1f} dB"
    if "drr_predicted_db" in m:
        drr += f" (diffuse-field theory {m['drr_predicted_db']:.1f} dB)"
    ax.text(0.98, 0.95, drr, transform=ax.transAxes, ha="right", va="top")


# Limits a simulated room's bank must meet (`bast-cli irs --rooms N`); docs/transfer-study.md
# gives the reasons and the figures measured on generated rooms.
ROOM_LIMITS = {
    "rt60_rel": 0.15,  # mean T20 at 500 Hz and 1 kHz within 15% of the room's target
    "itd_ms": 0.02,  # direct sound's ITD per azimuth within 0.02 ms of the head's anechoic ITD
    "ild_db": 1.5,  # direct sound's ILD per azimuth within 1.5 dB of the anechoic ILD
    "iacc_low": 0.6,  # late tail's IACC at 125 Hz (mean over azimuths) at least this
    "iacc_high": 0.35,  # and at 2 and 4 kHz at most this
    "drr_db": 6.0,  # DRR within 6 dB of diffuse-field theory (walls of unequal absorption are not diffuse)
}


def check_room(m: dict, anechoic: dict, rt60_target_s: float, limits: dict = ROOM_LIMITS) -> list[dict]:
    """The physics checks of a simulated room's measurement `m` (from `measure`) against its
    RT60 target and the head's anechoic measurement: one row per check, with `ok`."""
    rows = []

    def add(name, value, target, ok):
        rows.append({"check": name, "value": value, "target": target, "ok": bool(ok)})

    rt = float(np.mean([m["rt60_s"]["500"], m["rt60_s"]["1000"]]))
    add("RT60 (T20, 500 Hz-1 kHz), s", round(rt, 3), f"{rt60_target_s:g} +-{limits['rt60_rel']:.0%}",
        abs(rt / rt60_target_s - 1) <= limits["rt60_rel"])
    ref = dict(zip(np.round(anechoic["horizontal_azimuths"], 3), zip(anechoic["itd_ms"], anechoic["ild_db"])))
    d_itd = [abs(i - ref[a][0]) for a, i in zip(np.round(m["horizontal_azimuths"], 3), m["itd_ms"]) if a in ref]
    d_ild = [abs(i - ref[a][1]) for a, i in zip(np.round(m["horizontal_azimuths"], 3), m["ild_db"]) if a in ref]
    # No azimuth in common with the anechoic set: nothing to compare, and the check fails.
    add("direct ITD vs anechoic, largest difference, ms", round(max(d_itd), 3) if d_itd else "no common azimuths",
        f"<= {limits['itd_ms']}", bool(d_itd) and max(d_itd) <= limits["itd_ms"])
    add("direct ILD vs anechoic, largest difference, dB", round(max(d_ild), 2) if d_ild else "no common azimuths",
        f"<= {limits['ild_db']}", bool(d_ild) and max(d_ild) <= limits["ild_db"])
    add("tail IACC 125 Hz", round(m["coherence"]["125"], 3), f">= {limits['iacc_low']}",
        m["coherence"]["125"] >= limits["iacc_low"])
    high = max(m["coherence"]["2000"], m["coherence"]["4000"])
    add("tail IACC 2-4 kHz", round(high, 3), f"<= {limits['iacc_high']}", high <= limits["iacc_high"])
    if "drr_predicted_db" in m:
        add("DRR vs diffuse-field theory, dB", round(m["drr_db"] - m["drr_predicted_db"], 2),
            f"+-{limits['drr_db']:g}", abs(m["drr_db"] - m["drr_predicted_db"]) <= limits["drr_db"])
    return rows


# --------------------------------------------------------------------------- what `bast-cli irs` runs


def check_environment(sources, env: str, azimuths_deg, elevations_deg=None, *, out: Path,
                      interpolate: bool = False) -> dict:
    """Load (or build) the IR set of `env` from `sources` (an irs.IRSources), measure it and
    draw it to OUT/irs-<env>.png; the measurement, with `png`. For the simulated hall,
    its diffuse-field DRR prediction is measured against."""
    irset = sources.irset(env, azimuths_deg, elevations_deg, interpolate)
    simulated = env == "hall" and sources.brir is None
    spec = sources.hall
    expected = acoustics.predicted_drr_db(spec.volume_m3, spec.rt60_s, spec.distance_m) if simulated else None
    m = measure(irset, expected_drr_db=expected)
    m["png"] = str(plot(irset, m, Path(out) / f"irs-{env}.png", title=f"{env}: {Path(irset.source).name}"))
    if simulated:
        m["room"] = room_record(spec)
    return m


def check_generated_rooms(rooms, hrir: str, azimuths_deg, elevations_deg=None, *, out: Path, tolerance_deg: float = 0.0,
                          seed: int = 0, interpolate: bool = False, client=None) -> dict:
    """Build each generated room (rooms.Room) through the head `hrir` (a SOFA path), in
    parallel on `client`, measure it, check it against its RT60 target, diffuse-field
    theory and the head's anechoic ITD/ILD (`check_room`) and draw it: room name ->
    measurement, with `room`, `checks` and `png`."""
    from bast.pipeline.irs.sources import load_hrirs
    from bast.pipeline.irs.rooms import BankTask, build_banks

    az = tuple(float(a) for a in np.atleast_1d(azimuths_deg))
    el = () if elevations_deg is None else tuple(np.broadcast_to(elevations_deg, (len(az),)).tolist())
    anechoic = measure(load_hrirs(hrir))
    specs = [r.spec.fitted(el) if el else r.spec for r in rooms]
    banks = build_banks([BankTask(spec, hrir, az, tolerance_deg, el, interpolate) for spec in specs], client)
    results = {}
    for room, spec, bank in zip(rooms, specs, banks):
        m = measure(bank, acoustics.predicted_drr_db(spec.volume_m3, spec.rt60_s, spec.distance_m))
        m["room"] = room_record(spec)
        m["checks"] = check_room(m, anechoic, spec.rt60_s)
        m["png"] = str(plot(bank, m, Path(out) / f"irs-{room.name}.png", title=f"{room.name} (generated, seed {seed})"))
        results[room.name] = m
    return results


def write_results(results: dict, out: Path) -> Path:
    """OUT/irs.json: every measurement `bast-cli irs` made."""
    path = Path(out) / "irs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results)
    return path


# --------------------------------------------------------------------------- interpolation, leave-one-out

SD_BAND_HZ = (200.0, 7500.0)  # spectral distortion over the band a 16 kHz set holds, without DC and Nyquist


def spectral_distortion_db(reference: np.ndarray, estimate: np.ndarray, fs: int, band_hz=SD_BAND_HZ,
                           nfft: int = 512) -> float:
    """Spectral distortion (dB): the RMS over frequency bins in `band_hz` (and over ears)
    of the difference of the two magnitude responses in dB."""
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    keep = (f >= band_hz[0]) & (f <= band_hz[1])
    ref = np.abs(np.fft.rfft(np.asarray(reference, dtype=float), nfft, axis=-1))[..., keep]
    est = np.abs(np.fft.rfft(np.asarray(estimate, dtype=float), nfft, axis=-1))[..., keep]
    diff = 20 * np.log10(np.maximum(ref, 1e-12) / np.maximum(est, 1e-12))
    return float(np.sqrt(np.mean(diff**2)))


def interpolation_check(irs: IRSet, on_step=None, only=None) -> dict:
    """Leave-one-out on the set: each measured direction (or those indexed by `only`) is
    dropped and rebuilt from all the others, by interpolation (bast.pipeline.irs.interpolate)
    and by the nearest remaining direction. Per direction, spectral distortion (dB) and the
    error of the ITD (acoustics.itd_ms on a 32x finer grid, in us) against the measured
    IR; summaries overall and per elevation. `on_step(done, total)` reports progress."""
    from bast.pipeline.irs import interpolate

    fs = irs.fs
    prepared = interpolate.prepare(irs)
    itd_us = lambda pair: acoustics.itd_ms(pair, fs, upsample=32) * 1000.0  # noqa: E731
    rows = []
    which = range(len(irs)) if only is None else [int(i) for i in only]
    for k, i in enumerate(which):
        interp, nearest = interpolate.leave_one_out(irs, i, prepared)
        ref = irs.ir[i]
        itd = itd_us(ref)
        rows.append({"azimuth_deg": float(irs.azimuth_deg[i]), "elevation_deg": float(irs.elevation_deg[i]),
                     "sd_db": {"interpolated": spectral_distortion_db(ref, interp, fs),
                               "nearest": spectral_distortion_db(ref, nearest, fs)},
                     "itd_error_us": {"interpolated": abs(itd_us(interp) - itd), "nearest": abs(itd_us(nearest) - itd)}})
        if on_step:
            on_step(k + 1, len(which))

    def summary(subset: list[dict]) -> dict:
        out = {"directions": len(subset)}
        for metric in ("sd_db", "itd_error_us"):
            for method in ("interpolated", "nearest"):
                v = np.array([r[metric][method] for r in subset])
                out[f"{metric}_{method}"] = {"mean": float(v.mean()), "median": float(np.median(v)),
                                             "p95": float(np.percentile(v, 95))}
        return out

    elevations = np.round([r["elevation_deg"] for r in rows], 3)
    return {"source": irs.source, "fs": fs, "directions": len(rows), "sd_band_hz": list(SD_BAND_HZ),
            "overall": summary(rows),
            "by_elevation": {f"{e:g}": summary([r for r, x in zip(rows, elevations) if x == e])
                             for e in np.unique(elevations)},
            "rows": rows}
