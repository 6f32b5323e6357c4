"""Impulse responses per environment: what the renderer convolves each clip with.

`anechoic` uses an HRIR set (the bundled MIT KEMAR unless the user brings a SOFA file);
`hall` uses the simulated lecture hall heard through that HRIR set, or a measured BRIR
SOFA file the user brings. Both give one (2, N) pair per requested azimuth.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

from bast import options
from bast.conventions import DEFAULT_AZIMUTHS, ENVIRONMENTS, parse_environments
from bast.errors import ConfigError
from bast.pipeline.hall import HallSpec, hall_brirs
from bast.pipeline.sofa import IRSet, read_sofa

__all__ = ["DEFAULT_AZIMUTHS", "ENVIRONMENTS", "IRSources", "default_hrir_path", "check_azimuths", "load_hrirs", "parse_azimuths",
           "parse_environments", "sofa_files"]


# Directions on the circle a request may name: 3600 is a 0.1 deg grid, finer than any
# measured HRIR set and than the model can tell apart.
MAX_AZIMUTHS = 3600


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

    def irset(self, env: str, azimuths_deg) -> IRSet:
        """The IR set of `env` (the whole SOFA set, or the hall bank at `azimuths_deg`)."""
        if env == "anechoic":
            return load_hrirs(self.hrir)
        if env == "hall":
            if self.brir is not None:
                return read_sofa(self.brir)
            hrirs = load_hrirs(self.hrir)
            # The bank is built on the HRIR set's own directions nearest the request.
            exact = hrirs.azimuth_deg[hrirs.indices(azimuths_deg, tolerance_deg=self.tolerance_deg)]
            return hall_brirs(exact, hrirs, self.hall)
        raise ConfigError(f"unknown environment {env!r}")

    def pairs(self, env: str, azimuths_deg) -> np.ndarray:
        """(A, 2, N) float32 IR pairs of `env` at `azimuths_deg` (elevation 0)."""
        return self.irset(env, azimuths_deg).select(azimuths_deg, tolerance_deg=self.tolerance_deg)
