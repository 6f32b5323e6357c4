"""DCASE SELD metadata files, the one codec for export, evaluation, localize and scoring.

DCASE task 3 (2022-2024) metadata is a CSV without a header, one line per active event per
100 ms frame: `frame,class,source,azimuth,elevation[,distance]`, integers: the frame index,
the class index, the source (track) index, the azimuth in degrees counter-clockwise with 0
ahead in [-180, 180), the elevation in degrees, and (from 2024) the distance in cm. bast's
label rows (bast/pipeline/render/scenemodel.py) hold the same columns in SOFA units (azimuth in
[0, 360), distance in metres): `to_dcase_rows` / `from_dcase_rows` convert. Predictions use
the same format; DCASE 2023 reads the first five columns (`read_dcase_csv`), DCASE 2024
needs the distance on every row (`read_dcase2024_csv`). The DCASE 2023 baseline's own
output, `frame,class,source,x,y,z,distance` (7 columns), is read as the direction of (x, y, z).
DCASE 2025 (stereo) files start with the header line frame,class,source,azimuth,distance,onscreen
and hold no elevation (`read_dcase2025_csv`). Each form has its writer (`write_dcase2023_csv`,
`write_dcase2024_csv`, `write_dcase2025_csv`; `write_dcase_csv` writes 5 or 6 columns).
Pure numpy: the CLI, the pipeline and the model's evaluation can all use it.
"""

from __future__ import annotations

import numpy as np

from bast import options
from bast.errors import ConfigError, DataError
from bast.fileio import atomic_write_text
from bast.options import budget
from bast.sphere import wrap_azimuth

COLUMNS = ("frame", "class", "source", "azimuth", "elevation")
# The largest class and frame index a file may hold: DCASE has 13 classes and 1 min
# recordings (600 frames); 1000 classes and 24 h of 100 ms frames leave room for any real
# set. Scoring holds 9 float64 counts per class and a segment entry per 10 frames.
MAX_CLASSES = 1000
MAX_FRAMES = 24 * 3600 * 10
CLASS_BYTES = 9 * 8
FRAME_BYTES = 8


def dcase_azimuth(azimuth_deg) -> np.ndarray:
    """SOFA azimuths (degrees, any range) as DCASE's: integer degrees in [-180, 180)."""
    a = np.rint(np.asarray(azimuth_deg, dtype=np.float64)).astype(np.int64)
    return (a + 180) % 360 - 180


def to_dcase_rows(rows: np.ndarray) -> np.ndarray:
    """(R, 6) label rows (frame, category, track, azimuth_deg, elevation_deg, distance_m)
    -> (R, 6) int64 DCASE rows (frame, class, source, azimuth, elevation, distance in cm)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    out = np.empty(rows.shape, dtype=np.int64)
    out[:, :3] = np.rint(rows[:, :3])
    out[:, 3] = dcase_azimuth(rows[:, 3])
    out[:, 4] = np.rint(rows[:, 4])
    out[:, 5] = np.rint(rows[:, 5] * 100.0)
    return out


def from_dcase_rows(rows: np.ndarray) -> np.ndarray:
    """(R, 5 or 6) DCASE rows -> (R, 6) float64 label rows in bast's units; a missing
    distance column reads as NaN (DCASE 2023 files have none)."""
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows.reshape(-1, rows.shape[-1] if rows.size else 6)
    out = np.full((rows.shape[0], 6), np.nan)
    out[:, :5] = rows[:, :5]
    out[:, 3] = wrap_azimuth(rows[:, 3])
    if rows.shape[1] > 5:
        out[:, 5] = rows[:, 5] / 100.0
    return out


def label_rows_csv(rows: np.ndarray) -> str:
    """Label rows as DCASE CSV text (no header), sorted by frame then source."""
    d = to_dcase_rows(rows)
    return format_dcase_rows(d[np.lexsort((d[:, 2], d[:, 0]))])


def read_text(path, form: str = "rows frame,class,source,azimuth,elevation") -> tuple[str, str]:
    """(text, name) of a DCASE CSV file: a FIFO is refused, never opened (it would block);
    a spreadsheet's byte-order mark is read past; a file that is not UTF-8 is one DataError."""
    path = options.input_file(path, "CSV", "DCASE CSV file")
    try:
        return path.read_text(encoding="utf-8-sig"), str(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV in UTF-8 ({exc.reason} at byte {exc.start}); a DCASE file holds "
                        f"{form}") from None


