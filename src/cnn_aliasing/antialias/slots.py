"""Anti-aliasing slots: where a block wants the down-sampler of its strided convolution to go.

A block declares a slot with one line, ``self.conv1_antialias = AntialiasSlot("conv1")``, and calls it
after the activation that follows ``conv1``. Until a model is anti-aliased the slot is the identity (it
holds no parameters, so state dicts and RobustBench keys are unchanged); :func:`~cnn_aliasing.antialias
.antialias` puts a method's down-sampler that goes after the convolution (BlurPool) into the slot, i.e.
after the activation as Zhang (2019) prescribes.
"""

from __future__ import annotations

from torch import nn


class AntialiasSlot(nn.Identity):
    """The identity, standing after the activation that follows the strided convolution ``after`` (the
    name of a sibling module) until anti-aliasing puts a down-sampler here."""

    def __init__(self, after: str) -> None:
        super().__init__()
        self.after = after

    def extra_repr(self) -> str:
        return f"after={self.after}"


def slot_after(parent: nn.Module, conv: str) -> str | None:
    """The name of ``parent``'s :class:`AntialiasSlot` for its child ``conv`` (None: it declares none)."""
    for name, child in parent.named_children():
        if isinstance(child, AntialiasSlot) and child.after == conv:
            return name
    return None
