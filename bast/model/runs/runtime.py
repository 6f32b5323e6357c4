"""Where a process trains or evaluates: device, precision, and its place among DDP ranks.

`resolve_device` and `describe` are pure functions (tested without a GPU); `setup` applies
them to this process."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bast.errors import ConfigError
from bast.model.runs.config import TrainConfig


@dataclass
class Context:
    """Where this process trains: device, autocast, and its place among DDP ranks."""

    device: torch.device
    amp_dtype: torch.dtype | None
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    tf32: bool = False  # TF32 matmuls / convolutions in float32 training and validation (never in the test)
    compile: bool = False  # torch.compile the training model (the setting resolved for this device)
    compile_mode: str = "default"  # torch.compile's mode (reduce-overhead: CUDA graphs)
    device_note: str = ""  # why this device (e.g. "--device auto: CUDA is not available")

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0, world: int = 1, cuda_available: bool = False,
                   device_count: int = 0) -> tuple[torch.device, str]:
    """The device of this rank for `--device spec`, and a note saying why.

    auto: cuda:LOCAL_RANK when CUDA is available, else the CPU (said in the note); cuda:
    cuda:LOCAL_RANK; cuda:N: that GPU, refused under torchrun with several ranks (every rank
    would share it). CUDA asked for but not available is a ConfigError, never a fallback."""
    if spec == "cpu":
        return torch.device("cpu"), ""
    if spec == "auto":
        if not cuda_available:
            return torch.device("cpu"), "--device auto: CUDA is not available"
        spec = "cuda"
    if spec != "cuda" and not re.fullmatch(r"cuda:\d+", spec):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {spec!r}")
    if not cuda_available:
        raise ConfigError(f"--device {spec}: CUDA is not available (torch {torch.__version__}"
                          f"{', built without CUDA' if torch.version.cuda is None else ', no GPU visible'}); "
                          "use --device cpu or auto")
    if spec == "cuda":
        index, note = local_rank, (f"LOCAL_RANK {local_rank}" if world > 1 else "")
    else:
        if world > 1:
            raise ConfigError(f"--device {spec} under torchrun would put all {world} ranks on one GPU; "
                              "use --device cuda (rank r takes cuda:LOCAL_RANK) and CUDA_VISIBLE_DEVICES "
                              "to choose the GPUs")
        index, note = int(spec.split(":")[1]), ""
    if index >= device_count:
        raise ConfigError(f"--device {spec}: GPU {index} asked for, {device_count} visible"
                          + (" (more ranks on this node than GPUs?)" if world > 1 else ""))
    return torch.device("cuda", index), note


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s random stream (dropout): rank 0 keeps `seed`."""
    return seed + 104_729 * rank


def deterministic_env(device_type: str, environ=os.environ) -> None:
    """cuBLAS needs a fixed workspace for deterministic GEMMs: without
    CUBLAS_WORKSPACE_CONFIG, `use_deterministic_algorithms(True)` makes the first CUDA
    matmul raise. Set before the first cuBLAS call; a value already set is kept."""
    if device_type == "cuda":
        environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def setup(cfg: TrainConfig) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    available = torch.cuda.is_available()
    device, note = resolve_device(cfg.device, local_rank, world, available,
                                  torch.cuda.device_count() if available else 0)
    if cfg.deterministic:
        deterministic_env(device.type)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    tf32 = device.type == "cuda" and not use_bf16
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # float32 training on TF32 tensor cores (10-bit mantissa products, float32
        # accumulation); evaluation turns it off again (`full_precision`).
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank; train() then seeds per rank
    # By name: passed by position, the note landed in `compile` (a CPU run under --device
    # auto was compiled, and config.json's "compiled" held the note).
    return Context(device, torch.bfloat16 if use_bf16 else None, rank=rank, world=world, local_rank=local_rank,
                   tf32=tf32, compile=compile_default(cfg.compile, device.type), compile_mode=cfg.compile_mode,
                   device_note=note)


def compile_default(setting: bool | None, device_type: str) -> bool:
    """--compile / --no-compile as given; unset: on a GPU, off on a CPU."""
    return setting if setting is not None else device_type == "cuda"


def autocast(ctx: Context):
    return torch.autocast(ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None)


@contextlib.contextmanager
def full_precision():
    """float32 without TF32 (matmul and cuDNN), whatever training set: evaluation in every
    process (final test, `bast-cli report`) computes the same numbers."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def describe(ctx: Context, cfg: TrainConfig, data, per_rank_batch: int, device_name: str = "") -> str:
    """What training prints at start: device, precision, loader mode and why, batch per rank."""
    where = f"{ctx.device}" + (f" ({device_name})" if device_name else "") + (f"; {ctx.device_note}" if ctx.device_note else "")
    if ctx.world > 1:
        where += f"; {ctx.world} ranks"
    if ctx.amp_dtype is not None:
        precision = f"{str(ctx.amp_dtype).removeprefix('torch.')} autocast (float32 weights and optimizer)"
    else:
        precision = "float32" + (", TF32 matmuls on" if ctx.tf32 else (", TF32 off" if ctx.device.type == "cuda" else ""))
    if ctx.amp_dtype is None and not ctx.tf32:
        precision += "; evaluation in float32"
    else:  # validation only picks the best epoch; the test is the judgement
        precision += "; validation the same, the final test and evaluate in float32"
    if cfg.val_every > 1:
        precision += f"; validation every {cfg.val_every} epochs"
    if ctx.compile:
        precision += "; torch.compile" + (f" (mode {ctx.compile_mode})" if ctx.compile_mode != "default" else "")
    if cfg.deterministic:
        precision += "; deterministic algorithms"
    share_gb = getattr(data, "share_bytes", 0) / 1e9
    if hasattr(data, "describe"):  # a loader that says what it is (training on the fly)
        loader = data.describe()
    elif getattr(data, "resident", True):
        loader = (f"resident: {share_gb:.2f} GB per rank on {ctx.device}, within --memory-budget-gb "
                  f"{cfg.memory_budget_gb:g}; a full shuffle each epoch")
    else:
        loader = (f"streaming: {share_gb:.2f} GB per rank exceeds --memory-budget-gb {cfg.memory_budget_gb:g}; "
                  f"shuffled within a window of {data.window:,} samples across shards (weaker than a full "
                  "shuffle; raise --memory-budget-gb if the data fit)")
    batch = f"{per_rank_batch} per rank" + (f" x {ctx.world} ranks = {per_rank_batch * ctx.world}" if ctx.world > 1 else "")
    return f"device: {where}\nprecision: {precision}\nloader: {loader}\nbatch: {batch}, {len(data)} steps per epoch"
