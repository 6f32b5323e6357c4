"""Training samples/s (loader + train_step) and the loader alone, for the demo's mlp and
tiny BAST (phase on, CPU): an A/B of two versions of bast on the same data, run in turn.

    git archive <commit> bast | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python benchmarks/bench_train_ab.py STAGE2 40 3
    PYTHONPATH=$PWD python benchmarks/bench_train_ab.py STAGE2 40 3

Arguments: a Stage 2 directory made with --phase, steps per measurement, repeats (best of).
"""
import sys, time, torch
import bast
from bast.model.data.loaders import Selection, make_data
from bast.model.targets.losses import make_loss
from bast.model.nets.registry import build_model
from bast.model.train import Context, NonFiniteGuard, lr_at, make_optimizer, preset, train_step
feats, steps, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(bast.__file__, torch.get_num_threads(), "threads")
for arch in ("mlp", "bast"):
    cfg = preset("tiny", arch=arch, phase=True, device="cpu")
    sel = Selection.of(feats, "train", "RI", ("logpower", "phase"))
    t0 = time.perf_counter(); data = make_data(sel, cfg.batch_size, torch.device("cpu"), 0, 8.0); load = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(arch, cfg.model); opt = make_optimizer(model, cfg); loss_fn = make_loss(cfg.loss, cfg.mix_weight)
    ctx = Context(torch.device("cpu"), None); guard = NonFiniteGuard(ctx.device)
    best = 0.0; loader_best = 0.0
    for r in range(reps):
        it = data.epoch(r); n = 0; t0 = time.perf_counter()
        for s, (x, y, _) in zip(range(steps), it):
            train_step(model, opt, x, y, loss_fn, ctx, lr_at(s, cfg, 1000), guard, s); n += len(y)
        best = max(best, n / (time.perf_counter() - t0))
        it = data.epoch(r + 10); n = 0; t0 = time.perf_counter()
        for s, (x, y, _) in zip(range(steps), it):
            n += len(y)
        loader_best = max(loader_best, n / (time.perf_counter() - t0))
    print(f"{arch}: load {load:.1f} s, loader alone {loader_best:,.0f} samples/s, training {best:,.0f} samples/s (best of {reps} x {steps} steps)")
