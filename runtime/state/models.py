"""The model registry: versions, gate decisions and approvals, each decision and approval chained in the
audit trail (a store mixin).

A decision or an approval counts only when the audit record its row names (seq and hash) is in the
anchored chain and says what the row says: one written behind mlops' back (plain SQL) takes no effect.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from compiler.content_hash import canonical_json
from runtime.state.access import StateError, StoreAccess
from runtime.state.records import Approval, GateDecision, ModelVersion, VersionStatus
from runtime.state.rows import approval_of, audit_record_of, dump_json, gate_decision_of, load_json, model_version_of

DECIDE = "decide"
"""The action of the audit record that makes a gate decision take effect (:meth:`ModelRecords.record_gate_decision`)."""

_APPROVALS_SQL = (
    "SELECT p.gate, p.model, p.version, p.approver, p.approved_at, a.seq, a.at, a.actor, a.action, a.git_commit,"
    " a.payload, a.prev_hash, a.hash, (SELECT count FROM audit_head WHERE id = 1) AS head"
    " FROM approvals p LEFT JOIN audit a ON a.seq = p.audit_seq AND a.hash = p.audit_hash")

_DECISIONS_SQL = (
    "SELECT d.id, d.gate, d.model, d.version, d.status, d.checks, d.decided_at, a.seq, a.at, a.actor, a.action,"
    " a.git_commit, a.payload, a.prev_hash, a.hash, (SELECT count FROM audit_head WHERE id = 1) AS head"
    " FROM gate_decisions d LEFT JOIN audit a ON a.seq = d.audit_seq AND a.hash = d.audit_hash")


class ModelRecords(StoreAccess):
    """The ``model_versions``, ``model_counters``, ``gate_decisions`` and ``approvals`` tables."""

    # --- model versions --------------------------------------------------------------------------

    def next_model_version(self, model: str) -> int:
        """Reserve the next version number of ``model`` (1, 2, ...); a number is never handed out twice.

        Call it inside the transaction that adds the version so a rollback releases the number; called
        alone it commits at once and a version that is never added leaves a gap.
        """
        with self.transaction():
            rows = self._conn.execute(
                "INSERT INTO model_counters (model, last_version) VALUES (?, 1)"
                " ON CONFLICT (model) DO UPDATE SET last_version = model_counters.last_version + 1"
                " RETURNING last_version",
                (model,)).fetchall()
            return int(rows[0][0])

    def add_model_version(self, version: ModelVersion) -> None:
        """Store a model version (its number from :meth:`next_model_version`); the number must be new."""
        try:
            with self.transaction():
                self._conn.execute(
                    "INSERT INTO model_versions (model, version, fingerprint, artifact_uri, run_id, metrics, params,"
                    " code_hash, git_commit, data, status, reason, created_at, signature)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (version.model, version.version, version.fingerprint, version.artifact_uri, version.run_id,
                     dump_json(version.metrics), dump_json(version.params), version.code_hash, version.git_commit,
                     dump_json(version.data), version.status, version.reason, version.created_at or time.time(),
                     None if version.signature is None else dump_json(version.signature)))
                self._conn.execute(
                    "INSERT INTO model_counters (model, last_version) VALUES (?, ?) ON CONFLICT (model)"
                    " DO UPDATE SET last_version = CASE WHEN excluded.last_version > model_counters.last_version"
                    " THEN excluded.last_version ELSE model_counters.last_version END",
                    (version.model, version.version))
        except self.dialect.integrity_errors as exc:
            raise StateError.of(f"model '{version.model}' already has a version {version.version}") from exc

    def model_versions(self, model: str) -> list[ModelVersion]:
        """A model's versions, oldest first."""
        return [model_version_of(row) for row in
                self._rows("SELECT * FROM model_versions WHERE model = ? ORDER BY version", (model,))]

    def get_model_version(self, model: str, version: int) -> ModelVersion | None:
        row = self._row("SELECT * FROM model_versions WHERE model = ? AND version = ?", (model, version))
        return model_version_of(row) if row else None

    def set_model_version_status(self, model: str, version: int, status: VersionStatus, reason: str = "") -> None:
        cursor = self._exec("UPDATE model_versions SET status = ?, reason = ? WHERE model = ? AND version = ?",
                            (status, reason, model, version))
        if cursor.rowcount == 0:
            raise StateError.of(f"model '{model}' has no version {version}")

    def models(self) -> list[str]:
        """Names of the models that have at least one version, sorted."""
        return [row[0] for row in self._rows("SELECT DISTINCT model FROM model_versions ORDER BY model")]

    # --- gates -----------------------------------------------------------------------------------

    def record_gate_decision(self, decision: GateDecision, actor: str = "mlops", commit: str | None = None) -> None:
        """Store a gate's decision on a version (the version must exist) with its ``decide`` audit record.

        The row and its record are written in one transaction and the row carries the record's seq and hash:
        :meth:`latest_gate_decision` counts only decisions whose record is in the chain and says what the row
        says, so a decision written behind mlops' back (with plain SQL) takes no effect.
        """
        from runtime.state import audit

        at = decision.decided_at or time.time()
        try:
            with self.transaction():
                record = audit.append(self, actor, DECIDE, _decision_payload(
                    decision.gate, decision.model, decision.version, decision.status, decision.checks), commit, at=at)
                self._conn.execute(
                    "INSERT INTO gate_decisions (gate, model, version, status, checks, decided_at, audit_seq,"
                    " audit_hash) VALUES (?,?,?,?,?,?,?,?)",
                    (decision.gate, decision.model, decision.version, decision.status, dump_json(decision.checks),
                     at, record.seq, record.hash))
        except self.dialect.integrity_errors as exc:
            raise StateError.of(f"model '{decision.model}' has no version {decision.version}") from exc

    def latest_gate_decision(self, gate: str, model: str, version: int | None = None) -> GateDecision | None:
        """The newest decision of ``gate`` on that version (on any version of ``model`` when ``None``) that
        carries its record in the audit chain (:meth:`unchained_gate_decisions` lists the others)."""
        where = "WHERE d.gate = ? AND d.model = ?"
        params: list[Any] = [gate, model]
        if version is not None:
            where += " AND d.version = ?"
            params.append(version)
        for row in self._rows(_DECISIONS_SQL + f" {where} ORDER BY d.id DESC", params):
            if _decision_chained(row):
                return gate_decision_of(row)
        return None

    def gate_decisions(self, model: str, version: int) -> list[GateDecision]:
        """Every decision on one version of ``model`` that carries its record in the audit chain, oldest first."""
        rows = self._rows(_DECISIONS_SQL + " WHERE d.model = ? AND d.version = ? ORDER BY d.id", (model, version))
        return [gate_decision_of(row) for row in rows if _decision_chained(row)]

    def unchained_gate_decisions(self) -> list[GateDecision]:
        """Gate decision rows without their record in the audit chain: written behind mlops' back, never counted."""
        return [gate_decision_of(row) for row in self._rows(_DECISIONS_SQL + " ORDER BY d.id")
                if not _decision_chained(row)]

    def _adopt_decisions(self) -> None:
        """Chain the decisions recorded before decisions were chained (schema 3 and older), once, at migration.

        Each gets a ``decide`` record marked ``adopted``, so the trail says it was not chained when it was made.
        """
        from runtime.state import audit

        with self.transaction():
            for row in self._conn.execute("SELECT * FROM gate_decisions WHERE audit_seq IS NULL ORDER BY id"):
                payload = {**_decision_payload(row["gate"], row["model"], row["version"], row["status"],
                                               load_json(row["checks"])), "adopted": "schema migration 4"}
                record = audit.append(self, "mlops", DECIDE, payload, at=row["decided_at"])
                self._conn.execute("UPDATE gate_decisions SET audit_seq = ?, audit_hash = ? WHERE id = ?",
                                   (record.seq, record.hash, row["id"]))

    # --- approvals -------------------------------------------------------------------------------

    def add_approval(self, approval: Approval, commit: str | None = None) -> bool:
        """Record an approval with its ``approve`` audit record, in one transaction; True when it is new.

        Idempotent per (gate, model, version, approver): the check and the insert run under the write lock
        (``BEGIN IMMEDIATE``), so concurrent approvals by one principal make one row and one record. The
        row carries its record's seq and hash; :meth:`approvals` counts only rows whose record is in the
        chain, so a row written behind mlops' back (with plain SQL) counts for nothing.
        """
        from runtime.state import audit

        try:
            with self.transaction():
                if self.approval(approval.gate, approval.model, approval.version, approval.approver) is not None:
                    return False
                at = approval.approved_at or time.time()
                record = audit.append(self, approval.approver, "approve", {
                    "gate": f"gates.{approval.gate}", "model": approval.model, "version": approval.version},
                    commit, at=at)
                self._conn.execute(
                    "INSERT INTO approvals (gate, model, version, approver, approved_at, audit_seq, audit_hash)"
                    " VALUES (?,?,?,?,?,?,?) ON CONFLICT (gate, model, version, approver) DO UPDATE SET"
                    " approved_at = excluded.approved_at, audit_seq = excluded.audit_seq,"
                    " audit_hash = excluded.audit_hash",
                    (approval.gate, approval.model, approval.version, approval.approver, at, record.seq,
                     record.hash))
        except self.dialect.integrity_errors as exc:
            raise StateError.of(f"model '{approval.model}' has no version {approval.version}") from exc
        return True

    def approval(self, gate: str, model: str, version: int, approver: str) -> Approval | None:
        """``approver``'s approval of that version behind ``gate``, when it is in the audit chain."""
        return next((a for a in self.approvals(gate, model, version) if a.approver == approver), None)

    def approvals(self, gate: str, model: str, version: int) -> list[Approval]:
        """The approvals of one version behind a gate that carry their record in the audit chain, oldest first.

        A row counts only when the record it names (seq and hash) is in the anchored log, hashes to its
        hash, and is the ``approve`` of that principal, gate, model and version (:meth:`unchained_approvals`
        lists the others).
        """
        rows = self._rows(_APPROVALS_SQL + " WHERE p.gate = ? AND p.model = ? AND p.version = ?"
                          " ORDER BY p.approved_at, p.approver", (gate, model, version))
        return [approval_of(row) for row in rows if _approval_chained(row)]

    def approval_gates(self, model: str, version: int) -> list[str]:
        """The gates with an approval row for that version (chained or not), sorted."""
        rows = self._rows("SELECT DISTINCT gate FROM approvals WHERE model = ? AND version = ?", (model, version))
        return sorted({str(row[0]) for row in rows})

    def unchained_approvals(self) -> list[Approval]:
        """Approval rows without their record in the audit chain: written behind mlops' back, never counted."""
        rows = self._rows(_APPROVALS_SQL + " ORDER BY p.gate, p.model, p.version, p.approver")
        return [approval_of(row) for row in rows if not _approval_chained(row)]


