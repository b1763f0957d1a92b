"""What the reconciler exports to Prometheus (prometheus_client, on a registry of its own).

Every series carries the ``project`` label. ``mlops_monitor_breach{project, monitor, check}`` is the gauge
the alert rules of ``compiler/terraform/monitoring.py`` fire on (``check`` is the check's index in the monitor)::

    mlops_resource_synced{project,address}            1 when the live state matches the spec, else 0
    mlops_resource_health{project,address,health}     1 for the resource's health (Healthy, Progressing,
                                                      Degraded, Missing), 0 for the others
    mlops_deployment_live_version{project,deployment} the model version a deployment serves
    mlops_apply_duration_seconds{project}             histogram of applies
    mlops_applies_total{project,result}               succeeded | failed
    mlops_reconcile_tick_duration_seconds{project}    histogram of ticks
    mlops_reconcile_last_tick_timestamp_seconds       when the last tick ended
    mlops_reconcile_last_sync_timestamp_seconds       when the last tick without error ended
    mlops_reconcile_tick_errors_total                 ticks that ended in an error
    mlops_reconcile_consecutive_errors                failed ticks since the last good one
    mlops_synced_commit_info{project,commit,repo,branch}  the commit the live state was last synced to
    mlops_monitor_score{project,monitor,check}        a check's last score (NaN when not evaluated)
    mlops_monitor_breach{project,monitor,check}       1 when the check's last evaluation breached, else 0
    mlops_monitor_runs_total{project,monitor,result}  ok | breached | error (a check could not be evaluated)
    mlops_gate_decisions_total{project,gate,status}   passed | failed | awaiting_approval
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest, start_http_server

from runtime.state.records import MonitorResult

HEALTHS = ("Healthy", "Progressing", "Degraded", "Missing")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Metrics:
    """The reconciler's collectors; ``observe_*`` record one step's outcome, :meth:`serve` exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.synced = Gauge("mlops_resource_synced", "1 when the resource's live state matches the spec, else 0",
                            ["project", "address"], registry=r)
        self.health = Gauge("mlops_resource_health", "1 for the resource's current health, 0 for the others",
                            ["project", "address", "health"], registry=r)
        self.live_version = Gauge("mlops_deployment_live_version", "The model version a deployment serves",
                                  ["project", "deployment"], registry=r)
        self.apply_seconds = Histogram("mlops_apply_duration_seconds", "Duration of applies", ["project"],
                                       buckets=DURATION_BUCKETS, registry=r)
        self.applies = Counter("mlops_applies", "Applies by result", ["project", "result"], registry=r)
        self.tick_seconds = Histogram("mlops_reconcile_tick_duration_seconds", "Duration of reconcile ticks",
                                      ["project"], buckets=DURATION_BUCKETS, registry=r)
        self.last_tick = Gauge("mlops_reconcile_last_tick_timestamp_seconds", "When the last tick ended",
                               registry=r)
        self.last_sync = Gauge("mlops_reconcile_last_sync_timestamp_seconds",
                               "When the last tick without an error ended", registry=r)
        self.tick_errors = Counter("mlops_reconcile_tick_errors", "Ticks that ended in an error", registry=r)
        self.consecutive_errors = Gauge("mlops_reconcile_consecutive_errors",
                                        "Failed ticks since the last good one", registry=r)
        self.commit = Info("mlops_synced_commit", "The commit the live state was last synced to",
                           ["project"], registry=r)
        self.monitor_score = Gauge("mlops_monitor_score", "A monitor check's last score (NaN: not evaluated)",
                                   ["project", "monitor", "check"], registry=r)
        self.monitor_breach = Gauge("mlops_monitor_breach", "1 when the check's last evaluation breached, else 0",
                                    ["project", "monitor", "check"], registry=r)
        self.monitor_runs = Counter("mlops_monitor_runs", "Monitor evaluations by result",
                                    ["project", "monitor", "result"], registry=r)
        self.gate_decisions = Counter("mlops_gate_decisions", "Gate decisions by status",
                                      ["project", "gate", "status"], registry=r)
        self._addresses: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    # --- the reconcile loop -------------------------------------------------------------------------

    def observe_tick(self, project: str, seconds: float, at: float, error: bool, consecutive_errors: int) -> None:
        self.tick_seconds.labels(project).observe(seconds)
        self.last_tick.set(at)
        self.consecutive_errors.set(consecutive_errors)
        if error:
            self.tick_errors.inc()
        else:
            self.last_sync.set(at)

    def observe_commit(self, project: str, commit: str | None, repo: str | None, branch: str | None) -> None:
        self.commit.labels(project).info({"commit": commit or "", "repo": repo or "", "branch": branch or ""})

    # --- resources ----------------------------------------------------------------------------------

    def observe_resources(self, project: str, synced: Mapping[str, bool], health: Mapping[str, str]) -> None:
        """Sync and health of every resource; series of resources gone from the spec are removed."""
        with self._lock:
            previous = self._addresses.get(project, set())
            for gone in previous - set(synced):
                with contextlib.suppress(KeyError):
                    self.synced.remove(project, gone)
                    for state in HEALTHS:
                        self.health.remove(project, gone, state)
            for address, ok in synced.items():
                self.synced.labels(project, address).set(1 if ok else 0)
                current = health.get(address, "Healthy")
                for state in HEALTHS:
                    self.health.labels(project, address, state).set(1 if state == current else 0)
            self._addresses[project] = set(synced)

    def observe_live_versions(self, project: str, versions: Mapping[str, int | None]) -> None:
        for deployment, version in versions.items():
            if version is not None:
                self.live_version.labels(project, deployment).set(version)

    # --- apply, gates, monitors ---------------------------------------------------------------------

    def observe_apply(self, project: str, seconds: float, ok: bool) -> None:
        self.apply_seconds.labels(project).observe(seconds)
        self.applies.labels(project, "succeeded" if ok else "failed").inc()

    def observe_gates(self, project: str, decisions: Iterable[tuple[str, str]]) -> None:
        """(gate name, status) of each decision an apply made."""
        for gate, status in decisions:
            self.gate_decisions.labels(project, gate, status).inc()

    def observe_monitors(self, project: str, results: Iterable[MonitorResult]) -> None:
        for result in results:
            errored = any(check.get("status") == "error" for check in result.checks)
            outcome = "breached" if result.breached else "error" if errored else "ok"
            self.monitor_runs.labels(project, result.monitor, outcome).inc()
            for index, check in enumerate(result.checks):
                self.monitor_score.labels(project, result.monitor, str(index)).set(_score(check.get("score")))
                breached = check.get("status") == "breached" or check.get("breached") is True
                self.monitor_breach.labels(project, result.monitor, str(index)).set(1 if breached else 0)

    # --- exposition ---------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition format, as a scrape gets it."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the HTTP server (``shutdown()``)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


def _score(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)