def read_dcase_csv(path) -> np.ndarray:
    """Rows (n, 5) of a DCASE-format CSV: `frame,class,source,azimuth,elevation[,distance]`
    without a header, degrees; the distance is read past, as DCASE 2023 does (see
    `parse_dcase_csv` for it). Bad rows raise DataError naming the file and line."""
    return parse_dcase_csv(*read_text(path))[:, :5]


def _values(line: str, at: str, columns: tuple[int, ...], expect: str) -> list[float]:
    """The numbers of one CSV row of `columns` columns (a count that is not one of them is
    refused with `expect`, what a row holds), finite, with whole frame, class and source
    indices >= 0 within what scoring can hold."""
    words = line.strip().split(",")
    if len(words) not in columns:
        raise DataError(f"{at}: {len(words)} columns; {expect}")
    try:
        values = [float(w) for w in words]
    except ValueError:
        hint = " (DCASE files have no header line)" if any(w.strip().isalpha() for w in words) else ""
        raise DataError(f"{at}: not a number in {line.strip()!r}{hint}") from None
    if not np.all(np.isfinite(values)):
        raise DataError(f"{at}: a value that is not finite in {line.strip()!r}")
    frame, cls, source = values[:3]
    if min(frame, cls, source) < 0 or any(v != int(v) for v in (frame, cls, source)):
        raise DataError(f"{at}: frame, class and source must be whole numbers >= 0, not {words[:3]}")
    # A class or frame index sizes what scoring allocates (per-class counts, 1 s segments):
    # refused here, before, with what it would take.
    budget(cls + 1, CLASS_BYTES, f"{at}: class {cls:.0f}", "classes", most=MAX_CLASSES, error=DataError)
    budget(frame + 1, FRAME_BYTES, f"{at}: frame {frame:.0f}", "frames", most=MAX_FRAMES, error=DataError)
    return values


def _azimuth(azimuth: float, at: str) -> None:
    if not -180.0 <= azimuth <= 180.0:  # the same rule as elevation: 999 is a typo, not 279
        raise DataError(f"{at}: azimuth {azimuth:g} outside [-180, 180] degrees (DCASE: 90 left, -90 right)")


def _elevation(elevation: float, at: str) -> None:
    if not -90.0 <= elevation <= 90.0:
        raise DataError(f"{at}: elevation {elevation:g} outside [-90, 90] degrees")


def _distance(distance_cm: float, at: str) -> None:
    if distance_cm < 0:
        raise DataError(f"{at}: distance {distance_cm:g} cm is negative; DCASE distances are in cm from the "
                        "microphone, >= 0")


