"""`bast-cli localize`: a trained run on binaural recordings, window by window.

Any file libsndfile reads (WAV, FLAC, AIFF, OGG, ...), any sample rate (resampled to
16 kHz with a polyphase filter), exactly two channels (channel 0 = left ear), at least one
window long. Each 500 ms window (the model's input: 8000 samples at 16 kHz) goes through
the featurization of training (`bast.pipeline.features.stft.spectrogram_db`, per-sample
standardisation) and the model, in float32, on the GPU when there is one.

Per window: start and centre time, the predicted azimuth (SOFA: 0 ahead, 90 left, 180
behind, 270 right) = atan2(y, x), the length |(x, y)| of the prediction (the model was
trained towards unit vectors; a length far from 1 is a cue that the window is unlike the
training data), and the window's level in dB re full scale (RMS over both ears; a
full-scale square wave is 0 dBFS, a full-scale sine -3 dBFS). A window is `silent`, and
gets no azimuth, when its level is below `SILENCE_DBFS` (-60 dBFS) or more than
`SILENCE_BELOW_LOUDEST_DB` (40 dB) below the file's loudest window.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from bast import options
from bast.conventions import CLIP_SAMPLES, FS
from bast.errors import ConfigError, DataError
from bast.fileio import atomic_path, write_json
from bast.model.data.loaders import model_input

WINDOW_MS = 1000.0 * CLIP_SAMPLES / FS  # 500 ms: what the model reads
SILENCE_DBFS = -60.0
SILENCE_BELOW_LOUDEST_DB = 40.0
CSV_FIELDS = ("window", "start_s", "centre_s", "azimuth_deg", "x", "y", "confidence", "level_dbfs", "silent")


@dataclass
class Localization:
    """What `localize_audio` found in one file."""

    path: str
    fs_in: int
    duration_s: float
    audio: np.ndarray  # (2, samples) at 16 kHz, float32
    start_s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    level_dbfs: np.ndarray
    silent: np.ndarray
    hop_ms: float
    window_ms: float = WINDOW_MS
    info: dict = field(default_factory=dict)
    # What else the run predicts, per window (its target's decoded columns): elevation_deg
    # for a run on the sphere, category for a run that learned sound classes.
    columns: dict = field(default_factory=dict)

    @property
    def centre_s(self) -> np.ndarray:
        return self.start_s + self.window_ms / 2000.0

    @property
    def azimuth_deg(self) -> np.ndarray:
        """Predicted azimuth per window, NaN where silent."""
        az = np.mod(np.rad2deg(np.arctan2(self.y, self.x)), 360.0)
        return np.where(self.silent, np.nan, az)

    @property
    def confidence(self) -> np.ndarray:
        return np.hypot(self.x, self.y)

    def summary(self) -> dict:
        az = self.azimuth_deg
        voiced = ~self.silent
        left = voiced & (az > 0) & (az < 180)
        right = voiced & (az > 180) & (az < 360)
        mean = None  # absent (JSON null), never NaN, when every window is silent
        if voiced.any():  # circular mean of the unit directions of the non-silent windows
            mean = float(np.mod(np.rad2deg(np.arctan2(np.sin(np.deg2rad(az[voiced])).mean(),
                                                      np.cos(np.deg2rad(az[voiced])).mean())), 360.0))
        return {"file": self.path, "sample_rate_in": self.fs_in, "duration_s": self.duration_s,
                "window_ms": self.window_ms, "hop_ms": self.hop_ms, "windows": int(self.silent.size),
                "silent_windows": int(self.silent.sum()), "circular_mean_azimuth_deg": mean,
                "left_hemifield_windows": int(left.sum()), "right_hemifield_windows": int(right.sum()),
                "median_confidence": float(np.median(self.confidence[voiced])) if voiced.any() else None,
                "max_level_dbfs": float(np.max(self.level_dbfs)), **self.info}


# Sample rates of recordings localize reads (resampled to 16 kHz): the telephone band to the
# highest rate audio interfaces record at, as for SOFA sets (bast/pipeline/irs/sofa.py).
MIN_FS_IN, MAX_FS_IN = 8000, 768000


def read_binaural(path) -> tuple[np.ndarray, int]:
    """(audio (2, samples) float32 at 16 kHz, the file's own rate). DataError naming the file
    when libsndfile cannot read it or it does not have exactly 2 channels."""
    import soundfile as sf
    from scipy.signal import resample_poly

    path = options.input_file(path, "AUDIO", "audio file")  # a FIFO would block the read
    try:  # libsndfile, the outputs' names and the figures' titles need the name as text
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{str(path)!r}: its name is not UTF-8 text; rename the file") from None
    try:
        data, fs = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError, OSError
        raise DataError(f"{path}: cannot read it as audio ({exc})") from None
    if not len(data):
        raise DataError(f"{path}: no samples (an empty or cut recording); localize needs audio")
    if not MIN_FS_IN <= fs <= MAX_FS_IN:  # a 1 Hz header would resample one file into many gigabytes
        raise DataError(f"{path}: sample rate {fs} Hz; localize reads recordings sampled from {MIN_FS_IN:,} to "
                        f"{MAX_FS_IN:,} Hz (a damaged header?)")
    if data.shape[1] != 2:
        raise DataError(f"{path}: {data.shape[1]} channel(s); localize needs a binaural recording with exactly 2 "
                        "(left ear first, right ear second)")
    bad = ~np.isfinite(data)
    if bad.any():
        # One NaN would spread through the resampler and the window's level, and its window
        # (and those the loudest-level rule compares with it) would be called silent.
        first = np.flatnonzero(bad.any(axis=1))[0]
        raise DataError(f"{path}: {int(np.isnan(data).sum())} NaN and {int(np.isinf(data).sum())} Inf sample(s), "
                        f"the first at {first / fs:.3f} s; localize needs finite audio (repair or cut the file)")
    audio = data.T
    if fs != FS:
        ratio = Fraction(FS, int(fs)).limit_denominator(1000)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1)
    return np.ascontiguousarray(audio, dtype=np.float32), int(fs)


def window_starts(samples: int, hop: int, window: int = CLIP_SAMPLES) -> np.ndarray:
    """First sample of each window: 0, hop, 2 hop, ... while the window fits."""
    if samples < window:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, samples - window + 1, hop, dtype=np.int64)


def level_dbfs(windows: np.ndarray) -> np.ndarray:
    """RMS level over both ears of each window (..., 2, samples), dB re full scale."""
    ms = np.mean(np.square(windows.astype(np.float64)), axis=(-2, -1))
    return 10.0 * np.log10(np.maximum(ms, 1e-20))


def silent_windows(levels: np.ndarray, floor_dbfs: float = SILENCE_DBFS,
                   below_loudest_db: float = SILENCE_BELOW_LOUDEST_DB) -> np.ndarray:
    if levels.size == 0:
        return np.zeros(0, dtype=bool)
    return (levels < floor_dbfs) | (levels < levels.max() - below_loudest_db)


# Time steps between windows: finer than 10 ms (the STFT's own step is 8 ms) only multiplies
# near-identical windows (0.001 ms made 24,000 windows of a 2 s file); a minute at most.
MIN_HOP_MS, MAX_HOP_MS = 10.0, 60_000.0


def check_window_ms(window_ms: float) -> None:
    options.number(window_ms, "--window-ms", lo=0, lo_open=True, unit="ms")
    if abs(float(window_ms) - WINDOW_MS) > 1e-6:
        raise ConfigError(f"--window-ms {window_ms:g}: the model reads {WINDOW_MS:g} ms windows (8000 samples at "
                          f"16 kHz), the length it was trained on; choose the time step with --hop-ms")


@torch.no_grad()
def predict_windows(model: torch.nn.Module, windows: np.ndarray, device, batch: int = 256) -> np.ndarray:
    """Model output of each binaural window (W, 2, 8000) at 16 kHz, float32: (W, 2) = (x, y)
    for the paper's target, (W, outputs) for others."""
    from bast.pipeline.features import kinds as featurekinds
    from bast.pipeline.features.stft import FLOOR_DB

    model.eval()
    # The feature kinds the model was trained on, computed by the functions featurize used.
    kinds = featurekinds.model_features(getattr(model.cfg, "features", ()), bool(getattr(model.cfg, "phase", False)))
    out = np.zeros((len(windows), int(getattr(model.cfg, "outputs", 2))), dtype=np.float32)
    for i in range(0, len(windows), batch):
        spec = featurekinds.stacked(kinds, windows[i:i + batch], FLOOR_DB)
        x = torch.from_numpy(spec).to(device)
        out[i:i + batch] = model(model_input(x, kinds)).float().cpu().numpy()
    return out


def localize_audio(model: torch.nn.Module, path, device="cpu", hop_ms: float = 100.0,
                   window_ms: float = WINDOW_MS, target=None) -> Localization:
    """The model's azimuth (and what else its `target` predicts: elevation, class) for every
    window of one binaural file. `target`: the run's (`load_target`); None: the azimuth."""
    check_window_ms(window_ms)
    options.number(hop_ms, "--hop-ms", lo=MIN_HOP_MS, hi=MAX_HOP_MS, unit="ms")
    audio, fs_in = read_binaural(path)
    hop = max(1, int(round(hop_ms * FS / 1000.0)))
    starts = window_starts(audio.shape[1], hop)
    if starts.size == 0:
        raise DataError(f"{path}: {audio.shape[1] / FS * 1000:.0f} ms long; localize needs at least one "
                        f"{WINDOW_MS:g} ms window")
    windows = np.lib.stride_tricks.sliding_window_view(audio, CLIP_SAMPLES, axis=1)[:, starts].transpose(1, 0, 2)
    windows = np.ascontiguousarray(windows)
    levels = level_dbfs(windows)
    silent = silent_windows(levels)
    pred = np.zeros((len(windows), int(getattr(model.cfg, "outputs", 2))), dtype=np.float32)
    if (~silent).any():
        pred[~silent] = predict_windows(model, windows[~silent], device)
    columns = decoded_columns(target, pred) if target is not None else {}
    x, y = (pred[:, 0], pred[:, 1]) if target is None or "pred_x" in target.output_columns else (
        np.full(len(pred), np.nan, np.float32),) * 2  # a run that predicts no direction
    return Localization(path=str(path), fs_in=fs_in, duration_s=audio.shape[1] / FS, audio=audio,
                        start_s=starts / FS, x=x, y=y, level_dbfs=levels, silent=silent,
                        hop_ms=float(hop_ms), window_ms=float(window_ms), columns=columns)


# Columns of the predictions table that localize writes, and their names in its CSV.
LOCALIZE_COLUMNS = {"pred_elevation_deg": "elevation_deg", "pred_category": "category"}


def decoded_columns(target, pred: np.ndarray) -> dict[str, np.ndarray]:
    """What `target` predicts beyond (x, y), per window: elevation_deg, category."""
    out = torch.from_numpy(pred)
    dummy = target.encode(torch.zeros((len(pred), *target.label_shape)))  # decode wants a truth; unused here
    decoded = target.decode(out, dummy)
    return {name: np.asarray(decoded[key]) for key, name in LOCALIZE_COLUMNS.items() if key in decoded}


def load_target(run_dir):
    """The target a run was trained on (bast/model/targets/core.py), from its best checkpoint."""
    from bast.model.runs.checkpoint import load_checkpoint
    from bast.model.runs.config import TrainConfig
    from bast.model.targets.core import target_of

    return target_of(TrainConfig.from_dict(load_checkpoint(Path(run_dir) / "checkpoints" / "best.pt")["config"]))


def check_request(run_dir, audio, out, *, hop_ms: float = 100.0, window_ms: float = WINDOW_MS) -> None:
    """What `bast-cli localize` is asked, checked before the model loads: the options in
    range and --out a folder that is neither the run nor an input (nor inside one)."""
    check_window_ms(window_ms)
    options.number(hop_ms, "--hop-ms", lo=MIN_HOP_MS, hi=MAX_HOP_MS, unit="ms")
    if not audio:
        raise ConfigError("AUDIO: name at least one binaural recording")
    options.output_dir(out, "--out", inputs=[("the run", run_dir)] + [("AUDIO", a) for a in audio])
    names = {p.name for stem in output_stems(audio) for p in (Path(out) / f"{stem}.csv", Path(out) / f"{stem}.png",
                                                                    Path(out) / f"{stem}.json")}
    for a in audio:
        if Path(a).resolve().parent == Path(out).resolve() and Path(a).name in names:
            raise ConfigError(f"--out {out}: localize would write over the input {a}; choose another folder")


def write_csv(loc: Localization, path) -> Path:
    """One row per window: CSV_FIELDS; azimuth, x, y and confidence empty where silent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    az, conf = loc.azimuth_deg, loc.confidence
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS + tuple(loc.columns))
        for i in range(loc.silent.size):
            s = bool(loc.silent[i])
            extra = ["" if s else (f"{v[i]:.2f}" if np.issubdtype(v.dtype, np.floating) else str(v[i]))
                     for v in loc.columns.values()]
            w.writerow([i, f"{loc.start_s[i]:.4f}", f"{loc.centre_s[i]:.4f}", "" if s else f"{az[i]:.2f}",
                        "" if s else f"{loc.x[i]:.5f}", "" if s else f"{loc.y[i]:.5f}", "" if s else f"{conf[i]:.4f}",
                        f"{loc.level_dbfs[i]:.2f}", int(s), *extra])
    return path


def write_summary(loc: Localization, path, extra: dict | None = None) -> Path:
    path = Path(path)
    write_json(path, {**loc.summary(), **(extra or {})}, {"circular_mean_azimuth_deg": "every window is silent", "median_confidence": "every window is silent"})
    return path


def output_stems(paths) -> list[str]:
    """A distinct output name per input file: its stem, with -2, -3 ... on repeats."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem or "audio"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def load_localizer(run_dir, device="auto") -> tuple[torch.nn.Module, torch.device]:
    """The best checkpoint of a run, in float32 on `device` ('auto': the GPU when there is
    one), after checking that the run was trained on the spectrograms computed here."""
    from bast.model.runs.checkpoint import load_model
    from bast.model.evaluation.evaluate import eval_device
    from bast.model.data.manifest import (check_spectrogram_params, current_spectrogram_params,
                                          window_spectrogram_params)
    from bast.model.evaluation.runs import trained_spectrogram_params
    from bast.model.runs.checkpoint import read_run_config
    from bast.model.targets.names import on_scenes

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if not (run_dir / "checkpoints" / "best.pt").exists():
        raise DataError(f"{run_dir}: no checkpoints/best.pt (a run that has not finished an epoch?)")
    trained, here = trained_spectrogram_params(run_dir), current_spectrogram_params()
    if on_scenes(config):  # trained on scenes: their length is not the window's
        trained, here = window_spectrogram_params(trained), window_spectrogram_params(here)
    check_spectrogram_params(trained, here, "audio featurized by this version of bast", run_dir)
    dev = eval_device(device)
    model, _ = load_model(run_dir, "best", dev)
    return model.float().eval(), dev
