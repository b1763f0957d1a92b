"""What an apply reports: each node's outcome, and the progress events a caller may watch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["succeeded", "failed", "skipped", "blocked"]


@dataclass
class NodeOutcome:
    """How one node of an apply ended, and why (one line)."""

    node_id: str
    status: Outcome
    message: str = ""


@dataclass
class ApplyResult:
    """Every node's outcome of one apply."""

    outcomes: dict[str, NodeOutcome] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.status in ("succeeded", "blocked") for o in self.outcomes.values())

    def count(self, status: Outcome) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)


ProgressHook = Callable[[str, str, str], None]
"""(node id, event, detail): events are ``started`` (submitted), ``waiting`` (not started: what it waits for),
``running`` (started after a wait), ``succeeded``, ``failed``, ``retry``, ``skipped``, ``blocked``."""
