"""Which DCASE edition scores a folder of CSVs, and scoring it (docs/seld.md, "Editions").

Three editions of the task 3 metrics, each equal to that year's reference implementation:
2023 (bast/dcase/metrics.py: 1 s segments, direction only), 2024 (bast/dcase/dcase2024.py:
frame-wise, direction and distance) and 2025 (bast/dcase/dcase2025.py: frame-wise, stereo:
azimuth folded to the front, and distance). Their files differ: 2023 reads
frame,class,source,azimuth,elevation (a distance column is read past), 2024 needs the
distance (cm) on every row, 2025 files start with the header
frame,class,source,azimuth,distance,onscreen. Without `edition`, the newest edition the
files' columns allow is used, and the reason is given with the scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bast.dcase.files import (
    DCASE2025_HEADER,
    csv_form,
    read_dcase2024_csv,
    read_dcase2025_csv,
    read_dcase_csv,
)
from bast.errors import ConfigError, DataError

EDITIONS = ("2023", "2024", "2025")
_FORMS = {"5": "5 columns (frame,class,source,azimuth,elevation: no distance)",
          "7": "7 columns (the baselines' frame,class,source,x,y,z,distance, whose distance is 0 in the 2023 "
               "baseline's files and metres in the 2024 one's, where the task's files hold cm)",
          "6": "6 columns (frame,class,source,azimuth,elevation,distance)",
          "header": f"a header line (DCASE 2025's files start with {DCASE2025_HEADER})"}


def check_edition(edition) -> str:
    """An edition name as given (`--edition`), as one of EDITIONS."""
    text = str(edition).strip()
    if text not in EDITIONS:
        raise ConfigError(f"--edition {edition}: DCASE editions scored are {', '.join(EDITIONS)}")
    return text


def choose_edition(files, edition: str | None = None) -> tuple[str, str]:
    """(edition, why) for scoring `files` (paths). Without `edition`: the newest one their
    first rows allow. With it: that edition, refused (ConfigError, naming a file) when a
    file's columns cannot give what it scores."""
    forms = {Path(p): csv_form(p) for p in files}
    if edition is None:
        return _newest(forms)
    edition = check_edition(edition)
    for path, (form, line) in forms.items():
        bad = _refusal(edition, form)
        if bad:
            where = f"{path}:{line}" if line else str(path)
            raise ConfigError(f"--edition {edition} {bad}: {where} has {_FORMS.get(form, 'no line at all')}")
    return edition, f"--edition {edition}"


def _refusal(edition: str, form: str) -> str | None:
    """Why `edition` cannot score a file of `form`; None when it can."""
    if edition == "2025" and form != "header":
        return f"reads DCASE 2025 files, which start with the header line {DCASE2025_HEADER}"
    if edition == "2024" and form not in ("6", "empty"):
        return ("scores distances and reads DCASE 2024 rows frame,class,source,azimuth,elevation,distance "
                "(cm), without a header; --edition 2023 scores directions only")
    if edition == "2023" and form == "header":
        return ("reads rows frame,class,source,azimuth,elevation without a header (DCASE 2025's files hold no "
                "elevation: --edition 2025)")
    return None


def _newest(forms: dict) -> tuple[str, str]:
    """The newest edition every file allows, and why."""
    headers = [p for p, (form, _) in forms.items() if form == "header"]
    if headers:
        other = next((p for p, (form, _) in forms.items() if form != "header"), None)
        if other is not None:
            raise DataError(f"{headers[0]} starts with DCASE 2025's header line, {other} has "
                            f"{_FORMS.get(forms[other][0], 'no line at all')}: give files of one format")
        return "2025", "the newest the files allow: they start with DCASE 2025's header line"
    rows = {p: form for p, (form, _) in forms.items() if form != "empty"}
    not_six = next((p for p, form in rows.items() if form != "6"), None)
    if rows and not_six is None:
        return "2024", "the newest the files allow: every row has a distance column, no file a header line"
    if not rows:
        return "2023", "no file holds a row to tell its columns (give --edition to choose)"
    return "2023", f"the newest the files allow: {not_six} has {_FORMS[rows[not_six]]}"


READERS = {"2023": read_dcase_csv, "2024": read_dcase2024_csv, "2025": read_dcase2025_csv}
DISTANCE_COL = {"2024": 5, "2025": 4}


def check_reference_distances(pairs, names, edition: str) -> None:
    """A reference event at distance 0 would make its relative distance error a division
    by 0 (the tool's eps: 1e16 per metre): refused, naming the file and frame."""
    col = DISTANCE_COL.get(edition)
    if col is None:
        return
    for (ref, _), name in zip(pairs, names):
        zero = ref[ref[:, col] == 0]
        if len(zero):
            raise DataError(f"{name}: a reference event at distance 0 cm (frame {int(zero[0, 0])}); the relative "
                            "distance error divides by the reference distance")


def classes_of(pairs, n_classes: int | None, where: str) -> int:
    """The number of classes: as given, or the largest class index seen + 1."""
    if n_classes is not None:
        return n_classes
    n = max((int(rows[:, 1].max()) + 1 for pair in pairs for rows in pair if len(rows)), default=0)
    if n == 0:
        raise DataError(f"no rows in any file of {where}: nothing to detect and nothing predicted; give the "
                        "number of classes (--classes N) to score it as DCASE does (docs/seld.md, Empty references)")
    return n


def rows_edition(pairs) -> str:
    """The newest edition rows in memory allow (a model's evaluation): 2024 when every
    reference and prediction array has a sixth column of finite distances (cm), else 2023."""
    ok = [rows.ndim == 2 and rows.shape[1] >= 6 and bool(np.isfinite(rows[:, 5]).all())
          for pair in pairs for rows in map(np.asarray, pair)]
    return "2024" if ok and all(ok) else "2023"
