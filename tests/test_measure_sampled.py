"""Channel-sampled measurement (``measure(..., sample_channels=k, seed=s)``) against float64 references
written here: the restricted ops form exactly the sampled channels' maps, a sample of every channel is the
exact measurement, and the estimate with its 95% interval is honest over many seeds (coverage within a
binomial acceptance band, mean on the exact AM)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import conv_spectra, measure
from cnn_aliasing.aliasing_report import AliasingReport
from cnn_aliasing.downsamplers import CONV2D, StridedCall, _restricted_groups
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.models import create_model
from cnn_aliasing.quantiles import t_critical
from cnn_aliasing.training import get_recipe, track
from test_cli import cifar_dir, measure_args, run_cli  # noqa: F401 (cifar_dir is a fixture)
from test_probe import EXPECTED, am_by_hand, full_outputs, make_net


# ------------------------------------------------------------------------------------ plain references
def variance_by_hand(values: list[float]) -> float:
    """The ddof-1 variance, by explicit loops."""
    mean = 0.0
    for v in values:
        mean += v
    mean /= len(values)
    total = 0.0
    for v in values:
        total += (v - mean) ** 2
    return total / (len(values) - 1)


def sample_sem_by_hand(channel_means: list[float], population: int) -> float:
    """sqrt((1 - k/C) s^2 / k), s^2 the ddof-1 variance of the k sampled channel means."""
    k = len(channel_means)
    return math.sqrt((1 - k / population) * variance_by_hand(channel_means) / k)


def binomial_band(n: int, p: float, level: float) -> tuple[int, int]:
    """The central acceptance region [lo, hi] of Binomial(n, p): each tail outside has probability at most
    (1 - level) / 2, summed term by term."""
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    tail = (1 - level) / 2
    lo, below = 0, 0.0
    while below + pmf[lo] <= tail:
        below += pmf[lo]
        lo += 1
    hi, above = n, 0.0
    while above + pmf[hi] <= tail:
        above += pmf[hi]
        hi -= 1
    return lo, hi


# -------------------------------------------------------------------------------- the t critical value
T_TABLE = [(1, 12.7062047), (2, 4.30265273), (3, 3.18244631), (5, 2.57058184), (10, 2.22813885)]
T_TABLE += [(30, 2.04227246), (120, 1.97993040), (1000, 1.96233908), (5000, 1.9604386)]


@pytest.mark.parametrize(("df", "expected"), T_TABLE)
def test_t_critical_matches_tables(df: int, expected: float) -> None:
    assert t_critical(df) == pytest.approx(expected, rel=5e-8)


# ----------------------------------------------------------------------- all channels = exact measurement
@pytest.mark.parametrize("sample", [1.0, 10**6])
def test_sampling_every_channel_is_the_exact_measurement(sample: int | float) -> None:
    net = make_net()
    images = torch.rand(3, 3, 65, 62, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = measure(net, [images], per_channel=True, progress=False)
    sampled = measure(net, [images], per_channel=True, progress=False, sample_channels=sample, seed=3)
    assert [op.name for op in sampled.ops] == [op.name for op in exact.ops]
    for e, s in zip(exact.ops, sampled.ops, strict=True):
        assert s.sampled is not None and s.sampled.channels == s.sampled.of == e.channels
        assert s.sampled.indices == tuple(range(e.channels)) and s.sampled.seed == 3
        assert (s.aliasing, s.std, s.count) == (e.aliasing, e.std, e.count)
        assert s.metrics["aliasing"].per_channel == e.metrics["aliasing"].per_channel
        assert s.metrics["aliasing"].sampling_sem == 0 and s.ci95 == (s.aliasing, s.aliasing)


# ------------------------------------------------------------- restricted ops: the sampled channels only
class Declared(nn.Module):
    """A declared down-sampler: blur by a 2x2 mean, keep every second pixel."""

    downsampling_factor = 2

    def full_resolution_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.full_resolution_forward(x)[..., ::2, ::2]


def one_op_cases() -> dict[str, tuple[nn.Module, int, Any]]:
    """name -> (an op, its input channels, its stride-1 version as a function)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1)
    grouped = nn.Conv2d(6, 12, 3, stride=2, padding=2, dilation=2, groups=3)
    depthwise = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False)
    reflect = nn.Conv2d(6, 12, 3, stride=(2, 3), padding=1, padding_mode="reflect")
    pointwise = nn.Conv2d(6, 12, 1, stride=2)
    pointwise_grouped = nn.Conv2d(6, 12, 1, stride=2, groups=2, bias=False)
    max_pool = nn.MaxPool2d(3, stride=2, padding=1)
    avg_pool = nn.AvgPool2d(3, stride=2, ceil_mode=True)
    lp_pool = nn.LPPool2d(2, 2)
    return {
        "conv": (conv, 6, lambda x: F.conv2d(x, conv.weight, conv.bias, 1, 1)),
        "grouped": (grouped, 6, lambda x: F.conv2d(x, grouped.weight, grouped.bias, 1, 2, 2, 3)),
        "depthwise": (depthwise, 6, lambda x: F.conv2d(x, depthwise.weight, None, 1, 1, 1, 6)),
        "reflect": (
            reflect,
            6,
            lambda x: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), reflect.weight, reflect.bias, 1),
        ),
        "pointwise": (pointwise, 6, lambda x: F.conv2d(x, pointwise.weight, pointwise.bias)),
        "pointwise_grouped": (
            pointwise_grouped,
            6,
            lambda x: F.conv2d(x, pointwise_grouped.weight, None, groups=2),
        ),
        "max_pool": (max_pool, 6, lambda x: F.max_pool2d(x, 3, 1, 1)),
        "avg_pool": (avg_pool, 6, lambda x: F.avg_pool2d(x, 3, 1)),
        "lp_pool": (lp_pool, 6, lambda x: F.lp_pool2d(x, 2, 2, 1)),
        "declared": (Declared(), 6, lambda x: F.avg_pool2d(x, 2, stride=1)),
    }


