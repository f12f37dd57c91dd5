"""The kinds of down-sampling op cnn-aliasing knows, as registries.

A kind turns one call of an op (a module call or a functional call, with its arguments) into a
:class:`StridedCall`: the factor (s, t) and a way to compute the op's full-resolution output, the same
op with stride 1 and everything else unchanged, whose slice ``[..., ::s, ::t]`` is the op's real output.

Functional kinds are keyed by the function object a traced graph calls (``F.conv2d``, ``F.avg_pool2d``,
``operator.getitem`` for strided slicing, ...); module kinds by module type. A module of any type can
declare itself a down-sampler through the :class:`DeclaredDownsampler` protocol.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.conv_spectra import ConvCall, ConvGeometry, group_channels
from cnn_aliasing.runtime import is_channels_last
from cnn_aliasing.spectral import MAX_FACTOR
from cnn_aliasing.validation import is_int_pair

Params = dict[str, Any]


Restrict = Callable[[torch.Tensor], torch.Tensor]
"""Given sorted output-channel indices (an int64 tensor on the maps' device), the full-resolution maps
of those channels only, (N, k, H, W): the op at stride 1 restricted to those channels."""


class StridedCall:
    """One call of a down-sampling op: its factor, and its output at full resolution, formed on demand.

    ``full()`` is the stride-1 output: a tensor, or a tuple whose first item is the tensor to measure
    (max-pooling values and indices), computed once. ``real_output()`` is the op's real output: the slice
    of the full-resolution output, or the op run as it is where that is cheaper (the full output was not
    formed) or where the two differ (``ceil_mode`` pooling). ``full_size`` is given where the kind knows
    the (H, W) of the stride-1 output without forming it; ``unmeasurable`` says why the engine cannot
    measure the call (None: it can). ``channels`` (the number of output channels) and ``restrict`` (see
    :data:`Restrict`) are given where the kind can form the full-resolution maps of some channels alone,
    for channel-sampled measurement. ``conv`` is given for a convolution whose aliasing can be measured
    from its input's spectra and its real output (see :mod:`cnn_aliasing.conv_spectra`).
    """

    def __init__(
        self,
        kind: str,
        factor: tuple[int, int],
        full_resolution: Callable[[], Any],
        original: Callable[[], Any],
        *,
        full_size: tuple[int, int] | None = None,
        unmeasurable: str | None = None,
        exact_slice: bool = True,
        conv: ConvCall | None = None,
        channels: int | None = None,
        restrict: Restrict | None = None,
    ) -> None:
        self.kind = kind
        self.factor = factor
        self.unmeasurable = unmeasurable
        self.conv = conv
        self._channels = channels
        self._restrict = restrict
        self._full_resolution = full_resolution
        self._original = original
        self._full_size = full_size
        self._exact_slice = exact_slice
        self._full: Any = None
        self._output: Any = None

    def full(self) -> Any:
        """The stride-1 output (computed on the first call only)."""
        if self._full is None:
            self._full = self._full_resolution()
        return self._full

    def measured(self) -> torch.Tensor:
        """The full-resolution tensor whose maps are measured."""
        full = self.full()
        return full[0] if isinstance(full, tuple) else full

    def full_shape(self) -> tuple[int, ...]:
        """Shape of the full-resolution tensor, without forming it for a convolution."""
        if self.conv is not None and self._full is None:
            x, weight = self.conv.input, self.conv.weight
            return (*x.shape[:-3], weight.shape[0], *self.conv.geometry.full_size)
        return tuple(self.measured().shape)

    def channel_count(self) -> int:
        """Number of output channels (the axis before H, W; 1 for a bare map), without forming the
        full-resolution output where the kind knows it."""
        if self._channels is not None:
            return self._channels
        shape = self.full_shape()
        return shape[-3] if len(shape) >= 3 else 1

    def measured_channels(self, index: torch.Tensor) -> torch.Tensor:
        """The full-resolution maps of the output channels ``index`` (sorted int64 on the maps' device),
        (N, k, H, W): formed for those channels alone where the kind can (the op's real output then comes
        from the op itself), else taken from the whole full-resolution output."""
        if self._full is None and self._restrict is not None:
            return self._restrict(index)
        return self.measured().index_select(-3, index)

    def full_size(self) -> tuple[int, int]:
        """(H, W) of the full-resolution output, formed only where the kind does not know it."""
        if self._full_size is not None:
            return self._full_size
        shape = self.measured().shape
        return (shape[-2], shape[-1])

    def below_factor(self) -> bool:
        """Whether the full-resolution output is smaller than the factor on an axis (global pooling to
        one pixel): such a call has nothing to measure."""
        h, w = self.full_size()
        return h < self.factor[0] or w < self.factor[1]

    def real_output(self) -> Any:
        """The op's real output (computed once)."""
        if self._output is None:
            if not self._exact_slice or self._full is None:
                self._output = self._original()
            elif isinstance(self._full, tuple):
                self._output = tuple(subsample(item, self.factor) for item in self._full)
            else:
                self._output = subsample(self._full, self.factor)
        return self._output


def _why_unmeasurable(factor: tuple[int, int], maps: torch.Tensor | None) -> str | None:
    """Why the engine cannot measure a down-sampling call with this factor on these input maps (None: it
    can): a factor above :data:`cnn_aliasing.spectral.MAX_FACTOR`, or maps that are not real floats."""
    if max(factor) > MAX_FACTOR:
        s, t = factor
        return f"its factor {s}x{t} is above spectral.MAX_FACTOR = {MAX_FACTOR}, the largest measured"
    if maps is not None and (maps.is_complex() or not maps.is_floating_point()):
        return f"its maps are {maps.dtype}; the engine measures real floating-point maps"
    return None


def subsample(x: torch.Tensor, factor: tuple[int, int]) -> torch.Tensor:
    """x[..., ::s, ::t] as a dense tensor in x's memory format (the ops after it run faster on it)."""
    s, t = factor
    y = x[..., ::s, ::t]
    channels_last = is_channels_last(x)
    return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(value)
    return (pair[0], pair[0]) if len(pair) == 1 else (pair[0], pair[1])


def _padding(value: Any) -> tuple[int, int] | None:
    """Padding as a pair; ``"valid"`` is no padding, ``"same"`` (refused with a stride) is None."""
    if isinstance(value, str):
        return (0, 0) if value == "valid" else None
    return _pair(value)


@dataclass(frozen=True)
class FunctionalKind:
    """A function with a stride parameter; ``params`` are its parameter names in positional order."""

    name: str
    function: Callable[..., Any]
    params: tuple[str, ...]
    defaults: Params
    kernel_param: str | None = None  # pooling: a missing stride means stride = kernel size
    conv: Callable[[Params], ConvCall | None] | None = None  # see StridedCall.conv
    restricted: Callable[[FunctionalKind, Params, torch.Tensor], torch.Tensor] | None = None
    """The stride-1 call restricted to some output channels (see :data:`Restrict`), given the kind, the
    stride-1 parameters and the channel indices; None: the kind has no such form."""
    channels: Callable[[Params], int] | None = None  # the number of output channels of a call
    stride_one: Callable[[Params], torch.Tensor | None] | None = None
    """A faster stride-1 call giving the same values (None from it: use the function)."""

    def bind(self, args: Sequence[Any], kwargs: Params) -> Params:
        """Bind a call's arguments to parameter names (builtins have no inspectable signature)."""
        if len(args) > len(self.params):
            raise TypeError(f"{self.name}: too many positional arguments ({len(args)})")
        return {**self.defaults, **dict(zip(self.params, args, strict=False)), **kwargs}

    def factor(self, params: Params) -> tuple[int, int]:
        """The down-sampling factor (s, t) of a call with these parameters."""
        stride = params.get("stride")
        if stride is None or (not isinstance(stride, int) and len(stride) == 0):
            stride = params[self.kernel_param] if self.kernel_param else 1
        return _pair(stride)

    def strided_call(self, params: Params) -> StridedCall | None:
        """The call as a :class:`StridedCall`, or None when it does not reduce the resolution of an
        (N, C, H, W) feature map (other ranks are not feature maps; non-positive strides and
        ``padding="same"`` with a stride are refused by the op itself)."""
        x = params.get("input")
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return None
        factor = self.factor(params)
        padding = _padding(params.get("padding", 0))
        if factor == (1, 1) or min(factor) < 1 or padding is None:
            return None
        ceil_mode = bool(params.get("ceil_mode", False))
        full_params = {**params, "stride": 1, **({"ceil_mode": False} if ceil_mode else {})}
        return StridedCall(
            self.name,
            factor,
            lambda: self.full_resolution(full_params),
            lambda: self.call(params),
            full_size=self._full_size(params, padding),
            unmeasurable=_why_unmeasurable(factor, x),
            exact_slice=not ceil_mode,
            conv=self.conv(params) if self.conv else None,
            channels=self.channels(params) if self.channels else None,
            restrict=self._restrict(full_params),
        )

    def _restrict(self, full_params: Params) -> Restrict | None:
        restricted = self.restricted
        if restricted is None:
            return None
        return lambda index: restricted(self, full_params, index)

    def _full_size(self, params: Params, padding: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the stride-1 output: the padded input less the dilated window, plus one."""
        if self.kernel_param:
            kernel = _pair(params[self.kernel_param])
        else:  # a convolution: the window is the weight's
            kernel = (params["weight"].shape[-2], params["weight"].shape[-1])
        dilation = _pair(params.get("dilation", 1))
        h, w = params["input"].shape[-2:]
        return (
            h + 2 * padding[0] - dilation[0] * (kernel[0] - 1),
            w + 2 * padding[1] - dilation[1] * (kernel[1] - 1),
        )

    def full_resolution(self, full_params: Params) -> Any:
        """The stride-1 call: the kind's own faster form where it has one, else the function itself."""
        faster = self.stride_one(full_params) if self.stride_one else None
        return self.call(full_params) if faster is None else faster

    def call(self, params: Params) -> Any:
        """Call the function with bound parameters, positionally in declared order."""
        return self.function(*(params[name] for name in self.params))


class SliceKind:
    """Strided slicing of a 4-D feature map's two spatial axes: ``x[..., a::s, b::t]`` of an (N, C, H, W)
    map (steps on dims 2 and 3 only), or ``x[:, a::s, b::t, :]`` of a channels-last (N, H, W, C) one (steps
    on dims 1 and 2 both, dim 3 whole: a Swin-style patch merge, LeViT's subsample of a ``view(B, H, W,
    C)``). Any other stepped slice of a 4-D tensor has no known spatial axes: it runs unchanged and is
    named in a warning, never measured on the wrong axes. Slices of tensors of other ranks (logits,
    tokens) are not down-sampling of maps."""

    name = "strided_slice"
    name_channels_last = "strided_slice_nhwc"

    @staticmethod
    def expand_index(ndim: int, index: Any) -> list[Any] | None:
        """The index as one item per axis, or None for indexing other than ints, slices and one Ellipsis."""
        items = list(index) if isinstance(index, tuple) else [index]
        allowed = (slice, int, type(Ellipsis))
        if any(isinstance(i, bool) or not isinstance(i, allowed) for i in items):
            return None
        if items.count(Ellipsis) > 1:
            return None
        if Ellipsis in items:
            at = items.index(Ellipsis)
            items[at : at + 1] = [slice(None)] * (ndim - len(items) + 1)
        items += [slice(None)] * (ndim - len(items))
        return items if len(items) == ndim else None

    def strided_call(self, x: Any, index: Any) -> StridedCall | None:
        """The slicing as a :class:`StridedCall` (an unmeasurable one where the stepped axes of a 4-D
        tensor are not its spatial ones), or None when it steps over no axis of a 4-D tensor (torch
        refuses non-positive steps itself)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return None
        items = self.expand_index(x.dim(), index)
        if items is None:
            return None
        stepped = {d for d, i in enumerate(items) if isinstance(i, slice) and (i.step or 1) != 1}
        if not stepped or any(isinstance(i, slice) and (i.step or 1) < 1 for i in items):
            return None
        whole_channels = isinstance(items[3], slice) and items[3] == slice(None)
        if stepped <= {2, 3} and all(isinstance(i, slice) for i in items[2:]):
            return self._spatial_call(x, index, items, (2, 3), self.name)
        if stepped == {1, 2} and whole_channels and all(isinstance(i, slice) for i in items[:3]):
            return self._spatial_call(x, index, items, (1, 2), self.name_channels_last)
        steps = "x".join(str(items[d].step) for d in sorted(stepped))
        why = (
            f"it steps ({steps}) over dims {sorted(stepped)} of a tensor of shape {tuple(x.shape)}, whose "
            "spatial axes are not known (measured: dims 2 and 3 of an (N, C, H, W) map, or dims 1 and 2 "
            "together of a channels-last (N, H, W, C) one with every channel kept)"
        )
        factor = (items[min(stepped)].step, items[max(stepped)].step if len(stepped) > 1 else 1)
        return StridedCall(self.name, factor, lambda: x[index], lambda: x[index], unmeasurable=why)

    @staticmethod
    def _spatial_call(
        x: torch.Tensor, index: Any, items: list[Any], axes: tuple[int, int], kind: str
    ) -> StridedCall:
        """The call of a slice stepping over the spatial ``axes`` of ``x``: its full-resolution output is
        the slice without the steps, as (N, C, H, W) maps (channels-last ones permuted)."""
        h, w = items[axes[0]], items[axes[1]]
        factor = (h.step or 1, w.step or 1)
        full_items = list(items)
        full_items[axes[0]], full_items[axes[1]] = slice(h.start, h.stop), slice(w.start, w.stop)
        full_index = tuple(full_items)
        full_size = (
            len(range(x.shape[axes[0]])[full_items[axes[0]]]),
            len(range(x.shape[axes[1]])[full_items[axes[1]]]),
        )
        if axes == (2, 3):
            return StridedCall(
                kind,
                factor,
                lambda: x[full_index],
                lambda: x[index],
                full_size=full_size,
                unmeasurable=_why_unmeasurable(factor, x),
            )
        return StridedCall(  # channels-last: the maps are the permuted slice; the real output is x's own
            kind,
            factor,
            lambda: x[full_index].permute(0, 3, 1, 2),
            lambda: x[index],
            full_size=full_size,
            unmeasurable=_why_unmeasurable(factor, x),
            exact_slice=False,
        )


def _conv_call(params: Params) -> ConvCall | None:
    """The call as a :class:`~cnn_aliasing.conv_spectra.ConvCall` (its aliasing measurable from its input's
    spectra), or None where conv_spectra does not cover it (a kernel reaching past the map)."""
    x, weight = params["input"], params["weight"]
    padding = _padding(params["padding"])
    if weight.dim() != 4 or padding is None:
        return None
    geometry = ConvGeometry(
        (x.shape[-2], x.shape[-1]),
        (weight.shape[-2], weight.shape[-1]),
        padding,
        _pair(params["dilation"]),
        _pair(params["stride"]),
    )
    if not geometry.supported():
        return None
    return ConvCall(x, weight, params["bias"], geometry, params["groups"])


def _is_pointwise(params: Params) -> bool:
    """A 1x1 convolution without padding."""
    weight = params["weight"]
    return weight.dim() == 4 and weight.shape[-2:] == (1, 1) and _padding(params["padding"]) == (0, 0)


def _restricted_conv(kind: FunctionalKind, params: Params, index: torch.Tensor) -> torch.Tensor:
    """The stride-1 convolution computing only the output channels ``index``: their filters (and biases);
    for a grouped convolution, only the groups that hold them (see :func:`_restricted_groups`)."""
    x, weight, bias, groups = params["input"], params["weight"], params["bias"], params["groups"]
    index = index.to(weight.device)
    if groups == 1 and _is_pointwise(params):
        return _pointwise_maps(x, weight.index_select(0, index).flatten(1), bias, index)
    if groups != 1:
        return _restricted_groups(kind, params, index, whole_groups=index.device.type == "cpu")
    selected = {
        **params,
        "weight": weight.index_select(0, index),
        "bias": None if bias is None else bias.index_select(0, index),
    }
    return kind.call(selected)


def _restricted_groups(
    kind: FunctionalKind, params: Params, index: torch.Tensor, *, whole_groups: bool
) -> torch.Tensor:
    """A grouped convolution's output channels ``index`` at stride 1. With ``whole_groups`` (on the CPU),
    every output channel of each group that holds a selected one is computed (a convolution over those
    groups alone), then the selected ones are taken: oneDNN is several times slower for groups of one
    output channel (RegNet's 8-channel groups: 7.7 against 17.5 ms for 7 of 56 channels on 56 x 56 maps).
    Without (on other devices, where finding the groups would wait for the device) each selected filter
    runs with its own group's input channels, one group per selected channel."""
    x, weight, bias, groups = params["input"], params["weight"], params["bias"], params["groups"]
    per_group_in, per_group_out = weight.shape[1], weight.shape[0] // groups
    group = torch.div(index, per_group_out, rounding_mode="floor")
    taken = None
    if whole_groups and per_group_out > 1:
        used, position = torch.unique(group, return_inverse=True)
        taken = index % per_group_out + position * per_group_out
        first, count = int(used[0]), used.numel()
        if int(used[-1]) - first + 1 == count:  # consecutive groups: slices of the input, no copy
            sliced = {
                **params,
                "input": x.narrow(1, first * per_group_in, count * per_group_in),
                "weight": weight.narrow(0, first * per_group_out, count * per_group_out),
                "bias": None
                if bias is None
                else bias.narrow(0, first * per_group_out, count * per_group_out),
                "groups": count,
            }
            return kind.call(sliced).index_select(1, taken)
        group, index = used, group_channels(used, per_group_out)
    selected = {
        **params,
        "input": x.index_select(1, group_channels(group, per_group_in)),
        "weight": weight.index_select(0, index),
        "bias": None if bias is None else bias.index_select(0, index),
        "groups": group.numel(),
    }
    maps = kind.call(selected)
    return maps if taken is None else maps.index_select(1, taken)


def _pointwise_maps(
    x: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor | None, index: torch.Tensor
) -> torch.Tensor:
    """A 1x1 convolution at stride 1 as one matrix product ``rows @ x`` per image (k, C) x (C, H*W), plus
    the selected biases: the same maps as ``F.conv2d``, several times faster for a few output channels on
    the CPU, where oneDNN reorders the whole input for a thin convolution."""
    n, _, h, w = x.shape
    maps = torch.matmul(rows, x.reshape(n, x.shape[1], h * w)).reshape(n, rows.shape[0], h, w)
    return maps if bias is None else maps + bias.index_select(0, index)[:, None, None]


def _restricted_pool(kind: FunctionalKind, params: Params, index: torch.Tensor) -> torch.Tensor:
    """Channel-wise pooling at stride 1 of the input channels ``index`` alone (the values, not indices)."""
    x = params["input"]
    out = kind.call({**params, "input": x.index_select(1, index.to(x.device))})
    return out[0] if isinstance(out, tuple) else out


def _max_pool_stride_one(params: Params) -> torch.Tensor | None:
    """Max-pooling at stride 1 of (N, C, H, W) maps on the CPU as a running maximum over the window's
    columns, then its rows, of the map padded with -inf: the values of ``F.max_pool2d`` (NaN propagates
    alike), several times faster than its CPU kernel for maps in the default layout. None (use the
    function) for indices, other devices and channels-last maps."""
    x = params["input"]
    if params["return_indices"] or x.device.type != "cpu" or not x.is_contiguous() or x.dim() != 4:
        return None
    (kh, kw), (ph, pw), (dh, dw) = (_pair(params[n]) for n in ("kernel_size", "padding", "dilation"))
    n, c, h, w = x.shape
    out_h, out_w = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    if out_h < 1 or out_w < 1:
        return None
    maps = x.reshape(n * c, h, w)
    out = x.new_empty(n * c, out_h, out_w)
    step = max(1, (1 << 18) // max(1, (h + 2 * ph) * (w + 2 * pw)))  # chunks that stay in cache
    for first in range(0, n * c, step):
        padded = F.pad(maps[first : first + step], (pw, pw, ph, ph), value=float("-inf"))
        across = padded[..., :out_w]
        for j in range(1, kw):
            across = torch.maximum(across, padded[..., j * dw : j * dw + out_w])
        result = across[..., :out_h, :]
        for i in range(1, kh):
            result = torch.maximum(result, across[..., i * dh : i * dh + out_h, :])
        out[first : first + step] = result
    return out.reshape(n, c, out_h, out_w)


def _conv_channels(params: Params) -> int:
    return params["weight"].shape[0]


def _input_channels(params: Params) -> int:
    return params["input"].shape[1]


CONV2D = FunctionalKind(
    "conv2d",
    F.conv2d,
    ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1},
    conv=_conv_call,
    restricted=_restricted_conv,
    channels=_conv_channels,
)
MAX_POOL2D = FunctionalKind(
    "max_pool2d",
    F.max_pool2d,
    ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
    kernel_param="kernel_size",
    restricted=_restricted_pool,
    channels=_input_channels,
    stride_one=_max_pool_stride_one,
)
AVG_POOL2D = FunctionalKind(
    "avg_pool2d",
    F.avg_pool2d,
    ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
    kernel_param="kernel_size",
    restricted=_restricted_pool,
    channels=_input_channels,
)
LP_POOL2D = FunctionalKind(
    "lp_pool2d",
    F.lp_pool2d,
    ("input", "norm_type", "kernel_size", "stride", "ceil_mode"),
    {"stride": None, "ceil_mode": False},
    kernel_param="kernel_size",
    restricted=_restricted_pool,
    channels=_input_channels,
)
STRIDED_SLICE = SliceKind()

FUNCTIONAL_KINDS: dict[Callable[..., Any], FunctionalKind] = {}
"""Functional kinds by the function object that a traced graph calls."""


def register_functional_kind(kind: FunctionalKind, *aliases: Callable[..., Any]) -> None:
    """Register a functional down-sampling kind under its function and any aliases of it."""
    for function in (kind.function, *aliases):
        FUNCTIONAL_KINDS[function] = kind


register_functional_kind(CONV2D, torch.conv2d)
register_functional_kind(MAX_POOL2D, torch.max_pool2d, F.max_pool2d_with_indices)
register_functional_kind(AVG_POOL2D)
register_functional_kind(LP_POOL2D)


def functional_strided_call(
    function: Callable[..., Any], args: Sequence[Any], kwargs: Params
) -> StridedCall | None:
    """A call of a registered function (or ``operator.getitem``) as a StridedCall, or None."""
    if function is operator.getitem:
        return STRIDED_SLICE.strided_call(*args, **kwargs) if len(args) == 2 and not kwargs else None
    kind = FUNCTIONAL_KINDS.get(function)
    return kind.strided_call(kind.bind(args, kwargs)) if kind else None


def is_functional_downsampler(function: Any, args: Sequence[Any]) -> bool:
    """Whether a traced call may down-sample: a registered function, or getitem with a slice step."""
    if function is operator.getitem:
        index = args[1] if len(args) == 2 else None
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, slice) and i.step not in (None, 1) for i in items)
    return function in FUNCTIONAL_KINDS


# ---- modules -----------------------------------------------------------------------------------------


@runtime_checkable
class DeclaredDownsampler(Protocol):
    """A module that declares itself a down-sampler (anti-aliasing layers use this).

    ``downsampling_factor`` is s or (s, t); ``full_resolution_forward(*args)`` takes the module's forward
    arguments and returns x such that ``forward(*args)`` equals ``x[..., ::s, ::t]``. An optional
    ``downsampling_kind`` string names the kind in reports (default: the class name). The probe does not
    look inside such a module.
    """

    downsampling_factor: int | tuple[int, int]

    def full_resolution_forward(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...


def _is_declared(module: nn.Module) -> TypeGuard[DeclaredDownsampler]:
    """``isinstance(module, DeclaredDownsampler)`` without typing's runtime protocol check, which costs
    tens of microseconds a call (the probe asks for every module on every ``measure`` call)."""
    return hasattr(module, "full_resolution_forward") and hasattr(module, "downsampling_factor")


ModuleParams = Callable[[Any, torch.Tensor], Params]
"""Reads a module's parameters as the keyword parameters of the functional kind it calls."""


def _conv_params(m: nn.Conv2d, x: torch.Tensor) -> Params:
    padding: Any = m.padding
    if m.padding_mode != "zeros":
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        padding = 0
    return {
        "input": x,
        "weight": m.weight,
        "bias": m.bias,
        "stride": m.stride,
        "padding": padding,
        "dilation": m.dilation,
        "groups": m.groups,
    }


def _attribute_params(kind: FunctionalKind) -> ModuleParams:
    names = [n for n in kind.params if n != "input"]
    return lambda m, x: {"input": x, **{n: getattr(m, n) for n in names}}


MODULE_KINDS: dict[type[nn.Module], tuple[FunctionalKind, ModuleParams]] = {
    nn.Conv2d: (CONV2D, _conv_params),
    nn.MaxPool2d: (MAX_POOL2D, _attribute_params(MAX_POOL2D)),
    nn.AvgPool2d: (AVG_POOL2D, _attribute_params(AVG_POOL2D)),
    nn.LPPool2d: (LP_POOL2D, _attribute_params(LP_POOL2D)),
}
"""Module kinds: a module type whose forward is exactly one call of a functional kind."""


def _module_kind(module: nn.Module) -> tuple[FunctionalKind, ModuleParams] | None:
    """The registered kind of a module whose class uses the registered type's own forward."""
    for cls in type(module).__mro__:
        if cls in MODULE_KINDS:
            return MODULE_KINDS[cls] if type(module).forward is cls.forward else None
    return None


def is_known_module(module: nn.Module) -> bool:
    """Whether the probe measures this module as one op (a registered kind or a declared down-sampler)."""
    return _is_declared(module) or _module_kind(module) is not None


def _declared_factor(module: DeclaredDownsampler) -> tuple[int, int]:
    """A declared down-sampler's ``downsampling_factor`` as a pair, checked to be ints >= 1."""
    return is_int_pair(1)(module.downsampling_factor, f"{type(module).__name__}.downsampling_factor")


def module_may_downsample(module: nn.Module) -> bool:
    """Whether a module is a declared down-sampler or a registered kind with a stride above 1."""
    if _is_declared(module):
        return _declared_factor(module) != (1, 1)
    found = _module_kind(module)
    if found is None:
        return False
    kind, _ = found
    params = {n: getattr(module, n, None) for n in ("stride", "kernel_size")}
    return kind.factor(params) != (1, 1)


def module_strided_call(
    module: nn.Module, args: Sequence[Any], kwargs: Params, forward: Callable[..., Any]
) -> StridedCall | None:
    """A call of a known module as a StridedCall (``forward`` is its own, unprobed forward), or None."""
    if _is_declared(module):
        factor = _declared_factor(module)
        return StridedCall(
            getattr(module, "downsampling_kind", type(module).__name__),
            factor,
            lambda: module.full_resolution_forward(*args, **kwargs),
            lambda: forward(*args, **kwargs),
            unmeasurable=_why_unmeasurable(factor, None),
        )
    found = _module_kind(module)
    if found is None or len(args) != 1 or kwargs:
        return None
    kind, read_params = found
    return kind.strided_call(read_params(module, args[0]))
