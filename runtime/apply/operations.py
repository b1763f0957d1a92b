"""The runtime's library entry points, one per CLI verb: plan, apply, approve.

Each takes a resolved :class:`~compiler.resolve.Project` and returns data; the CLI only renders it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler import build_graph
from compiler.errors import MlopsError
from compiler.graph import Graph
from compiler.resolve import Project
from runtime.apply.executor import RESOURCE_WAIT_S, ApplyResult, Executor, ProgressHook, serving_target
from runtime.apply.gates import may_approve
from runtime.apply.signed_approvals import counted_approvers, how_to_approve, is_signed
from runtime.artifacts.hashing import CachedHasher
from runtime.plan import feasibility, planfile
from runtime.plan.actions import GateView, Plan, make_plan
from runtime.provenance import provenance
from runtime.state import audit
from runtime.state.lock import acquire
from runtime.state.records import Approval, NodeResult
from runtime.state.store import StateStore
from runtime.workspace import Workspace


@contextmanager
def opened(project: Project, check: bool = True) -> Iterator[tuple[Workspace, StateStore]]:
    """The project's workspace and its state store, closed afterwards.

    ``check=False`` opens a state its audit head does not vouch for (see :meth:`StateStore.open`).
    """
    workspace = Workspace.of(project)
    store = StateStore.open(workspace.state_path, check=check)
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
        approvals = len(counted_approvers(project, store, name, int(version)))  # what the gate would count now
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
    recorded = store.latest_results()
    drift = serving_drift(project, graph, store, recorded)
    from runtime.plan import integrity

    broken = integrity.replacements(project, graph, store, recorded, Workspace.of(project).artifact_root)
    forced = {**retrain_requests(project, graph, store), **drift.replace, **broken}
    return graph, make_plan(graph, recorded, gate_views(project, graph, store), targets, forced, drift.update)


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


def serving_drift(project: Project, graph: Graph, store: StateStore,
                  recorded: dict[str, NodeResult]) -> ServingDrift:
    """Realtime deployments whose live state in Ray Serve differs from the record (deleted or changed
    behind the tool's back: ``replace``), that serve an older version than the one the record says
    should be live, or that an interrupted rollout left a staging application for (``update``).
    Serve is asked only when this process can reach it."""
    from runtime.compute import cluster

    realtime = {name for name, d in project.spec.deployments.items() if d.mode == "realtime"}
    if not realtime:
        return ServingDrift({}, {})
    workspace = Workspace.of(project)
    local = cluster.running(workspace.state_path)
    if not _serve_reachable(project, workspace, local):
        # no cluster.address and the local cluster is down: nothing can be serving what was deployed
        return ServingDrift({f"deployments.{name}/deploy": "live state differs: the local Ray cluster is down "
                                                           "(`mlops apply` starts it again)"
                             for name in sorted(realtime)
                             if f"deployments.{name}/deploy" in recorded
                             and (s := store.get_deployment(name)) is not None and s.live_version is not None}, {})
    from runtime.compute import serving

    replace: dict[str, str] = {}
    update: dict[str, str] = {}
    staging = set(serving.staging_applications())
    for name in sorted(realtime):
        node_id = f"deployments.{name}/deploy"
        result = recorded.get(node_id)
        state = store.get_deployment(name)
        if serving.staging_name(name) in staging:
            update[node_id] = (f"an interrupted rollout left the staging application {serving.staging_name(name)}; "
                               "apply removes it")
        if result is None or state is None:
            continue
        live = serving.live(name) if state.live_version is not None else None
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


def _serve_reachable(project: Project, workspace: Workspace, local: Any) -> bool:
    import ray

    from runtime.compute import ray_backend

    if ray.is_initialized():
        return True
    address = project.spec.cluster.address or (local.address if local else None)
    if address is None:
        return False
    ray_backend.connect(address)
    return True


def close_interrupted_runs(store: StateStore) -> int:
    """Mark failed the runs an apply left ``running`` when it died (kill -9, power loss); returns how many.

    Call it holding the apply lock: no other apply is running then, so every ``running`` run is orphaned.
    """
    rows = store.query("SELECT run_id FROM runs WHERE status IN ('running', 'waiting')")
    with store.transaction():
        for row in rows:
            store.finish_run(row[0], "failed", error="interrupted: the apply running it ended before it finished")
    return len(rows)


@dataclass
class ApplyOutcome:
    plan: Plan
    result: ApplyResult
    seconds: float


def apply_project(project: Project, *, plan_path: Path | None = None, targets: list[str] | None = None,
                  parallelism: int = 4, lock_timeout: float = 0.0, progress: ProgressHook | None = None,
                  allow_dirty: bool = True, resource_wait: float = RESOURCE_WAIT_S) -> ApplyOutcome:
    """Lock the state, (re)plan, refuse a stale saved plan, run it on Ray, and audit what happened."""
    started = time.time()
    origin = provenance(project.root)
    if origin.dirty and not allow_dirty:
        from runtime.provenance import changed_paths

        paths = changed_paths(project.root)
        named = f" ({', '.join(paths[:5])}{f' and {len(paths) - 5} more' if len(paths) > 5 else ''})" if paths else ""
        raise MlopsError.one(f"the work tree has uncommitted changes{named}; commit them (or add untracked files "
                             "to .gitignore) or pass --allow-dirty")
    workspace = Workspace.of(project)
    saved = planfile.load(plan_path) if plan_path else None
    with acquire(workspace.state_path, "apply", origin.actor, timeout=lock_timeout), opened(project) as (_, store):
        close_interrupted_runs(store)
        graph, plan = plan_project(project, store, saved.targets if saved else targets)
        if saved is not None and plan_path is not None:
            planfile.check_fresh(saved, plan, plan_path)
        executor = Executor(workspace, store, graph, plan, origin, parallelism, progress, resource_wait)
        result = executor.run()
        audit.append(store, origin.actor, "apply", {
            "spec": str(project.spec_path), "git_dirty": origin.dirty,
            "changes": {c.address: c.action for c in plan.resource_changes if c.action != "no-op"},
            "outcomes": {nid: o.status for nid, o in result.outcomes.items()},
            "gates": {nid: o.message for nid, o in result.outcomes.items() if nid.startswith("gates.")},
        }, origin.commit)
        if project.spec.storage.mlflow:  # mirror runs and model versions; a failure only warns
            from runtime.export.mlflow_mirror import mirror_project

            mirror_project(project, store, workspace.artifact_root)
    return ApplyOutcome(plan, result, time.time() - started)


@dataclass
class ApproveOutcome:
    approval: Approval
    """The approval recorded: this one, or the earlier one when the principal had approved already."""
    new: bool
    """False when the same principal had already approved this version at this gate: nothing was written."""


def approve(project: Project, gate_name: str, version: int, by: str | None = None) -> ApproveOutcome:
    """Record a human approval of ``version`` at ``gate_name``; refuse a principal outside the gate's ``from``
    and a gate with ``approvals.signers`` (it counts signed tags only: :mod:`runtime.apply.signed_approvals`).

    Idempotent per (gate, model, version, principal): approving again writes no approval and no audit record.
    """
    gate = project.spec.gates.get(gate_name)
    if gate is None:
        from compiler.suggest import did_you_mean

        raise MlopsError.one(f"unknown gate '{gate_name}'{did_you_mean(gate_name, project.spec.gates)}")
    if is_signed(gate):
        raise MlopsError.one(f"gates.{gate_name} requires signed approvals: {how_to_approve(gate_name, version)}",
                             project.position(f"gates.{gate_name}", "approvals", "signers"))
    origin = provenance(project.root)
    approver = by or origin.actor
    if not may_approve(gate, approver):
        allowed = ", ".join(gate.approvals.from_) if gate.approvals else ""
        raise MlopsError.one(f"{approver} may not approve gates.{gate_name} (allowed: {allowed})",
                             project.position(f"gates.{gate_name}", "approvals", "from"), f"gates.{gate_name}")
    with opened(project) as (_, store), store.transaction():  # BEGIN IMMEDIATE: check and insert under one lock
        if store.get_model_version(gate.model, version) is None:
            raise MlopsError.one(f"models.{gate.model} has no version {version}", address=f"gates.{gate_name}")
        approval = Approval(gate_name, gate.model, version, approver, time.time())
        if not store.add_approval(approval, origin.commit):  # approved before: the earlier one stands, audited once
            earlier = store.approval(gate_name, gate.model, version, approver)
            assert earlier is not None
            return ApproveOutcome(earlier, new=False)
    return ApproveOutcome(approval, new=True)


@dataclass
class RollbackOutcome:
    deployment: str
    model: str
    from_version: int | None
    to_version: int
    permanent_change: str
    """The spec change that makes the rollback last (GitOps: a pull request that pins the version)."""


def rollback_target(project: Project, store: StateStore, deployment: str, to: int | None) -> int:
    """``to``, or the newest version before the live one that passed every gate in front of the deployment."""
    spec = project.spec.deployments[deployment]
    state = store.get_deployment(deployment)
    current = state.live_version if state else None
    if to is not None:
        if store.get_model_version(spec.model, to) is None:
            raise MlopsError.one(f"models.{spec.model} has no version {to}", address=f"deployments.{deployment}")
        return to
    for version in sorted((v.version for v in store.model_versions(spec.model)), reverse=True):
        if current is not None and version >= current:
            continue
        decisions = [store.latest_gate_decision(g, spec.model, version) for g in spec.gates]
        if all(d is not None and d.status == "passed" for d in decisions):
            return version
    raise MlopsError.one(f"no earlier version of models.{spec.model} passed the gates of deployments.{deployment}",
                         address=f"deployments.{deployment}")


def rollback(project: Project, deployment: str, to: int | None = None, reason: str = "manual rollback",
             store: StateStore | None = None) -> RollbackOutcome:
    """Serve an earlier version now; it stays until a newer version passes the gates or the spec pins one."""
    if deployment not in project.spec.deployments:
        from compiler.suggest import did_you_mean

        raise MlopsError.one(f"unknown deployment '{deployment}'{did_you_mean(deployment, project.spec.deployments)}")
    if store is None:
        with opened(project) as (_, own):
            return rollback(project, deployment, to, reason, own)
    from runtime.apply.executor import deploy_version

    spec = project.spec.deployments[deployment]
    origin = provenance(project.root)
    target = rollback_target(project, store, deployment, to)
    state = store.get_deployment(deployment)
    previous = state.live_version if state else None
    deploy_version(Workspace.of(project), store, deployment, target, pin=(previous, reason))
    audit.append(store, origin.actor, "rollback", {"deployment": f"deployments.{deployment}", "model": spec.model,
                                                   "from": previous, "to": target, "reason": reason}, origin.commit)
    if project.spec.storage.mlflow:  # move the `live` alias in MLflow; a failure only warns
        from runtime.export.mlflow_mirror import mirror_project

        mirror_project(project, store, Workspace.of(project).artifact_root)
    return RollbackOutcome(deployment, spec.model, previous, target,
                           f"set `deployments.{deployment}.version: {target}` in {project.spec_path.name}")
