"""Plan a project: its desired graph against the recorded state and what Ray Serve runs, read once.

The plan carries what it read (:attr:`Plan.recorded`, :attr:`Plan.gates`, :attr:`Plan.serving`), so
apply, status and the reconciler reuse it instead of reading the state and asking Serve again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler import build_graph
from compiler.graph import Graph
from compiler.resolve import Project
from runtime.apply.signed_approvals import counted_approvers
from runtime.artifacts.hashing import CachedHasher
from runtime.compute import connect, serving
from runtime.compute.serving import ServeView
from runtime.errors import PlanError
from runtime.lifecycle import holdings
from runtime.plan import feasibility, integrity
from runtime.plan.actions import GateView, Plan, make_plan
from runtime.state.records import DeploymentState, NodeResult
from runtime.state.store import StateStore
from runtime.workspace import Workspace


def observe_serving(project: Project) -> ServeView:
    """Join the cluster that hosts Serve when one runs (never starting one) and ask Serve once."""
    if not any(d.mode == "realtime" for d in project.spec.deployments.values()):
        return ServeView("unused")
    if connect.join(project, embedded=False) is None:
        return ServeView("down")  # no cluster.address and the local cluster is down: nothing serves
    try:
        return ServeView("reachable", serving.snapshot())
    except Exception as error:  # noqa: BLE001 - a Serve that does not answer: said, and planned against
        return ServeView("reachable", error=(str(error).splitlines() or [type(error).__name__])[0])


def final_node(graph: Graph, model: str) -> str:
    """The node whose success makes a model version: its evaluation, selection or single trial."""
    nodes = graph.by_address(f"models.{model}")
    for kind in ("evaluate", "select", "trial"):
        for node in nodes:
            if node.kind == kind:
                return node.id
    raise KeyError(model)


def gate_views(project: Project, graph: Graph, store: StateStore,
               recorded: dict[str, NodeResult] | None = None) -> dict[str, GateView]:
    """Each gate's latest decision about the model version its model's final node last produced
    (``recorded``: the latest results, when the caller read them already)."""
    recorded = store.latest_results() if recorded is None else recorded
    views = {}
    for name, gate in project.spec.gates.items():
        result = recorded.get(final_node(graph, gate.model))
        version = result.outputs.get("version") if result else None
        if version is None:
            views[f"gates.{name}"] = GateView(None, 0, 0)
            continue
        decision = store.latest_gate_decision(name, gate.model, int(version))
        approvals = len(counted_approvers(project, store, name, int(version)))  # what the gate would count now
        required = gate.approvals.required if gate.approvals else 0
        views[f"gates.{name}"] = GateView(decision, approvals, required)
    return views


def plan_project(project: Project, store: StateStore, targets: list[str] | None = None) -> tuple[Graph, Plan]:
    """The desired graph (data hashed through the state's cache) and the plan against the recorded state
    and what Serve runs; the plan keeps what it read (the latest results, the gates, Serve's view)."""
    feasibility.check_storage(project)
    feasibility.check(project, feasibility.capacity(project))
    unknown = [t for t in targets or [] if t not in project.views and "/" not in t]
    if unknown:
        raise PlanError.one(f"--target {unknown[0]}: no such resource")
    graph = build_graph(project, data_hasher=CachedHasher(store))
    recorded = store.latest_results()
    view = observe_serving(project)
    drift = serving_drift(project, graph, store, recorded, view)
    broken = integrity.replacements(project, graph, store, recorded, Workspace.of(project).artifact_root)
    removed = holdings.replacements(project, graph, store, recorded)  # expired or erased data: said as such
    forced = {**retrain_requests(project, graph, store), **drift.replace, **broken, **removed}
    plan = make_plan(graph, recorded, gate_views(project, graph, store, recorded), targets, forced, drift.update)
    plan.serving = view
    return graph, plan


def retrain_requests(project: Project, graph: Graph, store: StateStore) -> dict[str, str]:
    """Trials of models a monitor asked to retrain: ``monitor breach: monitors.x``."""
    forced = {}
    for request in store.open_retrain_requests():
        for node in graph.by_address(f"models.{request.model}"):
            if node.kind == "trial":
                forced[node.id] = f"monitor breach: {request.reason}"
    return forced


@dataclass(frozen=True)
class ServingDrift:
    """How what Ray Serve runs differs from the record: deploy nodes to run again, and ones to update."""

    replace: dict[str, str]
    update: dict[str, str]


def serving_drift(project: Project, graph: Graph, store: StateStore, recorded: dict[str, NodeResult],
                  view: ServeView) -> ServingDrift:
    """Realtime deployments whose live state in Ray Serve differs from the record (deleted or changed
    behind the tool's back: ``replace``), that serve an older version than the one the record says
    should be live, or that an interrupted rollout left a staging application for (``update``).
    ``view`` is what Serve said (:func:`observe_serving`)."""
    realtime = {name for name, d in project.spec.deployments.items() if d.mode == "realtime"}
    if not realtime or view.reach == "unused":
        return ServingDrift({}, {})
    if view.reach == "down":
        # no cluster.address and the local cluster is down: nothing can be serving what was deployed
        return ServingDrift({f"deployments.{name}/deploy": "live state differs: the local Ray cluster is down "
                                                           "(`mlops apply` starts it again)"
                             for name in sorted(realtime)
                             if f"deployments.{name}/deploy" in recorded
                             and (s := store.get_deployment(name)) is not None and s.live_version is not None}, {})
    if view.snapshot is None:
        raise PlanError.one(f"Ray Serve did not answer: {view.error}")
    replace: dict[str, str] = {}
    update: dict[str, str] = {}
    staging = view.snapshot.staging
    for name in sorted(realtime):
        node_id = f"deployments.{name}/deploy"
        result = recorded.get(node_id)
        state = store.get_deployment(name)
        if serving.staging_name(name) in staging:
            update[node_id] = (f"an interrupted rollout left the staging application {serving.staging_name(name)}; "
                               "apply removes it")
        if result is None or state is None:
            continue
        live = view.snapshot.live.get(name) if state.live_version is not None else None
        if state.live_version is not None and live is None:
            replace[node_id] = f"live state differs: deployments.{name} is not running in Ray Serve"
        elif live is not None and live.version != state.live_version:
            replace[node_id] = (f"live state differs: Ray Serve runs version {live.version} of deployments.{name}, "
                                f"expected {state.live_version}")
        else:
            expected = expected_version(project, graph, store, recorded, name)
            if expected is not None and expected != state.live_version:
                serving_now = f"version {state.live_version} is live" if state.live_version else "nothing is live"
                update[node_id] = f"version {expected} passed its gates; {serving_now}"
    return ServingDrift(replace, update)


def expected_version(project: Project, graph: Graph, store: StateStore, recorded: dict[str, NodeResult],
                     name: str) -> int | None:
    """The version deployment ``name`` should serve by the record: the spec's pin, a rollback's pin while no
    newer version passed the gates, else the model's newest version when it passed every gate in front of
    the deployment (``None`` when it has not, or no version exists)."""
    deployment = project.spec.deployments[name]
    if deployment.version is not None:
        return deployment.version
    result = recorded.get(final_node(graph, deployment.model))
    newest = result.outputs.get("version") if result is not None else None
    if newest is None:
        return None
    target, pin = serving_target(deployment, int(newest), store.get_deployment(name))
    if pin is not None:
        return target
    decisions = [store.latest_gate_decision(gate, deployment.model, int(newest)) for gate in deployment.gates]
    if all(d is not None and d.status == "passed" for d in decisions):
        return int(newest)
    return None


def serving_target(deployment: Any, newest: int, previous: DeploymentState | None
                   ) -> tuple[int, tuple[int | None, str] | None]:
    """The version a deployment serves once ``newest`` passed its gates, and the rollback pin it keeps:
    the spec's pin, else a rollback's pin while no version newer than the one rolled back from passed,
    else ``newest``."""
    if deployment.version is None and previous is not None and previous.pinned_version is not None \
            and newest <= (previous.desired_version or 0):
        return previous.pinned_version, (previous.desired_version, previous.pin_reason or "rollback")
    return deployment.version or newest, None


