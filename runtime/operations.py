"""The runtime's library entry points, one per CLI verb: plan, apply, approve.

Each takes a resolved :class:`~compiler.resolve.Project` and returns data; the CLI only renders it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compiler import build_graph
from compiler.errors import MlopsError
from compiler.graph import Graph
from compiler.resolve import Project
from runtime import feasibility, planfile
from runtime.apply import ApplyResult, Executor, ProgressHook
from runtime.gates import may_approve
from runtime.hashing import CachedHasher
from runtime.plan import GateView, Plan, make_plan
from runtime.provenance import provenance
from runtime.state import audit
from runtime.state.lock import acquire
from runtime.state.records import Approval
from runtime.state.store import StateStore
from runtime.workspace import Workspace


@contextmanager
def opened(project: Project) -> Iterator[tuple[Workspace, StateStore]]:
    """The project's workspace and its state store, closed afterwards."""
    workspace = Workspace.of(project)
    store = StateStore.open(workspace.state_path)
    try:
        yield workspace, store
    finally:
        store.close()


def final_node(graph: Graph, model: str) -> str:
    """The node whose success makes a model version: its evaluation, selection or single trial."""
    nodes = graph.by_address(f"models.{model}")
    for kind in ("evaluate", "select", "trial"):
        for node in nodes:
            if node.kind == kind:
                return node.id
    raise KeyError(model)


def gate_views(project: Project, graph: Graph, store: StateStore) -> dict[str, GateView]:
    """Each gate's latest decision about the model version its model's final node last produced."""
    recorded = store.latest_results()
    views = {}
    for name, gate in project.spec.gates.items():
        result = recorded.get(final_node(graph, gate.model))
        version = result.outputs.get("version") if result else None
        if version is None:
            views[f"gates.{name}"] = GateView(None, 0, 0)
            continue
        decision = store.latest_gate_decision(name, gate.model, int(version))
        approvals = len({a.approver for a in store.approvals(name, gate.model, int(version))})
        required = gate.approvals.required if gate.approvals else 0
        views[f"gates.{name}"] = GateView(decision, approvals, required)
    return views


def plan_project(project: Project, store: StateStore, targets: list[str] | None = None) -> tuple[Graph, Plan]:
    """The desired graph (data hashed through the state's cache) and the plan against the recorded state."""
    feasibility.check(project, feasibility.capacity(project))
    unknown = [t for t in targets or [] if t not in project.views and "/" not in t]
    if unknown:
        raise MlopsError.one(f"--target {unknown[0]}: no such resource")
    graph = build_graph(project, data_hasher=CachedHasher(store))
    return graph, make_plan(graph, store.latest_results(), gate_views(project, graph, store), targets)


@dataclass
class ApplyOutcome:
    plan: Plan
    result: ApplyResult
    seconds: float


def apply_project(project: Project, *, plan_path: Path | None = None, targets: list[str] | None = None,
                  parallelism: int = 4, lock_timeout: float = 0.0, progress: ProgressHook | None = None,
                  allow_dirty: bool = True) -> ApplyOutcome:
    """Lock the state, (re)plan, refuse a stale saved plan, run it on Ray, and audit what happened."""
    started = time.time()
    origin = provenance(project.root)
    if origin.dirty and not allow_dirty:
        raise MlopsError.one("the work tree has uncommitted changes; commit them or pass --allow-dirty")
    workspace = Workspace.of(project)
    saved = planfile.load(plan_path) if plan_path else None
    with acquire(workspace.state_path, "apply", origin.actor, timeout=lock_timeout), opened(project) as (_, store):
        graph, plan = plan_project(project, store, saved.targets if saved else targets)
        if saved is not None and plan_path is not None:
            planfile.check_fresh(saved, plan, plan_path)
        executor = Executor(workspace, store, graph, plan, origin, parallelism, progress)
        result = executor.run()
        audit.append(store, origin.actor, "apply", {
            "spec": str(project.spec_path), "git_dirty": origin.dirty,
            "changes": {c.address: c.action for c in plan.resource_changes if c.action != "no-op"},
            "outcomes": {nid: o.status for nid, o in result.outcomes.items()},
            "gates": {nid: o.message for nid, o in result.outcomes.items() if nid.startswith("gates.")},
        }, origin.commit)
    return ApplyOutcome(plan, result, time.time() - started)


def approve(project: Project, gate_name: str, version: int, by: str | None = None) -> Approval:
    """Record a human approval of ``version`` at ``gate_name``; refuse a principal outside the gate's ``from``."""
    gate = project.spec.gates.get(gate_name)
    if gate is None:
        from compiler.suggest import did_you_mean

        raise MlopsError.one(f"unknown gate '{gate_name}'{did_you_mean(gate_name, project.spec.gates)}")
    origin = provenance(project.root)
    approver = by or origin.actor
    if not may_approve(gate, approver):
        allowed = ", ".join(gate.approvals.from_) if gate.approvals else ""
        raise MlopsError.one(f"{approver} may not approve gates.{gate_name} (allowed: {allowed})",
                             project.position(f"gates.{gate_name}", "approvals", "from"), f"gates.{gate_name}")
    with opened(project) as (_, store):
        if store.get_model_version(gate.model, version) is None:
            raise MlopsError.one(f"models.{gate.model} has no version {version}", address=f"gates.{gate_name}")
        approval = Approval(gate_name, gate.model, version, approver, time.time())
        with store.transaction():
            store.add_approval(approval)
            audit.append(store, approver, "approve", {"gate": f"gates.{gate_name}", "model": gate.model,
                                                      "version": version}, origin.commit)
    return approval
