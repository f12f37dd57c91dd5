"""Anti-aliased down-sampling layers: FLC pooling, ASAP and BlurPool, each a function and a module.

Written from the papers' definitions (no code of the public implementations):

- **FLC pooling** (Grabinski et al., ECCV 2022): FFT with forward normalisation, keep the centred
  low-frequency band of the output size (for an even output size the band runs from the negative Nyquist
  frequency -n/2 to n/2 - 1), inverse FFT, real part.
- **ASAP** (Grabinski et al., 2023): FLC pooling with the square root of an outer product of Hamming
  windows (of the spectrum's size) applied to the centred spectrum before the crop; ``pad_to_odd`` first
  zero-pads every even side by one at the end, so the window is centred on DC.
- **BlurPool** (Zhang, ICML 2019): a normalised binomial filter of size 1..7 (taps C(k-1, i) / 2^(k-1),
  the 2-D filter their outer product), reflect padding ((k-1)//2 before, k//2 after), a depthwise
  convolution with the stride.

Every layer takes any (..., H, W) (even, odd, non-square) on any device and dtype; FFTs run in float32 at
least and results come back in the input's dtype. Nothing is cached between calls (no window kept from a
first input size). Each module is a :class:`cnn_aliasing.downsamplers.DeclaredDownsampler`, so
``measure`` finds and measures it: ``full_resolution_forward`` returns the op at full resolution, whose
``[..., ::s, ::t]`` slice is the real output. For BlurPool that is the stride-1 blur. For FLC and ASAP it
is the band-limited signal the output samples: the kept (windowed) spectrum placed on the (s n) x (t m)
grid and transformed back, real part; the real output is exactly its slice (folding a spectrum that lives
on the kept band only gives the crop back), so the engine measures the op on its own terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.runtime import check_maps
from cnn_aliasing.validation import is_int_pair

MAX_BLUR_SIZE = 7

Pair = tuple[int, int]


def strided_output_size(
    size: int, factor: int, kernel_size: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a strided window op (stride ``factor``) on an axis of length ``size``:
    ``floor((size + 2 padding - dilation (kernel - 1) - 1) / factor) + 1``; by default ceil(size / factor)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // factor + 1


# ---- FLC pooling and ASAP ------------------------------------------------------------------------------


def kept_frequencies(n: int) -> list[int]:
    """The signed frequencies an output of n samples keeps, in the order of its DFT bins 0..n-1:
    0..ceil(n/2)-1, then -floor(n/2)..-1 (for even n, -n/2 is the negative Nyquist frequency)."""
    return [j if j < (n + 1) // 2 else j - n for j in range(n)]


def sqrt_hamming(length: int, frequencies: Sequence[int]) -> torch.Tensor:
    """sqrt of the symmetric Hamming window of ``length`` taps at the centred positions of these signed
    frequencies (DC sits at ``length // 2`` of the centred spectrum), float64.

    Hamming: w[i] = 0.54 - 0.46 cos(2 pi i / (length - 1)); a window of one tap is 1.
    """
    i = torch.tensor([f + length // 2 for f in frequencies], dtype=torch.float64)
    if length == 1:
        return torch.ones_like(i)
    return (0.54 - 0.46 * torch.cos(2 * math.pi * i / (length - 1))).sqrt()


def _spectral_pool(
    x: torch.Tensor,
    factor: Pair,
    output_size: Pair | None,
    *,
    window: bool,
    pad_to_odd: bool,
    full_resolution: bool,
    what: str,
) -> torch.Tensor:
    check_maps(x, what)
    dtype = x.dtype
    maps = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    if pad_to_odd:
        maps = F.pad(maps, (0, 1 - maps.shape[-1] % 2, 0, 1 - maps.shape[-2] % 2))
    h, w = maps.shape[-2:]
    n, m = output_size or (
        strided_output_size(x.shape[-2], factor[0]),
        strided_output_size(x.shape[-1], factor[1]),
    )
    if not (1 <= n <= h and 1 <= m <= w):
        raise CnnAliasingError(f"{what}: output size {(n, m)} does not fit maps of size {(h, w)}")
    rows, cols = kept_frequencies(n), kept_frequencies(m)
    spec = torch.fft.fft2(maps, norm="forward")
    device = spec.device
    kept = spec.index_select(-2, torch.tensor([k % h for k in rows], device=device))
    kept = kept.index_select(-1, torch.tensor([k % w for k in cols], device=device))
    if window:
        real = spec.real.dtype
        kept = kept * (sqrt_hamming(h, rows)[:, None] * sqrt_hamming(w, cols)[None, :]).to(device, real)
    if full_resolution:
        big_h, big_w = factor[0] * n, factor[1] * m
        on_rows = kept.new_zeros((*kept.shape[:-2], big_h, m))
        on_rows = on_rows.index_copy(-2, torch.tensor([k % big_h for k in rows], device=device), kept)
        kept = on_rows.new_zeros((*kept.shape[:-2], big_h, big_w))
        kept = kept.index_copy(-1, torch.tensor([k % big_w for k in cols], device=device), on_rows)
    return torch.fft.ifft2(kept, norm="forward").real.to(dtype)


def flc_pool(
    x: torch.Tensor,
    factor: int | Sequence[int] = 2,
    *,
    output_size: int | Sequence[int] | None = None,
    full_resolution: bool = False,
) -> torch.Tensor:
    """FLC pooling of the maps x (..., H, W) by ``factor``: the centred low-frequency band of the output
    size (default ceil(H/s) x ceil(W/t)) of FFT2(x) / (H W), transformed back, real part.

    ``full_resolution=True`` returns the same band on the (s n) x (t m) grid, whose [..., ::s, ::t] slice
    is the output (see the module docstring).
    """
    f = is_int_pair(1)(factor, "factor")
    size = None if output_size is None else is_int_pair(1)(output_size, "output_size")
    return _spectral_pool(
        x, f, size, window=False, pad_to_odd=False, full_resolution=full_resolution, what="flc_pool"
    )


def asap_pool(
    x: torch.Tensor,
    factor: int | Sequence[int] = 2,
    *,
    output_size: int | Sequence[int] | None = None,
    pad_to_odd: bool = False,
    full_resolution: bool = False,
) -> torch.Tensor:
    """ASAP pooling: as :func:`flc_pool` with sqrt(hamming(H) hamming(W)^T) applied to the centred spectrum
    before the crop. ``pad_to_odd`` zero-pads each even side by one (bottom, right) first, so that the
    window is symmetric about DC; the output size is that of the unpadded maps."""
    f = is_int_pair(1)(factor, "factor")
    size = None if output_size is None else is_int_pair(1)(output_size, "output_size")
    if size is None:
        size = (strided_output_size(x.shape[-2], f[0]), strided_output_size(x.shape[-1], f[1]))
    return _spectral_pool(
        x, f, size, window=True, pad_to_odd=pad_to_odd, full_resolution=full_resolution, what="asap_pool"
    )


class _SpectralPool(nn.Module):
    """Shared by FLCPool and ASAPPool: a factor and the window geometry that fixes the output size."""

    downsampling_kind = "spectral_pool"

    def __init__(
        self,
        factor: int | Sequence[int] = 2,
        *,
        kernel_size: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        self.factor = is_int_pair(1)(factor, "factor")
        self.kernel_size = is_int_pair(1)(kernel_size, "kernel_size")
        self.padding = is_int_pair(0)(padding, "padding")
        self.dilation = is_int_pair(1)(dilation, "dilation")

    @property
    def downsampling_factor(self) -> Pair:
        return self.factor

    def output_size(self, x: torch.Tensor) -> Pair:
        """The output (H, W): that of a strided op with this factor and window geometry (default
        ceil(H/s) x ceil(W/t)), so the layer is a drop-in for it."""
        h, w = x.shape[-2:]
        return (
            strided_output_size(h, self.factor[0], self.kernel_size[0], self.padding[0], self.dilation[0]),
            strided_output_size(w, self.factor[1], self.kernel_size[1], self.padding[1], self.dilation[1]),
        )

    def extra_repr(self) -> str:
        return f"factor={self.factor}, kernel_size={self.kernel_size}, padding={self.padding}"


class FLCPool(_SpectralPool):
    """FLC pooling (:func:`flc_pool`) as a module and a declared down-sampler.

    ``kernel_size``/``padding``/``dilation`` only size the output like the strided op it replaces.
    """

    downsampling_kind = "flc_pool"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flc_pool(x, self.factor, output_size=self.output_size(x))

    def full_resolution_forward(self, x: torch.Tensor) -> torch.Tensor:
        return flc_pool(x, self.factor, output_size=self.output_size(x), full_resolution=True)


class ASAPPool(_SpectralPool):
    """ASAP pooling (:func:`asap_pool`) as a module and a declared down-sampler."""

    downsampling_kind = "asap_pool"

    def __init__(
        self, factor: int | Sequence[int] = 2, *, pad_to_odd: bool = False, **geometry: int | Sequence[int]
    ) -> None:
        super().__init__(factor, **geometry)
        if not isinstance(pad_to_odd, bool):
            raise CnnAliasingError(f"ASAPPool: pad_to_odd must be true or false, got {pad_to_odd!r}")
        self.pad_to_odd = pad_to_odd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return asap_pool(x, self.factor, output_size=self.output_size(x), pad_to_odd=self.pad_to_odd)

    def full_resolution_forward(self, x: torch.Tensor) -> torch.Tensor:
        return asap_pool(
            x, self.factor, output_size=self.output_size(x), pad_to_odd=self.pad_to_odd, full_resolution=True
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad_to_odd={self.pad_to_odd}"


# ---- BlurPool --------------------------------------------------------------------------------------------


def binomial_taps(size: int) -> list[float]:
    """The normalised binomial filter of ``size`` taps: C(size-1, i) / 2^(size-1), i = 0..size-1."""
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BLUR_SIZE:
        raise CnnAliasingError(f"filter_size must be an int in 1..{MAX_BLUR_SIZE}, got {size!r}")
    return [math.comb(size - 1, i) / 2 ** (size - 1) for i in range(size)]


def _reflect_indices(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of reflect padding (edge sample not repeated), for any pad and any length, even 1."""
    positions = torch.arange(-before, length + after, device=device)
    if length == 1:
        return torch.zeros_like(positions)
    period = 2 * (length - 1)
    folded = positions.remainder(period)
    return torch.where(folded < length, folded, period - folded)


def blur_pool(x: torch.Tensor, filter_size: int = 3, stride: int | Sequence[int] = 2) -> torch.Tensor:
    """BlurPool of the maps x (..., H, W): reflect padding ((k-1)//2 before, k//2 after), the normalised
    binomial k x k filter applied to every map (a depthwise convolution), then the stride: output
    ceil(H/s) x ceil(W/t). ``stride=1`` is the blur at full resolution."""
    check_maps(x, "blur_pool")
    s = is_int_pair(1)(stride, "stride")
    taps = torch.tensor(binomial_taps(filter_size), dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    channels = x.shape[-3] if x.dim() >= 3 else 1
    maps = x.reshape(-1, channels, h, w)  # depthwise convolutions: one group per channel
    before, after = (filter_size - 1) // 2, filter_size // 2
    if max(before, after) < min(h, w):
        maps = F.pad(maps, (before, after, before, after), mode="reflect")
    else:  # pads longer than the map: reflect as often as needed
        maps = maps.index_select(-2, _reflect_indices(h, before, after, x.device))
        maps = maps.index_select(-1, _reflect_indices(w, before, after, x.device))
    # the binomial filter is separable: a column pass with the row stride, then a row pass
    maps = F.conv2d(
        maps, taps.view(1, 1, -1, 1).expand(channels, 1, filter_size, 1), stride=(s[0], 1), groups=channels
    )
    out = F.conv2d(
        maps, taps.view(1, 1, 1, -1).expand(channels, 1, 1, filter_size), stride=(1, s[1]), groups=channels
    )
    return out.reshape(*lead, *out.shape[-2:])


class BlurPool(nn.Module):
    """BlurPool (:func:`blur_pool`) as a module and a declared down-sampler. The filter is made per call in
    the input's dtype and device (no buffer: state dicts of strided models load unchanged)."""

    downsampling_kind = "blur_pool"

    def __init__(self, filter_size: int = 3, stride: int | Sequence[int] = 2) -> None:
        super().__init__()
        binomial_taps(filter_size)  # checks the size
        self.filter_size = filter_size
        self.stride = is_int_pair(1)(stride, "stride")

    @property
    def downsampling_factor(self) -> Pair:
        return self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur_pool(x, self.filter_size, self.stride)

    def full_resolution_forward(self, x: torch.Tensor) -> torch.Tensor:
        return blur_pool(x, self.filter_size, 1)

    def extra_repr(self) -> str:
        return f"filter_size={self.filter_size}, stride={self.stride}"
