"""``mlops status``: per resource, its sync (does the live state match the spec?) and its health.

Sync is the plan's verdict: ``Synced`` when the plan's action for the address is ``no-op``, else
``OutOfSync`` (``Unknown`` when no plan can be made, e.g. an infeasible spec). Health, in Argo CD's words:

- datasets and models: the latest run of each of their current nodes — ``Degraded`` when one failed,
  ``Progressing`` while one runs, ``Healthy`` once the resource has produced something, else ``Missing``;
- gates: the latest decision about the model's newest version — ``Healthy`` passed, ``Degraded`` failed,
  ``Progressing`` awaiting approval, ``Missing`` never decided;
- deployments: what Ray Serve itself says when the cluster is reachable (``Missing`` when Serve has no such
  application); ``Missing`` and ``OutOfSync`` when the embedded default's local cluster is down (nothing can be
  serving); else, when a configured ``cluster.address`` cannot be reached, the state's record;
- monitors: the last result — ``Degraded`` when it breached, ``Progressing`` while every check is skipped
  for lack of data, ``Missing`` when it never ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from compiler import build_graph
from compiler.errors import MlopsError
from compiler.graph import Graph
from compiler.resolve import Project
from runtime.apply.gates import failed_reasons
from runtime.artifacts.hashing import CachedHasher
from runtime.artifacts.store import ArtifactStore
from runtime.compute.serving import Reach, ServeView
from runtime.lifecycle import erasure, retention
from runtime.lifecycle.retention import Expiry
from runtime.lifecycle.sizes import StoreSize, store_size
from runtime.plan.actions import Plan
from runtime.plan.feasibility import asks
from runtime.plan.project import gate_views, observe_serving, plan_project
from runtime.state.records import ErasureRequest, ReconcilerStatus
from runtime.state.store import StateStore
from runtime.workspace import Workspace

Sync = Literal["Synced", "OutOfSync", "Unknown"]
Health = Literal["Healthy", "Progressing", "Degraded", "Missing"]
SECTIONS = ("datasets", "models", "gates", "deployments", "monitors")


@dataclass(frozen=True)
class ResourceStatus:
    address: str
    sync: Sync
    health: Health
    detail: str = ""
    reasons: list[str] = field(default_factory=list)
    """Why it is out of sync (the plan's reasons)."""

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "sync": self.sync, "health": self.health, "detail": self.detail,
                "reasons": self.reasons}


@dataclass(frozen=True)
class ProjectStatus:
    project: str
    resources: list[ResourceStatus]
    reconciler: ReconcilerStatus
    serve: Reach
    plan_error: str | None = None
    history_rewritten: dict[str, Any] | None = None
    """The last force push the reconciler followed: ``{at, branch, from, to}`` (from the audit trail)."""
    store_size: StoreSize | None = None
    """The artifact store's size by kind (when asked for: it lists the whole store)."""
    store_error: str | None = None
    """Why the store's size could not be read."""
    expiring: list[Expiry] = field(default_factory=list)
    """What retention expires next, soonest first (:func:`runtime.lifecycle.retention.upcoming`)."""
    open_erasures: list[tuple[ErasureRequest, list[str]]] = field(default_factory=list)
    """Erasures with a model version in use still trained on their data, with those versions."""

    @property
    def synced(self) -> bool:
        return all(r.sync == "Synced" for r in self.resources)

    @property
    def healthy(self) -> bool:
        return all(r.health == "Healthy" for r in self.resources)

    def to_json(self) -> dict[str, Any]:
        r = self.reconciler
        return {"project": self.project, "synced": self.synced, "healthy": self.healthy,
                "serve": self.serve, "plan_error": self.plan_error,
                "resources": [s.to_json() for s in self.resources],
                "reconciler": {"commit": r.commit, "synced_at": r.synced_at, "tick_at": r.tick_at,
                               "error": r.error, "errors": r.errors,
                               "history_rewritten": self.history_rewritten},
                "artifact_store": self.store_size.to_json() if self.store_size else None,
                "artifact_store_error": self.store_error,
                "retention": {"expiring_next": [e.to_json() for e in self.expiring]},
                "open_erasures": [{"request": r.id, "dataset": r.dataset, "reason": r.reason,
                                   "requested_by": r.requested_by, "requested_at": r.requested_at,
                                   "models_in_use": still} for r, still in self.open_erasures]}


