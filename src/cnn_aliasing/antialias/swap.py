"""Swapping a model's strided convolutions and pools for anti-aliased down-sampling.

:func:`antialias` copies a model, finds its down-sampling ops with the probe
(:func:`cnn_aliasing.find_downsamplers`) and replaces each module op as its method prescribes:

- ``flc`` / ``asap``: the down-sampler *before* a stride-1 copy of a strided convolution (main path and
  shortcut alike); the layer sizes its output like the strided convolution and the convolution gets
  "same" padding, so shapes stay those of the strided model (also for padding-0 convolutions reading an
  asymmetrically padded input, as in the DeepMind-style models).
- ``blurpool``: a strided k x k convolution (k > 1) becomes the stride-1 convolution with BlurPool after
  it; where the convolution's parent declares a slot for it (an :class:`~cnn_aliasing.antialias.slots
  .AntialiasSlot` called after the activation that follows the convolution, as the registered
  architectures do) BlurPool goes into that slot, i.e. after the activation as in Zhang (2019). A
  strided 1x1 convolution without padding (a shortcut) gets BlurPool *before* it.
- every method: a strided max-, average- or LP-pool becomes its stride-1 version followed by the
  method's down-sampler (for BlurPool: Zhang's MaxBlurPool).

A ``Conv2d`` subclass with its own forward (a weight-standardised conv computing its weight in forward)
keeps that forward: its ``stride`` is set to 1 (with "same" ``padding`` where the down-sampler goes
before it) and its class becomes a subclass (``Antialiased<Name>``) that calls the method's down-sampler
before or after the original forward, in the places an ordinary conv gets them. This needs a forward that
follows ``self.stride`` (and ``self.padding``): the probe's example input is run through the module at
stride 1 first, and a conv whose stride-1 output sliced ``[::s, ::t]`` is not its strided output, or
whose swapped output has another shape, is left as it is and named, with the reason, in the warning.

Convolution parameters keep their names (``layer2.0.conv1.weight`` ...) and the layers hold no state, so
a strided model's state dict loads into the swapped one unchanged. Ops that cannot be swapped (functional
calls and strided slices inside a forward, other declared down-samplers) are named in an
:class:`AntialiasWarning`. Methods are a registry: :func:`register_method`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from cnn_aliasing.antialias.layers import ASAPPool, BlurPool, FLCPool, Pair
from cnn_aliasing.antialias.slots import slot_after
from cnn_aliasing.fields import check_keys
from cnn_aliasing.registry import Registry
from cnn_aliasing.validation import is_int_pair

STRIDED = "strided"


class AntialiasWarning(UserWarning):
    """Some down-sampling ops of a model could not be swapped and down-sample as before."""


@dataclass(frozen=True)
class Geometry:
    """The window of the strided op a down-sampler replaces (sizes its output like that op's)."""

    kernel_size: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)


@dataclass(frozen=True)
class Method:
    """An anti-aliasing method: how it builds its down-sampler and where the down-sampler goes.

    ``make(factor, geometry, options)`` returns the down-sampling module; ``before_conv(conv)`` says
    whether it goes before a stride-1 copy of ``conv`` (else after it, or into the parent's slot);
    ``options`` maps each option name to its default.
    """

    name: str
    description: str
    make: Callable[[Pair, Geometry, Mapping[str, Any]], nn.Module]
    before_conv: Callable[[nn.Conv2d], bool]
    options: Mapping[str, Any]

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The method's options with ``options`` applied; an unknown one is an UnknownKeyError."""
        check_keys(options, list(self.options), f"anti-aliasing method {self.name!r}", "option")
        return {**self.options, **options}


METHODS: Registry[Method] = Registry("anti-aliasing method", describe=lambda method: method.description)


def register_method(method: Method) -> Method:
    """Add a method to the registry (a name may be registered once; ``strided`` is taken)."""
    if method.name == STRIDED:
        raise ValueError(f"an anti-aliasing method named {method.name!r} is already registered")
    return METHODS.register(method.name, method)


