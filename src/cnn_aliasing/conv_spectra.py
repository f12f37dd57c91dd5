"""The aliasing of a strided convolution from its input's spectra: its stride-1 output is never formed.

For a 2-D convolution (cross-correlation) with stride (s, t) the full-resolution output x is the same
convolution at stride 1, zero-padded at the end to (Hm, Wm), the multiples of (s, t). Its alias-free
spectrum Z is X at the kept bins (see :mod:`cnn_aliasing.spectral`), and its actual spectrum Y is the
spectrum of the op's real output, which the forward pass computes anyway. X is found by linearity:

- Q is the zero-padded input cropped (or zero-extended) to (Hm, Wm). Its circular convolution x_c with
  the kernel has, per bin, the spectrum ``K[o, c] * Q^[c]`` summed over the input channels c of output
  channel o's group, where ``K[o, c, k, l] = sum_ij w[o, c, i, j] exp(2 pi i (k i dh / Hm + l j dw / Wm))``
  is the kernel's response: a small product per kept bin instead of a convolution at every pixel.
- x and x_c differ only where a window wraps around the end of Q, and where x is the zero-padding to a
  multiple: in a band of the last rows (from ``r0``) and of the last columns (from ``c0``), each as wide
  as the dilated kernel less one (plus the padding to the multiple). There the difference D = x - x_c is
  a convolution of the difference of the two inputs (the true zero-padded one less the wrapped one),
  computed on the bands alone, and its spectrum is added at the kept bins.

So Z = K Q^ + D^ + bias (at DC), exactly, for any kernel, padding, dilation, groups and factor. The costs
are FFTs of the input's channels, a product per kept bin, a convolution over two thin bands and the FFT
of the small real output: for a stem (3 input channels) or a patchify conv this is a fraction of the
stride-1 convolution and the FFT of its many output channels.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnn_aliasing import spectral
from cnn_aliasing.spectral import Nyquist

_TWO_PI = 2 * torch.pi


@dataclass(frozen=True)
class ConvGeometry:
    """The sizes of one strided convolution call: input (H, W), kernel, padding, dilation and factor."""

    in_size: tuple[int, int]
    kernel: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    factor: tuple[int, int]

    @property
    def reach(self) -> tuple[int, int]:
        """How far a window reaches past its first row and column: (kh - 1) dh, (kw - 1) dw."""
        return tuple((k - 1) * d for k, d in zip(self.kernel, self.dilation, strict=True))  # type: ignore[return-value]

    @property
    def full_size(self) -> tuple[int, int]:
        """(Hf, Wf) of the stride-1 output: the padded input less the window's reach."""
        return tuple(n + 2 * p - r for n, p, r in zip(self.in_size, self.padding, self.reach, strict=True))  # type: ignore[return-value]

    @property
    def grid_size(self) -> tuple[int, int]:
        """(Hm, Wm): the full size padded to multiples of the factor."""
        return tuple(n + (-n % f) for n, f in zip(self.full_size, self.factor, strict=True))  # type: ignore[return-value]

    @property
    def band_start(self) -> tuple[int, int]:
        """(r0, c0): the first row and column where x and the circular convolution x_c may differ."""
        return tuple(  # type: ignore[return-value]
            max(0, min(f, m - r)) for f, m, r in zip(self.full_size, self.grid_size, self.reach, strict=True)
        )

    def supported(self) -> bool:
        """Whether the full output is at least as large as the factor and the window's reach, on both axes
        (the circular extension then wraps at most once)."""
        return all(
            f >= s and m > r
            for f, s, m, r in zip(self.full_size, self.factor, self.grid_size, self.reach, strict=True)
        )


def group_channels(groups: torch.Tensor, size: int) -> torch.Tensor:
    """The channels of ``groups`` (indices of groups of ``size`` consecutive channels), group by group."""
    return (groups[:, None] * size + torch.arange(size, device=groups.device)).reshape(-1)