def project_status(project: Project, store: StateStore, planned: tuple[Graph, Plan] | None = None, *,
                   measure_store: bool = False) -> ProjectStatus:
    """Sync and health of every resource in the spec (and of recorded ones the spec no longer has).

    ``planned``: a plan just made with ``store`` (the reconciler's tick), reused with what it read.
    ``measure_store``: also the artifact store's size by kind (:func:`runtime.lifecycle.sizes.store_size`).
    """
    plan_error = None
    plan: Plan | None = None
    try:
        graph, plan = planned or plan_project(project, store)
        changes = {c.address: c for c in plan.resource_changes}
    except MlopsError as error:
        plan_error = "; ".join(d.message for d in error.diagnostics)
        graph, changes = build_graph(project, data_hasher=CachedHasher(store)), {}
    view = plan.serving if plan is not None and plan.serving is not None else _serve_view(project)
    health = _Health(project, store, graph, view, plan)
    addresses = [f"{section}.{name}" for section in SECTIONS for name in getattr(project.spec, section)]
    addresses += [a for a in changes if a not in addresses]
    resources = []
    for address in addresses:
        change = changes.get(address)
        sync: Sync = "Unknown" if plan_error else "Synced" if change is None or change.action == "no-op" \
            else "OutOfSync"
        state, detail = health.of(address)
        reasons = list(change.reasons) if change and change.action != "no-op" else []
        if change is not None and change.action == "delete":
            detail = "not in the spec; apply deletes it"
        resources.append(ResourceStatus(address, sync, state, detail, reasons))
    size, size_error = _store_size(project, store) if measure_store else (None, None)
    return ProjectStatus(project.spec.project, resources, store.reconciler_status(), view.reach, plan_error,
                         _last_rewrite(store), size, size_error, retention.upcoming(project, store),
                         erasure.open_erasures(store))


def _store_size(project: Project, store: StateStore) -> tuple[StoreSize | None, str | None]:
    """The artifact store's size, or why it cannot be read (an unreachable bucket does not fail ``status``)."""
    try:
        return store_size(project, store, ArtifactStore(Workspace.of(project).artifact_root)), None
    except MlopsError as error:
        return None, "; ".join(d.message for d in error.diagnostics)


def _last_rewrite(store: StateStore) -> dict[str, Any] | None:
    from runtime.state import audit

    records = audit.of_actions(store, ["history_rewritten"])
    if not records:
        return None
    last = records[-1]
    return {"at": last.at, "branch": last.payload.get("branch"), "from": last.payload.get("from"),
            "to": last.payload.get("to")}


def _serve_view(project: Project) -> ServeView:
    """Ray Serve seen from here when no plan could be made (an unreachable cluster: ``unreachable``)."""
    try:
        return observe_serving(project)
    except Exception:  # noqa: BLE001 - an unreachable cluster only means health comes from the state
        return ServeView("unreachable")


