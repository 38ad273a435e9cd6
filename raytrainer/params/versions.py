"""Conversion functions that bring saved hyper-parameters up to the current schema.

Saved hyper-parameters carry the integer ``schema_version`` of their class. When a class
changes incompatibly its author bumps ``schema_version`` and registers a function that turns
a dict of the old version into one of the next::

    @register_conversion(MyParams, from_version=1)
    def _rename_lr(params: dict) -> dict:
        params["learning_rate"] = params.pop("lr")
        return params
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raytrainer.errors import CheckpointVersionError

Conversion = Callable[[dict[str, Any]], dict[str, Any]]

_CONVERSIONS: dict[tuple[type, int], Conversion] = {}


def register_conversion(params_cls: type, from_version: int) -> Callable[[Conversion], Conversion]:
    """Register ``func`` as the conversion of ``params_cls`` data from ``from_version``.

    Parameters
    ----------
    params_cls : type
        The ``HyperParameters`` subclass whose saved form is converted.
    from_version : int
        The schema version the function reads; it returns version ``from_version + 1``.
    """

    def decorator(func: Conversion) -> Conversion:
        _CONVERSIONS[(params_cls, from_version)] = func
        return func

    return decorator


def convert(params_cls: type, data: dict[str, Any], from_version: int) -> dict[str, Any]:
    """Apply the registered conversions from ``from_version`` to ``params_cls.schema_version``.

    Raises
    ------
    CheckpointVersionError
        If the data is newer than this code, or a step of the chain has no conversion.
    """
    target: int = params_cls.schema_version  # type: ignore[attr-defined]
    if from_version > target:
        raise CheckpointVersionError(
            f"hyper-parameters were saved with {params_cls.__name__} schema version "
            f"{from_version}, but this code reads up to version {target}. "
            "Upgrade raytrainer (or the package that defines the trainer)."
        )
    version = from_version
    while version < target:
        func = next(
            (
                _CONVERSIONS[(klass, version)]
                for klass in params_cls.__mro__
                if (klass, version) in _CONVERSIONS
            ),
            None,
        )
        if func is None:
            raise CheckpointVersionError(
                f"no conversion registered for {params_cls.__name__} from schema version "
                f"{version} to {version + 1}; register one with "
                "raytrainer.params.register_conversion."
            )
        data = func(dict(data))
        version += 1
    return data
