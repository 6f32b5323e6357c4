"""Convert the MIT KEMAR HRIRs (normal pinna) shipped inside the `slab` wheel to the SOFA
file that bast bundles (bast/data/mit_kemar_normal_pinna_16k.sofa).

Run once, by hand, when the bundled file must be rebuilt:

    pip download --no-deps slab==1.8.2 -d /tmp/slab
    python scripts/convert_mit_kemar.py /tmp/slab/slab-1.8.2-py3-none-any.whl

The wheel holds `slab/data/mit_kemar_normal_pinna.bz2`, a bz2 pickle of slab objects
(710 directions, 44.1 kHz, 512 taps, 1.4 m). slab itself is never imported (it needs
PortAudio): an unpickler maps slab's classes to plain attribute holders, which is all the
pickle needs to give back its arrays.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from bast.pipeline.irs.sofa import FS, IRSet, resample_ir, write_sofa

MEMBER = "slab/data/mit_kemar_normal_pinna.bz2"
OUT = Path(__file__).resolve().parents[1] / "bast" / "data" / "mit_kemar_normal_pinna_16k.sofa"


class _Holder:
    def __setstate__(self, state):
        self.__dict__.update(state)


class _SlabFreeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] == "slab":
            return type(name, (_Holder,), {})
        return super().find_class(module, name)


def load_pickle(path: Path) -> tuple[object, str, str]:
    """The unpickled HRTF object, the sha256 of the bz2 member and a description of where from."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            raw = z.read(MEMBER)
        where = f"{path.name}:{MEMBER}"
    else:
        raw = path.read_bytes()
        where = path.name
    digest = hashlib.sha256(raw).hexdigest()
    hrtf = _SlabFreeUnpickler(bz2.BZ2File(io.BytesIO(raw))).load()
    return hrtf, digest, where


def convert(src: Path, out: Path = OUT) -> Path:
    hrtf, digest, where = load_pickle(src)
    fs_in = float(hrtf.samplerate)
    sources = np.asarray(hrtf.sources, dtype=float)  # (710, 3): azimuth, elevation, distance
    ir = np.stack([np.asarray(flt.data, dtype=float).T for flt in hrtf.data])  # (710, 2, 512)
    assert ir.shape[1] == 2 and sources.shape == (ir.shape[0], 3)
    ir16 = resample_ir(ir, fs_in, FS)
    irs = IRSet(
        ir=ir16,
        fs=FS,
        azimuth_deg=sources[:, 0] % 360.0,
        elevation_deg=sources[:, 1],
        distance_m=sources[:, 2],
    )
    attrs = {
        "Title": "MIT KEMAR HRIRs, normal pinna, resampled to 16 kHz",
        "DatabaseName": "MIT KEMAR",
        "ListenerShortName": "KEMAR (normal pinna)",
        "AuthorContact": "Bill Gardner and Keith Martin, MIT Media Lab (original measurements)",
        "Organization": "MIT Media Lab",
        "License": "Free to use with citation of Gardner & Martin (1994), as stated by the authors",
        "References": (
            "Gardner, W. G. and Martin, K. D. (1994). HRTF measurements of a KEMAR dummy-head "
            "microphone. MIT Media Lab Perceptual Computing Technical Report #280."
        ),
        "Origin": f"{where} (sha256 {digest}), from the slab package (PyPI)",
        "History": (
            f"Converted by bast scripts/convert_mit_kemar.py: {ir.shape[0]} directions, "
            f"{fs_in:g} Hz, {ir.shape[-1]} taps -> {FS} Hz ({ir16.shape[-1]} taps) with "
            "scipy.signal.resample_poly, gain kept (scaled by fs_in/fs_out)."
        ),
        "Comment": (
            "Source distance 1.4 m as measured. Channel 0 is the left ear. Azimuth 90 deg = left."
        ),
    }
    return write_sofa(out, irs, attrs=attrs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="slab wheel (.whl) or the extracted .bz2 pickle")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    path = convert(args.source, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
