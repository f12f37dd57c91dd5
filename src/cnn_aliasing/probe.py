"""Finding the down-sampling ops of a model and observing their full-resolution outputs while it runs.

While a probe is active, every down-sampling op computes its output at full resolution (stride 1), hands
it to an observer, and returns the slice of it that is the op's real output, so the strided op is never
computed twice. Modules of known kinds (see :mod:`cnn_aliasing.downsamplers`) get their ``forward``
replaced on the instance; functional down-sampling inside a module's forward (``F.conv2d``, ``F.avg_pool2d``,
``x[..., ::2, ::2]`` ...) is found by ``torch.fx`` tracing, and the module's ``forward`` is replaced by the
traced graph with those calls wrapped. A module whose own forward cannot be traced (control flow on its
input, ``if`` on a shape) runs its own code under a ``TorchFunctionMode`` instead, which sees the same
calls while it runs (named as tracing names them: ``owner:conv2d``, ``owner:conv2d_1``, ...), so no op is
lost to tracing. Only spatial down-sampling of feature maps counts.
Ops left out by name are never touched; ops the engine cannot measure (a factor above
``spectral.MAX_FACTOR``, maps that are not real floats) run unchanged, with one
:class:`UnmeasurableOpWarning` per op and probe. Everything is restored when the probe exits, exceptions
included.
"""

from __future__ import annotations

import contextlib
import fnmatch
import operator
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

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
    """Which ops to measure, by name: those matching any ``include`` pattern (all if none) and no
    ``exclude`` one. Patterns are shell-style (``layer2.*``, ``*shortcut*``).

    An op left out is never touched: its own forward (or function) runs, unprobed.
    """

    def __init__(self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None):
        self.include = list(include or [])
        self.exclude = list(exclude or [])

    def __call__(self, name: str) -> bool:
        """Whether the op named ``name`` is measured."""
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        return not self.include or any(fnmatch.fnmatchcase(name, p) for p in self.include)


class UnmeasurableOpWarning(UserWarning):
    """A down-sampling op the engine cannot measure runs unchanged and is left out of the results."""


class _Session:
    """One probe's calls: measurable ones go to the observer; each unmeasurable op is warned about once.

    Ops whose full-resolution output is smaller than the factor on an axis (global pooling to one pixel)
    have nothing to measure and are passed over silently.
    """

    def __init__(self, observe: Observer) -> None:
        self.observe = observe
        self.warned: set[str] = set()

    def run(self, call: downsamplers.StridedCall, name: str) -> Any:
        """Show a measurable call to the observer; return the op's real output in every case."""
        if call.below_factor():
            return call.real_output()
        if call.unmeasurable is None:
            self.observe(OpCall(name, call.kind, call.factor), call)
        else:
            self._warn(name, call)
        return call.real_output()

    def _warn(self, name: str, call: downsamplers.StridedCall) -> None:
        if name in self.warned:
            return
        self.warned.add(name)
        s, t = call.factor
        warnings.warn(
            f"op {name!r} ({call.kind}, factor {s}x{t}) is not measured: {call.unmeasurable}. It runs "
            f"unchanged; exclude=[{name!r}] silences this warning.",
            UnmeasurableOpWarning,
            stacklevel=3,
        )


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
        failures.append((path, reason))
        return inside_failing + whole


_PLAIN = (bool, int, float, str, type(None))


def _plain_attributes(module: nn.Module) -> tuple[tuple[str, Any], ...]:
    """The module's own attributes of plain types (flags, sizes, names): a traced forward may branch on
    them, so they are part of what a trace depends on."""
    return tuple(
        (k, v)
        for k, v in vars(module).items()
        if isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(i, _PLAIN) for i in v))
    )


def _structure(model: nn.Module) -> tuple[Any, ...]:
    """What fx tracing of ``model`` depends on: each module's name, identity, class, forward code and
    plain attributes, and the identity of every parameter and buffer (a traced graph holds the tensors its
    forward reads; ``model.to(...)`` replaces buffers, and assigning a parameter replaces it)."""
    modules = tuple(
        (name, id(m), type(m), type(m).forward, m.__dict__.get("forward"), _plain_attributes(m))
        for name, m in model.named_modules()
    )
    return modules, tuple(id(t) for t in (*model.parameters(), *model.buffers()))


