"""The `files` recipe: the user's own sounds, from a folder or a CSV manifest.

Sources
-------
* A folder, searched recursively (symbolic links to folders are followed once). Audio
  files are recognised by extension, case-insensitively, among the formats libsndfile
  reads (`AUDIO_EXTENSIONS`). Any other file is not an input: it is listed in
  `FileCorpus.ignored` (so a summary can say "ignored 3 non-audio files") and is not a
  failure. Hidden files and folders (name starting with ".") are skipped without being
  counted.
* A CSV manifest (a file ending in .csv): a header row with a `path` column, and
  optional `category` and `split` columns (header names are matched case-insensitively,
  surrounding spaces ignored; a UTF-8 byte-order mark is accepted). Relative paths are
  relative to the CSV's folder. Every row is an input, whatever its extension: a row
  naming a file that does not exist still gives a clip, whose loading fails with
  "file not found", so it is recorded as a failure rather than silently dropped. A row
  whose path repeats an earlier row is skipped with a note in `FileCorpus.warnings`.
* A single audio file: one clip.

`test`, optional, is a second source of the same kinds holding independent test sounds:
its clips get split="test" (a manifest's own `split` column is overridden). When the
test folder lies inside the source folder, it is left out of the source's listing.

Clip references
---------------
* clip_id: the path relative to its source root (the folder, or the CSV's folder), in
  POSIX style; a manifest path outside that folder keeps the path as written. Test clips
  are prefixed "test/" (then "test-2/", ... should that still collide with a source clip).
* locator: the absolute path.
* category: the manifest's `category` value when it has one; otherwise the first-level
  subfolder name when the file lies in a subfolder of the root (class folders such as
  `dog/bark.wav`); otherwise "".
* split: "test" for the test source; the manifest's `split` value (lower-cased, blank
  meaning unassigned) for a manifest; None otherwise.
* Order: sorted by clip_id.

Loading
-------
`FileCorpus.load(ref)` reads with soundfile (float64, `always_2d=False`), and turns
every problem into a `ClipError` whose message says what is wrong:
  "file not found", "not a regular file", "permission denied", "empty file (0 bytes)",
  "not an audio file or corrupt (libsndfile: <libsndfile's message>)",
  "could not read audio (<error>)", "no samples (0 frames)",
  "invalid sample rate (<rate>)".
Note that libsndfile reads a truncated WAV (a header claiming more data than the file
holds) without error: it returns the samples present. A truncated file is therefore a
shorter clip, and a failure only when nothing, or too little, is left.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from bast import options
from bast.datasets.base import ClipError, ClipRef, register
from bast.errors import DataError, MissingError

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
     ".au", ".snd", ".caf", ".w64", ".rf64"}
)


def is_audio_path(path: str | Path) -> bool:
    """Whether `path` has one of the audio extensions libsndfile reads."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _walk(root: Path, exclude: Path | None):
    """(audio files, other files) under `root`, hidden entries skipped, `exclude` pruned."""
    audio: list[Path] = []
    other: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back into the tree
            dirnames[:] = []
            continue
        seen.add(real)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if exclude is not None and Path(os.path.realpath(os.path.join(dirpath, d))) == exclude:
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            (audio if is_audio_path(p) else other).append(p)
    return audio, other


