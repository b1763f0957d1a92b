"""Turn a loaded :class:`~compiler.load.Document` into a typed :class:`~compiler.spec.Spec`.

Pydantic's errors are translated into positioned, addressed diagnostics with did-you-mean hints.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from compiler.errors import Diagnostic, SpecError
from compiler.load import Document, Loc
from compiler.spec import (
    CALLABLE_PATTERN,
    DURATION_PATTERN,
    MEMORY_PATTERN,
    NAME_PATTERN,
    PRINCIPAL_PATTERN,
    SECTIONS,
    Spec,
)
from compiler.suggest import did_you_mean
from compiler.values import quoted, yaml_text

PATTERN_HINTS = {
    NAME_PATTERN: "is not a valid name (a lowercase letter, then lowercase letters, digits, _ or -; at most 63)",
    DURATION_PATTERN: "is not a duration (use 30s, 5m, 1h or 2d)",
    MEMORY_PATTERN: "is not a memory size (use 512Mi or 8Gi)",
    CALLABLE_PATTERN: "is not a callable (use module.path:function)",
    PRINCIPAL_PATTERN: "is not a principal (use team:NAME, user:NAME or an e-mail)",
}


BOUNDS = {"less_than_equal": ("le", "at most"), "greater_than_equal": ("ge", "at least"),
          "greater_than": ("gt", "more than"), "less_than": ("lt", "less than")}
"""Pydantic's bound errors, worded with the bound: ``replicas: must be at most 1000, not 100000000...``."""


def parse(document: Document) -> Spec:
    """Validate the document against the spec; raise :class:`SpecError` with every problem found."""
    try:
        return Spec.model_validate(document.data)
    except ValidationError as exc:
        diagnostics = [_diagnostic(document, error) for error in exc.errors(include_url=False)]
        unique = {d.render(): d for d in diagnostics}
        ordered = sorted(unique.values(), key=lambda d: (d.position.line, d.position.column) if d.position else (0, 0))
        raise SpecError(ordered) from None


def address_of(loc: Loc) -> str:
    """The resource address a data path belongs to: ``('models', 'churn', 'params')`` -> ``models.churn``."""
    if not loc:
        return ""
    head = loc[0]
    if head in SECTIONS and len(loc) >= 2:
        return f"{head}.{loc[1]}"
    if head == "waivers" and len(loc) >= 2:
        return f"waivers[{loc[1]}]"
    if head in ("cluster", "storage", "compliance", "waivers", *SECTIONS):
        return str(head)
    return "project"


def _data_loc(document: Document, loc: tuple[Any, ...]) -> Loc:
    """Drop the discriminator tags pydantic inserts (``checks.0.data_drift.threshold``)."""
    out: list[str | int] = []
    node: Any = document.data
    for part in loc:
        present = (part in node) if isinstance(node, dict) else (
            isinstance(node, list) and isinstance(part, int) and part < len(node))
        if present:
            out.append(part)
            node = node[part]
        elif isinstance(node, dict | list):
            if isinstance(part, str) and isinstance(node, dict) and not _is_tag(node, part):
                out.append(part)  # a missing or unknown key: keep it so the message can name it
                node = None
            continue
        else:
            break
    return tuple(out)


def _is_tag(node: dict[str, Any], part: str) -> bool:
    return node.get("type") == part


