"""The export of scenes in the DCASE layout (docs/scenes.md); the CSV codec is bast/dcase/files.py.

DCASE task 3 (2022-2024) metadata is a CSV without a header, one line per active event per
100 ms frame: `frame,class,source,azimuth,elevation[,distance]`, integers: the frame index,
the class index, the source (track) index, the azimuth in degrees counter-clockwise with 0
ahead in [-180, 180), the elevation in degrees, and (from 2024) the distance in cm. bast's
label rows (bast/pipeline/render/scenemodel.py) hold the same columns in SOFA units (azimuth in
[0, 360), distance in metres). Predictions use the same format; DCASE 2023 reads the first
five columns, so bast/dcase/files.py's `parse_dcase_csv` accepts five or six.

The conversions (`to_dcase_rows`/`from_dcase_rows`, `label_rows_csv`, `parse_dcase_csv`) are
pure and live in bast/dcase/files.py: a metrics module reading predictions uses them too.
`export_dcase` writes a finished scenes output in the
DCASE layout (docs/scenes.md): one stereo WAV and one metadata CSV per scene and condition.

DCASE 2025 task 3 (stereo SELD; `export_dcase(..., stereo2025=True)`, `--stereo-dcase2025`)
scores azimuth and distance only, with rear directions folded to the front, since stereo
cannot tell them apart. Its metadata (as the task's baseline, partha2409/DCASE2025_seld_baseline,
writes and reads it) has a header line `frame,class,source,azimuth,distance,onscreen`, then
integers: the 100 ms frame, the class, the source, the azimuth folded into [-90, 90]
(bast/dcase/dcase2025.py `fold_azimuth`, the baseline's `fold_az_angle`: a -> 180 - a above
90, -180 - a below -90, after wrapping into [-180, 180)), the distance in cm, and whether the
event is on the video's screen. bast scenes have no video: every event is written off screen
(0), as the baseline's audio-only model writes its predictions. `dcase2025_rows` makes those
rows of bast's label rows; bast/dcase/files.py's `write_dcase2025_csv` writes them, the one
writer of the format, whose reader `seld-metrics --edition 2025` scores them with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bast import options
from bast.dcase.dcase2025 import fold_azimuth
from bast.dcase.files import label_rows_csv, to_dcase_rows, write_dcase2025_csv
from bast.fileio import atomic_write_text

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


def dcase2025_rows(rows: np.ndarray) -> np.ndarray:
    """(R, 6) label rows (frame, category, track, azimuth_deg, elevation_deg, distance_m) ->
    (R, 6) int64 DCASE 2025 rows (frame, class, source, folded azimuth, distance in cm,
    onscreen = 0), sorted by frame then source. The azimuth is rounded to whole degrees
    first (DCASE's [-180, 180)), then folded, so folding never moves it off a whole degree."""
    d = to_dcase_rows(rows)
    out = np.zeros((len(d), 6), dtype=np.int64)
    out[:, :3] = d[:, :3]
    out[:, 3] = fold_azimuth(d[:, 3]).astype(np.int64)
    out[:, 4] = d[:, 5]
    return out[np.lexsort((out[:, 2], out[:, 0]))]


def write_metadata(path: Path, labels: np.ndarray, stereo2025: bool = False) -> None:
    """A scene's label rows as its metadata CSV, atomically: DCASE 2024's rows (no header),
    or with `stereo2025` DCASE 2025's (`dcase2025_rows` by `write_dcase2025_csv`)."""
    if stereo2025:
        write_dcase2025_csv(path, dcase2025_rows(labels))
    else:
        atomic_write_text(path, label_rows_csv(labels))


def file_stem(split: str, room: int, mix: int) -> str:
    """DCASE's file name: fold<N>_room<R>_mix<M>."""
    return f"fold{FOLDS[split]}_room{room}_mix{mix:03d}"


def export_dcase(stage1_dir, out_dir, *, fs: int = DCASE_FS, stereo2025: bool = False) -> dict:
    """Write every scene of a finished `bast-cli scenes` output in the DCASE layout:
    OUT/stereo_dev/dev-<split>-bast/<stem>.wav (2 channels, left first, 16-bit PCM at `fs`)
    and OUT/metadata_dev/dev-<split>-bast/<stem>.csv, one pair per scene and condition (the
    metadata in DCASE 2024's columns, or with `stereo2025` DCASE 2025's: `write_metadata`);
    the room number is the condition's position in the data set's list of conditions.
    OUT/bast_index.csv maps each file to its scene, condition and the gain applied (a scene
    whose peak would clip is scaled down). Returns a summary."""
    import h5py

    from bast.fileio import write_json
    from bast.pipeline.render.scenes import read_scenes

    stage1_dir, out_dir = Path(stage1_dir), Path(out_dir)
    check_export_output(out_dir, stage1_dir)
    manifest = read_scenes(stage1_dir, "export-dcase")
    conditions: list[tuple] = []
    for s in manifest["shards"]:
        key = (s["env"], s["head"], s["room"])
        if key not in conditions:
            conditions.append(key)
    index = ["file,split,scene_id,env,head,room,gain"]
    for s in manifest["shards"]:
        room = conditions.index((s["env"], s["head"], s["room"])) + 1
        with h5py.File(stage1_dir / s["path"], "r") as f:
            ids = f["scene_id"].asstr()[()]
            offsets = f["label_offsets"][()]
            labels = f["labels"][()]
            for i, scene_id in enumerate(ids):
                stem = file_stem(s["split"], room, int(scene_id.rsplit("-", 1)[1]) + 1)
                wav = out_dir / "stereo_dev" / f"dev-{s['split']}-bast" / f"{stem}.wav"
                gain = write_wav(wav, f["audio"][i], fs)
                meta = out_dir / "metadata_dev" / f"dev-{s['split']}-bast" / f"{stem}.csv"
                meta.parent.mkdir(parents=True, exist_ok=True)
                write_metadata(meta, labels[offsets[i]:offsets[i + 1]], stereo2025)
                index.append(f"{wav.relative_to(out_dir)},{s['split']},{scene_id},{s['env']},{s['head']},{s['room']},"
                             f"{gain:.6g}")
    atomic_write_text(out_dir / "bast_index.csv", "\n".join(index) + "\n")
    summary = {"files": len(index) - 1, "fs": fs, **({"format": "dcase2025-stereo"} if stereo2025 else {}),
               "categories": manifest["totals"]["categories"],
               "folds": FOLDS, "rooms": [{"room": k + 1, "env": c[0], "head": c[1], "bast_room": c[2]}
                                         for k, c in enumerate(conditions)]}
    write_json(out_dir / "bast_export.json", summary)
    return summary


def write_wav(path: Path, audio: np.ndarray, fs: int) -> float:
    """A scene (2, S) at bast's rate as a 16-bit stereo WAV at `fs` (resampled, polyphase),
    atomically; scaled down when its peak would clip. Returns the gain applied."""
    from fractions import Fraction

    import soundfile as sf
    from scipy.signal import resample_poly

    from bast.conventions import FS

    ratio = Fraction(fs, FS)
    audio = np.asarray(audio, dtype=np.float64)
    if ratio != 1:
        audio = resample_poly(audio, ratio.numerator, ratio.denominator, axis=-1)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    gain = 1.0 if peak < 0.999 else 0.999 / peak
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, (audio * gain).T, fs, subtype="PCM_16", format="WAV")
    tmp.replace(path)
    return gain
