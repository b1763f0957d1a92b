"""Retention enforced: data older than its dataset's ``retention_days`` is expired (GDPR Art. 5(1)(e)).

A dataset's retention is the one its policy view carries (SPEC §2, governance follows the data): what it
declares, else the shortest of its upstream datasets'. An item (a source snapshot or a derived output) is due
``retention_days`` after it was made, or when what it was made from expires, whichever comes first: derived
data never outlives its source. Expiring an item deletes its objects (but those an item still held shares:
content addressing may store equal bytes once), marks it ``expired`` in the state and appends one ``expire``
audit record per item. The plan then takes an expired current snapshot again from the source (the user's
file) and runs what was made from it; a model version trained on expired data is flagged (``models show``,
the report, ``refs.expired_data``).

:func:`expire_due` runs in ``mlops gc`` and in each reconciler tick; ``now`` moves the clock (tests).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from compiler.resolve import Project
from runtime.artifacts.store import ArtifactStore
from runtime.lifecycle.holdings import Holdings, delete_data
from runtime.provenance import actor as default_actor
from runtime.state import audit
from runtime.state.lock import exclusive
from runtime.state.records import DataItem, DataRemoval
from runtime.state.store import StateStore
from runtime.workspace import Workspace

DAY_S = 86400.0
EXPIRE = "expire"
"""The audit action of one expired item: payload ``{dataset, kind, item, content_hash, artifact, created_at,
retention_days, origin, reason}``."""


@dataclass(frozen=True)
class Expiry:
    """One data item and when its retention ends."""

    item: DataItem
    expires_at: float
    origin: str
    """The dataset whose ``retention_days`` ends it: its own, or one it was made from."""
    retention_days: float | None
    """The origin's retention."""

    @property
    def address(self) -> str:
        return self.item.address

    @property
    def reason(self) -> str:
        days = f"{self.retention_days:g}" if self.retention_days is not None else "?"
        if self.origin == self.item.address:
            return f"older than its retention_days ({days})"
        return f"made from {self.origin}, older than its retention_days ({days})"

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.item.address, "kind": self.item.item_kind, "content_hash": self.item.content_hash,
                "artifact": self.item.artifact_uri, "created_at": self.item.created_at,
                "expires_at": self.expires_at, "origin": self.origin, "retention_days": self.retention_days,
                "reason": self.reason}


def retention_days(project: Project) -> dict[str, float]:
    """``datasets.NAME`` -> its retention in days (declared or inherited), for the datasets that have one."""
    found = {}
    for name in project.spec.datasets:
        days = project.views.get(f"datasets.{name}", {}).get("retention_days")
        if isinstance(days, int | float) and not isinstance(days, bool):
            found[f"datasets.{name}"] = float(days)
    return found


def schedule(project: Project, holdings: Holdings) -> list[Expiry]:
    """When each item still held expires, soonest first (items without a retention anywhere upstream never).

    An item whose input was removed already is due at that removal.
    """
    days = retention_days(project)
    ends: dict[tuple[str, int], Expiry] = {}
    for item in holdings.items:  # oldest first: an input is placed before what was made from it
        if item.removal is not None:
            continue
        candidates = []
        if item.address in days:
            candidates.append(Expiry(item, item.created_at + days[item.address] * DAY_S, item.address,
                                     days[item.address]))
        for source in holdings.inputs(item):
            if source.removal is not None:
                candidates.append(Expiry(item, source.removal.removed_at, source.removal.origin,
                                         days.get(source.removal.origin)))
            elif (upstream := ends.get((source.item_kind, source.item_id))) is not None:
                candidates.append(Expiry(item, upstream.expires_at, upstream.origin, upstream.retention_days))
        if candidates and item.address.partition(".")[2] in project.spec.datasets:
            ends[(item.item_kind, item.item_id)] = min(candidates, key=lambda e: (e.expires_at, e.origin))
    return sorted(ends.values(), key=lambda e: (e.expires_at, e.item.address, e.item.item_id))


def due(project: Project, store: StateStore, now: float | None = None) -> list[Expiry]:
    """The items past their retention at ``now`` (default: the current time)."""
    at = time.time() if now is None else now
    return [e for e in schedule(project, Holdings.read(store)) if e.expires_at <= at]


def upcoming(project: Project, store: StateStore, now: float | None = None, limit: int = 5) -> list[Expiry]:
    """The next ``limit`` items retention will expire after ``now``, soonest first."""
    at = time.time() if now is None else now
    return [e for e in schedule(project, Holdings.read(store)) if e.expires_at > at][:limit]


def expire_due(project: Project, store: StateStore, artifacts: ArtifactStore, *, now: float | None = None,
               actor: str | None = None) -> list[Expiry]:
    """Expire every item past its retention at ``now``: objects deleted, items marked, one audit record each.

    Takes the state lock (reused when the caller holds it: a reconciler tick, ``mlops gc``). The objects go
    first and the records after, in one transaction: a crash between leaves the items held and their objects
    gone, which the plan sees (``artifact missing``) and the next expiry records; never a record of a deletion
    that did not happen.
    """
    at = time.time() if now is None else now
    who = actor or default_actor(project.root)
    with exclusive(Workspace.of(project).state, "expire", who):
        holdings = Holdings.read(store)
        expiring = [e for e in schedule(project, holdings) if e.expires_at <= at]
        if not expiring:
            return []
        gone = {(e.item.item_kind, e.item.item_id) for e in expiring}
        delete_data(artifacts, [e.item for e in expiring],
                    keep=[i for i in holdings.held if (i.item_kind, i.item_id) not in gone])
        with store.transaction():
            for expiry in expiring:
                item = expiry.item
                removed_at = time.time()
                record = audit.append(store, who, EXPIRE, {
                    "dataset": item.address, "kind": item.item_kind, "item": item.item_id,
                    "content_hash": item.content_hash, "artifact": item.artifact_uri, "created_at": item.created_at,
                    "retention_days": expiry.retention_days, "origin": expiry.origin, "reason": expiry.reason},
                    at=removed_at)
                store.record_removal(DataRemoval(
                    item.item_kind, item.item_id, item.address, item.content_hash, item.artifact_uri, item.created_at,
                    "expired", expiry.origin, expiry.reason, None, removed_at, record.seq))
        store.sync()
    return expiring
