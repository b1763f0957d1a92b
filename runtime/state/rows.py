"""Rows -> records: the one mapper per table of the state database, and its JSON column encoding.

A JSON column that does not parse raises :class:`CorruptRecord`, which the store says as a
:class:`~runtime.state.access.StateError` naming the database. Audit records are read with plain
``json.loads`` (a ``ValueError``): ``audit verify`` reports an edited payload as a finding.
"""

from __future__ import annotations

import json
from typing import Any, cast

from compiler.content_hash import canonical_json
from runtime.state.records import (
    Approval,
    AuditRecord,
    DataRemoval,
    DeploymentState,
    ErasureRequest,
    GateDecision,
    GateStatus,
    MetricPoint,
    ModelVersion,
    MonitorResult,
    NodeResult,
    ReconcilerStatus,
    RetrainRequest,
    Run,
    RunStatus,
    Snapshot,
    VersionStatus,
)

Row = Any
"""A ``sqlite3.Row`` or a :class:`runtime.state.pg.Row`: read by column name and by position."""


class CorruptRecord(ValueError):
    """A column of a row does not hold what the store wrote there (its JSON does not parse)."""


def dump_json(value: Any) -> str:
    """A JSON column's text (canonical: sorted keys, no spaces)."""
    return canonical_json(value)


def load_json(text: str | None) -> Any:
    """A JSON column's value (``None`` for NULL); :class:`CorruptRecord` when it does not parse."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        shown = repr(text if len(str(text)) <= 40 else str(text)[:40] + "...")
        raise CorruptRecord(f"a record holds {shown}, which is not valid JSON ({exc})") from exc


def node_result_of(row: Row) -> NodeResult:
    return NodeResult(
        node_id=row["node_id"], address=row["address"], kind=row["kind"], fingerprint=row["fingerprint"],
        config=load_json(row["config"]), code_hash=row["code_hash"], data_hash=row["data_hash"],
        upstream=load_json(row["upstream"]), status=cast(RunStatus, row["status"]),
        outputs=load_json(row["outputs"]), run_id=row["run_id"], finished_at=row["finished_at"])


def run_of(row: Row) -> Run:
    return Run(
        run_id=row["run_id"], node_id=row["node_id"], address=row["address"], kind=row["kind"],
        fingerprint=row["fingerprint"], params=load_json(row["params"]), status=cast(RunStatus, row["status"]),
        attempt=row["attempt"], started_at=row["started_at"], finished_at=row["finished_at"], host=row["host"],
        pid=row["pid"], device=row["device"], git_commit=row["git_commit"], git_dirty=bool(row["git_dirty"]),
        metrics=load_json(row["metrics"]), log_uri=row["log_uri"], error=row["error"])


def metric_point_of(row: Row) -> MetricPoint:
    return MetricPoint(row["run_id"], row["name"], row["step"], row["value"])


def snapshot_of(row: Row) -> Snapshot:
    return Snapshot(address=row["address"], fingerprint=row["fingerprint"], content_hash=row["content_hash"],
                    artifact_uri=row["artifact_uri"], created_at=row["created_at"])


def model_version_of(row: Row) -> ModelVersion:
    return ModelVersion(
        model=row["model"], version=row["version"], fingerprint=row["fingerprint"], artifact_uri=row["artifact_uri"],
        run_id=row["run_id"], metrics=load_json(row["metrics"]), params=load_json(row["params"]),
        code_hash=row["code_hash"], git_commit=row["git_commit"], data=load_json(row["data"]),
        status=cast(VersionStatus, row["status"]), reason=row["reason"], created_at=row["created_at"],
        signature=load_json(row["signature"]))


def gate_decision_of(row: Row) -> GateDecision:
    return GateDecision(gate=row["gate"], model=row["model"], version=row["version"],
                        status=cast(GateStatus, row["status"]), checks=load_json(row["checks"]),
                        decided_at=row["decided_at"])


def approval_of(row: Row) -> Approval:
    """An approval from an ``approvals`` row joined with its audit record (its ``git_commit``)."""
    return Approval(row["gate"], row["model"], row["version"], row["approver"], row["approved_at"], row["git_commit"])


def deployment_of(row: Row) -> DeploymentState:
    return DeploymentState(name=row["name"], model=row["model"], desired_version=row["desired_version"],
                           live_version=row["live_version"], status=row["status"], updated_at=row["updated_at"],
                           pinned_version=row["pinned_version"], pin_reason=row["pin_reason"])


def monitor_result_of(row: Row) -> MonitorResult:
    return MonitorResult(row["monitor"], row["deployment"], row["version"], row["at"], bool(row["breached"]),
                         load_json(row["checks"]), load_json(row["actions"]))


def retrain_request_of(row: Row) -> RetrainRequest:
    return RetrainRequest(row["id"], row["model"], row["reason"], row["at"], row["consumed_by"])


def reconciler_status_of(row: Row) -> ReconcilerStatus:
    return ReconcilerStatus(row["commit_id"], row["synced_at"], row["tick_at"], row["error"], row["errors"])


def audit_record_of(row: Row) -> AuditRecord:
    """An audit record (``ValueError`` when its payload is not JSON: an edit ``audit verify`` reports)."""
    return AuditRecord(seq=row["seq"], at=row["at"], actor=row["actor"], action=row["action"],
                       commit=row["git_commit"], payload=json.loads(row["payload"]), prev_hash=row["prev_hash"],
                       hash=row["hash"])


def data_removal_of(row: Row) -> DataRemoval:
    return DataRemoval(
        item_kind=row["item_kind"], item_id=row["item_id"], address=row["address"], content_hash=row["content_hash"],
        artifact_uri=row["artifact_uri"], created_at=row["created_at"], removal=row["removal"], origin=row["origin"],
        reason=row["reason"], request_id=row["request_id"], removed_at=row["removed_at"], audit_seq=row["audit_seq"])


def erasure_request_of(row: Row) -> ErasureRequest:
    return ErasureRequest(
        id=row["id"], dataset=row["dataset"], reason=row["reason"], requested_by=row["requested_by"],
        requested_at=row["requested_at"], models=load_json(row["models"]), closed_at=row["closed_at"])
