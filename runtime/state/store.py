"""The state store: one SQLite file holding what the runtime did (results, runs, versions, gates, ...).

Settings, chosen for a single-host embedded store that must survive ``kill -9`` of an apply:

* WAL journal: readers (``plan``, ``status``) never block the writer (``apply``) and vice versa.
* ``synchronous=NORMAL``: in WAL mode every committed transaction survives a crash of the process
  (kill -9, OOM); only an OS crash or power loss may drop the last few commits, never corrupt the
  file. Losing a commit there only means a node runs again (artifacts are content-addressed, so a
  re-run converges). ``FULL`` would fsync on every commit, a few ms each, which a 200-node apply
  pays hundreds of times. Records that must be durable at once (the audit trail) call :meth:`sync`.
* ``foreign_keys=ON``, ``busy_timeout``; a ``database is locked`` error that outlives the busy
  timeout is retried with backoff in :func:`_retry`, the one place that does it.

Every method is atomic; :meth:`StateStore.transaction` groups several into one transaction::

    with store.transaction():
        version = store.next_model_version("churn")
        store.add_model_version(ModelVersion("churn", version, fp, uri))
        store.record_result(result)

A store is safe to share between threads of one process (calls are serialised); open one per process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from compiler.content_hash import canonical_json
from compiler.errors import MlopsError
from runtime.state import anchor
from runtime.state.faults import os_line, sqlite_line
from runtime.state.migrations import SchemaTooNew, migrate, schema_version
from runtime.state.records import (
    Approval,
    DeploymentState,
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

T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
RETRY_ATTEMPTS = 8
RETRY_FIRST_DELAY_S = 0.05
RETRY_MAX_DELAY_S = 2.0


DECIDE = "decide"
"""The action of the audit record that makes a gate decision take effect (:meth:`StateStore.record_gate_decision`)."""
DECISIONS_CHAINED_SINCE = 4
"""The schema version from which every gate decision carries its ``decide`` record."""


class StateError(MlopsError):
    """The state database cannot be used as asked (locked too long, too new, unknown record)."""

    @classmethod
    def of(cls, message: str) -> StateError:
        return cls.one(message)  # type: ignore[return-value]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "database is locked" in message or "database is busy" in message or "database table is locked" in message


def _retry(operation: Callable[[], T]) -> T:
    """Run ``operation``; on ``database is locked`` retry with exponential backoff and jitter.

    SQLite's busy handler already waits ``busy_timeout`` inside each attempt; this outer loop covers
    the cases it does not (a lock held longer, a busy error returned without waiting).
    """
    attempts, delay = RETRY_ATTEMPTS, RETRY_FIRST_DELAY_S
    for attempt in range(attempts):
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if attempt == attempts - 1:
                raise StateError.of(f"the state database stayed locked by another process: {exc}") from exc
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
    raise AssertionError("unreachable")


def _identity(conn: sqlite3.Connection) -> tuple[str, int, int]:
    row = conn.execute("SELECT m.lineage, m.serial, h.count FROM state_meta m, audit_head h"
                       " WHERE m.id = 1 AND h.id = 1").fetchone()
    if row is None:
        raise sqlite3.DatabaseError("its state_meta or audit_head row is missing")
    return str(row[0]), int(row[1]), int(row[2])


def _dump(value: Any) -> str:
    return canonical_json(value)


class CorruptRecord(ValueError):
    """A column of a row does not hold what the store wrote there (its JSON does not parse)."""


def _load(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        shown = repr(text if len(str(text)) <= 40 else str(text)[:40] + "...")
        raise CorruptRecord(f"a record holds {shown}, which is not valid JSON ({exc})") from exc


def _translated(path: Path, exc: BaseException) -> StateError | None:
    """The one-line error naming the database for a fault SQLite or a damaged record raised, else ``None``."""
    if isinstance(exc, CorruptRecord):
        return StateError.of(f"{sqlite_line(path, sqlite3.DatabaseError(str(exc)))}; the state is corrupted:"
                             " restore it from a backup")
    if isinstance(exc, sqlite3.OperationalError) and not _is_busy(exc) or type(exc) is sqlite3.DatabaseError:
        return StateError.of(sqlite_line(path, cast(sqlite3.Error, exc)))
    return None


class StateStore:
    """Typed access to the state database; create with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []

    # --- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, busy_timeout: float = BUSY_TIMEOUT_S, *, check: bool = True) -> StateStore:
        """Open (creating it and its parent directories if needed) and migrate the database at ``path``.

        With ``check`` (the default) a state that is not the one its audit-head sidecar anchors (emptied,
        replaced by another lineage, older than the head: :mod:`runtime.state.anchor`) is refused with a
        :class:`StateError` before anything is written to it. ``audit verify`` and ``state reset`` open
        without the check, to report and to recover.
        """
        if "://" in str(path):
            raise StateError.of(f"state {path}: only a local SQLite file is supported as the state store")
        path = Path(path)
        side = anchor.read(anchor.sidecar_path(path))  # before the state: see anchor.refusal
        if check and (why := anchor.refusal_before_open(path)) is not None:
            raise StateError.of(why)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError.of(os_line(exc)) from exc
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = _retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise StateError.of(f"{path}: cannot use WAL journaling (got {mode!r}); is it on a network drive?")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            before = _retry(lambda: schema_version(conn))
            _retry(lambda: migrate(conn))
            if check:
                lineage, serial, count = _identity(conn)
                if (why := anchor.refusal(path, side, lineage, serial, count)) is not None:
                    raise StateError.of(why)
        except SchemaTooNew as exc:
            conn.close()
            raise StateError.of(f"{path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            line = sqlite_line(path, exc, "not a usable state database: {reason}")
            if "not a usable state database" not in line:  # a damaged file: say so, and what it is not
                line = line.replace(": the database is damaged", ": not a usable state database: the database is "
                                    "damaged", 1)
            raise StateError.of(line) from exc
        except BaseException:
            conn.close()
            raise
        store = cls(conn, path)
        if 0 < before < DECISIONS_CHAINED_SINCE:
            store._adopt_decisions()
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection (for the audit module and tests); prefer the typed methods."""
        return self._conn

    def identity(self) -> tuple[str, int, int]:
        """(lineage, serial, audit records) of this state, read in one statement."""
        with self._lock:
            return _retry(lambda: _identity(self._conn))

    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._conn)

    def sync(self) -> None:
        """Make every committed transaction durable now (fsync the WAL and the database file)."""
        with self._lock:
            for name in (f"{self.path}-wal", str(self.path)):
                try:
                    fd = os.open(name, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    # --- transactions ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[StateStore]:
        """One atomic unit: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception).

        Nested use makes a savepoint, so an inner failure the caller catches undoes only the inner part.
        """
        with self._lock:
            if self._depth == 0:
                yield from self._outer()
            else:
                yield from self._savepoint()

    def _outer(self) -> Iterator[StateStore]:
        try:
            _retry(lambda: self._conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.DatabaseError as exc:
            translated = _translated(self.path, exc)
            if translated is None:
                raise
            raise translated from exc
        self._depth = 1
        changes = self._conn.total_changes
        try:
            yield self
            if self._conn.total_changes != changes:  # a write: the state's serial grows with it
                self._conn.execute("UPDATE state_meta SET serial = serial + 1 WHERE id = 1")
            _retry(lambda: self._conn.execute("COMMIT"))
        except BaseException as exc:
            self._after_commit.clear()
            if self._conn.in_transaction:
                with suppress(sqlite3.Error):  # SQLite has rolled back itself (a full disk, an I/O error)
                    self._conn.execute("ROLLBACK")
            translated = _translated(self.path, exc)
            if translated is not None:
                raise translated from exc
            raise
        finally:
            self._depth = 0
        hooks, self._after_commit = self._after_commit, []
        for hook in hooks:
            hook()

    def _savepoint(self) -> Iterator[StateStore]:
        name = f"sp{self._depth}"
        hooks_before = len(self._after_commit)
        self._conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield self
        except BaseException:
            del self._after_commit[hooks_before:]
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        else:
            self._conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the current outermost transaction commits (at once when there is none)."""
        with self._lock:
            if self._depth == 0:
                hook()
            else:
                self._after_commit.append(hook)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read-only statement (for sibling modules such as the audit trail)."""
        return self._rows(sql, params)

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            args = tuple(params)
            try:
                return _retry(lambda: self._conn.execute(sql, args).fetchall())
            except sqlite3.DatabaseError as exc:
                translated = _translated(self.path, exc)
                if translated is None:
                    raise
                raise translated from exc

    def _row(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Execute one write statement atomically (inside the current transaction when there is one).

        Inside a transaction no savepoint is needed: SQLite undoes a failed statement by itself.
        """
        with self._lock:
            if self._depth:
                return self._conn.execute(sql, tuple(params))
            with self.transaction():
                return self._conn.execute(sql, tuple(params))

    # --- node results ----------------------------------------------------------------------------

    def record_result(self, result: NodeResult) -> None:
        self._exec(
            "INSERT INTO node_results (node_id, address, kind, fingerprint, config, code_hash, data_hash, upstream,"
            " status, outputs, run_id, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (result.node_id, result.address, result.kind, result.fingerprint, _dump(result.config), result.code_hash,
             result.data_hash, _dump(result.upstream), result.status, _dump(result.outputs), result.run_id,
             result.finished_at or time.time()))

    def latest_result(self, node_id: str, succeeded_only: bool = True) -> NodeResult | None:
        """The newest result of a node: the newest *succeeded* one unless ``succeeded_only`` is false."""
        where = "node_id = ? AND status = 'succeeded'" if succeeded_only else "node_id = ?"
        row = self._row(f"SELECT * FROM node_results WHERE {where} ORDER BY id DESC LIMIT 1", (node_id,))
        return _node_result(row) if row else None

    def latest_results(self) -> dict[str, NodeResult]:
        """Node id -> its newest succeeded result, for every node that ever succeeded (one query)."""
        rows = self._rows(
            "SELECT r.* FROM node_results r JOIN (SELECT MAX(id) AS id FROM node_results WHERE status = 'succeeded'"
            " GROUP BY node_id) m ON r.id = m.id")
        return {row["node_id"]: _node_result(row) for row in rows}

    def forget_node(self, node_id: str) -> int:
        """Delete every result of a node (it will be planned as new); returns how many rows went."""
        return self._exec("DELETE FROM node_results WHERE node_id = ?", (node_id,)).rowcount

    # --- runs ------------------------------------------------------------------------------------

    def start_run(self, run: Run) -> None:
        self._exec(
            "INSERT INTO runs (run_id, node_id, address, kind, fingerprint, params, status, attempt, started_at,"
            " finished_at, host, pid, device, git_commit, git_dirty, metrics, log_uri, error)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run.run_id, run.node_id, run.address, run.kind, run.fingerprint, _dump(run.params), run.status,
             run.attempt, run.started_at or time.time(), run.finished_at, run.host, run.pid, run.device,
             run.git_commit, int(run.git_dirty), _dump(run.metrics), run.log_uri, run.error))

    def finish_run(self, run_id: str, status: RunStatus, metrics: dict[str, float] | None = None,
                   error: str | None = None, log_uri: str | None = None, finished_at: float | None = None,
                   device: str | None = None, started_at: float | None = None, host: str | None = None,
                   pid: int | None = None) -> None:
        """Close a run: its final status, metrics, error, log and the device it ran on; unknown ids are an error.

        ``started_at``, when given, replaces the start recorded when the run was submitted: the moment the
        worker began it, on the same clock as ``finished_at`` (the time queued for a worker is not the run's).
        ``host`` and ``pid``, when given, are the worker's (the submitting driver's are recorded at the start).
        """
        cursor = self._exec(
            "UPDATE runs SET status = ?, metrics = ?, error = ?, log_uri = COALESCE(?, log_uri), finished_at = ?,"
            " device = COALESCE(?, device), started_at = COALESCE(?, started_at), host = COALESCE(?, host),"
            " pid = COALESCE(?, pid) WHERE run_id = ?",
            (status, _dump(metrics or {}), error, log_uri, finished_at or time.time(), device, started_at, host, pid,
             run_id))
        if cursor.rowcount == 0:
            raise StateError.of(f"unknown run '{run_id}'")

    def mark_run(self, run_id: str, status: RunStatus) -> None:
        """Move an unfinished run between ``running`` and ``waiting`` (its task not started yet)."""
        self._exec("UPDATE runs SET status = ? WHERE run_id = ? AND finished_at IS NULL", (status, run_id))

    def log_metrics(self, run_id: str, points: list[MetricPoint]) -> None:
        """Store metric values of a run (a value logged again at the same step replaces the old one)."""
        for point in points:
            if point.run_id != run_id:
                raise ValueError(f"metric point of run {point.run_id!r} logged under run {run_id!r}")
        try:
            with self.transaction():
                self._conn.executemany(
                    "INSERT OR REPLACE INTO metrics (run_id, name, step, value) VALUES (?,?,?,?)",
                    [(run_id, p.name, p.step, p.value) for p in points])
        except sqlite3.IntegrityError as exc:
            raise StateError.of(f"cannot log metrics of unknown run '{run_id}'") from exc

    def get_run(self, run_id: str) -> Run | None:
        row = self._row("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return _run(row) if row else None

    def list_runs(self, address: str | None = None, limit: int = 100) -> list[Run]:
        """The newest runs first, optionally of one resource address."""
        if address is None:
            rows = self._rows("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._rows("SELECT * FROM runs WHERE address = ? ORDER BY started_at DESC, rowid DESC LIMIT ?",
                              (address, limit))
        return [_run(row) for row in rows]

    def metric_history(self, run_id: str) -> list[MetricPoint]:
        """Every logged value of a run, by metric name then step."""
        rows = self._rows("SELECT * FROM metrics WHERE run_id = ? ORDER BY name, step", (run_id,))
        return [MetricPoint(row["run_id"], row["name"], row["step"], row["value"]) for row in rows]

    def named_artifacts(self) -> set[str]:
        """Every artifact URI the state refers to: run logs, model versions, snapshots, and the outputs of
        every succeeded node result."""
        named = {row[0] for row in self._rows("SELECT log_uri FROM runs WHERE log_uri IS NOT NULL")}
        named |= {row[0] for row in self._rows("SELECT artifact_uri FROM model_versions")}
        named |= {row[0] for row in self._rows("SELECT artifact_uri FROM snapshots WHERE artifact_uri IS NOT NULL")}
        for (outputs,) in self._rows("SELECT outputs FROM node_results WHERE status = 'succeeded'"):
            named |= {str(value) for key, value in (_load(outputs) or {}).items() if key in ("artifact", "input")}
        return named

    # --- snapshots -------------------------------------------------------------------------------

    def add_snapshot(self, snapshot: Snapshot) -> None:
        self._exec(
            "INSERT INTO snapshots (address, fingerprint, content_hash, artifact_uri, created_at) VALUES (?,?,?,?,?)",
            (snapshot.address, snapshot.fingerprint, snapshot.content_hash, snapshot.artifact_uri,
             snapshot.created_at or time.time()))

    def latest_snapshot(self, address: str) -> Snapshot | None:
        row = self._row("SELECT * FROM snapshots WHERE address = ? ORDER BY id DESC LIMIT 1", (address,))
        return _snapshot(row) if row else None

    def snapshots(self, address: str) -> list[Snapshot]:
        """A dataset's snapshots, oldest first."""
        return [_snapshot(row) for row in self._rows("SELECT * FROM snapshots WHERE address = ? ORDER BY id",
                                                     (address,))]

    # --- model versions --------------------------------------------------------------------------

    def next_model_version(self, model: str) -> int:
        """Reserve the next version number of ``model`` (1, 2, ...); a number is never handed out twice.

        Call it inside the transaction that adds the version so a rollback releases the number; called
        alone it commits at once and a version that is never added leaves a gap.
        """
        with self.transaction():
            rows = self._conn.execute(
                "INSERT INTO model_counters (model, last_version) VALUES (?, 1)"
                " ON CONFLICT (model) DO UPDATE SET last_version = last_version + 1 RETURNING last_version",
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
                     _dump(version.metrics), _dump(version.params), version.code_hash, version.git_commit,
                     _dump(version.data), version.status, version.reason, version.created_at or time.time(),
                     None if version.signature is None else _dump(version.signature)))
                self._conn.execute(
                    "INSERT INTO model_counters (model, last_version) VALUES (?, ?) ON CONFLICT (model)"
                    " DO UPDATE SET last_version = MAX(last_version, excluded.last_version)",
                    (version.model, version.version))
        except sqlite3.IntegrityError as exc:
            raise StateError.of(f"model '{version.model}' already has a version {version.version}") from exc

    def model_versions(self, model: str) -> list[ModelVersion]:
        """A model's versions, oldest first."""
        return [_model_version(row) for row in
                self._rows("SELECT * FROM model_versions WHERE model = ? ORDER BY version", (model,))]

    def get_model_version(self, model: str, version: int) -> ModelVersion | None:
        row = self._row("SELECT * FROM model_versions WHERE model = ? AND version = ?", (model, version))
        return _model_version(row) if row else None

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
                    (decision.gate, decision.model, decision.version, decision.status, _dump(decision.checks), at,
                     record.seq, record.hash))
        except sqlite3.IntegrityError as exc:
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
                return _gate_decision(row)
        return None

    def gate_decisions(self, model: str, version: int) -> list[GateDecision]:
        """Every decision on one version of ``model`` that carries its record in the audit chain, oldest first."""
        rows = self._rows(_DECISIONS_SQL + " WHERE d.model = ? AND d.version = ? ORDER BY d.id", (model, version))
        return [_gate_decision(row) for row in rows if _decision_chained(row)]

    def unchained_gate_decisions(self) -> list[GateDecision]:
        """Gate decision rows without their record in the audit chain: written behind mlops' back, never counted."""
        return [_gate_decision(row) for row in self._rows(_DECISIONS_SQL + " ORDER BY d.id")
                if not _decision_chained(row)]

    def _adopt_decisions(self) -> None:
        """Chain the decisions recorded before decisions were chained (schema 3 and older), once, at migration.

        Each gets a ``decide`` record marked ``adopted``, so the trail says it was not chained when it was made.
        """
        from runtime.state import audit

        with self.transaction():
            for row in self._conn.execute("SELECT * FROM gate_decisions WHERE audit_seq IS NULL ORDER BY id"):
                payload = {**_decision_payload(row["gate"], row["model"], row["version"], row["status"],
                                               _load(row["checks"])), "adopted": "schema migration 4"}
                record = audit.append(self, "mlops", DECIDE, payload, at=row["decided_at"])
                self._conn.execute("UPDATE gate_decisions SET audit_seq = ?, audit_hash = ? WHERE id = ?",
                                   (record.seq, record.hash, row["id"]))

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
        except sqlite3.IntegrityError as exc:
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
        return [_approval(row) for row in rows if _chained(row)]

    def unchained_approvals(self) -> list[Approval]:
        """Approval rows without their record in the audit chain: written behind mlops' back, never counted."""
        rows = self._rows(_APPROVALS_SQL + " ORDER BY p.gate, p.model, p.version, p.approver")
        return [_approval(row) for row in rows if not _chained(row)]

    # --- deployments -----------------------------------------------------------------------------

    def set_deployment(self, deployment: DeploymentState) -> None:
        """Create or replace a deployment's desired / live state (and its rollback pin)."""
        self._exec(
            "INSERT INTO deployments (name, model, desired_version, live_version, status, updated_at,"
            " pinned_version, pin_reason) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (name) DO UPDATE SET"
            " model = excluded.model, desired_version = excluded.desired_version,"
            " live_version = excluded.live_version, status = excluded.status, updated_at = excluded.updated_at,"
            " pinned_version = excluded.pinned_version, pin_reason = excluded.pin_reason",
            (deployment.name, deployment.model, deployment.desired_version, deployment.live_version,
             deployment.status, deployment.updated_at or time.time(), deployment.pinned_version,
             deployment.pin_reason))

    def get_deployment(self, name: str) -> DeploymentState | None:
        row = self._row("SELECT * FROM deployments WHERE name = ?", (name,))
        return _deployment(row) if row else None

    def deployments(self) -> list[DeploymentState]:
        return [_deployment(row) for row in self._rows("SELECT * FROM deployments ORDER BY name")]

    # --- hash cache ------------------------------------------------------------------------------


    # --- live operations: monitors, feedback, retrain requests, the reconciler --------------------

    def add_monitor_result(self, result: MonitorResult) -> None:
        self._exec("INSERT INTO monitor_results (monitor, deployment, version, at, breached, checks, actions)"
                   " VALUES (?,?,?,?,?,?,?)",
                   (result.monitor, result.deployment, result.version, result.at, int(result.breached),
                    _dump(result.checks), _dump(result.actions)))

    def monitor_results(self, monitor: str, limit: int = 100) -> list[MonitorResult]:
        """A monitor's results, oldest first (the newest ``limit``)."""
        rows = self.query("SELECT * FROM (SELECT * FROM monitor_results WHERE monitor = ? ORDER BY id DESC LIMIT ?)"
                          " ORDER BY id", (monitor, limit))
        return [MonitorResult(r["monitor"], r["deployment"], r["version"], r["at"], bool(r["breached"]),
                              _load(r["checks"]), _load(r["actions"])) for r in rows]

    def add_feedback(self, labels: list[tuple[str, float]]) -> int:
        """Labels for logged predictions, by prediction id (a later label replaces an earlier one)."""
        now = time.time()
        with self.transaction():
            self._conn.executemany("INSERT OR REPLACE INTO feedback (id, label, at) VALUES (?,?,?)",
                                   [(pid, float(label), now) for pid, label in labels])
        return len(labels)

    def feedback(self, ids: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.query(f"SELECT id, label FROM feedback WHERE id IN ({marks})", chunk):
                out[row["id"]] = row["label"]
        return out

    def request_retrain(self, model: str, reason: str) -> None:
        """Ask for ``model`` to be trained again (once: an open request for it is not repeated)."""
        with self.transaction():
            if not self.query("SELECT 1 FROM retrain_requests WHERE model = ? AND consumed_by IS NULL", (model,)):
                self._exec("INSERT INTO retrain_requests (model, reason, at) VALUES (?,?,?)",
                           (model, reason, time.time()))

    def open_retrain_requests(self) -> list[RetrainRequest]:
        return [RetrainRequest(r["id"], r["model"], r["reason"], r["at"], r["consumed_by"])
                for r in self.query("SELECT * FROM retrain_requests WHERE consumed_by IS NULL ORDER BY id")]

    def consume_retrain_requests(self, model: str, version: int) -> None:
        self._exec("UPDATE retrain_requests SET consumed_by = ? WHERE model = ? AND consumed_by IS NULL",
                   (version, model))

    def reconciler_status(self) -> ReconcilerStatus:
        row = self._row("SELECT * FROM reconciler WHERE id = 1", ())
        if row is None:
            return ReconcilerStatus()
        return ReconcilerStatus(row["commit_id"], row["synced_at"], row["tick_at"], row["error"], row["errors"])

    def set_reconciler_status(self, status: ReconcilerStatus) -> None:
        self._exec("INSERT INTO reconciler (id, commit_id, synced_at, tick_at, error, errors) VALUES (1,?,?,?,?,?)"
                   " ON CONFLICT (id) DO UPDATE SET commit_id = excluded.commit_id, synced_at = excluded.synced_at,"
                   " tick_at = excluded.tick_at, error = excluded.error, errors = excluded.errors",
                   (status.commit, status.synced_at, status.tick_at, status.error, status.errors))
    def cached_hash(self, path: str, size: int, mtime_ns: int, inode: int) -> str | None:
        """The sha256 stored for ``path`` if its size, mtime and inode still match, else ``None``."""
        row = self._row("SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                        (path, size, mtime_ns, inode))
        return str(row[0]) if row else None

    def cached_hashes_under(self, directory: str) -> dict[str, tuple[int, int, int, str]]:
        """Every cached entry below ``directory`` (an absolute path): path -> (size, mtime_ns, inode, sha256)."""
        prefix = directory.rstrip("/") + "/"
        rows = self._rows("SELECT * FROM file_hashes WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0"))
        return {row["path"]: (row["size"], row["mtime_ns"], row["inode"], row["sha256"]) for row in rows}

    def store_hash(self, path: str, size: int, mtime_ns: int, inode: int, sha256: str) -> None:
        self.store_hashes([(path, size, mtime_ns, inode, sha256)])

    def store_hashes(self, entries: Iterable[tuple[str, int, int, int, str]]) -> None:
        """Store many ``(path, size, mtime_ns, inode, sha256)`` entries in one transaction."""
        rows = list(entries)
        if not rows:
            return
        with self.transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, inode, sha256) VALUES (?,?,?,?,?)", rows)


