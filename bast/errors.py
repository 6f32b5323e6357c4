"""One root for the failures a user can act on.

Everything raised as a `BastError` is an expected failure: the CLI prints its message on
one line and exits 1. Any other exception is a bug and keeps its traceback. The
subclasses keep the built-in base they always had, so `except ValueError` still works.
"""

from __future__ import annotations


class BastError(Exception):
    """A failure the message explains, with what to do about it."""


class ConfigError(BastError, ValueError):
    """A setting, option or argument that bast refuses; the message names it."""


class StageError(BastError, RuntimeError):
    """A stage cannot run as asked; the message says why and what to do."""


class SofaError(BastError, ValueError):
    """A SOFA file bast cannot read, or a direction it does not hold."""


class ClipError(BastError):
    """A clip that cannot be used; the message is the reason recorded in failures.jsonl."""


class DataError(BastError, ValueError):
    """Input data (a stage's output, a run directory, an audio file) that is missing,
    incomplete or corrupt; the message names the file and how to recover."""


class TrainingError(BastError, RuntimeError):
    """Training stopped; the message says why and what is left usable."""


class MissingError(DataError, FileNotFoundError):
    """A file or folder that should exist does not."""


class StorageError(BastError, OSError):
    """A file could not be written: the disk is full, read-only or not ours; the message
    names the file. Nothing half-written is left under the final name."""


class MissingToolError(BastError, RuntimeError):
    """An optional program bast needs for what was asked is not installed."""