class _Route:
    """Where the wrapped functional calls of a model's instrumented graphs go: the active probe's session
    and selection, or nowhere (``session`` None: the calls run unchanged)."""

    def __init__(self) -> None:
        self.session: _Session | None = None
        self.select = OpSelector()


@dataclass
class _Instrumented:
    path: str  # of the traced module
    graph: fx.GraphModule  # its traced forward, every functional down-sampling call wrapped
    sites: tuple[str, ...]  # the names of those calls


@dataclass
class _ModelTrace:
    structure: tuple[Any, ...]  # see _structure
    graphs: list[_Instrumented]  # only those with functional down-sampling calls
    failures: list[tuple[str, str]]  # untraceable modules: (path, reason)
    route: _Route


_TRACES: weakref.WeakKeyDictionary[nn.Module, _ModelTrace] = weakref.WeakKeyDictionary()
"""Each probed model's instrumented traces, reused while its structure is unchanged: tracing and
recompiling cost 20 to 30 ms a ``measure`` call for a ResNet. Entries go with their models."""


def _model_trace(model: nn.Module) -> _ModelTrace:
    """The instrumented traces of ``model``: cached, or traced now (also when the cached ones are in use
    by an enclosing probe)."""
    structure = _structure(model)
    cached = _TRACES.get(model)
    if cached is not None and cached.structure == structure and cached.route.session is None:
        return cached
    failures: list[tuple[str, str]] = []
    route = _Route()
    graphs = [g for g in (_instrument(t, route) for t in _trace_tree(model, "", failures)) if g.sites]
    trace = _ModelTrace(structure, graphs, failures, route)
    _TRACES[model] = trace
    return trace


class _OwnCalls(TorchFunctionMode):
    """While an untraceable module's own forward runs: its functional down-sampling calls, not those of the
    modules it calls (``depth`` > 0 while a child runs), go through the probe's session, named like the
    calls of a traced graph (``owner:conv2d``, then ``owner:conv2d_1`` ...; ``owner`` "" for the model)."""

    def __init__(self, owner: str, route: _Route) -> None:
        super().__init__()
        self.owner, self.route = owner, route
        self.depth = 0
        self.counts: dict[str, int] = {}

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        function = operator.getitem if func is torch.Tensor.__getitem__ else func
        session = self.route.session
        if session is None or self.depth or not downsamplers.is_functional_downsampler(function, args):
            return func(*args, **kwargs)
        kind = downsamplers.FUNCTIONAL_KINDS.get(function)
        base = kind.name if kind is not None else "getitem"  # as fx names the node: by the function
        k = self.counts[base] = self.counts.get(base, -1) + 1
        name = f"{base}_{k}" if k else base
        name = f"{self.owner}:{name}" if self.owner else name
        call = (
            downsamplers.functional_strided_call(function, args, kwargs) if self.route.select(name) else None
        )
        return func(*args, **kwargs) if call is None else session.run(call, name)


def _runtime_forward(module: nn.Module, owner: str, route: _Route) -> tuple[Callable[..., Any], list[Any]]:
    """A forward running ``module``'s own under :class:`_OwnCalls`, and the hooks on its children that
    keep the mode's depth (to be removed with the forward)."""
    original = module.forward
    active: list[_OwnCalls] = []

    def enter(*_: Any) -> None:
        if active:
            active[-1].depth += 1

    def leave(*_: Any) -> None:
        if active:
            active[-1].depth -= 1

    handles = []
    for child in module.children():
        handles.append(child.register_forward_pre_hook(enter))
        handles.append(child.register_forward_hook(leave, always_call=True))

    def forward(*args: Any, **kwargs: Any) -> Any:
        mode = _OwnCalls(owner, route)
        active.append(mode)
        try:
            with mode:
                return original(*args, **kwargs)
        finally:
            active.pop()

    return forward, handles


def _functional_wrapper(function: Callable[..., Any], name: str, route: _Route):
    def measured(*args: Any, **kwargs: Any) -> Any:
        session = route.session
        call = None
        if session is not None and route.select(name):
            call = downsamplers.functional_strided_call(function, args, kwargs)
        if session is None or call is None:
            return function(*args, **kwargs)
        return session.run(call, name)

    measured.__name__ = f"measured_{getattr(function, '__name__', 'op')}"
    return measured


