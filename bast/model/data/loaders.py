"""Training data from Stage 2 shards: resident on the device, or streamed.

Shards are homogeneous in split and environment (Stage 1 makes them so), so selecting a
split and environments is choosing shards from the manifest, and every read is a whole
shard (one sequential read; never per-sample fancy indexing).

* `ResidentData`: when the selected samples fit a memory budget, all of them live on the
  training device as float16 (31 KB a sample: a paper-scale training split is 7.7 GB)
  and each epoch is a `torch.randperm` on that device: the loader costs nothing.
* `StreamingData`: otherwise a background thread reads shards, in a seeded order, into a
  reused pinned buffer, and batches are drawn from a shuffle window spanning several
  shards.

Both give standardised float32 batches (per sample, over all 2 x 129 x 61 values) and
the target's encoded labels (bast/model/targets/core.py; the paper's (x, y) unit vector by
default). With several processes (DDP), rank r of w reads and keeps one w-th of the samples,
a contiguous cut of the shards in a seeded order (resident, `rank_share`), or takes its
share of the shards, dealt afresh each epoch (streaming); every rank makes the same number
of steps per epoch.
"""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from bast.conventions import SPEC_SHAPE, parse_environments
from bast.errors import DataError
from bast.model.targets.core import Target, make_target
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.stage.shards import read_manifest, verify_sha256

SAMPLE_BYTES = int(np.prod(SPEC_SHAPE)) * 2  # float16, log power only (more with other feature kinds)


