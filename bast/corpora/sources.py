"""From what a user names on the command line to a list of clips.

`resolve_source("default", ...)` is a built-in recipe (the procedural corpus);
anything else is the user's sounds: a folder, a CSV manifest or one file. `test`, when
given, is a folder or CSV of independent test sounds, whatever the training source is
(procedural training sounds can be tested on recorded ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bast.corpora.base import RECIPES, ClipRef


@dataclass
class Sources:
    refs: list[ClipRef]
    info: dict  # what the stage records as its source (recipe, folders, counts)
    ignored: list[str] = field(default_factory=list)  # non-audio files found in the folders
    notes: list[str] = field(default_factory=list)  # e.g. duplicate manifest rows skipped


def resolve_source(source: str, *, test: Path | None = None, sounds: int = 200, seed: int = 0,
                   speech: bool | None = None) -> Sources:
    """The clips of `source` (a recipe name, a folder, a CSV manifest or a file), plus the
    test sounds of `test`. `sounds`, `seed` and `speech` configure a procedural recipe."""
    import bast.corpora  # noqa: F401  (registers the built-in recipes)

    test_info = str(Path(test).resolve()) if test else None
    if source in RECIPES and source != "files":
        corpus = RECIPES[source](n_clips=sounds, seed=seed, speech=speech)
        refs = corpus.list_clips()
        out = Sources(refs, {"recipe": source, "sounds": sounds, "seed": seed, "speech": speech, "test": test_info,
                             **(corpus.manifest_info() if hasattr(corpus, "manifest_info") else {})})
        if getattr(corpus, "note", None) and corpus.note():
            out.notes.append(corpus.note())
        if test:
            from bast.corpora.files import test_clips

            out.refs = test_clips(test, refs, out.ignored, out.notes)
        return out
    corpus = RECIPES["files"](source, test=test)
    return Sources(corpus.list_clips(), {"recipe": "files", "source": str(Path(source).resolve()), "test": test_info},
                   corpus.ignored, corpus.warnings)