def parse_dcase_csv(text: str, where: str = "DCASE CSV") -> np.ndarray:
    """DCASE CSV text -> float rows (n, 6): frame, class, source, azimuth, elevation, distance
    in cm (NaN where a row has none). A bad row is a DataError naming `where` and the line."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        values = _values(line, at, (5, 6, 7), "a DCASE row is frame,class,source,azimuth,elevation[,distance] "
                         "(or the baseline's frame,class,source,x,y,z,distance)")
        frame, cls, source = values[:3]
        if len(values) == 7:
            x, y, z = values[3:6]
            azimuth = np.degrees(np.arctan2(y, x))
            elevation = np.degrees(np.arctan2(z, np.hypot(x, y)))
            distance = values[6]
        else:
            azimuth, elevation = values[3:5]
            distance = values[5] if len(values) == 6 else np.nan
            _elevation(elevation, at)
            _azimuth(azimuth, at)
        rows.append((frame, cls, source, azimuth, elevation, distance))
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


# ----------------------------------------------------------------------------- 2024 and 2025

DCASE2024_COLUMNS = ("frame", "class", "source", "azimuth", "elevation", "distance")
DCASE2025_COLUMNS = ("frame", "class", "source", "azimuth", "distance", "onscreen")
DCASE2025_HEADER = ",".join(DCASE2025_COLUMNS)


def parse_dcase2024_csv(text: str, where: str = "DCASE 2024 CSV") -> np.ndarray:
    """DCASE 2024 CSV text (no header; frame,class,source,azimuth,elevation,distance in cm
    on every row) -> float rows (n, 6). A row without its distance, a negative distance
    or any other bad row is a DataError naming `where` and the line."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        values = _values(line, at, (6,), "a DCASE 2024 row is frame,class,source,azimuth,elevation,distance "
                         "(distance in cm; --edition 2023 scores rows without it)")
        _azimuth(values[3], at)
        _elevation(values[4], at)
        _distance(values[5], at)
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def parse_dcase2025_csv(text: str, where: str = "DCASE 2025 CSV") -> np.ndarray:
    """DCASE 2025 CSV text -> float rows (n, 6): frame, class, source, azimuth (degrees,
    not folded), distance in cm, on-screen flag (0 or 1). The first line must be the
    task's header, frame,class,source,azimuth,distance,onscreen. A bad row is a DataError
    naming `where` and the line."""
    lines = text.splitlines()
    first = next((n for n, line in enumerate(lines) if line.strip()), None)
    if first is None or lines[first].strip().replace(" ", "").lower() != DCASE2025_HEADER:
        got = "an empty file" if first is None else f"line {first + 1} is {lines[first].strip()[:80]!r}"
        raise DataError(f"{where}: no DCASE 2025 header line ({got}); a DCASE 2025 file starts with "
                        f"{DCASE2025_HEADER} (files without a header are DCASE 2023 or 2024: --edition)")
    rows = []
    for number, line in enumerate(lines[first + 1:], first + 2):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        values = _values(line, at, (6,), f"a DCASE 2025 row is {DCASE2025_HEADER} (distance in cm, onscreen 0 or 1)")
        _azimuth(values[3], at)
        _distance(values[4], at)
        if values[5] not in (0.0, 1.0):
            raise DataError(f"{at}: onscreen {values[5]:g}; the on-screen flag is 0 or 1")
        rows.append(values)
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def read_dcase2024_csv(path) -> np.ndarray:
    """Rows (n, 6) of a DCASE 2024 file: frame, class, source, azimuth, elevation, distance in cm."""
    return parse_dcase2024_csv(*read_text(path, "rows frame,class,source,azimuth,elevation,distance"))


def read_dcase2025_csv(path) -> np.ndarray:
    """Rows (n, 6) of a DCASE 2025 file: frame, class, source, azimuth, distance in cm, onscreen."""
    return parse_dcase2025_csv(*read_text(path, f"a header line and rows {DCASE2025_HEADER}"))


