"""The GitOps loop (``mlops reconcile``): level-triggered and idempotent, in controller-runtime's style.

One :meth:`Reconciler.tick` reads everything fresh and converges once:

1. **sync**: with a repository, fetch it into a local clone (pygit2, in a child process killed at the
   fetch timeout; branches the remote deleted are pruned, a repository over the size cap is refused) and
   hard-reset a detached work tree to ``origin/BRANCH``; a branch deleted on the remote is the tick's
   error, a force push (the tip does not descend from the commit checked out before) is followed,
   reported and audited (``history_rewritten``); without a repository, the spec as it is on disk;
2. **compile**: load, resolve and check the policies; an error is logged and recorded and the tick ends
   there: nothing is undeployed, what runs keeps running;
3. **expire** the data past its retention (:mod:`runtime.lifecycle.retention`), then **plan** against the
   recorded state and the live one (Ray Serve);
4. **apply**, only when the plan has work (something to create, replace, update or delete);
5. **monitor**: run the monitors that are due (a breach may ask for a retrain: the next tick comes at once;
   a check that could not be evaluated is the tick's error);
6. **record**: the reconciler status in the state store (last synced commit, time, error, error count)
   and the Prometheus metrics (:mod:`runtime.reconcile.metrics`).

:meth:`Reconciler.run` ticks every ``interval``; a failed tick is retried after an exponential backoff
(1 s, 2 s, 4 s ... up to a cap) and never ends the loop. Setting :attr:`Reconciler.stop` (SIGTERM and
SIGINT do) ends the loop between two steps: an apply in progress finishes first.

The reconciler keeps one Ray connection for its life: ``cluster.address`` when the spec names one, else
the project's local cluster (``mlops up``; started when realtime deployments need it), else an embedded
Ray; a process already connected keeps its connection.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from compiler import check_policies, load_project
from compiler.errors import Diagnostic, MlopsError
from compiler.graph import Graph
from compiler.resolve import Project
from runtime.apply.operations import ApplyOutcome, apply_project
from runtime.artifacts.store import ArtifactStore
from runtime.compute import connect, ray_backend
from runtime.errors import ReconcileError
from runtime.lifecycle import erasure, retention
from runtime.monitor import run as monitoring
from runtime.monitor.results import check_errors
from runtime.plan.actions import Plan
from runtime.plan.project import plan_project
from runtime.provenance import actor, git_state
from runtime.reconcile import gitsync
from runtime.reconcile.metrics import Metrics
from runtime.reconcile.source import Source, sync_branch
from runtime.state import audit
from runtime.state.lock import exclusive
from runtime.state.records import MonitorResult, ReconcilerStatus
from runtime.state.store import StateStore
from runtime.views.status import project_status
from runtime.workspace import Workspace

logger = logging.getLogger("mlops.reconcile")

HISTORY_REWRITTEN = "history_rewritten"
"""The audit action of a force push the reconciler followed: payload ``{repo, branch, from, to}``."""
WORK_ACTIONS = ("create", "replace", "update", "delete")
"""Plan actions that make apply do something (``blocked`` and ``no-op`` do not)."""


# --- where the desired state comes from ---------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff of failed ticks: ``base * 2 ** (failures - 1)`` seconds, at most ``cap``."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.base * 2 ** max(0, failures - 1)))


@dataclass
class TickResult:
    """What one tick saw and did."""

    at: float
    commit: str | None = None
    plan: Plan | None = None
    applied: ApplyOutcome | None = None
    monitors: list[MonitorResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    stopped: bool = False
    """The stop event ended the tick between two steps."""
    requeue: bool = False
    """A monitor asked for work (a retrain): the next tick should come at once."""
    rewritten: tuple[str, str] | None = None
    """The branch's history was rewritten (a force push): the commit it was at, and the one followed now."""
    notes: list[str] = field(default_factory=list)
    """What the tick reports besides an error (a rewritten history)."""
    expired: list[str] = field(default_factory=list)
    """The data items retention expired this tick (:func:`runtime.lifecycle.retention.expire_due`)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        changes = {c.address: {"action": c.action, "reasons": c.reasons}
                   for c in (self.plan.resource_changes if self.plan else []) if c.action != "no-op"}
        applied = None
        if self.applied is not None:
            applied = {"ok": self.applied.result.ok, "seconds": self.applied.seconds,
                       "outcomes": {nid: {"status": o.status, "message": o.message}
                                    for nid, o in self.applied.result.outcomes.items()}}
        return {"at": self.at, "commit": self.commit, "ok": self.ok, "error": self.error, "seconds": self.seconds,
                "stopped": self.stopped, "requeue": self.requeue, "notes": self.notes, "expired": self.expired,
                "history_rewritten": {"from": self.rewritten[0], "to": self.rewritten[1]} if self.rewritten else None,
                "changes": changes, "applied": applied,
                "monitors": [{"monitor": m.monitor, "version": m.version, "breached": m.breached,
                              "actions": m.actions} for m in self.monitors]}


class Reconciler:
    """Converges the live state on :class:`Source`, one :meth:`tick` at a time, or forever with :meth:`run`."""

    def __init__(self, source: Source, *, metrics: Metrics | None = None, parallelism: int = 4,
                 lock_timeout: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.metrics = metrics or Metrics()
        self.parallelism = parallelism
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.stop = threading.Event()
        self.failures = 0
        """Failed ticks in a row (drives the backoff)."""
        self.last_good: Project | None = None
        """The last project that compiled: where errors are recorded while the spec does not."""
        self._trap_signals = False

    # --- the loop ----------------------------------------------------------------------------------

    def run(self, interval: float, backoff: Backoff | None = None, *, wait: Callable[[float], bool] | None = None,
            on_tick: Callable[[TickResult], None] | None = None, handle_signals: bool = False) -> None:
        """Tick until :attr:`stop` is set: every ``interval`` seconds, at once on a requeue, after
        ``backoff`` on an error. ``wait(seconds)`` sleeps and says whether to stop (default: the stop
        event's ``wait``). ``handle_signals`` makes SIGTERM and SIGINT set the stop event."""
        backoff = backoff or Backoff()
        sleep = wait or self.stop.wait
        if handle_signals:
            self.handle_signals()
        logger.info("reconciling %s every %.0fs", self._describe_source(), interval)
        while not self.stop.is_set():
            result = self.tick()
            if on_tick is not None:
                on_tick(result)
            if self.stop.is_set():
                break
            if result.error is not None:
                delay = backoff.delay(self.failures)
                logger.warning("tick failed (%d in a row); next try in %.0fs", self.failures, delay)
            else:
                delay = 0.0 if result.requeue else interval
            if delay > 0 and sleep(delay):
                break
        logger.info("reconcile loop stopped")

    def handle_signals(self) -> None:
        """Make SIGTERM and SIGINT set :attr:`stop` (main thread only; kept across Ray's ``init``)."""
        self._trap_signals = True
        self._install_signal_handlers()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, mid-step
        logger.info("%s received: stopping after the current step", signal.Signals(signum).name)
        self.stop.set()

    def _describe_source(self) -> str:
        if self.source.repo:
            return f"{self.source.spec} on {self.source.branch} of {self.source.repo}"
        return str(self.source.spec)

    # --- one tick ----------------------------------------------------------------------------------

    def tick(self) -> TickResult:
        """Sync, compile, plan, apply when needed, run due monitors, record. Never raises."""
        started = time.perf_counter()
        result = TickResult(self.clock())
        project: Project | None = None
        try:
            result.commit = self._sync(result)
            if not self._stopping(result, "compile"):
                project = self._compile()
                self.last_good = project
                if not self.source.repo:
                    result.commit = git_state(project.root)[0]
        except gitsync.FetchStopped:
            logger.info("stopping during the fetch")
            result.stopped = True
        except MlopsError as error:
            result.error = error.render()
        except Exception as error:  # noqa: BLE001 - a failed tick is reported and retried, never fatal
            logger.exception("tick failed")
            result.error = f"{type(error).__name__}: {error}"
        store = self._converge(project, result) if project is not None else None
        result.seconds = time.perf_counter() - started
        try:
            self._record(project, result, store)
        finally:
            if store is not None:
                store.close()
        return result

    def _stopping(self, result: TickResult, step: str) -> bool:
        if self.stop.is_set() and not result.stopped:
            logger.info("stopping before %s", step)
            result.stopped = True
        return result.stopped

    def _sync(self, result: TickResult) -> str | None:
        """The commit to converge on (a work tree on disk: its HEAD, known once it compiled). A rewritten
        history is followed (as Argo CD does: the branch is the desired state), and reported."""
        source = self.source
        if not source.repo:
            return None
        synced = sync_branch(source.repo, source.branch, source.checkout_dir(), timeout=source.fetch_timeout,
                             max_bytes=source.max_repo_bytes, stopping=self.stop.is_set)
        if synced.rewritten and synced.previous is not None:
            result.rewritten = (synced.previous, synced.commit)
            note = (f"history of {source.branch} rewritten: {synced.commit[:12]} does not descend from "
                    f"{synced.previous[:12]}; following it")
            result.notes.append(note)
            logger.warning("%s", note)
        return synced.commit

    def _compile(self) -> Project:
        display = str(self.source.spec) if self.source.repo else None
        project = load_project(self.source.spec_path(), display)
        report = check_policies(project)
        if not report.ok:
            diagnostics = [Diagnostic(f"{r.policy.id} {r.message}", r.position, r.address) for r in report.errors]
            diagnostics += [d for d in report.waiver_problems if d.severity == "error"]
            raise ReconcileError(diagnostics)
        return project

    def _converge(self, project: Project, result: TickResult) -> StateStore | None:
        """Under the state lock and with one open store: plan, apply when there is work, run the due
        monitors (also after a failed apply: they watch what is live), and observe sync and health.
        Returns the store, still open, for :meth:`_record` (``None`` when it could not be opened)."""
        workspace = Workspace.of(project)
        try:
            store = StateStore.open(workspace.state)
        except Exception as error:  # noqa: BLE001 - reported as the tick's error; the loop goes on
            result.error = error.render() if isinstance(error, MlopsError) else f"{type(error).__name__}: {error}"
            return None
        try:
            with exclusive(workspace.state, "reconcile", actor(project.root), timeout=self.lock_timeout):
                self._connect(project)  # after the lock: a refused tick starts no cluster
                self._under_lock(project, store, result)
        except MlopsError as error:
            result.error = result.error or error.render()
        except Exception as error:  # noqa: BLE001
            logger.exception("plan or apply failed")
            result.error = result.error or f"{type(error).__name__}: {error}"
        if result.error is None:
            self.metrics.observe_commit(project.spec.project, result.commit, self.source.repo,
                                        self.source.branch if self.source.repo else None)
        return store

    def _under_lock(self, project: Project, store: StateStore, result: TickResult) -> None:
        planned: tuple[Graph, Plan] | None = None
        try:
            self._expire(project, store, result)
            planned = plan_project(project, store)
            result.plan = planned[1]
            if not self._stopping(result, "apply") and has_work(planned[1]):
                self._apply(project, store, planned, result)
                planned = None  # the state changed: status plans again
        except MlopsError as error:
            result.error = error.render()
        except Exception as error:  # noqa: BLE001
            logger.exception("plan or apply failed")
            result.error = f"{type(error).__name__}: {error}"
        if self._stopping(result, "the monitors"):
            return
        try:
            erasure.settle(store)
            self._monitor(project, store, result)
            self._observe_state(project, store, result, planned)
        except Exception as error:  # noqa: BLE001
            logger.exception("monitors failed")
            result.error = result.error or f"{type(error).__name__}: {error}"

    def _expire(self, project: Project, store: StateStore, result: TickResult) -> None:
        """Expire the data past its retention (at the tick's clock) before planning: the plan takes it again."""
        expired = retention.expire_due(project, store, ArtifactStore(Workspace.of(project).artifact_root),
                                       now=self.clock(), actor=actor(project.root))
        result.expired = [f"{e.address} {e.item.item_kind} {e.item.content_hash[:12]} ({e.reason})" for e in expired]
        for line in result.expired:
            logger.info("expired %s", line)

    def _apply(self, project: Project, store: StateStore, planned: tuple[Graph, Plan], result: TickResult) -> None:
        name = project.spec.project
        started = time.time()
        outcome = apply_project(project, parallelism=self.parallelism, lock_timeout=self.lock_timeout,
                                progress=_log_progress, allow_dirty=True, store=store, planned=planned)
        result.applied = outcome
        self.metrics.observe_apply(name, outcome.seconds, outcome.result.ok)
        decisions = []
        for gate_name, gate in project.spec.gates.items():
            decision = store.latest_gate_decision(gate_name, gate.model)
            if decision is not None and decision.decided_at >= started:
                decisions.append((gate_name, decision.status))
        self.metrics.observe_gates(name, decisions)
        failed = {nid: o.message for nid, o in outcome.result.outcomes.items() if o.status == "failed"}
        if failed:
            result.error = "apply failed: " + "; ".join(f"{nid}: {message}" for nid, message in failed.items())
        logger.info("applied in %.1fs: %d succeeded, %d failed, %d skipped, %d blocked", outcome.seconds,
                    outcome.result.count("succeeded"), outcome.result.count("failed"),
                    outcome.result.count("skipped"), outcome.result.count("blocked"))

    def _monitor(self, project: Project, store: StateStore, result: TickResult) -> None:
        if not project.spec.monitors:
            return
        now = self.clock()
        names = monitoring.due(project, store, now)
        if not names:
            return
        before = {r.id for r in store.open_retrain_requests()}
        result.monitors = monitoring.run_monitors(project, store, names, now=now)
        result.requeue = bool({r.id for r in store.open_retrain_requests()} - before)
        self.metrics.observe_monitors(project.spec.project, result.monitors)
        for monitor in result.monitors:
            if monitor.breached:
                logger.warning("monitors.%s breached: %s", monitor.monitor, ", ".join(monitor.actions) or "no action")
        errors = [line for monitor in result.monitors for line in check_errors(monitor)]
        if errors:  # a check that cannot run is the tick's error (an apply's failure, if any, is named first)
            result.error = "; ".join([*([result.error] if result.error else []), *errors])

    def _observe_state(self, project: Project, store: StateStore, result: TickResult,
                       planned: tuple[Graph, Plan] | None) -> None:
        """Sync and health per resource as ``mlops status`` reports them (after an apply: what is true now;
        else from this tick's plan)."""
        if result.plan is None:
            return
        status = project_status(project, store, planned)
        synced = {r.address: r.sync == "Synced" for r in status.resources}
        self.metrics.observe_resources(project.spec.project, synced, {r.address: r.health for r in status.resources})
        self.metrics.observe_live_versions(project.spec.project,
                                           {d.name: d.live_version for d in store.deployments()})

    def _connect(self, project: Project) -> None:
        """Join the project's Ray cluster once (:mod:`runtime.compute.connect`); a process already connected
        keeps its connection. Realtime deployments need the long-lived local cluster: it is started."""
        if not needs_ray(project) or ray_backend.connected():
            return
        choice = connect.join(project, start_local=any(d.mode == "realtime"
                                                       for d in project.spec.deployments.values()))
        logger.info("connected to Ray at %s", choice.where if choice else "an embedded local cluster")
        if self._trap_signals:  # ray.init replaced the SIGTERM handler with its own
            self._install_signal_handlers()

    # --- recording ---------------------------------------------------------------------------------

    def _record(self, project: Project | None, result: TickResult, store: StateStore | None) -> None:
        self.failures = self.failures + 1 if result.error else 0
        target = project or self.last_good
        label = target.spec.project if target else "unknown"
        now = self.clock()
        self.metrics.observe_tick(label, result.seconds, now, result.error is not None, self.failures)
        if result.error:
            logger.error("tick failed: %s", result.error)
        elif result.stopped:
            logger.info("tick stopped early")
        else:
            logger.info("synced %s in %.2fs%s", result.commit[:12] if result.commit else "the work tree",
                        result.seconds, "" if result.applied else " (no changes)")
        try:
            own = None if store is not None else self._status_store(target)
            writing = store or own
            if writing is None:
                return
            try:
                if result.rewritten is not None:
                    self._audit_rewrite(writing, result.rewritten)
                previous = writing.reconciler_status()
                synced = result.error is None and not result.stopped
                writing.set_reconciler_status(ReconcilerStatus(
                    commit=result.commit if synced else previous.commit,
                    synced_at=now if synced else previous.synced_at,
                    tick_at=now, error=result.error,
                    errors=previous.errors + 1 if result.error else 0))
            finally:
                if own is not None:
                    own.close()
        except Exception:  # noqa: BLE001 - a status that cannot be written must not end the loop
            logger.exception("could not record the reconciler status")

    def _audit_rewrite(self, store: StateStore, rewritten: tuple[str, str]) -> None:
        old, new = rewritten
        audit.append(store, actor(self.source.checkout_dir()), HISTORY_REWRITTEN,
                     {"repo": self.source.repo, "branch": self.source.branch, "from": old, "to": new}, new)

    def _status_store(self, project: Project | None) -> StateStore | None:
        """The state of the last project that compiled; before any did, the default state next to the
        spec when it exists (a reconciler restarted on a broken commit)."""
        path: Path | str
        if project is not None:
            path = Workspace.of(project).state
        else:
            path = self.source.spec_path().resolve().parent / ".mlops" / "state.db"
            if not path.exists():
                return None
        return StateStore.open(path)


def has_work(plan: Plan) -> bool:
    """Whether applying ``plan`` would do anything (a blocked gate alone is not work)."""
    return any(change.action in WORK_ACTIONS for change in plan.node_changes)


def needs_ray(project: Project) -> bool:
    """Whether anything of the project runs on Ray: transforms, trainings, deployments."""
    spec = project.spec
    return bool(spec.models or spec.deployments or any(d.transform for d in spec.datasets.values()))


def _log_progress(node_id: str, event: str, detail: str) -> None:
    log = logger.warning if event in ("failed", "retry") else logger.info
    log("%s %s%s", node_id, event, f": {detail}" if detail else "")
