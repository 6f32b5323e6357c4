"""Small file helpers every layer uses: atomic writes, checksums, package versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path

import numpy as np

PACKAGES = ("bast", "numpy", "scipy", "h5py", "soundfile", "pyroomacoustics", "dask", "distributed", "torch")


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: a reader sees the old file or
    the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