class Wrap(nn.Module):
    """One op after a 1x1 mixing stem (so the op's input is not the raw images), named ``op``."""

    def __init__(self, op: nn.Module, channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 1)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.stem(x))


RESTRICTED = ["conv", "grouped", "depthwise", "reflect", "pointwise", "pointwise_grouped"]
RESTRICTED += ["max_pool", "avg_pool", "lp_pool"]


@pytest.mark.parametrize("whole_groups", [True, False])
@pytest.mark.parametrize(
    ("groups", "out_channels", "index"),
    [(3, 12, [0, 1, 9]), (3, 12, [5]), (4, 8, [1, 2, 3, 6]), (4, 4, [0, 3]), (2, 6, [0, 1, 2, 3, 4, 5])],
)
def test_restricted_grouped_convolution_equals_the_selected_channels(
    groups: int, out_channels: int, index: list[int], whole_groups: bool
) -> None:
    """Selected output channels of a grouped stride-1 convolution, computed over whole groups (the CPU form)
    or one group per channel, equal those channels of the full convolution (selections within one group,
    across groups, every channel)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 9, 10, dtype=torch.float64, generator=gen)
    weight = torch.randn(out_channels, 12 // groups, 3, 3, dtype=torch.float64, generator=gen)
    bias = torch.randn(out_channels, dtype=torch.float64, generator=gen)
    params = {
        "input": x,
        "weight": weight,
        "bias": bias,
        "stride": 1,
        "padding": 1,
        "dilation": 1,
        "groups": groups,
    }
    got = _restricted_groups(CONV2D, params, torch.tensor(index), whole_groups=whole_groups)
    want = F.conv2d(x, weight, bias, 1, 1, 1, groups)[:, index]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("case", list(one_op_cases()))
def test_sampled_channels_get_the_exact_per_channel_values(
    case: str, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    op, channels, stride_one = one_op_cases()[case]
    torch.manual_seed(1)
    net = Wrap(op, channels).double().eval()
    images = torch.rand(3, 3, 17, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plain = torch.cat([net(images[:2]), net(images[2:])])
        full = stride_one(net.stem(images))
    formed: list[str] = []
    original_full = StridedCall.full

    def recording_full(self: StridedCall) -> torch.Tensor:
        formed.append(self.kind)
        return original_full(self)

    monkeypatch.setattr(StridedCall, "full", recording_full)
    real: list[torch.Tensor] = []
    op.register_forward_hook(lambda _m, _i, out: real.append(out))
    report = measure(net, [images[:2], images[2:]], per_channel=True, progress=False, sample_channels=k)
    (result,) = report.ops
    sample = result.sampled
    assert sample is not None and sample.channels == min(k, full.shape[1]) and sample.of == full.shape[1]
    assert list(sample.indices) == sorted(set(sample.indices))
    reference = am_by_hand(full[:, list(sample.indices)], *result.factor)  # (images, k)
    assert result.count == reference.size
    assert result.metrics["aliasing"].per_channel == pytest.approx(reference.mean(axis=0), rel=1e-9)
    assert result.aliasing == pytest.approx(reference.mean(), rel=1e-9)
    assert result.std == pytest.approx(reference.std(ddof=1) if reference.size > 1 else 0.0, rel=1e-7)
    # the real output is the op's own, bit for bit, and the full output is formed only where unavoidable
    assert torch.equal(torch.cat(real), plain)
    if case in RESTRICTED and sample.channels < sample.of:
        assert formed == []
    exact = measure(net, [images], per_channel=True, progress=False)
    exact_channels = np.array(exact.ops[0].metrics["aliasing"].per_channel)[list(sample.indices)]
    assert result.metrics["aliasing"].per_channel == pytest.approx(exact_channels, rel=1e-9)


@pytest.mark.parametrize("groups", [1, 8])
def test_spectral_and_stride_one_routes_agree(monkeypatch: pytest.MonkeyPatch, groups: int) -> None:
    """A sampled convolution is measured from its input's spectra or from the restricted stride-1 output,
    whichever is estimated cheaper: both give the same values for the same channels."""
    torch.manual_seed(3)
    net = Wrap(nn.Conv2d(8, 32, 3, stride=2, padding=1, groups=groups), 8).double().eval()
    images = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    results = []
    for margin in (0.0, 1e9):  # never the spectral route; always
        monkeypatch.setattr(conv_spectra, "ROUTE_MARGIN", margin)
        results.append(measure(net, [images], per_channel=True, progress=False, sample_channels=4).ops[0])
    assert results[0].sampled == results[1].sampled
    per_channel = [r.metrics["aliasing"].per_channel for r in results]
    assert per_channel[0] == pytest.approx(per_channel[1], rel=1e-9)


def test_whole_model_sampled_estimate_per_op() -> None:
    """Every op of a model with all kinds: the sampled channels' values by hand, real outputs unchanged."""
    net = make_net()
    images = torch.rand(4, 3, 65, 62, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    report = measure(net, [images], per_channel=True, progress=False, sample_channels=0.5, seed=11)
    with torch.no_grad():
        fulls = full_outputs(net, images)
    assert [op.name for op in report.ops] == [n for n, _, _ in EXPECTED]
    for op in report.ops:
        full = fulls[op.name]
        assert op.sampled is not None and op.sampled.of == full.shape[1]
        assert op.sampled.channels == math.ceil(full.shape[1] / 2)
        per_map = am_by_hand(full[:, list(op.sampled.indices)], *op.factor)
        assert op.aliasing == pytest.approx(per_map.mean(), rel=1e-9), op.name
        sem = sample_sem_by_hand(list(per_map.mean(axis=0)), full.shape[1])
        assert op.metrics["aliasing"].sampling_sem == pytest.approx(sem, rel=1e-7), op.name
        half = t_critical(op.sampled.channels - 1) * sem
        assert op.ci95 == pytest.approx((per_map.mean() - half, per_map.mean() + half), rel=1e-7)


# ----------------------------------------------------------------------------------- the draw and seeds
def test_draw_depends_on_seed_and_op_and_is_the_same_on_every_batch() -> None:
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=8).double().eval()
    images = torch.rand(6, 3, 32, 32, dtype=torch.float64)
    one = measure(model, [images], progress=False, sample_channels=4, seed=1, per_channel=True)
    split = measure(model, [images[:1], images[1:4], images[4:]], progress=False, sample_channels=4, seed=1)
    other = measure(model, [images], progress=False, sample_channels=4, seed=2)
    for a, b in zip(one.ops, split.ops, strict=True):
        assert a.sampled == b.sampled and a.count == b.count == 6 * 4
        assert a.aliasing == pytest.approx(b.aliasing, rel=1e-12)
    draws = [op.sampled.indices for op in one.ops if op.sampled is not None]
    assert len(set(draws)) > 1  # ops of equal width get their own draws
    assert [op.sampled for op in one.ops] != [op.sampled for op in other.ops]


