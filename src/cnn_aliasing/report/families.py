"""Architecture families whose stride-1 outputs the metric zero-pads, and the warning a study comparing them
with other families needs.

The metric (docs/metric.md) zero-pads an op's full-resolution output at the end when its size is not a
multiple of the factor. The DeepMind-style models (``dm_wrn_28_10``, ``dm_preact_resnet18``) pad (0, 1)
before an unpadded strided 3x3 convolution, so those ops' stride-1 outputs are 31 x 31 (15 x 15, 7 x 7) and
are padded to 32 (16, 8): the padding adds an edge to every map, which counts as aliasing. Their AM is
therefore biased upwards against families with even-sized outputs (the TRADES-lineage ``wrn_28_10`` and
``preact_resnet18``): ``benchmarks/bench_padding_bias.py`` measures by how much (docs/metric.md, "Zero-padded
stride-1 outputs: a bias across families").

Pure Python (no torch, no numpy needed): it reads the ops' ``full_size`` and ``factor`` from the study's
:class:`~cnn_aliasing.report.results.ModelResult` objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: importing results would import torch (through measure)
    from cnn_aliasing.report.results import ModelResult

#: Architectures known to zero-pad stride-1 outputs under the metric (odd-sized "SAME"-padded strided
#: convolutions), used only for a model whose result file does not give its ops' full-resolution sizes.
ODD_SIZED_ARCHS = frozenset({"dm_wrn_28_10", "dm_preact_resnet18"})

#: The edge bias the zero-padding adds to AM at a padded op, in percent of AM with an edge-free (replicate)
#: padding, as measured by ``benchmarks/bench_padding_bias.py`` (docs/metric.md): (low, high) over the
#: padded ops of the briefly trained width-16 DM PreAct ResNet-18 (ReLU), and over those of randomly
#: initialised DM PreAct ResNet-18 (width 16) and DM WRN-28-2, with ReLU or the published SiLU (means over
#: 2 or 3 seeds). Smaller maps get more (the 7x7 outputs the most).
EDGE_BIAS_TRAINED = (3.3, 8.3)
EDGE_BIAS_RANDOM = (1.6, 5.6)

Size = tuple[int, int]

DOC = "docs/metric.md, 'Zero-padded stride-1 outputs: a bias across families'"


def is_zero_padded(full_size: Sequence[int], factor: Sequence[int]) -> bool:
    """Whether the metric zero-pads a stride-1 output of size (H, W) for factor (s, t): H or W is not a
    multiple of its factor."""
    if len(full_size) != 2 or len(factor) != 2:
        raise ValueError(f"full_size and factor must be (H, W) and (s, t) pairs, got {full_size}, {factor}")
    return any(n % f != 0 for n, f in zip(full_size, factor, strict=True))


def padded_ops(op_full_sizes: Mapping[str, Sequence[int]], factors: Mapping[str, Sequence[int]]) -> list[str]:
    """The ops (keys of ``op_full_sizes``, in its order) whose stride-1 output the metric zero-pads.

    ``factors`` gives each op's factor; an op without one is a ``ValueError`` naming it.
    """
    missing = [name for name in op_full_sizes if name not in factors]
    if missing:
        raise ValueError(f"no factor given for op(s) {', '.join(missing)}")
    return [name for name, size in op_full_sizes.items() if is_zero_padded(size, factors[name])]


@dataclass(frozen=True)
class ModelPadding:
    """Which ops of one model had their stride-1 outputs zero-padded.

    ``known`` is False when no op's full-resolution size was recorded; ``padded`` then comes from
    :data:`ODD_SIZED_ARCHS` (every op of such an architecture counts as padded, ``sizes`` is empty).
    """

    model: str
    arch: str | None
    n_ops: int
    padded: tuple[str, ...]
    sizes: tuple[tuple[Size, Size], ...]  # distinct (full-resolution size, size padded to), forward order
    known: bool

    @property
    def is_padded(self) -> bool:
        """Whether any op of the model was zero-padded."""
        return bool(self.padded)


def _padding(size: Sequence[int], factor: Sequence[int]) -> tuple[Size, Size]:
    """(H, W) and the size the metric zero-pads it to (the next multiples of the factor)."""
    h, w = int(size[0]), int(size[1])
    return (h, w), (h + -h % factor[0], w + -w % factor[1])


def model_padding(model: ModelResult) -> ModelPadding:
    """The zero-padded ops of one model, from its ops' ``full_size`` and ``factor``."""
    sizes = {op.name: op.full_size for op in model.ops if op.full_size is not None}
    if not sizes:
        guessed = tuple(op.name for op in model.ops) if model.arch in ODD_SIZED_ARCHS else ()
        return ModelPadding(model.name, model.arch, len(model.ops), guessed, (), known=False)
    factors = {op.name: op.factor for op in model.ops}
    padded = padded_ops(sizes, factors)
    distinct = tuple(dict.fromkeys(_padding(sizes[n], factors[n]) for n in padded))
    return ModelPadding(model.name, model.arch, len(model.ops), tuple(padded), distinct, known=True)


def _size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def _range(bias: tuple[float, float]) -> str:
    low, high = bias
    return f"+{low:.0f}%" if round(low) == round(high) else f"+{low:.0f} to +{high:.0f}%"


def family_warning(
    models: Iterable[ModelResult],
    *,
    trained_bias: tuple[float, float] = EDGE_BIAS_TRAINED,
    random_bias: tuple[float, float] = EDGE_BIAS_RANDOM,
) -> str | None:
    """A warning for a study whose finished models mix families with and without zero-padded stride-1
    outputs; None when all finished models are of one kind (or none finished).

    The text names each padded architecture, its models and padded sizes, and the edge bias measured by
    ``benchmarks/bench_padding_bias.py``: compare such models with their own family only.
    """
    paddings = [model_padding(m) for m in models if m.done]
    padded = [p for p in paddings if p.is_padded]
    unpadded = [p for p in paddings if not p.is_padded]
    if not padded or not unpadded:
        return None
    by_arch: dict[str | None, list[ModelPadding]] = {}
    for p in padded:
        by_arch.setdefault(p.arch, []).append(p)
    parts = []
    for arch, group in by_arch.items():
        names = ", ".join(p.model for p in group)
        sizes = list(dict.fromkeys(s for p in group for s in p.sizes))
        if sizes:
            how = (
                f"stride-1 outputs {', '.join(_size(full) for full, _ in sizes)} zero-padded to "
                f"{', '.join(_size(to) for _, to in sizes)}"
            )
        else:
            how = "stride-1 outputs presumably odd-sized and zero-padded (sizes not recorded)"
        n_ops = max(p.n_ops for p in group)
        n_padded = max(len(p.padded) for p in group)
        parts.append(
            f"{arch or 'unknown-architecture'} models ({names}; {how}, at {n_padded} of {n_ops} ops)"
        )
    others = sorted({p.arch or "unknown" for p in unpadded})
    return (
        f"AM of {'; '.join(parts)} carries an edge bias from that zero-padding: about "
        f"{_range(trained_bias)} at those ops in trained models and {_range(random_bias)} at random weights "
        f"({DOC}). The other models ({', '.join(others)}) have stride-1 outputs that are multiples of the "
        "factor: compare the padded models with their own family only."
    )