@dataclass(frozen=True)
class Selection:
    """The shards of one split and some environments, from a Stage 2 manifest."""

    root: Path
    shards: tuple[dict, ...]
    # The feature kinds read (bast/pipeline/features/kinds.py), stacked as channels in this
    # order: the log power (power L, power R), then e.g. the phase (cos, sin).
    features: tuple = featurekinds.DEFAULT

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self.shards)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One sample as the loaders deliver it: (channels, frequencies, frames)."""
        return (featurekinds.channels(self.features), *SPEC_SHAPE[1:])

    @property
    def sample_bytes(self) -> int:
        return SAMPLE_BYTES * self.shape[0] // SPEC_SHAPE[0]

    @classmethod
    def of(cls, features_dir, split: str, envs="RI", features=featurekinds.DEFAULT, heads: str = "",
           rooms: str = "") -> "Selection":
        """The shards of `split` in environments `envs`, read as the feature kinds `features`
        (which the data must hold); `heads` / `rooms`, comma-separated names ("" = all),
        keep only the shards rendered with those heads / in those rooms."""
        root = Path(features_dir)
        manifest = read_manifest(root, "featurize", "training")
        features = featurekinds.normalize(features)
        featurekinds.require(manifest, features, root)
        wanted = parse_environments(envs)
        shards = tuple(s for s in manifest["shards"] if s["split"] == split and s["env"] in wanted and s["samples"])
        for key, names in (("head", heads), ("room", rooms)):
            chosen = {n.strip() for n in names.split(",") if n.strip()}
            if chosen:
                known = {s.get(key, "") for s in manifest["shards"]}
                if chosen - known:
                    raise DataError(f"{root}: no {key} named {', '.join(sorted(chosen - known))}; it holds "
                                    f"{', '.join(sorted(k for k in known if k)) or f'no {key} labels (older data)'}")
                shards = tuple(s for s in shards if s.get(key, "") in chosen)
        return cls(root, shards, features)

    def verify(self) -> "Selection":
        """Check every shard of the selection against the manifest's sha256 (each file once
        per process while it is unchanged); a missing or altered shard is a DataError that
        names it and says how to recover. Returns self."""
        for s in self.shards:
            verify_shard(self.root / s["path"], s.get("sha256"))
        return self


def read_shard(path: Path, features=featurekinds.DEFAULT) -> dict:
    """One whole shard: spec (float16) and the labels the trainer and the report use; spec
    stacks the feature kinds `features` as channels, in that order (the log power first,
    then e.g. the phase's cos and sin as channels 2 and 3).
    An unreadable or corrupt shard is a DataError naming the file and how to recover."""
    try:
        with h5py.File(path, "r") as f:
            parts = [f[k.dataset][()].astype(np.float16, copy=False) for k in featurekinds.kinds(features)]
            spec = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            out = {"spec": spec, "azimuth_deg": f["azimuth_deg"][()].astype(np.float32)}
            # Shards of before the sphere lie on the horizontal plane.
            out["elevation_deg"] = (f["elevation_deg"][()].astype(np.float32) if "elevation_deg" in f
                                    else np.zeros_like(out["azimuth_deg"]))
            names = json.loads(f.attrs["env_names"])
            out["env"] = np.asarray(names, dtype=object)[f["env"][()]]
            for k in ("clip_id", "category"):
                out[k] = f[k].asstr()[()]
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise corrupt_shard(path, exc) from None
    return out


def data_classes(features_dir) -> tuple[str, ...]:
    """The sorted class list of a Stage 2 data set: its manifest's `categories`, or (older
    data) the sorted distinct non-empty `category` labels of all its shards, so that class
    indices are the same for every split."""
    root = Path(features_dir)
    manifest = read_manifest(root, "featurize", "training")
    listed = manifest.get("categories", manifest.get("totals", {}).get("categories"))  # scenes: in totals
    if listed is not None:
        return tuple(sorted(str(c) for c in listed))
    found: set[str] = set()
    for s in manifest["shards"]:
        path = root / s["path"]
        try:
            with h5py.File(path, "r") as f:
                found.update(f["category"].asstr()[()].tolist())
        except (OSError, KeyError, ValueError) as exc:
            raise corrupt_shard(path, exc) from None
    return tuple(sorted(found - {""}))


def _redo(path) -> str:
    """How to rewrite a Stage 2 shard: the featurize command that made its folder."""
    features_dir = Path(path).parent.parent  # the Stage 2 folder (FEATURES/shards/NAME.h5)
    stage1 = ""
    try:
        stage1 = json.loads((features_dir / "manifest.json").read_text())["params"]["stage1"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"delete it and re-run `bast-cli featurize {stage1 or 'STAGE1'} {features_dir}` to rewrite it"


def corrupt_shard(path, reason) -> DataError:
    """The error for a shard that cannot be used: its path, why, and how to recover."""
    return DataError(f"{path}: unreadable or corrupt shard ({reason}); {_redo(path)}")


def verify_shard(path, sha256: str | None) -> None:
    """Raise DataError when the shard at `path` is missing or its sha256 is not `sha256`
    (None: only that it exists): the pipeline's own check (bast.pipeline.stage.shards.
    verify_sha256, which reads each file once per process while it is unchanged)."""
    path = Path(path)
    try:
        path.stat()
    except OSError as exc:
        raise corrupt_shard(path, f"cannot be read: {exc.strerror or exc}") from None
    if sha256:
        verify_sha256(path, sha256, _redo(path))


# Datasets of a shard that are not per-sample labels for the breakdowns.
_NOT_LABELS = {"spec", "phase", *(k.dataset for k in featurekinds.FEATURE_KINDS.values()), "audio", "azimuth_deg", "elevation_deg", "env", "clip_id", "split", "category"}


def read_extra_labels(path: Path) -> dict[str, np.ndarray]:
    """The per-sample labels a shard holds besides the standard ones (e.g. head, room,
    snr_db): every 1-D dataset of length N other than spec and the standard labels.
    Strings come back as str arrays, numbers as float64. Older shards give {}."""
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            n = f["azimuth_deg"].shape[0]
            for name, ds in f.items():
                if name in _NOT_LABELS or not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.shape[0] != n:
                    continue
                if ds.dtype.kind in "OSU":
                    out[name] = np.asarray(ds.asstr()[()] if ds.dtype.kind in "OS" else ds[()], dtype=str)
                elif ds.dtype.kind in "iufb":
                    out[name] = ds[()].astype(np.float64)
    except (OSError, KeyError, ValueError) as exc:
        raise corrupt_shard(path, exc) from None
    return out


def read_selection(sel: Selection, rank: int = 0, world: int = 1) -> dict:
    """All samples of a selection (rank's share: every world-th shard) concatenated."""
    parts = [read_shard(sel.root / s["path"], sel.features) for s in sel.shards[rank::world]]
    if not parts:
        return {"spec": np.zeros((0, *sel.shape), np.float16), "azimuth_deg": np.zeros(0, np.float32),
                "elevation_deg": np.zeros(0, np.float32),
                "env": np.zeros(0, object), "clip_id": np.zeros(0, object), "category": np.zeros(0, object)}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

def standardize(spec: torch.Tensor) -> torch.Tensor:
    """Per-sample standardisation over all its 2 x 129 x 61 values jointly (mean 0, std 1),
    as the reference code does: one mean and std per sample keeps the interaural level
    difference that per-ear standardisation would erase."""
    flat = spec.reshape(spec.shape[0], -1).float()
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True).clamp_min(1e-6)
    return ((flat - mean) / std).reshape(spec.shape)