# ------------------------------------------------------------------------------- honesty over many seeds
class Coverage(nn.Module):
    """Two ops with many channels: a strided 3x3 conv (64 channels) and a strided 1x1 conv (32)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 64, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(64, 32, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(F.relu(self.down(F.relu(self.stem(x)))))


SEEDS = 400


@pytest.fixture(scope="module")
def coverage_runs() -> tuple[AliasingReport, list[AliasingReport]]:
    torch.manual_seed(0)
    net = Coverage().double().eval()
    images = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = measure(net, [images], per_channel=True, progress=False)
    runs = [measure(net, [images], progress=False, sample_channels=0.5, seed=s) for s in range(SEEDS)]
    return exact, runs


@pytest.mark.parametrize("op_name", ["down", "shortcut"])
def test_interval_covers_the_exact_am_in_95_percent_of_seeds(
    coverage_runs: tuple[AliasingReport, list[AliasingReport]], op_name: str
) -> None:
    exact, runs = coverage_runs
    truth = exact.op(op_name).aliasing
    channel_means = exact.op(op_name).metrics["aliasing"].per_channel
    assert channel_means is not None
    population = len(channel_means)
    estimates, variances, covered = [], [], 0
    for report in runs:
        op = report.op(op_name)
        assert op.sampled is not None and op.sampled.channels == population // 2
        assert op.ci95 is not None
        low, high = op.ci95
        covered += low <= truth <= high
        estimates.append(op.aliasing)
        sem = op.metrics["aliasing"].sampling_sem
        assert sem is not None
        variances.append(sem**2)
    lo, hi = binomial_band(SEEDS, 0.95, 0.999)
    assert lo <= covered <= hi, (
        f"{op_name}: interval covered AM in {covered} of {SEEDS} seeds, not {lo}..{hi}"
    )
    # the estimator's variance over draws, from the population of channel means, by hand
    k = population // 2
    true_variance = (1 - k / population) * variance_by_hand(channel_means) / k
    mean = sum(estimates) / SEEDS
    assert abs(mean - truth) <= 4 * math.sqrt(true_variance / SEEDS), (mean, truth)
    spread = sum((e - mean) ** 2 for e in estimates) / (SEEDS - 1)
    assert 0.72 <= spread / true_variance <= 1.35  # chi-square(399) / 399: 4 sd either side
    assert 0.8 <= (sum(variances) / SEEDS) / true_variance <= 1.2  # the sem^2 is unbiased


# ------------------------------------------------------------------------------------ reports and errors
def test_report_json_table_and_header() -> None:
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=8).eval()
    report = measure(model, [torch.rand(4, 3, 32, 32)], progress=False, sample_channels=0.25, seed=7)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["sample_channels"] == 0.25 and data["sample_seed"] == 7
    for op in data["ops"]:
        assert op["sampled"]["channels"] == op["channels"] // 4 and op["sampled"]["of"] == op["channels"]
        low, high = op["metrics"]["aliasing"]["ci95"]
        assert low <= op["aliasing"] <= high and op["metrics"]["aliasing"]["sampling_sem"] > 0
    again = AliasingReport.from_dict(data)
    assert json.loads(json.dumps(again.to_dict())) == data and again.ops[0].ci95 == report.ops[0].ci95
    text = str(report)
    assert "channel-sampled" in text and "sample_channels=0.25" in text and "ci95_low" in text
    sampled = report.ops[0].sampled
    assert sampled is not None
    assert report.rows()[0]["channels"] == f"{sampled.channels}/{report.ops[0].channels}"
    exact = measure(model, [torch.rand(2, 3, 32, 32)], progress=False)
    assert "channel-sampled" not in str(exact) and "ci95_low" not in str(exact)
    assert all(op["sampled"] is None for op in exact.to_dict()["ops"])


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"sample_channels": 0}, "sample_channels=0 is invalid"),
        ({"sample_channels": -3}, "sample_channels=-3 is invalid"),
        ({"sample_channels": 0.0}, "sample_channels=0.0 is invalid"),
        ({"sample_channels": 1.5}, "sample_channels=1.5 is invalid"),
        ({"sample_channels": float("nan")}, "sample_channels=nan is invalid"),
        ({"sample_channels": float("inf")}, "sample_channels=inf is invalid"),
        ({"sample_channels": True}, "sample_channels=True is invalid"),
        ({"sample_channels": "8"}, "sample_channels='8' is invalid"),
        ({"sample_channels": 8, "seed": -1}, "seed=-1 is invalid; expected an integer >= 0"),
        ({"sample_channels": 8, "seed": 1.5}, "seed=1.5 is invalid"),
    ],
)
def test_bad_sampling_options_are_errors(options: dict[str, Any], needle: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2))
    with pytest.raises(CnnAliasingError, match="expected") as error:
        measure(model, [torch.rand(1, 3, 8, 8)], progress=False, **options)
    assert needle in str(error.value)
    if "seed" not in options:
        assert "an int >= 1" in str(error.value) and "a float in (0, 1]" in str(error.value)


# ------------------------------------------------------------------------------------ CLI and training
def test_cli_measure_with_sampled_channels(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cifar_dir: Path,  # noqa: F811
) -> None:
    out = tmp_path / "r.json"
    code, stdout, _ = run_cli(capsys, *measure_args(cifar_dir, out, "--sample-channels", "0.5"))
    assert code == 0 and "channel-sampled" in stdout and "ci95_low" in stdout
    report = json.loads(out.read_text())
    assert report["sample_channels"] == 0.5 and report["sample_seed"] == 0
    assert all(op["sampled"]["channels"] * 2 == op["channels"] for op in report["ops"])
    code, stdout, err = run_cli(capsys, *measure_args(cifar_dir, out, "--sample-channels", "0"))
    assert code == 2 and "sample_channels=0 is invalid" in err
    code, stdout, err = run_cli(capsys, *measure_args(cifar_dir, out, "--sample-channels", "half"))
    assert code == 2 and "'half'" in err


def test_recipe_field_and_tracking_use_the_sampled_estimate() -> None:
    for bad in (0, -1, 0.0, 1.5, "x", True):
        with pytest.raises(CnnAliasingError, match=r"field eval_sample_channels must be an integer >= 1 "):
            get_recipe("small-standard", eval_sample_channels=bad)
    recipe = get_recipe("small-standard", eval_pgd_steps=1, eval_sample_channels=0.5)
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=4, normalize="cifar10").eval()
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    row = track(model, x, y, recipe)
    expected = measure(model, [x], progress=False, sample_channels=0.5, seed=0)
    assert row["aliasing"] == {op.name: op.aliasing for op in expected.ops}
    assert all(op.ci95 is not None for op in expected.ops)
    assert row["aliasing_ci95"] == {op.name: list(op.ci95 or ()) for op in expected.ops}
    assert "aliasing_ci95" not in track(model, x, y, get_recipe("small-standard", eval_pgd_steps=1))
