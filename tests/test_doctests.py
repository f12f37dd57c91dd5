"""The ``>>>`` examples in the package's docstrings run (those that need data or minutes are marked
``doctest: +SKIP`` and only checked to parse)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import cnn_aliasing


def _modules_with_examples() -> list[str]:
    names = [cnn_aliasing.__name__]
    names += [m.name for m in pkgutil.walk_packages(cnn_aliasing.__path__, prefix="cnn_aliasing.")]
    return [name for name in names if ">>>" in (importlib.import_module(name).__doc__ or "")]


def test_the_examples_are_found() -> None:
    assert {"cnn_aliasing.training", "cnn_aliasing.zoo", "cnn_aliasing.study"} <= set(
        _modules_with_examples()
    )


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), verbose=False, report=True)
    assert result.failed == 0 and result.attempted > 0