def csv_form(path) -> tuple[str, int]:
    """What a DCASE file's first non-blank line says of its format, and that line's number:
    ("header", n) for a header line (DCASE 2025), ("5", n), ("6", n) or ("7", n) for a row
    of that many columns, ("empty", 0) for a file without any. Read from the file's start
    only, to choose an edition before the files are parsed."""
    path = options.input_file(path, "CSV", "DCASE CSV file")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    text = head.decode("utf-8-sig", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            first = line.strip().split(",")[0].strip()
            if first and not first.lstrip("+-").replace(".", "", 1).isdigit():
                return "header", number
            return str(len(line.split(","))), number
    return "empty", 0


def dcase_rows(rows) -> np.ndarray:
    """Rows (n, 5) or (n, 6, distance in cm last) as a DCASE file holds them: whole
    numbers (int64), azimuth counter-clockwise in [-180, 180), in frame order (stable).
    Scoring these gives what scoring the written file gives."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        rows = rows.reshape(0, 5)
    if rows.ndim != 2 or rows.shape[1] not in (5, 6) or not np.all(np.isfinite(rows)):
        raise ConfigError(f"DCASE rows are finite (n, 5) or (n, 6) arrays, not shape {rows.shape}")
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    ints = np.rint(rows).astype(np.int64)
    ints[:, 3] = (ints[:, 3] + 180) % 360 - 180
    return ints


def format_dcase_rows(rows) -> str:
    """CSV text of rows (n, 5) or (n, 6, distance in cm last) in DCASE's form (`dcase_rows`)."""
    return "".join(",".join(map(str, r)) + "\n" for r in dcase_rows(rows))


def write_dcase_csv(path, rows) -> None:
    """Write rows as a DCASE-format CSV (see `format_dcase_rows`), atomically."""
    atomic_write_text(path, format_dcase_rows(rows))




def write_dcase2023_csv(path, rows) -> None:
    """Write rows (n, 5 or more) as a DCASE 2023 file, atomically: the first five columns,
    frame,class,source,azimuth,elevation, without a header (`format_dcase_rows`)."""
    rows = np.asarray(rows, dtype=np.float64)
    atomic_write_text(path, format_dcase_rows(rows.reshape(-1, rows.shape[-1] if rows.size else 5)[:, :5]))


def _with_distance(rows, columns: tuple[str, ...], distance_col: int) -> np.ndarray:
    """Rows (n, 6) as floats, refused (ConfigError: a caller's array) unless finite with a
    distance >= 0 in column `distance_col`."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        rows = rows.reshape(0, 6)
    if rows.ndim != 2 or rows.shape[1] != 6 or not np.all(np.isfinite(rows)):
        raise ConfigError(f"rows of ({', '.join(columns)}) are finite (n, 6) arrays, not shape {rows.shape}")
    if (rows[:, distance_col] < 0).any():
        raise ConfigError(f"a distance of {rows[:, distance_col].min():g} cm: distances are >= 0")
    return rows


def format_dcase2024_rows(rows) -> str:
    """CSV text of rows (n, 6): frame, class, source, azimuth, elevation, distance in cm, in
    DCASE 2024's form: no header, whole numbers, azimuth in [-180, 180), frame order."""
    return format_dcase_rows(_with_distance(rows, DCASE2024_COLUMNS, 5))


def write_dcase2024_csv(path, rows) -> None:
    """Write rows (n, 6, distance in cm last) as a DCASE 2024 file (`format_dcase2024_rows`), atomically."""
    atomic_write_text(path, format_dcase2024_rows(rows))


def format_dcase2025_rows(rows) -> str:
    """CSV text of rows (n, 6): frame, class, source, azimuth, distance in cm, on-screen
    flag, in DCASE 2025's form: the header line, then whole numbers in frame order (stable),
    azimuth in [-180, 180) as the task's metadata holds it (not folded to the front: the
    2025 metrics fold it), on-screen 0 or 1."""
    rows = _with_distance(rows, DCASE2025_COLUMNS, 4)
    if not np.isin(rows[:, 5], (0.0, 1.0)).all():
        raise ConfigError("the on-screen flag (the sixth column) is 0 or 1")
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    ints = np.rint(rows).astype(np.int64)
    ints[:, 3] = (ints[:, 3] + 180) % 360 - 180
    return DCASE2025_HEADER + "\n" + "".join(",".join(map(str, r)) + "\n" for r in ints)


def write_dcase2025_csv(path, rows) -> None:
    """Write rows (n, 6) as a DCASE 2025 file (`format_dcase2025_rows`), atomically."""
    atomic_write_text(path, format_dcase2025_rows(rows))
