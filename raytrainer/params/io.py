"""Reading hyper-parameters from YAML/JSON files and dotted ``path=value`` overrides."""

from __future__ import annotations

import datetime
import difflib
import json
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raytrainer.errors import ConfigError
from raytrainer.params.tree import DEFAULT_AGENT, HyperParameters

_MAX_LISTED_FIELDS = 8
"""An unknown key with no close match lists the valid names of its section up to this many."""


def nearest(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """Return the candidate closest to ``name`` (a likely misspelling), or ``None``.

    Parameters
    ----------
    name : str
        The name that was not found.
    candidates : Iterable[str]
        The valid names.
    cutoff : float
        Similarity (0 to 1, :func:`difflib.get_close_matches`) below which nothing matches.
    """
    matches = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """Return ``"; did you mean 'x'?"`` for the candidate nearest ``name``, or ``""``."""
    match = nearest(name, candidates, cutoff)
    return f"; did you mean {match!r}?" if match else ""


def _not_json(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted path, value)`` for every value below ``value`` that JSON cannot hold."""
    if isinstance(value, str | int | float | bool | type(None)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str | int | float | bool | type(None)):
                yield child, key
            yield from _not_json(item, child)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _not_json(item, f"{path}.{index}" if path else str(index))
    else:
        yield path, value


def _why_not_json(value: Any, override: str | None = None) -> str:
    """Why a value cannot be in a config, and how to write it; ``override``: its ``--set`` path."""
    # YAML reads unquoted dates and times as objects; sets and binary need explicit tags.
    if isinstance(value, datetime.date | datetime.datetime | datetime.time):
        kind = "date" if type(value) is datetime.date else "timestamp"
        quoted = f"--set '{override}=\"{value}\"'" if override else f"'{value}'"
        return (
            f"{value} reads as a YAML {kind}, which a config cannot hold; quote it ({quoted}) "
            "to keep it as text"
        )
    if isinstance(value, set | frozenset):
        return "a YAML set (!!set), which a config cannot hold; write a list ([a, b]) instead"
    if isinstance(value, bytes | bytearray):
        return "binary data (!!binary), which a config cannot hold; write a quoted string"
    return f"a {type(value).__name__}, which a config cannot hold; quote it to keep it as text"


def check_json_values(data: Any, source: str, override: str | None = None) -> None:
    """Raise :class:`ConfigError` if ``data`` holds a value JSON cannot represent.

    Hyper-parameters are saved as JSON and hashed into the run id, so a YAML date
    (``2026-01-01``), timestamp, set or binary value is refused here, naming its field.

    Parameters
    ----------
    data : Any
        The parsed config, or ``{path: value}`` of one override.
    source : str
        Where it came from, for the message: ``"config file 'x.yaml'"``, ``"--set a=b"``.
    override : str or None
        The dotted path of the override ``data`` comes from: the hint then shows how to quote
        the value on the command line.

    Raises
    ------
    ConfigError
        Naming the dotted field path of the first such value and how to write it instead.
    """
    for path, value in _not_json(data, ""):
        raise ConfigError(f"{source}: {path or '(value)'}: {_why_not_json(value, override)}.")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping from ``path``.

    A file written by :meth:`HyperParameters.to_saved` (for example a checkpoint's
    ``hyper_params.json``) is accepted too and unwrapped.

    Raises
    ------
    ConfigError
        If the file is missing, unparsable, not a mapping, or holds a value JSON cannot hold
        (a YAML date, timestamp, set or binary value).
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
    check_json_values(data, f"config file {str(path)!r}")
    return data


def override_path(item: str) -> str:
    """Return the dotted path an override ``path=value`` sets (``""`` when malformed)."""
    return item.partition("=")[0].strip()


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.path=value`` override applied.

    Values are parsed as YAML scalars (``3``, ``true``, ``[1, 2]``); intermediate mappings are
    created as needed. Validation happens afterwards, so a wrong path is reported there.

    Raises
    ------
    ConfigError
        If an override is malformed or goes through a leaf, or a value (of ``data`` or of an
        override) is one JSON cannot hold, such as an unquoted YAML date.
    """
    check_json_values(data, "config")
    result = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"override {item!r} must look like 'dotted.path=value'.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value {raw!r}: {exc}") from exc
        check_json_values({path.strip(): value}, f"--set {item}", path.strip())
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


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, int]:
    """The model class inside an annotation, and how many keys/indices sit before its fields.

    ``Section`` → (Section, 0); ``dict[str, Section]`` → (Section, 1); ``Section | None`` →
    (Section, 0); anything else → (None, 0).
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, 0
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (dict, Mapping) and len(args) == 2:
        model, skip = _model_in(args[1])
        return model, skip + 1
    if origin in (list, tuple, Sequence) and args:
        model, skip = _model_in(args[0])
        return model, skip + 1
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            model, skip = _model_in(arg)
            if model is not None:
                return model, skip
    return None, 0


def section_fields(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """Return the field names of the section at ``loc`` in ``model``, or ``None`` if unknown.

    ``loc`` is a pydantic error location without its last part: ``("agents", "_default")``
    names the fields of the trainer's agent section.
    """
    current: type[BaseModel] | None = model
    index = 0
    while index < len(loc):
        if current is None:
            return None
        info = current.model_fields.get(str(loc[index]))
        if info is None:
            return None
        current, skip = _model_in(info.annotation)
        index += 1 + skip
    return list(current.model_fields) if current is not None else None


def leaf_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Yield the dotted path of every leaf field; agent sections appear as ``agents._default``."""
    for name, info in model.model_fields.items():
        inner, skip = _model_in(info.annotation)
        if inner is None:
            yield f"{prefix}{name}"
        elif skip == 0:
            yield from leaf_paths(inner, f"{prefix}{name}.")
        elif skip == 1:
            key = DEFAULT_AGENT if (prefix, name) == ("", "agents") else "<key>"
            yield from leaf_paths(inner, f"{prefix}{name}.{key}.")


