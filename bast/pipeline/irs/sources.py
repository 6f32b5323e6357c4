"""Impulse responses per environment, and the directions a data set is rendered at.

`anechoic` uses an HRIR set (the bundled MIT KEMAR unless the user brings a SOFA file);
`hall` uses the simulated lecture hall heard through that HRIR set, or a measured BRIR
SOFA file the user brings. Both give one (2, N) pair per requested direction. The
`--azimuths`, `--elevations` and `--directions` options are parsed here (docs/sphere.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from bast import options
from bast.conventions import DEFAULT_AZIMUTHS, ENVIRONMENTS, parse_environments
from bast.errors import ConfigError
from bast.pipeline.irs.hall import HallSpec
from bast.pipeline.irs.sofa import IRSet, read_sofa
from bast.sphere import unit_vector

__all__ = ["DEFAULT_AZIMUTHS", "ENVIRONMENTS", "IRSources", "default_hrir_path", "check_azimuths", "direction_grid",
           "load_hrirs", "parse_azimuths", "parse_direction_options", "parse_directions", "parse_elevations",
           "parse_environments", "sofa_files"]


# Directions on the circle a request may name: 3600 is a 0.1 deg grid, finer than any
# measured HRIR set and than the model can tell apart.
MAX_AZIMUTHS = 3600
# Directions of a grid or a list: a 1-degree grid over the whole sphere (360 x 181) is more
# than any measured set holds. Each costs about DIRECTION_BYTES while its impulse responses
# are looked up or interpolated (weights against a set of ~700 measured directions, float64).
MAX_DIRECTIONS = 360 * 181
DIRECTION_BYTES = 710 * 8


def default_hrir_path() -> Path:
    return Path(str(files("bast") / "data" / "mit_kemar_normal_pinna_16k.sofa"))


def load_hrirs(path=None) -> IRSet:
    """The HRIR set at `path`, or the bundled MIT KEMAR set."""
    return read_sofa(path or default_hrir_path())


def sofa_files(paths, option: str) -> tuple[str, ...]:
    """The SOFA files named by `paths`: files as given, a folder as its *.sofa files
    (sorted by name). A missing path or an empty folder is a ConfigError naming `option`."""
    out: list[str] = []
    for p in paths or ():
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.sofa"))
            if not found:
                raise ConfigError(f"{option} {p}: the folder holds no .sofa files")
            out += [str(f) for f in found]
        else:
            out.append(str(options.input_file(p, option, "file or folder")))
    return tuple(out)


def parse_azimuths(text: str) -> np.ndarray:
    """'0:360:10' (start:stop:step, stop excluded) or '0,90,180' to azimuths in degrees."""
    text = text.strip()
    if ":" in text:
        try:
            start, stop, step = (float(v) for v in text.split(":"))
        except ValueError:
            raise ConfigError(f"azimuths {text!r}: give start:stop:step or a list such as 0,90,180") from None
        if not step > 0:
            raise ConfigError(f"azimuth step must be positive in {text!r}")
        if not (np.isfinite(start) and np.isfinite(stop)) or (stop - start) / step > MAX_AZIMUTHS:
            raise ConfigError(f"azimuths {text!r}: at most {MAX_AZIMUTHS} azimuths from 0 to 360 deg")
        return check_azimuths(np.arange(start, stop - 1e-9, step), "--azimuths")
    try:
        values = np.array([float(v) for v in text.replace(",", " ").split()])
    except ValueError:
        raise ConfigError(f"azimuths {text!r}: give start:stop:step or a list such as 0,90,180") from None
    return check_azimuths(values, "--azimuths")


def parse_elevations(text: str, azimuths: int = 1) -> tuple[np.ndarray | None, tuple[float, float] | None]:
    """'-30,0,30' (a list) or 'LO:HI:STEP' (HI included) to elevations in degrees; 'LO:HI'
    is a limit, not a grid (for --directions all): returns (None, (LO, HI)). A range is
    counted before it is made: with `azimuths` azimuths, its grid must fit the budget."""
    text = str(text).strip()
    usage = f"--elevations {text!r}: give a list such as -30,0,30, a range LO:HI:STEP, or LO:HI with --directions all"
    try:
        parts = [float(v) for v in text.split(":")] if ":" in text else None
        values = None if parts else np.array([float(v) for v in text.replace(",", " ").split()])
    except ValueError:
        raise ConfigError(usage) from None
    if parts is not None:
        if len(parts) == 2:
            lo, hi = parts
            if not -90.0 <= lo <= hi <= 90.0:
                raise ConfigError(f"--elevations {text!r}: need -90 <= LO <= HI <= 90")
            return None, (lo, hi)
        if len(parts) != 3:
            raise ConfigError(usage)
        lo, hi, step = parts
        if not (step > 0 and hi >= lo):  # nan too
            raise ConfigError(f"--elevations {text!r}: need LO <= HI and a positive STEP")
        if np.isfinite(lo) and np.isfinite(hi):  # counted before np.arange allocates them
            n = min((hi - lo) / step + 1e-6, 1e300) // 1 + 1
            grid_budget(n, azimuths, f"--elevations {text}")
        values = np.arange(lo, hi + step * 1e-6, step)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ConfigError(usage)
    if np.any(np.abs(values) > 90.0):
        raise ConfigError(f"--elevations {text!r}: elevations lie in [-90, 90] deg (SOFA: 90 = straight up)")
    return values, None


def direction_grid(azimuths_deg, elevations_deg) -> np.ndarray:
    """(D, 2) (azimuth, elevation) pairs of the grid, elevation by elevation; a direction
    that occurs twice (every azimuth at +-90 deg is the pole) is kept once."""
    az, el = np.meshgrid(np.asarray(azimuths_deg, dtype=float), np.asarray(elevations_deg, dtype=float))
    return unique_directions(np.stack([az.ravel(), el.ravel()], axis=-1))


def unique_directions(pairs: np.ndarray) -> np.ndarray:
    """`pairs` (D, 2) without repeated directions (within 1e-6 deg), first one kept."""
    pairs = np.asarray(pairs, dtype=float).reshape(-1, 2)
    u = np.round(unit_vector(pairs[:, 0], pairs[:, 1]), 8) + 0.0  # + 0.0: no -0.0
    _, first = np.unique(u, axis=0, return_index=True)
    return pairs[np.sort(first)]


def parse_directions(text: str, hrir=None, elevation_limit: tuple[float, float] | None = None) -> np.ndarray:
    """--directions: 'all' (every direction the HRIR set `hrir` measured, within
    `elevation_limit` when given) or a CSV file with columns azimuth,elevation (degrees).
    Returns (D, 2) (azimuth, elevation) pairs."""
    text = str(text).strip()
    if text.lower() == "all":
        irs = load_hrirs(hrir)
        keep = np.ones(len(irs), dtype=bool)
        if elevation_limit is not None:
            keep = (irs.elevation_deg >= elevation_limit[0] - 1e-6) & (irs.elevation_deg <= elevation_limit[1] + 1e-6)
        if not keep.any():
            raise ConfigError(f"--directions all: {irs.source} has no direction with elevation in "
                              f"{elevation_limit[0]:g}..{elevation_limit[1]:g} deg")
        # The set's own values, rounded to 1e-6 deg as read_sofa rounds azimuths.
        return np.stack([irs.azimuth_deg[keep], np.round(irs.elevation_deg[keep], 6)], axis=-1)
    return read_directions_csv(text)


DEFAULT_AZIMUTH_TEXT = "0:360:10"  # the commands' --azimuths default


def parse_direction_options(azimuths: str = DEFAULT_AZIMUTH_TEXT, elevations: str = "0", directions: str | None = None,
                            hrir=None) -> np.ndarray:
    """The (D, 2) (azimuth, elevation) pairs of the options --azimuths, --elevations and
    --directions together (docs/sphere.md): the grid azimuths x elevations, or --directions
    (all / FILE.csv, `hrir` naming the set 'all' lists) limited by --elevations LO:HI."""
    az = parse_azimuths(azimuths) if directions is None else np.zeros(1)
    grid_el, el_limit = parse_elevations(elevations, len(az))
    if el_limit is not None and directions is None:
        raise ConfigError(f"--elevations {elevations}: LO:HI limits --directions all; for a grid give LO:HI:STEP")
    if directions is not None and grid_el is not None and str(elevations).strip() != "0":
        raise ConfigError("--directions lists the directions: give --elevations as LO:HI (a limit) or not at all")
    if directions is not None and str(azimuths).strip() != DEFAULT_AZIMUTH_TEXT:  # not dropped without a word
        raise ConfigError(f"--azimuths {azimuths} with --directions {directions}: --directions lists the directions "
                          "and replaces the --azimuths x --elevations grid; give one or the other")
    if directions is not None:
        return parse_directions(directions, hrir, el_limit)
    grid_budget(len(grid_el), len(az), f"--elevations {elevations}")
    return direction_grid(az, grid_el)


def grid_budget(elevations: float, azimuths: int, option: str) -> None:
    """Refuse a grid of more than MAX_DIRECTIONS directions, with the memory it would take."""
    options.budget(elevations * azimuths, DIRECTION_BYTES, f"{option} with {azimuths:,} azimuth(s)",
                   "directions", most=MAX_DIRECTIONS)


def read_directions_csv(path) -> np.ndarray:
    """(D, 2) (azimuth, elevation) pairs from a CSV file with columns azimuth,elevation."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--directions {path}: give 'all' or a CSV file with columns azimuth,elevation "
                          "(no such file)")
    try:
        return _directions_from_csv(path, csv)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--directions {path}: not a UTF-8 text CSV (byte 0x{exc.object[exc.start]:02x} at "
                          f"{exc.start}: {exc.reason}); save it as UTF-8 with columns azimuth,elevation") from None


