"""cnn-aliasing: measure aliasing in every down-sampling op of a CNN and relate it to robustness."""

from cnn_aliasing.measure import AliasingReport, MetricSummary, OpAliasing, measure
from cnn_aliasing.probe import Downsampler, find_downsamplers
from cnn_aliasing.spectral import (
    alias_energy_fraction_per_map,
    aliasing_per_map,
    per_map_metrics,
    relative_aliasing_per_map,
)

__version__ = "0.1.0"

__all__ = [
    "AliasingReport",
    "Downsampler",
    "MetricSummary",
    "OpAliasing",
    "__version__",
    "alias_energy_fraction_per_map",
    "aliasing_per_map",
    "find_downsamplers",
    "measure",
    "per_map_metrics",
    "relative_aliasing_per_map",
]