def _suggest(model: type[BaseModel] | None, loc: Sequence[str | int]) -> str:
    """The hint after ``unknown field``: the nearest name at that level, or where it lives."""
    if model is None or not loc:
        return ""
    name = str(loc[-1])
    fields = section_fields(model, loc[:-1])
    if fields is None:
        return ""
    hint = did_you_mean(name, fields)
    if hint:
        return hint
    elsewhere = [p for p in leaf_paths(model) if p.rsplit(".", 1)[-1] == name]
    if elsewhere:
        return f"; it belongs elsewhere: did you mean {elsewhere[0]!r}?"
    if len(fields) <= _MAX_LISTED_FIELDS:
        return f"; fields here: {', '.join(fields)}"
    return "; `raytrainer config show CONFIG` lists every field with its meaning"


def _override_for(field: str, overrides: Sequence[str]) -> str | None:
    """The last override that set ``field``, a section above it, or a key below it."""
    for item in reversed(overrides):
        path = override_path(item)
        if path and (path == field or field.startswith(f"{path}.") or path.startswith(f"{field}.")):
            return item
    return None


def format_validation_error(
    exc: ValidationError,
    source: str,
    overrides: Sequence[str] = (),
    model: type[BaseModel] | None = None,
) -> str:
    """Turn a pydantic error into lines that each name a dotted field path.

    Parameters
    ----------
    exc : ValidationError
        The error of validating the config.
    source : str
        The config's name, such as its file path.
    overrides : Sequence[str]
        The ``path=value`` overrides applied on top; a field one of them set is blamed on it
        (``from --set path=value``) rather than on ``source``.
    model : type[BaseModel] or None
        The class validated against; an unknown key then gets the nearest valid name.
    """
    lines = []
    blamed_override = False
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(root)"
        item = _override_for(field, overrides) if overrides else None
        blamed_override = blamed_override or item is not None
        origin = f"from --set {item}" if item else f"from {source}" if overrides else ""
        if err["type"] == "extra_forbidden":
            where = f" ({origin})" if origin else ""
            hint = _suggest(model, err["loc"]) if model is not None else ""
            if not hint:
                hint = "; check the spelling against the trainer's hyper-parameter class"
            lines.append(f"  {field}: unknown field{where}{hint}")
        elif err["type"] == "missing":
            lines.append(f"  {field}: required field is missing")
        else:
            where = f"; {origin}" if origin else ""
            lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r}{where})")
    header = (
        f"invalid hyper-parameters in {source} or its --set overrides:"
        if blamed_override
        else f"invalid hyper-parameters in {source}:"
    )
    return "\n".join([header, *lines])


def validate_hyper_params(
    data: Mapping[str, Any],
    params_cls: type[HyperParameters],
    source: str = "config",
    overrides: Iterable[str] = (),
) -> HyperParameters:
    """Validate ``data`` against ``params_cls``, raising :class:`ConfigError` naming fields.

    Parameters
    ----------
    data : Mapping[str, Any]
        The config with its overrides applied.
    params_cls : type[HyperParameters]
        The trainer's hyper-parameter class.
    source : str
        Where ``data`` came from, for messages.
    overrides : Iterable[str]
        The ``path=value`` overrides already applied to ``data``: errors in the fields they
        set name the override rather than ``source``.
    """
    try:
        return params_cls.model_validate(dict(data))
    except ValidationError as exc:
        message = format_validation_error(exc, source, list(overrides), params_cls)
        raise ConfigError(message) from None
