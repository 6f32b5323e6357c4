"""How close a SELD run's outputs come to detecting: the lengths of its stitched track
vectors (x, y, z) on a Stage 2's test scenes, which `decode` counts as active above 0.5
(docs/seld.md, "With distance: a fixed set against scenes on the fly": why `seldnet` with distance detects nothing).

    python benchmarks/seld_activity.py RUN STAGE2

Prints the quantiles (50, 90, 99, 99.9 %, largest) of the vector lengths over every label
frame, track and class, and for a distance run those of its distance output (m).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bast.model.data.loaders import Selection
from bast.model.data.manifest import features_manifest
from bast.model.data.scenes import SceneWindows
from bast.model.evaluation.runs import _eval_shards
from bast.model.evaluation.seld import predict_windows, stitch
from bast.model.runs.checkpoint import load_model
from bast.model.targets.core import target_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("stage2", type=Path)
    args = ap.parse_args()
    stage2 = args.stage2.resolve()
    model, cfg = load_model(args.run, "best", torch.device("cpu"))
    sel = Selection(stage2, _eval_shards(features_manifest(stage2), stage2, "test", None), cfg.model.features).verify()
    target = target_of(cfg)
    data = SceneWindows(sel, cfg.window_frames, len(target.classes), torch.device("cpu"), batch_size=64,
                        distance=target.distance)
    outputs, _ = predict_windows(model, data, target)
    out = np.concatenate(stitch(outputs, data))  # (label frames, tracks, classes, 3 or 4)
    q = (0.5, 0.9, 0.99, 0.999, 1.0)
    lengths = np.linalg.norm(out[..., :3], axis=-1)
    print(f"{args.run}: track vector lengths, quantiles {q}: {np.quantile(lengths, q).round(3).tolist()} "
          f"({(lengths > 0.5).sum()} of {lengths.size} above 0.5)")
    if out.shape[-1] == 4:
        print(f"distance output (m), quantiles (0.01, 0.5, 0.99): {np.quantile(out[..., 3], (0.01, 0.5, 0.99)).round(3).tolist()}")


if __name__ == "__main__":
    main()
