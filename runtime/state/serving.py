"""What runs live: deployments, monitor results, feedback labels, retrain requests and the reconciler's
status (a store mixin)."""

from __future__ import annotations

import time

from runtime.state.access import StoreAccess
from runtime.state.records import DeploymentState, MonitorResult, ReconcilerStatus, RetrainRequest
from runtime.state.rows import (
    deployment_of,
    dump_json,
    monitor_result_of,
    reconciler_status_of,
    retrain_request_of,
)


class ServingRecords(StoreAccess):
    """The ``deployments``, ``monitor_results``, ``feedback``, ``retrain_requests`` and ``reconciler`` tables."""

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
        return deployment_of(row) if row else None

    def deployments(self) -> list[DeploymentState]:
        return [deployment_of(row) for row in self._rows("SELECT * FROM deployments ORDER BY name")]

    # --- monitors, feedback, retrain requests ----------------------------------------------------

    def add_monitor_result(self, result: MonitorResult) -> None:
        self._exec("INSERT INTO monitor_results (monitor, deployment, version, at, breached, checks, actions)"
                   " VALUES (?,?,?,?,?,?,?)",
                   (result.monitor, result.deployment, result.version, result.at, int(result.breached),
                    dump_json(result.checks), dump_json(result.actions)))

    def monitor_results(self, monitor: str, limit: int = 100) -> list[MonitorResult]:
        """A monitor's results, oldest first (the newest ``limit``)."""
        rows = self._rows("SELECT * FROM (SELECT * FROM monitor_results WHERE monitor = ? ORDER BY id DESC LIMIT ?)"
                          " AS newest ORDER BY id", (monitor, limit))
        return [monitor_result_of(row) for row in rows]

    def add_feedback(self, labels: list[tuple[str, float]]) -> int:
        """Labels for logged predictions, by prediction id (a later label replaces an earlier one)."""
        now = time.time()
        with self.transaction():
            self._conn.executemany("INSERT INTO feedback (id, label, at) VALUES (?,?,?) ON CONFLICT (id)"
                                   " DO UPDATE SET label = excluded.label, at = excluded.at",
                                   [(pid, float(label), now) for pid, label in labels])
        return len(labels)

    def feedback(self, ids: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._rows(f"SELECT id, label FROM feedback WHERE id IN ({marks})", chunk):
                out[row["id"]] = row["label"]
        return out

    def request_retrain(self, model: str, reason: str) -> None:
        """Ask for ``model`` to be trained again (once: an open request for it is not repeated)."""
        with self.transaction():
            if not self._rows("SELECT 1 FROM retrain_requests WHERE model = ? AND consumed_by IS NULL", (model,)):
                self._exec("INSERT INTO retrain_requests (model, reason, at) VALUES (?,?,?)",
                           (model, reason, time.time()))

    def open_retrain_requests(self) -> list[RetrainRequest]:
        return [retrain_request_of(row)
                for row in self._rows("SELECT * FROM retrain_requests WHERE consumed_by IS NULL ORDER BY id")]

    def consume_retrain_requests(self, model: str, version: int) -> None:
        self._exec("UPDATE retrain_requests SET consumed_by = ? WHERE model = ? AND consumed_by IS NULL",
                   (version, model))

    # --- the reconciler --------------------------------------------------------------------------

    def reconciler_status(self) -> ReconcilerStatus:
        row = self._row("SELECT * FROM reconciler WHERE id = 1", ())
        return ReconcilerStatus() if row is None else reconciler_status_of(row)

    def set_reconciler_status(self, status: ReconcilerStatus) -> None:
        self._exec("INSERT INTO reconciler (id, commit_id, synced_at, tick_at, error, errors) VALUES (1,?,?,?,?,?)"
                   " ON CONFLICT (id) DO UPDATE SET commit_id = excluded.commit_id, synced_at = excluded.synced_at,"
                   " tick_at = excluded.tick_at, error = excluded.error, errors = excluded.errors",
                   (status.commit, status.synced_at, status.tick_at, status.error, status.errors))
