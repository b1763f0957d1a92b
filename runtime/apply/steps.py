"""The nodes the driver runs itself, and how every node's outcome is recorded.

Snapshots, selections, gates, deployments and monitors run in the apply process, not on Ray: they read
and write the state, or talk to Serve. :class:`DriverSteps` is mixed into the
:class:`~runtime.apply.executor.Executor`, which owns the attributes declared here.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any

from compiler.errors import MlopsError
from compiler.graph import Graph, Node
from compiler.resolve import Project
from runtime.apply.deploy import deploy_version
from runtime.apply.gates import decide, failed_reasons
from runtime.apply.outcomes import ApplyResult, NodeOutcome, Outcome, ProgressHook
from runtime.apply.signed_approvals import counted_approvers
from runtime.artifacts.store import ArtifactStore
from runtime.errors import ApplyError
from runtime.plan.actions import Plan
from runtime.plan.project import serving_target
from runtime.provenance import Provenance
from runtime.state.records import ModelVersion, NodeResult, Snapshot
from runtime.state.store import StateStore
from runtime.workspace import Workspace


class DriverSteps:
    """Local steps and record keeping of an apply (see :class:`~runtime.apply.executor.Executor`)."""

    workspace: Workspace
    project: Project
    store: StateStore
    graph: Graph
    plan: Plan
    provenance: Provenance
    progress: ProgressHook
    artifacts: ArtifactStore
    outputs: dict[str, dict[str, Any]]
    result: ApplyResult
    _order: dict[str, int]
    _dirty: set[str]
    _pass: list[tuple[int, str]] | None
    _code_package: Callable[[], str]
    """The shipped package of this apply's code (:meth:`~runtime.apply.executor.Executor._code_package`)."""

    def _finish(self, node_id: str, status: Outcome, message: str) -> None:
        self.result.outcomes[node_id] = NodeOutcome(node_id, status, message)
        self.progress(node_id, status, message)
        self._touch(node_id)

    def _touch(self, node_id: str) -> None:
        """A node was submitted or finished: its children are worth looking at again (this pass too)."""
        for child in self.graph.dag.successors(node_id):
            self._dirty.add(child)
            if self._pass is not None:
                heapq.heappush(self._pass, (self._order[child], child))

    def _run_local(self, node: Node) -> None:
        handler: Callable[[Node], dict[str, Any] | None] = getattr(self, f"_local_{node.kind}")
        if node.kind == "deploy":  # a rollout takes a while: show it as running
            self.progress(node.id, "started", "rolling out")
        try:
            outputs = handler(node)
        except MlopsError as error:  # a user-facing failure (a rollout that did not go live): its own words
            self._finish(node.id, "failed", "; ".join(d.message for d in error.diagnostics))
            return
        except Exception as exc:  # noqa: BLE001 - a local step failing is that node's failure
            self._finish(node.id, "failed", f"{type(exc).__name__}: {exc}")
            return
        if outputs is not None:  # None: the handler recorded and finished the node itself
            self._record(node, outputs)

    def _local_snapshot(self, node: Node) -> dict[str, Any]:
        name = node.name
        path = self.project.dataset_path(name)
        uri = self.artifacts.put_dir(path) if path.is_dir() else self.artifacts.put_file(path, sha256=node.data_hash)
        self.store.add_snapshot(Snapshot(node.address, node.fingerprint, node.data_hash or "", uri, time.time()))
        return {"input": uri, "artifact": uri, "content_hash": node.data_hash}

    def _local_select(self, node: Node) -> dict[str, Any]:
        objective = node.config["objective"]
        trials = [(p, self.outputs[p]) for p in self.graph.dag.predecessors(node.id)]
        scored = [(p, o) for p, o in trials if objective["metric"] in o.get("metrics", {})]
        if not scored:
            raise ApplyError.one(f"no trial reported the objective metric {objective['metric']!r}")
        sign = 1 if objective["goal"] == "maximize" else -1
        best_id, best = max(scored, key=lambda item: (sign * item[1]["metrics"][objective["metric"]], item[0]))
        return {**best, "chosen": best_id, "trials": {p: o.get("metrics", {}) for p, o in trials}}

    def _local_trial(self, node: Node) -> None:  # pragma: no cover - trials are remote
        raise AssertionError("trials run on Ray")

    def _local_gate(self, node: Node) -> None:
        """Decide the gate for the model's newest version; records and finishes the node itself."""
        gate_name = node.name
        gate = self.project.spec.gates[gate_name]
        version_output = self.outputs[self._model_final(gate.model)]
        version = int(version_output["version"])
        baseline = self._live_metrics(gate_name, gate.model)
        approvers = counted_approvers(self.project, self.store, gate_name, version, record=True)
        decision = decide(gate_name, gate, version, version_output.get("metrics", {}), baseline, approvers)
        self.store.record_gate_decision(decision, self.provenance.actor, self.provenance.commit)
        if decision.status == "failed":
            reasons = "; ".join(failed_reasons(decision.checks))
            self.store.set_model_version_status(gate.model, version, "rejected", f"gates.{gate_name}: {reasons}")
        elif decision.status == "passed":
            current = self.store.get_model_version(gate.model, version)
            if current is not None and current.status == "candidate":  # a rejection by another gate stands
                self.store.set_model_version_status(gate.model, version, "approved", f"passed gates.{gate_name}")
        outputs = {"status": decision.status, "version": version, "checks": decision.checks}
        self.outputs[node.id] = outputs
        self.store.record_result(self._result(node, outputs))
        if decision.status == "passed":
            self._finish(node.id, "succeeded", f"version {version} passed")
        elif decision.status == "awaiting_approval":
            self._finish(node.id, "blocked", f"awaiting approval: {node.address} (version {version})")
        else:
            reasons = "; ".join(failed_reasons(decision.checks))
            self._finish(node.id, "blocked", f"gate failed: {node.address}: {reasons}")

    def _live_metrics(self, gate_name: str, model: str) -> dict[str, float] | None:
        for name, deployment in self.project.spec.deployments.items():
            if gate_name not in deployment.gates:
                continue
            state = self.store.get_deployment(name)
            version = state and (state.live_version or state.desired_version)
            if version:
                live = self.store.get_model_version(model, version)
                if live is not None:
                    return live.metrics
        return None

    def _local_deploy(self, node: Node) -> dict[str, Any]:
        """Serve the version the spec pins, else a rollback's pin while no newer version passed the gates,
        else the newest version that passed them."""
        name = node.name
        deployment = self.project.spec.deployments[name]
        newest = int(self.outputs[self._model_final(deployment.model)]["version"])
        version, pin = serving_target(deployment, newest, self.store.get_deployment(name))
        return deploy_version(self.workspace, self.store, name, version, pin=pin, graph=self.graph,
                              code_package=self._code_package)

    def _local_monitor(self, node: Node) -> dict[str, Any]:
        return {"deployment": node.config["deployment"]}

    def _model_final(self, model: str) -> str:
        nodes = self.graph.by_address(f"models.{model}")
        for kind in ("evaluate", "select", "trial"):
            for candidate in nodes:
                if candidate.kind == kind:
                    return candidate.id
        raise KeyError(model)

    # --- recording -----------------------------------------------------------------------------

    def _result(self, node: Node, outputs: dict[str, Any]) -> NodeResult:
        upstream = {p: self.graph.node(p).fingerprint for p in self.graph.dag.predecessors(node.id)}
        return NodeResult(node.id, node.address, node.kind, node.fingerprint, node.config, node.code_hash,
                          node.data_hash, upstream, "succeeded", outputs, outputs.get("run_id"), time.time())

    def _record(self, node: Node, outputs: dict[str, Any]) -> None:
        """Record a node's success; the model's final step also creates its next version (one transaction)."""
        if node.address.startswith("models.") and node.id == self._model_final(node.name):
            with self.store.transaction():
                outputs = {**outputs, "version": self._new_version(node, outputs)}
                self.store.record_result(self._result(node, outputs))
        else:
            self.store.record_result(self._result(node, outputs))
        self.outputs[node.id] = outputs
        detail = f"version {outputs['version']}" if "version" in outputs else ""
        if outputs.get("url"):
            detail += f" at {outputs['url']}"
        self._finish(node.id, "succeeded", detail)

    def _new_version(self, node: Node, outputs: dict[str, Any]) -> int:
        name = node.name
        model = self.project.spec.models[name]
        version = self.store.next_model_version(name)
        self.store.consume_retrain_requests(name, version)
        lineage = {}
        for dataset_name in dict.fromkeys(model.data.values()):
            for data_node in self.graph.by_address(f"datasets.{dataset_name}"):
                produced = self.outputs.get(data_node.id, {})
                lineage[f"datasets.{dataset_name}"] = str(produced.get("content_hash") or produced.get("artifact"))
        self.store.add_model_version(ModelVersion(
            name, version, node.fingerprint, outputs["artifact"], outputs.get("train_run_id") or outputs.get("run_id"),
            dict(outputs.get("metrics", {})), dict(outputs.get("params", {})), node.code_hash,
            self.provenance.commit, lineage, "candidate", "", time.time(), outputs.get("signature")))
        return version


