"""Finding the down-sampling ops of a model and observing their full-resolution outputs while it runs.

While a probe is active, every down-sampling op computes its output at full resolution (stride 1), hands
it to an observer, and returns the slice of it that is the op's real output, so the strided op is never
computed twice. Modules of known kinds (see :mod:`cnn_aliasing.downsamplers`) get their ``forward``
replaced on the instance; functional down-sampling inside a module's forward (``F.conv2d``, ``F.avg_pool2d``,
``x[..., ::2, ::2]`` ...) is found by ``torch.fx`` tracing, and the module's ``forward`` is replaced by the
traced graph with those calls wrapped. Modules that cannot be traced are named in a warning; the module
cases inside them are still covered. Everything is restored when the probe exits, exceptions included.
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from cnn_aliasing import downsamplers
from cnn_aliasing.runtime import evaluation_mode, run_model

Observer = Callable[["OpCall", downsamplers.StridedCall], None]
"""Called with each selected down-sampling call; ``call.measured()`` forms its full-resolution output."""


@dataclass(frozen=True)
class OpCall:
    """One down-sampling op as met during a forward pass."""

    name: str  # module path (``layer2.0.conv1``), or ``owner:node`` for a functional call inside ``owner``
    kind: str
    factor: tuple[int, int]


@dataclass(frozen=True)
class Downsampler:
    """A down-sampling op found in a model: its name, kind, factor and full-resolution output shape."""

    name: str
    kind: str
    factor: tuple[int, int]
    full_shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        """Number of channels (the axis before H, W); 1 for a bare (H, W) map."""
        return self.full_shape[-3] if len(self.full_shape) >= 3 else 1


class OpSelector:
    """Which ops to measure: names matching any ``include`` pattern (all if none) and no ``exclude`` one.

    Patterns are shell-style (``layer2.*``, ``*shortcut*``). Ops whose full-resolution output is smaller
    than the factor on an axis (global pooling to one pixel) are never measured.
    """

    def __init__(self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None):
        self.include = list(include or [])
        self.exclude = list(exclude or [])

    def __call__(self, op: OpCall, call: downsamplers.StridedCall) -> bool:
        if any(fnmatch.fnmatchcase(op.name, p) for p in self.exclude):
            return False
        if self.include and not any(fnmatch.fnmatchcase(op.name, p) for p in self.include):
            return False
        shape = call.full_shape()
        return len(shape) >= 2 and shape[-2] >= op.factor[0] and shape[-1] >= op.factor[1]


def _run(call: downsamplers.StridedCall, name: str, observe: Observer, select: OpSelector) -> Any:
    """Show a selected call to the observer, then return the op's real output."""
    op = OpCall(name, call.kind, call.factor)
    if select(op, call):
        observe(op, call)
    return call.real_output()


# ---- tracing -------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """fx tracer that keeps known down-sampling modules (and given untraceable ones) as leaves."""

    def __init__(self, leaves: set[nn.Module]):
        super().__init__()
        self.extra_leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if m in self.extra_leaves or downsamplers.is_known_module(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _trace(module: nn.Module, leaves: set[nn.Module]) -> fx.GraphModule:
    tracer = _Tracer(leaves)
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


@dataclass
class _Traced:
    path: str
    graph: fx.GraphModule


def _trace_tree(module: nn.Module, path: str, failures: list[tuple[str, str]]) -> list[_Traced]:
    """Trace a module; where that fails, resolve its children and retry with the failing ones as leaves.

    Returns traced graphs that together cover every traceable forward in the tree; ``failures`` collects
    the paths of modules whose own forward cannot be traced, with the reason.
    """
    try:
        return [_Traced(path, _trace(module, set()))]
    except Exception:  # fx raises many kinds of error on untraceable code
        pass
    inside_failing: list[_Traced] = []
    failing: set[nn.Module] = set()
    whole: list[_Traced] = []
    for name, child in module.named_children():
        if _Tracer(set()).is_leaf_module(child, name):
            continue
        known = len(failures)
        child_graphs = _trace_tree(child, f"{path}.{name}" if path else name, failures)
        if len(failures) == known:
            whole += child_graphs
        else:
            failing.add(child)
            inside_failing += child_graphs
    try:
        return [*inside_failing, _Traced(path, _trace(module, failing))]
    except Exception as error:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        failures.append((path or "<model>", reason))
        return inside_failing + whole


class UntraceableWarning(UserWarning):
    """Some modules could not be traced, so functional down-sampling in their own code is not seen."""


def _functional_wrapper(function: Callable[..., Any], name: str, observe: Observer, select: OpSelector):
    def measured(*args: Any, **kwargs: Any) -> Any:
        call = downsamplers.functional_strided_call(function, args, kwargs)
        if call is None:
            return function(*args, **kwargs)
        return _run(call, name, observe, select)

    measured.__name__ = f"measured_{getattr(function, '__name__', 'op')}"
    return measured


def _node_name(traced_path: str, node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack)) if stack else ""
    owner = ".".join(p for p in (traced_path, owner) if p)
    return f"{owner}:{node.name}" if owner else node.name


