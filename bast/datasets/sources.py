"""From what a user names on the command line to a list of clips.

`resolve_source("default", ...)` is a built-in recipe (the procedural corpus);
anything else is the user's sounds: a folder, a CSV manifest or one file. `test`, when
given, is a folder or CSV of independent test sounds, whatever the training source is
(procedural training sounds can be tested on recorded ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bast.datasets.base import RECIPES, ClipRef


@dataclass
class Sources:
    refs: list[ClipRef]
    info: dict  # what the stage records as its source (recipe, folders, counts)
    ignored: list[str] = field(default_factory=list)  # non-audio files found in the folders
    notes: list[str] = field(default_factory=list)  # e.g. duplicate manifest rows skipped


def resolve_source(source: str, *, test: Path | None = None, sounds: int = 200, seed: int = 0,
                   speech: bool | None = None, categories: str | None = None) -> Sources:
    """The clips of `source` (a recipe name, a folder, a CSV manifest or a file), plus the
    test sounds of `test`. `sounds`, `seed` and `speech` configure a procedural recipe.
    `categories` (comma-separated names) keeps the sounds of those categories only; a
    recipe then draws `sounds` sounds of them (the recipe's other kinds skipped)."""
    import bast.datasets  # noqa: F401  (registers the built-in recipes)

    wanted = parse_categories(categories)
    test_info = str(Path(test).resolve()) if test else None
    if source in RECIPES and source != "files":
        corpus = RECIPES[source](n_clips=sounds, seed=seed, speech=speech)
        kinds = getattr(corpus, "kinds", None)
        if wanted and kinds:  # a recipe balanced over its kinds: list enough to draw `sounds` of the wanted ones
            n = sounds * -(-len(kinds) // len(wanted)) + len(kinds)
            corpus = RECIPES[source](n_clips=n, seed=seed, speech=speech)
        refs = keep_categories(corpus.list_clips(), wanted, f"the {source} recipe")[:sounds] if wanted else \
            corpus.list_clips()
        out = Sources(refs, {"recipe": source, "sounds": sounds, "seed": seed, "speech": speech, "test": test_info,
                             **(corpus.manifest_info() if hasattr(corpus, "manifest_info") else {}),
                             **({"categories": sorted(wanted)} if wanted else {})})
        if getattr(corpus, "note", None) and corpus.note():
            out.notes.append(corpus.note())
        if test:
            from bast.datasets.files import test_clips

            out.refs = test_clips(test, refs, out.ignored, out.notes)
            out.refs = keep_categories(out.refs, wanted, str(test)) if wanted else out.refs
        return out
    corpus = RECIPES["files"](source, test=test)
    refs = corpus.list_clips()
    if wanted:
        refs = keep_categories(refs, wanted, source)
    return Sources(refs, {"recipe": "files", "source": str(Path(source).resolve()), "test": test_info,
                          **({"categories": sorted(wanted)} if wanted else {})},
                   corpus.ignored, corpus.warnings)


def parse_categories(text: str | None) -> set[str]:
    """--categories a,b,c as a set of names; None or "" = every category."""
    if text is None:
        return set()
    names = {n.strip() for n in str(text).split(",") if n.strip()}
    if not names:
        from bast.errors import ConfigError

        raise ConfigError(f"--categories needs at least one category name, not {text!r}")
    return names


def keep_categories(refs: list[ClipRef], wanted: set[str], where: str) -> list[ClipRef]:
    """The clips of the `wanted` categories; a name no clip of `where` has is refused with
    the categories it does have."""
    have = {r.category for r in refs}
    unknown = sorted(wanted - have)
    if unknown:
        from bast.errors import ConfigError

        raise ConfigError(f"--categories: {', '.join(unknown)} not among the categories of {where} "
                          f"({', '.join(sorted(c for c in have if c)) or 'none'})")
    return [r for r in refs if r.category in wanted]
