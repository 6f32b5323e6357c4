"""The BAST model (Stage 3): the network, its configuration, labels, metrics and losses.

The names below load on first use (PEP 562), so that importing a torch-free module of this
package (bast.model.targets.metrics: predictions tables and their metrics) does not import torch.
"""

from importlib import import_module

_FROM = {
    "nets.bast": ("BAST", "BASTConfig", "count_parameters", "padding_amounts", "reference_config",
             "sinusoidal_embedding", "token_grid"),
    "targets.losses": ("ad_loss", "angular_distance_deg", "azimuth_to_vector", "make_loss", "mix_loss", "mse_loss",
               "squared_error", "vector_to_azimuth"),
}
_WHERE = {name: module for module, names in _FROM.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
