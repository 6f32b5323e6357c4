"""Training samples drawn anew from a recipe and rendered on demand: the Stage 1 side of
training on the fly (docs/train.md "Training on the fly").

`draw` decides each sample from (seed, epoch, sample number) alone: which sound (one of the
recipe's training sounds, or with `fresh_sounds` a procedural sound never listed in the data
set), which condition (head and room), which direction (a grid direction of the recipe, or
any direction on the horizontal circle or the sphere), the SNR and the noise, a gain and an
onset shift. The draw of sample k never depends on which process renders it or what was drawn
before, so a resumed run, another number of loader workers, or the ranks of a DDP run (each
its own sample numbers) draw exactly the same samples.

`SampleRenderer` turns draws into binaural audio with Stage 1's own pieces: the clip policy
(`clips.prepare`), the IR banks Stage 1 rendered with (irs/<key>.sofa) and its FFT renderer
(`Renderer.render_rows`), its noise banks and SNR mixing (`noise.mix_at_snr`). A draw at a grid
direction with no gain, no shift and no noise is the Stage 1 sample of that sound, direction
and condition (tests/...test_onthefly.py checks it against Stage 1 + Stage 2). `prepare_batch`
does all of `render` but the convolution and the mixing, for a batch rendered on the
training device (bast/model/data/devicefeatures.py). Directions off
the grid: in anechoic conditions the HRIR interpolated at exactly that direction; in rooms the
nearest direction of a denser bank built once (every 5 deg on the circle, about 10 deg apart on
the sphere; cached like every room bank), whose direction is the label.
"""

from __future__ import annotations

import collections
import functools
import json
from dataclasses import dataclass

import numpy as np

from bast.conventions import CLIP_SAMPLES, FS
from bast.datasets.base import ClipRef, load_clip
from bast.errors import ClipError, ConfigError, DataError
from bast.pipeline.irs.sofa import read_sofa
from bast.pipeline.render import noise as noise_mod
from bast.pipeline.render.clips import prepare
from bast.pipeline.render.recipe import Recipe, check_fresh_sounds, simulated
from bast.pipeline.render.static import Renderer
from bast.pipeline.stage.shards import ENV_NAMES
from bast.sphere import azimuth_elevation, unit_vector

DIRECTION_MODES = ("grid", "circle", "sphere")
ROOM_CIRCLE_STEP_DEG = 5.0  # a room's denser bank on the circle
ROOM_SPHERE_POINTS = 412  # about 10 deg apart on the whole sphere (those inside the head's range kept)
FRESH_CACHE = 4096  # fresh sounds a renderer keeps (~32 KB each): an epoch's sounds, reused
MAX_FRESH_PER_EPOCH = 10_000_000
FRESH_INDEX = 2**40  # fresh procedural sounds take indices n .. n + 2**40 of the corpus: never a listed one


@dataclass(frozen=True)
class DrawSettings:
    """How training samples are drawn (TrainConfig records them; docs/train.md)."""

    fresh_sounds: bool = False  # new procedural sounds every epoch instead of the training sounds
    # With fresh_sounds: this many new sounds an epoch, sample k taking sound k mod N (each
    # sound heard at about epoch_samples / N directions and conditions); 0: a new sound for
    # every sample. Synthesis, not rendering, is what costs (espeak-ng speech: ~56 ms a
    # sound against ~2 ms to render a sample), so reuse keeps one loader worker ahead of BAST.
    fresh_per_epoch: int = 0
    directions: str = "grid"  # grid | circle | sphere
    gain_db: float = 6.0  # a gain drawn uniformly in [-gain_db, +gain_db] dB
    onset_ms: float = 50.0  # an onset shift drawn uniformly in [-onset_ms, +onset_ms] ms (zeros shifted in)

    def __post_init__(self):
        if self.directions not in DIRECTION_MODES:
            raise ConfigError(f"--sample-directions must be one of {', '.join(DIRECTION_MODES)}, "
                              f"not {self.directions!r}")
        if not 0 <= self.gain_db <= 40:
            raise ConfigError(f"gain_db must be in [0, 40] dB, not {self.gain_db!r}")
        if not 0 <= self.fresh_per_epoch <= MAX_FRESH_PER_EPOCH:
            raise ConfigError(f"--fresh-per-epoch must be in [0, {MAX_FRESH_PER_EPOCH}], not {self.fresh_per_epoch!r}")
        if self.fresh_per_epoch and not self.fresh_sounds:  # it would be ignored without a word
            raise ConfigError("--fresh-per-epoch says how many fresh sounds an epoch makes: add --fresh-sounds")
        if not 0 <= self.onset_ms <= 250:
            raise ConfigError(f"onset_ms must be in [0, 250] ms, not {self.onset_ms!r}")


