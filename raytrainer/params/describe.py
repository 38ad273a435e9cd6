"""The validated hyper-parameter tree as commented YAML: every value and what it means."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from raytrainer.params.tree import DEFAULT_AGENT, HyperParameters

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _yaml_value(value: Any) -> str:
    """One value on one line, as YAML reads it back (flow style for lists and mappings)."""
    text = yaml.safe_dump(
        to_jsonable_python(value), default_flow_style=True, width=float("inf"), sort_keys=False
    )
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _yaml_key(key: Any) -> str:
    return key if isinstance(key, str) and _PLAIN_KEY.match(key) else _yaml_value(str(key))


def _doc(info: FieldInfo | None, value: Any) -> str:
    """A field's description; for a section without one, its class's first docstring line."""
    text = info.description if info is not None else None
    if not text and isinstance(value, BaseModel):
        text = (type(value).__doc__ or "").strip().split("\n")[0]
    return " ".join((text or "").split())


_COMMENT_COLUMN = 40
"""Comments start at this column, or two spaces after a longer line."""


def _entry(key: Any, value: Any, doc: str, default: bool, indent: int) -> Iterator[tuple[str, str]]:
    """``(YAML line, comment)`` for one field and, for a section, everything in it."""
    pad = "  " * indent
    name = _yaml_key(key)
    if isinstance(value, BaseModel) and type(value).model_fields:
        yield f"{pad}{name}:", doc
        yield from _fields(value, indent + 1)
    elif (
        isinstance(value, dict)
        and value
        and all(isinstance(v, BaseModel) and type(v).model_fields for v in value.values())
    ):
        yield f"{pad}{name}:", doc
        for child_key, child in value.items():
            child_doc = (
                "fills the gaps of each agent's section" if child_key == DEFAULT_AGENT else ""
            )
            yield from _entry(child_key, child, child_doc, False, indent + 1)
    else:
        # A default is marked, so the lines show what the config (and --set) chose.
        yield (
            f"{pad}{name}: {_yaml_value(value)}",
            " ".join(n for n in (doc, "(default)" if default else "") if n),
        )


def _fields(model: BaseModel, indent: int) -> Iterator[tuple[str, str]]:
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        is_default = name not in model.model_fields_set
        yield from _entry(name, value, _doc(info, value), is_default, indent)


def describe_hyper_params(hyper_params: HyperParameters) -> list[str]:
    """Return the validated tree as YAML lines ``name: value  # description``.

    Every field appears, defaults included (marked ``(default)``), in declaration order;
    sections (the protocol sections, ``agents`` and each agent, ``base_run`` when set, a
    trainer's own sections) are nested blocks. The lines read back as the same config.

    Parameters
    ----------
    hyper_params : HyperParameters
        A validated tree, of the trainer's own ``hyper_params_cls`` or the base class.
    """
    return [
        f"{line:<{_COMMENT_COLUMN - 2}}  # {comment}" if comment else line
        for line, comment in _fields(hyper_params, 0)
    ]