def _decision_payload(gate: str, model: str, version: int, status: str, checks: Any) -> dict[str, Any]:
    """What a ``decide`` record says: the gate, the version, the status and the hash of the checks."""
    return {"gate": f"gates.{gate}", "model": model, "version": version, "status": status,
            "checks_sha256": hashlib.sha256(canonical_json(checks).encode()).hexdigest()}


def _audited(row: Any, action: str) -> dict[str, Any] | None:
    """The payload of the audit record a row names (seq and hash), when that record is in the anchored chain,
    hashes to its hash and is of ``action``; else ``None``."""
    from runtime.state.audit import record_hash

    if row["seq"] is None or row["seq"] > row["head"] or row["action"] != action:
        return None
    try:
        record = audit_record_of(row)
    except ValueError:
        return None
    return record.payload if record_hash(record) == record.hash and isinstance(record.payload, dict) else None


def _decision_chained(row: Any) -> bool:
    """Whether a gate decision row's ``decide`` record is in the anchored chain and says what the row says."""
    payload = _audited(row, DECIDE)
    if payload is None:
        return False
    try:
        checks = json.loads(row["checks"])
    except ValueError:
        return False
    payload.pop("adopted", None)
    return payload == _decision_payload(row["gate"], row["model"], row["version"], row["status"], checks)


def _approval_chained(row: Any) -> bool:
    """Whether an approval row's audit record is in the anchored chain and says what the row says."""
    payload = _audited(row, "approve")
    return (payload is not None and row["actor"] == row["approver"]
            and payload == {"gate": f"gates.{row['gate']}", "model": row["model"], "version": row["version"]})