def model_input(spec: torch.Tensor, features=featurekinds.DEFAULT) -> torch.Tensor:
    """What a model reads, float32, from the stacked feature kinds `features`: each kind
    declared `standardize` (the log power, channels 0, 1) standardised per sample over its
    channels jointly; the others (the phase's cos and sin, already in [-1, 1]) as they are."""
    kinds = featurekinds.kinds(features)
    if sum(k.channels for k in kinds) != spec.shape[1]:
        raise DataError(f"{spec.shape[1]} input channels, but the feature kinds {', '.join(features)} make "
                        f"{sum(k.channels for k in kinds)}")
    if len(kinds) == 1:
        return standardize(spec) if kinds[0].standardize else spec.float()
    parts, at = [], 0
    for k in kinds:
        part = spec[:, at:at + k.channels]
        parts.append(standardize(part) if k.standardize else part.float())
        at += k.channels
    return torch.cat(parts, dim=1)


def _batch(spec16: torch.Tensor, labels: torch.Tensor, device, target: Target,
           features=featurekinds.DEFAULT) -> tuple[torch.Tensor, torch.Tensor]:
    x = model_input(spec16.to(device, non_blocking=True), features)
    return x, target.encode(labels.to(device, non_blocking=True))


def _default(target: Target | None) -> Target:
    return target if target is not None else make_target("azimuth")


_STANDARDISE_CHUNK = 1024  # samples standardised at a time while loading (128 MB of float32 with the phase)


