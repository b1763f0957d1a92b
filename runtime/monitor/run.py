"""Monitors at run time: which are due, evaluating their checks, keeping the result, acting on a breach.

A monitor compares what its deployment is asked and answers (the inference log) with its ``reference``
dataset; what each check reads is gathered by :class:`runtime.monitor.samples.Samples`. A check without
enough data (no traffic yet, no reference snapshot, no labels) is ``skipped`` with the reason; one that
cannot be evaluated (a column missing, a model that does not load) is ``error``. Neither is a breach. On a
breach the ``on_breach`` actions run (:mod:`runtime.monitor.actions`). Every result is kept in the state with
its history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from compiler.resolve import Project
from compiler.spec import AccuracyCheck, DataDriftCheck, PredictionDriftCheck, duration_seconds
from compiler.suggest import did_you_mean
from runtime.errors import MonitorError
from runtime.monitor.actions import act
from runtime.monitor.checks import AnyCheck, evaluate_check
from runtime.monitor.drift import DEFAULT_DRIFT_SHARE, InsufficientDataError, default_threshold
from runtime.monitor.samples import Samples
from runtime.provenance import actor
from runtime.state.lock import exclusive
from runtime.state.records import MonitorResult
from runtime.state.store import StateStore
from runtime.workspace import Workspace

logger = logging.getLogger("mlops.monitor")


# --- scheduling and running -------------------------------------------------------------------------


def due(project: Project, store: StateStore, now: float) -> list[str]:
    """Monitors whose ``schedule`` has elapsed since their last result (or that never ran), in spec order."""
    names = []
    for name, monitor in project.spec.monitors.items():
        last = store.monitor_results(name, limit=1)
        if not last or now - last[-1].at >= duration_seconds(monitor.schedule):
            names.append(name)
    return names


def run_monitors(project: Project, store: StateStore, names: Iterable[str] | None = None,
                 now: float | None = None, force: bool = True, lock_timeout: float = 0.0) -> list[MonitorResult]:
    """Evaluate monitors (all, or ``names``), store each result and act on breaches.

    ``force=False`` runs only the ones :func:`due` at ``now``. An unknown name is a :class:`MonitorError`.
    A breach may roll back or ask for a retrain, so the state lock is held (waiting up to ``lock_timeout``
    seconds; a caller holding it already, the reconciler's tick, keeps its hold).
    """
    at = time.time() if now is None else now
    chosen = list(project.spec.monitors) if names is None else list(dict.fromkeys(names))
    for name in chosen:
        if name not in project.spec.monitors:
            raise MonitorError.one(f"unknown monitor '{name}'{did_you_mean(name, project.spec.monitors)}")
    if not force:
        ready = set(due(project, store, at))
        chosen = [name for name in chosen if name in ready]
    workspace = Workspace.of(project)
    with exclusive(workspace.state, "monitor", actor(project.root), timeout=lock_timeout):
        return [run_monitor(project, workspace, store, name, at) for name in chosen]


def run_monitor(project: Project, workspace: Workspace, store: StateStore, name: str, at: float) -> MonitorResult:
    """Evaluate one monitor now, act on a breach, store and return the result."""
    monitor = project.spec.monitors[name]
    samples = Samples(project, workspace, store, name)
    checks = [evaluate(check, samples) for check in monitor.checks]
    breached = any(c["status"] == "breached" for c in checks)
    result = MonitorResult(name, monitor.deployment, samples.version, at, breached, checks, [])
    if breached:
        result.actions = act(project, store, name, monitor, result)
    store.add_monitor_result(result)
    return result


# --- checks -----------------------------------------------------------------------------------------


def evaluate(check: AnyCheck, samples: Samples) -> dict[str, Any]:
    """One check as a result dict: :meth:`CheckResult.to_json` plus ``status`` (ok, breached, skipped, error)."""
    try:
        if isinstance(check, DataDriftCheck):
            outcome = evaluate_check(check, samples.reference(), samples.current(check.min_requests))
        elif isinstance(check, PredictionDriftCheck):
            outcome = evaluate_check(check, None, None, samples.predictions(check.min_requests),
                                     reference_predictions=samples.reference_predictions())
        elif isinstance(check, AccuracyCheck):
            predictions, labels = samples.labelled()
            outcome = evaluate_check(check, None, None, predictions, labels)
        else:
            outcome = evaluate_check(check, None, None, latencies_ms=samples.latencies())
    except InsufficientDataError as exc:
        return _not_evaluated(check, "skipped", str(exc))
    except Exception as exc:  # noqa: BLE001 - a check that cannot run is reported, never a crash
        logger.warning("monitors.%s: a %s check could not be evaluated: %s", samples.name, check.type, exc)
        return _not_evaluated(check, "error", f"{type(exc).__name__}: {exc}")
    return {**outcome.to_json(), "status": "breached" if outcome.breached else "ok"}


def _not_evaluated(check: AnyCheck, status: str, reason: str) -> dict[str, Any]:
    return {"type": check.type, "method": check_method(check), "score": None, "score_kind": None,
            "threshold": check_threshold(check), "breach_when": None, "breached": False, "detail": {},
            "status": status, "reason": reason}


def check_method(check: AnyCheck) -> str:
    if isinstance(check, DataDriftCheck | PredictionDriftCheck):
        return check.method
    return check.metric if isinstance(check, AccuracyCheck) else "p95"


def check_threshold(check: AnyCheck) -> float:
    """The threshold the check's ``score`` is held to (data drift: the share of drifted columns)."""
    if isinstance(check, DataDriftCheck):
        return DEFAULT_DRIFT_SHARE
    if isinstance(check, PredictionDriftCheck):
        return check.threshold if check.threshold is not None else default_threshold(check.method)
    return check.min if isinstance(check, AccuracyCheck) else check.p95_ms
