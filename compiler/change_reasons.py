"""How a change to a step is worded and weighed — shared by ``mlops plan`` (against the live state)
and ``mlops diff`` (between two revisions), so both say the same thing about the same edit."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, cast

from compiler.content_hash import canonical_json

IN_PLACE_KEYS = {
    "deploy": {"replicas", "resources", "route"},
    "monitor": {"schedule", "checks", "on_breach"},
}
"""Config keys whose change updates a step in place instead of re-running it."""

A = TypeVar("A", bound=str)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_reasons(before: Any, after: Any) -> list[str]:
    """``params.lr: 0.01 -> 0.02`` for every leaf that differs.

    >>> config_reasons({"params": {"lr": 0.01}}, {"params": {"lr": 0.02, "epochs": 5}})
    ['params.epochs: (none) -> 5', 'params.lr: 0.01 -> 0.02']
    """
    old, new = _flatten(before), _flatten(after)
    reasons = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new and canonical_json(old[key]) == canonical_json(new[key]):
            continue
        render = lambda m, k: canonical_json(m[k]) if k in m else "(none)"  # noqa: E731
        reasons.append(f"{key}: {render(old, key)} -> {render(new, key)}")
    return reasons


def strongest(actions: Iterable[A]) -> A:
    """A resource's action from its steps' actions.

    >>> strongest(["create", "create"]), strongest(["no-op", "create"]), strongest(["no-op", "update"])
    ('create', 'replace', 'update')
    """
    found: set[str] = set(actions)
    if len(found) == 1:
        chosen = found.pop()
    elif "blocked" in found:
        chosen = "blocked"
    elif found & {"replace", "create"}:
        chosen = "replace"  # some steps run again
    elif found & {"update", "delete"}:
        chosen = "update"  # changed in place, or a step (say a sweep trial) removed
    else:
        chosen = "no-op"
    return cast(A, chosen)
