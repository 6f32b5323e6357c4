"""Checkpoints: what a resumed run needs, written atomically, loaded with weights_only=True;
and the trained model of a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bast import __version__
from bast.model.registry import build_model
from bast.model.config import TrainConfig
from bast.model.targets import attach, target_of


def rng_state(device: torch.device) -> dict:
    """This process's random state: the CPU generator and, on a GPU, its own device's."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_rng(saved: dict, rank: int, device: torch.device) -> bool:
    """Restore rank `rank`'s random state from a checkpoint; False when it holds none for
    this rank (a run resumed on more ranks than it started with: the caller seeds afresh).

    Checkpoints hold one state per rank (`rng`: a list). Older ones hold rank 0's CPU state
    (`rng`: a tensor) and every visible GPU's state (`cuda_rng`); of those only rank 0's,
    and only this device's GPU state where it exists, are used: never an IndexError where
    fewer GPUs are visible than when it was saved."""
    states = saved.get("rng")
    if isinstance(states, torch.Tensor):  # before per-rank states
        cuda = saved.get("cuda_rng") or []
        index = device.index or 0
        states = [{"cpu": states, "cuda": cuda[index] if device.type == "cuda" and index < len(cuda) else None}]
    if not states or rank >= len(states):
        return False
    state = states[rank]
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    return True


def save_checkpoint(path: Path, model, optimizer, cfg: TrainConfig, epoch: int, step: int, best: float,
                    rng: list | None = None) -> None:
    """Everything a resumed run needs, written atomically; loads with weights_only=True.
    `rng`: every rank's `rng_state` (default: this process's alone)."""
    state = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": cfg.to_dict(),  # plain types: the model config as a dict
        "epoch": epoch,  # epochs completed
        "step": step,
        "best_val": best,
        "rng": rng if rng is not None else [rng_state(next(_unwrap(model).parameters()).device)],
        "bast_version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_model(run_dir, which: str = "best", device="cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The trained model of a run directory, in eval mode, and its training config."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt", map_location=device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = attach(build_model(cfg.arch, cfg.model), target_of(cfg)).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def _unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
