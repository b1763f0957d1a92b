"""Apply: run a plan's nodes on Ray, record every result, and leave an audit record.

The loop is DVC's reproduce shape on Ray: walk the plan in topological order, submit each ready
node (at most ``parallelism`` at a time), retry failures with backoff, skip everything downstream
of a node that finally failed, keep going with the rest, and record each success the moment its
outputs are stored, so an interrupted apply never redoes finished work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from compiler.errors import MlopsError
from compiler.graph import Graph, Node
from compiler.spec import memory_bytes
from runtime.apply.gates import decide, failed_reasons
from runtime.apply.signed_approvals import counted_approvers
from runtime.artifacts.store import ArtifactStore
from runtime.compute import ray_backend
from runtime.compute.worker import TaskSpec
from runtime.plan.actions import Plan
from runtime.plan.feasibility import local_cluster_cpus
from runtime.provenance import Provenance
from runtime.state.records import DeploymentState, MetricPoint, ModelVersion, NodeResult, Run, Snapshot
from runtime.state.store import StateStore
from runtime.workspace import Workspace

Outcome = Literal["succeeded", "failed", "skipped", "blocked"]
REMOTE_KINDS = {"transform", "trial", "evaluate"}
BACKOFF_SECONDS = 0.5


@dataclass
class NodeOutcome:
    node_id: str
    status: Outcome
    message: str = ""


@dataclass
class ApplyResult:
    outcomes: dict[str, NodeOutcome] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.status in ("succeeded", "blocked") for o in self.outcomes.values())

    def count(self, status: Outcome) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)


ProgressHook = Callable[[str, str, str], None]
"""(node id, event, detail): events are ``started`` (submitted), ``waiting`` (not started: what it waits for),
``running`` (started after a wait), ``succeeded``, ``failed``, ``retry``, ``skipped``, ``blocked``."""
RESOURCE_WAIT_S = 120.0
"""How long an apply lets its submitted tasks wait for resources while none of them runs before it gives up."""
WAIT_NOTICE_S = 2.0
"""A submitted task that has not started after this long is reported as waiting (and what for)."""
WATCH_EVERY_S = 1.0


@dataclass
class _Attempt:
    node: Node
    attempt: int
    run: Run
    started: float
    ref: Any
    chained: bool = False
    """Submitted behind running upstream tasks: its run is recorded when it reports back."""
    upstream: tuple[Any, ...] = ()
    """The refs of the running upstream tasks a chained attempt waits for."""
    limit: float | None = None
    """Seconds it may run before it is cancelled (``None``: no timeout), counted from its start."""
    running_since: float | None = None
    """When its worker started it (``None`` until the driver has seen that)."""
    eligible_since: float | None = None
    """Since when it could start: its submission, or for a chained one the end of its upstream tasks."""
    waiting: bool = False
    """Reported as waiting for resources."""


class Executor:
    """Runs one plan against one workspace; construct, then :meth:`run`."""

    def __init__(self, workspace: Workspace, store: StateStore, graph: Graph, plan: Plan,
                 provenance: Provenance, parallelism: int = 4, progress: ProgressHook | None = None,
                 resource_wait: float = RESOURCE_WAIT_S) -> None:
        self.workspace = workspace
        self.resource_wait = resource_wait
        self._starts = f"{ray_backend.STARTED_PREFIX}{uuid.uuid4().hex}/"
        """Where this apply's tasks report their start (Ray's key-value store)."""
        self._watched = 0.0
        self._moved = time.time()
        """The last time one of this apply's tasks was seen running or finished."""
        self.project = workspace.project
        self.store = store
        self.graph = graph
        self.plan = plan
        self.provenance = provenance
        self.parallelism = max(1, parallelism)
        self.progress = progress or (lambda node_id, event, detail: None)
        self.artifacts = ArtifactStore(workspace.artifact_root)
        self.recorded = store.latest_results()
        self.outputs: dict[str, dict[str, Any]] = {nid: r.outputs for nid, r in self.recorded.items()}
        self.result = ApplyResult()
        self._order = {node.id: index for index, node in enumerate(graph.nodes())}
        self.changes = {c.node_id: c for c in plan.node_changes}
        self._dirty: set[str] = set()
        """Nodes to look at in the next scheduling pass."""
        self._pass: list[tuple[int, str]] | None = None
        """The pass under way: (graph order, node id), a heap."""
        self._running: dict[str, _Attempt] = {}
        """Node id -> its attempt running on Ray."""

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> ApplyResult:
        for change in self.plan.node_changes:
            if change.action == "delete":
                self.store.forget_node(change.node_id)
                self._finish(change.node_id, "succeeded", "deleted")
            elif change.action == "blocked":
                self._finish(change.node_id, "blocked", "; ".join(change.reasons))
        todo = [c for c in self.plan.runnable()]
        waiting: list[tuple[float, Node, int]] = []  # (not before, node, attempt) for retries
        in_flight: dict[Any, _Attempt] = {}  # by ref; self._running has the same attempts by node
        remaining = {c.node_id for c in todo}
        if not ray_backend.connected() and any(self.graph.node(c.node_id).kind in REMOTE_KINDS for c in todo):
            ray_backend.connect(self._cluster_address())  # a process already on Ray (tests, the reconciler) stays
        self._dirty = set(remaining)
        wanting: list[tuple[int, str]] = []  # (graph order, node): ready for a slot while all were taken
        while remaining:
            progressed = False
            active = set(self._running) | {w[1].id for w in waiting}
            # Only nodes whose upstream moved since they were last looked at (a parent was submitted or
            # finished; children touched during the pass join it, they come later), then, while slots are
            # free, the nodes that wanted one, in order. No pass looks at every node again.
            self._pass = [(self._order[n], n) for n in self._dirty & remaining]
            heapq.heapify(self._pass)
            self._dirty.clear()
            looked: set[str] = set()
            while True:
                free = len(in_flight) < self.parallelism
                if wanting and free and (not self._pass or wanting[0] < self._pass[0]):
                    _, node_id = heapq.heappop(wanting)
                elif self._pass:
                    _, node_id = heapq.heappop(self._pass)
                else:
                    break
                if node_id in looked or node_id not in remaining or node_id in active:
                    continue
                looked.add(node_id)
                state = self._upstream_state(node_id)
                node = self.graph.node(node_id)
                needs_slot = (state == "wait" and node.kind == "transform") or (state == "ready"
                                                                                  and node.kind in REMOTE_KINDS)
                if needs_slot and not free:
                    heapq.heappush(wanting, (self._order[node_id], node_id))
                    continue
                if state == "wait":
                    chain = self._chain(node_id)
                    if chain is not None:
                        attempt = self._submit(node, 1, chain)
                        self._launched(in_flight, attempt)
                        active.add(node_id)
                        progressed = True
                    continue  # else touched again when a parent is submitted or finishes
                if state in ("failed", "skipped", "blocked"):
                    status: Outcome = "blocked" if state == "blocked" else "skipped"
                    self._finish(node_id, status, f"upstream {state}")
                    remaining.discard(node_id)
                    progressed = True
                    continue
                if node.kind in REMOTE_KINDS:
                    attempt = self._submit(node, 1)
                    self._launched(in_flight, attempt)
                    active.add(node_id)
                else:
                    self._run_local(node)
                    remaining.discard(node_id)
                progressed = True
            self._pass = None
            now = time.time()
            for entry in list(waiting):
                if entry[0] <= now and len(in_flight) < self.parallelism:
                    waiting.remove(entry)
                    attempt = self._submit(entry[1], entry[2])
                    self._launched(in_flight, attempt)
                    progressed = True
            if in_flight:
                ready, _ = ray_backend.wait(list(in_flight), timeout=0.2)
                ready.sort(key=lambda r: self._order[in_flight[r].node.id])
                outcomes = ray_backend.results(ready)
                if any(in_flight[r].node.kind == "transform" and o.get("status") == "succeeded"
                       for r, o in zip(ready, outcomes, strict=True)):
                    self.artifacts.sync()  # adopted outputs' names are durable before the state names them
                with self.store.transaction():  # one commit for the round, not four per task
                    for ref, outcome in zip(ready, outcomes, strict=True):
                        attempt = self._landed(in_flight, ref)
                        progressed = True
                        if outcome.get("status") == "upstream_failed":
                            self._dirty.add(attempt.node.id)  # never ran: decided again once its upstream settles
                            continue
                        retry = self._complete(attempt, outcome)
                        if retry is not None:
                            waiting.append(retry)
                        else:
                            remaining.discard(attempt.node.id)
                if ready:
                    self._moved = time.time()
                self._watch(in_flight, remaining)
                for ref, attempt in list(in_flight.items()):
                    limit = attempt.limit
                    if attempt.waiting and attempt.running_since is None:
                        continue  # not started: its timeout counts from its start, the wait has a deadline of its own
                    if limit is not None and time.time() - (attempt.running_since or attempt.started) > limit:
                        ray_backend.cancel(ref)
                        self._landed(in_flight, ref)
                        retry = self._complete(attempt, {"status": "failed",
                                                         "error": f"timed out after {limit:.0f}s"})
                        if retry is not None:
                            waiting.append(retry)
                        else:
                            remaining.discard(attempt.node.id)
                        progressed = True
            elif waiting and not progressed:
                time.sleep(min(0.2, max(0.0, min(w[0] for w in waiting) - time.time())))
            elif not progressed:
                break  # nothing can move: every remaining node waits on something outside the plan
        for node_id in remaining:
            self._finish(node_id, "skipped", "not reachable")
        ray_backend.forget_starts(self._starts)
        return self.result

    def _watch(self, in_flight: dict[Any, _Attempt], remaining: set[str]) -> None:
        """See which submitted tasks have started; report those that wait for resources, and when none of
        this apply's tasks has run for ``resource_wait`` seconds, fail the waiting ones (never run: not
        retried, not a timeout)."""
        now = time.time()
        if now - self._watched < WATCH_EVERY_S:
            return
        self._watched = now
        refs = set(in_flight)
        unseen = []
        for attempt in in_flight.values():
            if attempt.running_since is not None:
                continue
            if attempt.eligible_since is None:
                if attempt.chained and any(ref in refs for ref in attempt.upstream):
                    continue  # behind running upstream tasks: queued, not waiting for resources
                attempt.eligible_since = now
            if now - attempt.eligible_since >= WAIT_NOTICE_S:
                unseen.append(attempt)
        if not unseen:
            if any(a.running_since is not None for a in in_flight.values()):
                self._moved = now
            return
        started = ray_backend.started(self._starts, {a.run.run_id for a in unseen})
        for attempt in unseen:
            if attempt.run.run_id in started:
                attempt.running_since = started[attempt.run.run_id]
                if attempt.waiting:
                    attempt.waiting = False
                    self.store.mark_run(attempt.run.run_id, "running")
                    self.progress(attempt.node.id, "running", "started")
        if any(a.running_since is not None for a in in_flight.values()):
            self._moved = now
        stuck = [a for a in unseen if a.running_since is None]
        for attempt in stuck:
            if not attempt.waiting:
                attempt.waiting = True
                if not attempt.chained:
                    self.store.mark_run(attempt.run.run_id, "waiting")
                self.progress(attempt.node.id, "waiting", self._wants(attempt.node))
        if stuck and now - self._moved >= self.resource_wait:
            for attempt in stuck:
                ray_backend.cancel(attempt.ref)
                self._landed(in_flight, attempt.ref)
                waited = now - (attempt.eligible_since or now)
                error = (f"never started: waited {waited:.0f}s for resources ({self._wants(attempt.node)}) "
                         "while nothing else of this apply ran")
                self._complete(attempt, {"status": "failed", "error": error, "never_started": True})
                remaining.discard(attempt.node.id)

    def _wants(self, node: Node) -> str:
        """What a node asks for, what the cluster has free, and what holds the rest."""
        from runtime.plan import feasibility

        return f"asks {feasibility.asks(node.resources or {})}; {feasibility.describe_free(self.project)}"

    def _cluster_address(self) -> str | None:
        """The spec's ``cluster.address``, else the local cluster ``mlops up`` started, else none (embedded)."""
        from runtime.compute import cluster

        if self.project.spec.cluster.address:
            return self.project.spec.cluster.address
        local = cluster.running(self.workspace.state_path)
        serves = any(c.kind == "deploy" and self.project.spec.deployments[c.address.split(".", 1)[1]].mode
                     == "realtime" for c in self.plan.runnable())
        if local is None and serves:  # deployments must outlive this process: join the long-lived cluster
            local = cluster.up(self.workspace.state_path, num_cpus=local_cluster_cpus(self.project))
        return local.address if local else None

    def _upstream_state(self, node_id: str) -> str:
        for parent in self.graph.dag.predecessors(node_id):
            outcome = self.result.outcomes.get(parent)
            if outcome is not None:
                if outcome.status != "succeeded":
                    return outcome.status
                continue
            change = self.changes.get(parent)
            if change is not None and change.action in ("create", "replace", "update"):
                return "wait"
            if parent not in self.outputs:
                return "wait" if change is not None else "skipped"
        return "ready"

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

    # --- remote nodes --------------------------------------------------------------------------

    def _submit(self, node: Node, attempt_no: int, chain: dict[str, Any] | None = None) -> _Attempt:
        """Submit a node's task; with ``chain`` (input name -> upstream ref) behind running upstream tasks."""
        resources = node.resources or {}
        run = Run(run_id=uuid.uuid4().hex[:16], node_id=node.id, address=node.address, kind=node.kind,
                  fingerprint=node.fingerprint, params=dict(node.config.get("params", {})), attempt=attempt_no,
                  started_at=time.time(), host=self.provenance.host, git_commit=self.provenance.commit,
                  git_dirty=self.provenance.dirty)
        if not chain:
            self.store.start_run(run)
        spec = self._task_spec(node, run.run_id, set(chain or ()))
        refs = list((chain or {}).values())
        if chain:
            spec = dataclasses.replace(spec, chained={name: i for i, name in enumerate(chain)})
        spec.started_key = self._starts + run.run_id
        memory = resources.get("memory")
        ref = ray_backend.submit(spec, float(resources.get("cpus", 1)), float(resources.get("gpus", 0)),
                                 memory_bytes(memory) if memory else None, refs)
        self.progress(node.id, "started", f"attempt {attempt_no}")
        self._touch(node.id)
        return _Attempt(node, attempt_no, run, time.time(), ref, chained=bool(chain), limit=self._timeout(node),
                        upstream=tuple(refs))

    def _launched(self, in_flight: dict[Any, _Attempt], attempt: _Attempt) -> None:
        in_flight[attempt.ref] = attempt
        self._running[attempt.node.id] = attempt

    def _landed(self, in_flight: dict[Any, _Attempt], ref: Any) -> _Attempt:
        attempt = in_flight.pop(ref)
        del self._running[attempt.node.id]
        return attempt

    def _chain(self, node_id: str) -> dict[str, Any] | None:
        """For a transform whose inputs are each built already or being built by a running transform:
        input name -> the running task's ref. ``None`` when it must wait (anything else is pending)."""
        node = self.graph.node(node_id)
        if node.kind != "transform":
            return None
        chain: dict[str, Any] = {}
        for name in node.config["from"]:
            parent = self.graph.by_address(f"datasets.{name}")[0].id
            running = self._running.get(parent)
            if running is not None and running.node.kind == "transform":
                chain[name] = running.ref
            elif not self._built(parent):
                return None
        return chain or None

    def _built(self, node_id: str) -> bool:
        """Whether a node's outputs are current: it succeeded in this apply, or it is not part of it."""
        outcome = self.result.outcomes.get(node_id)
        if outcome is not None:
            return outcome.status == "succeeded"
        change = self.changes.get(node_id)
        if change is not None and change.action in ("create", "replace", "update"):
            return False
        return node_id in self.outputs

    def _task_spec(self, node: Node, run_id: str, chained: set[str] | None = None) -> TaskSpec:
        spec = self.project.spec
        root = str(self.project.root)
        if node.kind == "transform":
            dataset = spec.datasets[node.name]
            inputs = {name: self._dataset_uri(name) for name in dataset.from_ or [] if name not in (chained or ())}
            return TaskSpec(node.id, "transform", dataset.transform or "", node.code_hash, root,
                            self.workspace.artifact_root, inputs, dict(dataset.params), 0,
                            dataset.resources.gpus, run_id=run_id)
        model = spec.models[node.name]
        inputs = {role: self._dataset_uri(name) for role, name in model.data.items()}
        if node.kind == "trial":
            train_data = spec.datasets.get(model.data.get("train", ""))
            return TaskSpec(node.id, "trial", model.train, node.code_hash, root, self.workspace.artifact_root,
                            inputs, dict(node.config["params"]), model.seed, model.resources.gpus, run_id=run_id,
                            workers=model.resources.workers,
                            train_schema=dict(train_data.schema_) if train_data and train_data.schema_ else {})
        chosen = self._model_output(node)
        return TaskSpec(node.id, "evaluate", model.evaluate or "", node.code_hash, root,
                        self.workspace.artifact_root, inputs, dict(chosen.get("params", {})), model.seed,
                        model.resources.gpus, model_uri=chosen["artifact"], run_id=run_id)

    def _dataset_uri(self, name: str) -> str:
        for node in self.graph.by_address(f"datasets.{name}"):
            return str(self.outputs[node.id]["input"])
        raise KeyError(name)

    def _model_output(self, node: Node) -> dict[str, Any]:
        """The trained model an evaluation looks at: the selection's pick, or the single trial."""
        for parent in self.graph.dag.predecessors(node.id):
            if self.graph.node(parent).kind in ("select", "trial"):
                return self.outputs[parent]
        raise KeyError(f"{node.id} has no model upstream")

    def _timeout(self, node: Node) -> float | None:
        if node.kind in ("trial", "evaluate"):
            from compiler.spec import duration_seconds

            return float(duration_seconds(self.project.spec.models[node.name].timeout))
        return None

    def _retries(self, node: Node) -> int:
        if node.kind in ("trial", "evaluate"):
            return self.project.spec.models[node.name].retries
        return 0

    def _complete(self, attempt: _Attempt, outcome: dict[str, Any]) -> tuple[float, Node, int] | None:
        node = attempt.node
        status = outcome.get("status", "failed")
        metrics = outcome.get("metrics", {})
        finished_at = float(outcome.get("finished_at", time.time()))
        if attempt.chained:  # its run is recorded now, when it is known to have run: start and end at once
            attempt.run = dataclasses.replace(
                attempt.run, started_at=float(outcome.get("started_at", attempt.run.started_at)),
                finished_at=finished_at, status=status, metrics=metrics, error=outcome.get("error"),
                log_uri=outcome.get("log_uri"), device=outcome.get("device") or attempt.run.device,
                host=outcome.get("host") or attempt.run.host, pid=int(outcome.get("pid") or attempt.run.pid))
            self.store.start_run(attempt.run)
        else:  # the start and the end the worker measured, one clock (the submit time counts queueing too)
            worker_start = outcome.get("started_at") if "finished_at" in outcome else None
            self.store.finish_run(attempt.run.run_id, status, metrics, outcome.get("error"), outcome.get("log_uri"),
                                  finished_at, outcome.get("device"),
                                  float(worker_start) if worker_start is not None else None,
                                  outcome.get("host"), outcome.get("pid"))
        if outcome.get("steps"):
            self.store.log_metrics(attempt.run.run_id, [MetricPoint(attempt.run.run_id, n, int(s), float(v))
                                                       for n, s, v in outcome["steps"]])
        if status != "succeeded":
            if attempt.attempt <= self._retries(node) and not outcome.get("never_started"):
                delay = BACKOFF_SECONDS * 2 ** (attempt.attempt - 1)
                self.progress(node.id, "retry", f"{outcome.get('error')} (retrying in {delay:.1f}s)")
                return time.time() + delay, node, attempt.attempt + 1
            self._finish(node.id, "failed", str(outcome.get("error", "failed")))
            return None
        outputs: dict[str, Any] = {"run_id": attempt.run.run_id, "metrics": metrics,
                                   "device": outcome.get("device")}
        if node.kind == "transform":
            outputs["input"] = outcome["artifact"]
            outputs["artifact"] = outcome["artifact"]
        elif node.kind == "trial":
            outputs["artifact"] = outcome["artifact"]
            outputs["params"] = node.config["params"]
            outputs["signature"] = outcome.get("signature")
        else:  # evaluate: the model's metrics are the trainer's, overridden by the evaluator's
            chosen = self._model_output(node)
            outputs.update(artifact=chosen["artifact"], params=chosen.get("params", {}),
                           train_run_id=chosen.get("run_id"), metrics={**chosen.get("metrics", {}), **metrics},
                           signature=chosen.get("signature"))
        self._record(node, outputs)
        return None

    # --- local nodes ---------------------------------------------------------------------------

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
            raise RuntimeError(f"no trial reported the objective metric {objective['metric']!r}")
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
        return deploy_version(self.workspace, self.store, name, version, pin=pin, graph=self.graph)

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


