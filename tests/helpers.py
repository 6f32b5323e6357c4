"""Helpers shared by test modules (a plain module: tests import it; conftest.py keeps only
fixtures). tests/ is on sys.path through pyproject's `pythonpath`."""

SELD_KINDS = ("white_noise", "harmonic", "clicks")


def render_seld_scenes(out, *, count: int, duration_s: float, events: tuple, scenes_per_shard: int):
    """Featurized anechoic scenes of 3 procedural classes (SELD_KINDS), up to 2 events at
    once, half of them moving, on a 30 degree grid (the SELD tests' data): out/s2."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.irs.sources import parse_direction_options
    from bast.pipeline.render.scenes import ScenesConfig, render_scenes

    refs = [r for r in DefaultCorpus(n_clips=60, seed=3, speech=False).list_clips() if r.category in SELD_KINDS]
    config = ScenesConfig(count=count, duration_s=duration_s, events=events, max_overlap=2, moving=0.5,
                          speed=(30, 90), directions=parse_direction_options("0:360:30"),
                          environments=("anechoic",), seed=3, scenes_per_shard=scenes_per_shard, test_fraction=0.25)
    render_scenes(refs, out / "s1", config)
    featurize(out / "s1", out / "s2")
    return out / "s2"

