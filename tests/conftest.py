import os

import numpy as np
import pytest

from bast.pipeline.irs.sources import DEFAULT_AZIMUTHS, IRSources


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test run builds into its own IR cache, never the user's."""
    old = os.environ.get("BAST_CACHE")
    os.environ["BAST_CACHE"] = str(tmp_path_factory.mktemp("bast-cache"))
    yield
    if old is None:
        os.environ.pop("BAST_CACHE", None)
    else:
        os.environ["BAST_CACHE"] = old


@pytest.fixture(scope="session")
def default_sources() -> IRSources:
    return IRSources()


@pytest.fixture(scope="session")
def hall_bank(default_sources):
    """The default hall at the default 36 azimuths (built once per test session)."""
    return default_sources.irset("hall", DEFAULT_AZIMUTHS)


@pytest.fixture(scope="session")
def anechoic_pairs(default_sources) -> np.ndarray:
    return default_sources.pairs("anechoic", DEFAULT_AZIMUTHS)


@pytest.fixture(scope="session")
def small_features(tmp_path_factory):
    """Stage 2 output of 24 procedural sounds at 12 azimuths in both rooms (576 samples)."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.render.spatialize import SpatializeConfig, spatialize

    root = tmp_path_factory.mktemp("train-data")
    refs = DefaultCorpus(n_clips=24, seed=2, speech=False).list_clips()
    spatialize(refs, root / "s1", SpatializeConfig(azimuths=tuple(np.arange(0.0, 360.0, 30.0)), seed=2,
                                                  samples_per_shard=60))
    featurize(root / "s1", root / "s2")
    return root / "s2"