def _node_name(traced_path: str, node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack)) if stack else ""
    owner = ".".join(p for p in (traced_path, owner) if p)
    return f"{owner}:{node.name}" if owner else node.name


def _instrument(traced: _Traced, route: _Route) -> _Instrumented:
    """Wrap every functional call of a traced graph that may down-sample, to go through ``route``."""
    sites = []
    for node in traced.graph.graph.nodes:
        if node.op == "call_function" and downsamplers.is_functional_downsampler(node.target, node.args):
            name = _node_name(traced.path, node)
            node.target = _functional_wrapper(node.target, name, route)
            sites.append(name)
    if sites:
        traced.graph.recompile()
    return _Instrumented(traced.path, traced.graph, tuple(sites))


def _walk(module: nn.Module, path: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Named modules, not descending into modules the probe measures as one op."""
    yield path, module
    if downsamplers.is_known_module(module) and path:
        return
    for name, child in module.named_children():
        yield from _walk(child, f"{path}.{name}" if path else name)


def _module_forward(module: nn.Module, name: str, session: _Session):
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = downsamplers.module_strided_call(module, args, kwargs, original)
        if call is None:
            return original(*args, **kwargs)
        return session.run(call, name)

    return forward


class _Patches:
    """Instance-level ``forward`` replacements, undone in reverse order."""

    _missing = object()

    def __init__(self) -> None:
        self._undo: list[tuple[nn.Module, Any]] = []
        self.hooks: list[Any] = []  # hook handles, removed with the forwards

    def replace_forward(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        self._undo.append((module, module.__dict__.get("forward", self._missing)))
        module.forward = forward

    def restore(self) -> None:
        while self.hooks:
            self.hooks.pop().remove()
        while self._undo:
            module, previous = self._undo.pop()
            if previous is self._missing:
                del module.forward
            else:
                module.forward = previous


@contextlib.contextmanager
def probing(
    model: nn.Module, observe: Observer, select: OpSelector | None = None, *, trace: bool = True
) -> Iterator[None]:
    """While active, every down-sampling op of ``model`` shows its full-resolution output to ``observe``.

    The model's outputs stay those of the unprobed model (the real output of a strided op is the slice of
    its full-resolution output: equal up to float rounding for convolutions, exactly for pooling and
    slicing). Ops ``select`` leaves out are not touched; ops the engine cannot measure run unchanged with
    an :class:`UnmeasurableOpWarning` each. ``trace=False`` skips fx tracing (only module ops are seen).
    """
    select = select or OpSelector()
    session = _Session(observe)
    patches = _Patches()
    traces = _model_trace(model) if trace else None
    try:
        for name, module in _walk(model):
            if name and select(name) and downsamplers.module_may_downsample(module):
                patches.replace_forward(module, _module_forward(module, name, session))
        if traces is not None:
            traces.route.session, traces.route.select = session, select
            modules = dict(model.named_modules())
            for graph in traces.graphs:
                if any(select(site) for site in graph.sites):
                    patches.replace_forward(modules[graph.path], graph.graph.forward)
            for path, _ in traces.failures:
                forward, handles = _runtime_forward(modules[path], path, traces.route)
                patches.replace_forward(modules[path], forward)
                patches.hooks += handles
        yield
    finally:
        patches.restore()
        if traces is not None:
            traces.route.session = None


def find_downsamplers(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Downsampler]:
    """Every op of ``model`` that reduces the spatial resolution of a feature map on ``example_input`` and
    can be measured, in forward order (ops that cannot are named in an :class:`UnmeasurableOpWarning`).

    Runs one forward pass (eval mode, no gradients) with the probe active; the model is left as found.
    """
    found: dict[str, Downsampler] = {}

    def record(op: OpCall, call: downsamplers.StridedCall) -> None:
        found.setdefault(op.name, Downsampler(op.name, op.kind, op.factor, call.full_shape()))

    with torch.no_grad(), evaluation_mode(model), probing(model, record, OpSelector(include, exclude)):
        run_model(model, example_input)
    return list(found.values())
