"""DCASE SELD metadata files, the one codec for export, evaluation, localize and scoring.

DCASE task 3 (2022-2024) metadata is a CSV without a header, one line per active event per
100 ms frame: `frame,class,source,azimuth,elevation[,distance]`, integers: the frame index,
the class index, the source (track) index, the azimuth in degrees counter-clockwise with 0
ahead in [-180, 180), the elevation in degrees, and (from 2024) the distance in cm. bast's
label rows (bast/pipeline/render/scenemodel.py) hold the same columns in SOFA units (azimuth in
[0, 360), distance in metres): `to_dcase_rows` / `from_dcase_rows` convert. Predictions use
the same format; DCASE 2023 reads the first five columns. The DCASE 2023 baseline's own
output, `frame,class,source,x,y,z,distance` (7 columns), is read as the direction of (x, y, z).
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


def read_dcase_csv(path) -> np.ndarray:
    """Rows (n, 5) of a DCASE-format CSV: `frame,class,source,azimuth,elevation[,distance]`
    without a header, degrees; the distance is read past, as DCASE 2023 does (see
    `parse_dcase_csv` for it). Bad rows raise DataError naming the file and line."""
    path = options.input_file(path, "CSV", "DCASE CSV file")  # a FIFO is refused, never opened (it would block)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's CSV starts with a BOM: read past it
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text CSV in UTF-8 ({exc.reason} at byte {exc.start}); a DCASE file holds "
                        "rows frame,class,source,azimuth,elevation") from None
    return parse_dcase_csv(text, str(path))[:, :5]


def parse_dcase_csv(text: str, where: str = "DCASE CSV") -> np.ndarray:
    """DCASE CSV text -> float rows (n, 6): frame, class, source, azimuth, elevation, distance
    in cm (NaN where a row has none). A bad row is a DataError naming `where` and the line."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{where}:{number}"
        words = line.strip().split(",")
        if len(words) not in (5, 6, 7):
            raise DataError(f"{at}: {len(words)} columns; a DCASE row is frame,class,source,azimuth,elevation"
                            f"[,distance] (or the baseline's frame,class,source,x,y,z,distance)")
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
        if len(words) == 7:
            x, y, z = values[3:6]
            azimuth = np.degrees(np.arctan2(y, x))
            elevation = np.degrees(np.arctan2(z, np.hypot(x, y)))
            distance = values[6]
        else:
            azimuth, elevation = values[3:5]
            distance = values[5] if len(words) == 6 else np.nan
            if not -90.0 <= elevation <= 90.0:
                raise DataError(f"{at}: elevation {elevation:g} outside [-90, 90] degrees")
            if not -180.0 <= azimuth <= 180.0:  # the same rule as elevation: 999 is a typo, not 279
                raise DataError(f"{at}: azimuth {azimuth:g} outside [-180, 180] degrees (DCASE: 90 left, "
                                "-90 right)")
        rows.append((frame, cls, source, azimuth, elevation, distance))
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


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


