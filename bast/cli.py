"""`bast-cli`: a thin command line over the bast library.

Each command parses its options, calls one library function and prints what it returned.
Failures a user can act on are `bast.errors.BastError`s: printed on one line, exit 1. Any
other exception is a bug and keeps its traceback. Library imports happen inside the
commands, so `bast-cli --help` and small jobs start quickly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bast import __version__
from bast.errors import BastError

app = typer.Typer(
    help="Binaural sound localization with BAST: spatialize -> featurize -> train -> report. "
         "Documentation: docs/ in the bast repository.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole, to copy


def command(fn):
    """`app.command()`, with the one place where expected failures become a message."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BastError as exc:
            err.print(Text.assemble(("error: ", "bold red"), str(exc)))  # not markup: messages hold [ ]
            raise typer.Exit(1) from None
        except UnicodeDecodeError as exc:  # a text file in another encoding, met by a reader that does not name it
            bad = exc.object[exc.start:exc.start + 1].hex() if isinstance(exc.object, bytes) else "?"
            err.print(Text.assemble(("error: ", "bold red"), f"a text file given is not UTF-8 (byte 0x{bad} at offset "
                                    f"{exc.start}: {exc.reason}); save it as UTF-8"))
            raise typer.Exit(1) from None
        except OSError as exc:  # a full, read-only or forbidden disk met outside bast's own writes
            from bast.fileio import storage_advice, storage_errno

            code = storage_errno(exc)
            if code is None:
                raise  # anything else is a bug: keep its traceback
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(Text.assemble(("error: ", "bold red"), f"{where}{os.strerror(code)}; {storage_advice(code)}"))
            raise typer.Exit(1) from None

    return app.command()(run)

@command
def spatialize(
    source: Annotated[str, typer.Argument(help="A folder of sounds (searched recursively), a CSV manifest with a 'path' column, or 'default' for the procedural corpus.")],
    out: Annotated[Path, typer.Argument(help="Output directory (Stage 1 shards).")],
    test: Annotated[Optional[Path], typer.Option(help="Folder or CSV of independent test sounds (else --test-fraction of SOURCE).")] = None,
    sounds: Annotated[int, typer.Option(help="Procedural corpus: number of sounds.")] = 200,
    speech: Annotated[Optional[bool], typer.Option("--speech/--no-speech", help="Procedural corpus: include espeak-ng speech (default: when installed).")] = None,
    categories: Annotated[Optional[str], typer.Option(help="Keep the sounds of these categories only (comma-separated; the procedural corpus then draws --sounds of them).")] = None,
    env: Annotated[str, typer.Option(help="Environments: anechoic, hall, or both (aliases RI01, RI02, RI).")] = "RI",
    azimuths: Annotated[str, typer.Option(help="Azimuths in degrees: start:stop:step or a list (SOFA: 90 = left).")] = "0:360:10",
    elevations: Annotated[str, typer.Option(help="Elevations in degrees (90 = up): a list (-30,0,30) or LO:HI:STEP (HI included), crossed with --azimuths; with --directions all, LO:HI limits them. docs/sphere.md.")] = "0",
    directions: Annotated[Optional[str], typer.Option(help="'all': every direction the (first) head measured; or a CSV file with columns azimuth,elevation. Replaces the --azimuths x --elevations grid.")] = None,
    interpolate: Annotated[bool, typer.Option("--interpolate", help="HRIRs interpolated at exactly the requested directions (else the nearest measured one within --ir-tolerance). docs/sphere.md.")] = False,
    hrir: Annotated[Optional[list[Path]], typer.Option(help="SOFA HRIR set (a head); repeat it, or give a folder of .sofa files, for several heads (default: bundled MIT KEMAR).")] = None,
    test_hrir: Annotated[Optional[list[Path]], typer.Option(help="Heads (SOFA files or a folder) used only for the test split; repeatable.")] = None,
    brir: Annotated[Optional[list[Path]], typer.Option(help="Measured BRIR SOFA file(s) for the hall, each its own room and head; repeatable (default: simulated hall).")] = None,
    rt60: Annotated[float, typer.Option(help="Simulated hall: RT60 in seconds.")] = 0.8,
    rooms: Annotated[int, typer.Option(help="Generate N shoebox rooms from --seed (replacing the default hall) for train/val.")] = 0,
    test_rooms: Annotated[int, typer.Option(help="Generate M other rooms used only for the test split.")] = 0,
    snr: Annotated[Optional[str], typer.Option(help="Add noise at this SNR in dB (both ears, whole clip): 0, or LO:HI drawn per sample.")] = None,
    noise: Annotated[Optional[str], typer.Option(help="With --snr: diffuse (from all directions through the head) or directional (1-3 sources). [default: diffuse]")] = None,
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
    plan_only: Annotated[bool, typer.Option("--plan-only", help="Write the plan alone (parameters, IR banks, the sound split; no audio): a recipe for `train --on-the-fly`, which renders its validation and test sets; a later run without this option renders it whole. docs/train.md.")] = False,
) -> None:
    """Stage 1: render mono sounds to binaural clips at every direction in every environment.

    Writes OUT/shards/*.h5 (audio, azimuth_deg, elevation_deg, env, clip_id, split,
    category, head, room, snr_db),
    OUT/manifest.json, OUT/failures.jsonl and the IRs used (OUT/irs/*.sofa). A re-run
    resumes; exit status 0 = every input rendered, 3 = done but some inputs were skipped
    (listed in failures.jsonl), 1 = error.
    """
    from bast.pipeline.render.clips import ClipPolicy
    from bast.pipeline.irs.sources import parse_azimuths, parse_environments, sofa_files
    from bast.pipeline.render.noise import parse_snr
    from bast.pipeline.render.conditions import SpatializeConfig, layout
    from bast.pipeline.render.outputs import check_examples, write_examples
    from bast.pipeline.render.spatialize import spatialize as run
    from bast.errors import ConfigError

    check_examples(examples)  # before rendering, not after
    _check_noise(noise, snr)
    if plan_only and examples:
        raise ConfigError("--examples writes rendered clips; --plan-only renders none")
    grid_el, pairs, heads = _spatialize_directions(azimuths, elevations, directions, hrir)
    found = _find_sounds(source, test=test, sounds=sounds, seed=seed, speech=speech, categories=categories)
    config = SpatializeConfig(
        azimuths=tuple(float(a) for a in parse_azimuths(azimuths)),
        elevations=(0.0,) if grid_el is None else tuple(float(e) for e in grid_el),
        directions=None if pairs is None else tuple(map(tuple, pairs.tolist())), interpolate=interpolate,
        environments=parse_environments(env),
        policy=ClipPolicy(min_ms=min_ms, long=long, normalize=normalize),
        seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
        samples_per_shard=samples_per_shard,
        hrir=heads, brir=sofa_files(brir, "--brir") or None,
        test_hrir=sofa_files(test_hrir, "--test-hrir"), rooms=rooms, test_rooms=test_rooms,
        snr_db=parse_snr(snr), noise=noise or "diffuse",
        rt60_s=rt60, tolerance_deg=ir_tolerance,
    )
    conditions = layout(config).splits
    samples = len(found.refs) * config.n_directions * max(len(c) for c in conditions.values())
    console.print(_spatialize_plan(found, config, conditions, source, snr))
    summary = _on_cluster("spatialize", "rendering", samples, "samples", workers, scheduler, lambda client, progress: run(
        found.refs, out, config, client=client, source=found.info, overwrite=overwrite,
        on_start=progress.on_start, on_shard=progress.on_shard, splits=() if plan_only else None))
    if plan_only:
        console.print(f"plan written to {out} (no audio): train on it with `bast-cli train {out} --on-the-fly`")
    if examples:
        written = write_examples(out, examples)
        console.print(f"{len(written)} example WAV files in {out / 'examples'}")
    _print_summary(summary, out)
    raise typer.Exit(3 if summary.failures else 0)


def _check_noise(noise: str | None, snr: str | None) -> None:
    if noise is not None and snr is None:
        from bast.errors import ConfigError

        raise ConfigError("--noise needs --snr (the level of the noise)")


