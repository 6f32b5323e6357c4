"""Stage 3 speed: the loader alone against training, per preset; MFU on a GPU.

    python benchmarks/bench_train.py FEATURES_DIR [--presets tiny,paper] [--steps 20]

Loader: batches of the resident loader (standardised on the device), no model. Training:
forward + backward + Adam step of the preset's model on those batches (bf16 autocast on a
GPU). On CUDA it also reports the model FLOPs per sample (torch's FLOP counter, forward +
backward), the achieved TFLOP/s, its share of the GPU's bf16 dense peak (MFU) and the
projected time of a 50-epoch paper run on 248,400 training samples.
"""

from __future__ import annotations

import argparse
import time

import torch

from bast.model.data import ResidentData, Selection
from bast.model.bast import BAST, BASTConfig, count_parameters
from bast.model.losses import make_loss
from bast.model.train import preset

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("features")
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}")
    sel = Selection.of(args.features, "train", "RI")
    for preset_name in args.presets.split(","):
        cfg = preset(preset_name)
        batch = cfg.batch_size if device.type == "cuda" or preset_name != "paper" else 4
        data = ResidentData(sel, batch, device, seed=0)
        # Loader alone.
        it, n, t0 = data.epoch(0), 0, time.perf_counter()
        for _ in range(min(args.steps * 5, len(data))):
            x, y, _ = next(it)
            n += len(y)
        sync(device)
        loader_rate = n / (time.perf_counter() - t0)
        # Training steps.
        model = BAST(BASTConfig(**cfg.model)).to(device)
        net = torch.compile(model) if args.compile else model
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        loss_fn = make_loss(cfg.loss)
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        batches = [b for _, b in zip(range(args.steps + 3), data.epoch(1))]

        def step(x, y):
            with amp:
                pred = net(x)
            loss = loss_fn(pred.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for x, y, _ in batches[:3]:  # warm-up (and compilation)
            step(x, y)
        sync(device)
        t0 = time.perf_counter()
        for x, y, _ in batches[3:]:
            step(x, y)
        sync(device)
        train_rate = len(batches[3:]) * batch / (time.perf_counter() - t0)
        print(f"{preset_name}: {count_parameters(model):,} parameters, batch {batch}: loader {loader_rate:,.0f} "
              f"samples/s, training {train_rate:,.1f} samples/s, loader/training {loader_rate / train_rate:,.0f}x")
        if device.type == "cuda":
            from torch.utils.flop_counter import FlopCounterMode

            x, y, _ = batches[0]
            with FlopCounterMode(display=False) as counter:
                step(x, y)
            per_sample = counter.get_total_flops() / len(y)
            peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
            achieved = per_sample * train_rate / 1e12
            mfu = f", MFU {achieved / peak:.1%} of {peak:.0f} TFLOP/s bf16" if peak else ""
            epoch_s = 248_400 / train_rate
            print(f"  {per_sample / 1e9:.1f} GFLOP per training sample, {achieved:.0f} TFLOP/s{mfu}; "
                  f"50 epochs of 248,400 samples: {50 * epoch_s / 3600:.1f} h")


if __name__ == "__main__":
    main()
