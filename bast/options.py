"""Checks of what a user hands a command, in one place: numbers in their range, paths that
are what they should be, outputs that cannot land on an input.

The library's entry points call these (SpatializeConfig, featurize, open_client,
localize, build_report, ...), so a library caller and the command line get the same
message. Each failure is a `ConfigError` whose message names the option, the value given
and what is allowed; the CLI prints it on one line and exits 1. Nothing here imports the
rest of bast but its errors.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import stat
from pathlib import Path

from bast.errors import ConfigError, MissingError

# The largest seed numpy's generators take as one integer is unbounded, but a seed is
# recorded in JSON and read by other tools: keep it within an unsigned 64-bit integer.
MAX_SEED = 2**64 - 1
# Local dask worker processes: each imports numpy/scipy/h5py (~150 MB); more than this on
# one machine is a typo, not a plan (a bigger cluster is reached with --scheduler).
MAX_WORKERS = 512


# What one number a user types may make a command allocate at once (a grid of directions, the
# per-class counts of a DCASE file's largest class, a shard of scenes): more is refused before
# anything is allocated (`budget`), with the size it would need.
MEMORY_BUDGET_BYTES = 8 * 2**30


def size_text(n_bytes: float) -> str:
    """Bytes for people: 24.8 GiB, 310 MiB, 12 KiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            v = n_bytes / scale
            return f"{v:.3g} {unit}" if v < 1e3 else f"{v:,.0f} {unit}" if v < 1e15 else f"{v:.3g} {unit}"
    return f"{int(n_bytes)} bytes"


def budget(items, item_bytes: float, option: str, what: str, *, most: int | None = None,
           limit_bytes: float = MEMORY_BUDGET_BYTES, error=ConfigError) -> int:
    """`items` (a count a user's number sets: directions, classes, frames, scenes) when
    `items` x `item_bytes` fits in `limit_bytes` and `items` is at most `most`; else one
    `error` (ConfigError, or DataError for a file's content) naming `option`, `what` it
    counts, how many and the memory that would need. Called before the allocation."""
    try:
        n = int(items)
    except (OverflowError, ValueError):  # inf or nan from a user's arithmetic
        raise error(f"{option}: {what}: {items} is not a count") from None
    need = float(n) * float(item_bytes)
    cap = min(most if most is not None else math.inf, limit_bytes // max(item_bytes, 1))
    if n > cap:
        many = f"{n:,}" if n < 1e15 else f"{float(n):.3g}"
        raise error(f"{option}: {many} {what} would need {size_text(need)} of memory; at most {int(cap):,} "
                    f"({size_text(cap * item_bytes)})")
    return n


def _fmt(v) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _range_text(lo, hi, lo_open: bool, hi_open: bool, unit: str) -> str:
    u = f" {unit}" if unit else ""
    if lo is not None and hi is not None:
        left_out = [_fmt(v) for v, out in ((lo, lo_open), (hi, hi_open)) if out]
        return f"from {_fmt(lo)} to {_fmt(hi)}{u}" + (f", {' and '.join(left_out)} excluded" if left_out else "")
    if lo is not None:
        return f"above {_fmt(lo)}{u}" if lo_open else f"{_fmt(lo)}{u} or more"
    if hi is not None:
        return f"below {_fmt(hi)}{u}" if hi_open else f"{_fmt(hi)}{u} or less"
    return ""


def number(value, option: str, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False, unit: str = "") -> float | int:
    """`value` as a finite float (or an int with `integer`) within [lo, hi] (an end is
    left out with lo_open/hi_open; None = unbounded), else a ConfigError naming `option`
    and the allowed range."""
    kind = "an integer" if integer else "a finite number"
    allowed = f"{kind} {_range_text(lo, hi, lo_open, hi_open, unit)}"
    if isinstance(value, bool):
        raise ConfigError(f"{option} {value}: must be {allowed}")
    if not isinstance(value, numbers.Real):
        try:
            value = float(value) if not integer else int(str(value).strip())
        except (TypeError, ValueError):
            raise ConfigError(f"{option} {value!r}: must be {allowed}") from None
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{option} {value:g}: must be {allowed}")
        try:
            value = int(value)
        except (OverflowError, ValueError):
            raise ConfigError(f"{option} {value}: must be {allowed}") from None
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{option} {value}: must be {allowed}")
    below = lo is not None and (value <= lo if lo_open else value < lo)
    above = hi is not None and (value >= hi if hi_open else value > hi)
    if below or above:
        raise ConfigError(f"{option} {_fmt(value)}: must be {allowed}")
    return value


def count(value, option: str, lo: int = 0, hi: int | None = None) -> int:
    """An integer option from `lo` (default 0) to `hi`."""
    return number(value, option, lo=lo, hi=hi, integer=True)


def fraction(value, option: str) -> float:
    """A share in [0, 1): 1 would leave nothing for the rest."""
    return number(value, option, lo=0.0, hi=1.0, hi_open=True)


def seed(value, option: str = "--seed") -> int:
    return number(value, option, lo=0, hi=MAX_SEED, integer=True)


def workers(value, option: str = "--workers") -> int | None:
    """None (the default: one per core) or 0 (in this process) to MAX_WORKERS."""
    return None if value is None else count(value, option, 0, MAX_WORKERS)


# A dask scheduler address: protocol://host:port (tcp, tls, ws, wss, ucx), inproc://..., or
# host:port (tcp).
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx)://)?(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$"
                      r"|^inproc://\S+$")


