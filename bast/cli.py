"""`bast-cli`: a thin command line over the bast library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

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
err = Console(stderr=True)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _not_built(stage: str, issue: int) -> None:
    err.print(f"[bold red]bast-cli {stage}[/] is not built yet (tracked as issue {issue}).")
    raise typer.Exit(2)


@app.command(context_settings=_PASS_THROUGH)
def spatialize(ctx: typer.Context) -> None:
    """Stage 1: render mono clips to binaural audio at 36 azimuths in two environments."""
    _not_built("spatialize", 3)


@app.command(context_settings=_PASS_THROUGH)
def featurize(ctx: typer.Context) -> None:
    """Stage 2: binaural clips to 2 x 129 x 61 log-power spectrograms in sharded HDF5."""
    _not_built("featurize", 4)


@app.command(context_settings=_PASS_THROUGH)
def train(ctx: typer.Context) -> None:
    """Stage 3: train and evaluate BAST on Stage 2 shards."""
    _not_built("train", 5)


@app.command(context_settings=_PASS_THROUGH)
def report(ctx: typer.Context) -> None:
    """Stage 4: the paper's tables and figures from trained runs."""
    _not_built("report", 6)


@app.command(context_settings=_PASS_THROUGH)
def demo(ctx: typer.Context) -> None:
    """The default corpus through every stage, in one command."""
    _not_built("demo", 6)


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
