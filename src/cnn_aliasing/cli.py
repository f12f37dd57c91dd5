"""The ``cnn-aliasing`` command line: subcommands from a registry, one-line errors, JSON/CSV results.

Each subcommand is a :class:`Subcommand` registered with :func:`register_subcommand`; :func:`main` builds
the parser from the registry and dispatches by name. Errors a user can cause (:class:`CnnAliasingError`,
and ``OSError`` for files) end the command with one line on stderr and exit code 2; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import abc
import argparse
import ast
import csv
import hashlib
import io
import os
import sys
import tempfile
import textwrap
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TextIO

import torch

from cnn_aliasing import __version__, data, models, spectral, zoo
from cnn_aliasing.errors import CnnAliasingError, UnknownNameError
from cnn_aliasing.evaluation import clean_accuracy
from cnn_aliasing.measure import AliasingReport, measure
from cnn_aliasing.probe import find_downsamplers
from cnn_aliasing.provenance import run_metadata, write_json_atomic

PROG = "cnn-aliasing"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------ registry
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


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(cls: type[Subcommand]) -> type[Subcommand]:
    """Class decorator: register an instance of ``cls`` under ``cls.name``."""
    if cls.name in SUBCOMMANDS:
        raise ValueError(f"a subcommand named {cls.name!r} is already registered")
    SUBCOMMANDS[cls.name] = cls()
    return cls


class _HelpFormatter(argparse.HelpFormatter):
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


# ------------------------------------------------------------------------------------------ argument types
_WORDS: dict[str, Any] = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """A model argument's value: true/false/none (any case), int, float, a (tuple) or [list], else text."""
    stripped = text.strip()
    if stripped.lower() in _WORDS:
        return _WORDS[stripped.lower()]
    for convert in (int, float):
        try:
            return convert(stripped)
        except ValueError:
            pass
    if stripped.startswith(("(", "[")):
        try:
            return ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            raise argparse.ArgumentTypeError(f"cannot parse the value {text!r} as a tuple or list") from None
    return text


def parse_model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (e.g. ``width=16``) as ``(key, parsed value)``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier() or not value.strip():
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY an argument name of the model (e.g. width=16), got {text!r}"
        )
    return key, parse_value(value)


class _ModelArgsAction(argparse.Action):
    """Collects repeated ``--model-arg KEY=VALUE`` into one dict, refusing a key given twice."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        key, value = values
        collected = dict(getattr(namespace, self.dest) or {})
        if key in collected:
            raise argparse.ArgumentError(self, f"{key!r} is given twice")
        collected[key] = value
        setattr(namespace, self.dest, collected)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str | None) -> torch.device:
    """The torch device named ``name`` (None: cuda if available, else cpu), checked to be usable here."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnAliasingError(f"--device {name!r} is not a device name; e.g. cpu, cuda, cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnAliasingError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise CnnAliasingError(f"--device {name} cannot be used here: {_first_line(error)}") from None
    return device