@dataclass(frozen=True)
class Draw:
    """One training sample, decided; `render` makes its audio."""

    number: int  # the sample's number in its epoch
    sound: ClipRef
    piece: float  # in [0, 1): which piece of a sound that the clip policy cut in several
    condition: int  # index into recipe.conditions
    azimuth_deg: float
    elevation_deg: float
    row: int  # the direction's row in the condition's grid bank, -1 off the grid
    snr_db: float  # inf: no noise
    gain_db: float
    shift: int  # onset shift in samples (positive: later)
    noise_seed: int


def grid_directions(recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's directions (azimuths, elevations): the rows of its grid banks."""
    return recipe.grid


def _rng(seed: int, epoch: int, number: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(number), 0x0F1])


def _fresh_sound(recipe: Recipe, rng: np.random.Generator) -> ClipRef:
    kinds = recipe.source.get("kinds") or sorted(recipe.categories)
    kinds = [k for k in kinds if not recipe.categories or k in recipe.categories]
    kind = kinds[int(rng.integers(len(kinds)))]
    index = int(recipe.source["sounds"]) + int(rng.integers(FRESH_INDEX))
    locator = json.dumps({"kind": kind, "index": index, "seed": int(recipe.source["seed"])}, separators=(",", ":"))
    return ClipRef(f"fresh/{kind}-{index}", recipe.source["recipe"], locator, category=kind)


def _direction(recipe: Recipe, mode: str, rng: np.random.Generator, limits: tuple[float, float]):
    """(azimuth, elevation, grid row or -1) of one draw."""
    if mode == "grid":
        az, el = grid_directions(recipe)
        row = int(rng.integers(len(az)))
        return float(az[row]), float(el[row]), row
    azimuth = float(rng.uniform(0.0, 360.0))
    if mode == "circle":
        return azimuth, 0.0, -1
    lo, hi = np.sin(np.radians(limits))  # uniform on the sphere: sin(elevation) uniform
    return azimuth, float(np.degrees(np.arcsin(rng.uniform(lo, hi)))), -1


def draw(recipe: Recipe, settings: DrawSettings, seed: int, epoch: int, numbers,
         limits=(-90.0, 90.0)) -> list[Draw]:
    """The samples `numbers` of `epoch`, each from (seed, epoch, number) alone. `limits`: the
    elevations a sphere draw spans (the heads' measured range)."""
    if settings.fresh_sounds:
        check_fresh_sounds(recipe)
    sounds = recipe.train_sounds()
    if not sounds and not settings.fresh_sounds:
        raise DataError(f"{recipe.stage1}: no training sounds to draw from")
    snr = recipe.config.snr_db
    out = []
    for number in numbers:
        rng = _rng(seed, epoch, number)
        if not settings.fresh_sounds:
            sound = sounds[int(rng.integers(len(sounds)))]
        elif settings.fresh_per_epoch:  # the epoch's sound slot number mod N, drawn from its own stream
            slot = int(number) % settings.fresh_per_epoch
            sound = _fresh_sound(recipe, np.random.default_rng([int(seed), int(epoch), slot, 0x5D]))
        else:
            sound = _fresh_sound(recipe, rng)
        piece = float(rng.uniform())
        condition = int(rng.integers(len(recipe.conditions)))
        azimuth, elevation, row = _direction(recipe, settings.directions, rng, limits)
        level = float(rng.uniform(*snr)) if snr is not None else noise_mod.NO_NOISE
        gain = float(rng.uniform(-settings.gain_db, settings.gain_db))
        shift = int(rng.integers(-int(settings.onset_ms * FS / 1000), int(settings.onset_ms * FS / 1000) + 1))
        out.append(Draw(int(number), sound, piece, condition, azimuth, elevation, row, level, gain, shift,
                        int(rng.integers(2**63))))
    return out


