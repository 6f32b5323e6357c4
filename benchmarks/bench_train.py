"""Stage 3 speed: the loader and the real training step, per preset; MFU on a GPU.

    python benchmarks/bench_train.py FEATURES_DIR [--presets tiny,paper] [--model bast] [--phase]
                                     [--steps 20] [--compile] [--amp auto|bf16|none] [--memory-budget-gb 8]

Loader: batches of the loader training would use (`make_data`: resident or streaming),
standardised on the device, no model. Training: `bast.model.train.train_step`, the loop's
own step (learning-rate update, autocast forward, loss, the on-device NaN bookkeeping,
backward, Adam, fused on a GPU), with the loop's periodic NaN check, timed between two
device syncs. Validation: `evaluate` on the val split as the loop runs it (training
precision). Reports samples/s, the model FLOPs per sample (torch's FLOP counter on the
eager model, forward + backward, attention counted through its matmuls: torch does not
count a compiled graph nor the CPU's fused attention kernel), the achieved TFLOP/s and, on
a GPU whose dense peak for the precision used is known by name, the MFU; and the projected
hours of 50 paper epochs on 331,200 * 0.75 = 248,400 training samples, with their
validation on 331,200 * 0.25 * 0.75 = 62,100 samples (--val-every 1).
"""

from __future__ import annotations

import argparse
import time

import torch

from bast.model.nets.bast import count_parameters
from bast.model.nets.registry import build_model
from bast.model.data.loaders import EvalData, Selection, make_data
from bast.model.evaluation.evaluate import evaluate
from bast.model.targets.losses import make_loss
from bast.model.runs.runtime import resolve_device
from bast.model.train import Context, NonFiniteGuard, autocast, lr_at, make_optimizer, preset, train_step

