"""Checkpoints: round trips, wrappers and prefixes, mismatch reports, and files that must be refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cnn_aliasing.errors import CheckpointError
from cnn_aliasing.models import create_model, load_checkpoint, save_checkpoint


class NotATensor:
    """A custom class: unpickling it would import (and could run) code."""


def small_model() -> torch.nn.Module:
    return create_model("preact_resnet18", width=4)


def trained_like(seed: int = 0) -> torch.nn.Module:
    """A small model whose weights and BN statistics differ from a fresh one."""
    torch.manual_seed(seed)
    model = small_model()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    return model.eval()


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], msg=key)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    source = trained_like()
    path = tmp_path / f"sub/weights{suffix}"
    save_checkpoint(source, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    loaded = load_checkpoint(small_model(), path)
    assert_same_weights(loaded, source)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), source(x))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_channels_last_model_saves_and_loads_back(tmp_path: Path, suffix: str) -> None:
    source = trained_like().to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
    path = tmp_path / f"weights{suffix}"
    save_checkpoint(source, path)
    assert_same_weights(load_checkpoint(small_model(), path), source)


def test_save_failure_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"old")

    def broken_save(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(small_model(), path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


@pytest.mark.parametrize(
    ("wrapper", "prefix"),
    [
        ("state_dict", "module."),
        ("model_state_dict", ""),
        ("model", "model."),
        (None, "module.model."),
    ],
)
def test_wrapped_and_prefixed_state_dicts(tmp_path: Path, wrapper: str | None, prefix: str) -> None:
    source = trained_like()
    state = {prefix + k: v for k, v in source.state_dict().items()}
    obj = state if wrapper is None else {wrapper: state, "epoch": 7, "best_acc": 0.9, "optimizer": {}}
    path = tmp_path / "wrapped.pth"
    torch.save(obj, path)
    assert_same_weights(load_checkpoint(small_model(), path), source)


def test_wrapped_safetensors_prefix(tmp_path: Path) -> None:
    source = trained_like()
    path = tmp_path / "w.safetensors"
    save_file({"module." + k: v.contiguous() for k, v in source.state_dict().items()}, path)
    assert_same_weights(load_checkpoint(small_model(), path), source)


def test_missing_num_batches_tracked_is_accepted(tmp_path: Path) -> None:
    # checkpoints written before PyTorch 0.4.1 have no BatchNorm counters; torch fills them in
    source = trained_like()
    for k, v in source.state_dict().items():
        if k.endswith("num_batches_tracked"):
            v.fill_(7)  # counters the loaded model must not get: the checkpoint lacks them
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    loaded = load_checkpoint(small_model(), path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # every stored tensor was loaded
    counters = [k for k in loaded if k.endswith("num_batches_tracked")]
    assert counters and all(int(loaded[k]) == 0 for k in counters)  # torch's own, not the source's 7


def mismatched_checkpoint(tmp_path: Path) -> Path:
    state = dict(trained_like().state_dict())
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["linear.weight"] = torch.zeros(5, 32)
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    return path


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    path = mismatched_checkpoint(tmp_path)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert str(path) in message
    assert "1 missing key: layer2.0.conv1.weight" in message
    assert "1 unexpected key: extra.weight" in message
    assert "1 mis-shaped key: linear.weight (checkpoint (5, 32), model (10, 32))" in message
    for key, value in model.state_dict().items():  # nothing was copied
        torch.testing.assert_close(value, before[key])


def test_non_strict_allows_missing_and_unexpected_but_not_misshaped(tmp_path: Path) -> None:
    path = mismatched_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="mis-shaped") as info:
        load_checkpoint(small_model(), path, strict=False)
    assert "missing key" not in str(info.value) and "unexpected key" not in str(info.value)
    state = torch.load(path, weights_only=True)
    del state["linear.weight"]
    torch.save(state, path)
    source = trained_like()
    loaded = load_checkpoint(small_model(), path, strict=False)
    torch.testing.assert_close(loaded.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"])


def test_long_mismatch_lists_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "wrn.pt"
    torch.save(create_model("wrn_28_10", depth=10, widen_factor=1).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(small_model(), path)
    message = str(info.value)
    assert "missing keys:" in message and "unexpected keys:" in message
    assert "more" in message and len(message) < 3000


@pytest.mark.parametrize("payload", ["custom_object", "whole_module"])
def test_pickle_that_would_run_code_is_refused(tmp_path: Path, payload: str) -> None:
    path = tmp_path / "evil.pt"
    model = small_model()
    obj = {"state_dict": model.state_dict(), "extra": NotATensor()} if payload == "custom_object" else model
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="would execute code") as info:
        load_checkpoint(small_model(), path)
    message = str(info.value)
    assert str(path) in message and "weights_only=False" in message and "state dict" in message


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_is_rejected(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    save_checkpoint(small_model(), good)
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(small_model(), bad)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_html_page_is_rejected(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"download{suffix}"
    path.write_text("\n<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n")
    with pytest.raises(CheckpointError, match="HTML") as info:
        load_checkpoint(small_model(), path)
    assert str(path) in str(info.value)


def test_garbage_pickle_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x80\x02garbage that is no pickle")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_checkpoint(small_model(), path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt"
    with pytest.raises(CheckpointError, match=r"not found: .*nowhere\.pt"):
        load_checkpoint(small_model(), path)


def test_checkpoint_without_state_dict_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "acc": 0.5}, path)
    with pytest.raises(CheckpointError, match=r"no state dict.*'epoch', 'acc'"):
        load_checkpoint(small_model(), path)


def test_item_and_ignored_keys(tmp_path: Path) -> None:
    """A file holding several state dicts, with extra copies saved by training code beside the weights."""
    source = trained_like()
    last = {**source.state_dict(), "extra_copy.weight": torch.zeros(3)}
    path = tmp_path / "two.pt"
    torch.save({"last": last, "best": trained_like(1).state_dict()}, path)
    loaded = load_checkpoint(small_model(), path, item="last", ignore_keys=("extra_copy.*",))
    assert_same_weights(loaded, source)
    with pytest.raises(CheckpointError, match=r"1 unexpected key: extra_copy\.weight"):
        load_checkpoint(small_model(), path, item="last")
    with pytest.raises(CheckpointError, match=r"no item 'final'.*\['last', 'best'\]"):
        load_checkpoint(small_model(), path, item="final")
