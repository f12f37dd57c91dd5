"""Exceptions raised by cnn-aliasing.

Every error a user can cause derives from :class:`CnnAliasingError`; its message names the offending op,
file or argument and what would be valid. The command line prints such errors as one line
(:func:`one_line`); :func:`first_line` quotes another error inside a message, :func:`error_line` records
any error as one line (a study's failed model).
"""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of ``error``'s message, for quoting it inside one-line messages; an empty message
    gives ``default`` (None: the error's type name)."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if default is None else default


def one_line(message: str) -> str:
    """A multi-line message joined into one line (``a:\\n  b\\n  c`` -> ``a: b; c``)."""
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    if not parts:
        return ""
    joined = parts[0]
    for part in parts[1:]:
        joined += f" {part}" if joined.endswith(":") else f"; {part}"
    return joined


def error_line(error: BaseException) -> str:
    """An exception as one line (:func:`one_line`): its message, after its type's name unless it is one of
    ours (a :class:`CnnAliasingError`); an empty message gives the type's name alone."""
    text = one_line(str(error))
    if isinstance(error, CnnAliasingError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class CnnAliasingError(Exception):
    """Base class of all errors caused by user input (bad names, files, shapes or options)."""


class UnknownNameError(CnnAliasingError, KeyError):
    """A name looked up in a registry does not exist; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownKeyError(CnnAliasingError):
    """A mapping of settings (recipe fields, attack options, a config table) has a key its schema does not
    declare; the message names the unknown keys and lists the valid ones (see :mod:`cnn_aliasing.fields`)."""


class CheckpointError(CnnAliasingError):
    """A checkpoint cannot be read, would run code, or does not match the model."""


class DataError(CnnAliasingError):
    """A data folder or archive is missing, incomplete or corrupt."""


class ModelInputError(CnnAliasingError):
    """A model cannot run on the given input (for example an image size it cannot take)."""


class ModelArgumentError(CnnAliasingError, ValueError):
    """A registered model's factory refused its arguments (a wrong type or value)."""


class DistributedError(CnnAliasingError):
    """A process group cannot start from its environment, or a collective failed or timed out (a peer
    rank probably died or stopped); the message names this rank and the world size."""


class ReportFormatError(CnnAliasingError):
    """An aliasing report read back from JSON lacks a key it needs; the message names the key's path
    (``missing key 'ops[1].metrics.aliasing.std'``)."""
