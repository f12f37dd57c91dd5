"""CIFAR-10 in the standard python layout: loading, safe unpickling, download with checksum, batching.

The layout is ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}``: pickled dicts with ``b"data"``
(N x 3072 uint8, channel-major) and ``b"labels"``. A local copy is read as it is, without any checksum
check (the shared JPEG re-encoding differs from the original files); only an archive this module
downloads itself is checked against its md5.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cnn_aliasing.errors import CnnAliasingError, DataError
from cnn_aliasing.files import atomic_file
from cnn_aliasing.validation import is_int, optional

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
_ROW_SIZE = 3 * 32 * 32
_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------------- unpickling
def _numpy_attr(module: str, name: str) -> Any:
    """`numpy._core.<module>.<name>` on numpy 2, `numpy.core.<module>.<name>` on numpy 1."""
    try:
        core = __import__(f"numpy._core.{module}", fromlist=[name])
    except ImportError:  # numpy < 2
        core = __import__(f"numpy.core.{module}", fromlist=[name])
    return getattr(core, name)


def _safe_dtype(*args: Any) -> np.dtype:
    """`numpy.dtype` as called by pickle, refusing object dtypes (they would unpickle arbitrary objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dtype} is not allowed")
    return dtype


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles from Python 3 use it for bytes; latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_attr("multiarray", "_reconstruct")
    frombuffer = _numpy_attr("numeric", "_frombuffer")
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy globals needed to rebuild plain uint8 arrays."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _get(batch: dict, key: str) -> Any:
    """A key of a batch dict, whether stored as bytes (Python 2 pickles) or str."""
    if key.encode() in batch:
        return batch[key.encode()]
    if key in batch:
        return batch[key]
    raise KeyError(key)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into (data N x 3072 uint8, labels N int64), validating it."""
    try:
        with open(path, "rb") as fh:
            batch = _RestrictedUnpickler(fh, encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise DataError(
            f"refusing to load CIFAR-10 batch file {path}: it references {exc}, which could run code; "
            "a batch file may only contain numpy arrays, lists, bytes and str"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch file {path}: {exc}") from exc
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(
            f"CIFAR-10 batch file {path} is corrupt ({type(exc).__name__}: {exc}); "
            "delete the folder and download or create it again"
        ) from exc
    try:
        data, labels = _get(batch, "data"), _get(batch, "labels")
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"CIFAR-10 batch file {path} is not a dict with keys b'data' and b'labels' (missing {exc})"
        ) from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise DataError(
            f"CIFAR-10 batch file {path}: b'data' must be an N x {_ROW_SIZE} uint8 array, got {got}"
        )
    if data.shape[1] != _ROW_SIZE:
        raise DataError(
            f"CIFAR-10 batch file {path}: b'data' has rows of {data.shape[1]} values, not {_ROW_SIZE}"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"CIFAR-10 batch file {path}: b'labels' is not a list of integers ({exc})") from None
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"CIFAR-10 batch file {path}: {labels.size} labels for {data.shape[0]} images (need one each)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"CIFAR-10 batch file {path}: labels must lie in 0..{NUM_CLASSES - 1}, "
            f"found {labels.min()}..{labels.max()}"
        )
    return data, labels


# ------------------------------------------------------------------------------------------------- loading
def _find_folder(root: Path) -> Path | None:
    """The `cifar-10-batches-py` folder for `root` (its parent or the folder itself), None if absent."""
    if (root / CIFAR10_FOLDER).is_dir():
        return root / CIFAR10_FOLDER
    all_files = [name for names in SPLIT_FILES.values() for name in names]
    if root.is_dir() and (root.name == CIFAR10_FOLDER or any((root / f).is_file() for f in all_files)):
        return root
    return None


def load_cifar10(
    root: str | os.PathLike[str],
    split: str = "test",
    *,
    n_images: int | None = None,
    download: bool = False,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split as (images uint8 N x 3 x 32 x 32, labels int64 N).

    `root` holds `cifar-10-batches-py/` or is that folder. `n_images` keeps the first N images of the split
    and reads only the batch files needed. With `download=True` a missing folder is downloaded into `root`
    (official archive, md5-checked); `progress` shows or hides the download bar.
    """
    if split not in SPLIT_FILES:
        raise DataError(
            f"unknown CIFAR-10 split {split!r}; valid splits: {', '.join(map(repr, SPLIT_FILES))}"
        )
    n_images = optional(is_int(1), "the whole split")(n_images, "n_images")
    root = Path(root).expanduser()
    folder = _find_folder(root)
    if folder is None:
        if not download:
            raise DataError(
                f"CIFAR-10 not found in {root}: expected {root / CIFAR10_FOLDER}/ with "
                f"data_batch_1..5 and test_batch (the python layout); pass download=True (--download) to "
                "fetch it, or create it offline with `python shared/data/make_cifar10.py DIR`"
            )
        folder = download_cifar10(root.parent if root.name == CIFAR10_FOLDER else root, progress=progress)

    files = [folder / name for name in SPLIT_FILES[split]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 folder {folder} is incomplete: {', '.join(missing)} missing for split {split!r} "
            f"(it needs {', '.join(SPLIT_FILES[split])}); delete the folder and download or create it again"
        )

    datas: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    total = 0
    for path in files:
        if n_images is not None and total >= n_images:
            break
        data, label = _read_batch(path)
        take = data.shape[0] if n_images is None else min(data.shape[0], n_images - total)
        datas.append(data[:take])
        labels.append(label[:take])
        total += take
    if n_images is not None and total < n_images:
        raise DataError(
            f"n_images={n_images} is more than the {total} images of the CIFAR-10 {split!r} split in "
            f"{folder}; valid: 1..{total} or None"
        )
    images = torch.from_numpy(np.concatenate(datas)).reshape(-1, *IMAGE_SHAPE)
    return images, torch.from_numpy(np.concatenate(labels))


