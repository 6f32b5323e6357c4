"""What a Stage 1 folder was made from, read back as a recipe to draw training samples from
anew: training on the fly (docs/train.md "Training on the fly").

A `spatialize` output records everything that made it: its parameters (params.json: the
sound source, the clip policy, the seed, the split fractions, the directions, heads, rooms
and noise) and the exact IR banks it rendered with (irs/<key>.sofa). `read_recipe` rebuilds
from these, with Stage 1's own functions, the list of sounds and their train/val/test split
(`assign_splits`), each split's conditions (`layout`) and the IR file of each condition; a
folder whose sounds can no longer be listed as they were (another corpus version, files
changed) is refused, since its held-out sounds could then leak into training.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bast.conventions import SPLITS
from bast.datasets.base import ClipRef
from bast.errors import ConfigError, DataError, MissingError
from bast.pipeline.irs.hall import HallSpec
from bast.pipeline.irs.rooms import RoomRanges
from bast.pipeline.render.clips import ClipPolicy
from bast.pipeline.render.conditions import Condition, SpatializeConfig, assign_splits, layout


@dataclass(frozen=True)
class Recipe:
    """A Stage 1 folder as a recipe: its configuration, the sounds of each split, the
    conditions of the training split and the IR file each renders with."""

    stage1: Path
    config: SpatializeConfig
    source: dict  # the params' record of the sounds (recipe, folder, count, seed)
    refs: tuple[ClipRef, ...]  # every sound, in the order spatialize listed them
    sounds: dict  # split -> tuple of ClipRefs
    conditions: tuple[Condition, ...]  # the training split's (train and val share them)
    ir_paths: dict  # condition key -> the IR file it renders with (irs/<key>.sofa)
    rooms: dict  # room label -> HallSpec (simulated) or SOFA path (measured)
    head_paths: dict  # head label -> SOFA path
    categories: tuple[str, ...]  # the sorted class list of the whole data set
    plan_only: bool = False  # written by `spatialize --plan-only`: no audio shards

    @functools.cached_property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """The directions (azimuths, elevations) of Stage 1, the rows of its IR banks."""
        return self.config.grid()

    @property
    def procedural(self) -> bool:
        """Sounds synthesised from a seed (the built-in corpus), so that new ones can be made."""
        return self.source.get("recipe") not in (None, "files")

    def train_sounds(self) -> tuple[ClipRef, ...]:
        return self.sounds["train"]


def config_from_params(params: dict) -> SpatializeConfig:
    """The SpatializeConfig a params.json was written from (its fields; the rest are records)."""
    names = {f.name for f in dataclasses.fields(SpatializeConfig)}
    kwargs = {k: v for k, v in params.items() if k in names}
    if isinstance(kwargs.get("policy"), dict):
        kwargs["policy"] = ClipPolicy(**kwargs["policy"])
    if isinstance(kwargs.get("room_ranges"), dict):
        kwargs["room_ranges"] = RoomRanges(**{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in kwargs["room_ranges"].items()})
    for key in ("azimuths", "environments", "elevations", "test_hrir"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if kwargs.get("directions") is not None:
        kwargs["directions"] = tuple(tuple(p) for p in kwargs["directions"])
    if kwargs.get("snr_db") is not None:
        kwargs["snr_db"] = tuple(kwargs["snr_db"])
    return SpatializeConfig(**kwargs)


def list_sounds(source: dict) -> list[ClipRef]:
    """The clips a Stage 1 source record names, listed again as `spatialize` listed them."""
    from bast.datasets.sources import resolve_source

    categories = ",".join(source["categories"]) if source.get("categories") else None
    if source.get("recipe") == "files":
        return resolve_source(source["source"], test=source.get("test"), categories=categories).refs
    speech = source.get("speech")
    if speech is None and "missing_kinds" in source:  # the kinds it had, not what this machine has
        speech = "speech" not in source["missing_kinds"]
    return resolve_source(source["recipe"], test=source.get("test"), sounds=int(source["sounds"]),
                          seed=int(source["seed"]), speech=speech, categories=categories).refs


def clips_digest(refs: list[ClipRef]) -> str:
    """What `spatialize` records of its clip list (params.json clips_sha256)."""
    return hashlib.sha256("\n".join(f"{r.clip_id}\t{r.recipe}\t{r.locator}\t{r.category}\t{r.split}"
                                    for r in refs).encode()).hexdigest()


def read_folder_json(root: Path, hint: str) -> tuple[dict, dict]:
    """The params.json and manifest.json of a finished stage folder; `hint` says what reads it."""
    for name in ("params.json", "manifest.json"):
        if not (root / name).is_file():
            raise MissingError(f"{root}: no {name}; {hint}")
    try:
        return json.loads((root / "params.json").read_text()), json.loads((root / "manifest.json").read_text())
    except ValueError as exc:
        raise DataError(f"{root}: params.json or manifest.json is not valid JSON ({exc})") from None


def listed_sounds(root: Path, params: dict, config, stage: str, no_source: str, again: str):
    """(source record, every sound, split -> sounds) of a stage folder, listed again as `stage`
    listed them and split as it split them; refused when the list is not the one it
    recorded (then the held-out sounds are unknown). `config`: its seed and split fractions."""
    source = params.get("source") or {}
    if "recipe" not in source:
        raise DataError(f"{root}: its params.json does not record the sound source{no_source}")
    refs = list_sounds(source)
    if clips_digest(refs) != params.get("clips_sha256"):
        raise DataError(f"{root}: its sounds can no longer be listed as {stage} listed them (the corpus or the "
                        f"sound files changed), so the held-out sounds are unknown; {again}")
    split_of = assign_splits(refs, config.seed, config.val_fraction, config.test_fraction)
    return source, refs, {s: tuple(r for r in refs if split_of[r.clip_id] == s) for s in SPLITS}


def condition_ir_paths(root: Path, manifest: dict, conditions) -> dict:
    """Condition key -> the IR file of the folder it rendered with (irs/<key>.sofa)."""
    irs = manifest.get("totals", {}).get("irs") or manifest.get("irs") or {}
    paths = {}
    for cond in conditions:
        path = root / irs.get(cond.key, f"irs/{cond.key}.sofa")
        if not path.is_file():
            raise MissingError(f"{path}: the IR bank of condition {cond.key} is missing from {root}")
        paths[cond.key] = str(path)
    return paths


def read_recipe(stage1_dir) -> Recipe:
    """The recipe of a `spatialize` output folder (complete, or written by --plan-only)."""
    root = Path(stage1_dir)
    params, manifest = read_folder_json(root, "training on the fly reads a finished `bast-cli spatialize` output "
                                              "folder (or one written with --plan-only)")
    if params.get("stage") != "spatialize":
        raise DataError(f"{root}: made by `{params.get('stage', '?')}`, not `spatialize`; training on the fly "
                        "draws clips from a spatialize output (and scenes, for --target seld, from a `bast-cli scenes` output)")
    config = config_from_params(params)
    source, refs, sounds = listed_sounds(root, params, config, "spatialize",
                                         "; re-run spatialize with this version of bast", "spatialize them again")
    the_layout = layout(config)
    ir_paths = condition_ir_paths(root, manifest, the_layout.splits["train"])
    categories = tuple(sorted(manifest.get("categories") or {r.category for r in refs}))
    return Recipe(root, config, source, tuple(refs), sounds, the_layout.splits["train"], ir_paths, dict(the_layout.rooms),
                  dict(the_layout.head_paths), categories, bool(manifest.get("plan_only")))


def simulated(recipe: Recipe, room: str) -> HallSpec | None:
    """The HallSpec of a simulated room of the recipe, None for a measured one."""
    spec = recipe.rooms.get(room)
    return spec if isinstance(spec, HallSpec) else None


def check_fresh_sounds(recipe: Recipe) -> None:
    if not recipe.procedural:
        raise ConfigError(f"--fresh-sounds needs sounds that can be synthesised anew (the built-in procedural "
                          f"corpus); {recipe.stage1} was made from the files of {recipe.source.get('source')}")
