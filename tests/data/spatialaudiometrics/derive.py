"""Rebuild localisation.csv and expected.json from the spatialaudiometrics 0.1.2 wheel.

    pip download --no-deps spatialaudiometrics==0.1.2 -d /tmp/sam
    python tests/data/spatialaudiometrics/derive.py /tmp/sam/spatialaudiometrics-0.1.2-py3-none-any.whl

The rows are the example experiment's 3 test HRTFs (HRTFidx 1-3, 99 trials each; the 169
training trials with HRTFidx 0 are left out), columns as in the package. The expected figures
are computed by the package's own code as its `preprocess_behavioural_data` and
`calculate_localisation_error` do (angular_metrics.py imported from the wheel as it is; the
pandas aggregation of localisation_metrics.py restated in numpy, one line per figure below),
so the test needs neither the package nor pandas.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COLUMNS = ("HRTFidx", "azi_target", "ele_target", "azi_response", "ele_response")


def package_figures(am, rows) -> dict:
    """The package's figures for one HRTF's rows (localisation_metrics.py, 0.1.2)."""
    f = {k: [float(r[k]) for r in rows] for k in COLUMNS[1:]}
    at, et = [am.wrap_angle(v) for v in f["azi_target"]], [am.wrap_angle(v) for v in f["ele_target"]]
    ar, er = [am.wrap_angle(v) for v in f["azi_response"]], [am.wrap_angle(v) for v in f["ele_response"]]
    lt, pt = map(np.array, zip(*[am.spherical2interaural(a, e) for a, e in zip(at, et)]))
    lr, pr = map(np.array, zip(*[am.spherical2interaural(a, e) for a, e in zip(ar, er)]))
    weight = 0.5 * np.cos(2 * np.deg2rad(lt)) + 0.5                      # polar_error_weight
    near = np.abs(lr) <= 30                                              # calculate_quadrant_error
    polar_ok = np.abs([am.wrap_angle(v) for v in (pr - pt)[near]]) <= 90
    gc = [am.great_circle_error(*a) for a in zip(at, et, ar, er)]
    classes = [classify_confusion(am, *a) for a in zip(at, et, ar, er, lt, lr)]
    return {"n": len(rows),
            "lat_abs_accuracy": float(np.mean(np.abs(lr - lt))),
            "pol_abs_accuracy": float(np.mean(np.abs(pr - pt) * weight)),
            "quadrant_error": float(100 - polar_ok.sum() / near.sum() * 100),
            "great_circle_error": float(np.mean(gc)),
            "confusions_pct": {c: 100 * classes.count(c) / len(rows)
                               for c in ("precision", "front-back", "in-cone", "off-cone")}}


def classify_confusion(am, az_t, el_t, az_r, el_r, lat_t, lat_r, cone=45) -> str:
    """localisation_metrics.classify_confusion (0.1.2) on one trial, without pandas."""
    if am.great_circle_error(az_t, el_t, az_r, el_r) <= cone:
        return "precision"
    if am.great_circle_error(am.wrap_angle(-(180 + az_t)), el_t, az_r, el_r) <= cone:
        return "front-back"
    return "in-cone" if abs(lat_r - lat_t) <= cone else "off-cone"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        zf.extract("spatialaudiometrics/angular_metrics.py", tmp)
        sys.path.insert(0, str(Path(tmp) / "spatialaudiometrics"))
        import angular_metrics as am
        text = zf.read("spatialaudiometrics/example_data_1.csv").decode()
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["HRTFidx"] in ("1", "2", "3")]
    with open(HERE / "localisation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    expected = {h: package_figures(am, [r for r in rows if r["HRTFidx"] == h]) for h in ("1", "2", "3")}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
