"""Reading hyper-parameters from YAML/JSON files and dotted ``path=value`` overrides."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from raytrainer.errors import ConfigError
from raytrainer.params.tree import HyperParameters


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping from ``path``.

    A file written by :meth:`HyperParameters.to_saved` (for example a checkpoint's
    ``hyper_params.json``) is accepted too and unwrapped.

    Raises
    ------
    ConfigError
        If the file is missing, unparsable, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be parsed: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of fields, not {type(data).__name__}."
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.path=value`` override applied.

    Values are parsed as YAML scalars (``3``, ``true``, ``[1, 2]``); intermediate mappings are
    created as needed. Validation happens afterwards, so a wrong path is reported there.
    """
    result = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"override {item!r} must look like 'dotted.path=value'.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value {raw!r}: {exc}") from exc
        keys = path.strip().split(".")
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {item!r}: field {where!r} is not a section.")
            node = child
        node[keys[-1]] = value
    return result


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn a pydantic error into lines that each name a dotted field path."""
    lines = [f"invalid hyper-parameters in {source}:"]
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field; check the spelling against the trainer's")
            lines[-1] += " hyper-parameter class"
        elif err["type"] == "missing":
            lines.append(f"  {field}: required field is missing")
        else:
            lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def validate_hyper_params(
    data: Mapping[str, Any], params_cls: type[HyperParameters], source: str = "config"
) -> HyperParameters:
    """Validate ``data`` against ``params_cls``, raising :class:`ConfigError` naming fields."""
    try:
        return params_cls.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
