"""What every sound corpus (recipe) provides: a cheap list of clip references, and a
loader that turns one reference into audio.

A `ClipRef` is small and picklable: it is what travels through the dask task graph
(paths and specs, never arrays). `load` must depend on the reference alone, so a worker
process can load any clip with `load_clip(ref)` without the recipe's listing options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from bast.errors import ClipError


@dataclass(frozen=True)
class ClipRef:
    clip_id: str  # stable and unique within a data set: relative path, or "kind-00012"
    recipe: str  # registry name of the recipe that loads it
    locator: str  # what that recipe needs to load it: a path, or a procedural spec
    category: str = ""  # the kind of sound, where the corpus knows it
    split: str | None = None  # "test" when the source pins it (a --test folder); else assigned


class Recipe(Protocol):
    name: str

    def list_clips(self) -> list[ClipRef]:
        """Every clip of the corpus, in a deterministic order, without loading audio."""

    @staticmethod
    def load(ref: ClipRef) -> tuple[np.ndarray, int]:
        """Audio of one clip, (samples,) or (samples, channels) float, and its sample rate.
        A staticmethod: it needs the reference alone. Raises ClipError with a readable
        reason when the clip is unusable."""


RECIPES: dict[str, Callable[..., Recipe]] = {}


def register(name: str):
    """Class decorator: make a recipe available by name (for the CLI and for workers)."""

    def deco(cls):
        cls.name = name
        RECIPES[name] = cls
        return cls

    return deco


def load_clip(ref: ClipRef) -> tuple[np.ndarray, int]:
    """Load `ref` with the recipe named in it."""
    import bast.datasets  # noqa: F401  (registers the built-in recipes)

    try:
        recipe = RECIPES[ref.recipe]
    except KeyError:
        raise ClipError(f"unknown recipe {ref.recipe!r}") from None
    return recipe.load(ref)
