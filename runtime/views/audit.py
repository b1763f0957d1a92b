"""The audit trail and lock views behind ``mlops audit log|verify`` and ``mlops force-unlock``."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from typing import Any

from compiler.resolve import Project
from runtime.state import audit
from runtime.state.records import AuditRecord, LockInfo
from runtime.state.store import StateStore


@dataclass
class AuditCheck:
    records: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "problems": self.problems}


def audit_log(store: StateStore, limit: int | None = None) -> list[AuditRecord]:
    """The audit records, oldest first (the newest ``limit`` with a limit)."""
    return audit.log(store, limit)


def verify_audit(store: StateStore) -> AuditCheck:
    """Check the hash chain and its anchors; every problem found, one line each."""
    problems = audit.verify(store)
    try:
        count = audit.record_count(store)
    except sqlite3.DatabaseError:  # a corrupt database: verify said so
        count = 0
    return AuditCheck(count, problems)


def force_unlock(project: Project, lock_id: str) -> LockInfo:
    """Clear the lock information a dead holder left (refused for a wrong id or a live holder); audited."""
    from runtime.provenance import provenance
    from runtime.state import lock
    from runtime.workspace import Workspace

    workspace = Workspace.of(project)
    cleared = lock.force_unlock(workspace.state, lock_id)
    origin = provenance(project.root)
    with StateStore.open(workspace.state) as store:
        audit.append(store, origin.actor, "force-unlock", {"lock": asdict(cleared)}, origin.commit)
    return cleared