def serving_target(deployment: Any, newest: int, previous: DeploymentState | None
                   ) -> tuple[int, tuple[int | None, str] | None]:
    """The version a deployment serves once ``newest`` passed its gates, and the rollback pin it keeps:
    the spec's pin, else a rollback's pin while no version newer than the one rolled back from passed,
    else ``newest``."""
    if deployment.version is None and previous is not None and previous.pinned_version is not None \
            and newest <= (previous.desired_version or 0):
        return previous.pinned_version, (previous.desired_version, previous.pin_reason or "rollback")
    return deployment.version or newest, None


def connect_for_serving(workspace: Workspace, project: Any) -> int:
    """Join the cluster that hosts Serve and return its HTTP port.

    ``cluster.address`` wins; else the local cluster ``mlops up`` started (started now if none is
    running, so deployments outlive this process); a process already connected to Ray (tests, the
    reconciler) keeps its connection.
    """
    import os

    import ray

    from runtime.compute import cluster

    port = int(os.environ.get("MLOPS_SERVE_PORT", cluster.DEFAULT_SERVE_PORT))
    if ray.is_initialized():
        local = cluster.running(workspace.state_path)
        return local.serve_port if local else port
    if project.spec.cluster.address:
        ray_backend.connect(project.spec.cluster.address)
        return port
    local = cluster.running(workspace.state_path) or cluster.up(workspace.state_path,
                                                                num_cpus=local_cluster_cpus(project))
    ray_backend.connect(local.address)
    return local.serve_port


