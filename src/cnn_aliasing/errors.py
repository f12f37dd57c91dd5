"""Exceptions raised by cnn-aliasing.

Every error a user can cause derives from :class:`CnnAliasingError`; its message names the offending op,
file or argument and what would be valid. The command line prints such errors as one line.
"""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of ``error``'s message, for quoting it inside one-line messages; an empty message
    gives ``default`` (None: the error's type name)."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if default is None else default


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
