"""Plan: compare the desired graph with the recorded state and say, per node and per resource, what
apply would do and why.

The action is a small closed set (as in Terraform's ``plans.Action``):

=========  ==================================================================
create     nothing recorded for the node yet
update     recorded, but a setting that is changed in place differs (replicas, schedule, ...)
replace    recorded at another fingerprint: the node runs again
delete     recorded, but no longer in the spec
no-op      recorded at the desired fingerprint
blocked    cannot proceed: a gate awaits approval or rejected the model version
=========  ==================================================================

Reasons are for display only; decisions are made on fingerprints and gate decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from compiler.change_reasons import IN_PLACE_KEYS, config_reasons, strongest
from compiler.content_hash import canonical_json, hash_value
from compiler.graph import Graph, Node
from runtime.apply.gates import failed_reasons
from runtime.state.records import GateDecision, NodeResult

if TYPE_CHECKING:
    from runtime.compute.serving import ServeView

Action = Literal["create", "update", "replace", "delete", "no-op", "blocked"]
ACTIONS: tuple[Action, ...] = ("create", "update", "replace", "delete", "no-op", "blocked")
FORMAT_VERSION = "1"



@dataclass(frozen=True)
class NodeChange:
    """What apply does with one node, and why."""

    node_id: str
    address: str
    kind: str
    action: Action
    reasons: tuple[str, ...]
    fingerprint: str | None
    """The desired fingerprint (``None`` for a delete)."""
    before: str | None
    """The recorded fingerprint (``None`` when nothing is recorded)."""

    @property
    def name(self) -> str:
        """The resource's name: ``churn`` of ``models.churn``."""
        return self.address.split(".", 1)[1]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.node_id, "address": self.address, "kind": self.kind, "action": self.action,
                "reasons": list(self.reasons), "fingerprint": self.fingerprint, "before": self.before}


@dataclass
class ResourceChange:
    """What apply does with one resource: the strongest action among its nodes."""

    address: str
    action: Action
    reasons: list[str]
    nodes: list[NodeChange]

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "action": self.action, "reasons": self.reasons,
                "nodes": [n.to_json() for n in self.nodes]}


@dataclass
class Plan:
    """The in-memory plan. :mod:`runtime.plan.planfile` saves and loads it."""

    resource_changes: list[ResourceChange]
    node_changes: list[NodeChange]
    state_digest: str
    """A hash of the recorded state the plan was made against (a saved plan is stale when it changes)."""
    spec_digest: str
    """A hash of the desired graph's fingerprints."""
    targets: list[str] = field(default_factory=list)
    recorded: dict[str, NodeResult] = field(default_factory=dict, repr=False, compare=False)
    """The latest recorded results the plan compared with (apply's executor and status reuse them)."""
    gates: dict[str, GateView] = field(default_factory=dict, repr=False, compare=False)
    """Each gate's latest decision and approvals as the plan saw them."""
    serving: ServeView | None = field(default=None, repr=False, compare=False)
    """What Ray Serve ran when the plan was made (:func:`runtime.plan.project.observe_serving`)."""

    @property
    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for change in self.resource_changes:
            counts[change.action] += 1
        return counts

    @property
    def has_changes(self) -> bool:
        return any(change.action != "no-op" for change in self.resource_changes)

    def runnable(self) -> list[NodeChange]:
        """Nodes apply must run or update, in the plan's (topological) order."""
        return [n for n in self.node_changes if n.action in ("create", "replace", "update")]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "spec_digest": self.spec_digest,
                "state_digest": self.state_digest, "targets": self.targets,
                "resource_changes": [c.to_json() for c in self.resource_changes], "summary": self.summary}


@dataclass(frozen=True)
class GateView:
    """What the planner needs to know about a gate's latest decision for the model's current version."""

    decision: GateDecision | None
    approvals: int
    required: int




def _address_of_node(node_id: str) -> str:
    return node_id.split("/", 1)[0]