def list_methods() -> list[str]:
    """Names of the registered anti-aliasing methods, sorted."""
    return METHODS.names()


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is an UnknownNameError listing the valid ones."""
    return METHODS.get(name)


def downsample_choices() -> list[str]:
    """The values of a ``downsample`` argument: ``"strided"`` (the model as it is), then every method."""
    return [STRIDED, *METHODS.names()]


def with_downsampling(model: nn.Module, downsample: str, **options: Any) -> nn.Module:
    """``model`` itself for ``"strided"``; else ``model`` with its down-sampling swapped in place for the
    anti-aliasing method ``downsample`` (see :func:`antialias`). A bad value is a ValueError listing the
    valid ones (``create_model`` reports it naming the model)."""
    if downsample == STRIDED:
        return model
    if downsample not in downsample_choices():
        raise ValueError(f"downsample={downsample!r} is unknown; valid: {', '.join(downsample_choices())}")
    return antialias(model, downsample, inplace=True, **options)


def _same_padding(conv: nn.Conv2d) -> Pair:
    return (
        conv.dilation[0] * (conv.kernel_size[0] - 1) // 2,
        conv.dilation[1] * (conv.kernel_size[1] - 1) // 2,
    )


def _conv_padding(conv: nn.Conv2d) -> Pair:
    padding = conv.padding
    return (0, 0) if isinstance(padding, str) else (padding[0], padding[1])


def _make_flc(factor: Pair, geometry: Geometry, options: Mapping[str, Any]) -> nn.Module:
    return FLCPool(factor, **geometry.__dict__)


def _make_asap(factor: Pair, geometry: Geometry, options: Mapping[str, Any]) -> nn.Module:
    return ASAPPool(factor, pad_to_odd=options["pad_to_odd"], **geometry.__dict__)


def _make_blur(factor: Pair, geometry: Geometry, options: Mapping[str, Any]) -> nn.Module:
    return BlurPool(options["filter_size"], factor)


def _always(conv: nn.Conv2d) -> bool:
    return True


def _pointwise_unpadded(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and _conv_padding(conv) == (0, 0)


register_method(
    Method("flc", "FLC pooling (Grabinski et al., ECCV 2022) before a stride-1 conv", _make_flc, _always, {})
)
register_method(
    Method(
        "asap",
        "ASAP (Grabinski et al., 2023): FLC with a sqrt-Hamming window, before a stride-1 conv",
        _make_asap,
        _always,
        {"pad_to_odd": False},
    )
)
register_method(
    Method(
        "blurpool",
        "BlurPool (Zhang, ICML 2019): binomial blur after a stride-1 conv's activation, before 1x1 shortcuts",
        _make_blur,
        _pointwise_unpadded,
        {"filter_size": 3},
    )
)


class AntialiasedConv2d(nn.Conv2d):
    """A stride-1 copy of a strided convolution with a down-sampler before (``pool``) or after it
    (``blur``). Its parameters are the strided convolution's, under the same names."""

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        before: nn.Module | None = None,
        after: nn.Module | None = None,
        padding: Pair | None = None,
    ) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            is_int_pair(1)(conv.kernel_size, "kernel_size"),
            stride=1,
            padding=padding if padding is not None else _conv_padding(conv),
            dilation=is_int_pair(1)(conv.dilation, "dilation"),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.pool = before
        self.blur = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        out = self._conv_forward(x, self.weight, self.bias)
        if self.blur is not None:
            out = self.blur(out)
        return out


class AntialiasedPool(nn.Module):
    """A stride-1 copy of a strided pooling module (``pool``) followed by a down-sampler (``downsample``)."""

    def __init__(self, pool: nn.Module, downsample: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.pool(x))


POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
OUR_LAYERS = (FLCPool, ASAPPool, BlurPool)


def _is_plain(module: nn.Module, cls: type[nn.Module]) -> bool:
    """An instance of ``cls`` whose forward is ``cls``'s own (a subclass with another forward is foreign)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def _stride_one_conv(conv: nn.Conv2d) -> nn.Conv2d:
    conv.stride = (1, 1)  # the conv of the copy being swapped: same parameters, stride 1
    return conv


def _swap_conv(
    conv: nn.Conv2d, method: Method, options: Mapping[str, Any], has_slot: bool
) -> tuple[nn.Module, nn.Module | None]:
    """The replacement of a strided conv, and what goes into the parent's slot (None: nothing)."""
    factor = is_int_pair(1)(conv.stride, "stride")
    if method.before_conv(conv):
        geometry = Geometry(conv.kernel_size, _conv_padding(conv), conv.dilation)  # type: ignore[arg-type]
        layer = method.make(factor, geometry, options)
        padding = _same_padding(conv) if method.name != "blurpool" else _conv_padding(conv)
        return AntialiasedConv2d(conv, before=layer, padding=padding), None
    layer = method.make(factor, Geometry(), options)
    if has_slot:
        return _stride_one_conv(conv), layer
    return AntialiasedConv2d(conv, after=layer), None


class _AntialiasedForward(nn.Module):
    """Mixed into a Conv2d subclass with its own forward: that forward at stride 1, with the method's
    down-sampler before it (``antialias_before``) or after it (``antialias_after``)."""

    antialias_before: nn.Module | None
    antialias_after: nn.Module | None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        before, after = self.antialias_before, self.antialias_after
        if before is not None:
            x = before(x)
        out = super().forward(x, *args, **kwargs)
        return after(out) if after is not None else out


