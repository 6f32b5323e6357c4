"""`bast-cli`: a thin command line over the bast library."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from bast import __version__

app = typer.Typer(
    help="Binaural sound localization with BAST: spatialize -> featurize -> train -> report.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole, to copy

@app.command()
def spatialize(
    source: Annotated[str, typer.Argument(help="A folder of sounds (searched recursively), a CSV manifest with a 'path' column, or 'default' for the procedural corpus.")],
    out: Annotated[Path, typer.Argument(help="Output directory (Stage 1 shards).")],
    test: Annotated[Optional[Path], typer.Option(help="Folder or CSV of independent test sounds (else --test-fraction of SOURCE).")] = None,
    sounds: Annotated[int, typer.Option(help="Procedural corpus: number of sounds.")] = 200,
    speech: Annotated[Optional[bool], typer.Option("--speech/--no-speech", help="Procedural corpus: include espeak-ng speech (default: when installed).")] = None,
    env: Annotated[str, typer.Option(help="Environments: anechoic, hall, or both (aliases RI01, RI02, RI).")] = "RI",
    azimuths: Annotated[str, typer.Option(help="Azimuths in degrees: start:stop:step or a list (SOFA: 90 = left).")] = "0:360:10",
    hrir: Annotated[Optional[Path], typer.Option(help="SOFA HRIR set (default: bundled MIT KEMAR).")] = None,
    brir: Annotated[Optional[Path], typer.Option(help="Measured BRIR SOFA file for the hall (default: simulated hall).")] = None,
    rt60: Annotated[float, typer.Option(help="Simulated hall: RT60 in seconds.")] = 0.8,
    ir_tolerance: Annotated[float, typer.Option(help="Largest angle (deg) between a requested azimuth and the IR used.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (splits, corpus, hall tail).")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of the training sounds held out for validation.")] = 0.25,
    test_fraction: Annotated[float, typer.Option(help="Share of the sounds held out for test when --test is not given.")] = 0.1,
    min_ms: Annotated[float, typer.Option(help="Clips shorter than this are skipped; shorter than 500 ms are zero-padded (centred).")] = 100.0,
    long: Annotated[str, typer.Option(help="Clips longer than 500 ms: 'loudest' 500 ms window, or 'split' into several clips.")] = "loudest",
    normalize: Annotated[str, typer.Option(help="Level of each clip: 'rms' (-20 dBFS), 'peak', or 'none'.")] = "rms",
    samples_per_shard: Annotated[int, typer.Option(help="Target samples per HDF5 shard.")] = 2500,
    workers: Annotated[Optional[int], typer.Option(help="Local dask worker processes (default: one per core; 0: run in this process).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing dask scheduler, e.g. tcp://host:8786.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an output directory made with other parameters.")] = False,
    examples: Annotated[int, typer.Option(help="Also write WAV files of this many clips at 0/90/180/270 deg, for listening.")] = 0,
) -> None:
    """Stage 1: render mono sounds to binaural clips at every azimuth in every environment.

    Writes OUT/shards/*.h5 (audio, azimuth_deg, env, clip_id, split, category),
    OUT/manifest.json, OUT/failures.jsonl and the IRs used (OUT/irs/*.sofa). A re-run
    resumes; exit status 0 = every input rendered, 3 = done but some inputs were skipped
    (listed in failures.jsonl), 1 = error.
    """
    from bast.datasets.base import RECIPES
    from bast.pipeline import cluster
    from bast.pipeline.clips import ClipPolicy
    from bast.pipeline.irs import parse_azimuths, parse_environments
    from bast.pipeline.shards import StageError
    from bast.pipeline.sofa import SofaError
    from bast.pipeline.spatialize import SpatializeConfig, spatialize as run, write_examples

    try:
        ignored: list[str] = []
        notes: list[str] = []  # e.g. duplicate manifest rows skipped
        if source in RECIPES and source != "files":
            corpus = RECIPES[source](n_clips=sounds, seed=seed, speech=speech)
            source_info = {"recipe": source, "sounds": sounds, "seed": seed, "speech": speech,
                           "test": str(test.resolve()) if test else None}
            refs = corpus.list_clips()
            if test:  # e.g. train on procedural sounds, test on recorded ones
                from bast.datasets.files import test_clips

                refs = test_clips(test, refs, ignored, notes)
        else:
            corpus = RECIPES["files"](source, test=test)
            source_info = {"recipe": "files", "source": str(Path(source).resolve()),
                           "test": str(test.resolve()) if test else None}
            refs = corpus.list_clips()
            ignored, notes = corpus.ignored, corpus.warnings
        for note in notes:
            console.print(f"[yellow]note:[/] {note}")
        config = SpatializeConfig(
            azimuths=tuple(float(a) for a in parse_azimuths(azimuths)),
            environments=parse_environments(env),
            policy=ClipPolicy(min_ms=min_ms, long=long, normalize=normalize),
            seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
            samples_per_shard=samples_per_shard,
            hrir=str(hrir) if hrir else None, brir=str(brir) if brir else None,
            rt60_s=rt60, tolerance_deg=ir_tolerance,
        )
        console.print(f"{len(refs)} sounds from {source}" + (f" ({len(ignored)} non-audio files ignored)" if ignored else "")
                      + f"; {len(config.azimuths)} azimuths x {len(config.environments)} environments")
        with cluster.open_client(workers, scheduler) as client, _progress("rendering") as (progress, task):
            where = "in this process" if client is None else f"on dask ({len(client.scheduler_info()['workers'])} workers)"
            progress.console.print(f"running {where}")

            def on_start(total, resumed):
                progress.update(task, total=total, completed=resumed)
                if resumed:
                    progress.console.print(f"resuming: {resumed} samples already written")

            summary = run(refs, out, config, client=client, source=source_info, overwrite=overwrite,
                          on_start=on_start, on_shard=lambda info, planned: progress.advance(task, planned))
        if examples:
            written = write_examples(out, examples)
            console.print(f"{len(written)} example WAV files in {out / 'examples'}")
    except (StageError, SofaError, ValueError, RuntimeError, FileNotFoundError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    _print_summary(summary, out)
    raise typer.Exit(3 if summary.failures else 0)


def _print_summary(summary, out: Path) -> None:
    rate = f"{summary.samples_per_s:,.0f} samples/s" if summary.shards_written else "nothing to do"
    console.print(
        f"[bold green]done[/]: {summary.samples:,} samples from {summary.clips:,} clips in "
        f"{summary.shards_written + summary.shards_resumed} shards ({summary.shards_resumed} resumed), "
        f"{summary.seconds:.1f} s, {rate}"
    )
    for text, count in sorted(summary.warnings.items()):
        console.print(f"[yellow]warning[/]: {count} x {text}")
    if summary.failures:
        reasons: dict = {}
        for f in summary.failures:
            key = f["reason"].split(":")[0].split("(")[0].strip()
            reasons[key] = reasons.get(key, 0) + 1
        t = Table(title=f"{len(summary.failures)} inputs skipped (details: {out / 'failures.jsonl'})")
        t.add_column("reason")
        t.add_column("inputs", justify="right")
        for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
            t.add_row(reason, str(count))
        console.print(t)
    console.print(f"manifest: {out / 'manifest.json'}")


@contextlib.contextmanager
def _progress(what: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeRemainingColumn)

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return f"{speed:,.0f} samples/s" if speed else ""

    with Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                  Rate(""), TimeRemainingColumn(), console=console, transient=False) as progress:
        yield progress, progress.add_task(what, total=None)


@app.command()
def featurize(
    stage1: Annotated[Path, typer.Argument(help="A Stage 1 output directory (bast-cli spatialize).")],
    out: Annotated[Path, typer.Argument(help="Output directory (Stage 2 shards).")],
    dtype: Annotated[str, typer.Option(help="Storage type of the dB spectrograms: float16 (31 KB a sample) or float32.")] = "float16",
    workers: Annotated[Optional[int], typer.Option(help="Local dask worker processes (default: one per core; 0: run in this process).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing dask scheduler, e.g. tcp://host:8786.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an output directory made with other parameters.")] = False,
) -> None:
    """Stage 2: binaural clips to 2 x 129 x 61 log-power spectrograms (Tukey STFT) in sharded HDF5.

    Writes OUT/shards/*.h5 (spec in dB before standardisation, and the Stage 1 labels),
    OUT/manifest.json (STFT parameters, the standardisation to apply) and
    OUT/failures.jsonl. A re-run resumes. Exit status 0 = done, 3 = done but some samples
    were skipped, 1 = error.
    """
    from bast.pipeline import cluster
    from bast.pipeline.featurize import featurize as run, read_stage1
    from bast.pipeline.shards import StageError

    try:
        read_stage1(stage1)  # a wrong input is reported before any cluster starts
        with cluster.open_client(workers, scheduler) as client, _progress("featurizing") as (progress, task):
            def on_start(total, resumed):
                progress.update(task, total=total, completed=resumed)
                if resumed:
                    progress.console.print(f"resuming: {resumed} samples already written")

            summary = run(stage1, out, dtype=dtype, client=client, overwrite=overwrite, on_start=on_start,
                          on_shard=lambda info, planned: progress.advance(task, planned))
    except (StageError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    rate = f"{summary.samples_per_s:,.0f} samples/s" if summary.shards_written else "nothing to do"
    console.print(f"[bold green]done[/]: {summary.samples:,} spectrograms in "
                  f"{summary.shards_written + summary.shards_resumed} shards ({summary.shards_resumed} resumed), "
                  f"{summary.seconds:.1f} s, {rate}")
    if summary.failures:
        console.print(f"[yellow]{len(summary.failures)} samples skipped[/] (see {out / 'failures.jsonl'})")
    console.print(f"manifest: {out / 'manifest.json'}")
    raise typer.Exit(3 if summary.failures else 0)


@app.command()
def train(
    features: Annotated[Path, typer.Argument(help="A Stage 2 output directory (bast-cli featurize).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: config, metrics.jsonl, checkpoints, eval.")],
    preset: Annotated[str, typer.Option(help="paper (GPU: D 1024, Adam 1e-4, batch 48, 50 epochs), small, or tiny (minutes on a CPU).")] = "tiny",
    loss: Annotated[Optional[str], typer.Option(help="mse, ad (angular distance) or mix (hybrid).")] = None,
    integration: Annotated[Optional[str], typer.Option(help="How TE-C joins the ears: add, sub or concat.")] = None,
    shared: Annotated[Optional[bool], typer.Option("--shared/--no-shared", help="BAST-SP (one encoder for both ears) or BAST-NSP.")] = None,
    pos_embedding: Annotated[Optional[str], typer.Option(help="sinusoidal (paper) or learned (reference code).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    env: Annotated[Optional[str], typer.Option(help="Train on: anechoic, hall or both (RI01, RI02, RI).")] = None,
    test_env: Annotated[Optional[str], typer.Option(help="Test on: anechoic, hall or both.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop after the epoch that crosses this many minutes.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initial weights, dropout and batch order. [default: 0]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N. [default: auto]")] = None,
    amp: Annotated[Optional[str], typer.Option(help="auto (bf16 on a GPU), bf16 or none. [default: auto]")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile", help="torch.compile the model (GPU).")] = None,
    deterministic: Annotated[Optional[bool], typer.Option("--deterministic", help="Deterministic algorithms (exact resume).")] = None,
    memory_budget_gb: Annotated[Optional[float], typer.Option(help="Keep the training split on the device up to this size, else stream it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any other setting, KEY=VALUE (e.g. --set dim=128 --set dropout=0).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint, with its own settings; --epochs extends a finished run.")] = False,
) -> None:
    """Stage 3: train BAST on the train split, validate every epoch, test the best checkpoint.

    Several GPUs: torchrun --nproc_per_node N -m bast.cli train FEATURES --out RUN ...
    """
    from bast.model.train import TrainingError, preset as make_preset, train as run

    given = {"loss": loss, "integration": integration, "shared": shared, "pos_embedding": pos_embedding,
             "epochs": epochs, "batch_size": batch_size, "lr": lr, "train_env": env, "test_env": test_env,
             "max_minutes": max_minutes, "memory_budget_gb": memory_budget_gb, "seed": seed, "device": device,
             "amp": amp, "compile": compile, "deterministic": deterministic}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        for item in set_ or []:
            key, _, value = item.partition("=")
            overrides[key.strip()] = _parse_value(value.strip())
        # A resumed run keeps its settings; train() names any that cannot change.
        resume_changes = overrides if resume else None
        cfg = make_preset(preset, **({} if resume else overrides))
        main_rank = int(__import__("os").environ.get("RANK", "0")) == 0
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]epoch"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                      TimeElapsedColumn(), console=console, transient=True, disable=not main_rank) as progress:
            bar = progress.add_task("epoch", total=None)

            def on_step(done, total):
                progress.update(bar, completed=done, total=total)

            def on_epoch(row):
                progress.console.print(
                    f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                    f"val AD {row['val_ad_deg']:6.2f} deg  val MSE {row['val_mse']:.4f}  "
                    f"{row['train_samples_per_s']:,.0f} samples/s")

            result = run(features, out, cfg, resume=resume, on_epoch=on_epoch, on_step=on_step,
                         resume_changes=resume_changes)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if result:
        envs = ", ".join(f"{e} {m['ad_deg']:.2f} deg" for e, m in result["by_env"].items())
        console.print(f"[bold green]test[/] (best checkpoint): AD {result['ad_deg']:.2f} deg "
                      f"(median {result['median_ad_deg']:.2f}), MSE {result['mse']:.4f}, n={result['n']}; {envs}")
        console.print(f"run: {out}")


def _parse_value(text: str):
    """--set values: JSON where it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (bast-cli train --out).")],
    out: Annotated[Path, typer.Option("--out", help="Report directory: index.html, figures/, JSON and CSV.")] = Path("bast-report"),
    rollout_samples: Annotated[int, typer.Option(help="Test samples to explain with attention rollout (0: none).")] = 2,
    device: Annotated[str, typer.Option(help="Device for evaluations and rollout.")] = "cpu",
) -> None:
    """Stage 4: the paper's tables and figures from trained runs, in one HTML page.

    Table 1 grid beside the paper's figures, per-azimuth AD (polar), left/right hemifield
    tests with FDR correction, train x test environment table, attention rollout,
    predicted-vs-true scatter, front-back confusions, errors per sound category, training
    curves.
    """
    from bast.report.build import build_report

    try:
        with console.status("building the report"):
            page, summary = build_report(runs, out, rollout_samples=rollout_samples, device=device)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    for label, r in summary["runs"].items():
        console.print(f"{label}: test AD {r['summary']['ad_deg']:.2f} deg, MSE {r['summary']['mse']:.4f}")
    console.print(f"report: {page}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where every stage writes (re-running resumes).")] = Path("bast-demo"),
    sounds: Annotated[int, typer.Option(help="Procedural sounds to render (290: about 200 training sounds, 14,000 training samples).")] = 290,
    minutes: Annotated[float, typer.Option(help="Training time budget in minutes.")] = 4.5,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Local dask worker processes (default: one per core).")] = None,
) -> None:
    """The whole pipeline on the default corpus: spatialize, featurize, train (tiny preset; a
    GPU when there is one) and report, ending with the report's path and the test AD."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.model.train import preset as make_preset, train as run_training
    from bast.pipeline import cluster
    from bast.pipeline.featurize import featurize as run_featurize
    from bast.pipeline.spatialize import SpatializeConfig, spatialize as run_spatialize
    from bast.report.build import build_report

    stage1, stage2, run_dir, report_dir = out / "stage1", out / "stage2", out / "run", out / "report"
    with _progress("demo") as (progress, task):
        def stage(name):
            progress.reset(task, total=None, completed=0, description=name)
            progress.columns[0].text_format = f"[bold]{name}"

        def on_start(total, resumed):
            progress.update(task, total=total, completed=resumed)

        with cluster.open_client(workers, None) as client:
            stage("1/4 spatialize")
            refs = DefaultCorpus(n_clips=sounds, seed=seed).list_clips()
            run_spatialize(refs, stage1, SpatializeConfig(seed=seed), client=client, on_start=on_start,
                           source={"recipe": "default", "sounds": sounds, "seed": seed},
                           on_shard=lambda info, planned: progress.advance(task, planned))
            stage("2/4 featurize")
            run_featurize(stage1, stage2, client=client, on_start=on_start,
                          on_shard=lambda info, planned: progress.advance(task, planned))
        stage("3/4 train")
        if not (run_dir / "eval" / "test.json").exists():
            resume = (run_dir / "checkpoints" / "last.pt").exists()
            cfg = make_preset("tiny", seed=seed, max_minutes=minutes)

            def on_epoch(row):
                progress.console.print(f"epoch {row['epoch']:3d}  val AD {row['val_ad_deg']:6.2f} deg  "
                                       f"{row['train_samples_per_s']:,.0f} samples/s")

            run_training(stage2, run_dir, cfg, resume=resume, on_epoch=on_epoch,
                         on_step=lambda done, total: progress.update(task, completed=done, total=total))
        stage("4/4 report")
        progress.update(task, total=1, completed=0)  # reset() keeps the last stage's total
        page, summary = build_report([run_dir], report_dir)
        progress.update(task, completed=1)
    test = json.loads((run_dir / "eval" / "test.json").read_text())
    noise = [v["ad_deg"] for k, v in test["by_category"].items() if k.endswith("_noise") and k != "bandpass_noise"]
    console.print(f"[bold green]test AD {test['ad_deg']:.1f} deg[/] (median {test['median_ad_deg']:.1f}; "
                  f"broadband noise {np.mean(noise):.1f} deg; chance 90 deg) on {test['n']:,} test samples")
    console.print(f"report: {page.resolve()}")


@app.command()
def irs(
    env: Annotated[str, typer.Option(help="Environments: anechoic, hall, or both (aliases RI01, RI02, RI).")] = "RI",
    hrir: Annotated[Optional[Path], typer.Option(help="SOFA HRIR set (default: bundled MIT KEMAR).")] = None,
    brir: Annotated[Optional[Path], typer.Option(help="Measured BRIR SOFA file to use for the hall.")] = None,
    rt60: Annotated[float, typer.Option(help="Simulated hall: target RT60 in seconds.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Simulated hall: seed of its random tail.")] = 0,
    azimuths: Annotated[str, typer.Option(help="Simulated hall: azimuths, start:stop:step or a list.")] = "0:360:10",
    tolerance: Annotated[float, typer.Option(help="Largest angle (deg) between a requested and an available direction.")] = 0.0,
    out: Annotated[Path, typer.Option(help="Folder for the PNG figures and the JSON figures.")] = Path("bast-irs"),
) -> None:
    """Measure impulse-response sets (ITD, ILD, RT60, DRR, interaural coherence) and plot them.

    Check a set here before rendering with it. The simulated hall is built once and cached
    (set BAST_CACHE to move the cache).
    """
    from bast.pipeline import acoustics, ircheck
    from bast.pipeline.hall import HallSpec
    from bast.pipeline.irs import IRSources, parse_azimuths, parse_environments
    from bast.pipeline.sofa import SofaError

    try:
        envs = parse_environments(env)
        grid = parse_azimuths(azimuths)
        spec = HallSpec(rt60_s=rt60, seed=seed)
        sources = IRSources(hrir=hrir, brir=brir, hall=spec, tolerance_deg=tolerance)
        results = {}
        for name in envs:
            with console.status(f"loading {name} impulse responses"):
                irset = sources.irset(name, grid)
                simulated = name == "hall" and brir is None
                expected = acoustics.predicted_drr_db(spec.volume_m3, spec.rt60_s, spec.distance_m) if simulated else None
                m = ircheck.measure(irset, expected_drr_db=expected)
                png = ircheck.plot(irset, m, out / f"irs-{name}.png", title=f"{name}: {Path(irset.source).name}")
            m["png"] = str(png)
            results[name] = m
            _print_measurement(name, m, spec if simulated else None)
    except (SofaError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "irs.json").write_text(json.dumps(results, indent=1))
    console.print(f"figures: {', '.join(r['png'] for r in results.values())}; numbers: {out / 'irs.json'}")


def _print_measurement(name: str, m: dict, spec) -> None:
    from bast.pipeline.ircheck import cardinal_rows

    console.rule(f"[bold]{name}[/]: {m['source']}")
    console.print(
        f"{m['conventions']}, {m['directions']} directions, {m['taps']} taps at {m['fs']} Hz, "
        f"{len(m['horizontal_azimuths'])} azimuths at elevation 0"
    )
    t = Table(title="direct sound (ITD + = left ear leads, ILD + = left ear louder)")
    for col in ("azimuth (deg)", "ITD (ms)", "ILD (dB)"):
        t.add_column(col, justify="right")
    for a, itd, ild in cardinal_rows(m):
        t.add_row(f"{a:g}", f"{itd:+.3f}", f"{ild:+.1f}")
    console.print(t)
    if m["reverberant"]:
        t = Table(title="reverberation (mean over azimuths)")
        t.add_column("octave (Hz)", justify="right")
        t.add_column("RT60, T20 (s)", justify="right")
        t.add_column("tail IACC after 80 ms", justify="right")
        for band, rt in m["rt60_s"].items():
            t.add_row(band, f"{rt:.2f}", f"{m['coherence'][band]:.2f}")
        console.print(t)
        line = f"direct-to-reverberant ratio at 1 m: {m['drr_db']:.1f} dB"
        if spec is not None:
            line += f" (diffuse-field theory for {spec.volume_m3:g} m3, RT60 {spec.rt60_s:g} s: {m['drr_predicted_db']:.1f} dB)"
        console.print(line)


def _version(value: bool) -> None:
    if value:
        console.print(f"bast {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