# ------------------------------------------------------------------------------------------------ download
def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str, progress: bool) -> None:
    """Download `url` to `dest` through a temporary file (:func:`cnn_aliasing.files.atomic_file`), checking
    its md5; leaves nothing on failure."""
    try:
        with (
            atomic_file(dest) as tmp,
            tmp.open("wb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            digest = hashlib.md5(usedforsecurity=False)
            size = response.headers.get("Content-Length")
            with tqdm(
                total=int(size) if size else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"downloading {dest.name}",
                disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            got = digest.hexdigest()
            if got != md5:
                raise DataError(
                    f"checksum mismatch for {url}: expected md5 {md5}, got {got}; the download was deleted, "
                    "try again or place the python layout in the data folder yourself"
                )
    except OSError as exc:
        raise DataError(
            f"cannot download CIFAR-10 from {url} to {dest.parent}: {exc}; without internet, place "
            f"{CIFAR10_FOLDER}/ there yourself (e.g. `python shared/data/make_cifar10.py DIR`)"
        ) from exc


def _member_path(base: Path, member: tarfile.TarInfo, archive: Path) -> Path:
    """Where a tar member goes under `base`; refuses absolute paths, '..', links and special files."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith("\\") or ".." in name.parts or ":" in member.name:
        raise DataError(
            f"refusing to extract {archive}: member {member.name!r} has an absolute path, a drive or '..'"
        )
    if not (member.isreg() or member.isdir()):
        raise DataError(
            f"refusing to extract {archive}: member {member.name!r} is not a regular file or folder "
            "(links and special files are not allowed)"
        )
    return base.joinpath(*name.parts)


def _extract(archive: Path, root: Path) -> Path:
    """Extract `archive` into a temporary folder under `root`, then move its CIFAR-10 folder into place."""
    staging = Path(tempfile.mkdtemp(prefix=".cifar-10-extract-", dir=root))
    target = root / CIFAR10_FOLDER
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    dest = _member_path(staging, member, archive)
                    if member.isdir():
                        dest.mkdir(parents=True, exist_ok=True)
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None  # a regular file always has a reader
                    with src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise DataError(f"archive {archive} is damaged and was deleted: {exc}") from exc
        extracted = staging / CIFAR10_FOLDER
        if not extracted.is_dir():
            raise DataError(f"archive {archive} has no {CIFAR10_FOLDER}/ folder; it was deleted")
        try:
            os.rename(extracted, target)
        except OSError:
            if not target.is_dir():  # another process may have finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def download_cifar10(
    root: str | os.PathLike[str],
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool = True,
) -> Path:
    """Download and extract the CIFAR-10 python archive into `root`; return `root/cifar-10-batches-py`.

    The archive is kept as `root/cifar-10-python.tar.gz`; one already there with the right md5 is reused.
    A checksum mismatch, an interrupted download or a damaged archive raises DataError and leaves no
    partial files.
    """
    root = Path(root).expanduser()
    target = root / CIFAR10_FOLDER
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    archive = root / CIFAR10_ARCHIVE
    if not (archive.is_file() and _md5_of(archive) == md5):
        _fetch(url, archive, md5, progress)
    try:
        return _extract(archive, root)
    except DataError:
        archive.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------ batching
def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) as float32 in [0, 1]; floating-point images are only cast to float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255)
    if images.is_floating_point():
        return images.to(torch.float32)
    raise CnnAliasingError(
        f"images must be uint8 (0..255) or floating point in [0, 1], got dtype {images.dtype}"
    )


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 images in [0, 1], labels) batches in order, moved to `device` if given.

    Images travel as uint8 and are converted on the device, which moves a quarter of the bytes.
    """
    step = is_int(1)(batch_size, "batch_size")
    if len(images) != len(labels):
        raise CnnAliasingError(f"{len(images)} images but {len(labels)} labels; need one label per image")
    target = torch.device(device) if device is not None else None
    non_blocking = target is not None and target.type == "cuda"

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(images), step):
            x, y = images[start : start + step], labels[start : start + step]
            if target is not None:
                x, y = x.to(target, non_blocking=non_blocking), y.to(target, non_blocking=non_blocking)
            yield to_float(x), y

    return batches()
