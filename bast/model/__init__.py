"""The BAST model (Stage 3): the network, its configuration, labels, metrics and losses."""

from .bast import (
    BAST,
    BASTConfig,
    count_parameters,
    padding_amounts,
    reference_config,
    sinusoidal_embedding,
    token_grid,
)
from .losses import (
    ad_loss,
    angular_distance_deg,
    azimuth_to_vector,
    make_loss,
    mix_loss,
    mse_loss,
    squared_error,
    vector_to_azimuth,
)

__all__ = [
    "BAST",
    "BASTConfig",
    "ad_loss",
    "angular_distance_deg",
    "azimuth_to_vector",
    "count_parameters",
    "make_loss",
    "mix_loss",
    "mse_loss",
    "padding_amounts",
    "reference_config",
    "sinusoidal_embedding",
    "squared_error",
    "token_grid",
    "vector_to_azimuth",
]