def shifted(clip: np.ndarray, shift: int) -> np.ndarray:
    """The clip `shift` samples later (earlier when negative), zeros shifted in."""
    if shift == 0:
        return clip
    out = np.zeros_like(clip)
    if shift > 0:
        out[shift:] = clip[:-shift]
    else:
        out[:shift] = clip[-shift:]
    return out


class SampleRenderer:
    """Renders draws of one recipe; keeps what it loads (clips, IR spectra, noise banks)
    for its lifetime, so build one per loader worker."""

    def __init__(self, recipe: Recipe, settings: DrawSettings):
        self.recipe, self.settings = recipe, settings
        self._clips: dict[str, list[np.ndarray]] = {}
        self._fresh: collections.OrderedDict[str, list[np.ndarray]] = collections.OrderedDict()

    # ------------------------------------------------------------------ sounds
    def pieces(self, ref: ClipRef) -> list[np.ndarray]:
        """The clip policy's pieces of a sound (Stage 1's `prepare`), loaded once; fresh
        sounds are kept only while an epoch may reuse them (the last FRESH_CACHE)."""
        fresh = ref.clip_id.startswith("fresh/")
        got = self._fresh.get(ref.clip_id) if fresh else self._clips.get(ref.clip_id)
        if fresh and got is not None:
            self._fresh.move_to_end(ref.clip_id)
        if got is None:
            try:
                audio, fs = load_clip(ref)
                got, _ = prepare(audio, fs, self.recipe.config.policy)
            except ClipError as exc:
                raise DataError(f"training sound {ref.clip_id} ({ref.locator}) cannot be used: {exc}") from None
            if not fresh:
                self._clips[ref.clip_id] = got
            elif self.settings.fresh_per_epoch:
                self._fresh[ref.clip_id] = got
                if len(self._fresh) > FRESH_CACHE:
                    self._fresh.popitem(last=False)
        return got

    # ------------------------------------------------------------------ impulse responses
    @functools.lru_cache(maxsize=None)
    def grid_renderer(self, condition: int) -> Renderer:
        """The renderer of a condition's grid bank: the IR file Stage 1 rendered with."""
        key = self.recipe.conditions[condition].key
        return Renderer(read_sofa(self.recipe.ir_paths[key]).ir, n_out=CLIP_SAMPLES)

    @functools.lru_cache(maxsize=None)
    def _interpolator(self, condition: int):
        from bast.pipeline.irs.interpolate import Interpolator

        return Interpolator(read_sofa(self.recipe.conditions[condition].hrir))

    @functools.lru_cache(maxsize=None)
    def dense_bank(self, condition: int) -> tuple[Renderer, np.ndarray]:
        """A room's bank at the denser directions of the circle or the sphere (built once,
        cached on disk as every room bank is): its renderer and unit vectors."""
        from bast.pipeline.irs.rooms import BankTask, build_bank

        cond = self.recipe.conditions[condition]
        spec = simulated(self.recipe, cond.room)
        if spec is None:
            raise ConfigError(f"--sample-directions {self.settings.directions}: room {cond.room} is a measured BRIR "
                              "set, which has its measured directions only; use --sample-directions grid")
        az, el = self.dense_directions(condition)
        bank = build_bank(BankTask(spec, cond.hrir, tuple(az.tolist()), 0.0, tuple(el.tolist()), True))
        return Renderer(bank.ir, n_out=CLIP_SAMPLES), unit_vector(bank.azimuth_deg, bank.elevation_deg)

    def dense_directions(self, condition: int) -> tuple[np.ndarray, np.ndarray]:
        if self.settings.directions == "circle":
            az = np.arange(0.0, 360.0, ROOM_CIRCLE_STEP_DEG)
            return az, np.zeros_like(az)
        from bast.pipeline.render.noise import fibonacci_directions

        az, el = azimuth_elevation(fibonacci_directions(ROOM_SPHERE_POINTS))
        lo, hi = self.elevation_limits()
        keep = (el >= lo) & (el <= hi)
        return np.round(az[keep], 6) % 360.0, np.round(el[keep], 6)

    @functools.lru_cache(maxsize=None)
    def elevation_limits(self) -> tuple[float, float]:
        """The elevations every head of the recipe measured (a sphere draw stays inside)."""
        lo, hi = -90.0, 90.0
        for c in self.recipe.conditions:
            h = read_sofa(c.hrir)
            lo, hi = max(lo, float(h.elevation_deg.min())), min(hi, float(h.elevation_deg.max()))
        return lo, hi

    def ir_source(self, d: Draw) -> tuple[int, int, np.ndarray | None, float, float]:
        """Which IR renders a draw: (bank, row, pair, azimuth, elevation) with bank
        2 * condition for the condition's grid bank, 2 * condition + 1 for its denser bank
        (`bank_renderer`), or -1 and the interpolated pair (2, taps) itself (anechoic, off
        the grid); the direction is the one that labels the sample."""
        if d.row >= 0:
            return 2 * d.condition, d.row, None, d.azimuth_deg, d.elevation_deg
        if self.recipe.conditions[d.condition].env == "anechoic":
            pair = self._interpolator(d.condition)(d.azimuth_deg, d.elevation_deg).reshape(2, -1)
            return -1, 0, pair.astype(np.float32), d.azimuth_deg, d.elevation_deg
        _, dirs = self.dense_bank(d.condition)
        row = int(np.argmax(dirs @ unit_vector(d.azimuth_deg, d.elevation_deg).reshape(3)))
        az, el = azimuth_elevation(dirs[row])
        return 2 * d.condition + 1, row, None, float(az) % 360.0, float(el)

    def bank_renderer(self, bank: int) -> Renderer:
        """The renderer of an `ir_source` bank (its `spectra` and `nfft`)."""
        return self.dense_bank(bank // 2)[0] if bank % 2 else self.grid_renderer(bank // 2)

    def _pair(self, d: Draw, clip: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(2, n) audio of one draw's clip, and the direction that labels it."""
        if d.row >= 0:
            return self.grid_renderer(d.condition).render_rows(clip[None], [d.row])[0], d.azimuth_deg, d.elevation_deg
        if self.recipe.conditions[d.condition].env == "anechoic":
            pair = self._interpolator(d.condition)(d.azimuth_deg, d.elevation_deg).reshape(2, -1)
            return Renderer(pair[None], n_out=CLIP_SAMPLES).render_rows(clip[None], [0])[0], d.azimuth_deg, \
                d.elevation_deg
        renderer, dirs = self.dense_bank(d.condition)
        row = int(np.argmax(dirs @ unit_vector(d.azimuth_deg, d.elevation_deg).reshape(3)))
        az, el = azimuth_elevation(dirs[row])
        return renderer.render_rows(clip[None], [row])[0], float(az) % 360.0, float(el)

    # ------------------------------------------------------------------ noise
    @functools.lru_cache(maxsize=None)
    def _noise_bank(self, condition: int) -> np.ndarray:
        cfg = self.recipe.config
        az, el = grid_directions(self.recipe)
        return noise_mod.noise_bank(cfg.noise, self.recipe.conditions[condition].hrir, az, cfg.seed,
                                    () if cfg.flat else el)

    # ------------------------------------------------------------------ samples
    def render(self, draws: list[Draw]) -> tuple[np.ndarray, dict]:
        """Audio (B, 2, n) float32 of the draws and their label columns (as a shard's)."""
        n = CLIP_SAMPLES
        audio = np.empty((len(draws), 2, n), dtype=np.float32)
        az = np.empty(len(draws), np.float32)
        el = np.empty(len(draws), np.float32)
        snr = np.full(len(draws), noise_mod.NO_NOISE, np.float32)
        for i, d in enumerate(draws):
            pieces = self.pieces(d.sound)
            clip = pieces[min(int(d.piece * len(pieces)), len(pieces) - 1)]
            if d.gain_db:
                clip = clip * np.float32(10 ** (d.gain_db / 20))
            audio[i], az[i], el[i] = self._pair(d, shifted(clip, d.shift))
            if np.isfinite(d.snr_db):
                noise = noise_mod.noise_window(self.recipe.config.noise, self._noise_bank(d.condition),
                                               np.random.default_rng(d.noise_seed), n)
                snr[i] = noise_mod.mix_at_snr(audio[i:i + 1], noise[None], np.array([d.snr_db]))[0]
        return audio, labels(self.recipe, draws, az, el, snr)


@dataclass
class Prepared:
    """A batch of draws made ready to render elsewhere (on the training device:
    bast/model/data/devicefeatures.py): what `SampleRenderer.render` does before and
    after its FFT convolution, without it."""

    clips: np.ndarray  # (B, n) float32: the clip policy's clips, gain and onset shift applied
    banks: np.ndarray  # (B,) int64: the IR bank of each (`ir_source`), -1 for a pair of its own
    rows: np.ndarray  # (B,) int64: the row in its bank, or the index into `pairs`
    pairs: list  # the (2, taps) float32 IR pairs of the samples with bank -1
    noise: np.ndarray | None  # (B, 2, n) float32 noise windows, unscaled (None: no noise drawn)
    levels: np.ndarray  # (B,) float32 SNR in dB to mix each at (inf: none)


def prepare_batch(renderer: SampleRenderer, draws: list[Draw]) -> tuple[Prepared, dict]:
    """`renderer.render(draws)` up to the convolution: the batch's `Prepared` and its label
    columns (snr_db: the levels drawn; the mixing may set +inf where a sample is silent)."""
    n, count = CLIP_SAMPLES, len(draws)
    clips = np.empty((count, n), dtype=np.float32)
    banks, rows = np.empty(count, np.int64), np.empty(count, np.int64)
    az, el = np.empty(count, np.float32), np.empty(count, np.float32)
    levels = np.full(count, noise_mod.NO_NOISE, np.float32)
    noise = np.zeros((count, 2, n), np.float32) if renderer.recipe.config.snr_db is not None else None
    pairs: list = []
    for i, d in enumerate(draws):
        pieces = renderer.pieces(d.sound)
        clip = pieces[min(int(d.piece * len(pieces)), len(pieces) - 1)]
        if d.gain_db:
            clip = clip * np.float32(10 ** (d.gain_db / 20))
        clips[i] = shifted(clip, d.shift)
        banks[i], rows[i], pair, az[i], el[i] = renderer.ir_source(d)
        if pair is not None:
            rows[i] = len(pairs)
            pairs.append(pair)
        if np.isfinite(d.snr_db) and noise is not None:
            noise[i] = noise_mod.noise_window(renderer.recipe.config.noise, renderer._noise_bank(d.condition),
                                              np.random.default_rng(d.noise_seed), n)
            levels[i] = d.snr_db
    return Prepared(clips, banks, rows, pairs, noise, levels), labels(renderer.recipe, draws, az, el, levels.copy())


def labels(recipe: Recipe, draws: list[Draw], az, el, snr) -> dict:
    """The label columns of rendered draws, as a shard's."""
    conds = [recipe.conditions[d.condition] for d in draws]
    return {"azimuth_deg": az, "elevation_deg": el,
            "env": np.array([ENV_NAMES.index(c.env) for c in conds], dtype=np.uint8),
            "clip_id": np.array([d.sound.clip_id for d in draws], dtype=object),
            "category": np.array([d.sound.category for d in draws], dtype=object),
            "head": np.array([c.head for c in conds], dtype=object),
            "room": np.array([c.room for c in conds], dtype=object), "snr_db": snr}
