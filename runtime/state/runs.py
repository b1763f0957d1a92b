"""What ``apply`` ran and made: node results, runs with their metrics, and dataset snapshots (a store mixin)."""

from __future__ import annotations

import time

from runtime.state.access import StateError, StoreAccess
from runtime.state.records import MetricPoint, NodeResult, Run, RunStatus, Snapshot
from runtime.state.rows import dump_json, load_json, metric_point_of, node_result_of, run_of, snapshot_of


class RunRecords(StoreAccess):
    """The ``node_results``, ``runs``, ``metrics`` and ``snapshots`` tables."""

    # --- node results ----------------------------------------------------------------------------

    def record_result(self, result: NodeResult) -> None:
        self._exec(
            "INSERT INTO node_results (node_id, address, kind, fingerprint, config, code_hash, data_hash, upstream,"
            " status, outputs, run_id, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (result.node_id, result.address, result.kind, result.fingerprint, dump_json(result.config),
             result.code_hash, result.data_hash, dump_json(result.upstream), result.status,
             dump_json(result.outputs), result.run_id, result.finished_at or time.time()))

    def latest_result(self, node_id: str, succeeded_only: bool = True) -> NodeResult | None:
        """The newest result of a node: the newest *succeeded* one unless ``succeeded_only`` is false."""
        where = "node_id = ? AND status = 'succeeded'" if succeeded_only else "node_id = ?"
        row = self._row(f"SELECT * FROM node_results WHERE {where} ORDER BY id DESC LIMIT 1", (node_id,))
        return node_result_of(row) if row else None

    def latest_results(self) -> dict[str, NodeResult]:
        """Node id -> its newest succeeded result, for every node that ever succeeded (one query)."""
        rows = self._rows(
            "SELECT r.* FROM node_results r JOIN (SELECT MAX(id) AS id FROM node_results WHERE status = 'succeeded'"
            " GROUP BY node_id) m ON r.id = m.id")
        return {row["node_id"]: node_result_of(row) for row in rows}

    def succeeded_results(self, address: str) -> list[NodeResult]:
        """Every succeeded result of the nodes of one resource (``datasets.features``), oldest first."""
        rows = self._rows("SELECT * FROM node_results WHERE address = ? AND status = 'succeeded' ORDER BY id",
                          (address,))
        return [node_result_of(row) for row in rows]

    def trial_results(self) -> list[NodeResult]:
        """Every result of a training trial that names its run (whatever its status), oldest first."""
        rows = self._rows("SELECT * FROM node_results WHERE kind = 'trial' AND run_id IS NOT NULL ORDER BY id")
        return [node_result_of(row) for row in rows]

    def forget_node(self, node_id: str) -> int:
        """Delete every result of a node (it will be planned as new); returns how many rows went."""
        return self._exec("DELETE FROM node_results WHERE node_id = ?", (node_id,)).rowcount

    # --- runs ------------------------------------------------------------------------------------

    def start_run(self, run: Run) -> None:
        self._exec(
            "INSERT INTO runs (run_id, node_id, address, kind, fingerprint, params, status, attempt, started_at,"
            " finished_at, host, pid, device, git_commit, git_dirty, metrics, log_uri, error)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run.run_id, run.node_id, run.address, run.kind, run.fingerprint, dump_json(run.params), run.status,
             run.attempt, run.started_at or time.time(), run.finished_at, run.host, run.pid, run.device,
             run.git_commit, int(run.git_dirty), dump_json(run.metrics), run.log_uri, run.error))

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
            (status, dump_json(metrics or {}), error, log_uri, finished_at or time.time(), device, started_at, host,
             pid, run_id))
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
                    "INSERT INTO metrics (run_id, name, step, value) VALUES (?,?,?,?) ON CONFLICT (run_id, name, step)"
                    " DO UPDATE SET value = excluded.value",
                    [(run_id, p.name, p.step, p.value) for p in points])
        except self.dialect.integrity_errors as exc:
            raise StateError.of(f"cannot log metrics of unknown run '{run_id}'") from exc

    def get_run(self, run_id: str) -> Run | None:
        row = self._row("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return run_of(row) if row else None

    def list_runs(self, address: str | None = None, limit: int = 100) -> list[Run]:
        """The newest runs first, optionally of one resource address."""
        if address is None:
            rows = self._rows("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._rows("SELECT * FROM runs WHERE address = ? ORDER BY started_at DESC, rowid DESC LIMIT ?",
                              (address, limit))
        return [run_of(row) for row in rows]

    def runs_not_running(self) -> list[Run]:
        """Every run whose status is not ``running`` (finished, or waiting for a worker), oldest first."""
        rows = self._rows("SELECT * FROM runs WHERE status != 'running' ORDER BY started_at, rowid")
        return [run_of(row) for row in rows]

    def unfinished_run_ids(self) -> list[str]:
        """The ids of the runs still ``running`` or ``waiting``."""
        return [str(row[0]) for row in self._rows("SELECT run_id FROM runs WHERE status IN ('running', 'waiting')")]

    def fail_unfinished_runs(self, error: str) -> int:
        """Mark failed, with ``error``, every run still ``running`` or ``waiting``; returns how many. Call it
        holding the apply lock: no other apply is running then, so each such run is the caller's or orphaned."""
        run_ids = self.unfinished_run_ids()
        with self.transaction():
            for run_id in run_ids:
                self.finish_run(run_id, "failed", error=error)
        return len(run_ids)

    def run_ids(self) -> list[str]:
        """Every recorded run id."""
        return [str(row[0]) for row in self._rows("SELECT run_id FROM runs")]

    def run_ids_starting_with(self, prefix: str) -> list[str]:
        """The run ids that begin with ``prefix``, sorted."""
        rows = self._rows("SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id",
                          (len(prefix), prefix))
        return [str(row[0]) for row in rows]

    def has_runs_of(self, address: str) -> bool:
        """Whether any run of the resource ``address`` is recorded."""
        return self._row("SELECT 1 FROM runs WHERE address = ? LIMIT 1", (address,)) is not None

    def run_addresses(self) -> set[str]:
        """The addresses of every resource with a recorded run."""
        return {str(row[0]) for row in self._rows("SELECT DISTINCT address FROM runs")}

    def metric_history(self, run_id: str) -> list[MetricPoint]:
        """Every logged value of a run, by metric name then step."""
        rows = self._rows("SELECT * FROM metrics WHERE run_id = ? ORDER BY name, step", (run_id,))
        return [metric_point_of(row) for row in rows]

    def named_artifacts(self) -> set[str]:
        """Every artifact URI the state refers to: run logs, model versions, snapshots, and the outputs of
        every succeeded node result."""
        named = {row[0] for row in self._rows("SELECT log_uri FROM runs WHERE log_uri IS NOT NULL")}
        named |= {row[0] for row in self._rows("SELECT artifact_uri FROM model_versions")}
        named |= {row[0] for row in self._rows("SELECT artifact_uri FROM snapshots WHERE artifact_uri IS NOT NULL")}
        for (outputs,) in self._rows("SELECT outputs FROM node_results WHERE status = 'succeeded'"):
            named |= {str(value) for key, value in (load_json(outputs) or {}).items() if key in ("artifact", "input")}
        return named

    def run_logs(self) -> list[tuple[str, str]]:
        """(run id, log URI) of every run that stored its log."""
        rows = self._rows("SELECT run_id, log_uri FROM runs WHERE log_uri IS NOT NULL")
        return [(str(row[0]), str(row[1])) for row in rows]

    # --- snapshots -------------------------------------------------------------------------------

    def snapshot_artifacts(self) -> list[tuple[str, str]]:
        """(dataset address, artifact URI) of every recorded snapshot that stored one, oldest first."""
        rows = self._rows("SELECT address, artifact_uri FROM snapshots WHERE artifact_uri IS NOT NULL ORDER BY id")
        return [(str(row[0]), str(row[1])) for row in rows]

    def add_snapshot(self, snapshot: Snapshot) -> None:
        self._exec(
            "INSERT INTO snapshots (address, fingerprint, content_hash, artifact_uri, created_at) VALUES (?,?,?,?,?)",
            (snapshot.address, snapshot.fingerprint, snapshot.content_hash, snapshot.artifact_uri,
             snapshot.created_at or time.time()))

    def latest_snapshot(self, address: str) -> Snapshot | None:
        row = self._row("SELECT * FROM snapshots WHERE address = ? ORDER BY id DESC LIMIT 1", (address,))
        return snapshot_of(row) if row else None

    def snapshots(self, address: str) -> list[Snapshot]:
        """A dataset's snapshots, oldest first."""
        return [snapshot_of(row) for row in self._rows("SELECT * FROM snapshots WHERE address = ? ORDER BY id",
                                                       (address,))]
