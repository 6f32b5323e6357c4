"""The export of scenes in the DCASE layout (docs/scenes.md); the CSV codec is bast/dcase/files.py.

DCASE task 3 (2022-2024) metadata is a CSV without a header, one line per active event per
100 ms frame: `frame,class,source,azimuth,elevation[,distance]`, integers: the frame index,
the class index, the source (track) index, the azimuth in degrees counter-clockwise with 0
ahead in [-180, 180), the elevation in degrees, and (from 2024) the distance in cm. bast's
label rows (bast/pipeline/render/scenemodel.py) hold the same columns in SOFA units (azimuth in
[0, 360), distance in metres). Predictions use the same format; DCASE 2023 reads the first
five columns, so `parse_csv` accepts five or six.

`to_csv_lines`/`parse_csv` and `to_dcase_rows`/`from_dcase_rows` are pure: a metrics module
reading predictions can use them. `export_dcase` writes a finished scenes output in the
DCASE layout (docs/scenes.md): one stereo WAV and one metadata CSV per scene and condition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bast import options
from bast.dcase.files import label_rows_csv

# The DCASE 2023 baseline takes the fold from the file name's fifth character and trains
# on fold 3 and tests on fold 4 by default; val gets a fold of its own.
FOLDS = {"train": 3, "test": 4, "val": 5}
DCASE_FS = 24000  # the rate of DCASE's recordings, which its baselines assume


# What an export writes in its folder: no input may lie there.
EXPORT_OWNED = ("stereo_dev", "metadata_dev", "bast_index.csv", "bast_export.json")


def check_export_output(out_dir, stage1_dir, inputs=(), option: str = "OUT") -> Path:
    """The export's folder: not the scenes folder nor inside it (nor any other input of
    `inputs`, (name, path) pairs), and holding no input where the export writes."""
    return options.output_dir(out_dir, option, inputs=[("the scenes folder", stage1_dir), *inputs],
                              owned=EXPORT_OWNED)


def file_stem(split: str, room: int, mix: int) -> str:
    """DCASE's file name: fold<N>_room<R>_mix<M>."""
    return f"fold{FOLDS[split]}_room{room}_mix{mix:03d}"


def export_dcase(stage1_dir, out_dir, *, fs: int = DCASE_FS) -> dict:
    """Write every scene of a finished `bast-cli scenes` output in the DCASE layout:
    OUT/stereo_dev/dev-<split>-bast/<stem>.wav (2 channels, left first, 16-bit PCM at `fs`)
    and OUT/metadata_dev/dev-<split>-bast/<stem>.csv, one pair per scene and condition;
    the room number is the condition's position in the data set's list of conditions.
    OUT/bast_index.csv maps each file to its scene, condition and the gain applied (a scene
    whose peak would clip is scaled down). Returns a summary."""
    import h5py
    import soundfile as sf
    from scipy.signal import resample_poly

    from bast.conventions import FS
    from bast.fileio import atomic_write_text, write_json
    from bast.pipeline.render.scenes import read_scenes

    stage1_dir, out_dir = Path(stage1_dir), Path(out_dir)
    check_export_output(out_dir, stage1_dir)
    manifest = read_scenes(stage1_dir, "export-dcase")
    from fractions import Fraction

    ratio = Fraction(fs, FS)
    conditions: list[tuple] = []
    for s in manifest["shards"]:
        key = (s["env"], s["head"], s["room"])
        if key not in conditions:
            conditions.append(key)
    index = ["file,split,scene_id,env,head,room,gain"]
    files = 0
    for s in manifest["shards"]:
        room = conditions.index((s["env"], s["head"], s["room"])) + 1
        with h5py.File(stage1_dir / s["path"], "r") as f:
            ids = f["scene_id"].asstr()[()]
            offsets = f["label_offsets"][()]
            labels = f["labels"][()]
            for i, scene_id in enumerate(ids):
                mix = int(scene_id.rsplit("-", 1)[1]) + 1
                stem = file_stem(s["split"], room, mix)
                audio = f["audio"][i].astype(np.float64)
                if ratio != 1:
                    audio = resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1)
                peak = float(np.max(np.abs(audio))) if audio.size else 0.0
                gain = 1.0 if peak < 0.999 else 0.999 / peak
                wav = out_dir / "stereo_dev" / f"dev-{s['split']}-bast" / f"{stem}.wav"
                meta = out_dir / "metadata_dev" / f"dev-{s['split']}-bast" / f"{stem}.csv"
                wav.parent.mkdir(parents=True, exist_ok=True)
                meta.parent.mkdir(parents=True, exist_ok=True)
                tmp = wav.with_name(f".{wav.name}.tmp")
                sf.write(tmp, (audio * gain).T, fs, subtype="PCM_16", format="WAV")
                tmp.replace(wav)
                atomic_write_text(meta, label_rows_csv(labels[offsets[i]:offsets[i + 1]]))
                index.append(f"{wav.relative_to(out_dir)},{s['split']},{scene_id},{s['env']},{s['head']},{s['room']},"
                             f"{gain:.6g}")
                files += 1
    atomic_write_text(out_dir / "bast_index.csv", "\n".join(index) + "\n")
    summary = {"files": files, "fs": fs, "categories": manifest["totals"]["categories"],
               "folds": FOLDS, "rooms": [{"room": k + 1, "env": c[0], "head": c[1], "bast_room": c[2]}
                                         for k, c in enumerate(conditions)]}
    write_json(out_dir / "bast_export.json", summary)
    return summary
