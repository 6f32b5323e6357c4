"""Derive tests/data/human_hrir/sonicom_subject_rings.sofa from a measured human HRIR set.

    pip download --no-deps spatialaudiometrics==0.1.2 -d /tmp/sam
    python tests/data/human_hrir/derive.py /tmp/sam/spatialaudiometrics-0.1.2-py3-none-any.whl

The wheel ships two in-ear HRIR measurements of human subjects (Imperial College London,
SimpleFreeFieldHRIR, 48 kHz, 256 taps, 793 directions); the first is kept on the rings
from -30 to 45 deg elevation, at its own rate and length, written by bast's SOFA writer.
See README.md beside this file for the licence (CC BY-SA 3.0) and the figures.
"""

import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from bast.pipeline.irs.sofa import read_sofa, write_sofa

MEMBER = "spatialaudiometrics/example_sofa_1.sofa"
RINGS = (-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0, 45.0)
OUT = Path(__file__).with_name("sonicom_subject_rings.sofa")


def main(wheel: str) -> None:
    data = zipfile.ZipFile(wheel).read(MEMBER)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "subject.sofa"
        path.write_bytes(data)
        full = read_sofa(path, fs=48000)
    keep = np.flatnonzero(np.isin(np.round(full.elevation_deg, 3), RINGS))
    rings = full.subset(keep)
    attrs = {k: full.attrs[k] for k in ("AuthorContact", "Organization", "DatabaseName", "Title", "Comment",
                                        "RoomDescription", "ReceiverDescription", "SourceDescription") if k in full.attrs}
    attrs.update(License=full.attrs.get("License", ""), Origin="Acoustically measured",
                 History=f"{MEMBER} of {Path(wheel).name} (sha256 {hashlib.sha256(data).hexdigest()}), "
                         f"rings {', '.join(f'{r:g}' for r in RINGS)} deg elevation kept by tests/data/human_hrir/derive.py")
    write_sofa(OUT, rings, attrs=attrs)
    print(f"{OUT}: {len(rings)} directions, {rings.ir.shape[-1]} taps at {rings.fs} Hz")


if __name__ == "__main__":
    main(sys.argv[1])
