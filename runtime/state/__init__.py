"""What the runtime remembers, and the only SQL: the SQLite state store (one module per table family),
its migrations, its audit trail and the state lock.

::

    from runtime.state import StateStore, audit, lock

    with lock.exclusive(state_path, "apply", timeout=0), StateStore.open(state_path) as store:
        store.record_result(result)
        audit.append(store, actor, "apply", {"changes": [...]}, commit)
"""

from __future__ import annotations

from runtime.state import audit, lock
from runtime.state.lock import LockError, LockHeld, StateLock
from runtime.state.records import (
    Approval,
    AuditRecord,
    DeploymentState,
    GateDecision,
    LockInfo,
    MetricPoint,
    ModelVersion,
    NodeResult,
    Run,
    Snapshot,
)
from runtime.state.store import StateError, StateStore

__all__ = [
    "Approval", "AuditRecord", "DeploymentState", "GateDecision", "LockError", "LockHeld", "LockInfo",
    "MetricPoint", "ModelVersion", "NodeResult", "Run", "Snapshot", "StateError", "StateLock", "StateStore",
    "audit", "lock",
]