def deploy_version(workspace: Workspace, store: StateStore, name: str, version: int,
                   pin: tuple[int | None, str] | None = None, graph: Graph | None = None) -> dict[str, Any]:
    """Make ``version`` the one deployment ``name`` serves, and record it.

    A realtime deployment is rolled out on Ray Serve (blue/green; a failed start leaves the old version
    serving and raises). ``pin`` = (the version rolled back from, why) marks a rollback: it is kept
    until a version newer than the one rolled back from passes the gates.
    """
    project = workspace.project
    deployment = project.spec.deployments[name]
    model_version = store.get_model_version(deployment.model, version)
    if model_version is None:
        raise RuntimeError(f"models.{deployment.model} has no version {version}")
    previous = store.get_deployment(name)
    live_version = previous.live_version if previous else None
    desired = pin[0] if pin is not None and pin[0] is not None else version
    outputs: dict[str, Any] = {"version": version, "mode": deployment.mode}
    if deployment.mode == "realtime":
        from runtime.compute import serving

        route = deployment.route or f"/{name}"
        spec = serve_spec(workspace, name, model_version, graph)
        serving_now = store.get_model_version(deployment.model, live_version) if live_version else None
        before = serve_spec(workspace, name, serving_now, graph) if serving_now is not None else None
        memory = deployment.resources.memory
        resources = serving.ReplicaResources(deployment.resources.cpus, deployment.resources.gpus,
                                             memory_bytes(memory) if memory else None)
        port = connect_for_serving(workspace, project)
        try:
            serving.deploy(spec, route, deployment.replicas, resources, port, previous=before,
                           http_host=project.spec.cluster.serve_host)
        except serving.RolloutFailed as failed:
            really = None
            with contextlib.suppress(Exception):  # Serve did not answer: nothing is known to serve
                really = serving.live(name)
            serving_version = really.version if really is not None else None
            keeps = f"version {serving_version} keeps serving" if serving_version is not None else "nothing serves"
            store.set_deployment(DeploymentState(name, deployment.model, desired, serving_version,
                                                 f"Degraded: rollout of version {version} failed: {failed}",
                                                 time.time(), previous.pinned_version if previous else None,
                                                 previous.pin_reason if previous else None))
            from runtime.provenance import provenance
            from runtime.state import audit

            origin = provenance(project.root)
            audit.rollout_failed(store, origin.actor, name, deployment.model, version, serving_version, str(failed),
                                 origin.commit)
            raise MlopsError.one(f"rollout of version {version} failed, {keeps}: {failed}",
                                 address=f"deployments.{name}") from failed
        outputs.update(route=route, url=f"http://127.0.0.1:{port}{route}")
    else:
        from runtime.compute.batch import BatchSpec, score

        assert deployment.input is not None
        input_uri = dataset_uri(project, store, deployment.input)
        model = project.spec.models[deployment.model]
        batch = BatchSpec(name, version, model.train, model_version.code_hash, str(project.root),
                          workspace.artifact_root, model_version.artifact_uri, input_uri, dict(model_version.params))
        ray_backend.connect(project.spec.cluster.address)
        outputs.update(ray_backend.call(score, batch, deployment.resources.cpus, deployment.resources.gpus))
    store.set_deployment(DeploymentState(name, deployment.model, desired, version, "Healthy", time.time(),
                                         version if pin is not None else None, pin[1] if pin else None))
    return outputs


def serve_spec(workspace: Workspace, name: str, model_version: ModelVersion, graph: Graph | None = None) -> Any:
    """What a replica of deployment ``name`` needs to serve ``model_version``."""
    from runtime.compute import serving
    from runtime.endpoint import config as endpoint

    project = workspace.project
    deployment = project.spec.deployments[name]
    model = project.spec.models[deployment.model]
    code = model_version.code_hash
    if graph is not None:  # the trainer module's code now (serving code lives beside the trainer)
        code = next((n.code_hash for n in graph.by_address(f"models.{deployment.model}") if n.kind == "trial"), code)
    return serving.ServeSpec(name, model_version.version, model.train, code, str(project.root),
                             workspace.artifact_root, model_version.artifact_uri, dict(model_version.params),
                             endpoint.api_config(project, name, model_version))


def dataset_uri(project: Any, store: StateStore, name: str) -> str:
    """The artifact of a dataset's latest recorded content (its snapshot, or its transform's output)."""
    step = "snapshot" if project.spec.datasets[name].path is not None else "transform"
    result = store.latest_result(f"datasets.{name}/{step}")
    if result is None or "input" not in result.outputs:
        raise RuntimeError(f"datasets.{name} has not been built yet")
    return str(result.outputs["input"])