def _naming_the_database(method: Callable[..., T]) -> Callable[..., T]:
    """``method``, with a corrupted record it reads said as a :class:`StateError` naming the database."""
    @functools.wraps(method)
    def wrapper(self: StateStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except CorruptRecord as exc:
            translated = _translated(self.path, exc)
            assert translated is not None
            raise translated from exc
    return wrapper


for _name, _member in list(vars(StateStore).items()):
    if callable(_member) and not _name.startswith("_") and _name != "transaction":
        setattr(StateStore, _name, _naming_the_database(_member))


# --- rows -> records -----------------------------------------------------------------------------

_APPROVALS_SQL = (
    "SELECT p.gate, p.model, p.version, p.approver, p.approved_at, a.seq, a.at, a.actor, a.action, a.git_commit,"
    " a.payload, a.prev_hash, a.hash, (SELECT count FROM audit_head WHERE id = 1) AS head"
    " FROM approvals p LEFT JOIN audit a ON a.seq = p.audit_seq AND a.hash = p.audit_hash")


_DECISIONS_SQL = (
    "SELECT d.id, d.gate, d.model, d.version, d.status, d.checks, d.decided_at, a.seq, a.at, a.actor, a.action,"
    " a.git_commit, a.payload, a.prev_hash, a.hash, (SELECT count FROM audit_head WHERE id = 1) AS head"
    " FROM gate_decisions d LEFT JOIN audit a ON a.seq = d.audit_seq AND a.hash = d.audit_hash")


def _decision_payload(gate: str, model: str, version: int, status: str, checks: Any) -> dict[str, Any]:
    """What a ``decide`` record says: the gate, the version, the status and the hash of the checks."""
    return {"gate": f"gates.{gate}", "model": model, "version": version, "status": status,
            "checks_sha256": hashlib.sha256(canonical_json(checks).encode()).hexdigest()}


def _audited(row: sqlite3.Row, action: str) -> dict[str, Any] | None:
    """The payload of the audit record a row names (seq and hash), when that record is in the anchored chain,
    hashes to its hash and is of ``action``; else ``None``."""
    from runtime.state.audit import record_hash
    from runtime.state.records import AuditRecord

    if row["seq"] is None or row["seq"] > row["head"] or row["action"] != action:
        return None
    try:
        record = AuditRecord(seq=row["seq"], at=row["at"], actor=row["actor"], action=row["action"],
                             commit=row["git_commit"], payload=json.loads(row["payload"]),
                             prev_hash=row["prev_hash"], hash=row["hash"])
    except ValueError:
        return None
    return record.payload if record_hash(record) == record.hash and isinstance(record.payload, dict) else None


def _decision_chained(row: sqlite3.Row) -> bool:
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


def _approval(row: sqlite3.Row) -> Approval:
    return Approval(row["gate"], row["model"], row["version"], row["approver"], row["approved_at"], row["git_commit"])


def _chained(row: sqlite3.Row) -> bool:
    """Whether an approval row's audit record is in the anchored chain and says what the row says."""
    payload = _audited(row, "approve")
    return (payload is not None and row["actor"] == row["approver"]
            and payload == {"gate": f"gates.{row['gate']}", "model": row["model"], "version": row["version"]})


def _node_result(row: sqlite3.Row) -> NodeResult:
    return NodeResult(
        node_id=row["node_id"], address=row["address"], kind=row["kind"], fingerprint=row["fingerprint"],
        config=_load(row["config"]), code_hash=row["code_hash"], data_hash=row["data_hash"],
        upstream=_load(row["upstream"]), status=cast(RunStatus, row["status"]), outputs=_load(row["outputs"]),
        run_id=row["run_id"], finished_at=row["finished_at"])


def _run(row: sqlite3.Row) -> Run:
    return Run(
        run_id=row["run_id"], node_id=row["node_id"], address=row["address"], kind=row["kind"],
        fingerprint=row["fingerprint"], params=_load(row["params"]), status=cast(RunStatus, row["status"]),
        attempt=row["attempt"], started_at=row["started_at"], finished_at=row["finished_at"], host=row["host"],
        pid=row["pid"], device=row["device"], git_commit=row["git_commit"], git_dirty=bool(row["git_dirty"]),
        metrics=_load(row["metrics"]), log_uri=row["log_uri"], error=row["error"])


def _snapshot(row: sqlite3.Row) -> Snapshot:
    return Snapshot(address=row["address"], fingerprint=row["fingerprint"], content_hash=row["content_hash"],
                    artifact_uri=row["artifact_uri"], created_at=row["created_at"])


def _model_version(row: sqlite3.Row) -> ModelVersion:
    return ModelVersion(
        model=row["model"], version=row["version"], fingerprint=row["fingerprint"], artifact_uri=row["artifact_uri"],
        run_id=row["run_id"], metrics=_load(row["metrics"]), params=_load(row["params"]),
        code_hash=row["code_hash"], git_commit=row["git_commit"], data=_load(row["data"]),
        status=cast(VersionStatus, row["status"]), reason=row["reason"], created_at=row["created_at"],
        signature=_load(row["signature"]))


def _gate_decision(row: sqlite3.Row) -> GateDecision:
    return GateDecision(gate=row["gate"], model=row["model"], version=row["version"],
                        status=cast(GateStatus, row["status"]), checks=_load(row["checks"]),
                        decided_at=row["decided_at"])


def _deployment(row: sqlite3.Row) -> DeploymentState:
    return DeploymentState(name=row["name"], model=row["model"], desired_version=row["desired_version"],
                           live_version=row["live_version"], status=row["status"], updated_at=row["updated_at"],
                           pinned_version=row["pinned_version"], pin_reason=row["pin_reason"])
