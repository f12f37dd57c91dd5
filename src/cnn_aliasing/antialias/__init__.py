"""Anti-aliased down-sampling: FLC pooling, ASAP and BlurPool layers, and swapping them into any model.

``antialias(model, method, **options)`` returns a copy of ``model`` with its strided convolutions and
pools swapped (methods ``"flc"``, ``"asap"``, ``"blurpool"``); the layers are modules and functions
that measure through the probe's :class:`~cnn_aliasing.downsamplers.DeclaredDownsampler` protocol.
"""

from cnn_aliasing.antialias.layers import (
    ASAPPool,
    BlurPool,
    FLCPool,
    asap_pool,
    binomial_taps,
    blur_pool,
    flc_pool,
    kept_frequencies,
    strided_output_size,
)
from cnn_aliasing.antialias.slots import AntialiasSlot
from cnn_aliasing.antialias.swap import (
    METHODS,
    STRIDED,
    AntialiasedConv2d,
    AntialiasedPool,
    AntialiasWarning,
    Method,
    antialias,
    downsample_choices,
    get_method,
    list_methods,
    register_method,
    with_downsampling,
)

__all__ = [
    "METHODS",
    "STRIDED",
    "ASAPPool",
    "AntialiasSlot",
    "AntialiasWarning",
    "AntialiasedConv2d",
    "AntialiasedPool",
    "BlurPool",
    "FLCPool",
    "Method",
    "antialias",
    "asap_pool",
    "binomial_taps",
    "blur_pool",
    "downsample_choices",
    "flc_pool",
    "get_method",
    "kept_frequencies",
    "list_methods",
    "register_method",
    "strided_output_size",
    "with_downsampling",
]