def rank_share(shard_samples: list[int], seed: int, rank: int, world: int) -> np.ndarray:
    """The sample numbers (ascending; sample k of shard i is offsets[i] + k) that rank `rank`
    of `world` holds resident for the whole run: all of them for one process; under DDP the
    shards in a seeded order, laid end to end and cut into `world` contiguous parts of
    n // world or n // world + 1 samples. Disjoint, together every sample, and a rank reads
    only the shards its part lies in: about n / world samples plus at most the two shards
    it shares with its neighbours in the cut. (Dealing whole shards round-robin, as the
    evaluation does, leaves ranks unequal when the shards do not split evenly, and
    every rank makes only as many steps as the smallest share allows: with the demo's 6
    training shards of two sizes on 4 ranks, 30 % of the samples would idle each epoch.)
    The seeded order mixes the shards' environments across ranks."""
    n = int(sum(shard_samples))
    if world == 1:
        return np.arange(n)
    offsets = np.cumsum([0, *shard_samples])
    order = np.random.default_rng([seed, 7919]).permutation(len(shard_samples))
    numbers = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order]) if n else np.zeros(0, np.int64)
    return np.sort(numbers[rank * n // world:(rank + 1) * n // world])


class ResidentData:
    """Every selected sample on `device`, standardised once as it loads (`model_input`) and
    kept as float16; shuffled there each epoch, so a step costs one gather and a cast.

    Standardising per batch instead cost the mlp 60 % of its CPU step (docs/performance.md).
    Stored after standardisation, a value keeps float16's 11-bit mantissa relative to the
    sample's spread (about 0.002 of a standard deviation), as the raw log power did."""

    def __init__(self, sel: Selection, batch_size: int, device, seed: int = 0, rank: int = 0, world: int = 1,
                 drop_last: bool = True, target: Target | None = None):
        self.target = target = _default(target)
        n = sel.samples
        # This rank's share (sample numbers, ascending): under DDP a contiguous cut of the
        # shards in a seeded order, so that the rank reads only the shards its share lies in.
        share = rank_share([s["samples"] for s in sel.shards], seed, rank, world)
        # One preallocated array on the device, filled shard by shard: the host holds one
        # shard at a time, never a second copy of the split (no list of parts concatenated).
        self.spec = torch.empty((len(share), *sel.shape), dtype=torch.float16, device=device)
        # The target's labels of each sample (the azimuth, for the paper's target).
        self.labels = torch.empty((len(share), *target.label_shape), dtype=torch.float32, device=device)
        start, filled, read = 0, 0, []
        for i, s in enumerate(sel.shards):
            rows = share[(share >= start) & (share < start + s["samples"])] - start
            if rows.size:
                read.append(i)
                part = read_shard(sel.root / s["path"], sel.features)
                # Standardised a chunk at a time: its float32 temporaries stay a fraction of
                # the shard being read (at most _STANDARDISE_CHUNK samples, 64 MB).
                step = max(1, min(_STANDARDISE_CHUNK, rows.size // 8))
                for a in range(0, rows.size, step):
                    chunk = torch.from_numpy(part["spec"][rows[a:a + step]]).to(self.spec.device)
                    self.spec[filled + a:filled + a + len(chunk)] = model_input(chunk, sel.features).to(torch.float16)
                self.labels[filled:filled + rows.size] = torch.from_numpy(target.labels(part)[rows])
                filled += rows.size
                del part
            start += s["samples"]
        self.indices = torch.from_numpy(share).to(device)  # sample numbers, for coverage checks
        self.shards_read = tuple(read)  # the selection's shards this rank read
        self.resident, self.share_bytes = True, len(share) * sel.sample_bytes
        self.batch_size, self.device, self.seed, self.drop_last = batch_size, torch.device(device), seed, drop_last
        self.rank, self.world = rank, world
        per_rank = n // world  # every rank makes the same number of steps
        self.steps = per_rank // batch_size if drop_last else -(-per_rank // batch_size)

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches (x, target, sample index) of one epoch, shuffled from (seed, epoch, rank)
        alone, so a resumed run replays the same order."""
        g = torch.Generator(device=self.device).manual_seed(self.seed * 100003 + epoch * 31 + self.rank)
        perm = torch.randperm(len(self.labels), generator=g, device=self.device)
        for b in range(self.steps):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.spec[idx].float(), self.target.encode(self.labels[idx]), self.indices[idx]


class StreamingData:
    """Shards read by a background thread into a reused pinned buffer; batches drawn from
    a shuffle window of `window` samples spanning several shards.

    With several ranks, each epoch deals the shards out afresh: one permutation from
    (seed, epoch), shared by all ranks, dealt round-robin. Every rank makes the same number
    of steps (DDP needs it), an equal share of all samples; a rank dealt fewer samples than
    that reads its first shards again, one dealt more leaves the rest for its next epochs'
    deals. Over epochs every shard reaches every rank; no sample is lost for good.
    """

    def __init__(self, sel: Selection, batch_size: int, device, seed: int = 0, rank: int = 0, world: int = 1,
                 window: int = 8192, target: Target | None = None):
        self.target = target = _default(target)
        if len(sel.shards) < world:
            raise DataError(f"{len(sel.shards)} shards cannot be streamed to {world} ranks: re-run featurize "
                             "with smaller shards, or raise --memory-budget-gb to keep the data resident")
        self.sel, self.batch_size, self.device, self.seed = sel, batch_size, torch.device(device), seed
        self.rank, self.world, self.window = rank, world, max(window, batch_size)
        self.offsets = np.cumsum([0] + [s["samples"] for s in sel.shards])  # first sample number of each shard
        self.steps = sel.samples // world // batch_size
        pin = self.device.type == "cuda"
        self.buffer = torch.empty((self.window + max(s["samples"] for s in sel.shards), *sel.shape),
                                  dtype=torch.float16, pin_memory=pin)
        self.label_buffer = torch.empty((self.buffer.shape[0], *target.label_shape), dtype=torch.float32,
                                        pin_memory=pin)
        self.index_buffer = torch.empty(self.buffer.shape[0], dtype=torch.int64)
        # A batch is gathered (index_select) into a pinned staging buffer, the source of an
        # asynchronous copy to the GPU; two of them alternate, and a buffer is refilled only
        # once its previous copy has finished (a CUDA event), so the copy of batch k+1
        # overlaps the compute of batch k without being overwritten in flight.
        self.staging = [(torch.empty((batch_size, *sel.shape), dtype=torch.float16, pin_memory=pin),
                         torch.empty((batch_size, *target.label_shape), dtype=torch.float32, pin_memory=pin))
                        for _ in range(2)]
        self.copied = [None, None]  # CUDA events of the staging buffers' last copies
        # The host-to-device copies run on their own stream, beside the compute stream (on
        # it they would wait for the previous step's kernels); the compute stream waits
        # for a batch's copy only when it standardises that batch.
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.resident, self.share_bytes = False, sel.samples // world * sel.sample_bytes

    def __len__(self) -> int:
        return self.steps

    def shards_of(self, epoch: int) -> list[int]:
        """This rank's shards in epoch `epoch`, in reading order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sel.shards))
        return [int(i) for i in order[self.rank::self.world]]

    def _reader(self, order: list[int], needed: int, out: queue.Queue, stop: threading.Event) -> None:
        """Puts whole shards on `out`, cycling through `order` until `needed` samples are
        delivered, then None; an exception is put instead, to surface in the training loop."""
        try:
            delivered = 0
            while delivered < needed:
                for i in order:
                    part = read_shard(self.sel.root / self.sel.shards[i]["path"], self.sel.features)
                    part["index"] = np.arange(self.offsets[i], self.offsets[i + 1])
                    part["labels"] = self.target.labels(part)
                    if not _put(out, part, stop):
                        return
                    delivered += len(part["index"])
                    if delivered >= needed:
                        break
        except Exception as exc:
            _put(out, exc, stop)
        _put(out, None, stop)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches (x, target, sample number) of one epoch, from (seed, epoch, rank) alone."""
        rng = np.random.default_rng([self.seed, epoch, self.rank])
        q: queue.Queue = queue.Queue(maxsize=2)  # read ahead two shards while the model works
        stop = threading.Event()
        threading.Thread(target=self._reader, args=(self.shards_of(epoch), self.steps * self.batch_size, q, stop),
                         daemon=True).start()
        fill, steps, done = 0, 0, False
        try:
            while steps < self.steps:
                while not done and fill < self.window:
                    item = q.get()
                    if item is None:
                        done = True
                        break
                    if isinstance(item, Exception):
                        raise item
                    n = len(item["azimuth_deg"])
                    self.buffer[fill:fill + n] = torch.from_numpy(item["spec"])
                    self.label_buffer[fill:fill + n] = torch.from_numpy(item["labels"])
                    self.index_buffer[fill:fill + n] = torch.from_numpy(item["index"])
                    fill += n
                if fill < self.batch_size:
                    raise RuntimeError(f"streaming loader ran dry after {steps} of {self.steps} steps")
                # Draw a batch at random from the window, then fill its slots with the window's
                # last samples (at most one batch of copying, not the whole window).
                pick = rng.choice(fill, self.batch_size, replace=False)
                x, y = self._gather(torch.from_numpy(pick), steps % 2)
                index = self.index_buffer[pick].clone()
                fill -= self.batch_size
                holes = pick[pick < fill]
                movers = np.setdiff1d(np.arange(fill, fill + self.batch_size), pick)
                self.buffer[holes] = self.buffer[movers]
                self.label_buffer[holes] = self.label_buffer[movers]
                self.index_buffer[holes] = self.index_buffer[movers]
                steps += 1
                yield x, y, index
        finally:  # an epoch cut short (NaN stop, error) must not leave the reader blocked
            stop.set()


    def _gather(self, pick: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        spec, labels = self.staging[slot]
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # its copy of two batches ago has finished
        torch.index_select(self.buffer, 0, pick, out=spec)
        torch.index_select(self.label_buffer, 0, pick, out=labels)
        if self.copy_stream is None:
            return _batch(spec, labels, self.device, self.target, self.sel.features)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            spec_d = spec.to(self.device, non_blocking=True)
            labels_d = labels.to(self.device, non_blocking=True)
            self.copied[slot] = torch.cuda.Event()
            self.copied[slot].record(self.copy_stream)
        compute.wait_stream(self.copy_stream)
        # Made on the copy stream, used on the compute stream: the allocator must not hand
        # their memory out again before the compute stream is done with them.
        spec_d.record_stream(compute)
        labels_d.record_stream(compute)
        return _batch(spec_d, labels_d, self.device, self.target, self.sel.features)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """out.put(item), giving up (False) once `stop` is set."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def make_data(sel: Selection, batch_size: int, device, seed: int, memory_budget_gb: float, rank: int = 0,
              world: int = 1, target: Target | None = None):
    """Resident when the rank's share fits the budget, else streaming; batches of `target`
    (default: the azimuth)."""
    if sel.samples / world * sel.sample_bytes <= memory_budget_gb * 1e9:
        return ResidentData(sel, batch_size, device, seed, rank, world, target=target)
    return StreamingData(sel, batch_size, device, seed, rank, world, target=target)


class EvalData:
    """A split in its stored order, for validation and test: resident on the device when
    it fits the budget (validation runs every epoch), else read shard by shard. Labels
    stay on the host for the predictions table. Batches never cross a shard, so a sample
    meets the same batch whether one process evaluates or several share the shards
    (rank r of w takes shards r, r + w, ...).

    `prepared=True` (validation during training): a resident split is standardised and its
    targets encoded once as it loads, and kept as float16 standardised values, as
    `ResidentData` keeps the training samples, so a batch costs a slice and a cast.
    Standardising every batch cost the mlp more than its forward pass: validation took a
    third of a CPU epoch's training time (docs/performance.md). `prepared=False` (the
    final test, `evaluate`): every batch is standardised in float32 from the stored
    float16 spectra, so the test figures are those of the raw data."""

    def __init__(self, sel: Selection, batch_size: int, device, memory_budget_gb: float, rank: int = 0,
                 world: int = 1, target: Target | None = None, prepared: bool = False):
        self.sel, self.batch_size, self.device = sel, batch_size, torch.device(device)
        self.target = _default(target)
        self.rank, self.world = rank, world
        self.shards = sel.shards[rank::world]
        self.resident = sum(s["samples"] for s in self.shards) * sel.sample_bytes <= memory_budget_gb * 1e9
        self.prepared = prepared and self.resident
        self.parts = None
        if self.resident:  # one shard at a time to the device: no host copy of the whole split
            self.parts = []
            for s in self.shards:
                d = read_shard(sel.root / s["path"], sel.features)
                spec = torch.from_numpy(d.pop("spec")).to(self.device)
                y = torch.from_numpy(self.target.labels(d))  # the target's labels, encoded per batch
                if self.prepared:  # in place, a chunk at a time (float32 temporaries stay small)
                    for a in range(0, len(spec), _STANDARDISE_CHUNK):
                        spec[a:a + _STANDARDISE_CHUNK] = model_input(spec[a:a + _STANDARDISE_CHUNK],
                                                                     sel.features).to(torch.float16)
                    y = self.target.encode(y.to(self.device))  # ... or once, here
                self.parts.append((spec, y, d))

    def __len__(self) -> int:
        return sum(s["samples"] for s in self.shards)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        """(x, target, labels of the batch as numpy arrays)."""
        if self.prepared:
            for spec, y, labels in self.parts:
                for i in range(0, len(spec), self.batch_size):
                    yield (spec[i:i + self.batch_size].float(), _rows(y, i, self.batch_size),
                           {k: v[i:i + self.batch_size] for k, v in labels.items()})
            return
        parts = self.parts if self.resident else (
            (torch.from_numpy(d.pop("spec")), torch.from_numpy(self.target.labels(d)), d)
            for d in (read_shard(self.sel.root / s["path"], self.sel.features) for s in self.shards))
        for spec, raw, labels in parts:
            for i in range(0, len(raw), self.batch_size):
                x, y = _batch(spec[i:i + self.batch_size], raw[i:i + self.batch_size], self.device, self.target,
                              self.sel.features)
                yield x, y, {k: v[i:i + self.batch_size] for k, v in labels.items()}


def _rows(y, start: int, size: int):
    """Rows start:start + size of an encoded target: a tensor, or a tuple of them (multitask)."""
    if isinstance(y, torch.Tensor):
        return y[start:start + size]
    return type(y)(_rows(part, start, size) for part in y)