def node_reasons(node: Node, recorded: NodeResult, upstream: dict[str, str],
                 earlier: dict[str, NodeChange] | None = None) -> list[str]:
    """Why ``node`` differs from what was recorded: config, code, data and upstream changes.

    An upstream node of the same resource (an evaluation's trial, a sweep's trials) is never named as
    ``upstream changed: <the resource itself>``: its own reasons (from ``earlier``, the changes planned
    so far) are the cause, or, when it does not run again, that this node has not run against it yet.
    """
    reasons = config_reasons(recorded.config, node.config)
    if node.code_hash != recorded.code_hash and node.code:
        reasons.append(f"code changed: {node.code}")
    if node.data_hash != recorded.data_hash and node.data_hash is not None:
        reasons.append(f"data changed: {node.address}")
    for parent, fingerprint in sorted(upstream.items()):
        if recorded.upstream.get(parent) != fingerprint:
            address = _address_of_node(parent)
            if address == node.address:
                found = _inherited(parent, (earlier or {}).get(parent))
            else:
                found = [f"{'data changed' if address.startswith('datasets.') else 'upstream changed'}: {address}"]
            reasons.extend(reason for reason in found if reason not in reasons)
    return list(dict.fromkeys(reasons)) or ["fingerprint changed"]


def _inherited(parent: str, change: NodeChange | None) -> list[str]:
    """Why a node runs again because ``parent``, a node of its own resource, changed: the parent's reasons."""
    if change is None or change.action not in ("create", "replace", "update"):
        return [f"not yet run against the current {parent}"]
    return [f"not yet run: {parent}" if reason == "not yet run" else reason for reason in change.reasons]


def make_plan(graph: Graph, recorded: dict[str, NodeResult], gates: dict[str, GateView],
              targets: list[str] | None = None, forced: dict[str, str] | None = None,
              updates: dict[str, str] | None = None) -> Plan:
    """Compare ``graph`` with the recorded node results; ``gates`` holds each gate's latest decision.

    ``forced`` maps node ids that must run again although their fingerprint is recorded to the reason
    (``monitor breach: monitors.x``, ``live state differs: ...``). Whatever is downstream of a node
    that runs again runs again too. ``updates`` maps node ids whose recorded work stands but whose live
    state lags behind it to the reason (``version 3 passed its gates; version 2 is live``): an ``update``.
    """
    forced = forced or {}
    updates = updates or {}
    nodes = graph.nodes()
    selected = _targeted(graph, targets) if targets else None
    changes: dict[str, NodeChange] = {}
    for node in nodes:
        if selected is not None and node.id not in selected:
            continue
        upstream = {p: graph.node(p).fingerprint for p in graph.dag.predecessors(node.id)}
        change = _node_change(node, recorded.get(node.id), upstream, changes, gates)
        if change.action == "no-op":
            rerun = [changes[p].address for p in upstream
                     if p in changes and changes[p].action in ("create", "replace")]
            if node.id in forced:
                change = NodeChange(node.id, node.address, node.kind, "replace", (forced[node.id],),
                                    node.fingerprint, change.before)
            elif node.id in updates and not rerun:
                change = NodeChange(node.id, node.address, node.kind, "update", (updates[node.id],),
                                    node.fingerprint, change.before)
            elif rerun and node.kind != "monitor":  # a monitor's work is watching: it goes on as it is
                why = [reason for p in upstream if p in changes and changes[p].action in ("create", "replace")
                       for reason in (_inherited(p, changes[p]) if changes[p].address == node.address
                                      else [f"upstream changed: {changes[p].address}"])]
                change = NodeChange(node.id, node.address, node.kind, "replace",
                                    tuple(dict.fromkeys(why)) or ("upstream runs again",), node.fingerprint,
                                    change.before)
        changes[node.id] = change
    if selected is None:
        for node_id, result in sorted(recorded.items()):
            if node_id not in graph.dag:
                changes[node_id] = NodeChange(node_id, result.address, result.kind, "delete",
                                              ("removed from the spec",), None, result.fingerprint)
    by_address: dict[str, list[NodeChange]] = {}
    for change in changes.values():
        by_address.setdefault(change.address, []).append(change)
    resources = []
    for address, node_changes in by_address.items():
        reasons: list[str] = []
        for change in node_changes:
            for reason in change.reasons:
                if reason not in reasons:
                    reasons.append(reason)
        action = strongest(c.action for c in node_changes)
        resources.append(ResourceChange(address, action, reasons if action != "no-op" else [], node_changes))
    state_digest = hash_value(sorted((r.node_id, r.fingerprint) for r in recorded.values()))
    spec_digest = hash_value(sorted((n.id, n.fingerprint) for n in nodes))
    return Plan(resources, list(changes.values()), state_digest, spec_digest, list(targets or []), dict(recorded),
                dict(gates))