_ANTIALIASED_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _antialiased_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``Antialiased<Name>``: ``cls`` with :class:`_AntialiasedForward` around its forward (one per class)."""
    if cls not in _ANTIALIASED_CLASSES:
        name = f"Antialiased{cls.__name__}"
        _ANTIALIASED_CLASSES[cls] = type(name, (_AntialiasedForward, cls), {"__module__": __name__})
    return _ANTIALIASED_CLASSES[cls]


@dataclass(frozen=True)
class _CustomSwap:
    """How a Conv2d subclass with its own forward is swapped: its new padding and where the layer goes."""

    layer: nn.Module
    before: bool
    padding: Pair | None  # None: unchanged
    slotted: bool  # the layer goes into the parent's slot, the conv only gets stride 1

    def apply(self, conv: nn.Conv2d) -> None:
        conv.stride = (1, 1)
        if self.padding is not None:
            conv.padding = self.padding
        if self.slotted:
            return
        conv.__class__ = _antialiased_class(type(conv))  # type: ignore[assignment]
        wrapped = cast(_AntialiasedForward, conv)
        wrapped.antialias_before = self.layer if self.before else None
        wrapped.antialias_after = None if self.before else self.layer


def _plan_custom(
    conv: nn.Conv2d, factor: Pair, method: Method, options: Mapping[str, Any], has_slot: bool
) -> _CustomSwap:
    """Where the method puts its down-sampler for this conv: as :func:`_swap_conv` does for a plain one."""
    if method.before_conv(conv):
        geometry = Geometry(conv.kernel_size, _conv_padding(conv), conv.dilation)  # type: ignore[arg-type]
        padding = _same_padding(conv) if method.name != "blurpool" else None
        return _CustomSwap(method.make(factor, geometry, options), True, padding, False)
    return _CustomSwap(method.make(factor, Geometry(), options), False, None, has_slot)


Call = tuple[tuple[Any, ...], dict[str, Any], Any]
"""One call of a module: its positional and keyword arguments and its output."""


def _first_calls(
    model: nn.Module, modules: Mapping[str, nn.Module], example: torch.Tensor
) -> dict[str, Call]:
    """The first call of each named module while ``model`` runs ``example`` (eval mode, no gradients)."""
    calls: dict[str, Call] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            calls.setdefault(name, (args, kwargs, out))  # returns None: the output is left as it is

        return hook

    handles = [
        module.register_forward_hook(record(name), with_kwargs=True) for name, module in modules.items()
    ]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return calls


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _custom_conv_problem(conv: nn.Conv2d, factor: Pair, call: Call | None, plan: _CustomSwap) -> str | None:
    """Why this Conv2d subclass with its own forward cannot be swapped by ``plan`` (None: it can)."""
    s, t = factor
    if is_int_pair(1)(conv.stride, "stride") != factor:
        return f"its forward down-samples by {s}x{t}, not by its stride {tuple(conv.stride)}"
    if call is None:
        return "it was not called on the example input"
    args, kwargs, strided = call
    if _shape(strided) is None or strided.dim() != 4:
        return "its output is not a (N, C, H, W) tensor"
    trial = copy.deepcopy(conv)
    trial.stride = (1, 1)
    try:
        with torch.no_grad():
            full = trial(*args, **kwargs)
            if _shape(full) is None or full.dim() != 4:
                return "at stride 1 its output is not a (N, C, H, W) tensor"
            if full.shape == strided.shape:
                shape = _shape(full)
                return f"its forward does not use self.stride: at stride 1 its output keeps the shape {shape}"
            sliced = full[..., ::s, ::t]
            if sliced.shape != strided.shape:
                return (
                    f"at stride 1 its output sliced [::{s}, ::{t}] has shape {_shape(sliced)}, not the "
                    f"strided output's {_shape(strided)}"
                )
            if not torch.allclose(sliced, strided, rtol=1e-4, atol=1e-5 * float(strided.abs().max()) + 1e-30):
                return f"at stride 1 its output sliced [::{s}, ::{t}] differs from its strided output"
            trial = copy.deepcopy(conv)
            copy.deepcopy(plan).apply(trial)
            swapped = trial(*args, **kwargs)
    except Exception as error:  # any failure of foreign code: leave the conv as it is
        return f"its forward fails once swapped ({type(error).__name__}: {error})"
    if not plan.slotted and _shape(swapped) != _shape(strided):
        return (
            f"swapped, its output has shape {_shape(swapped)}, not the strided output's {_shape(strided)} "
            "(does its forward use self.padding?)"
        )
    return None


def _custom_conv_owner(modules: Mapping[str, nn.Module], name: str) -> tuple[str, nn.Conv2d] | None:
    """The Conv2d subclass with its own forward that an op (``owner:call`` or the module itself) is in."""
    owner, sep, _ = name.partition(":")
    module = modules.get(owner if sep else name)
    if isinstance(module, nn.Conv2d) and not _is_plain(module, nn.Conv2d) and (sep or name):
        return (owner if sep else name), module
    return None


def _swap_pool(pool: nn.Module, method: Method, options: Mapping[str, Any]) -> nn.Module:
    factor = is_int_pair(1)(pool.stride if pool.stride is not None else pool.kernel_size, "stride")
    pool.stride = 1  # type: ignore[assignment]  # the pool of the copy being swapped
    return AntialiasedPool(pool, method.make(factor, Geometry(), options))


def _swap_custom_convs(
    target: nn.Module,
    modules: Mapping[str, nn.Module],
    custom: Mapping[str, list[Any]],
    calls: Mapping[str, Call],
    method: Method,
    options: Mapping[str, Any],
) -> list[str]:
    """Swap each Conv2d subclass with its own forward that allows it; the others, named with the reason."""
    skipped: list[str] = []
    for name, ops in custom.items():
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        labels = ", ".join(f"{op.name} ({op.kind})" for op in ops)
        if len(ops) != 1 or ops[0].kind != "conv2d":
            skipped.append(f"{labels}: its forward has {len(ops)} down-sampling op(s), not one conv2d")
            continue
        parent, child = _parent(target, name)
        slot_name = slot_after(parent, child)
        plan = _plan_custom(conv, ops[0].factor, method, options, slot_name is not None)
        problem = _custom_conv_problem(conv, ops[0].factor, calls.get(name), plan)
        if problem is not None:
            skipped.append(f"{labels}: {problem}")
            continue
        plan.apply(conv)
        if plan.slotted:
            setattr(parent, slot_name, plan.layer)  # type: ignore[arg-type]
    return skipped


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _default_input(model: nn.Module) -> torch.Tensor:
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def antialias(
    model: nn.Module,
    method: str,
    *,
    example_input: torch.Tensor | None = None,
    inplace: bool = False,
    **options: Any,
) -> nn.Module:
    """A copy of ``model`` with every strided conv and pool that the probe finds swapped for ``method``.

    ``method`` is ``"flc"``, ``"asap"`` (option ``pad_to_odd``) or ``"blurpool"`` (option
    ``filter_size``, 1..7, default 3), or any method registered with :func:`register_method`.
    ``example_input`` is one input the model takes (default: a 1 x 3 x 32 x 32 image); the probe runs it
    once (eval mode, no gradients) to find the ops. ``inplace=True`` swaps in ``model`` itself. Ops that
    cannot be swapped are named in one :class:`AntialiasWarning`. The model's mode is kept.
    """
    from cnn_aliasing.probe import find_downsamplers

    chosen = get_method(method)
    settings = chosen.check_options(options)
    chosen.make((2, 2), Geometry(), settings)  # bad option values fail here, before any copying
    target = model if inplace else copy.deepcopy(model)
    found = find_downsamplers(target, example_input if example_input is not None else _default_input(target))
    modules = dict(target.named_modules())
    skipped: list[str] = []
    custom: dict[str, list[Any]] = {}  # Conv2d subclasses with their own forward: the ops found in each
    for op in found:
        owner = _custom_conv_owner(modules, op.name)
        if owner is not None:
            custom.setdefault(owner[0], []).append(op)
    if custom:
        example = example_input if example_input is not None else _default_input(target)
        calls = _first_calls(target, {name: modules[name] for name in custom}, example)
        skipped += _swap_custom_convs(target, modules, custom, calls, chosen, settings)
    for op in found:
        if _custom_conv_owner(modules, op.name) is not None:
            continue
        module = modules.get(op.name)
        if module is None or isinstance(module, OUR_LAYERS):
            if module is None:
                skipped.append(f"{op.name} ({op.kind})")
            continue
        parent, child = _parent(target, op.name)
        if _is_plain(module, nn.Conv2d):
            slot_name = slot_after(parent, child)
            replacement, slotted = _swap_conv(module, chosen, settings, slot_name is not None)
            setattr(parent, child, replacement)
            if slotted is not None:
                setattr(parent, slot_name, slotted)  # type: ignore[arg-type]
        elif any(_is_plain(module, cls) for cls in POOL_TYPES):
            setattr(parent, child, _swap_pool(module, chosen, settings))
        else:
            skipped.append(f"{op.name} ({op.kind})")
    if skipped:
        warnings.warn(
            f"antialias({method!r}) could not swap {len(skipped)} down-sampling op(s), which down-sample "
            f"as before: {', '.join(skipped)}. Functional calls and strided slices inside a forward cannot "
            "be swapped; use modules (nn.Conv2d, nn.MaxPool2d, ...) for them; a Conv2d subclass with its "
            "own forward is swapped where that forward follows self.stride and self.padding.",
            AntialiasWarning,
            stacklevel=2,
        )
    return target
