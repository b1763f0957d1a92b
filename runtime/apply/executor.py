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
from dataclasses import dataclass
from typing import Any

from compiler.graph import Graph, Node
from compiler.spec import memory_bytes
from runtime.apply.outcomes import ApplyResult, Outcome, ProgressHook
from runtime.apply.steps import DriverSteps
from runtime.artifacts.store import ArtifactStore
from runtime.compute import connect, ray_backend, shipping
from runtime.compute.task import TaskResult, TaskSpec
from runtime.plan.actions import Plan
from runtime.provenance import Provenance
from runtime.state.records import MetricPoint, Run
from runtime.state.store import StateStore
from runtime.workspace import Workspace

REMOTE_KINDS = {"transform", "trial", "evaluate"}
BACKOFF_SECONDS = 0.5
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


class Executor(DriverSteps):
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
        self.recorded = dict(plan.recorded)  # what the plan compared with, read under this apply's lock
        self.outputs: dict[str, dict[str, Any]] = {nid: r.outputs for nid, r in self.recorded.items()}
        self.result = ApplyResult()
        self._order = {node.id: index for index, node in enumerate(graph.nodes())}
        self.changes = {c.node_id: c for c in plan.node_changes}
        self._dirty: set[str] = set()
        """Nodes to look at in the next scheduling pass."""
        self._pass: list[tuple[int, str]] | None = None
        """The pass under way: (graph order, node id), a heap."""
        self._running: dict[str, _Attempt] = {}
        self._shipped: str | None = None
        """The code package tasks run in (``""``: in place); made at the first submit."""
        """Node id -> its attempt running on Ray."""

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> ApplyResult:
        """Run the plan; interrupted (Ctrl-C, an error of the driver), its running tasks are cancelled first."""
        try:
            return self._run()
        except BaseException:
            self._abandon("interrupted: the apply was stopped before it finished")
            raise

    def _abandon(self, why: str) -> None:
        """Cancel the tasks still running and record their runs failed: a driver that outlives this apply (the
        warm driver, the reconciler) would otherwise leave them running on the cluster."""
        for attempt in list(self._running.values()):
            with contextlib.suppress(Exception):  # best effort on the way out; the next apply closes what is left
                ray_backend.cancel(attempt.ref)
        with contextlib.suppress(Exception):  # the apply holds the lock: every unfinished run is this one's
            self.store.fail_unfinished_runs(why)

    def _run(self) -> ApplyResult:
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
            self._join()
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
                if any(in_flight[r].node.kind == "transform" and o.status == "succeeded"
                       for r, o in zip(ready, outcomes, strict=True)):
                    self.artifacts.sync()  # adopted outputs' names are durable before the state names them
                with self.store.transaction():  # one commit for the round, not four per task
                    for ref, outcome in zip(ready, outcomes, strict=True):
                        attempt = self._landed(in_flight, ref)
                        progressed = True
                        if outcome.status == "upstream_failed":
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
                        retry = self._complete(attempt, TaskResult.failed(f"timed out after {limit:.0f}s"))
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
                self._complete(attempt, TaskResult.failed(error, never_started=True))
                remaining.discard(attempt.node.id)

    def _wants(self, node: Node) -> str:
        """What a node asks for, what the cluster has free, and what holds the rest."""
        from runtime.plan import feasibility

        return f"asks {feasibility.asks(node.resources or {})}; {feasibility.describe_free(self.project)}"

    def _join(self) -> None:
        """Join the project's cluster (:mod:`runtime.compute.connect`); realtime deployments to roll out
        need the long-lived local one, since they outlive this process."""
        serves = any(c.kind == "deploy" and self.project.spec.deployments[c.name].mode == "realtime"
                     for c in self.plan.runnable())
        connect.join(self.project, start_local=serves)

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
        code_uri = self._code_package()
        if code_uri:  # the nodes may not see this repository: the task runs in the shipped package
            spec = dataclasses.replace(spec, repo_root="", code_uri=code_uri)
        memory = resources.get("memory")
        ref = ray_backend.submit(spec, float(resources.get("cpus", 1)), float(resources.get("gpus", 0)),
                                 memory_bytes(memory) if memory else None, refs)
        self.progress(node.id, "started", f"attempt {attempt_no}")
        self._touch(node.id)
        return _Attempt(node, attempt_no, run, time.time(), ref, chained=bool(chain), limit=self._timeout(node),
                        upstream=tuple(refs))

    def _code_package(self) -> str:
        """The shipped package of this apply's code (uploaded once, when the first task is submitted)."""
        if self._shipped is None:
            self._shipped = shipping.package_for(self.project)
        return self._shipped

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

    def _complete(self, attempt: _Attempt, outcome: TaskResult) -> tuple[float, Node, int] | None:
        node = attempt.node
        status = outcome.status if outcome.status in ("succeeded", "failed") else "failed"
        metrics = outcome.metrics
        finished_at = outcome.finished_at if outcome.finished_at is not None else time.time()
        if attempt.chained:  # its run is recorded now, when it is known to have run: start and end at once
            started_at = outcome.started_at if outcome.started_at is not None else attempt.run.started_at
            attempt.run = dataclasses.replace(
                attempt.run, started_at=started_at,
                finished_at=finished_at, status=status, metrics=metrics, error=outcome.error,
                log_uri=outcome.log_uri, device=outcome.device or attempt.run.device,
                host=outcome.host or attempt.run.host, pid=int(outcome.pid or attempt.run.pid))
            self.store.start_run(attempt.run)
        else:  # the start and the end the worker measured, one clock (the submit time counts queueing too)
            worker_start = outcome.started_at if outcome.finished_at is not None else None
            self.store.finish_run(attempt.run.run_id, status, metrics, outcome.error, outcome.log_uri,
                                  finished_at, outcome.device, worker_start, outcome.host, outcome.pid)
        if outcome.steps:
            self.store.log_metrics(attempt.run.run_id, [MetricPoint(attempt.run.run_id, n, int(s), float(v))
                                                       for n, s, v in outcome.steps])
        if status != "succeeded":
            if attempt.attempt <= self._retries(node) and not outcome.never_started:
                delay = BACKOFF_SECONDS * 2 ** (attempt.attempt - 1)
                self.progress(node.id, "retry", f"{outcome.error} (retrying in {delay:.1f}s)")
                return time.time() + delay, node, attempt.attempt + 1
            self._finish(node.id, "failed", outcome.error or "failed")
            return None
        outputs: dict[str, Any] = {"run_id": attempt.run.run_id, "metrics": metrics, "device": outcome.device}
        if node.kind == "transform":
            outputs["input"] = outcome.artifact
            outputs["artifact"] = outcome.artifact
        elif node.kind == "trial":
            outputs["artifact"] = outcome.artifact
            outputs["params"] = node.config["params"]
            outputs["signature"] = outcome.signature
        else:  # evaluate: the model's metrics are the trainer's, overridden by the evaluator's
            chosen = self._model_output(node)
            outputs.update(artifact=chosen["artifact"], params=chosen.get("params", {}),
                           train_run_id=chosen.get("run_id"), metrics={**chosen.get("metrics", {}), **metrics},
                           signature=chosen.get("signature"))
        self._record(node, outputs)
        return None

