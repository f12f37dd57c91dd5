"""The one-line forms of an error message (cnn_aliasing.errors): one_line joins a message's lines (the
command line's errors and warnings), error_line records any exception as one line (a study's failed model)
and names its type unless it is one of ours."""

from __future__ import annotations

import pytest

from cnn_aliasing.errors import CnnAliasingError, UnknownNameError, error_line, one_line


def test_one_line_joins_lines_after_a_colon_with_a_space_else_with_a_semicolon() -> None:
    message = "checkpoint x does not match:\n  2 missing keys: a, b\n\n  1 unexpected key: c\n"
    assert one_line(message) == "checkpoint x does not match: 2 missing keys: a, b; 1 unexpected key: c"
    assert one_line(" \n ") == ""


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (CnnAliasingError("bad file:\n  key x\n  key y"), "bad file: key x; key y"),
        (UnknownNameError("unknown model 'x'; valid models: a"), "unknown model 'x'; valid models: a"),
        (
            RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"),
            "RuntimeError: CUDA out of memory.; Tried to allocate 2 GiB",
        ),
        (ValueError(), "ValueError"),
        (CnnAliasingError(), "CnnAliasingError"),
    ],
)
def test_error_line_names_the_type_of_errors_not_ours(error: BaseException, line: str) -> None:
    assert error_line(error) == line
