"""Sound corpora as recipes: each lists its clips cheaply and loads one clip from its
reference alone. Built in: `files` (a folder or CSV of the user's sounds) and `default`
(a procedural corpus that needs no download)."""

from bast.datasets.base import RECIPES, ClipError, ClipRef, Recipe, load_clip, register

__all__ = ["RECIPES", "ClipError", "ClipRef", "Recipe", "load_clip", "register"]
from bast.datasets import procedural  # noqa: F401
from bast.datasets import files  # noqa: F401
