"""Tests of cnn_aliasing.data on tiny fake CIFAR-10 layouts built in tmp_path (no network)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from cifar_fixtures import TEST_SIZE, TRAIN_SIZES, make_layout
from cnn_aliasing import data
from cnn_aliasing.data import download_cifar10, iterate_batches, load_cifar10, to_float
from cnn_aliasing.errors import CnnAliasingError, DataError


# --------------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("protocol", [2, 4, 5, "py2"])
def test_load_test_split_values_and_layout(tmp_path: Path, protocol: int | str) -> None:
    expected = make_layout(tmp_path, protocol=protocol)
    images, labels = load_cifar10(tmp_path, "test")
    rows, want_labels = expected["test"]
    assert images.shape == (TEST_SIZE, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (TEST_SIZE,) and labels.dtype == torch.int64
    assert torch.equal(labels, torch.from_numpy(want_labels))
    # channel-major rows: 1024 red values (row-major 32 x 32), then green, then blue
    assert images[2, 0, 0, 0] == rows[2, 0]
    assert images[2, 1, 0, 0] == rows[2, 1024]
    assert images[2, 2, 1, 3] == rows[2, 2048 + 32 + 3]
    assert torch.equal(images.reshape(TEST_SIZE, -1), torch.from_numpy(rows))


def test_load_train_concatenates_batches_in_order(tmp_path: Path) -> None:
    expected = make_layout(tmp_path)
    images, labels = load_cifar10(tmp_path, "train")
    rows, want_labels = expected["train"]
    assert images.shape == (sum(TRAIN_SIZES), 3, 32, 32)
    assert torch.equal(images.reshape(len(rows), -1), torch.from_numpy(rows))
    assert torch.equal(labels, torch.from_numpy(want_labels))


def test_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    expected = make_layout(tmp_path)
    images, _ = load_cifar10(str(tmp_path / data.CIFAR10_FOLDER), "test")
    assert torch.equal(images.reshape(TEST_SIZE, -1), torch.from_numpy(expected["test"][0]))


def test_n_images_spans_batches_and_reads_only_what_it_needs(tmp_path: Path) -> None:
    expected = make_layout(tmp_path)
    folder = tmp_path / data.CIFAR10_FOLDER
    # 3 + 2 + 1 images: batches 1..3 are needed; corrupt batch 4 to prove it is never read
    (folder / "data_batch_4").write_bytes(b"not a pickle")
    images, labels = load_cifar10(tmp_path, "train", n_images=6)
    rows, want_labels = expected["train"]
    assert images.shape == (6, 3, 32, 32)
    assert torch.equal(images.reshape(6, -1), torch.from_numpy(rows[:6]))
    assert torch.equal(labels, torch.from_numpy(want_labels[:6]))
    with pytest.raises(DataError, match="data_batch_4"):
        load_cifar10(tmp_path, "train", n_images=10)


def test_n_images_equal_to_split_size_and_the_result_is_writable(tmp_path: Path) -> None:
    make_layout(tmp_path)
    images, labels = load_cifar10(tmp_path, "test", n_images=np.int64(TEST_SIZE))
    assert len(images) == len(labels) == TEST_SIZE
    images[0] += 1  # owns its memory: no read-only numpy buffer underneath


@pytest.mark.parametrize("n_images", [0, -3, 2.5, True])
def test_bad_n_images(tmp_path: Path, n_images: object) -> None:
    make_layout(tmp_path)
    got = f"{type(n_images).__name__} {n_images!r}"
    message = rf"^n_images must be an integer >= 1, got {got} \(or None: the whole split\)$"
    with pytest.raises(CnnAliasingError, match=message):
        load_cifar10(tmp_path, "test", n_images=n_images)  # type: ignore[arg-type]


def test_n_images_above_split_size_names_the_split_and_size(tmp_path: Path) -> None:
    make_layout(tmp_path)
    with pytest.raises(DataError, match=r"n_images=13 .* 12 images of the CIFAR-10 'train' split.*1\.\.12"):
        load_cifar10(tmp_path, "train", n_images=13)


def test_unknown_split_lists_valid_ones(tmp_path: Path) -> None:
    make_layout(tmp_path)
    with pytest.raises(DataError, match=r"unknown CIFAR-10 split 'val'.*'train', 'test'"):
        load_cifar10(tmp_path, "val")


def test_missing_folder_explains_how_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path / "nowhere", "test")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "download=True" in message and "--download" in message and "cifar-10-batches-py" in message
    assert not (tmp_path / "nowhere").exists()  # no download without asking


def test_missing_batch_file_names_folder_and_files(tmp_path: Path) -> None:
    make_layout(tmp_path)
    folder = tmp_path / data.CIFAR10_FOLDER
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match=r"incomplete: data_batch_5 missing for split 'train'") as info:
        load_cifar10(tmp_path, "train")
    assert str(folder) in str(info.value)
    load_cifar10(tmp_path, "test")  # the other split is whole


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is corrupt"),
        (b"garbage bytes that are no pickle", "is corrupt"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-20], "is corrupt"),
        (pickle.dumps([1, 2, 3]), "not a dict with keys"),
        (pickle.dumps({b"labels": [1]}), "not a dict with keys"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "rows of 100 values"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "uint8 array"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "1 labels for 2 images"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), r"0\.\.9"),
        (
            pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": ["a", "b"]}),
            "not a list of integers",
        ),
    ],
)
def test_corrupt_batch_file_names_the_file(tmp_path: Path, content: bytes, match: str) -> None:
    make_layout(tmp_path)
    path = tmp_path / data.CIFAR10_FOLDER / "test_batch"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        load_cifar10(tmp_path, "test")
    assert str(path) in str(info.value)


def test_str_keys_are_accepted(tmp_path: Path) -> None:
    make_layout(tmp_path)
    row = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / data.CIFAR10_FOLDER / "test_batch"
    path.write_bytes(pickle.dumps({"data": row, "labels": np.array([4, 2])}))
    images, labels = load_cifar10(tmp_path, "test")
    assert labels.tolist() == [4, 2]
    assert torch.equal(images.reshape(2, -1), torch.from_numpy(row))


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > pwned.txt",))


class _ObjectArray:
    def __reduce__(self) -> tuple:
        return (np.array, ([1, 2],))


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({b"data": _RunsCode(), b"labels": [0]}, "system"),
        ({b"data": _ObjectArray(), b"labels": [0]}, "numpy"),
        ({b"data": np.zeros((1, 3072), dtype=object), b"labels": [0]}, None),
    ],
)
def test_restricted_unpickler_refuses_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: dict, named: str | None
) -> None:
    make_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / data.CIFAR10_FOLDER / "test_batch"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path, "test")
    message = str(info.value)
    assert str(path) in message
    if named is not None:
        assert "refusing to load" in message and named in message
    else:
        assert "object dtype" in message
    assert not (tmp_path / "pwned.txt").exists()


# -------------------------------------------------------------------------------------------------- download
def _make_archive(where: Path, *, train_sizes: tuple[int, ...] = (2, 1, 1, 1, 1)) -> tuple[Path, str]:
    """A small `cifar-10-python.tar.gz` in `where` with a fake layout; return (archive, md5)."""
    source = where / "source"
    make_layout(source, train_sizes=train_sizes, test_size=3)
    archive = where / "served" / data.CIFAR10_ARCHIVE
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / data.CIFAR10_FOLDER, arcname=data.CIFAR10_FOLDER)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _url(path: Path) -> str:
    return path.resolve().as_uri()


def test_download_extracts_and_loads(tmp_path: Path) -> None:
    archive, md5 = _make_archive(tmp_path)
    root = tmp_path / "root"
    folder = download_cifar10(root, url=_url(archive), md5=md5, progress=False)
    assert folder == root / data.CIFAR10_FOLDER
    assert {p.name for p in root.iterdir()} == {data.CIFAR10_ARCHIVE, data.CIFAR10_FOLDER}
    images, labels = load_cifar10(root, "test")
    assert images.shape == (3, 3, 32, 32) and labels.shape == (3,)


def test_load_with_download_uses_the_default_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, md5 = _make_archive(tmp_path)
    opened: list[str] = []
    real_urlopen = urllib.request.urlopen

    def fake_urlopen(url: str, timeout: float) -> object:
        opened.append(url)
        return real_urlopen(_url(archive), timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    # keep the default url, but expect the small archive's md5
    monkeypatch.setattr(
        data, "download_cifar10", lambda root, progress: download_cifar10(root, md5=md5, progress=progress)
    )
    images, _ = load_cifar10(tmp_path / "root", "train", download=True, progress=False)
    assert opened == [data.CIFAR10_URL]
    assert images.shape == (6, 3, 32, 32)
    # a root naming the missing batches folder itself downloads next to it, not inside it
    images, _ = load_cifar10(tmp_path / "other" / data.CIFAR10_FOLDER, "test", download=True, progress=False)
    assert (tmp_path / "other" / data.CIFAR10_ARCHIVE).is_file()
    assert not (tmp_path / "other" / data.CIFAR10_FOLDER / data.CIFAR10_FOLDER).exists()


def test_wrong_checksum_leaves_nothing_behind(tmp_path: Path) -> None:
    archive, md5 = _make_archive(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    wrong = "0" * 32
    with pytest.raises(DataError, match=f"checksum mismatch.*expected md5 {wrong}, got {md5}"):
        download_cifar10(root, url=_url(archive), md5=wrong, progress=False)
    assert list(root.iterdir()) == []


def test_truncated_download_fails_the_checksum(tmp_path: Path) -> None:
    archive, md5 = _make_archive(tmp_path)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:-100])
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="checksum mismatch"):
        download_cifar10(root, url=_url(truncated), md5=md5, progress=False)
    assert list(root.iterdir()) == []


class _BrokenResponse(io.BytesIO):
    """A response that delivers one chunk, then loses the connection."""

    headers: ClassVar[dict[str, str]] = {"Content-Length": "1000000"}

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() == 0:
            return super().read(10)
        raise ConnectionResetError("connection reset by peer")


def test_interrupted_download_leaves_no_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, md5 = _make_archive(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _BrokenResponse(archive.read_bytes()))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match=r"cannot download CIFAR-10 from .*connection reset"):
        download_cifar10(root, url="https://example.invalid/c.tar.gz", md5=md5, progress=False)
    assert list(root.iterdir()) == []


def test_keyboard_interrupt_during_download_leaves_no_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, md5 = _make_archive(tmp_path)

    class Interrupted(_BrokenResponse):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() == 0:
                return io.BytesIO.read(self, 10)
            raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Interrupted(archive.read_bytes()))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(KeyboardInterrupt):
        download_cifar10(root, url="https://example.invalid/c.tar.gz", md5=md5, progress=False)
    assert list(root.iterdir()) == []


def test_damaged_archive_with_matching_md5_is_deleted(tmp_path: Path) -> None:
    archive, _ = _make_archive(tmp_path)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    md5 = hashlib.md5(truncated.read_bytes()).hexdigest()
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match="damaged"):
        download_cifar10(root, url=_url(truncated), md5=md5, progress=False)
    assert list(root.iterdir()) == []


def test_existing_archive_with_right_md5_is_not_downloaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, md5 = _make_archive(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / data.CIFAR10_ARCHIVE).write_bytes(archive.read_bytes())

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded although a verified archive was there")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    folder = download_cifar10(root, url="https://example.invalid/c.tar.gz", md5=md5, progress=False)
    assert (folder / "test_batch").is_file()
    # and once extracted, the folder alone is enough
    (root / data.CIFAR10_ARCHIVE).unlink()
    assert download_cifar10(root, url="https://example.invalid/c.tar.gz", md5=md5) == folder


def test_existing_archive_with_wrong_md5_is_replaced(tmp_path: Path) -> None:
    archive, md5 = _make_archive(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / data.CIFAR10_ARCHIVE).write_bytes(b"stale partial archive")
    download_cifar10(root, url=_url(archive), md5=md5, progress=False)
    assert (root / data.CIFAR10_ARCHIVE).read_bytes() == archive.read_bytes()


def _archive_with(where: Path, add: Callable[[tarfile.TarFile], None]) -> tuple[Path, str]:
    archive = where / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add(tar)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def _add_file(tar: tarfile.TarFile, name: str, content: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def _add_symlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo(f"{data.CIFAR10_FOLDER}/test_batch")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    tar.addfile(info)


@pytest.mark.parametrize(
    ("add", "match"),
    [
        (lambda tar: _add_file(tar, "../escaped"), "absolute path, a drive or '..'"),
        (lambda tar: _add_file(tar, f"{data.CIFAR10_FOLDER}/../../escaped"), "'..'"),
        (lambda tar: _add_file(tar, "/tmp/cnn-aliasing-absolute"), "absolute path"),
        (_add_symlink, "not a regular file or folder"),
        (lambda tar: _add_file(tar, "something-else/file"), "has no cifar-10-batches-py/ folder"),
    ],
)
def test_unsafe_or_wrong_archive_is_refused(
    tmp_path: Path, add: Callable[[tarfile.TarFile], None], match: str
) -> None:
    archive, md5 = _archive_with(tmp_path, add)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match=match):
        download_cifar10(root, url=_url(archive), md5=md5, progress=False)
    assert list(root.iterdir()) == []
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/cnn-aliasing-absolute").exists()


def test_download_progress_bar_can_be_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive, md5 = _make_archive(tmp_path)
    download_cifar10(tmp_path / "root", url=_url(archive), md5=md5, progress=True)
    assert "downloading" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- batching
def test_to_float_scales_uint8_and_keeps_floats() -> None:
    images = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    out = to_float(images)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[0.0, 0.2, 1.0]]))
    assert images.tolist() == [[0, 51, 255]]  # input untouched
    floats = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert to_float(floats).dtype == torch.float32 and to_float(floats).tolist() == [0.25, 0.5]
    with pytest.raises(CnnAliasingError, match="int64"):
        to_float(torch.tensor([1, 2]))


def test_iterate_batches_covers_everything_in_order() -> None:
    images = (
        torch.arange(7 * 3 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(7, 3, 32, 32)
    )
    labels = torch.arange(7)
    batches = list(iterate_batches(images, labels, np.int64(3)))
    assert [len(x) for x, _ in batches] == [3, 3, 1]
    for x, _ in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(torch.cat([x for x, _ in batches]), images.float() / 255)
    assert torch.equal(torch.cat([y for _, y in batches]), labels)


def test_iterate_batches_moves_to_device() -> None:
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    devices: list[str | torch.device] = ["cpu", torch.device("meta")]
    devices += ["cuda"] if torch.cuda.is_available() else []
    for device in devices:
        x, y = next(iterate_batches(images, torch.zeros(4, dtype=torch.int64), 4, device=device))
        assert x.device.type == y.device.type == torch.device(device).type
        assert x.dtype == torch.float32


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_iterate_batches_rejects_bad_batch_size_at_call_time(batch_size: object) -> None:
    with pytest.raises(
        CnnAliasingError,
        match=rf"^batch_size must be an integer >= 1, got {type(batch_size).__name__} {batch_size!r}$",
    ):
        iterate_batches(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2), batch_size)  # type: ignore[arg-type]


def test_iterate_batches_rejects_mismatched_labels() -> None:
    with pytest.raises(CnnAliasingError, match="3 images but 2 labels"):
        iterate_batches(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.zeros(2), 2)


# ---------------------------------------------------------------------------------------------- shared copy
def _shared_copy() -> Path | None:
    """CIFAR-10 from CNN_ALIASING_DATA, or the data/ folder scripts/setup.sh makes in the checkout."""
    root = Path(os.environ.get("CNN_ALIASING_DATA") or Path(__file__).resolve().parents[1] / "data")
    return root if data._find_folder(root) is not None else None


@pytest.mark.skipif(
    _shared_copy() is None, reason="no CIFAR-10 copy: run scripts/setup.sh or set CNN_ALIASING_DATA"
)
def test_real_shared_copy() -> None:
    root = _shared_copy()
    assert root is not None
    test_images, test_labels = load_cifar10(root, "test", progress=False)
    assert test_images.shape == (10000, 3, 32, 32) and test_images.dtype == torch.uint8
    assert test_labels.shape == (10000,) and test_labels.dtype == torch.int64
    assert 0 <= test_labels.min() and test_labels.max() <= 9
    counts = torch.bincount(test_labels[:1000], minlength=10)
    assert counts.min() >= 70 and counts.max() <= 130, counts.tolist()
    train_images, train_labels = load_cifar10(root, "train", progress=False)
    assert train_images.shape == (50000, 3, 32, 32) and train_labels.shape == (50000,)
    assert torch.bincount(train_labels, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(test_labels, minlength=10).tolist() == [1000] * 10
    assert 60 < test_images.float().mean() < 200  # real pixels, not zeros