def _spatialize_directions(azimuths: str, elevations: str, directions: str | None, hrir):
    """(grid elevations or None, the --directions pairs or None, the heads or None) of
    spatialize's options, checked in this order (the grid within its budget of directions)."""
    from bast.errors import ConfigError
    from bast.pipeline.irs.sources import (DEFAULT_AZIMUTH_TEXT, grid_budget, parse_azimuths, parse_directions,
                                           parse_elevations, sofa_files)

    n_az = len(parse_azimuths(azimuths)) if directions is None else 1
    grid_el, el_limit = parse_elevations(elevations, n_az)
    heads = sofa_files(hrir, "--hrir") or None
    if el_limit is not None and directions is None:
        raise ConfigError(f"--elevations {elevations}: LO:HI limits --directions all; for a grid give LO:HI:STEP")
    if directions is not None and grid_el is not None and elevations.strip() != "0":
        raise ConfigError("--directions lists the directions: give --elevations as LO:HI (a limit) or not at all")
    if directions is not None and azimuths.strip() != DEFAULT_AZIMUTH_TEXT:  # not dropped without a word
        raise ConfigError(f"--azimuths {azimuths} with --directions {directions}: --directions lists the directions "
                          "and replaces the --azimuths x --elevations grid; give one or the other")
    if grid_el is not None and directions is None:
        grid_budget(len(grid_el), n_az, f"--elevations {elevations}")
    pairs = (None if directions is None
             else parse_directions(directions, heads[0] if heads else None, el_limit))
    return grid_el, pairs, heads


def _find_sounds(source: str, **how):
    """The sounds of SOURCE (`resolve_source`), its notes printed."""
    from bast.datasets.sources import resolve_source

    found = resolve_source(source, **how)
    for note in found.notes:
        console.print(f"[yellow]note:[/] {note}")
    return found


def _spatialize_plan(found, config, conditions: dict, source: str, snr: str | None) -> str:
    """One line: what spatialize is about to render."""
    return (f"{len(found.refs)} sounds from {source}"
            + (f" ({len(found.ignored)} non-audio files ignored)" if found.ignored else "")
            + (f"; {len(config.azimuths)} azimuths" if config.flat and config.directions is None
               else f"; {config.n_directions} directions")
            + f" x {len(config.environments)} environments"
            + ("" if len(conditions["train"]) == len(config.environments) and conditions["train"] == conditions["test"]
               else f"; {len(conditions['train'])} train/val and {len(conditions['test'])} test conditions "
                    "(head x room)")
            + (f"; {config.noise} noise at {snr} dB SNR" if config.snr_db is not None else ""))


def _on_cluster(stage: str, what: str, count: int, unit: str, workers, scheduler, work):
    """`work(client, progress)` on a dask cluster (in this process for a small job: `count`
    `unit`), under a progress bar named `what`; returns what it returned."""
    from bast.pipeline.stage import cluster

    small = cluster.small_job(stage, count, workers, scheduler)
    with cluster.open_client(0 if small else workers, scheduler) as client, _progress(what) as progress:
        progress.console.print(f"running {cluster.where_tasks_run(client)}"
                               + (f" (a small job: {count:,} {unit}; --workers N starts a cluster)" if small else ""))
        return work(client, progress)