class _Health:
    def __init__(self, project: Project, store: StateStore, graph: Graph, view: ServeView, plan: Plan | None) -> None:
        self.project, self.store, self.graph, self.view = project, store, graph, view
        self.serve: Reach = view.reach
        self.results = plan.recorded if plan is not None else store.latest_results()
        self.gates = plan.gates if plan is not None else gate_views(project, graph, store, self.results)

    def of(self, address: str) -> tuple[Health, str]:
        section, name = address.split(".", 1)
        if section in ("datasets", "models"):
            return self._produced(address)
        if section == "gates":
            return self._gate(address)
        if section == "deployments":
            return self._deployment(name)
        if section == "monitors":
            return self._monitor(name)
        return "Missing", ""

    def _produced(self, address: str) -> tuple[Health, str]:
        nodes = {n.id for n in self.graph.by_address(address)}
        latest: dict[str, Any] = {}
        for run in self.store.list_runs(address, limit=1000):  # newest first
            if run.node_id in nodes:
                latest.setdefault(run.node_id, run)
        failed = [r for r in latest.values() if r.status == "failed"]
        if failed:
            run = failed[0]
            error = (run.error or "failed").strip().splitlines() or ["failed"]
            return "Degraded", f"run {run.run_id} of {run.node_id} failed: {error[-1]}"
        waiting = [r for r in latest.values() if r.status == "waiting"]
        if waiting:
            return "Progressing", f"{waiting[0].node_id} is waiting for resources: {self._asks(waiting[0].node_id)}"
        if any(r.status == "running" for r in latest.values()):
            return "Progressing", "running"
        produced = [self.results[n] for n in nodes if n in self.results]
        if not produced:
            return "Missing", "never run"
        newest = max(produced, key=lambda r: r.finished_at)
        if "version" in newest.outputs:
            return "Healthy", f"version {newest.outputs['version']}"
        artifact = str(newest.outputs.get("artifact") or "")
        return "Healthy", artifact[:24] + ("…" if len(artifact) > 24 else "")

    def _asks(self, node_id: str) -> str:
        """What a node asks the cluster for."""
        return asks((self.graph.node(node_id).resources or {}) if node_id in self.graph.dag else {})

    def _gate(self, address: str) -> tuple[Health, str]:
        view = self.gates.get(address)
        decision = view.decision if view else None
        if view is None or decision is None:
            return "Missing", "no decision yet"
        if decision.status == "passed":
            return "Healthy", f"version {decision.version} passed"
        if decision.status == "awaiting_approval":
            return "Progressing", (f"version {decision.version} awaiting approval "
                                   f"({view.approvals} of {view.required})")
        failed = failed_reasons(decision.checks)
        return "Degraded", f"version {decision.version} failed: {'; '.join(failed)}"

    def _deployment(self, name: str) -> tuple[Health, str]:
        spec = self.project.spec.deployments.get(name)
        state = self.store.get_deployment(name)
        where = "" if spec is None or spec.mode == "batch" else " (Ray Serve not reachable; from the state)"
        if spec is not None and spec.mode == "realtime" and self.serve == "reachable":
            if self.view.snapshot is None:  # a Serve that did not answer: fall back to the state
                where = f" (Ray Serve did not answer: {self.view.error})"
            else:
                health, detail = _served(self.view.snapshot.live.get(name), state)
                return health, detail + self._url(name, health)
        if state is None or (state.live_version is None and not state.status.startswith("Degraded")):
            return "Missing", "never deployed"
        if self.stopped(f"deployments.{name}"):
            return "Missing", f"version {state.live_version} recorded as live; nothing serves it"
        detail = f"version {state.live_version}{where}{_pin(state)}" if state.live_version is not None \
            else "nothing serves"
        if state.status.startswith("Degraded"):
            return "Degraded", f"{state.status}; {detail}"
        return ("Healthy", detail) if state.status == "Healthy" else ("Progressing", f"{state.status}; {detail}")

    def _url(self, name: str, health: Health) -> str:
        """Where a realtime deployment answers (`` at URL``), from its last successful rollout."""
        if health == "Missing":
            return ""
        result = self.results.get(f"deployments.{name}/deploy")
        url = result.outputs.get("url") if result is not None else None
        return f" at {url}" if url else ""

    def stopped(self, address: str) -> bool:
        """A realtime deployment recorded as live whose local cluster is down."""
        section, name = address.split(".", 1)
        spec = self.project.spec.deployments.get(name) if section == "deployments" else None
        if spec is None or spec.mode != "realtime" or self.serve != "down":
            return False
        state = self.store.get_deployment(name)
        return state is not None and state.live_version is not None

    def _monitor(self, name: str) -> tuple[Health, str]:
        last = self.store.monitor_results(name, limit=1)
        if not last:
            return "Missing", "never run"
        result = last[-1]
        statuses = [c.get("status") for c in result.checks]
        problems = []
        if result.breached:
            breached = [f"{c['type']} ({c['method']})" for c in result.checks if c.get("status") == "breached"]
            problems.append(f"breached: {', '.join(breached)}")
        errors = [f"{c['type']} ({c['method']}): {c.get('reason') or 'no reason recorded'}"
                  for c in result.checks if c.get("status") == "error"]
        if errors:
            problems.append(f"{len(errors)} check(s) could not be evaluated: {'; '.join(errors)}")
        if problems:
            return "Degraded", "; ".join(problems)
        if statuses.count("ok") == 0:
            return "Progressing", ("waiting for data: every check skipped" if statuses
                                   else "no checks to evaluate")
        return "Healthy", f"{statuses.count('ok')} of {len(statuses)} check(s) ok"


def _served(live: Any, state: Any) -> tuple[Health, str]:
    """Health as Ray Serve reports it (``live`` is ``None`` when Serve has no such application), Degraded
    while the state records a rollout that failed and Serve still runs what it ran before."""
    failed = state is not None and state.status.startswith("Degraded")
    if live is None:
        if failed:
            return "Degraded", f"{state.status}; nothing serves"
        return "Missing", "not running in Ray Serve"
    detail = f"Ray Serve: version {live.version}, {live.replicas} replica(s), {live.status}"
    if state is not None and state.live_version not in (None, live.version):
        detail += f" (the state expects version {state.live_version})"
    if failed and live.health == "Healthy":
        return "Degraded", f"{state.status}; {detail}{_pin(state)}"
    return live.health, detail + _pin(state)


def _pin(state: Any) -> str:
    if state is None or state.pinned_version is None:
        return ""
    return f"; rolled back ({state.pin_reason})"
