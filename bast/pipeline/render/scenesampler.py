"""Scenes drawn anew from a `bast-cli scenes` folder and rendered on demand: the Stage 1 side
of SELD training on the fly (docs/seld.md "New scenes every epoch").

A scenes folder records what made it (params.json: the sound source, the scene settings,
the seed, the split fractions, the directions, heads, rooms and noise; irs/<key>.sofa: the
IR sets its scenes were heard through). `read_scene_recipe` rebuilds from these, with Stage
1's own functions, its `ScenesConfig`, the sounds of each split (`assign_splits`), the
conditions of the training split (`layout`) and the IR file of each; a folder whose sounds
can no longer be listed as they were is refused, since its held-out sounds could then leak
into training.

`draw_scenes` decides training scene k of an epoch from (seed, epoch, k) alone: a scene id
`fly-SEED-EPOCH-K` (never one of Stage 1's `train-00000` ids) and a condition of the training
split. `SceneRenderer` makes it with the scenes stage's own functions: the events are
`draw_scene` of that id over the training sounds (the event count, overlap, grid, moving
share and speeds of the folder), the audio and label rows `render_condition` (`mix`, the
noise at the folder's SNR, `label_rows`), exactly as `bast-cli scenes` renders a shard. So
the folder's own draw (`folder_draw`: its scene id in one of its conditions) is the Stage 1
scene of that id, sample for sample (tests/model/data/test_scenefly.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bast.conventions import FS
from bast.datasets.base import ClipRef
from bast.errors import DataError
from bast.pipeline.irs.rooms import RoomRanges
from bast.pipeline.render.clips import ClipPolicy
from bast.pipeline.render.conditions import Condition, layout
from bast.pipeline.render.recipe import condition_ir_paths, listed_sounds, read_folder_json
from bast.pipeline.render.scenemodel import Event, scene_counts
from bast.pipeline.render.scenes import (STAGE, SceneTask, ScenesConfig, category_list, draw_scene, load_event,
                                         render_condition, scene_rng)
from bast.pipeline.stage.shards import SPLITS


@dataclass(frozen=True)
class SceneRecipe:
    """A scenes folder as a recipe: its configuration, the sounds of each split, the
    conditions of the training split and the IR file each renders with."""

    stage1: Path
    config: ScenesConfig
    source: dict  # the params' record of the sounds (recipe, folder, count, seed)
    sounds: dict  # split -> tuple of ClipRefs, in the order `scenes` listed them
    conditions: tuple[Condition, ...]  # the training split's (train and val share them)
    ir_paths: dict  # condition key -> the IR file it renders with (irs/<key>.sofa)
    categories: tuple[str, ...]  # the sorted class list of the whole data set
    scenes: dict  # split -> how many scenes the folder holds of it (each in every condition of its split)

    def train_sounds(self) -> tuple[ClipRef, ...]:
        return self.sounds["train"]


def _tupled(value):
    """JSON lists back as the tuples a frozen config holds (nested: directions)."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def scenes_config_from_params(params: dict) -> ScenesConfig:
    """The ScenesConfig a scenes params.json was written from (its fields; the rest are records)."""
    kwargs = {f.name: _tupled(params[f.name]) for f in dataclasses.fields(ScenesConfig) if f.name in params}
    if isinstance(kwargs.get("policy"), dict):
        kwargs["policy"] = ClipPolicy(**kwargs["policy"])
    if isinstance(kwargs.get("room_ranges"), dict):
        kwargs["room_ranges"] = RoomRanges(**{k: _tupled(v) for k, v in kwargs["room_ranges"].items()})
    return ScenesConfig(**kwargs)


def read_scene_recipe(scenes_dir) -> SceneRecipe:
    """The recipe of a finished `bast-cli scenes` output folder."""
    root = Path(scenes_dir)
    params, manifest = read_folder_json(root, "training scenes on the fly reads a finished `bast-cli scenes` "
                                              "output folder")
    if params.get("stage") != STAGE:
        raise DataError(f"{root}: made by `{params.get('stage', '?')}`, not `scenes`; SELD training on the fly "
                        "draws scenes from a `bast-cli scenes` output")
    config = scenes_config_from_params(params)
    source, refs, sounds = listed_sounds(
        root, params, config, "`scenes`",
        " (scenes rendered through the Python API without `source=`); render them with `bast-cli scenes`",
        "render the scenes again")
    conditions = layout(config.spatialize_config()).splits["train"]
    ir_paths = condition_ir_paths(root, manifest, conditions)
    counts = scene_counts(config.count, {s: len(sounds[s]) for s in SPLITS})
    return SceneRecipe(root, config, source, sounds, tuple(conditions), ir_paths, category_list(refs), counts)


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class SceneDraw:
    """One training scene, decided: its events are `draw_scene` of `scene_id`."""

    number: int  # the scene's number in its epoch
    scene_id: str
    condition: int  # index into recipe.conditions