def _utf8(path: Path) -> bool:
    """Whether the name can be written as UTF-8 (a Latin-1 byte in a name cannot)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _category_from(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else ""


class _Entry:
    __slots__ = ("rel_id", "path", "category", "split")

    def __init__(self, rel_id: str, path: Path, category: str, split: str | None):
        self.rel_id, self.path, self.category, self.split = rel_id, path, category, split


def _read_manifest(csv_path: Path, warnings: list[str]) -> list[_Entry]:
    try:
        return _read_manifest_rows(csv_path, warnings)
    except UnicodeDecodeError as exc:
        raise DataError(f"CSV manifest {csv_path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                        f"offset {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"CSV manifest {csv_path}: not a readable CSV file ({exc})") from None


def _read_manifest_rows(csv_path: Path, warnings: list[str]) -> list[_Entry]:
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"CSV manifest {csv_path} is empty: it needs a header row with a "
                             "'path' column") from None
        names = [h.strip().lower() for h in header]
        if "path" not in names:
            raise DataError(
                f"CSV manifest {csv_path} has no 'path' column (columns found: "
                f"{', '.join(repr(h) for h in header) or 'none'}); the header row must name "
                "a 'path' column, with optional 'category' and 'split' columns")
        ip = names.index("path")
        ic = names.index("category") if "category" in names else None
        isp = names.index("split") if "split" in names else None
        entries: list[_Entry] = []
        seen: set[Path] = set()
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            line = reader.line_num

            def cell(i):
                return row[i].strip() if i is not None and i < len(row) else ""

            raw = cell(ip)
            if not raw:
                raise DataError(f"CSV manifest {csv_path}, line {line}: empty 'path'")
            given = Path(raw)
            path = Path(os.path.abspath(given if given.is_absolute() else base / given))
            if path in seen:
                warnings.append(f"{csv_path.name} line {line}: duplicate of an earlier row "
                                f"({raw}), skipped")
                continue
            seen.add(path)
            try:
                rel = path.relative_to(Path(os.path.abspath(base)))
                rel_id = rel.as_posix()
                derived = _category_from(rel)
            except ValueError:  # outside the manifest's folder
                rel_id = given.as_posix()
                derived = ""
            category = cell(ic) or derived
            split = cell(isp).lower() or None
            entries.append(_Entry(rel_id, path, category, split))
    return entries


def _scan(source: Path, exclude: Path | None, ignored: list[str],
          warnings: list[str]) -> list[_Entry]:
    if not source.exists():
        raise MissingError(f"sound source {source} does not exist")
    options.input_path(source, "sound source", "folder, CSV manifest or audio file")
    if source.is_dir():
        audio, other = _walk(source, exclude)
        ignored.extend(str(p) for p in other)
        unnamed = [p for p in audio if not _utf8(p)]  # every record of a sound names it in UTF-8
        if unnamed:
            warnings.append(f"skipped {len(unnamed)} sound file(s) whose name is not UTF-8 text, e.g. "
                            f"{str(unnamed[0])!r}; rename them to use them")
        entries = []
        for p in (p for p in audio if _utf8(p)):
            rel = p.relative_to(source)
            entries.append(_Entry(rel.as_posix(), Path(os.path.abspath(p)), _category_from(rel), None))
        return entries
    if source.suffix.lower() == ".csv":
        return _read_manifest(source, warnings)
    if is_audio_path(source):
        if not _utf8(source):
            raise DataError(f"sound source {str(source)!r}: its name is not UTF-8 text; rename it")
        return [_Entry(source.name, Path(os.path.abspath(source)), "", None)]
    raise DataError(f"sound source {source} is neither a folder, a CSV manifest (.csv) nor an "
                     f"audio file ({', '.join(sorted(e[1:] for e in AUDIO_EXTENSIONS))})")


def test_clips(test: str | Path, refs: list[ClipRef], ignored: list[str], warnings: list[str]) -> list[ClipRef]:
    """`refs`, then the sounds of an independent test source (folder or CSV), pinned to
    split "test" and loaded as files. A file that is also in `refs` is the test's; test ids
    get the prefix "test/" ("test-2/", ... should that still collide with an id in `refs`).
    Serves any recipe: procedural training sounds can be tested on recorded ones."""
    test_entries = _scan(Path(test), None, ignored, warnings)
    test_paths = {str(e.path) for e in test_entries}
    refs = [r for r in refs if r.locator not in test_paths]
    taken = {r.clip_id for r in refs}
    prefix, k = "test/", 1
    while any(prefix + e.rel_id in taken for e in test_entries):
        k += 1
        prefix = f"test-{k}/"
    return refs + [ClipRef(prefix + e.rel_id, "files", str(e.path), e.category, "test") for e in test_entries]


@register("files")
class FileCorpus:
    """The user's sounds from a folder or CSV manifest, plus an optional test source.

    Attributes after construction: `ignored` (paths of non-audio files found in the
    folders), `warnings` (notes such as skipped duplicate manifest rows)."""

    def __init__(self, source: str | Path, test: str | Path | None = None):
        self.source = Path(source)
        self.test = Path(test) if test is not None else None
        self.ignored: list[str] = []
        self.warnings: list[str] = []

        exclude = None
        if self.test is not None and self.test.is_dir():
            exclude = Path(os.path.realpath(self.test))
        source_entries = _scan(self.source, exclude, self.ignored, self.warnings)
        refs = [ClipRef(e.rel_id, self.name, str(e.path), e.category, e.split) for e in source_entries]
        if self.test is not None:
            refs = test_clips(self.test, refs, self.ignored, self.warnings)
        self._refs = sorted(refs, key=lambda r: r.clip_id)

    def list_clips(self) -> list[ClipRef]:
        return list(self._refs)

    @staticmethod
    def load(ref: ClipRef) -> tuple[np.ndarray, int]:
        import soundfile as sf

        path = Path(ref.locator)
        try:
            if not path.exists():
                raise ClipError("file not found")
            if not path.is_file():
                raise ClipError("not a regular file")
            if path.stat().st_size == 0:
                raise ClipError("empty file (0 bytes)")
            if not os.access(path, os.R_OK):
                raise ClipError("permission denied")
        except OSError as e:  # e.g. a broken network mount
            raise ClipError(f"could not access file ({e.strerror or e})") from None
        try:
            data, fs = sf.read(str(path), dtype="float64", always_2d=False)
        except sf.LibsndfileError as e:
            msg = e.error_string.strip().rstrip(".")
            if e.code == 7:  # libsndfile's "does not exist or is not a regular file": the
                msg = "no decoder accepted the data"  # file exists; no decoder took it
            raise ClipError(f"not an audio file or corrupt (libsndfile: {msg})") from None
        except PermissionError:
            raise ClipError("permission denied") from None
        except MemoryError:
            raise ClipError("file too large to load into memory") from None
        except Exception as e:  # soundfile may raise RuntimeError/ValueError/TypeError too
            raise ClipError(f"could not read audio ({type(e).__name__}: {e})") from None
        data = np.asarray(data)
        if data.shape[0] == 0 or data.size == 0:
            raise ClipError("no samples (0 frames)")
        if not fs or fs <= 0:
            raise ClipError(f"invalid sample rate ({fs})")
        return data, int(fs)