def _rewrite(traced: _Traced, observe: Observer, select: OpSelector) -> bool:
    """Wrap the functional down-sampling calls of a traced graph; False if it has none."""
    found = False
    for node in traced.graph.graph.nodes:
        if node.op == "call_function" and downsamplers.is_functional_downsampler(node.target, node.args):
            node.target = _functional_wrapper(node.target, _node_name(traced.path, node), observe, select)
            found = True
    if found:
        traced.graph.recompile()
    return found


def _walk(module: nn.Module, path: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Named modules, not descending into modules the probe measures as one op."""
    yield path, module
    if downsamplers.is_known_module(module) and path:
        return
    for name, child in module.named_children():
        yield from _walk(child, f"{path}.{name}" if path else name)


def _module_forward(module: nn.Module, name: str, observe: Observer, select: OpSelector):
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = downsamplers.module_strided_call(module, args, kwargs, original)
        if call is None:
            return original(*args, **kwargs)
        return _run(call, name, observe, select)

    return forward


class _Patches:
    """Instance-level ``forward`` replacements, undone in reverse order."""

    _missing = object()

    def __init__(self) -> None:
        self._undo: list[tuple[nn.Module, Any]] = []

    def replace_forward(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        self._undo.append((module, module.__dict__.get("forward", self._missing)))
        module.forward = forward  # type: ignore[method-assign]

    def restore(self) -> None:
        while self._undo:
            module, previous = self._undo.pop()
            if previous is self._missing:
                del module.forward
            else:
                module.forward = previous  # type: ignore[method-assign]


@contextlib.contextmanager
def probing(
    model: nn.Module, observe: Observer, select: OpSelector | None = None, *, trace: bool = True
) -> Iterator[None]:
    """While active, every down-sampling op of ``model`` shows its full-resolution output to ``observe``.

    The model's outputs stay those of the unprobed model (the real output of a strided op is the slice of
    its full-resolution output: equal up to float rounding for convolutions, exactly for pooling and
    slicing). ``trace=False`` skips fx tracing (only module ops are seen).
    """
    select = select or OpSelector()
    patches = _Patches()
    try:
        for name, module in _walk(model):
            if name and downsamplers.module_may_downsample(module):
                patches.replace_forward(module, _module_forward(module, name, observe, select))
        if trace:
            failures: list[tuple[str, str]] = []
            traced = _trace_tree(model, "", failures)
            if failures:
                listed = "; ".join(f"{p} ({why})" for p, why in failures)
                warnings.warn(
                    f"could not trace {listed}. Functional down-sampling (F.conv2d, F.*_pool2d, strided "
                    "slicing) in their own forward is not measured; the modules inside them are.",
                    UntraceableWarning,
                    stacklevel=3,
                )
            modules = dict(model.named_modules())
            for t in traced:
                if _rewrite(t, observe, select):
                    patches.replace_forward(modules[t.path], t.graph.forward)
        yield
    finally:
        patches.restore()


def find_downsamplers(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Downsampler]:
    """Every op of ``model`` that reduces spatial resolution on ``example_input``, in forward order.

    Runs one forward pass (eval mode, no gradients) with the probe active; the model is left as found.
    """
    found: dict[str, Downsampler] = {}

    def record(op: OpCall, call: downsamplers.StridedCall) -> None:
        found.setdefault(op.name, Downsampler(op.name, op.kind, op.factor, call.full_shape()))

    with torch.no_grad(), evaluation_mode(model), probing(model, record, OpSelector(include, exclude)):
        run_model(model, example_input)
    return list(found.values())
