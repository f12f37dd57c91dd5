"""measure() refuses inputs it cannot measure, with errors naming the cause: images outside [0, 1] (NaN
and Inf included) in any batch, NaN/Inf weights, NaN/Inf activations; its report survives JSON."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn

from cnn_aliasing import measure
from cnn_aliasing.aliasing_report import AliasingReport, ChannelSample, MetricSummary, OpAliasing
from cnn_aliasing.errors import CnnAliasingError, ReportFormatError
from cnn_aliasing.files import write_json_atomic


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)).eval()


def grey(n: int = 2, value: float = 0.5) -> torch.Tensor:
    return torch.full((n, 3, 8, 8), value)


@pytest.mark.parametrize(
    ("bad_value", "found"),
    [
        (float("nan"), r"got 1 NaN and 0 Inf values \(finite values: \[0\.5, 0\.5\]\)"),
        (float("inf"), r"got 0 NaN and 1 Inf values \(finite values: \[0\.5, 0\.5\]\)"),
        (float("-inf"), r"got 0 NaN and 1 Inf values \(finite values: \[0\.5, 0\.5\]\)"),
    ],
)
@pytest.mark.parametrize("at", [0, 2])
def test_nan_and_inf_images_name_the_batch(bad_value, found, at):
    batches = [grey(), grey(), grey()]
    batches[at][1, 2, 3, 4] = bad_value
    with pytest.raises(CnnAliasingError, match=rf"^images of batch {at} must lie in \[0, 1\] .*{found}$"):
        measure(small_net(), batches, progress=False)


def test_a_later_batch_out_of_range_is_refused():
    later = grey()
    later[0, 0, 0, 0], later[1, 2, 7, 7] = 0.0, 255.0
    batches = [(grey(), torch.zeros(2)), (grey(value=1.0), torch.zeros(2)), (later, torch.zeros(2))]
    with pytest.raises(
        CnnAliasingError,
        match=r"^images of batch 2 must lie in \[0, 1\] \(models normalise inside\), "
        r"got values in \[0, 255\]$",
    ):
        measure(small_net(), batches, progress=False)


def test_images_on_the_edges_of_the_range_pass():
    edges = grey()
    edges[0], edges[1] = 0.0, 1.0
    report = measure(small_net(), [grey(), edges], progress=False)
    assert report.n_images == 4


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("weight", r"0\.weight \(1 NaN, 0 Inf of 108 values\)"),
        ("running_var", r"1\.running_var \(0 NaN, 1 Inf of 4 values\)"),
    ],
)
def test_non_finite_weights_name_the_parameter(where, named):
    net = small_net()
    with torch.no_grad():
        if where == "weight":
            net[0].weight[1, 2, 0, 1] = float("nan")
        else:
            net[1].running_var[3] = float("inf")
    with pytest.raises(CnnAliasingError, match=rf"^the model's weights hold NaN or Inf: {named}; "):
        measure(net, [grey()], progress=False)


class BreaksChannel(nn.Module):
    """Sets channel 1 of every image to a non-finite value (as an overflowing layer would)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], torch.full_like(x[:, 1:2], self.value), x[:, 2:]], dim=1)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_activations_name_the_ops(value):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 3, 3, 2, 1),  # "0": before the break, finite
        BreaksChannel(value),
        nn.Conv2d(3, 3, 3, 2, 1, groups=3),  # "2": depthwise, so only channel 1's maps break
        nn.MaxPool2d(2),  # "3"
    ).eval()
    images = torch.rand(5, 3, 32, 32)
    with pytest.raises(CnnAliasingError) as raised:
        measure(net, [images[:2], images[2:]], progress=False)
    assert str(raised.value) == (
        "NaN or Inf in the full-resolution output of '2' (5 of 15 maps), '3' (5 of 15 maps): the model's "
        "activations are not finite on these images (its weights and the images are), so their aliasing "
        "is undefined"
    )


def test_report_with_nan_round_trips_through_standard_json(tmp_path):
    summary = MetricSummary(float("nan"), float("inf"), 0, [0.5, float("nan")])
    op = OpAliasing("conv", "conv2d", (2, 2), (8, 8), 2, {"aliasing": summary})
    report = AliasingReport([op], 0, "zero", ("aliasing",))
    path = write_json_atomic(tmp_path / "report.json", report.to_dict())

    def refuse(token: str) -> float:
        raise ValueError(f"non-standard JSON token {token}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["ops"][0]["aliasing"] is None and data["ops"][0]["std"] is None
    again = AliasingReport.from_dict(data).ops[0].metrics["aliasing"]
    assert math.isnan(again.mean) and math.isnan(again.std) and math.isnan(again.sem)
    assert again.per_channel[0] == 0.5 and math.isnan(again.per_channel[1])


@pytest.mark.parametrize(
    ("remove", "key"),
    [
        (lambda d: d.pop("nyquist"), "nyquist"),
        (lambda d: d["ops"][0].pop("full_size"), "ops[0].full_size"),
        (lambda d: d["ops"][0]["metrics"].pop("aliasing"), "ops[0].metrics.aliasing"),
        (lambda d: d["ops"][0]["metrics"]["aliasing"].pop("count"), "ops[0].metrics.aliasing.count"),
        (lambda d: d["ops"][0]["sampled"].pop("indices"), "ops[0].sampled.indices"),
    ],
)
def test_report_from_dict_names_a_missing_key(remove, key):
    sample = ChannelSample(1, 2, 0, (1,))
    op = OpAliasing("conv", "conv2d", (2, 2), (8, 8), 2, {"aliasing": MetricSummary(0.5, 0.1, 4)}, sample)
    data = json.loads(json.dumps(AliasingReport([op], 4, "zero", ("aliasing",), sample_channels=1).to_dict()))
    assert AliasingReport.from_dict(data) == AliasingReport([op], 4, "zero", ("aliasing",), sample_channels=1)
    remove(data)
    with pytest.raises(ReportFormatError, match=re.escape(f"missing key 'aliasing.{key}'")):
        AliasingReport.from_dict(data, where="aliasing.")