# Dense (not 2:4 sparse) tensor-core peaks in TFLOP/s by precision (bf16, TF32, plain
# float32), by words of torch.cuda.get_device_name(); the first row whose words all occur
# wins, so the specific parts come before the general ones. (Vendors' data sheets.)
PEAK_TFLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("h100", "nvl"), {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (("h100", "pcie"), {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (("h100",), {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM ("NVIDIA H100 80GB HBM3")
    (("h200", "nvl"), {"bf16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (("h200",), {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),  # SXM, and GH200
    (("h800", "pcie"), {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (("h800",), {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}),
    (("a100",), {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),  # SXM and PCIe
    (("a800",), {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (("l40s",), {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (("rtx 4090",), {"bf16": 165.0, "tf32": 82.6, "fp32": 82.6}),  # bf16 with fp16 accumulation
]

PAPER_TRAIN_SAMPLES = int(331_200 * 0.75)  # 248,400
PAPER_VAL_SAMPLES = int(331_200 * 0.75 * 0.25)  # 62,100: a quarter of the training sounds


def peak_tflops(device_name: str, precision: str = "bf16") -> float | None:
    """The dense peak of a GPU by its name for `precision` (bf16, tf32 or fp32); None when
    unknown (MFU not computed)."""
    name = device_name.lower()
    return next((peaks[precision] for words, peaks in PEAK_TFLOPS if all(w in name for w in words)), None)


def peak_bf16_tflops(device_name: str) -> float | None:
    return peak_tflops(device_name, "bf16")


def projected_hours(samples_per_s: float, epochs: int = 50, train_samples: int = PAPER_TRAIN_SAMPLES,
                    val_samples_per_s: float | None = None, val_samples: int = PAPER_VAL_SAMPLES,
                    val_every: int = 1) -> float:
    """Hours of `epochs` epochs of `train_samples` samples at `samples_per_s`, plus, when
    `val_samples_per_s` is given, a validation of `val_samples` every `val_every` epochs."""
    seconds = epochs * train_samples / samples_per_s
    if val_samples_per_s:
        seconds += -(-epochs // val_every) * val_samples / val_samples_per_s
    return seconds / 3600


def mfu(flop_per_sample: float, samples_per_s: float, peak_tflops: float | None) -> float | None:
    """Achieved model FLOP/s as a share of the peak; None when the peak is unknown."""
    return None if not peak_tflops else flop_per_sample * samples_per_s / (peak_tflops * 1e12)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("features")
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--model", default="bast", help="bast, mlp, cnn or ast")
    parser.add_argument("--phase", action="store_true", help="with the interaural phase (featurize --phase)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "none"))
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    args = parser.parse_args()
    available = torch.cuda.is_available()
    device, _ = resolve_device("auto", 0, 1, available, torch.cuda.device_count() if available else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}")
    sel = Selection.of(args.features, "train", "RI", ("logpower", "phase") if args.phase else ("logpower",))
    val_sel = Selection.of(args.features, "val", "RI", ("logpower", "phase") if args.phase else ("logpower",))
    for preset_name in args.presets.split(","):
        cfg = preset(preset_name, arch=args.model, phase=args.phase, amp=args.amp,
                     memory_budget_gb=args.memory_budget_gb)
        batch = cfg.batch_size if device.type == "cuda" or preset_name != "paper" else 4
        use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
        tf32 = device.type == "cuda" and not use_bf16
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        ctx = Context(device, torch.bfloat16 if use_bf16 else None, tf32=tf32)
        kind = "bf16" if use_bf16 else "tf32" if tf32 else "fp32"
        peak = peak_tflops(name, kind) if device.type == "cuda" else None
        data = make_data(sel, batch, device, 0, cfg.memory_budget_gb)
        # The loader alone.
        it, n, t0 = data.epoch(0), 0, time.perf_counter()
        for _ in range(min(args.steps * 5, len(data))):
            x, y, _ = next(it)
            n += len(y)
        sync(device)
        loader_rate = n / (time.perf_counter() - t0)
        it.close()
        # The loop's training step.
        torch.manual_seed(0)
        model = build_model(cfg.arch, cfg.model).to(device)
        net = torch.compile(model) if args.compile else model
        optimizer = make_optimizer(model, cfg)
        loss_fn = make_loss(cfg.loss, cfg.mix_weight)
        guard = NonFiniteGuard(device)
        batches = [b for _, b in zip(range(args.steps + 3), data.epoch(1))]
        total = cfg.epochs * len(data)
        step = 0

        def run(x, y):
            nonlocal step
            train_step(net, optimizer, x, y, loss_fn, ctx, lr_at(step, cfg, total), guard, step)
            step += 1
            if guard.due(step):
                guard.check(ctx, 0, "(benchmark)")

        for x, y, _ in batches[:3]:  # warm-up (and compilation)
            run(x, y)
        sync(device)
        t0 = time.perf_counter()
        for x, y, _ in batches[3:]:
            run(x, y)
        guard.check(ctx, 0, "(benchmark)")  # the loop's end-of-epoch check: a sync
        sync(device)
        train_rate = len(batches[3:]) * batch / (time.perf_counter() - t0)
        precision = "bf16 autocast" if use_bf16 else "float32" + (" (TF32)" if tf32 else "")
        # Validation as the loop runs it: the bare model, the training precision, the val split.
        val = EvalData(val_sel, cfg.eval_batch_size, device, cfg.memory_budget_gb, prepared=True)
        evaluate(model, val, ctx, loss_fn, training_precision=True)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        evaluate(model, val, ctx, loss_fn, training_precision=True)
        sync(device)
        val_rate = len(val) / (time.perf_counter() - t0)
        print(f"{preset_name}: {count_parameters(model):,} parameters, batch {batch}, {precision}, "
              f"{type(data).__name__}: loader {loader_rate:,.0f} samples/s, training {train_rate:,.1f} samples/s, "
              f"loader/training {loader_rate / train_rate:,.1f}x; validation {val_rate:,.0f} samples/s "
              f"({len(val) / val_rate:.2f} s for {len(val):,} samples, {len(val) / val_rate / (len(data) * batch / train_rate):.0%} "
              "of a training epoch here)")
        per_sample = flops_per_sample(model, optimizer, loss_fn, ctx, batches[0])
        achieved = per_sample * train_rate / 1e12
        share = mfu(per_sample, train_rate, peak)
        print(f"  {per_sample / 1e9:.2f} GFLOP per training sample, {achieved:.2f} TFLOP/s"
              + (f", MFU {share:.1%} of {peak:.0f} TFLOP/s dense {kind}" if share is not None else
                 ", MFU not computed (unknown peak)" if device.type == "cuda" else "")
              + f"; 50 epochs of {PAPER_TRAIN_SAMPLES:,} samples with validation of {PAPER_VAL_SAMPLES:,}: "
              f"{projected_hours(train_rate, val_samples_per_s=val_rate):.1f} h "
              f"(training alone {projected_hours(train_rate):.1f} h)")


def flops_per_sample(model, optimizer, loss_fn, ctx, batch) -> float:
    """Forward + backward FLOPs of one training sample, counted on the eager model (torch's
    counter sees no FLOPs inside a compiled graph) with attention on the math path (the
    CPU's fused attention kernel has no FLOP formula); the optimizer step is not counted."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x, y, _ = batch
    model.train()
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        with autocast(ctx):
            pred = model(x)
        loss_fn(pred.float(), y).backward()
    optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(y)


if __name__ == "__main__":
    main()
