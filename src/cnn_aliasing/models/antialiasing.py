"""The ``downsample`` argument of the registered architectures: strided (as published) or anti-aliased.

Each block of the registered architectures calls an ``nn.Identity`` slot after the activation that
follows its first (possibly strided) convolution and names it in ``antialias_slots``;
:func:`cnn_aliasing.antialias.antialias` puts BlurPool there (after the activation, as Zhang 2019
prescribes). The slots hold no parameters, so state dicts (and RobustBench keys) are unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

STRIDED = "strided"


def with_downsampling(model: nn.Module, downsample: str, **options: Any) -> nn.Module:
    """``model`` itself for ``"strided"``; else the model with its down-sampling swapped in place for the
    anti-aliasing method ``downsample`` (``"flc"``, ``"asap"``, ``"blurpool"``). A bad value is a ValueError
    listing the valid ones (``create_model`` reports it naming the model)."""
    if downsample == STRIDED:
        return model
    from cnn_aliasing.antialias import antialias, downsample_choices

    if downsample not in downsample_choices():
        raise ValueError(f"downsample={downsample!r} is unknown; valid: {', '.join(downsample_choices())}")
    return antialias(model, downsample, inplace=True, **options)