@command
def scenes(
    source: Annotated[str, typer.Argument(help="A folder of sounds (searched recursively), a CSV manifest with a 'path' column, or 'default' for the procedural corpus.")],
    out: Annotated[Path, typer.Argument(help="Output directory (Stage 1 scene shards).")],
    count: Annotated[int, typer.Option(help="Scenes over all splits (each rendered in every condition of its split).")] = 100,
    duration: Annotated[float, typer.Option(help="Length of a scene in seconds.")] = 5.0,
    max_overlap: Annotated[int, typer.Option(help="Most events at once (per 100 ms label frame).")] = 2,
    events: Annotated[str, typer.Option(help="Events drawn per scene, N or LO:HI (fewer when they do not fit).")] = "2:8",
    max_event: Annotated[float, typer.Option(help="Longest event in seconds: a longer sound is cut to its loudest window.")] = 2.0,
    azimuths: Annotated[str, typer.Option(help="Azimuths of the grid (still sources; moving ones start there): start:stop:step or a list (SOFA: 90 = left).")] = "0:360:10",
    elevations: Annotated[str, typer.Option(help="Elevations in degrees (90 = up): a list (-30,0,30) or LO:HI:STEP (HI included), crossed with --azimuths; with --directions all, LO:HI limits them. As in spatialize: docs/sphere.md.")] = "0",
    directions: Annotated[Optional[str], typer.Option(help="'all': every direction the (first) head measured; or a CSV file with columns azimuth,elevation. Replaces the --azimuths x --elevations grid.")] = None,
    interpolate: Annotated[bool, typer.Option("--interpolate", help="HRIRs interpolated at the sources' directions, moving ones along their path (else the nearest measured direction). docs/scenes.md.")] = False,
    moving: Annotated[float, typer.Option(help="Share of events that move (0-1).")] = 0.0,
    speed: Annotated[str, typer.Option(help="Speed of moving events in deg/s, V or LO:HI.")] = "10:60",
    distance: Annotated[Optional[str], typer.Option(help="Source distances in metres, R or LO:HI, drawn per event (a moving event: a start and an end distance). Anechoic: the propagation delay and 1/r from the HRIRs' distance; rooms: BRIRs with the source there (a grid of distances). Default: the IR set's one distance. docs/scenes.md.")] = None,
    test: Annotated[Optional[Path], typer.Option(help="Folder or CSV of independent test sounds (else --test-fraction of SOURCE).")] = None,
    sounds: Annotated[int, typer.Option(help="Procedural corpus: number of sounds.")] = 200,
    speech: Annotated[Optional[bool], typer.Option("--speech/--no-speech", help="Procedural corpus: include espeak-ng speech (default: when installed).")] = None,
    categories: Annotated[Optional[str], typer.Option(help="Keep the sounds of these categories only (comma-separated; the procedural corpus then draws --sounds of them).")] = None,
    env: Annotated[str, typer.Option(help="Environments: anechoic, hall, or both (aliases RI01, RI02, RI).")] = "RI",
    hrir: Annotated[Optional[list[Path]], typer.Option(help="SOFA HRIR set(s) (heads); repeatable or a folder (default: bundled MIT KEMAR).")] = None,
    test_hrir: Annotated[Optional[list[Path]], typer.Option(help="Heads used only for the test split; repeatable.")] = None,
    brir: Annotated[Optional[list[Path]], typer.Option(help="Measured BRIR SOFA file(s) for the hall; repeatable (default: simulated hall).")] = None,
    rt60: Annotated[float, typer.Option(help="Simulated hall: RT60 in seconds.")] = 0.8,
    rooms: Annotated[int, typer.Option(help="Generate N shoebox rooms from --seed (replacing the default hall) for train/val.")] = 0,
    test_rooms: Annotated[int, typer.Option(help="Generate M other rooms used only for the test split.")] = 0,
    snr: Annotated[Optional[str], typer.Option(help="Add noise at this SNR in dB (both ears, whole scene): 0, or LO:HI drawn per scene.")] = None,
    noise: Annotated[Optional[str], typer.Option(help="With --snr: diffuse or directional. [default: diffuse]")] = None,
    ir_tolerance: Annotated[float, typer.Option(help="Largest angle (deg) between a grid direction and the IR used.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of every random choice (splits, scenes, noise, hall tail).")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of the training sounds held out for validation.")] = 0.25,
    test_fraction: Annotated[float, typer.Option(help="Share of the sounds held out for test when --test is not given.")] = 0.1,
    min_ms: Annotated[float, typer.Option(help="Sounds shorter than this are skipped.")] = 100.0,
    normalize: Annotated[str, typer.Option(help="Level of each event: 'rms' (-20 dBFS over the event), 'peak', or 'none'.")] = "rms",
    scenes_per_shard: Annotated[int, typer.Option(help="Scenes per HDF5 shard.")] = 20,
    export_dcase: Annotated[Optional[Path], typer.Option("--export-dcase", help="Also write the scenes in the DCASE layout (stereo WAV + metadata CSV) to this folder.")] = None,
    stereo_dcase2025: Annotated[bool, typer.Option("--stereo-dcase2025", help="With --export-dcase: metadata as DCASE 2025 task 3 (stereo SELD) has it: a header, azimuth folded to the front, distance in cm, on-screen flag. docs/scenes.md.")] = False,
    workers: Annotated[Optional[int], typer.Option(help="Local dask worker processes (default: one per core; 0: run in this process).")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing dask scheduler, e.g. tcp://host:8786.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an output directory made with other parameters.")] = False,
) -> None:
    """Stage 1 for sound scenes: overlapping events of the corpus's categories, still or moving, labelled every 100 ms.

    Writes OUT/shards/*.h5 (audio of whole scenes, scene_id, split, env, head, room,
    snr_db, label rows and the events), OUT/manifest.json (with the sorted class list,
    "categories"), OUT/failures.jsonl and the IRs used. A re-run resumes; exit status 0 =
    done, 3 = done but some sounds were skipped, 1 = error. docs/scenes.md.
    """
    from bast.pipeline.render.clips import ClipPolicy
    from bast.pipeline.irs.sources import parse_direction_options, parse_environments, sofa_files
    from bast.pipeline.render.noise import parse_snr
    from bast.pipeline.render.scenes import ScenesConfig, check_scene_layout, render_scenes
    from bast.pipeline.render.conditions import layout
    from bast.errors import ConfigError

    _check_noise(noise, snr)
    if stereo_dcase2025 and export_dcase is None:
        raise ConfigError("--stereo-dcase2025 sets the format of --export-dcase DIR: give --export-dcase too")
    if moving == 0 and speed.strip() != "10:60":  # an option this run would ignore: said, not dropped
        raise ConfigError(f"--speed {speed}: sets how fast moving events go, and with --moving 0 none moves; "
                          "give --moving (the share that moves) or leave --speed out")
    heads = sofa_files(hrir, "--hrir") or None
    config = ScenesConfig(
        count=count, duration_s=duration, max_overlap=max_overlap, events=events, max_event_s=max_event,
        directions=parse_direction_options(azimuths, elevations, directions, heads[0] if heads else None),
        interpolate=interpolate, moving=moving, speed=speed,
        environments=parse_environments(env), policy=ClipPolicy(min_ms=min_ms, normalize=normalize),
        seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, scenes_per_shard=scenes_per_shard,
        hrir=heads, brir=sofa_files(brir, "--brir") or None,
        test_hrir=sofa_files(test_hrir, "--test-hrir"), rooms=rooms, test_rooms=test_rooms, rt60_s=rt60,
        tolerance_deg=ir_tolerance, snr_db=parse_snr(snr), noise=noise or "diffuse", distance=distance,
    )
    found = _find_sounds(source, test=test, sounds=sounds, seed=seed, speech=speech, categories=categories)
    if export_dcase is not None:  # before any work: the export never lands on an input
        from bast.pipeline.render.dcase_export import check_export_output
        from bast.pipeline.render.outputs import stage1_inputs

        check_export_output(export_dcase, out, stage1_inputs(found.refs, config.spatialize_config(), found.info),
                            option="--export-dcase")
    the_layout = layout(config.spatialize_config())
    check_scene_layout(config, the_layout)  # a --distance the rooms cannot hold, before any work
    conditions = the_layout.splits
    renders = count * max(len(c) for c in conditions.values())
    console.print(f"{count} scenes of {duration:g} s from {len(found.refs)} sounds in {source}; "
                  f"{len(config.directions)} grid directions, {moving:.0%} moving; "
                  + (f"distances {config.distance[0]:g}-{config.distance[1]:g} m; " if config.distance else "") +
                  f"{len(conditions['train'])} train/val and {len(conditions['test'])} test conditions"
                  + (f"; {config.noise} noise at {snr} dB SNR" if config.snr_db is not None else ""))
    summary = _on_cluster("scenes", "rendering scenes", renders, "scene renders", workers, scheduler,
                          lambda client, progress: render_scenes(
                              found.refs, out, config, client=client, source=found.info, overwrite=overwrite,
                              on_start=progress.on_start, on_shard=progress.on_shard))
    _print_scenes_summary(summary, out)
    if export_dcase is not None:
        _export_dcase(out, export_dcase, stereo_dcase2025)
    raise typer.Exit(3 if summary.failures else 0)


def _print_scenes_summary(summary, out: Path) -> None:
    rate = f"{summary.samples_per_s:,.1f} scenes/s" if summary.shards_written else "nothing to do"
    console.print(f"[bold green]done[/]: {summary.samples:,} scenes with {summary.clips:,} events in "
                  f"{summary.shards_written + summary.shards_resumed} shards ({summary.shards_resumed} resumed), "
                  f"{summary.seconds:.1f} s, {rate}")
    for text, n in sorted(summary.warnings.items()):
        console.print(f"[yellow]warning[/]: {n} x {text}")
    if summary.failures:
        console.print(f"[yellow]{len(summary.failures)} sounds skipped[/] (see {out / 'failures.jsonl'})")
    console.print(f"manifest: {out / 'manifest.json'}")


def _export_dcase(stage1: Path, out: Path, stereo2025: bool = False) -> None:
    from bast.pipeline.render.dcase_export import export_dcase as run

    with console.status(f"writing {out}"):
        summary = run(stage1, out, stereo2025=stereo2025)
    console.print(f"DCASE layout: {summary['files']} WAV + CSV pairs at {summary['fs']} Hz in {out} "
                  + ("(DCASE 2025 stereo metadata: azimuth folded to the front, distance in cm; " if stereo2025
                     else "(") + f"folds {summary['folds']}; index {out / 'bast_index.csv'})")


@command
def export_dcase(
    stage1: Annotated[Path, typer.Argument(help="A scenes output directory (bast-cli scenes).")],
    out: Annotated[Path, typer.Argument(help="Folder for stereo_dev/ and metadata_dev/ (the DCASE layout).")],
    stereo_dcase2025: Annotated[bool, typer.Option("--stereo-dcase2025", help="Metadata as DCASE 2025 task 3 (stereo SELD) has it: header frame,class,source,azimuth,distance,onscreen; azimuth folded to the front, distance in cm. docs/scenes.md.")] = False,
) -> None:
    """Write scenes as DCASE SELD data: one stereo WAV and one metadata CSV (frame, class, source, azimuth, elevation, distance) per scene. docs/scenes.md."""
    _export_dcase(stage1, out, stereo_dcase2025)


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


class _Bar:
    """A rich progress bar with the callbacks the library's stages take."""

    def __init__(self, progress, task):
        self.progress, self.task, self.console = progress, task, progress.console

    def stage(self, name: str) -> None:
        self.progress.reset(self.task, total=None, completed=0, description=name)
        self.progress.columns[0].text_format = f"[bold]{name}"

    def on_start(self, total: int, resumed: int) -> None:
        self.progress.update(self.task, total=total, completed=resumed)
        if resumed:
            self.console.print(f"resuming: {resumed} samples already written")

    def on_shard(self, info, planned: int) -> None:
        self.progress.advance(self.task, planned)

    def on_step(self, done: int, total: int) -> None:
        self.progress.update(self.task, completed=done, total=total)

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {text}")

    def on_epoch(self, row: dict) -> None:
        val = f"val AD {row['val_ad_deg']:6.2f} deg" if row.get("val_ad_deg") is not None else "val AD n/a"
        self.console.print(f"epoch {row['epoch']:3d}  {val}  {row['train_samples_per_s']:,.0f} samples/s")


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
        yield _Bar(progress, progress.add_task(what, total=None))


@command
def featurize(
    stage1: Annotated[Path, typer.Argument(help="A Stage 1 output directory (bast-cli spatialize, or bast-cli scenes: whole scenes with label tracks, docs/scenes.md).")],
    out: Annotated[Path, typer.Argument(help="Output directory (Stage 2 shards).")],
    dtype: Annotated[str, typer.Option(help="Storage type of the dB spectrograms: float16 (31 KB a sample) or float32.")] = "float16",
    features: Annotated[Optional[str], typer.Option("--features", help="Feature kinds to store, comma-separated: logpower (always, the default), phase (interaural cos, sin); docs/featurize.md.")] = None,
    phase: Annotated[bool, typer.Option("--phase", help="Also store the interaural phase (cos, sin) of every bin and frame: short for --features logpower,phase.")] = False,
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
    from bast.pipeline.features.featurize import featurize as run, read_stage1

    manifest = read_stage1(stage1)  # a wrong input is reported before any cluster starts
    samples = manifest.get("totals", {}).get("samples", 0)
    summary = _on_cluster("featurize", "featurizing", samples, "samples", workers, scheduler, lambda client, progress: run(
        stage1, out, dtype=dtype, features=features, phase=phase, client=client, overwrite=overwrite,
        on_start=progress.on_start, on_shard=progress.on_shard))
    rate = f"{summary.samples_per_s:,.0f} samples/s" if summary.shards_written else "nothing to do"
    console.print(f"[bold green]done[/]: {summary.samples:,} spectrograms in "
                  f"{summary.shards_written + summary.shards_resumed} shards ({summary.shards_resumed} resumed), "
                  f"{summary.seconds:.1f} s, {rate}")
    if summary.failures:
        console.print(f"[yellow]{len(summary.failures)} samples skipped[/] (see {out / 'failures.jsonl'})")
    console.print(f"manifest: {out / 'manifest.json'}")
    raise typer.Exit(3 if summary.failures else 0)


def _feature_names(text: Optional[str]) -> Optional[list]:
    """--features a,b as a list of names (checked by the model config); None when not given."""
    if text is None:
        return None
    from bast.pipeline.features import kinds as featurekinds

    return list(featurekinds.parse(text))


@command
def train(
    features: Annotated[Path, typer.Argument(help="A Stage 2 output directory (bast-cli featurize); with --on-the-fly a Stage 1 one (bast-cli spatialize; bast-cli scenes for --target seld).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: config, metrics.jsonl, checkpoints, eval.")],
    on_the_fly: Annotated[bool, typer.Option("--on-the-fly", help="Draw new training samples (or, for --target seld, scenes) every epoch from the Stage 1 folder's recipe, rendered and featurized as training asks for them; validation and test are its own, featurized once (docs/train.md, docs/seld.md).")] = False,
    fresh_sounds: Annotated[Optional[bool], typer.Option("--fresh-sounds", help="--on-the-fly: new procedural sounds every epoch, never the validation or test ones.")] = None,
    fresh_per_epoch: Annotated[Optional[int], typer.Option(help="--fresh-sounds: this many new sounds an epoch, each heard at several directions and conditions (synthesis is what costs); 0: a new sound for every sample. [default: 0]")] = None,
    sample_directions: Annotated[Optional[str], typer.Option(help="--on-the-fly: directions drawn from the Stage 1 grid, or anywhere on the circle or the sphere (interpolated HRIRs). [default: grid]")] = None,
    epoch_samples: Annotated[Optional[int], typer.Option(help="--on-the-fly: samples per epoch (scenes, for --target seld). [default: as many as Stage 1's training split]")] = None,
    loader_workers: Annotated[Optional[int], typer.Option(help="--on-the-fly: processes rendering samples ahead of training (0: in the training process). [default: 1]")] = None,
    render_device: Annotated[Optional[str], typer.Option(help="--on-the-fly: where the convolution and the feature STFT run: workers (numpy, in the loader processes), device (torch, batched on the training device) or auto (device on a GPU, workers on a CPU). [default: auto]")] = None,
    preset: Annotated[str, typer.Option(help="paper (GPU: D 1024, Adam 1e-4, batch 48, 50 epochs), small, or tiny (minutes on a CPU).")] = "tiny",
    model: Annotated[Optional[str], typer.Option("--model", help="bast (default), or a baseline: mlp (Tang et al. 2022), cnn (the BAST paper's CNN), ast (one transformer stream), seldnet (the DCASE SELD baseline; --target seld). docs/train.md.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Encoder of BAST (and ast): vit (the paper's), swin (shifted windows) or mamba (bidirectional state spaces; pip install \"bast[mamba]\"). docs/train.md.")] = None,
    kinds: Annotated[Optional[str], typer.Option("--features", help="Feature kinds the model reads, comma-separated (the data must hold them): logpower (default), phase; docs/featurize.md.")] = None,
    phase: Annotated[Optional[bool], typer.Option("--phase", help="Also feed the interaural phase (needs featurize --phase): short for --features logpower,phase.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="What the model learns: azimuth (paper, default), direction (3-D), category, direction+category, azimuth+category (docs/sphere.md); on scene data seld, or seld-distance (also each event's distance, as DCASE 2024; docs/seld.md).")] = None,
    window_frames: Annotated[Optional[int], typer.Option(help="--target seld: STFT frames per window cut from the scenes (61 = 500 ms = 5 label frames; longer for seldnet). [default: 61]")] = None,
    window_hop: Annotated[Optional[int], typer.Option(help="--target seld: training windows start every this many frames. [default: 25, two label frames]")] = None,
    task_weights: Annotated[Optional[str], typer.Option(help="Multitask targets: fixed loss weights, or learned (Kendall et al. 2018).")] = None,
    loss: Annotated[Optional[str], typer.Option(help="mse, ad (angular distance) or mix (hybrid).")] = None,
    integration: Annotated[Optional[str], typer.Option(help="How TE-C joins the ears: add, sub or concat.")] = None,
    shared: Annotated[Optional[bool], typer.Option("--shared/--no-shared", help="BAST-SP (one encoder for both ears) or BAST-NSP.")] = None,
    pos_embedding: Annotated[Optional[str], typer.Option(help="sinusoidal (paper) or learned (reference code).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: the preset's).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    env: Annotated[Optional[str], typer.Option(help="Train on: anechoic, hall or both (RI01, RI02, RI).")] = None,
    test_env: Annotated[Optional[str], typer.Option(help="Test on: anechoic, hall or both.")] = None,
    heads: Annotated[Optional[str], typer.Option(help="Train and validate on these heads only (comma-separated, as in the shards' head labels).")] = None,
    rooms: Annotated[Optional[str], typer.Option(help="Train and validate in these rooms only (comma-separated: anechoic, hall, room-00, ...).")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop after the epoch that crosses this many minutes.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initial weights, dropout and batch order. [default: 0]")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N (one process only). [default: auto]")] = None,
    amp: Annotated[Optional[str], typer.Option(help="auto (bf16 on a GPU, float32 on a CPU), bf16 or none (float32; TF32 matmuls on a GPU). [default: auto]")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model. [default: on a GPU, off on a CPU]")] = None,
    compile_mode: Annotated[Optional[str], typer.Option(help="torch.compile's mode when compiling: default, reduce-overhead (CUDA graphs), max-autotune or max-autotune-no-cudagraphs. [default: default]")] = None,
    val_every: Annotated[Optional[int], typer.Option(help="Validate every K epochs (and after the last). [default: 1]")] = None,
    deterministic: Annotated[Optional[bool], typer.Option("--deterministic", help="Deterministic algorithms (exact resume; slower on a GPU, docs/train.md).")] = None,
    memory_budget_gb: Annotated[Optional[float], typer.Option(help="Keep the training split on the device up to this size, else stream it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any other setting, KEY=VALUE (e.g. --set dim=128 --set dropout=0).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint, with its own settings; --epochs extends a finished run.")] = False,
) -> None:
    """Stage 3: train BAST on the train split, validate every epoch, test the best checkpoint.

    Several GPUs: torchrun --nproc_per_node N -m bast.cli train FEATURES --out RUN ...
    """
    from bast.model.runs.config import preset as make_preset
    from bast.model.train import train as from_stage2, train_on_the_fly, trained_on_the_fly

    given = {"arch": model, "backbone": backbone, "features": _feature_names(kinds), "phase": phase, "target": target, "task_weights": task_weights, "loss": loss, "integration": integration, "shared": shared, "pos_embedding": pos_embedding,
             "epochs": epochs, "batch_size": batch_size, "lr": lr, "train_env": env, "test_env": test_env,
             "train_heads": heads, "train_rooms": rooms,
             "max_minutes": max_minutes, "memory_budget_gb": memory_budget_gb, "seed": seed, "device": device,
             "amp": amp, "compile": compile, "compile_mode": compile_mode, "deterministic": deterministic,
             "val_every": val_every, "window_frames": window_frames, "window_hop": window_hop,
             "fresh_sounds": fresh_sounds, "fresh_per_epoch": fresh_per_epoch, "sample_directions": sample_directions, "epoch_samples": epoch_samples,
             "loader_workers": loader_workers, "render_device": render_device}
    overrides = {k: v for k, v in given.items() if v is not None}
    _check_draw_options(overrides, on_the_fly or resume)
    run = train_on_the_fly if on_the_fly or (resume and trained_on_the_fly(out)) else from_stage2
    for item in set_ or []:
        key, _, value = item.partition("=")
        overrides[key.strip()] = _parse_value(value.strip())
    # A resumed run keeps its settings; train() names any that cannot change.
    resume_changes = overrides if resume else None
    cfg = make_preset(preset, **({} if resume else overrides))
    if not resume:
        _check_window_options(overrides, cfg.target)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]epoch"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                  TimeElapsedColumn(), console=console, transient=True, disable=not main_rank) as progress:
        bar = progress.add_task("epoch", total=None)
        result = run(features, out, cfg, resume=resume, resume_changes=resume_changes,
                     on_epoch=lambda row: progress.console.print(_epoch_line(row)),
                     on_step=lambda done, total: progress.update(bar, completed=done, total=total),
                     on_info=lambda text: progress.console.print(text, markup=False, highlight=False))
    if result:
        _print_test(result, out)


def _check_draw_options(overrides: dict, on_the_fly: bool) -> None:
    """The options that say how samples are drawn mean nothing for a run from Stage 2."""
    from bast.errors import ConfigError

    drawn = [f"--{k.replace('_', '-')}" for k in ("fresh_sounds", "fresh_per_epoch", "sample_directions", "epoch_samples")
             if k in overrides]
    if drawn and not on_the_fly:
        raise ConfigError(f"{', '.join(drawn)} draw training samples on the fly: add --on-the-fly")


def _check_window_options(overrides: dict, target: str) -> None:
    """--window-frames and --window-hop cut windows from scenes: on clips they would be
    ignored without a word, so they are refused."""
    from bast.errors import ConfigError
    from bast.model.targets.core import make_target_class

    given = [f"--{k.replace('_', '-')}" for k in ("window_frames", "window_hop") if k in overrides]
    if given and not make_target_class(target).scenes:
        raise ConfigError(f"{', '.join(given)} cut windows from scenes (--target seld); --target {target} trains "
                          "on clips of a fixed length, where they would be ignored")


def _epoch_line(row: dict) -> str:
    """One line per epoch of training: its loss, the validation figures, the speed."""
    if row.get("val_loss") is not None:
        val = (f"val loss {row['val_loss']:.4f}  "
               + (f"val AD {row['val_ad_deg']:6.2f} deg  val MSE {row['val_mse']:.4f}  " if "val_ad_deg" in row
                  else "")
               + (f"val accuracy {row['val_accuracy']:.3f}  " if "val_accuracy" in row else "")
               + (f"val F20 {100 * row['val_f20']:.1f} %  LE {_figure(row.get('val_le_deg'), '.1f')} deg  ER20 "
                  f"{_figure(row.get('val_er20'), '.2f')}  "
                  + (f"RDE {_figure(row.get('val_rde'), '.2f')}  " if "val_rde" in row else "")
                  + f"SELD {_figure(row.get('val_seld_score'), '.3f')} (DCASE {row.get('val_edition', '2023')})  "
                  if row.get("val_f20") is not None else ""))
    else:
        val = "val loss not finite  " if row.get("val_nonfinite") else "(no validation)  "
    return (f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  {val}"
            f"{row['train_samples_per_s']:,.0f} samples/s")


def _print_test(result: dict, out: Path) -> None:
    """The final test's figures, as the run's target has them."""
    from bast.model.targets.names import on_scenes

    if "ad_deg" in result:
        envs = ", ".join(f"{e} {m['ad_deg']:.2f} deg" for e, m in result["by_env"].items())
        console.print(f"[bold green]test[/] (best checkpoint): AD {result['ad_deg']:.2f} deg "
                      f"(median {result['median_ad_deg']:.2f}), MSE {result['mse']:.4f}, n={result['n']}; {envs}")
    if "great_circle_deg" in result:
        console.print(f"[bold green]test[/] on the sphere: great circle {result['great_circle_deg']:.1f} deg, lateral "
                      f"{result['lateral_error_deg']:.1f} deg, polar {result['polar_error_deg']:.1f} deg, quadrant "
                      f"error {_figure(result['quadrant_error_pct'], '.1f')} %")
    if "accuracy" in result:
        console.print(f"[bold green]test[/] classes: accuracy {result['accuracy']:.3f} (chance "
                      f"{_figure(result['chance_accuracy'], '.3f')}), macro F1 {_figure(result['macro_f1'], '.3f')}, "
                      f"n={result['n']}")
    if on_scenes(result):
        console.print(f"[bold green]test[/] SELD (DCASE {result.get('edition', '2023')}, best checkpoint, {result['n']} "
                      f"scenes): F20 {100 * result['f20']:.1f} %, "
                      f"ER20 {_figure(result['er20'], '.2f')}, LE {_figure(result['le_deg'], '.1f')} deg, "
                      f"LR {100 * result['lr']:.1f} %"
                      + (f", relative distance error {_figure(result['rde'], '.3f')}" if "rde" in result else "")
                      + f", SELD score {_figure(result['seld_score'], '.3f')}; DCASE CSVs in {out / 'eval' / 'seld'}")
        if result.get("note"):
            console.print(f"[yellow]note[/]: {result['note']}")
    console.print(f"run: {out}")


def _figure(value, spec: str) -> str:
    """A figure as text; an undefined one (None, NaN: eval JSON's null) as 'undefined'."""
    import math

    return "undefined" if value is None or not math.isfinite(float(value)) else format(value, spec)


def _parse_value(text: str):
    """--set values: JSON where it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


@command
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (bast-cli train --out).")],
    out: Annotated[Path, typer.Option("--out", help="Report directory: index.html, figures/, JSON and CSV.")] = Path("bast-report"),
    rollout_samples: Annotated[int, typer.Option(help="Test samples to explain with attention rollout (0: none).")] = 2,
    device: Annotated[str, typer.Option(help="Device for evaluations and rollout.")] = "cpu",
    per_set_figures: Annotated[bool, typer.Option("--per-set-figures", help="Also a polar plot and per-category bars for each data set the runs were evaluated on.")] = False,
) -> None:
    """Stage 4: the paper's tables and figures from trained runs, in one HTML page.

    Table 1 grid beside the paper's figures, per-azimuth AD (polar), left/right hemifield
    tests with FDR correction, train x test environment table, attention rollout,
    predicted-vs-true scatter, front-back confusions, errors per sound category, training
    curves; and the generalisation matrix (runs x data sets) of runs scored with
    `bast-cli evaluate`. SELD runs (--target seld) get their DCASE scores beside "predict
    nothing", per class, and timelines of example test scenes (docs/seld.md).
    """
    from bast.report.build import build_report

    with console.status("building the report"):
        page, summary = build_report(runs, out, rollout_samples=rollout_samples, device=device,
                                     per_set_figures=per_set_figures)
    for label, r in summary["runs"].items():
        console.print(f"{label}: test AD {r['summary']['ad_deg']:.2f} deg, MSE {r['summary']['mse']:.4f}")
    for label, r in summary.get("seld", {}).items():
        m = r.get("test", r)  # a run's test, or the "predict nothing" scores
        console.print(f"{label}: F20 {100 * m['f20']:.1f} %, ER20 {_figure(m['er20'], '.2f')}, LE "
                      f"{_figure(m['le_deg'], '.1f')} deg, LR {100 * m['lr']:.1f} %"
                      + (f", RDE {_figure(m['rde'], '.3f')}" if "rde" in m else "")
                      + f", SELD score {_figure(m['seld_score'], '.3f')} (DCASE {m.get('edition', '2023')})")
    console.print(f"report: {page}")


@command
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (bast-cli train --out).")],
    on: Annotated[list[Path], typer.Option("--on", help="A Stage 2 directory (bast-cli featurize) to evaluate on; repeat --on for several.")],
    split: Annotated[str, typer.Option(help="Which samples of each data set: test, val, train or all.")] = "test",
    env: Annotated[Optional[str], typer.Option(help="Only these environments (anechoic, hall, RI01, RI02, RI); default: all there.")] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Evaluate again even when a stored result is still valid.")] = False,
) -> None:
    """Score each run's best checkpoint on each data set (another head, room, noise level, recorded sounds).

    Writes RUN/eval/<data set>/metrics.json (overall, per environment, category, azimuth and
    any other label of the shards) and predictions.csv, listed in RUN/eval/index.json for
    `bast-cli report`; the run's own test evaluation is left as it is. Stored results are
    reused while the data and the checkpoint are unchanged. Data featurized with other
    spectrogram parameters than the run's training data is refused. A SELD run (--target
    seld) is evaluated on featurized scenes: metrics.json holds the DCASE scores, and
    RUN/eval/<data set>/seld/{ref,pred} the DCASE CSVs (docs/seld.md).
    """
    from bast.model.evaluation.runs import evaluate_run
    from bast.model.targets.names import on_scenes

    t = Table(title=f"best checkpoints on the {split} split" + (f" ({env})" if env else ""))
    for col, justify in (("run", "left"), ("data set", "left"), ("AD (deg)", "right"), ("median AD", "right"),
                         ("MSE", "right"), ("n", "right"), ("", "left")):
        t.add_column(col, justify=justify)
    ts = Table(title=f"SELD runs, best checkpoints on the {split} scenes" + (f" ({env})" if env else ""))
    for col, justify in (("run", "left"), ("data set", "left"), ("DCASE", "right"), ("F20 (%)", "right"), ("ER20", "right"),
                         ("LE (deg)", "right"), ("LR (%)", "right"), ("RDE", "right"), ("SELD", "right"),
                         ("scenes", "right"),
                         ("", "left")):
        ts.add_column(col, justify=justify)
    written = []
    for run_dir in runs:
        for features_dir in on:
            with console.status(f"evaluating {run_dir} on {features_dir}"):
                m = evaluate_run(run_dir, features_dir, split=split, envs=env, device=device, force=force)
            how = "stored" if m["reused"] else "evaluated"
            d = Path(run_dir) / "eval" / m["name"]
            if on_scenes(m):  # docs/seld.md
                ts.add_row(str(run_dir), m["name"], m.get("edition", "2023"), f"{100 * m['f20']:.1f}",
                           _figure(m['er20'], '.2f'), _figure(m['le_deg'], '.1f'), f"{100 * m['lr']:.1f}",
                           _figure(m['rde'], '.3f') if "rde" in m else "-",  # DCASE 2023 scores no distance
                           _figure(m['seld_score'], '.3f'), f"{m['n']:,}", how)
                written.append(f"{d / 'metrics.json'}, DCASE CSVs in {d / 'seld'}")
                continue
            t.add_row(str(run_dir), m["name"], f"{m['ad_deg']:.2f}", f"{m['median_ad_deg']:.2f}", f"{m['mse']:.4f}",
                      f"{m['n']:,}", how)
            written.append(f"{d / 'metrics.json'}, {d / 'predictions.csv'}")
    for table in (t, ts):
        if table.row_count:
            console.print(table)
    for line in written:
        console.print(f"results: {line}")


@command
def seld_metrics(
    ref_dir: Annotated[Path, typer.Argument(help="Reference DCASE-format CSVs (2023: frame,class,source,azimuth,elevation; 2024: and distance in cm; 2025: a header line, then frame,class,source,azimuth,distance,onscreen), searched recursively.")],
    pred_dir: Annotated[Path, typer.Argument(help="Predicted CSVs of the same names, in the same format.")],
    edition: Annotated[Optional[str], typer.Option(help="DCASE edition of the metrics: 2023 (1 s segments, direction), 2024 (frame-wise, direction and distance) or 2025 (stereo: azimuth folded to the front, and distance); default: the newest the files' columns allow, named in the output.")] = None,
    classes: Annotated[Optional[int], typer.Option(help="Number of classes (default: the largest class index seen + 1); classes never seen count in the macro average.")] = None,
    threshold: Annotated[float, typer.Option(help="DOA threshold in degrees for a detection to count as true.")] = 20.0,
    onscreen: Annotated[bool, typer.Option("--onscreen", help="DCASE 2025: a detection must also get the on-screen flag right (the audio-visual track's F20/on-off).")] = False,
    average: Annotated[str, typer.Option(help="macro (DCASE: the mean over classes) or micro (pooled counts).")] = "macro",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the scores, per class and overall, to this JSON file.")] = None,
) -> None:
    """Score any system's DCASE-format predictions the DCASE task 3 way (docs/seld.md).

    Each edition as that year's reference implementation computes it: 2023, location-aware
    error rate and F-score at the DOA threshold on 1 s segments with the class-dependent
    localization error and recall; 2024, frame-wise F-score with distance (a hit within the
    threshold and a relative distance error at most 1), DOA error and relative distance
    error; 2025, the same on the azimuth folded to the front. Files are matched by name, and
    a missing or extra file is an error.
    """
    from bast import options
    from bast.dcase.editions import check_edition
    from bast.dcase.files import CLASS_BYTES, MAX_CLASSES
    from bast.dcase.metrics import score_folders, scores_json
    from bast.fileio import atomic_write_text, json_text, versions

    if classes is not None:  # per-class counts are allocated for each: sized before
        options.budget(options.count(classes, "--classes", 1), CLASS_BYTES, f"--classes {classes}", "classes",
                       most=MAX_CLASSES)
    if edition is not None:
        edition = check_edition(edition)
    if json_out is not None:  # checked before any work: never a JSON over a CSV it reads
        options.output_file(json_out, "--json", inputs=[("REF_DIR", ref_dir), ("PRED_DIR", pred_dir)])
    s, edition, why = score_folders(ref_dir, pred_dir, edition=edition, n_classes=classes, doa_threshold=threshold,
                                    require_onscreen=onscreen, average=average)
    console.print(f"edition: DCASE {edition} ({why})")
    (_print_seld_2023 if edition == "2023" else _print_seld_frames)(s, threshold)
    if s.note:
        console.print(f"[yellow]note[/]: {s.note}")
    if json_out is not None:
        d, notes = scores_json(s, edition, why)
        d.update(reference=str(ref_dir), prediction=str(pred_dir), n_classes=s.counts.n_classes,
                 doa_threshold_deg=threshold, versions=versions())
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json_out, json_text(d, notes) + "\n")
        console.print(f"scores: {json_out}")


def _print_seld_2023(s, threshold: float) -> None:
    """`seld-metrics` by DCASE 2023: per class and overall, and the one error rate."""
    t = Table(title=f"SELD metrics, DCASE 2023, {s.average} average, {threshold:g} deg ({s.counts.recordings} files)")
    for col in ("class", "ref. tracks", "F (%)", "LE (deg)", "LR (%)", "SELD"):
        t.add_column(col, justify="right")
    d = s.to_dict()
    for row in d["classes"]:
        t.add_row(str(row["class"]), str(row["reference_tracks"]), f"{100 * row['F']:.1f}", f"{row['LE']:.1f}",
                  f"{100 * row['LR']:.1f}", f"{row['SELD']:.3f}")
    t.add_row("all", str(int(s.counts.n_ref.sum())), f"{100 * s.f:.1f}", f"{s.le:.1f}", f"{100 * s.lr:.1f}",
              f"{s.seld:.3f}", style="bold")
    console.print(t)
    console.print(f"ER {s.er:.3f} (S {d['substitutions']}, D {d['deletions']}, I {d['insertions']}), "
                  f"F {100 * s.f:.1f} %, LE {s.le:.1f} deg, LR {100 * s.lr:.1f} %, SELD {s.seld:.3f}")


def _cell(value, spec: str) -> str:
    """A table cell: an undefined figure (a class without any pair) as '-'."""
    return "-" if _figure(value, spec) == "undefined" else format(value, spec)


def _print_seld_frames(s, threshold: float) -> None:
    """`seld-metrics` by DCASE 2024 or 2025 (frame-wise, with distance): per class and overall."""
    pc = s.per_class
    extra = ([("LR (%)", "localization_recall", 100, ".1f"), ("SELD", "seld_score", 1, ".3f")] if s.edition == "2024"
             else [("on-screen (%)", "onscreen_accuracy", 100, ".1f")])
    cols = [("F (%)", "f_score", 100, ".1f"), ("DOAE (deg)", "doa_error_deg", 1, ".1f"),
            ("dist. err. (m)", "distance_error_m", 1, ".2f"), ("RDE", "relative_distance_error", 1, ".3f"), *extra]
    rde = s.thresholds["relative_distance_threshold"]
    t = Table(title=f"SELD metrics, DCASE {s.edition}, {s.average} average, {threshold:g} deg and RDE {rde:g} "
                    f"({s.counts.recordings} files)")
    for col in ("class", "ref. events", *(c[0] for c in cols)):
        t.add_column(col, justify="right")
    for k in range(s.counts.n_classes):
        t.add_row(str(k), str(int(s.counts.n_ref[k])), *(_cell(scale * pc[key][k], spec) for _, key, scale, spec in cols))
    overall = s.plain()
    t.add_row("all", str(int(s.counts.n_ref.sum())),
              *(_cell(scale * overall[key], spec) for _, key, scale, spec in cols), style="bold")
    console.print(t)
    tail = (f", ER {_figure(s.er, '.3f')}, LR {_figure(100 * s.lr, '.1f')} %, SELD {_figure(s.seld, '.3f')}"
            if s.edition == "2024" else f", on-screen {_figure(100 * s.onscreen_accuracy, '.1f')} %")
    console.print(f"F {100 * s.f:.1f} %, DOAE {_figure(s.doa_error, '.1f')} deg, RDE "
                  f"{_figure(s.relative_distance_error, '.3f')}, distance error {_figure(s.distance_error_m, '.2f')} m"
                  + tail)


@command
def localize(
    run: Annotated[Path, typer.Argument(help="A run directory (bast-cli train --out).")],
    audio: Annotated[list[Path], typer.Argument(help="Binaural recordings: any format and sample rate libsndfile reads, 2 channels (left first).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for one CSV, PNG and JSON per file.")],
    window_ms: Annotated[Optional[float], typer.Option(help="Window length: the model reads 500 ms. [default: 500]")] = None,
    hop_ms: Annotated[Optional[float], typer.Option(help="Time step between windows (ms). [default: 100; a SELD run: its evaluation's 200]")] = None,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """The run's azimuth for every window of binaural recordings.

    Per file: OUT/<name>.csv (window start and centre in s, azimuth in degrees (SOFA: 90 =
    left), x, y, confidence |(x, y)|, level in dBFS, silent), OUT/<name>.png (azimuth over
    time above the waveform) and OUT/<name>.json (a summary). Windows quieter than -60 dBFS
    or 40 dB under the file's loudest are marked silent, with no azimuth. A SELD run
    (--target seld) writes a DCASE-format CSV per file instead (frame,class,source,azimuth,
    elevation per 100 ms frame), its timeline PNG and summary JSON (docs/seld.md). Exit 1
    when any file could not be used (each named on an `error:` line); the others are still
    written.
    """
    from bast.model.inference.localize import check_request, load_localizer, load_target, output_stems
    from bast.model.runs.checkpoint import read_run_config
    from bast.model.targets.names import on_scenes

    check_request(run, audio, out, hop_ms=100.0 if hop_ms is None else hop_ms,
                  window_ms=500.0 if window_ms is None else window_ms)
    seld = on_scenes(read_run_config(run))
    if seld and (hop_ms is not None or window_ms is not None):
        from bast.errors import ConfigError

        raise ConfigError(f"--{'hop-ms' if hop_ms is not None else 'window-ms'}: run {run} is a SELD run, whose "
                          "windows are its own (--window-frames) and cut every 200 ms as in its evaluation "
                          "(docs/seld.md); leave the option out")
    hop_ms = 100.0 if hop_ms is None else hop_ms
    window_ms = 500.0 if window_ms is None else window_ms
    with console.status(f"loading {run}"):
        model, dev = load_localizer(run, device)
        target = load_target(run)  # elevation and class columns when the run predicts them
    failed = 0
    for path, stem in zip(audio, output_stems(audio)):
        try:
            with console.status(f"localizing {path}"):
                if seld:
                    line = _localize_seld(run, model, dev, target, path, out, stem)
                else:
                    line = _localize_clip(run, model, dev, target, path, out, stem, hop_ms, window_ms)
        except BastError as exc:
            err.print(Text.assemble(("error: ", "bold red"), str(exc)))
            failed += 1
            continue
        console.print(line)
    if failed:
        raise typer.Exit(1)


def _localize_clip(run, model, dev, target, path, out, stem, hop_ms, window_ms) -> str:
    from bast.model.inference.localize import localize_audio, write_csv, write_summary
    from bast.report.figures import localization_timeline

    loc = localize_audio(model, path, dev, hop_ms=hop_ms, window_ms=window_ms, target=target)
    csv_path = write_csv(loc, out / f"{stem}.csv")
    png = localization_timeline(loc, out / f"{stem}.png")
    write_summary(loc, out / f"{stem}.json", {"run": str(run), "device": str(dev), "csv": str(csv_path),
                                              "png": str(png)})
    s = loc.summary()
    mean = f"{s['circular_mean_azimuth_deg']:.0f} deg" if s["windows"] > s["silent_windows"] else "none"
    return (f"{path}: {s['windows']} windows ({s['silent_windows']} silent), {s['duration_s']:.2f} s at "
            f"{s['sample_rate_in']} Hz; left {s['left_hemifield_windows']}, right "
            f"{s['right_hemifield_windows']}; circular mean {mean} -> {csv_path}, {png}")


def _localize_seld(run, model, dev, target, path, out, stem) -> str:
    from bast.fileio import write_json
    from bast.model.inference.seld import localize_recording
    from bast.model.runs.checkpoint import read_run_config
    from bast.report.figures import seld_timeline
    from bast.dcase.files import write_dcase_csv

    loc = localize_recording(model, path, target, int(read_run_config(run)["window_frames"]), dev)
    csv_path, png = out / f"{stem}.csv", out / f"{stem}.png"
    out.mkdir(parents=True, exist_ok=True)
    write_dcase_csv(csv_path, loc.rows)
    seld_timeline(loc.rows[:, :5], png, loc.classes, duration_s=loc.duration_s, title=f"SELD: {Path(path).name}")
    s = {**loc.summary(), "run": str(run), "device": str(dev), "csv": str(csv_path), "png": str(png)}
    write_json(out / f"{stem}.json", s)
    by_class = ", ".join(f"{c} {n}" for c, n in s["rows_by_class"].items())
    return (f"{path}: {s['windows']} windows, {s['label_frames']} frames of 100 ms, {s['duration_s']:.2f} s at "
            f"{s['sample_rate_in']} Hz; {s['rows']} event rows ({by_class}) -> {csv_path} (DCASE), {png}")


@command
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where every stage writes (re-running resumes).")] = Path("bast-demo"),
    sounds: Annotated[int, typer.Option(help="Procedural sounds to render (290: about 200 training sounds, 14,000 training samples).")] = 290,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Local dask worker processes (default: one per core).")] = None,
) -> None:
    """The whole pipeline on the default corpus: spatialize, featurize (with interaural phase),
    train the tiny BAST and the mlp baseline for a fixed number of epochs (a GPU when there
    is one), and report both. Ends with the report's path and each model's test AD."""
    from bast.demo import run_demo

    with _progress("demo") as progress:
        result = run_demo(out, sounds=sounds, seed=seed, workers=workers, progress=progress)
    for name, test in result.runs.items():
        console.print(f"[bold green]{name}: test AD {test['ad_deg']:.1f} deg[/] (median {test['median_ad_deg']:.1f}; "
                      f"broadband noise {result.broadband_noise_ad_deg[name]:.1f} deg; chance 90 deg) "
                      f"on {test['n']:,} test samples")
    console.print(f"report: {result.page.resolve()}")


@command
def irs(
    env: Annotated[Optional[str], typer.Option(help="Environments: anechoic, hall, or both (aliases RI01, RI02, RI). [default: RI, none with --rooms or --interpolation-check]")] = None,
    hrir: Annotated[Optional[Path], typer.Option(help="SOFA HRIR set (default: bundled MIT KEMAR).")] = None,
    brir: Annotated[Optional[Path], typer.Option(help="Measured BRIR SOFA file to use for the hall.")] = None,
    rt60: Annotated[float, typer.Option(help="Simulated hall: target RT60 in seconds.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Simulated hall: seed of its random tail.")] = 0,
    azimuths: Annotated[str, typer.Option(help="Simulated hall: azimuths, start:stop:step or a list.")] = "0:360:10",
    elevations: Annotated[str, typer.Option(help="Simulated rooms: elevations, a list (-30,0,30) or LO:HI:STEP (HI included).")] = "0",
    tolerance: Annotated[float, typer.Option(help="Largest angle (deg) between a requested and an available direction.")] = 0.0,
    interpolate: Annotated[bool, typer.Option("--interpolate", help="Simulated rooms: the direct sound through HRIRs interpolated at exactly the requested directions.")] = False,
    interpolation_check: Annotated[bool, typer.Option("--interpolation-check", help="Leave-one-out on the HRIR set: rebuild each direction from the others, interpolated and nearest; spectral distortion and ITD error. docs/sphere.md.")] = False,
    rooms: Annotated[int, typer.Option(help="Also build, measure and check the N rooms `spatialize --rooms N --seed S` generates.")] = 0,
    test_rooms: Annotated[int, typer.Option(help="And the M test rooms of `spatialize --test-rooms M`.")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="Build generated rooms on this many local dask workers (default: in this process).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the PNG figures and the JSON figures.")] = Path("bast-irs"),
) -> None:
    """Measure impulse-response sets (ITD, ILD, RT60, DRR, interaural coherence) and plot them.

    Check a set here before rendering with it. The simulated hall is built once and cached
    (set BAST_CACHE to move the cache). With --rooms/--test-rooms, each generated room is
    built through the head (--hrir), measured like the hall and checked (RT60 against its
    target, direct ITD/ILD against the anechoic head, tail coherence, DRR against theory);
    exit status 1 if a room fails a check. --interpolation-check measures HRIR
    interpolation against the nearest measured direction, leave-one-out.
    """
    import numpy as np

    from bast import options
    from bast.errors import ConfigError, DataError
    from bast.pipeline.irs import check as ircheck
    from bast.pipeline.irs.hall import HallSpec
    from bast.pipeline.irs.sources import IRSources, direction_grid, parse_azimuths, parse_elevations, parse_environments
    from bast.pipeline.irs.rooms import draw_rooms

    options.output_dir(out, "--out", inputs=[("--hrir", hrir), ("--brir", brir)])
    options.workers(workers)
    envs = parse_environments(env or "RI") if (env or not (rooms or test_rooms or interpolation_check)) else ()
    grid_el, limit = parse_elevations(elevations)
    if grid_el is None:
        raise ConfigError(f"--elevations {elevations}: irs needs a list or LO:HI:STEP (LO:HI limits spatialize --directions all)")
    pairs = direction_grid(parse_azimuths(azimuths), grid_el)
    az, el = pairs[:, 0], (None if not np.any(pairs[:, 1]) else pairs[:, 1])
    spec = HallSpec(rt60_s=rt60, seed=seed)
    if el is not None:
        spec = spec.fitted(el)
    sources = IRSources(hrir=hrir, brir=brir, hall=spec, tolerance_deg=tolerance)
    generated = draw_rooms(rooms, seed) + draw_rooms(test_rooms, seed, test=True)
    results = {}
    for name in envs:
        with console.status(f"loading {name} impulse responses"):
            m = ircheck.check_environment(sources, name, az, el, out=out, interpolate=interpolate)
        results[name] = m
        _print_measurement(name, m)
    failed = _check_rooms(generated, results, hrir, az, el, out, tolerance=tolerance, seed=seed,
                          interpolate=interpolate, workers=workers) if generated else []
    if interpolation_check:
        results["interpolation_check"] = _interpolation_check(hrir)
    path = ircheck.write_results(results, out)
    pngs = [r["png"] for r in results.values() if "png" in r]
    console.print((f"figures: {', '.join(pngs)}; " if pngs else "") + f"numbers: {path}")
    if failed:
        raise DataError(f"{len(failed)} generated room(s) failed a physics check: {', '.join(failed)} "
                        f"(details above and in {path})")


def _check_rooms(generated: list, results: dict, hrir, az, el, out: Path, *, tolerance: float, seed: int,
                 interpolate: bool, workers) -> list[str]:
    """Build, measure and check the generated rooms through the head (into `results`, each
    printed); the names of those that failed a check."""
    from bast.pipeline.irs import check as ircheck
    from bast.pipeline.irs.sources import default_hrir_path
    from bast.pipeline.stage import cluster

    with console.status(f"building {len(generated)} rooms"), cluster.open_client(workers or 0) as client:
        built = ircheck.check_generated_rooms(generated, str(hrir or default_hrir_path()), az, el, out=out,
                                              tolerance_deg=tolerance, seed=seed, interpolate=interpolate,
                                              client=client)
    failed = []
    for room, m in zip(generated, built.values()):
        results[room.name] = m
        _print_measurement(room.name, m)
        _print_checks(m["checks"])
        if not all(c["ok"] for c in m["checks"]):
            failed.append(room.name)
    return failed


def _interpolation_check(hrir) -> dict:
    """HRIR interpolation against the nearest measured direction, leave-one-out, printed."""
    from bast.pipeline.irs import check as ircheck
    from bast.pipeline.irs.sources import load_hrirs

    head = load_hrirs(hrir)
    with _progress("leave-one-out") as progress:
        progress.stage("leave-one-out")
        loo = ircheck.interpolation_check(head, on_step=progress.on_step)
    _print_interpolation(loo)
    return loo


def _print_interpolation(loo: dict) -> None:
    t = Table(title=f"interpolation, leave-one-out: {loo['directions']} directions of {loo['source']} "
                    f"(SD over {loo['sd_band_hz'][0]:g}-{loo['sd_band_hz'][1]:g} Hz)")
    for col in ("elevation (deg)", "n", "SD interp. (dB)", "SD nearest (dB)", "ITD err. interp. (us)",
                "ITD err. nearest (us)"):
        t.add_column(col, justify="right")

    def row(label: str, s: dict, **style) -> None:
        t.add_row(label, str(s["directions"]), f"{s['sd_db_interpolated']['mean']:.2f}", f"{s['sd_db_nearest']['mean']:.2f}",
                  f"{s['itd_error_us_interpolated']['mean']:.1f}", f"{s['itd_error_us_nearest']['mean']:.1f}", **style)

    for elevation, s in loo["by_elevation"].items():
        row(elevation, s)
    row("all (mean)", loo["overall"], style="bold")
    console.print(t)
    o = loo["overall"]
    console.print(f"median SD {o['sd_db_interpolated']['median']:.2f} vs {o['sd_db_nearest']['median']:.2f} dB, "
                  f"95th percentile {o['sd_db_interpolated']['p95']:.2f} vs {o['sd_db_nearest']['p95']:.2f} dB; "
                  f"median ITD error {o['itd_error_us_interpolated']['median']:.1f} vs "
                  f"{o['itd_error_us_nearest']['median']:.1f} us (interpolated vs nearest)")


def _print_checks(rows: list[dict]) -> None:
    t = Table(title="physics checks")
    for col in ("check", "value", "target", "result"):
        t.add_column(col, justify="left" if col == "check" else "right")
    for r in rows:
        t.add_row(r["check"], f"{r['value']:g}", r["target"], "[green]pass[/]" if r["ok"] else "[bold red]FAIL[/]")
    console.print(t)


def _print_measurement(name: str, m: dict) -> None:
    """A measurement of ircheck; `m["room"]` (a simulated room's record) adds its theory."""
    from bast.pipeline.irs.check import cardinal_rows

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
        room = m.get("room")
        line = f"direct-to-reverberant ratio at {room['distance_m'] if room else 1:g} m: {m['drr_db']:.1f} dB"
        if room:
            line += f" (diffuse-field theory for {room['volume_m3']:g} m3, RT60 {room['rt60_s']:g} s: {m['drr_predicted_db']:.1f} dB)"
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
