"""The ``cnn-aliasing`` command line: subcommands from a registry, one-line errors, JSON/CSV results.

Each subcommand is a :class:`Subcommand` registered with :func:`register_subcommand` in a module of its
own in this package, named after it (``measure``, ``evaluate``, ``train``, ``models``, ...);
every module here except the shared ones (:data:`SHARED_MODULES`) is imported on start, so a new
subcommand is a new module and nothing else. :func:`main` builds the parser from the registry and
dispatches by name. Errors a user can cause (:class:`CnnAliasingError`, ``OSError`` for files, and
usage errors of the command line itself) end the command with one line on stderr and exit code 2;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from cnn_aliasing import __version__
from cnn_aliasing.cli.options import parse_model_arg
from cnn_aliasing.cli.registry import PROG, SUBCOMMANDS, HelpFormatter, Subcommand, register_subcommand
from cnn_aliasing.errors import CnnAliasingError, one_line

SHARED_MODULES = frozenset({"options", "registry"})
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

__all__ = [
    "SUBCOMMANDS",
    "Subcommand",
    "build_parser",
    "main",
    "one_line",
    "parse_model_arg",
    "register_subcommand",
]


def _import_subcommands() -> None:
    """Import every subcommand module of this package (alphabetically); each registers its subcommand."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in SHARED_MODULES:
            importlib.import_module(f"{__name__}.{info.name}")


_import_subcommands()


def _add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--debug and --quiet, accepted before or after the subcommand (not repeated defaults after it)."""
    default: Any = False if top_level else argparse.SUPPRESS
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks of errors")
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress bars")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line on stderr, like every other error of the command
    (its subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` and exit with status 2."""
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered subcommand."""
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "Measure aliasing in every down-sampling op of a convolutional network and relate it to "
            "adversarial robustness (Grabinski, Keuper, Keuper: Aliasing coincides with CNNs vulnerability "
            "towards adversarial attacks). Run `cnn-aliasing COMMAND --help` for the options of a command."
        ),
        epilog=(
            "examples:\n"
            "  cnn-aliasing models\n"
            "  cnn-aliasing measure --model preact_resnet18 --checkpoint weights.pt --data-dir ./data "
            "--out preact.json\n"
            "  cnn-aliasing measure --help"
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS.names():
        command = SUBCOMMANDS.get(name)
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.example,
            formatter_class=HelpFormatter,
        )
        command.add_arguments(sub)
        _add_global_options(sub, top_level=False)
    return parser


def _warning_line(stream: TextIO) -> Any:
    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        print(f"{PROG}: warning: {one_line(str(message))}", file=stream)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Usage errors, ``--help`` and ``--version`` exit through argparse's ``SystemExit``.
    """
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = _warning_line(sys.stderr)
            return SUBCOMMANDS.get(args.command).run(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (CnnAliasingError, OSError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        return EXIT_ERROR
