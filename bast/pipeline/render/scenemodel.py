"""The scene model: events in time and space, and their labels (docs/scenes.md).

A scene is `n_samples` of binaural audio holding zero or more events. An event is one
sound of one category with an onset and a length (samples), and a `Trajectory`: a grid
direction it stays at, or a start there and constant rates of azimuth and elevation.
Events are drawn one after another from a seeded generator: a category (uniformly, so
classes are balanced whatever the corpus holds), a sound of that category not yet in the
scene, an onset at which no 100 ms label frame would hold more than `max_overlap` events,
a grid direction, whether and how fast it moves, and with a distance range (--distance) its
distance (a moving event: a start and an end distance, linear in time). Everything here is
pure: the audio comes in through a callback, so the drawing is testable alone.

Labels (docs/scenes.md): per scene, rows (frame, category index, track index,
azimuth_deg, elevation_deg, distance_m), one per active event per 100 ms frame, sorted by
frame then track; frames without events have no row. An event is active in a frame when
any of its samples lies in it; its direction (and with --distance its distance) there is
the trajectory's at the frame's centre (clamped to the event). The track index is the
event's index in the scene (events in the order of their onsets), as DCASE's "source
number index".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from bast.conventions import FS, LABEL_SAMPLES
from bast.errors import ConfigError
from bast.pipeline.render.moving import Trajectory, nearest_directions
from bast.pipeline.irs.sofa import IRSet

LABEL_COLUMNS = ("frame", "category", "track", "azimuth_deg", "elevation_deg", "distance_m")


@dataclass(frozen=True)
class Event:
    clip_id: str
    category: str
    onset: int  # samples from the scene's start
    length: int  # samples
    trajectory: Trajectory

    @property
    def frames(self) -> range:
        """The 100 ms label frames the event is active in."""
        return range(self.onset // LABEL_SAMPLES, (self.onset + self.length - 1) // LABEL_SAMPLES + 1)


# --------------------------------------------------------------------------- ranges


def parse_range(text, option: str, *, low: float = 0.0) -> tuple[float, float]:
    """'5' -> (5, 5); '10:60' -> (10, 60); both at least `low`, low before high."""
    if isinstance(text, (tuple, list)):
        lo, hi = (float(v) for v in text)
    else:
        parts = str(text).strip().split(":")
        try:
            lo, hi = (float(parts[0]), float(parts[-1])) if len(parts) in (1, 2) else (np.nan, np.nan)
        except ValueError:
            lo = hi = np.nan
    if not (np.isfinite(lo) and np.isfinite(hi) and low <= lo <= hi):
        raise ConfigError(f"{option} {text!r}: give a value or a range LO:HI, low before high, at least {low:g}")
    return lo, hi


# --------------------------------------------------------------------------- drawing


def draw_events(rng: np.random.Generator, pool: dict[str, list[str]], length_of: Callable[[str], int | None], *,
                n_samples: int, n_events: int, max_overlap: int, grid, moving: float,
                speed: tuple[float, float], tries: int = 20,
                distance: tuple[float, float] | None = None) -> list[Event]:
    """Up to `n_events` events for a scene of `n_samples` (fewer when no onset fits the
    overlap limit or sounds fail to load), sorted by onset.

    `pool`: category -> clip ids of the split; `length_of(clip_id)`: the sound's length in
    samples, or None when it cannot be used (it is then not drawn again in this scene);
    `grid`: (azimuth, elevation) pairs; `moving`: the share of moving events; `speed`:
    (low, high) deg/s. Each moving event draws a speed and a heading: along azimuth only
    (either way) when the grid has one elevation, else any heading, its rates of azimuth
    and elevation being speed x (cos, sin) of it; the elevation reflects off the grid's
    elevation range. With `distance` (low, high) metres, each event then draws a distance
    uniformly from it, and a moving one an end distance too, reached linearly at its last
    sample; without it nothing more is drawn, so the draws are what they were before."""
    grid = np.asarray(grid, dtype=np.float64).reshape(-1, 2)
    el_min, el_max = float(grid[:, 1].min()), float(grid[:, 1].max())
    categories = sorted(c for c, ids in pool.items() if ids)
    n_frames = -(-n_samples // LABEL_SAMPLES)
    busy = np.zeros(n_frames, dtype=np.int32)
    used: set[str] = set()
    events = []
    for _ in range(n_events):
        if not categories:
            break
        category = categories[rng.integers(len(categories))]
        free = [c for c in pool[category] if c not in used] or pool[category]
        clip = free[rng.integers(len(free))]
        length = length_of(clip)
        if length is None:
            used.add(clip)
            continue
        length = min(length, n_samples)
        onset = None
        for _ in range(tries):
            t = int(rng.integers(0, n_samples - length + 1))
            frames = slice(t // LABEL_SAMPLES, (t + length - 1) // LABEL_SAMPLES + 1)
            if busy[frames].max(initial=0) < max_overlap:
                onset = t
                break
        if onset is None:
            continue
        busy[frames] += 1
        used.add(clip)
        az, el = grid[rng.integers(len(grid))]
        az_rate = el_rate = 0.0
        moves = rng.random() < moving
        if moves:
            v = rng.uniform(*speed)
            heading = rng.uniform(0.0, 2 * np.pi) if el_max > el_min else np.pi * rng.integers(2)
            az_rate, el_rate = v * np.cos(heading), v * np.sin(heading)
            if el_max == el_min:
                el_rate = 0.0
        where = _draw_distance(rng, distance, moves, length)
        events.append(Event(clip, category, onset, length,
                            Trajectory(float(az), float(el), float(az_rate), float(el_rate), el_min, el_max, *where)))
    return sorted(events, key=lambda e: (e.onset, e.clip_id))


def _draw_distance(rng: np.random.Generator, distance: tuple[float, float] | None, moves: bool,
                   length: int) -> tuple[float | None, float]:
    """(distance_m, distance_rate) of an event: (None, 0) without a range; a moving event
    goes from its start distance to its end distance at its last sample."""
    if distance is None:
        return None, 0.0
    start = float(rng.uniform(*distance))
    if not moves or length < 2:
        return start, 0.0
    end = float(rng.uniform(*distance))
    return start, (end - start) / ((length - 1) / FS)


def scene_counts(count: int, sounds: dict[str, int]) -> dict[str, int]:
    """Scenes per split, in proportion to the split's sounds (largest remainders), so the
    splits keep the shares of the sound split; a split with no sounds gets no scene."""
    total = sum(sounds.values())
    if not total:
        return {s: 0 for s in sounds}
    exact = {s: count * n / total for s, n in sounds.items()}
    out = {s: int(np.floor(v)) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (out[s] - exact[s], s))[:count - sum(out.values())]:
        out[s] += 1
    return out


# --------------------------------------------------------------------------- labels


def label_rows(events: list[Event], category_index: dict[str, int], n_samples: int, *, irs: IRSet) -> np.ndarray:
    """(R, 6) float64 label rows of a scene (module docstring). The distance of a row is
    the event's own at the frame's centre (scenes with --distance), else that of the
    direction of `irs` nearest the event's: the distance it was rendered at."""
    n_frames = -(-n_samples // LABEL_SAMPLES)
    rows = []
    for track, e in enumerate(events):
        frames = np.array([k for k in e.frames if k < n_frames])
        if not frames.size:
            continue
        t = np.clip((frames + 0.5) * LABEL_SAMPLES - e.onset, 0, e.length - 1) / FS
        az, el = e.trajectory.at(t)
        dist = (e.trajectory.distance_at(t) if e.trajectory.distance_m is not None
                else np.asarray(irs.distance_m)[nearest_directions(irs, az, el)])
        rows.append(np.stack([frames, np.full(frames.size, category_index[e.category]), np.full(frames.size, track),
                              az, el, dist], axis=1))
    if not rows:
        return np.zeros((0, len(LABEL_COLUMNS)))
    rows = np.concatenate(rows)
    return rows[np.lexsort((rows[:, 2], rows[:, 0]))]
