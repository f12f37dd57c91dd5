"""Arguments shared by subcommands: value types, the model and data groups, devices, and loading the model."""

from __future__ import annotations

import argparse
import ast
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnn_aliasing import data, distributed, models, runtime, training, zoo
from cnn_aliasing.errors import CnnAliasingError, UnknownNameError
from cnn_aliasing.identity import data_sha256, model_identity
from cnn_aliasing.model_source import (
    ArchSource,
    ExternalSource,
    LoadOptions,
    ModelSource,
    RunSource,
    ZooSource,
    parse_external,
)
from cnn_aliasing.provenance import run_metadata
from cnn_aliasing.validation import Check, is_int

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


def split_key_value(text: str, *, expected: str, prefix: str = "") -> tuple[str, str]:
    """``KEY=VALUE`` as ``(KEY, VALUE text)``: KEY an identifier (after an optional ``prefix``), VALUE not
    empty; else an argparse error saying what was ``expected`` (a form and an example)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.removeprefix(prefix).isidentifier() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return key, value


def parse_model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (e.g. ``width=16``) as ``(key, parsed value)``."""
    key, value = split_key_value(
        text, expected="KEY=VALUE with KEY an argument name of the model (e.g. width=16)"
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


def checked_value(check: Check) -> Callable[[str], Any]:
    """An argparse ``type``: the text parsed by :func:`parse_value`, then passed through ``check`` (see
    :mod:`cnn_aliasing.validation`); its error, in the package-wide form, becomes argparse's."""

    def convert(text: str) -> Any:
        try:
            return check(parse_value(text), "the value")
        except CnnAliasingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


positive_int = checked_value(is_int(1))
"""An integer >= 1, as an argparse ``type``."""


def add_device_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    default: str = "cuda if available, else cpu",
) -> None:
    """The ``--device`` option, the same in every subcommand (``default`` says what omitting it means)."""
    parser.add_argument(
        "--device", metavar="DEVICE", help=f"torch device, e.g. cpu, cuda, cuda:1 (default: {default})"
    )


def resolve_device(name: str | None) -> torch.device:
    """The device given by ``--device`` (None: cuda if available, else cpu), checked to be usable here."""
    return runtime.resolve_device(name, option="--device")


def join_ranks(name: str | None) -> tuple[distributed.Context, torch.device]:
    """This process's place under ``torchrun`` (the single-process context without it) and its device:
    ``--device`` resolved, and a CUDA device narrowed to ``cuda:LOCAL_RANK`` under several processes."""
    device = resolve_device(name)
    context = distributed.init_from_env(device)
    return context, context.device(device)


def load_images(args: argparse.Namespace, context: distributed.Context) -> tuple[torch.Tensor, torch.Tensor]:
    """The CIFAR-10 images and labels ``--data-dir``, ``--split``, ``--n-images`` and ``--download`` name;
    under several processes rank 0 reads (and downloads) first, with the only progress bar."""

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        return data.load_cifar10(
            args.data_dir,
            args.split,
            n_images=args.n_images,
            download=args.download,
            progress=not args.quiet and context.is_main,
        )

    first = load() if context.is_main else None
    distributed.barrier()
    return first if first is not None else load()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The "model" argument group: an architecture with arguments and weights, a zoo model, a training
    run, or a model from timm, torchvision or the user's own factory."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help=f"a registered architecture ({', '.join(models.list_models())}), a zoo model "
        "(e.g. Carmon2019Unlabeled, Standard; see `cnn-aliasing models`), a run of `cnn-aliasing train` "
        "(its folder or its model.safetensors), timm:NAME or torchvision:NAME (pip install "
        "'cnn-aliasing[timm]' or 'cnn-aliasing[vision]'; wrapped to take images in [0, 1]), or "
        "package.module:factory, your own callable returning an nn.Module that takes images in [0, 1] "
        "(e.g. mypkg.nets:make_net)",
    )
    model.add_argument(
        "--pretrained",
        action="store_true",
        help="with timm:NAME or torchvision:NAME, the library's default pretrained weights (it downloads "
        "them where there is internet); without it the weights are random",
    )
    model.add_argument(
        "--model-arg",
        dest="model_args",
        type=parse_model_arg,
        action=_ModelArgsAction,
        metavar="KEY=VALUE",
        help="keyword argument of the model factory (also of timm's create_model, torchvision's get_model "
        "or your factory), repeatable (e.g. width=16, normalize=cifar10); "
        "true/false/none, numbers, (tuples) and [lists] are parsed, anything else is a string",
    )
    model.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="weights of an architecture or of a timm, torchvision or factory model (.pt or .safetensors)",
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
    source.add_argument(
        "--batch-size",
        type=positive_int,
        default=250,
        metavar="B",
        help="images per batch; with evaluate --attack also the most rows an attack's forward pass may "
        "take, which the points left after APGD-CE fill with several targets at once (APGD-T, FAB-T): a "
        "larger B makes fewer, fuller passes on a GPU (default 250)",
    )
    source.add_argument(
        "--download",
        action="store_true",
        help="download CIFAR-10 (md5-checked) into --data-dir if it is missing",
    )


