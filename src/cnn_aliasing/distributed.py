"""The process group under ``torchrun`` and the few collectives measurement and attacks need.

One process is the default and needs nothing: without the torchrun environment, :func:`init_from_env`
returns the single-process :class:`Context` and initialises nothing, and every collective here is a no-op
at world size 1. Under ``torchrun`` (``WORLD_SIZE`` > 1 with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), :func:`init_from_env` starts the default process group: NCCL for CUDA devices, Gloo
otherwise, with a bounded timeout (:data:`TIMEOUT_ENV` seconds, default :data:`DEFAULT_TIMEOUT_S`). A
collective that fails or times out, mostly because a peer rank died, raises :class:`DistributedError`
naming this rank; no collective waits longer than the timeout.

Work is shared in two ways: :func:`shard_range` gives each rank a contiguous slice of n items (images),
:func:`shard_batches` deals whole batches out round-robin, so that the k-th batch of every rank forms the
k-th round of a loop whose rounds end in a collective.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cnn_aliasing.errors import DistributedError, first_line

TIMEOUT_ENV = "CNN_ALIASING_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its ``rank`` among ``world_size`` processes, its ``local_rank`` on its
    node, and the process group's ``backend`` ("nccl", "gloo"; None in a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that prints and writes files."""
        return self.rank == 0

    def meta(self) -> dict[str, Any]:
        """How a result was computed, for its metadata: ``{"world_size": N, "backend": name or None}``."""
        return {"world_size": self.world_size, "backend": self.backend}

    def device(self, device: torch.device) -> torch.device:
        """This rank's device for ``device``: ``cuda:LOCAL_RANK`` for a CUDA device without an index under
        several processes, else ``device`` itself."""
        if device.type == "cuda" and device.index is None and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device


SINGLE = Context()
"""The context of a single process."""


def current() -> Context:
    """The active context: the default process group's rank and size, or :data:`SINGLE` without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Context(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_backend()
    )


def is_main() -> bool:
    """Whether this process is rank 0 (always true in a single process)."""
    return current().is_main


def timeout_seconds() -> float:
    """The collectives' timeout: :data:`TIMEOUT_ENV` seconds if set (a number > 0), else the default."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV}={text!r} is invalid; expected a number of seconds > 0")
    return value


def _world_size_from_env() -> int:
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={text!r} is invalid; expected an integer >= 1") from None


def init_from_env(device: torch.device | str | None = None) -> Context:
    """Join the process group torchrun describes in the environment, or stay a single process.

    With ``WORLD_SIZE`` > 1 (and ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and no group
    yet, initialise the default group: NCCL when ``device`` is CUDA (after selecting ``cuda:LOCAL_RANK``),
    Gloo otherwise, with the timeout of :func:`timeout_seconds`; it is destroyed when the process exits.
    Without that environment nothing is initialised and :data:`SINGLE` is returned. Idempotent: with a
    group already initialised, its context is returned.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world_size = _world_size_from_env()
    if world_size <= 1:
        return SINGLE
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; start the processes with torchrun "
            "(or set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each)"
        )
    if not dist.is_available():
        raise DistributedError(f"WORLD_SIZE={world_size} but this PyTorch build has no torch.distributed")
    cuda = torch.device(device if device is not None else "cpu").type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # a timeout raises here, not in a watchdog
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = timeout_seconds()
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=int(os.environ["RANK"]),
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout),
        )
    except (RuntimeError, ValueError) as error:
        raise DistributedError(
            f"rank {os.environ['RANK']} of {world_size}: cannot start the {backend} process group at "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout:g} s "
            f"({first_line(error)})"
        ) from error
    atexit.register(_destroy)
    return current()


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` (already on ``device``) wrapped in ``DistributedDataParallel`` for the default group:
    gradients averaged over the ranks in backward, rank 0's parameters and buffers broadcast at the start
    and its buffers (BatchNorm statistics) before every forward."""
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard_range(n: int, ctx: Context | None = None) -> range:
    """This rank's contiguous share of ``n`` items: the shares cover 0..n-1 without overlap, in rank order,
    and their sizes differ by at most one (the first ``n % world_size`` ranks get one more; ranks beyond
    ``n`` get an empty range)."""
    ctx = ctx or current()
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (ctx.rank < extra))


def shard_batches(n_batches: int, ctx: Context | None = None) -> range:
    """This rank's batches of ``n_batches``, dealt round-robin (rank r takes r, r + world_size, ...): the
    k-th batches of all ranks are the consecutive batches of round k, so work done round by round is
    always a prefix plus one partial round. Every rank runs :func:`rounds` rounds."""
    ctx = ctx or current()
    return range(ctx.rank, n_batches, ctx.world_size)


def rounds(n_batches: int, ctx: Context | None = None) -> int:
    """How many rounds :func:`shard_batches` deals ``n_batches`` in (the same on every rank)."""
    ctx = ctx or current()
    return -(-n_batches // ctx.world_size)


@contextlib.contextmanager
def collectives(what: str) -> Iterator[None]:
    """Run code whose collectives torch issues itself (DDP's forward and backward) so that a failure in it,
    mostly a peer that died or timed out, becomes a :class:`DistributedError` naming this rank and
    ``what`` was running; nothing is caught in a single process."""
    ctx = current()
    if ctx.world_size == 1:
        yield
        return
    try:
        yield
    except (RuntimeError, ConnectionError) as error:
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size} ({ctx.backend}): {what} failed, a peer rank probably died "
            f"or stopped responding (collectives time out after {timeout_seconds():g} s, set "
            f"{TIMEOUT_ENV} to change it): {first_line(error)}"
        ) from error


def _collective(what: str, call: Callable[[], T]) -> T:
    """Run one collective; a failure (a peer that died, a timeout) becomes a :class:`DistributedError`."""
    with collectives(what):
        return call()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks, in a new tensor on its device; floating-point tensors are
    summed and returned in float64 (integer ones in their dtype). In a single process, a float64 copy."""
    dtype = torch.float64 if tensor.is_floating_point() else tensor.dtype
    ctx = current()
    if ctx.world_size == 1:
        return tensor.to(dtype, copy=True)
    staged = tensor.to("cpu" if ctx.backend == "gloo" else tensor.device, dtype, copy=True)
    _collective("all_reduce", lambda: dist.all_reduce(staged, op=dist.ReduceOp.SUM))
    return staged.to(tensor.device)


def all_gather_object(obj: T, ctx: Context | None = None) -> list[T]:
    """Every rank's ``obj`` (picklable; tensors on the CPU), in rank order; ``[obj]`` in a single process
    (or with ``ctx`` a single-process context: code that stays single-process inside a process group)."""
    ctx = ctx or current()
    if ctx.world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    _collective("all_gather_object", lambda: dist.all_gather_object(gathered, obj))
    return gathered


def broadcast_object(obj: T, src: int = 0, ctx: Context | None = None) -> T:
    """Rank ``src``'s ``obj`` on every rank (the others' argument is ignored); ``obj`` in a single process
    (or with ``ctx`` a single-process context)."""
    if (ctx or current()).world_size == 1:
        return obj
    box: list[Any] = [obj]
    _collective("broadcast_object_list", lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (bounded by the timeout); nothing in a single process."""
    if current().world_size > 1:
        _collective("barrier", dist.barrier)