def _directions_from_csv(path: Path, csv) -> np.ndarray:
    # utf-8-sig: a spreadsheet's CSV starts with a byte-order mark, which is not part of the header
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = {name.strip().lower(): name for name in reader.fieldnames or ()}
        if not {"azimuth", "elevation"} <= set(fields):
            raise ConfigError(f"--directions {path}: the CSV needs columns azimuth,elevation "
                              f"(found {', '.join(reader.fieldnames or ()) or 'none'})")
        pairs = []
        for line, row in enumerate(reader, start=2):
            try:
                pairs.append((float(row[fields["azimuth"]]), float(row[fields["elevation"]])))
            except (TypeError, ValueError):
                raise ConfigError(f"--directions {path}, line {line}: azimuth and elevation must be numbers") from None
            if len(pairs) > MAX_DIRECTIONS:  # refused while reading, before the rest is held
                options.budget(len(pairs), DIRECTION_BYTES, f"--directions {path}", "directions or more",
                               most=MAX_DIRECTIONS)
    pairs = np.array(pairs, dtype=float).reshape(-1, 2)
    if not len(pairs):
        raise ConfigError(f"--directions {path}: no directions listed")
    check_directions(pairs, f"--directions {path}")
    return unique_directions(pairs)


def check_directions(pairs, option: str) -> np.ndarray:
    """(D, 2) (azimuth, elevation) pairs of bast's own inputs: every value finite, azimuths in
    [0, 360) as --azimuths takes them (SOFA; -90 is 270: a CSV of 400 is refused, not read as
    40), elevations in [-90, 90] (docs/conventions.md, "Ranges")."""
    pairs = np.asarray(pairs, dtype=float).reshape(-1, 2)
    bad = ~np.isfinite(pairs).all(axis=1) | (pairs[:, 0] < 0) | (pairs[:, 0] >= 360) | (np.abs(pairs[:, 1]) > 90)
    if bad.any():
        az, el = pairs[bad][0]
        raise ConfigError(f"{option}: direction ({az:g}, {el:g}): azimuths lie in [0, 360) deg (SOFA: 90 left, "
                          "270 right; -90 is 270) and elevations in [-90, 90] deg, every value finite")
    return pairs


