"""What Stage 1 leaves beside its shards (spatialize and scenes alike): the output folder's
checks, the totals over shards, the IR files of each condition (irs/<key>.sofa) and example
WAV files for listening."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from bast import options
from bast.conventions import FS
from bast.datasets.base import ClipRef
from bast.fileio import atomic_path
from bast.pipeline.irs.hall import save_bank
from bast.pipeline.render.conditions import SpatializeConfig
from bast.pipeline.stage.runner import StageSummary
from bast.pipeline.stage.shards import OWNED, ShardInfo
from bast.pipeline.irs.sofa import write_sofa


MAX_EXAMPLES = 1000  # example clips to write as WAV (x 4 azimuths x conditions): for listening


def stage1_inputs(refs: list[ClipRef], config: SpatializeConfig, source: dict) -> list[tuple[str, str]]:
    """What a Stage 1 run reads, named for messages: heads, rooms, the sound folders and
    every sound file; no output may land on any of them."""
    inputs = [("--hrir", p) for p in config.hrir_paths] + [("--brir", p) for p in config.brir_paths]
    inputs += [("--test-hrir", p) for p in config.test_hrir]
    inputs += [(name, source[key]) for key, name in (("source", "the sound source"), ("test", "--test"))
               if source.get(key)]
    return inputs + [("sound", r.locator) for r in refs if r.recipe == "files"]


def check_output(out_dir, refs: list[ClipRef], config: SpatializeConfig, source: dict) -> None:
    """OUT is a folder (new or existing) that is no input nor inside one, and no input
    (a sound, a SOFA file) lies where the stage writes or --overwrite clears."""
    options.output_dir(out_dir, "OUT", inputs=stage1_inputs(refs, config, source), owned=OWNED)


def summarise_shards(summary: StageSummary, shards: list[ShardInfo]) -> None:
    """Totals over shards; a clip (a scene, for `bast-cli scenes`) is in one shard per
    condition, so its failure and its warnings are counted once (from the shards of its
    split's first condition)."""
    seen: set[str] = set()
    warnings: Counter = Counter()
    first: dict[str, tuple] = {}
    for s in shards:  # in index order: a split's first shard is in its first condition
        first.setdefault(s.split, (s.env, s.head, s.room))
    for s in shards:
        summary.samples += s.samples
        if (s.env, s.head, s.room) == first[s.split]:
            summary.clips += s.clips
            warnings.update(s.warnings)
        for f in s.failures:
            if f["clip_id"] not in seen:
                seen.add(f["clip_id"])
                summary.failures.append(f)
    summary.failures.sort(key=lambda f: f["clip_id"])
    summary.warnings = dict(warnings)


def write_irs(out_dir: Path, condition_sets: dict) -> dict[str, str]:
    """Save the exact IR pairs each condition renders with beside the data (provenance,
    and what workers on any machine load): irs/<key>.sofa."""
    paths = {}
    for key, (cond, irset, how) in condition_sets.items():
        path = out_dir / "irs" / f"{key}.sofa"
        attrs = {"Title": f"bast {cond.env} impulse responses (head {cond.head}, room {cond.room}) used for this data set",
                 "Comment": f"from {irset.source}"}
        if "spec" in how:
            save_bank(path, irset, how["spec"])
        else:
            write_sofa(path, irset, conventions="SimpleFreeFieldHRIR" if cond.env == "anechoic" else "GeneralFIR",
                       attrs=attrs)
        paths[key] = str(path)
    return paths


def check_examples(n_clips: int) -> int:
    return options.count(n_clips, "--examples", 0, MAX_EXAMPLES)


def write_examples(out_dir, n_clips: int = 3, azimuths=(0.0, 90.0, 180.0, 270.0)) -> list[Path]:
    """WAV files of a few rendered clips, for listening: the first `n_clips` clips of the
    test split (or the first split there is), at `azimuths` on the horizontal plane, in every
    environment."""
    import h5py
    import soundfile as sf

    check_examples(n_clips)
    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    shards = manifest["shards"]
    splits = [s["split"] for s in shards if s["samples"]]
    if not splits:
        return []
    split = "test" if "test" in splits else splits[0]
    written = []
    # One folder per environment, or per room and head when an environment has several.
    conds = list(dict.fromkeys((s["env"], s.get("head", ""), s.get("room", "")) for s in shards))
    per_env = Counter(env for env, _, _ in conds)
    for env, head, room in conds:
        folder = env if per_env[env] == 1 else f"{room}--{head}" if room != head else room
        wanted: list[str] = []
        for s in (s for s in shards if s["split"] == split and (s["env"], s.get("head", ""), s.get("room", ""))
                  == (env, head, room) and s["samples"]):
            with h5py.File(out_dir / s["path"], "r") as f:
                ids = f["clip_id"].asstr()[()]
                az = f["azimuth_deg"][()]
                el = f["elevation_deg"][()] if "elevation_deg" in f else np.zeros_like(az)
                for i, (clip, a, e) in enumerate(zip(ids, az, el)):
                    if clip not in wanted and len(wanted) < n_clips:
                        wanted.append(clip)
                    if clip in wanted and np.any(np.isclose(a, azimuths)) and abs(e) < 1e-3:
                        name = f"{clip.replace('/', '_').replace('#', '-')}_az{int(round(a)):03d}.wav"
                        path = out_dir / "examples" / folder / name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with atomic_path(path) as tmp:
                            sf.write(tmp, f["audio"][i].T, FS, subtype="FLOAT")
                        written.append(path)
            if len(wanted) >= n_clips:
                break
    return written
