"""The fixed models and images of the AutoAttack golden tests (``tests/test_autoattack_golden.py``).

Everything here is made from integers, without any random number generator, so it is the same on every
machine and every torch version: a splitmix64 stream gives 23-bit fractions (exact in float32) that become
weights (scaled by powers of two) and 8-bit images (``k / 255``). The models keep float32 parameters and
take float32 images (the reference AutoAttack casts its inputs to float32) but compute in float64 inside
and return float32 logits (the reference's FAB cannot take float64 logits): the float64 sums of a
convolution or matrix product are rounded to float32 once, so the logits and input gradients hardly
depend on the CPU's summation order (vector width, threads). The attacks' own float32 arithmetic (the
cross-entropy's exp and log, L2 norms) still rounds differently on other CPU capabilities or torch builds,
which is why the golden numbers record theirs.

``make_autoattack_golden.py`` (next to this file) runs the reference on these cases; the test runs ours.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
from torch import nn

N_CLASSES = 10
SHAPE = (3, 8, 8)  # the images of the attack cases
N_IMAGES = 16
N_MISLABELLED = 2  # the first points get a wrong label: the attacks must leave them alone
SCHEDULE_SHAPE = (3, 32, 32)  # the single image of the Square window-side schedule case

_MASK64 = (1 << 64) - 1


def _splitmix64(seed: int, n: int) -> list[int]:
    """``n`` 64-bit outputs of splitmix64 started at ``seed`` (Steele, Lea and Flood 2014)."""
    state, out = seed & _MASK64, []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return out


def symmetric(seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    """Exact float32 values ``scale * (2 u - 1)`` in [-scale, scale), ``u = k / 2**23``, k from splitmix64."""
    n = 1
    for size in shape:
        n *= size
    ints = [v >> 41 for v in _splitmix64(seed, n)]  # 23 bits
    u = torch.tensor(ints, dtype=torch.float64) / 2.0**23
    return (scale * (2.0 * u - 1.0)).to(torch.float32).view(shape)


def pixels(seed: int, shape: tuple[int, ...], low: int = 0, high: int = 255) -> torch.Tensor:
    """Float32 images ``k / 255`` with integers k in [low, high] from splitmix64."""
    n = 1
    for size in shape:
        n *= size
    ints = [low + v % (high - low + 1) for v in _splitmix64(seed, n)]
    return (torch.tensor(ints, dtype=torch.float64) / 255.0).to(torch.float32).view(shape)


class Float64Inside(nn.Module):
    """Runs ``body`` (float32 parameters) in float64 on float32 images in [0, 1], normalised inside to
    ``2 x - 1`` (exact), and returns float32 logits."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 logits of ``body`` computed in float64 (float32 parameters cast on the fly)."""
        out = 2.0 * x.double() - 1.0
        for module in self.body:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                weight = module.weight.double()
                bias = None if module.bias is None else module.bias.double()
                if isinstance(module, nn.Conv2d):
                    out = nn.functional.conv2d(out, weight, bias, module.stride, module.padding)
                else:
                    out = nn.functional.linear(out, weight, bias)
            else:
                out = module(out)
        return out.float()


def tiny_cnn() -> nn.Module:
    """Two 3x3 stride-2 convolutions (3 -> 4 -> 6 channels, ReLU) and a linear layer: 584 parameters."""
    body = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, N_CLASSES),
    )
    _fill(body, seed=11)
    return Float64Inside(body).eval()


def linear_model(shape: tuple[int, ...] = SHAPE, bias_scale: float = 0.25) -> nn.Module:
    """``W x + b`` on the flattened image (10 classes)."""
    dim = 1
    for size in shape:
        dim *= size
    body = nn.Sequential(nn.Flatten(), nn.Linear(dim, N_CLASSES))
    _fill(body, seed=23, bias_scale=bias_scale)
    return Float64Inside(body).eval()


def _fill(body: nn.Sequential, seed: int, bias_scale: float = 0.125) -> None:
    """Overwrite the weights of each layer with ``symmetric`` values in [-2 s, 2 s), ``s`` the power of
    two nearest to ``1 / sqrt(fan_in)``, and its biases with values in [-bias_scale, bias_scale)."""
    with torch.no_grad():
        for index, module in enumerate(m for m in body if isinstance(m, (nn.Conv2d, nn.Linear))):
            fan_in = module.weight[0].numel()
            scale = 2.0 ** -round(0.5 * math.log2(fan_in))
            module.weight.copy_(symmetric(seed + 2 * index, tuple(module.weight.shape), 2 * scale))
            assert module.bias is not None
            module.bias.copy_(symmetric(seed + 2 * index + 1, tuple(module.bias.shape), bias_scale))


MODELS: dict[str, Callable[[], nn.Module]] = {"cnn": tiny_cnn, "linear": linear_model}


def images(n: int = N_IMAGES, shape: tuple[int, ...] = SHAPE, seed: int = 5) -> torch.Tensor:
    """``n`` fixed 8-bit images in [0, 1] (float32)."""
    return pixels(seed, (n, *shape))


def labels_for(model: nn.Module, x: torch.Tensor, n_wrong: int = N_MISLABELLED) -> torch.Tensor:
    """The model's predictions, the first ``n_wrong`` moved one class on (so those are misclassified)."""
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    predicted[:n_wrong] = (predicted[:n_wrong] + 1) % N_CLASSES
    return predicted


def fingerprint(model: nn.Module, *tensors: torch.Tensor) -> str:
    """SHA-256 of the model's parameters and the given tensors (their bytes, in order)."""
    digest = hashlib.sha256()
    for tensor in [*(p.detach() for p in model.state_dict().values()), *tensors]:
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ what the generator and the test record
def point_indices(rows: torch.Tensor, images: torch.Tensor) -> list[int]:
    """The index in ``images`` of each row of ``rows`` (the fixed images are all distinct)."""
    flat, rows = images.flatten(1), rows.detach().flatten(1)
    out = []
    for row in rows:
        hits = (flat == row).all(dim=1).nonzero().flatten().tolist()
        if len(hits) != 1:
            raise RuntimeError("a batch row is none (or several) of the case images")
        out.append(hits[0])
    return out


def sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's float32 bytes."""
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()


def sizes(adv: torch.Tensor, x: torch.Tensor) -> dict[str, list[float]]:
    """Per-point L-inf and L2 size of ``adv - x`` (exact float32 values)."""
    delta = (adv - x).flatten(1)
    return {"delta_linf": delta.abs().amax(dim=1).tolist(), "delta_l2": delta.norm(dim=1).tolist()}


def stripes(delta: torch.Tensor) -> dict[str, bool]:
    """Whether the signs of an (n, c, h, w) perturbation are constant along the height and along the
    width (zeros, where the box clipped the start, ignored)."""
    sign = delta.sign()

    def constant(dim: int) -> bool:
        low = sign.masked_fill(sign == 0, 2).amin(dim=dim)
        high = sign.masked_fill(sign == 0, -2).amax(dim=dim)
        return bool((low >= high).all())

    return {"constant_along_height": constant(2), "constant_along_width": constant(3)}


class Recorder(nn.Module):
    """The model, keeping a copy of every input it sees."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits; ``x`` is kept."""
        self.inputs.append(x.detach().clone())
        return self.model(x)


def run_length(values: list[int]) -> list[list[int]]:
    """``[[value, count], ...]`` of consecutive equal values."""
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return out