def model_source(args: argparse.Namespace) -> ModelSource:
    """The source ``--model`` names: a training run (its folder or model.safetensors with model.json
    beside it), a zoo model, an architecture or an outside model (``timm:NAME``, ``torchvision:NAME``,
    ``package.module:factory``), in that order; ``--model-arg`` and ``--checkpoint`` apply to an
    architecture or an outside model, ``--pretrained`` to a timm or torchvision model only."""
    model_args = args.model_args or {}
    custom = bool(model_args) or args.checkpoint is not None
    pretrained = bool(getattr(args, "pretrained", False))
    external = parse_external(args.model)
    if pretrained and (external is None or not external.library or training.has_sidecar(args.model)):
        raise CnnAliasingError(
            f"--pretrained applies to timm:NAME and torchvision:NAME models only, not to {args.model}"
        )
    if training.has_sidecar(args.model):
        if custom:
            raise CnnAliasingError(
                f"--model-arg and --checkpoint do not apply to the trained run {args.model}: its "
                "architecture, arguments and weights come from its model.json and model.safetensors"
            )
        return RunSource(Path(args.model))
    if args.model in zoo.ZOO:
        entry = zoo.zoo_entry(args.model)
        if custom:
            raise CnnAliasingError(
                f"--model-arg and --checkpoint do not apply to zoo model {entry.name}: it is {entry.arch} "
                f"with {dict(entry.arch_args) or 'default arguments'} and reads its weights from "
                f"--model-dir; for other weights give --model {entry.arch} with --checkpoint"
            )
        return ZooSource(entry.name)
    if args.model in models.list_models():
        return ArchSource(args.model, model_args, args.checkpoint)
    if external is not None:
        return ExternalSource(args.model, model_args, pretrained, args.checkpoint)
    zoo_models = ", ".join(entry.name for entry in zoo.select())
    raise UnknownNameError(
        f"unknown model {args.model!r}; valid architectures: {', '.join(models.list_models())}; "
        f"zoo models: {zoo_models}; or timm:NAME, torchvision:NAME, package.module:factory"
    )


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model ``--model`` names (see :func:`model_source`), in eval mode, and its "model"/"checkpoint"
    meta; ``--seed`` seeds an architecture's random initialisation."""
    torch.manual_seed(args.seed)
    options = LoadOptions(args.model_dir, download=args.download_weights, progress=not args.quiet)
    return model_source(args).load(options)


def prepare_output(path: Path, option: str) -> None:
    """Create the folder of an output file now, so a bad path fails before the work and not after."""
    if path.is_dir():
        raise CnnAliasingError(f"{option} {path} is a folder; give a file name (e.g. {path / 'report.json'})")
    path.parent.mkdir(parents=True, exist_ok=True)


@dataclass
class RunInputs:
    """What ``measure`` and ``evaluate`` start from (see :func:`load_inputs`)."""

    context: distributed.Context
    device: torch.device
    model: nn.Module
    model_meta: dict[str, Any]
    images: torch.Tensor
    labels: torch.Tensor

    def meta(self, args: argparse.Namespace, command: str, **timings: float) -> dict[str, Any]:
        """What a result file records about its run: command, all arguments, versions and git state, the
        model with its checkpoint hash and identity (weights hash), the data with its hash, the device,
        the number of processes and their backend (``world_size``, ``backend``), the seed and the
        timings."""
        return {
            "command": command,
            "config": _config(args),
            "run": run_metadata(),
            **self.model_meta,
            "model_identity": model_identity(self.model),
            "data": {
                "dir": os.fspath(args.data_dir.expanduser().resolve()),
                "split": args.split,
                "n_images": len(self.images),
                "sha256": data_sha256(self.images, self.labels),
            },
            "device": str(self.device),
            **self.context.meta(),
            "seed": args.seed,
            **timings,
        }


def add_input_arguments(parser: argparse.ArgumentParser, run_title: str) -> argparse._ArgumentGroup:
    """The arguments :func:`load_inputs` reads: the model and data groups, and a group titled
    ``run_title`` holding ``--device``, returned for the command's own run options."""
    add_model_arguments(parser)
    add_data_arguments(parser)
    run = parser.add_argument_group(run_title)
    add_device_argument(run)
    return run


def load_inputs(args: argparse.Namespace) -> RunInputs:
    """This process's rank context and device (:func:`join_ranks`), the model ``--model`` names and the
    images (:func:`load_images`)."""
    context, device = join_ranks(args.device)
    model, model_meta = load_model(args)
    images, labels = load_images(args, context)
    return RunInputs(context, device, model, model_meta, images, labels)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """All parsed arguments as a JSON-ready dict (paths as strings)."""
    return {k: os.fspath(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())}
