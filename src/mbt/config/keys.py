"""`mbt config keys`: every run key with its type, default and help, read from the schema (never written twice)."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic.fields import FieldInfo

from mbt.config.schema import DEFAULT_PRESET, SECTIONS
from mbt.model.config import PRESETS, MBTConfig

_BOUNDS = ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<="))


@dataclass(frozen=True)
class KeyDoc:
    key: str
    type: str
    default: Any
    help: str


def _constraints(metadata: list[Any]) -> str:
    parts = []
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[int, Field(ge=1)] nested in a tuple or an optional
            parts.append(_constraints(item.metadata).strip())
            continue
        for cls, attr, op in _BOUNDS:
            if isinstance(item, cls):
                parts.append(f"{op} {getattr(item, attr)}")
        if getattr(item, "allow_inf_nan", None) is False:
            parts.append("finite")
    parts = [p for p in parts if p]
    return (" " + ", ".join(parts)) if parts else ""


def type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A short, user-facing spelling of a field's type: `float > 0`, `'sgd' | 'adamw'`, `[int >= 1, int >= 1]`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        return type_name(inner, [*extra, *(metadata or [])])
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in get_args(annotation))
    if origin is tuple:
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{type_name(args[0])}, ...]"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is list:
        return f"[{type_name(get_args(annotation)[0])}, ...]"
    name = {bool: "bool", int: "int", float: "float", str: "str"}.get(annotation, getattr(annotation, "__name__",
                                                                                         str(annotation)))
    return name + _constraints(metadata or [])


def describe_keys() -> list[KeyDoc]:
    """Every key of every section, in schema order. Model defaults are those of the default preset."""
    preset_defaults = MBTConfig.preset(DEFAULT_PRESET).to_dict()
    docs = [KeyDoc("model.preset", " | ".join(repr(p) for p in PRESETS), DEFAULT_PRESET,
                   "Preset the model section's other keys override (sizes of the transformer and inputs).")]
    for section, schema in SECTIONS.items():
        own = [n for n in schema.__annotations__ if n in schema.model_fields]  # a section's own keys first
        for name in own + [n for n in schema.model_fields if n not in own]:
            field = schema.model_fields[name]
            default = preset_defaults[name] if section == "model" else field.get_default(call_default_factory=True)
            if isinstance(default, tuple):
                default = list(default)
            docs.append(KeyDoc(f"{section}.{name}", type_name(field.annotation, list(field.metadata)), default,
                               (field.description or "").strip()))
    return docs
