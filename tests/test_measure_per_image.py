"""Per-image AM (``measure(..., per_image=True)``) against float64 references written here: for each image,
the mean over its maps of sum |Y - Z|, formed from the op's stride-1 output recomputed by hand (numpy FFTs
in ``am_by_hand``), over batches of different sizes, an op called twice in one forward, and channel-sampled
ops; its mean over the images is the op's AM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import measure
from cnn_aliasing.aliasing_report import AliasingReport
from cnn_aliasing.errors import CnnAliasingError, ReportFormatError
from test_probe import am_by_hand

N_IMAGES = 8
BATCHES = (3, 1, 4)  # batches of different sizes


class Twice(nn.Module):
    """A strided conv called twice in one forward (on the image and on its mirror image, halved), then a
    max pool of their sum: two ops, ``conv`` (two calls) and ``pool``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x) + self.conv(x.flip(-1) * 0.5)).flatten(1)


def net() -> Twice:
    return Twice().double().eval()


def images(n: int = N_IMAGES) -> torch.Tensor:
    return torch.rand(n, 3, 14, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def reference(model: Twice, x: torch.Tensor, channels: dict[str, list[int]] | None = None) -> dict:
    """Per op, per image, the mean of the per-map AM over the image's maps (of ``channels[op]`` only, when
    given), from stride-1 outputs computed here, in float64, one image at a time."""
    conv = model.conv
    result: dict[str, list[float]] = {"conv": [], "pool": []}
    with torch.no_grad():
        for image in x.split(1):
            inputs = (image, image.flip(-1) * 0.5)
            full = [F.conv2d(i, conv.weight, conv.bias, stride=1, padding=1) for i in inputs]
            maps = {
                "conv": np.concatenate([am_by_hand(f, 2, 2)[0] for f in full]).reshape(2, -1),
                "pool": am_by_hand(
                    F.max_pool2d(full[0][..., ::2, ::2] + full[1][..., ::2, ::2], 2, stride=1), 2, 2
                ),
            }
            for op, values in maps.items():
                kept = values if channels is None else values[:, channels[op]]
                result[op].append(float(kept.mean()))  # over every map of the image (both calls)
    return result


def measured(model: nn.Module, x: torch.Tensor, **options) -> AliasingReport:
    return measure(model, x.split(list(BATCHES)), progress=False, per_image=True, **options)


def test_per_image_am_equals_a_float64_reference_and_averages_to_the_op_am() -> None:
    model, x = net(), images()
    report = measured(model, x)
    expected = reference(model, x)
    assert report.per_image is not None and list(report.per_image) == ["conv", "pool"]
    for op in report.ops:
        values = report.per_image[op.name]
        assert len(values) == N_IMAGES
        np.testing.assert_allclose(values, expected[op.name], rtol=1e-10, atol=1e-12)
        assert np.mean(values) == pytest.approx(op.aliasing, rel=1e-12)
    assert report.op("conv").count == 2 * 5 * N_IMAGES  # both calls' maps count


def test_channel_sampled_per_image_am_is_over_the_sampled_channels() -> None:
    model, x = net(), images()
    report = measured(model, x, sample_channels=2, seed=4)
    channels = {op.name: list(op.sampled.indices) for op in report.ops if op.sampled is not None}
    assert set(channels) == {"conv", "pool"} and all(len(c) == 2 for c in channels.values())
    assert channels["conv"] != [0, 1] or channels["pool"] != [0, 1]  # a sample, not the first channels
    expected = reference(model, x, channels)
    assert report.per_image is not None
    for op in report.ops:
        np.testing.assert_allclose(report.per_image[op.name], expected[op.name], rtol=1e-10, atol=1e-12)
        assert np.mean(report.per_image[op.name]) == pytest.approx(op.aliasing, rel=1e-12)


def test_batching_does_not_change_the_per_image_am() -> None:
    model, x = net(), images()
    one, three = measure(model, [x], progress=False, per_image=True).per_image, measured(model, x).per_image
    assert one is not None and three is not None and one.keys() == three.keys()
    for op in one:
        np.testing.assert_allclose(one[op], three[op], rtol=1e-12)


def test_per_image_is_kept_only_when_asked_and_survives_json() -> None:
    model, x = net(), images(4)
    plain = measure(model, [x], progress=False)
    assert plain.per_image is None and "per_image" not in plain.to_dict()
    report = measure(model, [x], progress=False, per_image=True)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["per_image"]) == {"conv", "pool"} and len(data["per_image"]["conv"]) == 4
    assert AliasingReport.from_dict(data) == report
    assert AliasingReport.from_dict({**data, "per_image": None}).per_image is None


@pytest.mark.parametrize(
    ("per_image", "message"),
    [
        ({"conv": [0.1] * 4}, r"'aliasing\.per_image' must map every op \(conv, pool\) to a list; got conv"),
        ({"conv": [0.1] * 4, "pool": [0.2] * 3}, r"'aliasing\.per_image\.pool' must list 4 values"),
        ({"conv": [0.1] * 4, "pool": ["x"] * 4}, r"'aliasing\.per_image\.pool' must hold numbers"),
    ],
)
def test_malformed_per_image_is_refused_naming_the_key(per_image: dict, message: str) -> None:
    model, x = net(), images(4)
    data = json.loads(json.dumps(measure(model, [x], progress=False, per_image=True).to_dict()))
    with pytest.raises(ReportFormatError, match=message):
        AliasingReport.from_dict({**data, "per_image": per_image}, where="aliasing.")


class Sometimes(nn.Module):
    """A strided conv, and a pool that runs only on batches of two images."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.pool(y) if x.shape[0] == 2 else y


def test_an_op_not_called_on_a_batch_has_nan_for_its_images() -> None:
    x = images(4)
    model = Sometimes().double().eval()
    report = measure(model, x.split([1, 2, 1]), progress=False, per_image=True)
    assert report.per_image is not None
    pool, conv = report.per_image["pool"], report.per_image["conv"]
    assert np.isnan(pool[0]) and np.isnan(pool[3]) and not np.isnan(pool[1:3]).any()
    assert not np.isnan(conv).any()
    assert np.mean(pool[1:3]) == pytest.approx(report.op("pool").aliasing, rel=1e-12)


def test_an_op_that_does_not_keep_the_batch_first_is_an_error() -> None:
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.cat([x, x]))

    model = Doubled().double().eval()
    with pytest.raises(CnnAliasingError, match=r"op 'conv' saw 6 images .* in a batch of 3"):
        measure(model, [images(3)], progress=False, per_image=True)
    assert measure(model, [images(3)], progress=False).ops[0].count == 12  # fine without per_image