def draw_scenes(recipe: SceneRecipe, seed: int, epoch: int, numbers) -> list[SceneDraw]:
    """The training scenes `numbers` of `epoch`, each from (seed, epoch, number) alone."""
    if not recipe.train_sounds():
        raise DataError(f"{recipe.stage1}: no training sounds to draw scenes from")
    out = []
    for number in numbers:
        condition = int(scene_rng(seed, "fly-condition", epoch, number).integers(len(recipe.conditions)))
        out.append(SceneDraw(int(number), f"fly-{int(seed)}-{int(epoch)}-{int(number)}", condition))
    return out


def folder_draw(recipe: SceneRecipe, scene_id: str, condition: int) -> SceneDraw:
    """The folder's own training scene `scene_id` (train-00000, ...) in condition `condition`:
    rendered, it is the Stage 1 scene of that id and condition."""
    return SceneDraw(-1, scene_id, condition)


def default_epoch_scenes(recipe: SceneRecipe) -> int:
    """As many scene renders as the folder's training split holds (scenes x conditions)."""
    return recipe.scenes["train"] * len(recipe.conditions)


# --------------------------------------------------------------------------- rendering


class EventAudio:
    """The training sounds as events (`scenes.load_event`), each loaded on its first use and
    kept; a sound that fails to load is None (never drawn again in a scene), as in Stage 1."""

    def __init__(self, refs: tuple[ClipRef, ...], config: ScenesConfig):
        self.refs = {r.clip_id: r for r in refs}
        self.policy = config.policy
        self.max_samples = round(min(config.max_event_s, config.duration_s) * FS)
        self.audio: dict[str, np.ndarray | None] = {}

    def length_of(self, clip_id: str) -> int | None:
        if clip_id not in self.audio:
            try:
                self.audio[clip_id], _ = load_event(self.refs[clip_id], self.policy, self.max_samples)
            except Exception:  # noqa: BLE001  ClipError, or as in Stage 1 an unforeseen library error
                self.audio[clip_id] = None  # one sound's problem, not the run's
        return None if self.audio[clip_id] is None else len(self.audio[clip_id])


class SceneRenderer:
    """Renders scene draws of one recipe with the scenes stage's functions; keeps the sounds
    it loads for its lifetime (IR sets and noise banks are cached by Stage 1's functions),
    so build one per loader worker."""

    def __init__(self, recipe: SceneRecipe):
        self.recipe = recipe
        self.sounds = EventAudio(recipe.train_sounds(), recipe.config)
        self.pool: dict[str, list[str]] = {}
        for r in recipe.train_sounds():  # as run_task groups a split's sounds
            self.pool.setdefault(r.category, []).append(r.clip_id)
        self.category_index = {c: i for i, c in enumerate(recipe.categories)}

    def events(self, d: SceneDraw) -> list[Event]:
        return draw_scene(d.scene_id, self.recipe.config, self.pool, self.sounds.length_of)

    def render(self, draws: list[SceneDraw]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Audio (B, 2, n) float32, SNR (B,) float32 and label rows (each (R, 6) float32, as a
        shard stores them) of the draws: the scenes of one condition rendered together by
        Stage 1's `render_condition`."""
        cfg = self.recipe.config
        scenes = {d.scene_id: self.events(d) for d in draws}
        audio = np.empty((len(draws), 2, cfg.n_samples), dtype=np.float32)
        snr = np.empty(len(draws), dtype=np.float32)
        rows: list = [None] * len(draws)
        for c in sorted({d.condition for d in draws}):
            picked = [i for i, d in enumerate(draws) if d.condition == c]
            cond = self.recipe.conditions[c]
            task = SceneTask("train", tuple(draws[i].scene_id for i in picked), self.recipe.train_sounds(), (), cfg,
                             self.recipe.categories, "")
            out = render_condition(task, cond, self.recipe.ir_paths[cond.key], scenes, self.sounds.audio.__getitem__,
                                   self.category_index)
            offsets = out["label_offsets"]
            for j, i in enumerate(picked):
                audio[i], snr[i] = out["audio"][j], out["snr_db"][j]
                rows[i] = out["labels"][offsets[j]:offsets[j + 1]]
        return audio, snr, rows


def describe_scene_recipe(recipe: SceneRecipe) -> dict:
    """What config.json records of the scenes recipe a run draws from."""
    cfg = recipe.config
    return {"stage1": str(recipe.stage1), "scenes": True, "train_sounds": len(recipe.train_sounds()),
            "train_scenes": recipe.scenes["train"],
            "conditions": [{"env": c.env, "head": c.head, "room": c.room, "irs": recipe.ir_paths[c.key]}
                           for c in recipe.conditions],
            "duration_s": cfg.duration_s, "events": list(cfg.events), "max_overlap": cfg.max_overlap,
            "max_event_s": cfg.max_event_s, "moving": cfg.moving, "speed": list(cfg.speed),
            "directions": len(cfg.directions), "interpolate": cfg.interpolate,
            "noise": {"kind": cfg.noise, "snr_db": list(cfg.snr_db)} if cfg.snr_db is not None else None,
            "categories": list(recipe.categories), "source": recipe.source}
