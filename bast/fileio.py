"""Small file helpers every layer uses: atomic writes, checksums, package versions."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path

import numpy as np

from bast.errors import StorageError

PACKAGES = ("bast", "numpy", "scipy", "h5py", "soundfile", "pyroomacoustics", "dask", "distributed", "torch")


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Write failures that are the machine's state, not a bug: said in one line, no traceback.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def storage_errno(exc: BaseException) -> int | None:
    """The errno of an OSError that is the machine's state (full, read-only or forbidden
    disk), also when a library (h5py) only quotes it in the text; None for any other."""
    if getattr(exc, "errno", None):
        return exc.errno if exc.errno in STORAGE_ERRNOS else None
    text = str(exc)
    for code in STORAGE_ERRNOS:
        if f"errno = {code}," in text or os.strerror(code) in text:
            return code
    return None


def storage_advice(code: int) -> str:
    """What to do about a storage errno, for the end of a message."""
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space or choose another output folder, then run the same command again"
    return "check the folder's permissions (or choose another one), then run the same command again"


@contextlib.contextmanager
def storage_errors(path):
    """Turn a full, read-only or forbidden disk met while writing `path` into a
    StorageError naming it; any other OSError stays what it is."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        code = storage_errno(exc)
        if code is None:
            raise
        error = StorageError(f"{path}: cannot write it ({os.strerror(code)}); {storage_advice(code)}")
        error.errno = code
        raise error from None


def atomic_write_text(path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: a reader sees the old file or
    the whole new one, never a part. A full disk is a StorageError and leaves no
    temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with storage_errors(path):
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name beside `path` to write to (with any library: matplotlib, soundfile,
    csv); renamed to `path` when the block ends without error, removed otherwise. A full
    disk is a StorageError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # the suffix tells writers the format
    try:
        with storage_errors(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def versions() -> dict:
    """Python's and the main packages' versions, recorded in every output."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def json_default(value):
    """`json.dumps(..., default=json_default)`: numpy arrays and scalars as plain JSON,
    anything else as its text."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# Why a figure has no value, written beside it as "<key>_note" when the writer names none.
UNDEFINED_NOTE = "undefined for this data (nothing to compute it from)"


def strict(value, notes: dict | None = None):
    """`value` in plain, strict JSON types: numpy arrays and scalars as lists and numbers,
    and every NaN or infinity as None. In a dict, a key whose number is not finite gets a
    "<key>_note" beside it: `notes[key]` when given (why it is undefined), else
    UNDEFINED_NOTE; so does a key already None that `notes` names. Lists keep their length
    (None in place)."""
    notes = notes or {}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            item = strict(v, notes)
            out[k] = item
            # a number that is not finite, or a null the writer has a reason for
            if item is None and (_not_finite(v) or str(k) in notes) and f"{k}_note" not in value:
                out[f"{k}_note"] = notes.get(str(k), UNDEFINED_NOTE)
        return out
    if isinstance(value, (list, tuple)):
        return [strict(v, notes) for v in value]
    return value


def _not_finite(v) -> bool:
    try:
        return isinstance(v, (float, np.floating)) and not math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def json_text(value, notes: dict | None = None, indent: int | None = 1) -> str:
    """Strict JSON text of `value` (`strict`: null, never NaN or Infinity, with the reason
    beside it); anything JSON has no type for as its text."""
    return json.dumps(strict(value, notes), indent=indent, allow_nan=False, default=json_default)


def write_json(path, value, notes: dict | None = None, indent: int | None = 1) -> None:
    """`path` written atomically as strict JSON (`json_text`)."""
    atomic_write_text(path, json_text(value, notes, indent))