def _diagnostic(document: Document, error: Any) -> Diagnostic:
    raw_loc = tuple(error["loc"])
    if raw_loc and raw_loc[-1] == "[key]":
        loc = _data_loc(document, raw_loc[:-1])
        name = str(loc[-1]) if loc else ""
        return Diagnostic(
            f"invalid name {quoted(name)}: names match ^[a-z][a-z0-9_-]{{0,62}}$",
            document.position_of(loc, key=True),
            address_of(loc),
        )
    loc = _data_loc(document, raw_loc)
    kind = error["type"]
    field = str(loc[-1]) if loc else ""
    address = address_of(loc)
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key '{field}'{did_you_mean(field, allowed)}"
        return Diagnostic(message, document.position_of(loc, key=True), address)
    if kind == "missing":
        parent = _field_label(loc[:-1])
        inside_of = f" in {parent}" if parent else ""
        return Diagnostic(f"missing required key '{field}'{inside_of}", document.position_of(loc[:-1]), address)
    where = _field_label(loc)
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "string_pattern_mismatch":
        text = f"{quoted(value)} " + PATTERN_HINTS.get(str(ctx.get("pattern")), f"does not match {ctx.get('pattern')}")
    elif kind == "literal_error":
        text = f"{quoted(value)} is not one of {ctx.get('expected')}"
    elif kind in BOUNDS:
        bound, words = BOUNDS[kind]
        text = f"must be {words} {yaml_text(ctx.get(bound))}, not {yaml_text(value, limit=24)}"
    elif kind == "float_type" and isinstance(value, int) and not isinstance(value, bool) \
            and _bound(loc, "le" if value > 0 else "ge") is not None:  # an integer too large for a float
        limit = _bound(loc, "le" if value > 0 else "ge")
        text = f"must be {'at most' if value > 0 else 'at least'} {yaml_text(limit)}, not {yaml_text(value, limit=24)}"
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        text = f"expected a mapping, got {_type_name(value)}"
    elif kind == "list_type":
        text = f"expected a list, got {_type_name(value)}"
    elif kind == "union_tag_invalid":
        tag = ctx.get("tag")
        if isinstance(value, dict):
            tag = value.get(str(ctx.get("discriminator", "")).strip("'"), tag)
        text = f"unknown type {quoted(tag)}; expected one of {ctx.get('expected_tags')}"
    elif kind == "union_tag_not_found":
        text = "missing key 'type'"
    elif kind == "value_error":
        text = str(ctx.get("error", error["msg"]))
    else:
        text = f"{error['msg'][0].lower()}{error['msg'][1:]}"
    message = f"{where}: {text}" if where else text
    return Diagnostic(message, document.position_of(loc), address)


def _field_label(loc: Loc) -> str:
    """The field path inside its resource: ``('models','churn','resources','cpus')`` -> ``resources.cpus``."""
    head = loc[0] if loc else ""
    if head in SECTIONS or head == "waivers":
        rest = loc[2:]
    elif head in ("cluster", "storage", "compliance"):
        rest = loc[1:]
    else:
        rest = loc
    return ".".join(str(part) for part in rest)


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _allowed_keys(loc: Loc) -> list[str]:
    """The keys the model at ``loc`` accepts (for did-you-mean)."""
    annotation: Any = Spec
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    model = _as_model(annotation)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _bound(loc: Loc, which: str) -> Any:
    """The bound (``le`` or ``ge``) the spec puts on the field at ``loc``, if any."""
    annotation: Any = Spec
    found: Any = None
    for part in loc:
        found = None
        for leaf in _unwrap(annotation):
            origin = typing.get_origin(leaf)
            if isinstance(leaf, type) and issubclass(leaf, BaseModel) and isinstance(part, str):
                found = next((info for name, info in leaf.model_fields.items() if part in (name, info.alias)), None)
                if found is not None:
                    annotation = found.annotation
                    break
            elif origin is dict and isinstance(part, str):
                annotation = typing.get_args(leaf)[1]
                break
            elif origin is list and isinstance(part, int):
                annotation = typing.get_args(leaf)[0]
                break
        else:
            return None
    return next((getattr(m, which) for m in getattr(found, "metadata", []) if getattr(m, which, None) is not None),
                None)


def _unwrap(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [leaf for arg in typing.get_args(annotation) for leaf in _unwrap(arg)]
    return [annotation]


def _as_model(annotation: Any) -> type[BaseModel] | None:
    for leaf in _unwrap(annotation):
        if isinstance(leaf, type) and issubclass(leaf, BaseModel):
            return leaf
    return None


def _step(annotation: Any, part: str | int) -> Any:
    for leaf in _unwrap(annotation):
        origin = typing.get_origin(leaf)
        if isinstance(leaf, type) and issubclass(leaf, BaseModel) and isinstance(part, str):
            for name, info in leaf.model_fields.items():
                if part in (name, info.alias):
                    return info.annotation
        elif origin is dict and isinstance(part, str):
            return typing.get_args(leaf)[1]
        elif origin is list and isinstance(part, int):
            return typing.get_args(leaf)[0]
    return None
