"""The verbs that change what runs: apply, approve, rollback, state reset.

Each takes a resolved :class:`~compiler.resolve.Project` and returns data; the CLI only renders it. Apply,
rollback and state reset take the state lock here, in the library (:func:`~runtime.state.lock.exclusive`);
an approval is one atomic transaction instead (see :func:`approve`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compiler.graph import Graph
from compiler.resolve import Project
from compiler.suggest import did_you_mean
from runtime.apply.deploy import deploy_version
from runtime.apply.executor import RESOURCE_WAIT_S, Executor
from runtime.apply.gates import may_approve
from runtime.apply.outcomes import ApplyResult, ProgressHook
from runtime.apply.signed_approvals import how_to_approve, is_signed
from runtime.errors import ApplyError, ApprovalError, DeployError
from runtime.export.mlflow_mirror import mirror_project
from runtime.lifecycle.references import collected_versions
from runtime.plan import planfile
from runtime.plan.actions import Plan
from runtime.plan.project import plan_project
from runtime.provenance import changed_paths, provenance
from runtime.state import audit
from runtime.state.lock import exclusive, held_here
from runtime.state.records import Approval, AuditRecord
from runtime.state.store import StateStore
from runtime.workspace import Workspace


@contextmanager
def opened(project: Project, check: bool = True) -> Iterator[tuple[Workspace, StateStore]]:
    """The project's workspace and its state store, closed afterwards.

    ``check=False`` opens a state its audit head does not vouch for (see :meth:`StateStore.open`).
    """
    workspace = Workspace.of(project)
    store = StateStore.open(workspace.state, check=check)
    try:
        yield workspace, store
    finally:
        store.close()


def close_interrupted_runs(store: StateStore) -> int:
    """Mark failed the runs an apply left ``running`` when it died (kill -9, power loss); returns how many.

    Call it holding the apply lock: no other apply is running then, so every ``running`` run is orphaned.
    """
    return store.fail_unfinished_runs("interrupted: the apply running it ended before it finished")


@dataclass
class ApplyOutcome:
    plan: Plan
    result: ApplyResult
    seconds: float


def apply_project(project: Project, *, plan_path: Path | None = None, targets: list[str] | None = None,
                  parallelism: int = 4, lock_timeout: float = 0.0, progress: ProgressHook | None = None,
                  allow_dirty: bool = True, resource_wait: float = RESOURCE_WAIT_S, store: StateStore | None = None,
                  planned: tuple[Graph, Plan] | None = None) -> ApplyOutcome:
    """Lock the state, (re)plan, refuse a stale saved plan, run it on Ray, and audit what happened.

    ``store`` and ``planned`` are the caller's open store and the plan it made with it while it held the
    state lock (the reconciler's tick): apply reuses them. A plan made without the lock is made again.
    """
    started = time.time()
    origin = provenance(project.root)
    if origin.dirty and not allow_dirty:
        paths = changed_paths(project.root)
        named = f" ({', '.join(paths[:5])}{f' and {len(paths) - 5} more' if len(paths) > 5 else ''})" if paths else ""
        raise ApplyError.one(f"the work tree has uncommitted changes{named}; commit them (or add untracked files "
                             "to .gitignore) or pass --allow-dirty")
    workspace = Workspace.of(project)
    saved = planfile.load(plan_path) if plan_path else None
    reuse = planned is not None and held_here(workspace.state)
    with exclusive(workspace.state, "apply", origin.actor, timeout=lock_timeout), \
            _given_or_opened(project, store) as store:
        close_interrupted_runs(store)
        graph, plan = planned if planned is not None and reuse else \
            plan_project(project, store, saved.targets if saved else targets)
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
            mirror_project(project, store, workspace.artifact_root)
    return ApplyOutcome(plan, result, time.time() - started)


@contextmanager
def _given_or_opened(project: Project, store: StateStore | None) -> Iterator[StateStore]:
    """``store`` as it is (its opener closes it), else the project's store, opened and closed here."""
    if store is not None:
        yield store
        return
    with opened(project) as (_, own):
        yield own


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

    The one writing verb that does not take the apply lock: an approval is one atomic transaction (the
    database's own write lock), and a gate awaiting approval must be approvable while an apply trains for
    hours; the next apply uses it (``tests/test_crash_safety.py``).
    """
    gate = project.spec.gates.get(gate_name)
    if gate is None:
        raise ApprovalError.one(f"unknown gate '{gate_name}'{did_you_mean(gate_name, project.spec.gates)}")
    if is_signed(gate):
        raise ApprovalError.one(f"gates.{gate_name} requires signed approvals: {how_to_approve(gate_name, version)}",
                             project.position(f"gates.{gate_name}", "approvals", "signers"))
    origin = provenance(project.root)
    approver = by or origin.actor
    if not may_approve(gate, approver):
        allowed = ", ".join(gate.approvals.from_) if gate.approvals else ""
        raise ApprovalError.one(f"{approver} may not approve gates.{gate_name} (allowed: {allowed})",
                             project.position(f"gates.{gate_name}", "approvals", "from"), f"gates.{gate_name}")
    with opened(project) as (_, store), store.transaction():  # BEGIN IMMEDIATE: check and insert at once
        if store.get_model_version(gate.model, version) is None:
            raise ApprovalError.one(f"models.{gate.model} has no version {version}", address=f"gates.{gate_name}")
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
    collected = collected_versions(store).get(spec.model, set())
    if to is not None:
        if store.get_model_version(spec.model, to) is None:
            raise DeployError.one(f"models.{spec.model} has no version {to}", address=f"deployments.{deployment}")
        if to in collected:
            raise DeployError.one(f"models.{spec.model} version {to} cannot be served: mlops gc collected its model "
                                  "file", address=f"deployments.{deployment}")
        return to
    for version in sorted((v.version for v in store.model_versions(spec.model)), reverse=True):
        if current is not None and version >= current or version in collected:
            continue
        decisions = [store.latest_gate_decision(g, spec.model, version) for g in spec.gates]
        if all(d is not None and d.status == "passed" for d in decisions):
            return version
    raise DeployError.one(f"no earlier version of models.{spec.model} passed the gates of deployments.{deployment}",
                         address=f"deployments.{deployment}")


def rollback(project: Project, deployment: str, to: int | None = None, reason: str = "manual rollback",
             store: StateStore | None = None, lock_timeout: float = 0.0) -> RollbackOutcome:
    """Serve an earlier version now; it stays until a newer version passes the gates or the spec pins one.

    Takes the state lock (waiting up to ``lock_timeout`` seconds); a monitor's rollback inside a held lock
    (``mlops monitor``, the reconciler's tick) runs under that one.
    """
    if deployment not in project.spec.deployments:
        raise DeployError.one(f"unknown deployment '{deployment}'{did_you_mean(deployment, project.spec.deployments)}")
    origin = provenance(project.root)
    workspace = Workspace.of(project)
    with exclusive(workspace.state, "rollback", origin.actor, timeout=lock_timeout), \
            _given_or_opened(project, store) as store:
        spec = project.spec.deployments[deployment]
        target = rollback_target(project, store, deployment, to)
        state = store.get_deployment(deployment)
        previous = state.live_version if state else None
        deploy_version(workspace, store, deployment, target, pin=(previous, reason))
        audit.append(store, origin.actor, "rollback", {"deployment": f"deployments.{deployment}", "model": spec.model,
                                                       "from": previous, "to": target, "reason": reason}, origin.commit)
        if project.spec.storage.mlflow:  # move the `live` alias in MLflow; a failure only warns
            mirror_project(project, store, workspace.artifact_root)
    return RollbackOutcome(deployment, spec.model, previous, target,
                           f"set `deployments.{deployment}.version: {target}` in {project.spec_path.name}")


def reset_state(project: Project) -> tuple[AuditRecord, tuple[str, int, int]]:
    """Accept the state file as it is now as the one its audit head anchors (``mlops state reset``), under
    the state lock; returns the ``state-reset`` record and the state's identity (lineage, serial, records)."""
    workspace = Workspace.of(project)
    origin = provenance(project.root)
    with exclusive(workspace.state, "state reset", origin.actor), \
            StateStore.open(workspace.state, check=False) as store:
        record = audit.reset(store, origin.actor, origin.commit)
        return record, store.identity()
