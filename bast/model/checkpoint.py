"""Checkpoints: what a resumed run needs, written atomically, loaded with weights_only=True;
and the trained model of a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bast import __version__
from bast.model.bast import BAST, BASTConfig
from bast.model.config import TrainConfig


def save_checkpoint(path: Path, model, optimizer, cfg: TrainConfig, epoch: int, step: int, best: float) -> None:
    """Everything a resumed run needs, written atomically; loads with weights_only=True."""
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": cfg.to_dict(),
        "epoch": epoch,  # epochs completed
        "step": step,
        "best_val": best,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "bast_version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(run_dir, which: str = "best", device="cpu") -> tuple[BAST, TrainConfig]:
    """The trained model of a run directory, in eval mode, and its training config."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt", map_location=device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = BAST(BASTConfig(**cfg.model)).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def _unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
