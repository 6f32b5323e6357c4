"""`bast-cli localize` on a SELD run: a DCASE-format CSV per binaural recording (docs/seld.md).

A recording is read as for a single-source run (`bast.model.inference.localize.read_binaural`: any
format libsndfile reads, resampled to 16 kHz, exactly 2 channels, finite samples), then
treated as a scene: the whole recording's features are computed as `featurize` computes a
scene's (`featurekinds.stacked`, the run's feature kinds), windows of the run's length are
cut every 25 STFT frames plus one ending at the recording's end, exactly as evaluation cuts
scenes (bast/model/data/scenes.py), each is standardised on its own and goes through the
model in float32, and the window outputs are stitched into 100 ms label frames and decoded
as evaluation does (bast/model/evaluation/seld.py `stitch_windows`, `seld.decode`). There is no
silence rule: the model says itself when nothing sounds (no row). A run with distance
(`seld-distance`) gives each row a sixth column, the distance in cm, as evaluation's CSVs.

The features stay float32 here, where a featurized scene is stored in float16 (Stage 2's
default): the same audio gives outputs that differ by float16 rounding of the log power
(about 0.01 dB), so a track whose vector length lies within that of the 0.5 threshold
can come and go between `evaluate` and `localize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bast.conventions import FS, LABEL_HOP_S
from bast.errors import DataError
from bast.model.data.loaders import model_input
from bast.model.runs.runtime import full_precision
from bast.model.targets.adpit import decode
from bast.model.evaluation.seld import as_dcase, stitch_windows
from bast.pipeline.features.scenes import (ALIGNED_HOP, HOP, stft_label_frames, window_label_frames, window_starts)


@dataclass
class SeldLocalization:
    """What `localize_recording` found in one file: its DCASE rows and the stitched output."""

    path: str
    fs_in: int
    duration_s: float
    classes: tuple
    rows: np.ndarray  # (n, 5) DCASE rows, whole numbers: frame, class, track, azimuth, elevation[, distance cm]
    output: np.ndarray  # (label frames, tracks, classes, 3 or 4): the stitched multi-ACCDOA output
    windows: int
    window_frames: int
    info: dict = field(default_factory=dict)
    target: str = "seld"

    @property
    def label_frames(self) -> int:
        return len(self.output)

    def summary(self) -> dict:
        counts = {str(c): int((self.rows[:, 1] == k).sum()) for k, c in enumerate(self.classes)}
        return {"file": self.path, "sample_rate_in": self.fs_in, "duration_s": self.duration_s, "target": self.target,
                "window_frames": self.window_frames, "window_ms": window_ms(self.window_frames),
                "hop_ms": 1000.0 * ALIGNED_HOP * HOP / FS, "windows": self.windows,
                "label_frames": self.label_frames, "label_hop_s": LABEL_HOP_S, "rows": int(len(self.rows)),
                "rows_by_class": counts, "classes": list(self.classes),
                "frames_with_events": int(len(np.unique(self.rows[:, 0]))), **self.info}


def window_ms(frames: int) -> float:
    """The length in ms of a window of `frames` STFT frames (61 -> 500 ms)."""
    return 1000.0 * ((frames - 1) * HOP + 2 * HOP) / FS


def recording_features(model: torch.nn.Module, audio: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """The run's feature kinds of a whole recording (2, samples) at 16 kHz, as featurize
    computes a scene's: (channels, 129, frames) float32, and the kinds' names."""
    from bast.pipeline.features import kinds as featurekinds
    from bast.pipeline.features.stft import FLOOR_DB

    kinds = featurekinds.model_features(getattr(model.cfg, "features", ()), bool(getattr(model.cfg, "phase", False)))
    return featurekinds.stacked(kinds, audio[None], FLOOR_DB)[0], kinds


@torch.no_grad()
def window_outputs(model: torch.nn.Module, spec: np.ndarray, kinds, starts, length: int, target, device,
                   batch: int = 256) -> torch.Tensor:
    """The model's shaped output (W, frames, tracks, classes, 3 or 4) of the windows of `length`
    frames at `starts` of one recording's features, in float32."""
    model.eval()
    x_all = torch.from_numpy(np.ascontiguousarray(spec)).to(device)[None].unfold(-1, length, 1)[0]
    outputs = []
    with full_precision(), torch.autocast(torch.device(device).type, enabled=False):
        for a in range(0, len(starts), batch):
            pick = torch.as_tensor(starts[a:a + batch], dtype=torch.long, device=x_all.device)
            x = x_all[:, :, pick].permute(2, 0, 1, 3)  # (B, channels, 129, length)
            outputs.append(target.shaped(model(model_input(x, kinds)).float()).cpu())
    return torch.cat(outputs)


def localize_recording(model: torch.nn.Module, path, target, window_frames: int, device="cpu") -> SeldLocalization:
    """The DCASE rows of one binaural recording by a SELD run's model (its `target`,
    `window_frames` from its config). DataError naming the file when it cannot be read or
    is shorter than one window."""
    from bast.model.inference.localize import read_binaural

    from bast.pipeline.features.stft import n_frames

    audio, fs_in = read_binaural(path)
    # shorter than one window: said before the STFT, which has no frame of it to compute
    starts = window_starts(max(n_frames(audio.shape[1]), 0), window_frames, ALIGNED_HOP)
    if starts.size:
        spec, kinds = recording_features(model, audio)
        frames = spec.shape[-1]
        starts = window_starts(frames, window_frames, ALIGNED_HOP)
    if starts.size == 0:
        raise DataError(f"{path}: {audio.shape[1] / FS * 1000:.0f} ms long; this SELD run reads windows of "
                        f"{window_ms(window_frames):g} ms ({window_frames} frames), and the recording holds none")
    outputs = window_outputs(model, spec, kinds, starts, window_frames, target, device)
    firsts = [int(window_label_frames(int(s), window_frames)[0]) for s in starts]
    n_labels = int(stft_label_frames(frames)[-1]) + 1  # as evaluation counts a scene's (read_scene_shard)
    stitched = stitch_windows(outputs, [(0, f) for f in firsts], [n_labels])[0]
    return SeldLocalization(path=str(path), fs_in=fs_in, duration_s=audio.shape[1] / FS,
                            classes=tuple(target.classes), rows=as_dcase(decode(stitched)).astype(np.int64),
                            output=stitched, windows=len(starts), window_frames=window_frames, target=target.name)