def _targeted(graph: Graph, targets: list[str]) -> set[str]:
    """The targeted resources' nodes and everything upstream of them (as ``terraform plan -target``)."""
    import networkx as nx

    selected: set[str] = set()
    for node in graph.nodes():
        if node.address in targets or node.id in targets:
            selected.add(node.id)
            selected |= nx.ancestors(graph.dag, node.id)
    return selected


def _node_change(node: Node, recorded: NodeResult | None, upstream: dict[str, str],
                 earlier: dict[str, NodeChange], gates: dict[str, GateView]) -> NodeChange:
    def change(action: Action, reasons: list[str]) -> NodeChange:
        return NodeChange(node.id, node.address, node.kind, action, tuple(reasons), node.fingerprint,
                          recorded.fingerprint if recorded else None)

    blockers = [earlier[p] for p in upstream if p in earlier and earlier[p].action == "blocked"]
    if blockers:
        return change("blocked", [f"blocked by {blockers[0].address}"])
    if node.kind == "gate":
        gate_change = _gate_change(node, recorded, upstream, earlier, gates.get(node.address))
        if gate_change is not None:
            return change(*gate_change)
    if recorded is None:
        return change("create", ["not yet run"] if node.kind != "snapshot" else [f"new data: {node.address}"])
    if recorded.fingerprint == node.fingerprint:
        return change("no-op", [])
    reasons = node_reasons(node, recorded, upstream, earlier)
    in_place = IN_PLACE_KEYS.get(node.kind)
    if in_place is not None and _only_in_place(recorded, node, upstream, in_place):
        return change("update", reasons)
    return change("replace", reasons)


def _only_in_place(recorded: NodeResult, node: Node, upstream: dict[str, str], keys: set[str]) -> bool:
    if recorded.upstream != upstream or recorded.code_hash != node.code_hash:
        return False
    changed = {key for key in set(recorded.config) | set(node.config)
               if canonical_json(recorded.config.get(key)) != canonical_json(node.config.get(key))}
    return bool(changed) and changed <= keys


def _gate_change(node: Node, recorded: NodeResult | None, upstream: dict[str, str],
                 earlier: dict[str, NodeChange], view: GateView | None) -> tuple[Action, list[str]] | None:
    """A gate whose model is unchanged keeps its decision: blocked while awaiting approval or rejected."""
    model_changes = [earlier[p] for p in upstream if p in earlier]
    if any(c.action != "no-op" for c in model_changes) or recorded is None or view is None:
        return None
    if recorded.fingerprint != node.fingerprint:
        return None
    decision = view.decision
    if decision is None:
        return None
    if decision.status == "awaiting_approval":
        if view.approvals >= view.required:
            return "update", [f"approved: {node.address} ({view.approvals} of {view.required})"]
        return "blocked", [f"awaiting approval: {node.address} ({view.approvals} of {view.required} approvals)"]
    if decision.status == "failed":
        failed = failed_reasons(decision.checks)
        return "blocked", [f"gate failed: {node.address}: {'; '.join(failed) or 'checks failed'}"]
    return None
