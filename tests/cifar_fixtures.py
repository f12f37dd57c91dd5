"""Fake CIFAR-10 python layouts for tests: tiny batches of random pixels written in tmp folders."""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from cnn_aliasing import data

TRAIN_SIZES = (3, 2, 4, 1, 2)
TEST_SIZE = 5


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 `str` opcodes, as in the original CIFAR-10 release."""

    write: Callable[[bytes], object]  # set by pickle._Pickler.__init__; typeshed does not declare it

    def _save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)
    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _dump(batch: dict, protocol: int | str) -> bytes:
    if protocol == "py2":
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(batch)
        # the original files name numpy 1's module path
        return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert isinstance(protocol, int)
    return pickle.dumps(batch, protocol=protocol)


def make_layout(
    root: Path,
    *,
    train_sizes: tuple[int, ...] = TRAIN_SIZES,
    test_size: int = TEST_SIZE,
    protocol: int | str = 4,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write `root/cifar-10-batches-py` with tiny batches of random pixels; return the expected rows."""
    folder = root / data.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(123)
    expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    offset = 0
    for split, sizes in (("train", train_sizes), ("test", (test_size,))):
        rows, labels = [], []
        for name, n in zip(data.SPLIT_FILES[split], sizes, strict=True):
            row = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            label = [(offset + i) % 10 for i in range(n)]
            offset += n
            batch = {b"batch_label": name.encode(), b"data": row, b"labels": label}
            (folder / name).write_bytes(_dump(batch, protocol))
            rows.append(row)
            labels.append(np.array(label, dtype=np.int64))
        expected[split] = (np.concatenate(rows), np.concatenate(labels))
    return expected
