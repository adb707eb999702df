"""The base of every typed settings object (model, preprocessing, data, train): pydantic v2, strict.

Strict so that YAML's `true` is not an integer and `"8"` not a number; lists from YAML become tuples where a field
is a tuple; every float must be finite. Validation errors become one line naming the full key and the bad value:
`train.lr: must be > 0, got -1` or `train.lrr: unknown key; did you mean train.lr?`.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from mbt.errors import ConfigError


def _is_tuple_annotation(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is tuple:
        return True
    return origin in (typing.Union, types.UnionType) and any(_is_tuple_annotation(a) for a in get_args(annotation))


class Schema(BaseModel):
    """Strict, closed (unknown keys are errors), validated again on every assignment."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True,
                              validate_default=True, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _lists_to_tuples(cls, value: Any, info: Any) -> Any:
        # YAML and JSON have lists only; a tuple field takes one (its elements are still checked strictly)
        field = cls.model_fields.get(info.field_name)
        if isinstance(value, list) and field is not None and _is_tuple_annotation(field.annotation):
            return tuple(value)
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types: tuples as lists."""
        return self.model_dump(mode="json")


def invalid(key: str, why: str) -> PydanticCustomError:
    """A cross-field error from a model validator: `key` is the field at fault (within its section)."""
    return PydanticCustomError("invalid_setting", "{key}: {why}", {"key": key, "why": why})


_MESSAGES = {
    "finite_number": "must be a finite number",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "missing": "is required",
}


def _join(parts: list[str]) -> str:
    return ".".join(p for p in parts if p).replace(".[", "[")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_error(error: ValidationError, section: str = "", known: dict[str, list[str]] | None = None) -> str:
    """One line for the first error of `error`, naming `section.key` (with the list index for list elements).

    `known` maps a key prefix ("" or "train") to its valid key names, for "did you mean" on unknown keys.
    """
    first = error.errors(include_url=False)[0]
    loc = [f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"]]
    if first["type"] == "invalid_setting":  # raised by a model validator: the context names the key
        loc = loc + [first["ctx"]["key"]]
        return f"{_join([section, *loc])}: {first['ctx']['why']}"
    key = _join([section, *loc])
    if first["type"] == "extra_forbidden":
        parent = _join([section, *loc[:-1]])
        names = (known or {}).get(parent, [])
        close = difflib.get_close_matches(loc[-1], names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(f'{parent}.{c}' if parent else c for c in close)}?" if close else (
            f"; known keys: {', '.join(names)}" if names else "")
        return f"{key}: unknown key{hint}"
    ctx = first.get("ctx") or {}
    message = _MESSAGES.get(first["type"])
    if first["type"] == "literal_error":
        message = f"must be one of {ctx.get('expected')}"
    elif first["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ops = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
        bound = next(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le"))
        message = f"must be {ops[first['type']]} {bound}"
    elif first["type"].startswith("too_short") or first["type"].startswith("too_long"):
        message = first["msg"].replace("Tuple", "list").lower()
    elif message is None:
        message = first["msg"][:1].lower() + first["msg"][1:]
    if first["type"] == "missing":
        return f"{key}: {message}"
    return f"{key}: {message}, got {_show(first.get('input'))}"


def validate(cls: type[Schema], values: Any, section: str = "") -> Any:
    """`cls.model_validate(values)` with a ConfigError naming `section.key` instead of a ValidationError."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section or cls.__name__}: must be a mapping of keys to values, got {_show(values)}")
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(format_error(e, section, {section: sorted(cls.model_fields)})) from None