def _twiddles(
    samples: Sequence[int], frequencies: Sequence[int | None], period: int, sign: int
) -> torch.Tensor:
    """Complex (len(samples), len(frequencies)) matrix exp(sign 2 pi i f n / period) in float64 (None: 0)."""
    n = torch.tensor(list(samples), dtype=torch.float64)[:, None]
    f = torch.tensor([0 if k is None else k for k in frequencies], dtype=torch.float64)[None, :]
    angle = sign * _TWO_PI * n * f / period
    matrix = torch.polar(torch.ones_like(angle), angle)
    missing = [i for i, k in enumerate(frequencies) if k is None]
    if missing:
        matrix[:, missing] = 0
    return matrix


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _runs(items: Sequence[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Consecutive items of one kind as (kind, first index, count): "direct" indices rising by one,
    "mirror" indices falling by one, "zero" any."""
    runs: list[tuple[str, int, int]] = []
    for kind, index in items:
        if runs:
            last_kind, first, count = runs[-1]
            step = {"direct": count, "mirror": -count, "zero": 0}[kind]
            if last_kind == kind and (kind == "zero" or index == first + step):
                runs[-1] = (kind, first, count + 1)
                continue
        runs.append((kind, index, 1))
    return runs


@functools.lru_cache(maxsize=1024)
def _index_runs(indices: tuple[int | None, ...], size: int, half: bool) -> tuple[tuple[str, int, int], ...]:
    """The runs of :func:`_runs` for taking ``indices`` (see :func:`_take`), kept for the next call with
    the same indices (every chunk and batch of an op asks for the same ones)."""
    items = [
        ("zero", 0) if f is None else ("mirror", size - f) if half and f > size // 2 else ("direct", f)
        for f in indices
    ]
    return tuple(_runs(items))


def _pieces(
    tensor: torch.Tensor, dim: int, indices: Sequence[int | None], size: int, half: bool
) -> list[torch.Tensor]:
    """The slices of ``tensor`` along ``dim`` that :func:`_take` joins."""
    pieces = []
    for kind, first, count in _index_runs(tuple(indices), size, half):
        if kind == "direct":
            pieces.append(tensor.narrow(dim, first, count))
        elif kind == "mirror":
            pieces.append(tensor.narrow(dim, first - count + 1, count).flip(dim).conj())
        else:
            shape = list(tensor.shape)
            shape[dim] = count
            pieces.append(tensor.new_zeros(shape))
    return pieces


def _take(
    tensor: torch.Tensor,
    dim: int,
    indices: Sequence[int | None],
    size: int = 0,
    half: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``tensor``'s entries ``indices`` (None: a zero) along ``dim``, by slices (a view where they are one
    run), into ``out`` if given. With ``half``, ``tensor`` is an rFFT along ``dim`` of real maps of length
    ``size``: a frequency above size / 2 is the conjugate of its mirror."""
    pieces = _pieces(tensor, dim, indices, size, half)
    if out is not None:
        return torch.cat(pieces, dim=dim, out=out)
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


def _any_where_zeroed(frequencies: Sequence[int | None]) -> list[int | None]:
    """The frequencies with each None (a bin whose Z is set afterwards) replaced by the bin's own index,
    so that the kept bins form fewer runs (fewer copies)."""
    return [k if f is None else f for k, f in enumerate(frequencies)]


def _pad_or_crop(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """``F.pad(x, pads)`` (left, right, top, bottom; a negative pad crops) without filling the whole output
    first: the kept part copied once, zeros written only where rows or columns are added."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    kept = x[..., max(0, -top) : h - max(0, -bottom), max(0, -left) : w - max(0, -right)]
    out = x.new_empty((*x.shape[:-2], h + top + bottom, w + left + right))
    row, column = max(0, top), max(0, left)
    height, width = kept.shape[-2:]
    out[..., row : row + height, column : column + width] = kept
    out[..., :row, :] = 0
    out[..., row + height :, :] = 0
    out[..., row : row + height, :column] = 0
    out[..., row : row + height, column + width :] = 0
    return out


def _input_index(position: int, pad: int, size: int) -> int | None:
    """For a row (or column) of the zero-padded input, the input's row (None: a zero of the padding)."""
    source = position - pad
    return source if 0 <= source < size else None


def _source_runs(indices: Sequence[int | None]) -> list[tuple[int, int, int]]:
    """(position, first source index, count) of each run of ``indices`` rising by one (None: skipped)."""
    runs, position = [], 0
    for kind, first, count in _index_runs(tuple(indices), 0, False):
        if kind == "direct":
            runs.append((position, first, count))
        position += count
    return runs


def _window(
    x: torch.Tensor,
    rows: Sequence[int | None],
    columns: Sequence[int | None],
    less: torch.Tensor | None = None,
) -> torch.Tensor:
    """x[..., rows, columns] where None gives zeros, or with ``less``, ``less`` minus it in place: a copy
    (or subtraction) of one block per pair of runs of consecutive rows and columns."""
    out = x.new_zeros((*x.shape[:-2], len(rows), len(columns))) if less is None else less
    for row, first_row, height in _source_runs(rows):
        for column, first_column, width in _source_runs(columns):
            block = out[..., row : row + height, column : column + width]
            source = x[..., first_row : first_row + height, first_column : first_column + width]
            if less is None:
                block.copy_(source)
            else:
                block.sub_(source)
    return out


def _band_difference(
    x: torch.Tensor,
    convolve: Callable[[torch.Tensor, bool], torch.Tensor],
    geometry: ConvGeometry,
    rows: range,
    columns: range,
) -> torch.Tensor:
    """D = x - x_c on the given output rows and columns of the grid: the convolution (``convolve(inputs,
    with_bias)``, valid, stride 1) of the true zero-padded input less the wrapped one (Q extended
    circularly), and, where x is the zero-padding to a multiple, minus x_c."""
    (hin, win), (ph, pw), (eh, ew), (hm, wm) = (
        geometry.in_size,
        geometry.padding,
        geometry.reach,
        geometry.grid_size,
    )
    r = range(rows.start, rows.stop + eh)
    c = range(columns.start, columns.stop + ew)
    true_rows, true_columns = [_input_index(i, ph, hin) for i in r], [_input_index(j, pw, win) for j in c]
    wrapped_rows = [_input_index(i % hm, ph, hin) for i in r]
    wrapped_columns = [_input_index(j % wm, pw, win) for j in c]
    hf, wf = geometry.full_size
    if all(i >= hf for i in rows) or all(j >= wf for j in columns):  # all zero-padding to the multiple
        return -convolve(_window(x, wrapped_rows, wrapped_columns), True)
    true_input = _window(x, true_rows, true_columns)
    difference = convolve(_window(x, wrapped_rows, wrapped_columns, less=true_input), False)
    if any(i >= hf for i in rows) or any(j >= wf for j in columns):
        outside_rows = torch.tensor([i >= hf for i in rows], device=x.device)
        outside_columns = torch.tensor([j >= wf for j in columns], device=x.device)
        wrapped_output = convolve(_window(x, wrapped_rows, wrapped_columns), True)
        difference = torch.where(
            outside_rows[:, None] | outside_columns[None, :], -wrapped_output, difference
        )
    return difference


ELEMENTWISE_MIX_CHANNELS = 16
"""Groups of at most this many input channels are mixed by a multiply-add per input channel; wider ones by
batched real matrix products over the kept bins."""

CHUNK_ELEMENTS = 1 << 19
"""Images are processed in chunks whose kept spectra hold about this many complex values (4 MiB), so that
the intermediate spectra stay in cache on the CPU."""


@dataclass(frozen=True)
class ConvCall:
    """One strided convolution call: its input (B, C_in, H, W), weight, bias, geometry and groups."""

    input: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    geometry: ConvGeometry
    groups: int


class ConvSpectra:
    """The part of a convolution's spectral measurement that does not depend on the images: the kept
    frequencies and the kernel's response at them, in the layout the mix wants. Build it once per op and
    reuse it across batches (:meth:`fits` tells whether a call still matches it)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geometry: ConvGeometry,
        groups: int,
        nyquist: Nyquist,
    ) -> None:
        self.source = (weight, bias)
        self.versions = (weight._version, None if bias is None else bias._version)
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        self.weight = weight.detach().to(dtype)
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.geometry = geometry
        self.groups = groups
        self.nyquist = nyquist
        hm, wm = geometry.grid_size
        self.grid = spectral.Grid(hm, wm, geometry.factor, nyquist)
        self.rows, self.columns = self.grid.rows(), self.grid.columns()
        # the input's spectra are taken at these (a zeroed Nyquist bin is set from Y at the end)
        self.input_rows, self.input_columns = _any_where_zeroed(self.rows), _any_where_zeroed(self.columns)
        self._response: torch.Tensor | None = None
        self._twiddles: tuple[torch.Tensor, torch.Tensor] | None = None
        self.input_index: torch.Tensor | None = None  # the input channels read (None: all)

    def fits(self, call: ConvCall) -> bool:
        """Whether ``call`` has this plan's weight and bias (unchanged since) and geometry."""
        weight, bias = self.source
        versions = (call.weight._version, None if call.bias is None else call.bias._version)
        return (
            call.weight is weight
            and call.bias is bias
            and versions == self.versions
            and call.geometry == self.geometry
            and call.groups == self.groups
        )

    def select(self, index: torch.Tensor) -> ConvSpectra | None:
        """The plan of the output channels ``index`` alone, or None for a grouped convolution mixed by
        matrix products (its selected channels would no longer form equal groups). The selected channels of
        a grouped convolution read only their groups' input channels: a convolution with one group each."""
        c_out, per_group = self.weight.shape[:2]
        if self.groups != 1 and per_group > ELEMENTWISE_MIX_CHANNELS:
            return None
        plan = copy.copy(self)
        plan.weight = self.weight.index_select(0, index)
        plan.bias = None if self.bias is None else self.bias.index_select(0, index)
        plan._response = None
        if self.groups != 1:
            plan.input_index = group_channels(index // (c_out // self.groups), per_group)
            plan.groups = index.numel()
        return plan

    @property
    def _elementwise(self) -> bool:
        return self.weight.shape[1] <= ELEMENTWISE_MIX_CHANNELS

    def response(self) -> torch.Tensor:
        """K at the kept bins: (C_out, I, n, L) complex for the multiply-add mix; for the matrix mix, the
        real and imaginary parts stacked per group as (G, n L, 2 C_out / G, I)."""
        if self._response is None:
            self._response = self._kernel_response()
        return self._response

    def _kernel_response(self) -> torch.Tensor:
        """K as one real matrix product: the weights (C_out I, kh kw) against the cos and sin of every tap
        at every kept bin (complex products are slow on the CPU)."""
        (kh, kw), (dh, dw), (hm, wm) = self.geometry.kernel, self.geometry.dilation, self.geometry.grid_size
        c_out, per_group = self.weight.shape[:2]
        n, l = len(self.rows), len(self.columns)
        along_h = _twiddles([i * dh for i in range(kh)], self.rows, hm, +1)  # (kh, n)
        along_w = _twiddles([j * dw for j in range(kw)], self.columns, wm, +1)  # (kw, L)
        taps = (along_h[:, None, :, None] * along_w[None, :, None, :]).reshape(kh * kw, n * l)
        matrix = torch.cat([taps.real, taps.imag], dim=1).to(
            dtype=self.weight.dtype, device=self.weight.device
        )
        # bins first: (re | im, n L) x (C_out I), so that each bin's matrix is a contiguous block
        parts = (matrix.transpose(0, 1) @ self.weight.reshape(-1, kh * kw).transpose(0, 1)).reshape(
            2, n * l, -1
        )
        if self._elementwise:
            complex_parts = torch.complex(parts[0], parts[1]).transpose(0, 1)  # (C_out I, n L)
            return complex_parts.reshape(c_out, per_group, n, l).contiguous()
        groups, out_per_group = self.groups, c_out // self.groups
        stacked = parts.reshape(2, n * l, groups, out_per_group * per_group).permute(2, 1, 0, 3)
        return stacked.reshape(groups, n * l, 2 * out_per_group, per_group).contiguous()

    def per_map_metrics(
        self, call: ConvCall, output: torch.Tensor, metrics: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The metrics (each (B, C_out)) of every map of the call's full-resolution output, from its input
        and its real ``output`` (B, C_out, Hm / s, Wm / t), of this plan's output channels."""
        x = call.input.detach()
        if self.input_index is not None:
            x = x.index_select(1, self.input_index)
        x = x.to(self.weight.dtype)
        output = output.detach().to(self.weight.dtype)
        c_out = self.weight.shape[0]
        n, l = len(self.rows), len(self.columns)
        step = max(1, CHUNK_ELEMENTS // max(1, c_out * n * l))
        if not self._elementwise:
            step = x.shape[0]  # the matrix mix reads K once a chunk: all images at once
        bands = self._band_factors(x)  # thin: all images at once (one call, not one a chunk)
        results: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
        for first in range(0, x.shape[0], step):
            chunk, maps = slice(first, first + step), slice(first * c_out, (first + step) * c_out)
            chunk_bands = None if bands is None else (bands[0][maps], bands[1][maps])
            spectra = self._small_spectra(x[chunk], output[chunk], chunk_bands)
            for name in metrics:
                results[name].append(spectral.PER_MAP_METRICS[name](spectra).reshape(-1, c_out))
        return {name: torch.cat(parts) for name, parts in results.items()}

    def _small_spectra(
        self, x: torch.Tensor, output: torch.Tensor, bands: tuple[torch.Tensor, torch.Tensor] | None
    ) -> spectral.SmallSpectra:
        """Y (from the real output) and Y - Z (Z from the input) of the maps of these images, (B C_out, n,
        L): Y less the mix K Q^, less the bias at DC, less the bands' spectrum D^ (``bands``, these
        images' factors from :meth:`_band_factors`); at a zeroed Nyquist bin Z is 0, so Y - Z is Y."""
        n, l = len(self.rows), len(self.columns)
        y = spectral.grid_spectrum(output, self.grid)
        alias = self._subtract_mix(y, self._input_spectra(x))
        if self.bias is not None:
            alias[:, :, 0, 0] -= self.bias
        if bands is not None:
            alias.view(-1, n, l).baddbmm_(*bands, alpha=-1)
        y, alias = y.reshape(-1, n, l), alias.view(-1, n, l)
        if self.grid.half:
            spectral.copy_nyquist(alias, y, self.grid)
        return spectral.SmallSpectra(
            y.real, y.imag, alias.real, alias.imag, self.grid.weights(x.device), None
        )

    def _input_spectra(self, x: torch.Tensor) -> torch.Tensor:
        """Q^ at the kept bins, (B, C_in, n, L) complex, normalised by Hm Wm: per few images (transforms that
        stay in cache) an rFFT along W, the kept columns, an FFT along H of those, the kept rows."""
        g = self.geometry
        (hin, win), (ph, pw), (hm, wm) = g.in_size, g.padding, g.grid_size
        pads = (pw, wm - win - pw, ph, hm - hin - ph)
        n, l = len(self.rows), len(self.columns)
        spectra = x.new_empty((*x.shape[:2], n, l), dtype=_complex_dtype(x.dtype))
        step = max(1, CHUNK_ELEMENTS // max(1, x[0].numel()))
        for first in range(0, x.shape[0], step):
            part = x[first : first + step]
            q = _pad_or_crop(part, pads) if any(pads) else part
            along_w = _take(torch.fft.rfft(q, dim=-1, norm="forward"), -1, self.input_columns, wm, half=True)
            along_h = torch.fft.fft(along_w, dim=-2, norm="forward")
            _take(along_h, -2, self.input_rows, hm, out=spectra[first : first + step])
        return spectra

    def _band_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """D^ at the kept bins as one batched product left @ right, (B C_out, n, e) and (B C_out, e, L), or
        None where x and x_c agree everywhere. The band of the last rows (from r0) is an rFFT along W at
        the kept columns, put in place along H by a twiddle product; the band of the last columns (from
        c0, rows above r0) an FFT along H at the kept rows, put in place along W by a twiddle product."""
        g = self.geometry
        (hm, wm), (r0, c0) = g.grid_size, g.band_start
        row_twiddle, column_twiddle = self._band_twiddles()
        maps, n, l = x.shape[0] * self.weight.shape[0], len(self.rows), len(self.columns)
        lefts, rights = [], []
        if r0 < hm:
            band = _band_difference(x, self._convolve, g, range(r0, hm), range(wm))  # (B, C_out, e, Wm)
            along_w = _take(torch.fft.rfft(band, dim=-1, norm="forward"), -1, self.input_columns, wm, True)
            lefts.append(row_twiddle.expand(maps, n, hm - r0))
            rights.append(along_w.reshape(maps, hm - r0, l))
        if c0 < wm and r0 > 0:
            band = _band_difference(x, self._convolve, g, range(r0), range(c0, wm))  # (B, C_out, r0, e)
            along_h = _take(torch.fft.fft(band, n=hm, dim=-2, norm="forward"), -2, self.input_rows)
            lefts.append(along_h.reshape(maps, n, wm - c0))
            rights.append(column_twiddle.expand(maps, wm - c0, l))
        if not lefts:
            return None
        return torch.cat(lefts, dim=-1), torch.cat(rights, dim=-2)

    def _band_twiddles(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The bands' twiddle matrices, (n, Hm - r0) and (Wm - c0, L), divided by Hm and Wm."""
        if self._twiddles is None:
            (hm, wm), (r0, c0) = self.geometry.grid_size, self.geometry.band_start
            rows = _twiddles(range(r0, hm), self.input_rows, hm, -1).transpose(0, 1) / hm
            columns = _twiddles(range(c0, wm), self.input_columns, wm, -1) / wm
            dtype, device = _complex_dtype(self.weight.dtype), self.weight.device
            self._twiddles = (rows.to(device, dtype).contiguous(), columns.to(device, dtype))
        return self._twiddles

    def _convolve(self, inputs: torch.Tensor, with_bias: bool) -> torch.Tensor:
        """This plan's convolution at stride 1 without padding over ``inputs`` (its input channels)."""
        bias = self.bias if with_bias else None
        return F.conv2d(inputs, self.weight, bias, 1, 0, self.geometry.dilation, self.groups)

    def _subtract_mix(self, y: torch.Tensor, spectra: torch.Tensor) -> torch.Tensor:
        """Y less the spectrum of the circular convolution, sum_c K[o, c] Q^[b, c] per bin: (B, C_out, n,
        L), a new contiguous tensor."""
        c_out, per_group = self.weight.shape[:2]
        batch, _, n, l = spectra.shape
        if self.geometry.kernel == (1, 1) and not self._elementwise and self.groups == 1:
            q = torch.view_as_real(spectra).reshape(batch, per_group, n * l * 2)
            y_parts = torch.view_as_real(y).reshape(batch, c_out, n * l * 2)
            weight = self.weight.flatten(1).expand(batch, c_out, per_group)
            return torch.view_as_complex(
                torch.baddbmm(y_parts, weight, q, alpha=-1).view(batch, c_out, n, l, 2)
            )
        if not self._elementwise:
            return y - self._matrix_mix(spectra)
        groups = self.groups
        response = self.response().view(groups, c_out // groups, per_group, n, l)
        q = spectra.view(batch, groups, 1, per_group, n, l)
        alias = torch.addcmul(
            y.view(batch, groups, c_out // groups, n, l), response[:, :, 0], q[:, :, :, 0], value=-1
        )
        for c in range(1, per_group):
            alias.addcmul_(response[:, :, c], q[:, :, :, c], value=-1)
        return alias.view(batch, c_out, n, l)

    def _matrix_mix(self, spectra: torch.Tensor) -> torch.Tensor:
        """sum_c K[o, c] Q^[b, c] per bin by batched real matrix products over the bins, (B, C_out, n, L)."""
        c_out, per_group = self.weight.shape[:2]
        batch, _, n, l = spectra.shape
        response = self.response()
        groups, out_per_group = self.groups, c_out // self.groups
        q = torch.view_as_real(spectra).reshape(batch, groups, per_group, n * l, 2)
        q = q.permute(1, 3, 2, 4, 0).reshape(groups, n * l, per_group, 2 * batch)  # (G, nl, I, [re | im] x B)
        p = torch.matmul(response, q)  # (G, nl, 2 O/G, 2 B): rows [Kr; Ki], columns [Qr | Qi]
        real = p[:, :, :out_per_group, :batch] - p[:, :, out_per_group:, batch:]
        imag = p[:, :, :out_per_group, batch:] + p[:, :, out_per_group:, :batch]
        mixed = torch.complex(real, imag)  # (G, nl, O/G, B)
        return mixed.permute(3, 0, 2, 1).reshape(batch, c_out, n, l)


# Costs per image of the two routes, in nanoseconds on one CPU core, measured on the shapes of ResNet-50,
# EfficientNet-B0, MobileNetV3, RegNetY and ConvNeXt ops (benchmarks/bench_measure_imagenet.py): per
# multiply-add of a stride-1 convolution (dense, grouped with at least 8 input channels per group, thinner
# groups), the factor a band's convolution costs over a full one (thin shapes), per value of a
# full-resolution map transformed and measured (by DFT matrices up to spectral.DFT_MAX_SIZE, by FFTs
# above: large maps also cost their allocation), per input value whose kept spectrum is taken, per complex
# multiply-add of the mix (a multiply-add per channel, or matrix products), per value of the small grid
# measured.
CONV_COSTS = {"dense": 0.03, "grouped": 0.1, "thin": 0.5}
BAND_FACTOR = 3.0
FULL_MAP_COSTS = {"dft": 5.0, "fft": 10.0}
INPUT_SPECTRUM_COST = 4.0
MIX_COSTS = {"elementwise": 1.5, "matrix": 0.2, "pointwise": 0.06}
SMALL_GRID_COST = 5.0
ROUTE_MARGIN = 0.7
"""The spectral route is taken where its estimated cost is below this share of the stride-1 route's (the
estimates are rough; the two routes give the same values)."""


def spectral_route_pays(call: ConvCall, channels: int) -> bool:
    """Whether measuring ``channels`` output channels of ``call`` from its input's spectra is estimated to
    cost clearly less than forming their stride-1 output and transforming it."""
    g = call.geometry
    _, per_group, kh, kw = call.weight.shape
    (hf, wf), (hm, wm), (r0, c0), (s, t) = g.full_size, g.grid_size, g.band_start, g.factor
    shape = "dense" if call.groups == 1 else "grouped" if per_group >= 8 else "thin"
    conv = CONV_COSTS[shape]
    taps = per_group * kh * kw
    full_map = FULL_MAP_COSTS["dft" if max(hm, wm) <= spectral.DFT_MAX_SIZE else "fft"]
    stride_one = channels * (taps * hf * wf * conv + hm * wm * full_map)
    inputs = call.input.shape[1] if call.groups == 1 else min(call.input.shape[1], channels * per_group)
    n, m = hm // s, wm // t
    if per_group <= ELEMENTWISE_MIX_CHANNELS:
        mix = MIX_COSTS["elementwise"]
    else:
        mix = MIX_COSTS["pointwise" if (kh, kw) == (1, 1) and call.groups == 1 else "matrix"]
    spectral_route = (
        inputs * hm * wm * INPUT_SPECTRUM_COST
        + channels * per_group * n * (m // 2 + 1) * mix
        + channels * taps * (hm * wm - r0 * c0) * conv * BAND_FACTOR
        + channels * n * m * SMALL_GRID_COST
    )
    return spectral_route < ROUTE_MARGIN * stride_one
