"""Subcommands as a registry: each is a :class:`Subcommand` registered with :func:`register_subcommand`."""

from __future__ import annotations

import abc
import argparse
import textwrap
from typing import ClassVar

from cnn_aliasing.registry import Registry

PROG = "cnn-aliasing"


class Subcommand(abc.ABC):
    """One subcommand: its name, one-line help, description and example, its arguments and its action."""

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str]
    example: ClassVar[str]

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this subcommand's arguments to its parser."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code. User errors are raised as CnnAliasingError or OSError."""


SUBCOMMANDS: Registry[Subcommand] = Registry("subcommand", describe=lambda command: command.help)


def register_subcommand(cls: type[Subcommand]) -> type[Subcommand]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    SUBCOMMANDS.register(cls.name, cls())
    return cls


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose paragraphs but keeps indented lines (examples) as written; shows non-empty defaults."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "%(default)" in text or not action.option_strings or hidden:
            return text
        return f"{text} (default: %(default)s)"