def build_model(name: str, model_args: dict[str, Any]) -> torch.nn.Module:
    """``models.create_model(name, **model_args)``; a bad argument value becomes a CnnAliasingError."""
    try:
        return models.create_model(name, **model_args)
    except (TypeError, ValueError) as error:
        given = ", ".join(f"{k}={v!r}" for k, v in model_args.items()) or "no arguments"
        raise CnnAliasingError(f"cannot build model {name!r} with {given}: {_first_line(error)}") from error


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The "model" argument group: an architecture with arguments and weights, or a zoo model."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help=f"a registered architecture ({', '.join(models.list_models())}) or a zoo model "
        "(e.g. Carmon2019Unlabeled, Standard); see `cnn-aliasing models`",
    )
    model.add_argument(
        "--model-arg",
        dest="model_args",
        type=parse_model_arg,
        action=_ModelArgsAction,
        metavar="KEY=VALUE",
        help="keyword argument of the model factory, repeatable (e.g. width=16, normalize=cifar10); "
        "true/false/none, numbers, (tuples) and [lists] are parsed, anything else is a string",
    )
    model.add_argument(
        "--checkpoint", type=Path, metavar="FILE", help="weights of an architecture (.pt or .safetensors)"
    )
    model.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random initialisation, used when no --checkpoint is given",
    )
    model.add_argument(
        "--model-dir",
        type=Path,
        default=zoo.DEFAULT_MODEL_DIR,
        metavar="DIR",
        help="zoo checkpoints in RobustBench's layout, DIR/cifar10/Linf/NAME.pt (a RobustBench model "
        "folder works as it is)",
    )
    model.add_argument(
        "--download-weights",
        action="store_true",
        help="download a missing zoo checkpoint from Google Drive into --model-dir (needs internet and "
        "pip install 'cnn-aliasing[zoo]')",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The "data" argument group: which CIFAR-10 images, in which batches."""
    source = parser.add_argument_group("data")
    source.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder holding cifar-10-batches-py/ (the CIFAR-10 python layout)",
    )
    source.add_argument("--split", default="test", choices=tuple(data.SPLIT_FILES), help="CIFAR-10 split")
    source.add_argument(
        "--n-images", type=positive_int, default=1000, metavar="N", help="first N images of the split"
    )
    source.add_argument("--batch-size", type=positive_int, default=250, metavar="B", help="batch size")
    source.add_argument(
        "--download",
        action="store_true",
        help="download CIFAR-10 (md5-checked) into --data-dir if it is missing",
    )


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model named by ``--model`` (an architecture or a zoo model) and its "model"/"checkpoint" meta."""
    torch.manual_seed(args.seed)
    model_args = args.model_args or {}
    if args.model in zoo.ZOO:
        entry = zoo.zoo_entry(args.model)
        if model_args or args.checkpoint is not None:
            raise CnnAliasingError(
                f"--model-arg and --checkpoint do not apply to zoo model {entry.name}: it is {entry.arch} "
                f"with {dict(entry.arch_args) or 'default arguments'} and reads its weights from "
                f"--model-dir; for other weights give --model {entry.arch} with --checkpoint"
            )
        model = zoo.load_zoo_model(
            entry.name, args.model_dir, download=args.download_weights, progress=not args.quiet
        )
        path: Path | None = zoo.checkpoint_path(entry.name, args.model_dir)
        described = {
            "name": entry.name,
            "args": dict(entry.arch_args),
            "arch": entry.arch,
            "zoo": entry.to_dict(),
        }
    elif args.model in models.list_models():
        model = build_model(args.model, model_args)
        path = args.checkpoint
        if path is not None:
            models.load_checkpoint(model, path)
        described = {"name": args.model, "args": model_args}
    else:
        raise UnknownNameError(
            f"unknown model {args.model!r}; valid architectures: {', '.join(models.list_models())}; "
            f"zoo models: {', '.join(zoo.ZOO)}"
        )
    checkpoint = None if path is None else {"path": os.fspath(path.resolve()), "sha256": sha256_of(path)}
    return model, {"model": described, "checkpoint": checkpoint}


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_csv_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) as CSV with a header, atomically; no rows: empty file."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _prepare_output(path: Path, option: str) -> None:
    """Create the folder of an output file now, so a bad path fails before the work and not after."""
    if path.is_dir():
        raise CnnAliasingError(f"{option} {path} is a folder; give a file name (e.g. {path / 'report.json'})")
    path.parent.mkdir(parents=True, exist_ok=True)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """All parsed arguments as a JSON-ready dict (paths as strings)."""
    return {k: os.fspath(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(message: str) -> str:
    """A multi-line message joined into one line (``a:\\n  b\\n  c`` -> ``a: b; c``)."""
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    if not parts:
        return ""
    joined = parts[0]
    for part in parts[1:]:
        joined += f" {part}" if joined.endswith(":") else f"; {part}"
    return joined


# ---------------------------------------------------------------------------------------------- subcommands
@register_subcommand
class MeasureCommand(Subcommand):
    """``cnn-aliasing measure``: AM of every down-sampling op of a model on CIFAR-10."""

    name = "measure"
    help = "measure the aliasing of every down-sampling op of a model on CIFAR-10 images"
    description = (
        "Measure the aliasing metric AM (the mean over all feature maps of sum |Y - Z|, Grabinski et al.) of "
        "every down-sampling op (strided convolution, pooling, strided slicing) of a model on CIFAR-10 "
        "images. Prints one row per op in forward order and writes a JSON report (results, all arguments, "
        "versions, git commit, checkpoint SHA-256, timing), optionally a CSV table.\n\n"
        "Global pooling to one pixel is not measured. An architecture without --checkpoint keeps its random "
        "initialisation (seeded with --seed); a zoo model reads its RobustBench checkpoint from --model-dir."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing measure --model preact_resnet18 --checkpoint weights.pt --data-dir ./data \\\n"
        "      --out results/preact.json --csv results/preact.csv\n"
        "  cnn-aliasing measure --model wrn_28_10 --model-arg depth=16 --model-arg widen_factor=4 \\\n"
        "      --data-dir ./data --n-images 200 --include 'block2.*' --metric relative_aliasing \\\n"
        "      --out wrn.json\n"
        "  cnn-aliasing measure --model Carmon2019Unlabeled --model-dir ./models --data-dir ./data \\\n"
        "      --out carmon.json"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        add_data_arguments(parser)
        run = parser.add_argument_group("measurement")
        run.add_argument(
            "--device", metavar="DEVICE", help="torch device (default: cuda if available, else cpu)"
        )
        run.add_argument(
            "--include",
            action="extend",
            nargs="+",
            metavar="PATTERN",
            help="measure only ops whose name matches one of these shell patterns (e.g. 'layer2.*')",
        )
        run.add_argument(
            "--exclude",
            action="extend",
            nargs="+",
            metavar="PATTERN",
            help="skip ops whose name matches one of these shell patterns (e.g. '*shortcut*')",
        )
        run.add_argument(
            "--nyquist",
            default=spectral.Nyquist.ZERO.value,
            choices=[n.value for n in spectral.Nyquist],
            help="what the alias-free spectrum keeps at the new Nyquist bin: zero (the paper's eq. 5) or "
            "keep_negative (as FLC pooling does)",
        )
        run.add_argument(
            "--metric",
            dest="metrics",
            action="extend",
            nargs="+",
            choices=list(spectral.PER_MAP_METRICS),
            metavar="NAME",
            help=f"per-map metrics to report beside AM (which is always reported): "
            f"{', '.join(spectral.PER_MAP_METRICS)}",
        )
        run.add_argument(
            "--per-channel", action="store_true", help="also keep each channel's mean in the JSON"
        )
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, required=True, metavar="FILE", help="JSON report to write")
        out.add_argument("--csv", type=Path, metavar="FILE", help="also write the per-op table as CSV")

    def run(self, args: argparse.Namespace) -> int:
        start = time.perf_counter()
        _prepare_output(args.out, "--out")
        if args.csv is not None:
            _prepare_output(args.csv, "--csv")
        device = resolve_device(args.device)
        model, model_meta = load_model(args)
        images, labels = data.load_cifar10(
            args.data_dir, args.split, n_images=args.n_images, download=args.download, progress=not args.quiet
        )
        measure_start = time.perf_counter()
        report = measure(
            model,
            data.iterate_batches(images, labels, args.batch_size, device=device),
            device=device,
            include=args.include,
            exclude=args.exclude,
            nyquist=args.nyquist,
            metrics=args.metrics or (),
            per_channel=args.per_channel,
            progress=not args.quiet,
            total_images=len(images),
        )
        end = time.perf_counter()
        if not report.ops and (args.include or args.exclude):
            found = [d.name for d in find_downsamplers(model, data.to_float(images[:1]))]
            given = " ".join(
                f"{option} {' '.join(map(repr, patterns))}"
                for option, patterns in (("--include", args.include), ("--exclude", args.exclude))
                if patterns
            )
            raise CnnAliasingError(
                f"no down-sampling op of {args.model} is left after {given}; its ops are: "
                f"{', '.join(found) or '(none)'}"
            )
        report.meta.update(
            {
                "command": self.name,
                "config": _config(args),
                "run": run_metadata(),
                **model_meta,
                "data": {
                    "dir": os.fspath(args.data_dir.expanduser().resolve()),
                    "split": args.split,
                    "n_images": len(images),
                },
                "device": str(device),
                "seed": args.seed,
                "measure_s": end - measure_start,
                "elapsed_s": end - start,
            }
        )
        write_json_atomic(args.out, report.to_dict())
        if args.csv is not None:
            write_csv_atomic(args.csv, report.rows())
        _print_report(report, args, device, end - start)
        return 0


def _print_report(
    report: AliasingReport, args: argparse.Namespace, device: torch.device, seconds: float
) -> None:
    """The header line, the per-op table and the files written, on stdout."""
    print(
        f"aliasing of {len(report.ops)} down-sampling ops of {args.model} over {report.n_images} CIFAR-10 "
        f"{args.split} images (nyquist={report.nyquist}, device={device}, {seconds:.1f} s)"
    )
    print(report.format_table())
    print(f"wrote {args.out}" + (f" and {args.csv}" if args.csv is not None else ""))


@register_subcommand
class EvaluateCommand(Subcommand):
    """``cnn-aliasing evaluate``: clean accuracy on CIFAR-10, beside the zoo's reported accuracies."""

    name = "evaluate"
    help = "clean accuracy of a model on CIFAR-10 images (zoo models: beside RobustBench's reported ones)"
    description = (
        "Classify CIFAR-10 images with a model and report its clean (top-1) accuracy. For a zoo model the "
        "accuracies RobustBench reports (clean and AutoAttack, full test set) are shown beside it. "
        "Optionally writes a JSON file with the result, all arguments, versions and the checkpoint SHA-256."
    )
    example = (
        "examples:\n"
        "  cnn-aliasing evaluate --model Carmon2019Unlabeled --model-dir ./models --data-dir ./data \\\n"
        "      --n-images 1000\n"
        "  cnn-aliasing evaluate --model Standard --download-weights --data-dir ./data --out standard.json\n"
        "  cnn-aliasing evaluate --model preact_resnet18 --checkpoint weights.pt --data-dir ./data"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_arguments(parser)
        add_data_arguments(parser)
        run = parser.add_argument_group("evaluation")
        run.add_argument(
            "--device", metavar="DEVICE", help="torch device (default: cuda if available, else cpu)"
        )
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, metavar="FILE", help="also write the result as JSON")

    def run(self, args: argparse.Namespace) -> int:
        start = time.perf_counter()
        if args.out is not None:
            _prepare_output(args.out, "--out")
        device = resolve_device(args.device)
        model, model_meta = load_model(args)
        images, labels = data.load_cifar10(
            args.data_dir, args.split, n_images=args.n_images, download=args.download, progress=not args.quiet
        )
        model.to(device)
        batches = data.iterate_batches(images, labels, args.batch_size, device=device)
        results = {"clean": clean_accuracy(model, batches, progress=not args.quiet, total_images=len(images))}
        reported = model_meta["model"].get("zoo", {}).get("reported")
        seconds = time.perf_counter() - start
        print(
            f"clean accuracy of {args.model} on {len(images)} CIFAR-10 {args.split} images: "
            f"{results['clean']} (device={device}, {seconds:.1f} s)"
        )
        if reported is not None:
            print(
                f"reported by RobustBench (full test set): clean {reported['clean_acc']:.2f}%, AutoAttack "
                f"{reported['autoattack_acc']:.2f}% (Linf, eps {zoo.EPS})"
            )
        if args.out is not None:
            meta = {
                "command": self.name,
                "config": _config(args),
                "run": run_metadata(),
                **model_meta,
                "data": {
                    "dir": os.fspath(args.data_dir.expanduser().resolve()),
                    "split": args.split,
                    "n_images": len(images),
                },
                "device": str(device),
                "seed": args.seed,
                "elapsed_s": seconds,
            }
            results_json = {name: result.to_dict() for name, result in results.items()}
            write_json_atomic(args.out, {**results_json, "reported": reported, "meta": meta})
            print(f"wrote {args.out}")
        return 0


@register_subcommand
class ModelsCommand(Subcommand):
    """``cnn-aliasing models``: the registered architectures and the model zoo."""

    name = "models"
    help = "list the registered architectures and the model zoo (reported accuracies, local checkpoints)"
    description = (
        "List the registered architectures (for --model with --model-arg and --checkpoint) with a one-line "
        "description each, then the zoo: RobustBench CIFAR-10 Linf models (for --model alone) with their "
        "architecture, tags, the clean and AutoAttack (eps 8/255) accuracies RobustBench reports, and "
        "whether their checkpoint is in --model-dir."
    )
    example = "examples:\n  cnn-aliasing models\n  cnn-aliasing models --tag wrn-28-10 --model-dir ~/models"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model-dir",
            type=Path,
            default=zoo.DEFAULT_MODEL_DIR,
            metavar="DIR",
            help="where to look for zoo checkpoints (DIR/cifar10/Linf/NAME.pt)",
        )
        parser.add_argument(
            "--tag",
            dest="tags",
            action="append",
            metavar="TAG",
            help=f"list only zoo models with this tag, repeatable ({', '.join(zoo.zoo_tags())})",
        )

    def run(self, args: argparse.Namespace) -> int:
        entries = zoo.select(*(args.tags or ()))
        descriptions = models.model_descriptions()
        width = max(map(len, descriptions), default=0)
        print("architectures:")
        for name, text in descriptions.items():
            print(f"  {name.ljust(width)}  {text}".rstrip())
        print(
            f"\nzoo (RobustBench CIFAR-10 Linf; reported accuracies in %; checkpoints in {args.model_dir}):"
        )
        rows = [
            {
                "name": e.name,
                "architecture": e.arch,
                "training": e.training,
                "family": e.family,
                "clean": f"{e.clean_acc:.2f}",
                "autoattack": f"{e.autoattack_acc:.2f}",
                "checkpoint": "present"
                if zoo.checkpoint_path(e.name, args.model_dir).is_file()
                else "missing",
            }
            for e in entries
        ]
        print(textwrap.indent(format_table(rows), "  "))
        return 0


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows (dicts with the same keys, values as text) as aligned plain text with a header line."""
    if not rows:
        return "(none)"
    header = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    lines = [header, *([str(r[h]) for h in header] for r in rows)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


# ----------------------------------------------------------------------------------------------------- main
def _add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--debug and --quiet, accepted before or after the subcommand (not repeated defaults after it)."""
    default: Any = False if top_level else argparse.SUPPRESS
    parser.add_argument("--debug", action="store_true", default=default, help="show tracebacks of errors")
    parser.add_argument("--quiet", action="store_true", default=default, help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered subcommand."""
    parser = argparse.ArgumentParser(
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
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.example,
            formatter_class=_HelpFormatter,
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
            return SUBCOMMANDS[args.command].run(args)
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
