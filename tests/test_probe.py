"""find_downsamplers and measure on small models built here, against AM computed by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import find_downsamplers, measure
from cnn_aliasing.errors import CnnAliasingError, ModelInputError


def am_by_hand(full: torch.Tensor, s: int, t: int, nyquist: str = "zero") -> np.ndarray:
    """Per-map aliasing from a stride-1 output, with Y from the FFT of the real (sliced) output.

    Independent of the library's folding: X and Y are separate numpy FFTs, and Z picks, for each small
    bin, the bin of X whose signed frequency is below the new Nyquist frequency.
    """
    x = full.detach().double().cpu().numpy()
    h0, w0 = x.shape[-2:]
    h, w = -(-h0 // s) * s, -(-w0 // t) * t
    padded = np.zeros((*x.shape[:-2], h, w))
    padded[..., :h0, :w0] = x
    big = np.fft.fft2(padded) / (h * w)
    n, m = h // s, w // t
    small = np.fft.fft2(padded[..., ::s, ::t]) / (n * m)

    def source(k: int, size: int, small_size: int, factor: int) -> int | None:
        signed = k if 2 * k < small_size else k - small_size
        if factor > 1 and 2 * signed == -small_size:
            return size - small_size // 2 if nyquist == "keep_negative" else None
        return signed % size

    z = np.zeros_like(small)
    for k in range(n):
        for l in range(m):
            a, b = source(k, h, n, s), source(l, w, m, t)
            if a is not None and b is not None:
                z[..., k, l] = big[..., a, b]
    return np.abs(small - z).sum(axis=(-2, -1))


class Block(nn.Module):
    """A residual block with a strided, grouped and dilated conv and a strided 1x1 shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2)
        self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)) + self.shortcut(x)


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 2
        return self.pool(F.avg_pool2d(x, 2, stride=1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Block()
        self.pool = nn.MaxPool2d(2)
        self.tail = Untraceable()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.stem(x)))
        x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)[:, :, :, ::1]
        x = x[..., 1:, ::1][:, :, ::1, :]
        x = torch.cat([x, x], dim=-1)[:, :, ::2, ::3]
        x = self.tail(x)
        return self.head(x.mean(dim=(-2, -1)))


EXPECTED = [
    ("block.conv", "conv2d", (2, 2)),
    ("block.shortcut.0", "conv2d", (2, 2)),
    ("pool", "max_pool2d", (2, 2)),
    ("avg_pool2d", "avg_pool2d", (2, 2)),
    ("getitem_3", "strided_slice", (2, 3)),
    ("tail.pool", "max_pool2d", (2, 2)),
]


def make_net(dtype=torch.float64) -> Net:
    torch.manual_seed(0)
    return Net().to(dtype).eval()


