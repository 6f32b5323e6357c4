"""Checkpoints: what a resumed run needs, written atomically, loaded with weights_only=True;
the trained model of a run directory; and the readers of a run's other records
(config.json, metrics.jsonl) that name a torn file and what rewrites it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from bast import __version__
from bast.errors import DataError, MissingError, TrainingError
from bast.model.nets.registry import build_model
from bast.model.runs.config import TrainConfig
from bast.model.targets.core import attach, target_of

# What every checkpoint bast writes holds (older ones too).
CHECKPOINT_KEYS = frozenset({"model", "optimizer", "config", "epoch", "step", "best_val"})


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
                    rng: list | None = None, best_epoch: int | None = None) -> None:
    """Everything a resumed run needs, written atomically; loads with weights_only=True.
    `rng`: every rank's `rng_state` (default: this process's alone); `best_epoch`: the
    epoch whose weights best.pt holds (a resumed run repairs best.pt from it)."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": cfg.to_dict(),  # plain types: the model config as a dict
        "epoch": epoch,  # epochs completed
        "step": step,
        "best_val": best,
        "best_epoch": best_epoch,
        "rng": rng if rng is not None else [rng_state(next(unwrap(model).parameters()).device)],
        "bast_version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes on disk before the rename makes them the checkpoint
        os.replace(tmp, path)
    except OSError as exc:  # disk full, or the folder gone: the old checkpoint stands
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"could not write {path} ({exc.strerror or exc}); the checkpoint there before is "
                            "intact: free space and continue with `bast-cli train FEATURES --out RUN --resume`") from None
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save leaves the old checkpoint, no debris
        raise


def copy_checkpoint(src: Path, dst: Path) -> None:
    """`dst` becomes a copy of `src`, atomically (best.pt from last.pt: the same bytes)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with open(src, "rb") as a, open(tmp, "wb") as b:
            while block := a.read(1 << 22):
                b.write(block)
            b.flush()
            os.fsync(b.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TrainingError(f"could not write {dst} ({exc.strerror or exc}); free space and continue with "
                            "`bast-cli train FEATURES --out RUN --resume`, which rewrites it") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_leftovers(ckpt_dir: Path) -> None:
    """Delete the temporary files of a save that a kill or a full disk interrupted."""
    for tmp in Path(ckpt_dir).glob(".*.pt.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """A bast checkpoint, loaded with weights_only=True (tensors and plain types only: a
    file that would run code when unpickled is refused, never executed). A missing,
    truncated or foreign file is a DataError naming it and saying what writes it."""
    path = Path(path)
    writes = ("`bast-cli train` writes it (--resume continues a run from checkpoints/last.pt; "
              "a damaged last.pt means training again with another --out)")
    if not path.is_file():
        raise MissingError(f"{path}: no such checkpoint; {writes}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever torch makes of foreign bytes is one answer
        # torch's own message advises weights_only=False, which would run the file's code: not repeated.
        if "weights_only" in str(exc) or "Unpickler" in type(exc).__name__ or "Unpickling" in type(exc).__name__:
            raise DataError(f"{path} is not a bast checkpoint: it holds objects other than tensors and plain "
                            f"values (a pickle that may run code); it was not loaded. {writes}") from None
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"{path}: truncated or corrupt checkpoint ({reason}); {writes}") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise DataError(f"{path} is not a bast checkpoint (it lacks "
                        f"{', '.join(sorted(CHECKPOINT_KEYS - set(state))) if isinstance(state, dict) else 'a dict'}); "
                        f"{writes}")
    return state


def read_run_config(run_dir) -> dict:
    """A run's config.json; a missing or torn one is an error naming the file."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise MissingError(f"{run_dir} is not a run directory (no config.json; bast-cli train --out makes one)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: torn or not JSON ({exc}); `bast-cli train FEATURES --out {run_dir} --resume` "
                        "rewrites it") from None
    if not isinstance(config, dict):
        raise DataError(f"{path} is not a run's config (not a JSON object); `bast-cli train FEATURES --out "
                        f"{run_dir} --resume` rewrites it")
    return config


def read_metrics(run_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] when there is none); a torn line (a run killed
    while writing it) is an error naming the file and the line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise DataError(f"{path}: line {number} is torn (a run killed while writing it?); "
                            f"`bast-cli train FEATURES --out {run_dir} --resume` rewrites it") from None
    return rows


def load_model(run_dir, which: str = "best", device="cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The trained model of a run directory, in eval mode, and its training config."""
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / f"{which}.pt", map_location=device)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = attach(build_model(cfg.arch, cfg.model), target_of(cfg)).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
