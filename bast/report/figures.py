"""Figures for `bast-cli report`: each function draws one PNG, saves it and returns its path.

Drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so
nothing depends on (or changes) the global backend and no figure is left open. Each figure
carries a title, axis labels with units, a legend where there is more than one series, and
the azimuth convention, so it reads without the paper.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bast.conventions import FS
from bast.fileio import atomic_path
from bast.model.targets import metrics as ev

CONVENTION = "SOFA azimuth: 0° ahead, 90° left, 180° behind, 270° right"
DPI = 130
NPERSEG = 256
HOP = 128  # samples: 8 ms per frame
ENV_COLORS = {"anechoic": "#1f77b4", "hall": "#d62728"}
LEFT_COLOR, RIGHT_COLOR = "#4c72b0", "#dd8452"


def _new(figsize) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Figure, title: str, subtitle: str = CONVENTION) -> None:
    """Set the figure's title and its smaller explanatory line; `_save` places both above
    everything drawn (so they never collide with polar labels, legends or axes titles)."""
    fig._bast_titles = (title, subtitle)


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title, subtitle = getattr(fig, "_bast_titles", ("", ""))
    if title or subtitle:
        renderer = fig.canvas.get_renderer()
        bb = fig.get_tightbbox(renderer)  # inches
        w, h = fig.get_figwidth(), fig.get_figheight()
        x = (bb.x0 + bb.x1) / 2 / w
        y = bb.y1 / h + 0.012
        if subtitle:
            width_chars = max(40, int((bb.x1 - bb.x0) * 72 / (8.5 * 0.55)))
            sub = fig.text(x, y, textwrap.fill(subtitle, width_chars), ha="center", va="bottom",
                           fontsize=8.5, color="0.3")
            y = sub.get_window_extent(renderer).y1 / fig.dpi / h + 0.006
        if title:
            fig.text(x, y, title, ha="center", va="bottom", fontsize=12, fontweight="bold")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return path


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------- errors
def polar_ad(per_azimuth_by_label: dict, path, title: str = "Angular distance per azimuth") -> Path:
    """Per-azimuth mean AD on a polar plot (paper Fig. 2), one line per label (e.g. the
    integration method). Values: label -> (azimuths in degrees, AD in degrees). 0° (ahead)
    at the top, 90° (left) on the left: the listener seen from above, facing up."""
    fig = _new((6.4, 6.8))
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_zero_location("N")
    ax.set_theta_direction(1)
    rmax = 0.0
    for label, (az, ad) in per_azimuth_by_label.items():
        az, ad = _np(az), _np(ad)
        order = np.argsort(np.mod(az, 360.0))
        az, ad = np.mod(az[order], 360.0), ad[order]
        if az.size and az[0] == 0.0:  # close the ring through 0°
            az, ad = np.append(az, 360.0), np.append(ad, ad[0])
        ax.plot(np.deg2rad(az), ad, marker="o", ms=3.5, lw=1.6, label=str(label))
        if np.isfinite(ad).any():
            rmax = max(rmax, float(np.nanmax(ad)))
    ax.set_thetagrids(np.arange(0, 360, 30), [f"{d}°" for d in range(0, 360, 30)])
    ax.set_rlim(0, rmax * 1.1 if rmax > 0 else 1.0)
    ax.set_rlabel_position(135)
    ax.text(np.deg2rad(135), ax.get_rmax() * 1.18, "AD (°)", ha="center", va="center", fontsize=9)
    for ang, word in ((0, "ahead"), (90, "left"), (180, "behind"), (270, "right")):
        ax.text(np.deg2rad(ang), ax.get_rmax() * 1.32, word, ha="center", va="center", fontsize=8, color="0.35")
    ax.grid(True, alpha=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.05), fontsize=8, title="condition", title_fontsize=8)
    _title(fig, title, "mean angular distance (deg) at each true azimuth; " + CONVENTION)
    return _save(fig, path)


def hemifield_boxplots(conditions: dict, metric_name: str, path, title: str | None = None,
                       log_y: bool = False) -> Path:
    """Left vs right hemifield box plots per condition (paper Fig. 3/4). Values: label ->
    (left_values, right_values, p_adj), p_adj the FDR (BH) adjusted paired t-test p, written
    above each pair, with a star when < 0.05. `metric_name` labels the y axis (give units)."""
    labels = list(conditions)
    fig = _new((max(5.0, 1.5 * len(labels) + 2.0), 4.8))
    ax = fig.add_subplot()
    values = []
    notes = []  # (x centre of the pair, text, significant)
    for i, label in enumerate(labels):
        left, right, p_adj = conditions[label]
        left, right = _np(left), _np(right)
        left, right = left[np.isfinite(left)], right[np.isfinite(right)]
        for data, x, color in ((left, 3 * i + 1, LEFT_COLOR), (right, 3 * i + 2, RIGHT_COLOR)):
            if data.size == 0:
                continue
            bp = ax.boxplot([data], positions=[x], widths=0.8, patch_artist=True,
                            medianprops={"color": "black"}, flierprops={"markersize": 3, "alpha": 0.5})
            for box in bp["boxes"]:
                box.set_facecolor(color)
                box.set_alpha(0.8)
            values.append(data)
        p = float(p_adj) if p_adj is not None else float("nan")
        sig = bool(np.isfinite(p) and p < 0.05)
        text = "p_adj n/a" if not np.isfinite(p) else f"p_adj={p:.2g}" + (" *" if sig else "")
        notes.append((3 * i + 1.5, text, sig))
    allv = np.concatenate(values) if values else np.array([0.0, 1.0])
    top, bottom = float(allv.max()), float(allv.min())
    if log_y and bottom > 0:
        ax.set_yscale("log")
        y_text = top * 1.3
        ax.set_ylim(bottom / 1.5, top * 2.5)
    else:
        low = min(bottom, 0.0)
        span = (top - low) or 1.0
        y_text = top + 0.05 * span
        ax.set_ylim(low - 0.02 * span, top + 0.2 * span)
    for x, text, sig in notes:
        ax.plot([x - 0.5, x + 0.5], [y_text, y_text], color="0.3", lw=1)
        ax.text(x, y_text, text, ha="center", va="bottom", fontsize=8, fontweight="bold" if sig else "normal")
    ax.set_xticks([3 * i + 1.5 for i in range(len(labels))], [str(l) for l in labels], fontsize=8)
    ax.set_xlim(0, 3 * max(len(labels), 1))
    ax.set_ylabel(metric_name)
    ax.set_xlabel("condition")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=[Patch(color=LEFT_COLOR, alpha=0.8, label="left hemifield (10–170°)"),
                       Patch(color=RIGHT_COLOR, alpha=0.8, label="right hemifield (mirror, 350–190°)")],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, title or f"{metric_name}: left vs right hemifield",
           "paired t-test per condition (a at left vs 360°−a at right), p adjusted for FDR "
           "(Benjamini-Hochberg); * p_adj < 0.05; 0° ahead, 90° left (SOFA)")
    return _save(fig, path)


def scatter_pred_vs_true(pred: dict, path, title: str = "Predicted vs true azimuth") -> Path:
    """Predicted against true azimuth (degrees), colored by environment, with the diagonal
    (correct) and the front-back mirror line (predicted = 180° - true, mod 360)."""
    true = np.mod(_np(pred["azimuth_deg"]), 360.0)
    p = ev.predicted_azimuth(pred)
    envs = ev.canonical_envs(pred["env"])
    fig = _new((6.4, 6.0))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-1.5, 1.5, size=true.size)  # true azimuths sit on a grid
    alpha = float(np.clip(300.0 / max(true.size, 1), 0.05, 0.8))
    for e in sorted(set(envs.tolist())):
        m = envs == e
        ax.scatter(true[m] + jitter[m], p[m], s=5, alpha=alpha, color=ENV_COLORS.get(e),
                   label=f"{e} (n={int(m.sum())})", rasterized=True, edgecolors="none")
    ax.plot([0, 360], [0, 360], color="black", lw=1, label="correct (pred = true)")
    ax.plot([0, 180], [180, 0], color="0.4", lw=1, ls="--", label="front-back mirror (pred = 180° − true)")
    ax.plot([180, 360], [360, 180], color="0.4", lw=1, ls="--")
    ax.set_xlim(-5, 365)
    ax.set_ylim(-5, 365)
    ax.set_xticks(np.arange(0, 361, 45))
    ax.set_yticks(np.arange(0, 361, 45))
    ax.set_xlabel("true azimuth (°)")
    ax.set_ylabel("predicted azimuth (°)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    leg = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=3)
    for h in leg.legend_handles:
        if hasattr(h, "set_alpha"):
            h.set_alpha(1.0)
    fb = ev.front_back_confusion_rate(pred)
    _title(fig, title, f"front-back confusion rate {fb:.1%} (prediction nearer 180° − true than true); "
           "true azimuths jittered ±1.5° for visibility; " + CONVENTION)
    return _save(fig, path)


def error_histogram(pred: dict, path, bins=None, title: str = "Distribution of angular distance") -> Path:
    """Histogram of per-sample AD (degrees) per environment, log-scaled counts."""
    envs = ev.canonical_envs(pred["env"])
    ad = _np(pred["ad_deg"])
    if bins is None:  # 0-180° when there are gross errors, else zoomed on the data
        top = float(np.nanmax(ad)) if np.isfinite(ad).any() else 180.0
        top = 180.0 if top > 90.0 else max(1.0, float(np.ceil(top * 1.05)))
        bins = np.linspace(0.0, top, 61)
    bins = np.asarray(bins, dtype=np.float64)
    fig = _new((7.0, 4.2))
    ax = fig.add_subplot()
    for e in sorted(set(envs.tolist())):
        m = (envs == e) & np.isfinite(ad)
        ax.hist(ad[m], bins=bins, histtype="step", lw=1.6, color=ENV_COLORS.get(e),
                label=f"{e}: n={int(m.sum())}, mean {np.mean(ad[m]):.2f}°, median {np.median(ad[m]):.2f}°")
    ax.set_yscale("log")
    ax.set_xlabel("angular distance between predicted and true direction (°)")
    ax.set_ylabel("number of samples (log scale)")
    ax.set_xlim(bins[0], bins[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _title(fig, title, "AD = angle between (cos az, sin az) and the predicted (x, y); " + CONVENTION)
    return _save(fig, path)


# ----------------------------------------------------------------------------- the sphere
SPHERE_CONVENTION = ("SOFA: azimuth 0° ahead, 90° left; elevation up from the horizontal plane; lateral "
                     "left positive, polar 0° ahead, 90° above, 180° behind")


def sphere_error_map(grid: dict, path, title: str = "Great-circle error over the sphere") -> Path:
    """Mean great-circle error (colour) at each true (azimuth, elevation) of the test set:
    the map of the sphere (`metrics.error_by_direction`)."""
    fig = _new((8.0, 4.4))
    ax = fig.add_subplot()
    az = np.where(_np(grid["azimuth_deg"]) > 180.0, _np(grid["azimuth_deg"]) - 360.0, _np(grid["azimuth_deg"]))
    sc = ax.scatter(az, _np(grid["elevation_deg"]), c=_np(grid["error_deg"]), cmap="viridis", s=40, marker="s",
                    vmin=0.0, edgecolors="none")
    fig.colorbar(sc, ax=ax, label="mean great-circle error (°)")
    ax.set_xlim(185, -185)  # left on the left, as seen from behind the listener
    ax.set_ylim(-95, 95)
    ax.set_xticks(np.arange(-180, 181, 45))
    ax.set_xlabel("true azimuth (°; 90 = left, -90 = right)")
    ax.set_ylabel("true elevation (°)")
    ax.grid(alpha=0.3)
    _title(fig, title, f"{int(np.sum(grid['n']))} samples at {len(grid['n'])} directions; " + SPHERE_CONVENTION)
    return _save(fig, path)


def lateral_polar_scatter(pred: dict, path, title: str = "Responses in interaural-polar coordinates") -> Path:
    """True against predicted lateral angle and polar angle: the two scatter plots of
    localization studies (front-back confusions lie off the polar diagonal near +-180°)."""
    from bast.sphere import lateral_polar

    lat_t, pol_t = lateral_polar(*ev.true_direction(pred))
    lat_r, pol_r = lateral_polar(*ev.predicted_direction(pred))
    fig = _new((10.0, 4.8))
    alpha = float(np.clip(300.0 / max(lat_t.size, 1), 0.05, 0.8))
    for k, (t, r, name, lo, hi) in enumerate(((lat_t, lat_r, "lateral", -90, 90), (pol_t, pol_r, "polar", -90, 270))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.scatter(t, r, s=5, alpha=alpha, color="#1f77b4", edgecolors="none", rasterized=True)
        ax.plot([lo, hi], [lo, hi], color="black", lw=1)
        ax.set_xlim(lo - 5, hi + 5)
        ax.set_ylim(lo - 5, hi + 5)
        ax.set_aspect("equal")
        ax.set_xlabel(f"true {name} angle (°)")
        ax.set_ylabel(f"predicted {name} angle (°)")
        ax.grid(alpha=0.3)
    e = ev.sphere_errors(pred)
    _title(fig, title, f"lateral error {e['lateral_error_deg']:.1f}°, polar error {e['polar_error_deg']:.1f}°, "
           f"quadrant error {e['quadrant_error_pct']:.1f} %; " + SPHERE_CONVENTION)
    return _save(fig, path)


def confusion_matrix(classes, counts, path, title: str = "Sound class confusion matrix") -> Path:
    """Rows: true class; columns: predicted class; each row normalised to 1, counts written."""
    counts = np.asarray(counts, dtype=np.float64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig = _new((1.2 + 0.55 * n, 0.9 + 0.5 * n))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="share of the true class")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    _title(fig, title, f"accuracy {accuracy:.1%} over {int(counts.sum())} samples, chance {1 / max(n, 1):.1%}")
    return _save(fig, path)


def category_bars(by_category: dict, path, title: str = "Angular distance per sound category") -> Path:
    """Mean AD per sound category (from `bast.model.targets.metrics.by_category`) as
    horizontal bars, sorted with the hardest category on top, each labelled with its
    sample count."""
    items = sorted(by_category.items(), key=lambda kv: kv[1]["ad_deg"])
    names = [k for k, _ in items]
    ad = np.array([v["ad_deg"] for _, v in items], dtype=np.float64)
    n = [int(v["n"]) for _, v in items]
    med = np.array([v.get("median_ad_deg", np.nan) for _, v in items], dtype=np.float64)
    fig = _new((7.5, max(2.5, 0.38 * len(names) + 1.6)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, ad, color="#4c72b0", alpha=0.85, label="mean AD")
    if np.isfinite(med).any():
        ax.scatter(med, y, color="black", marker="|", s=120, zorder=3, label="median AD")
    xmax = float(np.nanmax(np.concatenate([ad, med[np.isfinite(med)]]))) if ad.size else 1.0
    for yi, a, md, k in zip(y, ad, med, n):
        x = max(a, md) if np.isfinite(md) else a
        ax.text(x + 0.015 * xmax, yi, f" {a:.1f}° (n={k})", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, xmax * 1.25 if xmax > 0 else 1.0)
    ax.set_xlabel("angular distance (°)")
    ax.set_ylabel("sound category")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, title, "mean over all azimuths and rooms of each category's test samples; " + CONVENTION)
    return _save(fig, path)


def ad_by_value(groups: dict, path, xlabel: str, title: str = "Angular distance") -> Path:
    """Mean AD per value of a numeric label (e.g. SNR in dB), from
    `bast.model.targets.metrics.by_label`: finite keys as a line; 'inf' (e.g. no noise) as
    a dashed horizontal line."""
    fig = _new((6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    points = sorted((float(k), v["ad_deg"]) for k, v in groups.items() if np.isfinite(_float(k)))
    if points:
        x, y = zip(*points)
        ax.plot(x, y, "o-", color="C0", label="test AD")
    if "inf" in groups:
        ax.axhline(groups["inf"]["ad_deg"], color="C1", ls="--", label="no noise")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("angular distance (deg)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _title(fig, title)
    return _save(fig, path)


def accuracy_vs_time(points: dict, path, title: str = "Test AD against training time") -> Path:
    """One point per run: {label: (training minutes, test AD in degrees)}."""
    fig = _new((6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for k, (label, (minutes, ad)) in enumerate(points.items()):
        ax.scatter([minutes], [ad], s=40, color=f"C{k % 10}", label=textwrap.shorten(label, 60))
    ax.set_xlabel("training time (minutes, validation excluded)")
    ax.set_ylabel("test angular distance (deg)")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="best")
    _title(fig, title)
    return _save(fig, path)


def training_curves(metrics_rows: list[dict], path, title: str = "Training curves") -> Path:
    """Two panels from per-epoch rows (keys epoch, train_loss, val_loss, val_ad_deg, maybe
    lr): losses (log y; lr on a twin axis when present) and validation AD in degrees."""
    def col(key):
        return np.array([_float(r.get(key)) for r in metrics_rows], dtype=np.float64)

    epoch = col("epoch")
    if not np.isfinite(epoch).any():
        epoch = np.arange(1, len(metrics_rows) + 1, dtype=np.float64)
    fig = _new((11.0, 4.0))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fig.subplots_adjust(wspace=0.45)
    handles = []
    for key, color, label in (("train_loss", "#1f77b4", "training loss"), ("val_loss", "#ff7f0e", "validation loss")):
        v = col(key)
        m = np.isfinite(v)
        if m.any():
            handles += ax1.plot(epoch[m], v[m], marker="o", ms=3, color=color, label=label)
    if any(np.isfinite(col(k)).any() and (col(k)[np.isfinite(col(k))] > 0).all() for k in ("train_loss", "val_loss")):
        ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (log scale)")
    ax1.set_title("losses", fontsize=10)
    ax1.grid(alpha=0.3)
    lr = col("lr")
    if np.isfinite(lr).any():
        ax1b = ax1.twinx()
        m = np.isfinite(lr)
        handles += ax1b.plot(epoch[m], lr[m], color="0.5", ls=":", label="learning rate")
        ax1b.set_ylabel("learning rate")
        ax1b.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if (lr[m] > 0).all() and lr[m].max() > 10 * lr[m].min():
            ax1b.set_yscale("log")
    ax1.legend(handles=handles, fontsize=8)
    ad = col("val_ad_deg")
    m = np.isfinite(ad)
    seld = not m.any() and np.isfinite(col("val_seld_score")).any()  # a SELD run: its validation SELD score
    if seld:
        ad, m = col("val_seld_score"), np.isfinite(col("val_seld_score"))
    if m.any():
        ax2.plot(epoch[m], ad[m], marker="o", ms=3, color="#2ca02c",
                 label="validation SELD score" if seld else "validation AD")
        best = int(np.nanargmin(np.where(m, ad, np.inf)))
        ax2.scatter([epoch[best]], [ad[best]], s=60, facecolors="none", edgecolors="black", zorder=3,
                    label=f"best {ad[best]:.3f} (epoch {epoch[best]:g})" if seld else
                    f"best {ad[best]:.2f}° (epoch {epoch[best]:g})")
        ax2.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("SELD score (lower is better)" if seld else "angular distance (°)")
    ax2.set_title("validation SELD score" if seld else "validation angular distance", fontsize=10)
    ax2.grid(alpha=0.3)
    _title(fig, title, "per epoch; SELD score = mean(ER20, 1 - F20, LE / 180, 1 - LR) (docs/seld.md)" if seld else
           "per epoch; AD = mean angle between predicted and true direction")
    return _save(fig, path)


# ----------------------------------------------------------------------------- attention
def _spec_extent(shape):
    """imshow extent (time ms, frequency Hz) for a (freq, frames) spectrogram of scipy's
    layout: frame k centred at (NPERSEG/2 + k*HOP)/FS, bin f at f*FS/NPERSEG."""
    nf, nt = shape
    dt = HOP / FS * 1000.0
    t0 = NPERSEG / 2 / FS * 1000.0
    df = FS / NPERSEG
    return [t0 - dt / 2, t0 + (nt - 0.5) * dt, -df / 2, (nf - 0.5) * df]


def rollout_figure(spectrogram, left_map, right_map, path, title: str = "Attention rollout",
                 center_map=None) -> Path:
    """The left and right spectrograms (2, 129, 61; dB or standardised) beside the folded
    attention rollout of TE-L and TE-R (129, 61 each, from `rollout.fold_to_spectrogram`),
    drawn as heat maps relative to their mean (1 = average attention) with the smoothed
    spectrogram's contours on top; optionally TE-C's map in a third column (paper Fig. 6)."""
    from scipy.ndimage import gaussian_filter

    spec = _np(spectrogram)
    maps = [_np(left_map), _np(right_map)]
    ext = _spec_extent(spec.shape[-2:])
    ncols = 3 if center_map is not None else 2
    fig = _new((4.3 * ncols + 0.8, 7.0))
    gs = fig.add_gridspec(2, ncols, hspace=0.4, wspace=0.4)
    vmin, vmax = np.percentile(spec, [2, 99.5])
    smooth = [gaussian_filter(spec[i], sigma=1.5) for i in range(2)]
    for row, (ear, enc) in enumerate((("left ear", "TE-L"), ("right ear", "TE-R"))):
        ax = fig.add_subplot(gs[row, 0])
        im = ax.imshow(spec[row], origin="lower", aspect="auto", extent=ext, cmap="magma", vmin=vmin, vmax=vmax)
        fig.colorbar(im, ax=ax, label="level (input units, e.g. dB)")
        ax.set_title(f"spectrogram, {ear}", fontsize=10)
        ax.set_xlabel("time (ms)")
        ax.set_ylabel("frequency (Hz)")
        ax.set_ylim(0, FS / 2)
        _map_panel(fig, fig.add_subplot(gs[row, 1]), maps[row], smooth[row], ext,
                   f"rollout {enc} (last layer), {ear}")
    if center_map is not None:
        _map_panel(fig, fig.add_subplot(gs[:, 2]), _np(center_map), (smooth[0] + smooth[1]) / 2, ext,
                   "rollout TE-C (last layer)\ncontours: mean of both ears")
    fig.legend(handles=[Line2D([], [], color="white", lw=0.8, label="contours of the (smoothed) spectrogram level")],
               loc="lower center", bbox_to_anchor=(0.5, -0.03), fontsize=8, facecolor="0.35", labelcolor="white")
    _title(fig, title, "token importance = mean over query tokens of the attention rollout (residual "
           "included), spread over the bins each 16 x 16 patch covers; frames 8 ms apart, 0-8 kHz")
    return _save(fig, path)


def _map_panel(fig, ax, m, spec, ext, title):
    mean = float(np.mean(m))
    rel = m / mean if mean > 0 else m
    im = ax.imshow(rel, origin="lower", aspect="auto", extent=ext, cmap="viridis")
    fig.colorbar(im, ax=ax, label="attention relative to mean (1 = average)")
    t = np.linspace(ext[0], ext[1], spec.shape[1] + 1)
    t = (t[:-1] + t[1:]) / 2
    f = np.linspace(ext[2], ext[3], spec.shape[0] + 1)
    f = (f[:-1] + f[1:]) / 2
    if np.ptp(spec) > 0:
        ax.contour(t, f, spec, levels=np.percentile(spec, [50, 80, 95]), colors="white",
                   linewidths=0.6, alpha=0.7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("frequency (Hz)")
    ax.set_ylim(0, FS / 2)


def rollout_layers(rollouts: dict, grid, path, title: str = "Attention rollout per layer",
                   cls_token: bool = False) -> Path:
    """Token importance after every layer of every encoder, on the patch grid (rows =
    frequency patches from 0 Hz up, columns = time patches), one colour scale per encoder.
    rollouts: encoder name -> list of (T, T) rollout matrices (a (B, T, T) batch uses
    sample 0). Importance is shown times the number of tokens: 1 = an equal share."""
    from matplotlib.ticker import MaxNLocator

    from bast.report.rollout import token_importance, tokens_to_grid

    names = [k for k, v in rollouts.items() if len(v)]
    nl = max((len(rollouts[k]) for k in names), default=1)
    fig = _new((2.4 * nl + 1.6, 3.0 * max(len(names), 1)))
    gs = fig.add_gridspec(max(len(names), 1), nl, hspace=0.6, wspace=0.35)
    enc_names = {"left": "TE-L", "right": "TE-R", "center": "TE-C"}
    for i, name in enumerate(names):
        grids = []
        for r in rollouts[name]:
            r = _np(r)
            if r.ndim == 3:
                r = r[0]
            imp = token_importance(r, cls_token=cls_token)
            grids.append(tokens_to_grid(imp * imp.size, grid=grid))
        vmin = min(float(g.min()) for g in grids)
        vmax = max(float(g.max()) for g in grids)
        axes = []
        for j, g in enumerate(grids):
            ax = fig.add_subplot(gs[i, j])
            im = ax.imshow(g, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
            ax.set_title(f"{enc_names.get(name, name)}, layer {j + 1}", fontsize=9)
            ax.set_xlabel("time patch", fontsize=8)
            if j == 0:
                ax.set_ylabel("frequency patch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            axes.append(ax)
        cb = fig.colorbar(im, ax=axes, fraction=0.03, pad=0.02)
        cb.set_label("importance x tokens", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    _title(fig, title, f"share of the rollout each input patch receives (mean over query tokens; grid "
           f"{grid[0]} x {grid[1]}, 0 Hz at the bottom, time to the right); 1 = an equal share")
    return _save(fig, path)


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- transfer and localization
def generalisation_matrix(ad, row_labels, col_labels, path, mse=None,
                          title: str = "Generalisation: angular distance per run and data set") -> Path:
    """Heatmap of AD (rows: runs, columns: data sets), each cell written as 'AD° / MSE';
    NaN cells (not evaluated) are left blank and marked 'not evaluated'."""
    ad = np.asarray(ad, dtype=np.float64).reshape(len(row_labels), len(col_labels))
    mse = None if mse is None else np.asarray(mse, dtype=np.float64).reshape(ad.shape)
    fig = _new((max(5.0, 1.9 * len(col_labels) + 3.0), max(2.4, 0.55 * len(row_labels) + 1.8)))
    ax = fig.add_subplot()
    vmax = float(np.nanmax(ad)) if np.isfinite(ad).any() else 1.0
    im = ax.imshow(np.ma.masked_invalid(ad), cmap="viridis_r", vmin=0.0, vmax=max(vmax, 1e-6), aspect="auto")
    for i in range(ad.shape[0]):
        for j in range(ad.shape[1]):
            if not np.isfinite(ad[i, j]):
                ax.text(j, i, "not evaluated", ha="center", va="center", fontsize=7, color="0.4")
                continue
            txt = f"{ad[i, j]:.1f}°" + (f"\n{mse[i, j]:.3f}" if mse is not None and np.isfinite(mse[i, j]) else "")
            dark = ad[i, j] > 0.55 * vmax
            ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(col_labels)), [textwrap.fill(str(c), 22) for c in col_labels], fontsize=7.5)
    ax.set_yticks(range(len(row_labels)), [textwrap.fill(str(r), 40) for r in row_labels], fontsize=7.5)
    ax.set_xlabel("evaluated on (data set)")
    ax.set_ylabel("run")
    fig.colorbar(im, ax=ax, label="mean angular distance (°)", shrink=0.9)
    _title(fig, title, "cells: mean AD (°) and, below, MSE; first column: each run's own test split")
    return _save(fig, path)


def localization_timeline(loc, path, title: str | None = None) -> Path:
    """Azimuth over time above the waveform: one marker per window at its centre, coloured
    by the prediction's length |(x, y)|; silent windows marked at the bottom. `loc` is a
    `bast.model.inference.localize.Localization`."""
    fig = _new((10.0, 5.6))
    ax_az, ax_wav = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1.0]})
    t = np.asarray(loc.centre_s)
    az = np.asarray(loc.azimuth_deg)
    voiced = ~np.asarray(loc.silent, dtype=bool)
    ax_az.axhspan(0, 180, color=LEFT_COLOR, alpha=0.07, lw=0)
    ax_az.axhspan(180, 360, color=RIGHT_COLOR, alpha=0.07, lw=0)
    if voiced.any():
        sc = ax_az.scatter(t[voiced], az[voiced], c=np.asarray(loc.confidence)[voiced], cmap="plasma", s=18,
                           vmin=0.0, vmax=max(1.2, float(np.nanmax(np.asarray(loc.confidence)[voiced]))), zorder=3)
        fig.colorbar(sc, ax=ax_az, label="|(x, y)|", pad=0.01)
    if (~voiced).any():
        ax_az.scatter(t[~voiced], np.full((~voiced).sum(), 5.0), marker="x", color="0.5", s=16,
                      label="silent (no azimuth)", zorder=3)
        ax_az.legend(fontsize=8, loc="upper right")
    ax_az.set_ylim(0, 360)
    ax_az.set_yticks([0, 90, 180, 270, 360], ["0° ahead", "90° left", "180° behind", "270° right", "360°"],
                     fontsize=8)
    ax_az.set_ylabel("predicted azimuth")
    ax_az.grid(alpha=0.3)
    audio = np.asarray(loc.audio, dtype=np.float64)
    n = audio.shape[1]
    step = max(1, n // 4000)  # min/max envelope of about 4000 columns
    cols = n // step
    times = (np.arange(cols) * step + step / 2) / FS
    for ch, (name, color) in enumerate((("left ear", LEFT_COLOR), ("right ear", RIGHT_COLOR))):
        blocks = audio[ch, :cols * step].reshape(cols, step)
        ax_wav.fill_between(times, blocks.min(1), blocks.max(1), color=color, alpha=0.55, lw=0, label=name)
    ax_wav.set_xlabel("time (s)")
    ax_wav.set_ylabel("amplitude")
    ax_wav.legend(fontsize=8, loc="upper right", ncol=2)
    ax_wav.set_xlim(0, n / FS)
    _title(fig, title or f"Localization: {Path(loc.path).name}",
           f"{loc.window_ms:g} ms windows every {loc.hop_ms:g} ms, marker at the window centre; " + CONVENTION)
    return _save(fig, path)


def seld_timeline(pred_rows, path, classes, ref_rows=None, duration_s: float | None = None,
                  title: str = "SELD timeline") -> Path:
    """Azimuth (top) and elevation (bottom) over time of DCASE rows (n, 5: frame, class,
    source, azimuth, elevation; 100 ms frames): the reference's tracks, when given, as thick
    faded lines (one per class and source, broken where the track pauses or its azimuth
    wraps round), the predicted rows as points; colour by class. Azimuth as DCASE writes it:
    counter-clockwise from ahead, 90° left, -90° right."""
    fig = _new((10.0, 5.8))
    ax_az, ax_el = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.6, 1.0]})
    pred = np.asarray(pred_rows, dtype=np.float64).reshape(-1, 5)
    ref = None if ref_rows is None else np.asarray(ref_rows, dtype=np.float64).reshape(-1, 5)
    colors = [f"C{k % 10}" for k in range(len(classes))]
    hop = 0.1  # s per label frame
    last = max([len(r) and r[:, 0].max() for r in (pred, ref) if r is not None and len(r)] or [0])
    end = duration_s if duration_s else (last + 1) * hop
    if ref is not None:
        for cls, src in sorted({(int(c), int(s)) for c, s in ref[:, 1:3]}):
            track = ref[(ref[:, 1] == cls) & (ref[:, 2] == src)]
            track = track[np.argsort(track[:, 0], kind="stable")]
            t = track[:, 0] * hop + hop / 2
            gap = np.flatnonzero((np.diff(track[:, 0]) > 1) | (np.abs(np.diff(track[:, 3])) > 180)) + 1
            for ax, col in ((ax_az, 3), (ax_el, 4)):
                for part_t, part_v in zip(np.split(t, gap), np.split(track[:, col], gap)):
                    ax.plot(part_t, part_v, color=colors[cls % len(colors)], lw=7, alpha=0.28,
                            solid_capstyle="round", marker="s", ms=5, mew=0, zorder=2)
    for cls in np.unique(pred[:, 1]).astype(int) if len(pred) else ():
        rows = pred[pred[:, 1] == cls]
        t = rows[:, 0] * hop + hop / 2
        for ax, col in ((ax_az, 3), (ax_el, 4)):
            ax.scatter(t, rows[:, col], s=14, color=colors[cls % len(colors)], edgecolors="black",
                       linewidths=0.4, zorder=3)
    ax_az.set_ylim(-180, 180)
    ax_az.set_yticks([-180, -90, 0, 90, 180], ["-180° behind", "-90° right", "0° ahead", "90° left", "180°"],
                     fontsize=8)
    ax_az.set_ylabel("azimuth")
    ax_el.set_ylim(-90, 90)
    ax_el.set_yticks([-90, -45, 0, 45, 90], ["-90° down", "-45°", "0°", "45°", "90° up"], fontsize=8)
    ax_el.set_ylabel("elevation")
    ax_el.set_xlabel("time (s)")
    ax_el.set_xlim(0, end)
    for ax in (ax_az, ax_el):
        ax.grid(alpha=0.3)
    handles = [Patch(color=colors[k], label=str(name)) for k, name in enumerate(classes)]
    if ref is not None:
        handles.append(Line2D([], [], color="0.4", lw=7, alpha=0.28, label="reference"))
    handles.append(Line2D([], [], color="0.4", marker="o", ls="", mec="black", mew=0.4, label="prediction"))
    ax_az.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _title(fig, title, "100 ms frames; DCASE azimuth: counter-clockwise from ahead, 90° left, -90° right")
    return _save(fig, path)