def scheduler(address, option: str = "--scheduler") -> str | None:
    """None, or the address of a dask scheduler in a form dask accepts."""
    if address is None:
        return None
    text = str(address).strip()
    if not _ADDRESS.match(text):
        raise ConfigError(f"{option} {address!r}: give a dask scheduler address such as tcp://host:8786 "
                          "(protocol tcp, tls, ws, wss or ucx; host and port)")
    return text


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _stat(path: Path, option: str, what: str) -> os.stat_result:
    """os.stat of an input, a missing or unreadable one named by its option."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise MissingError(f"{option} {path}: no such {what}") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None


def input_file(path, option: str, what: str = "file") -> Path:
    """`path` as a regular file that can be read. A FIFO, device or socket is refused
    before anything opens it (opening a FIFO blocks until someone writes to it)."""
    path = Path(path)
    st = _stat(path, option, what)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{option} {path}: {_kind(st.st_mode)}; give a regular {what}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{option} {path}: permission denied")
    return path


def input_path(path, option: str, what: str = "file or folder") -> Path:
    """A regular file or a folder (anything else, e.g. a FIFO, refused)."""
    path = Path(path)
    st = _stat(path, option, what)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise ConfigError(f"{option} {path}: {_kind(st.st_mode)}; give a {what}")
    return path


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _clear_of_inputs(path: Path, option: str, inputs, owned=()) -> None:
    """`path` (an output folder or file) is none of the `inputs`, nor inside one, and no
    input lies in the parts of it the command writes (`owned`)."""
    out = path.resolve()
    for item in inputs:
        name, inp = item if isinstance(item, tuple) else ("an input", item)
        if inp is None:
            continue
        src = Path(inp).resolve()
        if _inside(out, src):
            where = "is" if out == src else "is inside"
            raise ConfigError(f"{option} {path} {where} {name} ({inp}); write the output to another folder, "
                              "a command never writes into what it reads")
        for part in owned:
            if _inside(src, out / part):
                raise ConfigError(f"{name} {inp} lies in {path / part}, which this command writes and "
                                  f"--overwrite clears; move it, or write to another {option}")


def output_dir(path, option: str, *, inputs=(), owned=()) -> Path:
    """`path` as an output folder: not an existing file, not one of the `inputs` nor inside
    one, and holding no input in the parts of it the command writes or clears (`owned`,
    names relative to it: e.g. "shards", "manifest.json"), so --overwrite can never delete
    what the command reads. `inputs` are paths, or (option, path) pairs to name them."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: an existing file, not a folder; give a folder (new or existing)")
    _clear_of_inputs(path, option, inputs, owned)
    return path


def output_file(path, option: str, *, inputs=()) -> Path:
    """`path` as an output file (written whole, replacing an older one): not a folder or
    anything but a regular file, not one of the `inputs` nor inside an input folder, and
    in a folder that exists (or can be made: its nearest existing parent is a folder)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise ConfigError(f"{option} {path}: cannot use it ({exc.strerror or exc})") from None
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{option} {path}: {_kind(mode)}; give the name of a file to write")
    _clear_of_inputs(path, option, inputs)
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a folder")
    return path