def full_outputs(net: Net, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The stride-1 outputs of every op, recomputed by hand (not via the probe)."""
    b = net.block
    shortcut = b.shortcut[0]
    assert isinstance(shortcut, nn.Conv2d)
    x = net.stem(images)
    out = {
        "block.conv": F.conv2d(x, b.conv.weight, b.conv.bias, 1, 2, 2, 2),
        "block.shortcut.0": F.conv2d(x, shortcut.weight, None, 1),
    }
    x = b(x)
    out["pool"] = F.max_pool2d(x, 2, stride=1)
    x = F.max_pool2d(x, 2)
    out["avg_pool2d"] = F.avg_pool2d(x, 3, stride=1, padding=1)
    x = F.avg_pool2d(x, 3, stride=2, padding=1)[..., 1:, :]
    x = torch.cat([x, x], dim=-1)
    out["getitem_3"] = x
    x = x[:, :, ::2, ::3] * 2
    out["tail.pool"] = F.max_pool2d(F.avg_pool2d(x, 2, stride=1), 3, stride=1, padding=1)
    return out


def test_finds_exactly_the_expected_ops_in_forward_order():
    net = make_net()
    found = find_downsamplers(net, torch.rand(2, 3, 65, 62, dtype=torch.float64))
    assert [(d.name, d.kind, d.factor) for d in found] == EXPECTED
    assert found[0].full_shape == (2, 8, 65, 62) and found[0].channels == 8


@pytest.mark.parametrize("nyquist", ["zero", "keep_negative"])
def test_measure_equals_am_by_hand(nyquist):
    net = make_net()
    images = torch.rand(5, 3, 65, 62, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batches = [images[:2], (images[2:], torch.zeros(3))]
    report = measure(net, batches, nyquist=nyquist, progress=False, per_channel=True)
    with torch.no_grad():
        fulls = full_outputs(net, images)
    by_name = {op.name: op for op in report.ops}
    assert list(by_name) == [n for n, _, _ in EXPECTED]
    for name, full in fulls.items():
        op = by_name[name]
        per_map = am_by_hand(full, *op.factor, nyquist=nyquist)
        assert op.count == per_map.size
        assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9), name
        assert op.std == pytest.approx(per_map.std(ddof=1), rel=1e-7), name
        assert op.metrics["aliasing"].sem == pytest.approx(
            per_map.std(ddof=1) / np.sqrt(per_map.size), rel=1e-7
        )
        assert op.metrics["aliasing"].per_channel == pytest.approx(per_map.mean(axis=0), rel=1e-9)
    assert report.n_images == 5


def test_outputs_unchanged_while_measuring():
    """Convolutions agree to float rounding (stride-1 then slice sums in another order); pooling exactly."""
    net = make_net(torch.float32)
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = net(images)
    seen = []
    net.head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    report = measure(net, [images], progress=False)
    assert len(report.ops) == len(EXPECTED)
    with torch.no_grad():
        again = net(images)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    # the hooked input to the head during measuring matches the plain pass
    torch.testing.assert_close(seen[0], seen[1], rtol=1e-5, atol=1e-6)


def test_pooling_outputs_are_bit_identical():
    pools = nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2), nn.LPPool2d(2, 2), nn.MaxPool2d(2, 2))
    x = torch.rand(2, 3, 37, 37)
    captured = []
    pools[-1].register_forward_pre_hook(lambda m, a: captured.append(a[0].clone()))
    expected = pools(x)
    report = measure(pools, [x], progress=False)
    assert [op.kind for op in report.ops] == ["max_pool2d", "avg_pool2d", "lp_pool2d", "max_pool2d"]
    assert torch.equal(captured[0], captured[1])
    assert torch.equal(pools(x), expected)


def test_ceil_mode_and_return_indices_pools():
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64)
    for pool in (
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AvgPool2d(3, 2, ceil_mode=True, count_include_pad=False),
    ):
        full = pool.__class__(**{**vars_of(pool), "stride": 1, "ceil_mode": False})(x)
        report = measure(nn.Sequential(pool), [x], progress=False)
        assert report.ops[0].aliasing == pytest.approx(am_by_hand(full, 2, 2).mean(), rel=1e-9)

    class WithIndices(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2, return_indices=True)

        def forward(self, x):
            values, indices = self.pool(x)
            return values + indices.to(values.dtype)

    model = WithIndices()
    expected = model(x)
    report = measure(model, [x], progress=False)
    assert report.ops[0].name == "pool"
    with torch.no_grad():
        captured = model(x)
    torch.testing.assert_close(captured, expected, rtol=0, atol=0)


def vars_of(pool: nn.Module) -> dict:
    keys = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "dilation")
    return {k: getattr(pool, k) for k in keys if hasattr(pool, k)}


def test_padding_modes_and_non_square_strides():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=(2, 3), padding=1, padding_mode="reflect").double()
    x = torch.rand(2, 2, 17, 14, dtype=torch.float64)
    expected = conv(x)
    report = measure(nn.Sequential(conv), [x], progress=False)
    op = report.ops[0]
    assert op.factor == (2, 3)
    full = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias)
    assert full.shape[-2:] == op.full_size
    assert op.aliasing == pytest.approx(am_by_hand(full, 2, 3).mean(), rel=1e-9)
    torch.testing.assert_close(full[..., ::2, ::3], expected)


class BlurDown(nn.Module):
    """A module declaring itself a down-sampler (the protocol anti-aliasing layers use)."""

    downsampling_factor = 2
    downsampling_kind = "blur"

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3, bias=False)  # not measured itself
        nn.init.constant_(self.inner.weight, 1 / 9)

    def full_resolution_forward(self, x):
        return F.conv2d(x, self.inner.weight, None, 1, 1, 1, 3)

    def forward(self, x):
        return self.inner(x)


def test_declared_downsampler_protocol():
    model = nn.Sequential(BlurDown(), nn.Conv2d(3, 4, 1)).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    found = find_downsamplers(model, x)
    assert [(d.name, d.kind, d.factor) for d in found] == [("0", "blur", (2, 2))]
    report = measure(model, [x], progress=False)
    full = model[0].full_resolution_forward(x)
    assert report.ops[0].aliasing == pytest.approx(am_by_hand(full, 2, 2).mean(), rel=1e-9)


def test_include_exclude_patterns_and_global_pooling_skipped():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.Conv2d(4, 4, 3, 2, 1), nn.AvgPool2d(4)
    )
    x = torch.rand(1, 3, 32, 32)
    assert [d.name for d in find_downsamplers(model, x)] == ["0", "1", "2"]  # 4x4 -> 1x1 pool is global
    assert [d.name for d in find_downsamplers(model, x, include=["1", "2"])] == ["1", "2"]
    assert [d.name for d in find_downsamplers(model, x, exclude=["[01]"])] == ["2"]


def test_model_state_restored_after_exception():
    net = make_net(torch.float32)
    net.train()
    net.block.eval()  # mixed modes must come back as they were
    hook = net.pool.register_forward_hook(lambda *a: None)
    params = {k: v.clone() for k, v in net.state_dict().items()}

    def batches():
        yield torch.rand(2, 3, 32, 32)
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        measure(net, batches(), progress=False)
    assert net.training and not net.block.training and net.pool.training
    assert all("forward" not in m.__dict__ for m in net.modules())
    assert list(net.pool._forward_hooks.values()) == [hook.hooks_dict_ref()[hook.id]]
    for k, v in net.state_dict().items():
        assert torch.equal(v, params[k]), k


def test_bad_input_raises_clear_errors():
    net = make_net(torch.float32)
    with pytest.raises(CnnAliasingError, match="floating point"):
        measure(net, [torch.zeros(1, 3, 32, 32, dtype=torch.uint8)], progress=False)
    with pytest.raises(CnnAliasingError, match=r"\[0, 1\]"):
        measure(net, [torch.full((1, 3, 32, 32), 255.0)], progress=False)
    with pytest.raises(CnnAliasingError, match="no images"):
        measure(net, [], progress=False)
    with pytest.raises(ModelInputError, match=r"shape \(1, 5, 32, 32\)"):
        measure(net, [torch.rand(1, 5, 32, 32)], progress=False)
    with pytest.raises(CnnAliasingError, match="valid"):
        measure(net, [torch.rand(1, 3, 32, 32)], metrics=("nope",), progress=False)


def test_measure_on_device(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1))
    x = torch.rand(3, 3, 16, 16)
    cpu = measure(model, [x], progress=False)
    other = measure(model, [x], device=device, progress=False)
    assert next(model.parameters()).device.type == "cpu"
    for a, b in zip(cpu.ops, other.ops, strict=True):
        assert a.aliasing == pytest.approx(b.aliasing, rel=1e-4)


def test_streaming_equals_one_batch_and_report_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(2)).double()
    x = torch.rand(10, 3, 16, 16, dtype=torch.float64)
    whole = measure(model, [x], progress=False, metrics=("relative_aliasing", "alias_energy_fraction"))
    parts = measure(model, x.split(3), progress=False, metrics=("relative_aliasing", "alias_energy_fraction"))
    for a, b in zip(whole.ops, parts.ops, strict=True):
        for key in a.metrics:
            assert a.metrics[key].mean == pytest.approx(b.metrics[key].mean, rel=1e-12)
            assert a.metrics[key].std == pytest.approx(b.metrics[key].std, rel=1e-9)
    from cnn_aliasing import AliasingReport

    again = AliasingReport.from_dict(whole.to_dict())
    assert again.to_dict() == whole.to_dict()
    assert "relative_aliasing" in whole.format_table()


@pytest.mark.parametrize("size", [16, 15])  # 15: a biased 1x1 conv on an odd size forms its stride-1 output
@pytest.mark.parametrize("metrics", [("aliasing", "relative_aliasing"), ("alias_energy_fraction",)])
def test_strided_1x1_conv_with_bias(size, metrics):
    """1x1 convolutions are measured from their input's spectra where they can be: same numbers."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 1, stride=2).double()
    x = torch.rand(3, 4, size, size, dtype=torch.float64)
    expected_output = conv(x)
    captured = []
    model = nn.Sequential(conv, nn.Identity())
    model[1].register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    report = measure(model, [x], progress=False, metrics=metrics)
    torch.testing.assert_close(captured[-1], expected_output, rtol=1e-12, atol=1e-12)
    full = F.conv2d(x, conv.weight, conv.bias)
    op = report.ops[0]
    assert op.full_size == (size, size) and op.channels == 6
    assert op.aliasing == pytest.approx(am_by_hand(full, 2, 2).mean(), rel=1e-9)


class _FlaggedPool(nn.Module):
    """Down-samples functionally only when its flag is set: a trace depends on the flag."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.avg_pool2d(x, 2) if self.pool else x


def test_traces_are_reused_until_the_structure_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model is traced once; flipping a flag its forward branches on, or replacing a child, traces it
    again and finds what changed; the cached trace follows each probe's selection."""
    import cnn_aliasing.probe as probe

    traces: list[str] = []
    trace_tree = probe._trace_tree

    def recording_trace_tree(*args: Any) -> Any:
        traces.append(args[1])  # the traced module's path
        return trace_tree(*args)

    monkeypatch.setattr(probe, "_trace_tree", recording_trace_tree)
    model = _FlaggedPool()
    x = torch.rand(1, 3, 8, 8)
    assert find_downsamplers(model, x) == []
    assert find_downsamplers(model, x) == []
    assert len(traces) == 1
    model.pool = True
    for _ in range(2):
        assert [d.kind for d in find_downsamplers(model, x)] == ["avg_pool2d"]
        assert len(traces) == 2
    assert find_downsamplers(model, x, exclude=["*avg_pool2d*"]) == []
    assert len(traces) == 2
    model.pool = False
    model.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    assert [d.name for d in find_downsamplers(model, x)] == ["conv"]
    assert len(traces) == 3
    assert [d.name for d in find_downsamplers(model, x)] == ["conv"]
    assert len(traces) == 3


def test_cached_traces_do_not_keep_a_model_alive() -> None:
    import gc
    import weakref

    model = _FlaggedPool()
    model.pool = True
    measure(model, [torch.rand(2, 3, 8, 8)], progress=False)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


class _ScaledPool(nn.Module):
    """Reads a buffer in its own (traced) forward, then down-samples functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(torch.relu(self.conv(x) - self.scale), 2)


def test_a_cached_trace_never_reads_a_replaced_buffer_or_parameter() -> None:
    """``model.to(...)`` replaces buffers and assignment replaces tensors: a trace that held the old ones
    would compute with stale values, so it is traced again, and the result equals a fresh model's."""
    import copy

    model, x = _ScaledPool(), torch.rand(2, 3, 8, 8)
    measure(model, [x], progress=False)
    for change in (
        lambda m: setattr(m, "scale", torch.tensor(0.5)),
        lambda m: m.to(torch.float64),
        lambda m: setattr(m.conv, "weight", nn.Parameter(m.conv.weight.detach() * 2)),
    ):
        change(model)
        dtype = next(model.parameters()).dtype
        got = measure(model, [x.to(dtype)], progress=False).op("avg_pool2d").aliasing
        fresh = measure(copy.deepcopy(model), [x.to(dtype)], progress=False).op("avg_pool2d").aliasing
        assert got == fresh
