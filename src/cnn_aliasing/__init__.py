"""cnn-aliasing: measure aliasing in every down-sampling op of a CNN and relate it to robustness.

The public names below are imported on first use (PEP 562), so that importing a torch-free part of the
package, such as :mod:`cnn_aliasing.report`, does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnn_aliasing.aliasing_report import AliasingReport, MetricSummary, OpAliasing
    from cnn_aliasing.measurement import measure
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

_HOMES = {
    "AliasingReport": "cnn_aliasing.aliasing_report",
    "MetricSummary": "cnn_aliasing.aliasing_report",
    "OpAliasing": "cnn_aliasing.aliasing_report",
    "measure": "cnn_aliasing.measurement",
    "Downsampler": "cnn_aliasing.probe",
    "find_downsamplers": "cnn_aliasing.probe",
    "alias_energy_fraction_per_map": "cnn_aliasing.spectral",
    "aliasing_per_map": "cnn_aliasing.spectral",
    "per_map_metrics": "cnn_aliasing.spectral",
    "relative_aliasing_per_map": "cnn_aliasing.spectral",
}
"""The module that defines each public name."""


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (then kept in this module)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
