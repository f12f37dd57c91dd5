"""A timm-style model registry: factories registered by name, each with a one-line description.

Every registered factory takes ``downsample`` (``"strided"``, as the factory builds it, or an
anti-aliasing method: ``"flc"``, ``"asap"``, ``"blurpool"``) from the registry: :func:`register_model`
adds the argument, and the model is built strided and then swapped by
:func:`cnn_aliasing.antialias.with_downsampling`, which puts BlurPool into the blocks' declared
:class:`~cnn_aliasing.antialias.AntialiasSlot` s.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from torch import nn

from cnn_aliasing.antialias import STRIDED, with_downsampling
from cnn_aliasing.errors import ModelArgumentError, UnknownNameError, first_line
from cnn_aliasing.registry import Registry

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

DOWNSAMPLE = inspect.Parameter("downsample", inspect.Parameter.KEYWORD_ONLY, default=STRIDED, annotation=str)
"""The argument the registry adds to every factory."""


def register_model(factory: Factory) -> Factory:
    """Decorator: register ``factory`` under its function name; its docstring's first line describes it.

    Returns the factory with the keyword argument ``downsample`` added (see the module's docstring); a
    factory must not take ``downsample`` itself.
    """
    signature = inspect.signature(factory)
    if DOWNSAMPLE.name in signature.parameters:
        raise ValueError(f"model {factory.__name__!r} takes downsample itself; the registry adds it")

    @functools.wraps(factory)
    def build(*args: Any, downsample: str = STRIDED, **kwargs: Any) -> nn.Module:
        return with_downsampling(factory(*args, **kwargs), downsample)

    parameters = list(signature.parameters.values())
    keyword = [p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters]
    at = keyword.index(True) if any(keyword) else len(parameters)
    build.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*parameters[:at], DOWNSAMPLE, *parameters[at:]]
    )
    MODELS.register(factory.__name__, build)
    return cast(Factory, build)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def model_descriptions() -> dict[str, str]:
    """Map each registered model name (sorted) to its one-line description."""
    return MODELS.describe()


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with the factory's keyword arguments ``kwargs``.

    An unknown name or argument is an :class:`UnknownNameError` listing the valid ones; an argument the
    factory refuses (wrong type or value) is a :class:`ModelArgumentError` naming the model and arguments.
    """
    factory = MODELS.get(name)
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            raise UnknownNameError(
                f"model {name!r} takes no argument {', '.join(map(repr, unknown))}; "
                f"valid arguments: {', '.join(parameters)}"
            )
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as error:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "no arguments"
        raise ModelArgumentError(f"cannot build model {name!r} with {given}: {first_line(error)}") from error
