"""A timm-style model registry: factories registered by name, each with a one-line description."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from cnn_aliasing.errors import ModelArgumentError, UnknownNameError, first_line
from cnn_aliasing.registry import Registry

Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(factory: Factory) -> Factory:
    """Decorator: register ``factory`` under its function name; its docstring's first line describes it."""
    MODELS.register(factory.__name__, factory)
    return factory


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
