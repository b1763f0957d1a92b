"""Values shown in messages, written the way ``mlops.yaml`` writes them (never as Python reprs).

>>> yaml_text(None), yaml_text(True), yaml_text([{"metric": "auc", "op": ">=", "value": 0.8}])
('null', 'true', "[{metric: auc, op: '>=', value: 0.8}]")
>>> yaml_text(["team:crm", "ana@example.com", "yes", "2027-01-31", "a\\nb"])
'[team:crm, ana@example.com, \\'yes\\', \\'2027-01-31\\', "a\\\\nb"]'
>>> quoted("eu-west-1"), quoted(None), quoted(10 ** 40, limit=12)
("'eu-west-1'", 'null', '10000000000... (41 digits)')
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import yaml

LIMIT = 120
"""Longer renderings are cut, so that a message stays one readable line."""

_PLAIN = re.compile(r"[A-Za-z0-9_./~+$(][A-Za-z0-9_./~+$()@: -]*")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - 3, 1)] + "..."


def _is_plain(text: str) -> bool:
    """A string YAML reads back as itself without quotes, in flow context too."""
    if not _PLAIN.fullmatch(text) or text != text.strip() or ": " in text or text.endswith(":") or " #" in text:
        return False
    try:
        return bool(yaml.safe_load(text) == text)
    except yaml.YAMLError:
        return False


def _string(text: str, always_quote: bool) -> str:
    if _UNSAFE.search(text):
        return json.dumps(text, ensure_ascii=False)  # a YAML double-quoted scalar, escapes and all
    if not always_quote and _is_plain(text):
        return text
    return "'" + text.replace("'", "''") + "'"


def _float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text and "." not in text.partition("e")[0]:
        mantissa, _, exponent = text.partition("e")
        text = f"{mantissa}.0e{exponent}"  # YAML 1.1 reads 1e+300 as a string, 1.0e+300 as a number
    return text


def _flow(value: Any, always_quote: bool = False) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        return _string(value, always_quote)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_flow(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return "[" + ", ".join(_flow(v) for v in items) + "]"
    return _string(str(value), always_quote)


def _number(value: int, limit: int | None) -> str:
    text = str(value)
    if limit is None or len(text) <= limit:
        return text
    digits = len(text.lstrip("-"))
    return f"{text[:limit - 1]}... ({digits} digits)"


def yaml_text(value: Any, limit: int | None = LIMIT) -> str:
    """``value`` as YAML flow text on one line: ``null``, ``true``, ``[a, b]``, ``{metric: auc}``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _number(value, limit)
    return _cut(_flow(value), limit)


def quoted(value: Any, limit: int | None = LIMIT) -> str:
    """Like :func:`yaml_text`, but a string is always quoted: ``'eu-west-1'``."""
    if isinstance(value, str):
        return _cut(_flow(value, always_quote=True), limit)
    return yaml_text(value, limit)
