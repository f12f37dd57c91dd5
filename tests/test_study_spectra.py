"""The spectra file of one map: captured full-resolution output, channel choice, X, Y, Z against loops."""

from __future__ import annotations

import cmath
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnn_aliasing import aliasing_per_map
from cnn_aliasing.errors import CnnAliasingError
from cnn_aliasing.study.spectra import capture_full_output, capture_spectrum, map_spectra


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(5, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(10),
    )


def _dft(x: list[list[float]]) -> list[list[complex]]:
    """FFT2(x) / (H W) by plain loops."""
    h, w = len(x), len(x[0])
    return [
        [
            sum(
                x[m][n] * cmath.exp(-2j * math.pi * (k * m / h + l * n / w))
                for m in range(h)
                for n in range(w)
            )
            / (h * w)
            for l in range(w)
        ]
        for k in range(h)
    ]


def _alias_free(full: list[list[complex]], small_h: int, small_w: int) -> list[list[complex]]:
    """For each small bin, the replica of X whose signed frequency lies below the new Nyquist; 0 at it."""
    h, w = len(full), len(full[0])

    def signed(k: int, n: int) -> int | None:
        if n % 2 == 0 and k == n // 2:
            return None
        return k if k < n / 2 else k - n

    out = []
    for k in range(small_h):
        row = []
        for l in range(small_w):
            ks, ls = signed(k, small_h), signed(l, small_w)
            row.append(0j if ks is None or ls is None else full[ks % h][ls % w])
        out.append(row)
    return out


def _as_complex(part: dict[str, list[list[float]]]) -> list[list[complex]]:
    return [
        [complex(r, i) for r, i in zip(rr, ii, strict=True)]
        for rr, ii in zip(part["re"], part["im"], strict=True)
    ]


def _close(a: list[list[complex]], b: list[list[complex]]) -> bool:
    return all(abs(x - y) < 1e-9 for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_the_captured_output_is_the_op_at_stride_one() -> None:
    model = _model()
    image = torch.rand(3, 8, 8)
    model(image.unsqueeze(0))  # materialise the lazy layer
    x, op = capture_full_output(model, image, "2")
    conv1, conv2 = model[0], model[2]
    assert isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)
    expected = F.conv2d(F.relu(conv1(image.unsqueeze(0))), conv2.weight, conv2.bias, padding=1)[0]
    assert op.factor == (2, 2) and x.shape == (6, 8, 8)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(CnnAliasingError, match="no down-sampling op named '9'; the model's ops are: 2"):
        capture_full_output(model, image, "9")


def test_spectrum_file_matches_loop_dft_and_aliasing_per_map() -> None:
    model = _model()
    image = torch.rand(3, 8, 8)
    model(image.unsqueeze(0))
    record = capture_spectrum(model, image, "2", model_name="toy", index=3)
    x, _ = capture_full_output(model, image, "2")
    per_map = aliasing_per_map(x.double(), 2)
    assert record["channel"] == int(per_map.argmax())
    assert (record["model"], record["op"], record["image"], record["factor"], record["nyquist"]) == (
        "toy",
        "2",
        3,
        [2, 2],
        "zero",
    )
    chosen = x[record["channel"]].double().tolist()
    full, actual, alias_free = (_as_complex(record[k]) for k in ("full", "actual", "alias_free"))
    assert _close(full, _dft(chosen))
    assert _close(actual, _dft([row[::2] for row in chosen[::2]]))
    assert _close(alias_free, _alias_free(full, 4, 4))
    hand = sum(
        abs(y - z) for ry, rz in zip(actual, alias_free, strict=True) for y, z in zip(ry, rz, strict=True)
    )
    assert record["aliasing"] == pytest.approx(hand, rel=1e-12)
    assert record["aliasing"] == pytest.approx(float(per_map[record["channel"]]), rel=1e-5)


def test_known_answers_checkerboard_aliases_wholly_band_limited_not_at_all() -> None:
    idx = torch.arange(8)
    checkerboard = ((-1.0) ** (idx[:, None] + idx[None, :])).double()
    assert map_spectra(checkerboard, (2, 2), "zero")["aliasing"] == pytest.approx(1.0, abs=1e-12)
    smooth = torch.cos(2 * math.pi * idx.double() / 8)[:, None].expand(8, 8)
    assert map_spectra(smooth, (2, 2), "zero")["aliasing"] == pytest.approx(0.0, abs=1e-12)
    odd = torch.rand(7, 6, dtype=torch.float64)  # padded at the end to 8 x 6, as the metric pads
    record = map_spectra(odd, (2, 2), "keep_negative")
    assert len(record["full"]["re"]) == 8 and len(record["actual"]["re"][0]) == 3
    assert record["aliasing"] == pytest.approx(
        float(aliasing_per_map(odd, 2, nyquist="keep_negative")), rel=1e-9
    )
