import os

import numpy as np
import pytest

from bast.pipeline.irs import DEFAULT_AZIMUTHS, IRSources


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