def check_azimuths(azimuths, option: str = "--azimuths") -> np.ndarray:
    """At least one azimuth, each finite in [0, 360) (SOFA: 0 ahead, 90 left, 270 right),
    none twice (a repeated azimuth would render every clip twice under one label)."""
    values = np.asarray(azimuths, dtype=float).reshape(-1)
    if values.size == 0:
        raise ConfigError(f"{option}: no azimuth given; e.g. 0:360:10 or 0,90,180")
    if values.size > MAX_AZIMUTHS:
        raise ConfigError(f"{option}: {values.size} azimuths; at most {MAX_AZIMUTHS}")
    bad = values[~(np.isfinite(values) & (values >= 0) & (values < 360))]
    if bad.size:
        raise ConfigError(f"{option} {bad[0]:g}: every azimuth must be from 0 to 360 deg, 360 excluded "
                          f"(SOFA: 0 ahead, 90 left, 270 right; -90 is 270)")
    uniq, counts = np.unique(values, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{option}: azimuth {uniq[counts > 1][0]:g} given twice; name each azimuth once")
    return values

@dataclass(frozen=True)
class IRSources:
    """Where each environment's impulse responses come from."""

    hrir: Path | None = None  # SOFA HRIR set; None = bundled MIT KEMAR
    brir: Path | None = None  # measured BRIR SOFA for `hall`; None = simulated hall
    hall: HallSpec = HallSpec()
    tolerance_deg: float = 0.0  # how far a set's direction may be from the requested one

    def __post_init__(self):
        options.number(self.tolerance_deg, "--tolerance", lo=0, hi=180, unit="deg")
        for name in ("hrir", "brir"):
            if getattr(self, name) is not None:
                options.input_file(getattr(self, name), f"--{name}", "SOFA file")

    def irset(self, env: str, azimuths_deg, elevations_deg=None, interpolate: bool = False) -> IRSet:
        """The IR set of `env`: the whole SOFA set, or the hall's bank at the requested
        directions (azimuths, with one elevation or one per azimuth; default 0): at the
        HRIR set's own directions nearest them, or with `interpolate` at exactly them."""
        if env == "anechoic":
            return load_hrirs(self.hrir)
        if env == "hall":
            if self.brir is not None:
                return read_sofa(self.brir)
            from bast.pipeline.irs.rooms import BankTask, build_bank

            az = np.atleast_1d(np.asarray(azimuths_deg, dtype=float))
            el = () if elevations_deg is None else tuple(np.broadcast_to(elevations_deg, az.shape).tolist())
            task = BankTask(self.hall, str(self.hrir or default_hrir_path()), tuple(az.tolist()), self.tolerance_deg,
                            el, interpolate)
            return build_bank(task)
        raise ConfigError(f"unknown environment {env!r}")

    def pairs(self, env: str, azimuths_deg) -> np.ndarray:
        """(A, 2, N) float32 IR pairs of `env` at `azimuths_deg` (elevation 0)."""
        return self.irset(env, azimuths_deg).select(azimuths_deg, tolerance_deg=self.tolerance_deg)
