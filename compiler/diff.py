"""Compare two compiled specs (``mlops diff``): the resources a change adds, changes and removes, what
apply would do about each and why, and the policy failures it introduces or resolves.

A diff is between two specs, not against live state. A step runs again when its fingerprint differs
between the two graphs; the reasons use the wording of :mod:`runtime.plan.actions` (``params.lr: 0.01 -> 0.02``,
``code changed: pipeline.py``, ``data changed: datasets.raw``, ``upstream changed: models.churn``),
with field changes named as they are written in ``mlops.yaml``. The module reads no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from compiler.change_reasons import IN_PLACE_KEYS, config_reasons, strongest
from compiler.content_hash import canonical_json
from compiler.errors import MlopsError
from compiler.graph import Graph, Node
from compiler.policy.evaluate import PolicyReport, PolicyResult
from compiler.resolve import Project
from compiler.spec import SECTIONS

Action = Literal["create", "update", "replace", "delete", "no-op"]
Change = Literal["added", "changed", "removed"]
FORMAT_VERSION = "1"
SETTINGS = ("project", "cluster", "storage")
"""Project-wide settings, compared as pseudo-resources (they have no steps in the graph)."""


RERUN_EFFECTS = {"datasets": "will rebuild", "gates": "will re-check", "deployments": "will redeploy",
                 "monitors": "will restart"}
EFFECTS = {"create": "will be created", "delete": "will be removed", "update": "will be updated in place"}


@dataclass(frozen=True)
class Side:
    """One end of a diff: the spec compiled at a revision (or the working tree), or no spec there."""

    label: str
    """How the side is named in messages: the ref as given (``main``, ``HEAD~1``) or ``working tree``."""
    commit: str | None = None
    project: Project | None = None
    graph: Graph | None = None
    report: PolicyReport | None = None

    @property
    def present(self) -> bool:
        return self.project is not None

    def addresses(self) -> list[str]:
        return [*SETTINGS, *self.project.addresses()] if self.project is not None else []

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.label, "commit": self.commit, "spec": self.present}


@dataclass(frozen=True)
class NodeDiff:
    """What happens to one step of the graph between the two sides."""

    id: str
    kind: str
    action: Action
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "action": self.action}


@dataclass
class ResourceDiff:
    """A resource that differs: how (``change``), what apply would do (``action``, ``effect``) and why."""

    address: str
    change: Change
    action: Action
    effect: str
    """Plain words for the action: ``will retrain``, ``will be created``, ``will be updated in place``."""
    reasons: list[str]
    nodes: list[NodeDiff] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "change": self.change, "action": self.action, "effect": self.effect,
                "reasons": self.reasons, "nodes": [n.to_json() for n in self.nodes if n.action != "no-op"]}


@dataclass(frozen=True)
class PolicyChange:
    """A policy failure present on one side only; ``other`` is that key's status on the other side."""

    result: PolicyResult
    other: str
    """``pass``, ``waived``, ``not applicable`` or ``absent`` (the resource is not there)."""

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {"policy": r.policy.id, "title": r.policy.title, "severity": r.policy.severity, "pack": r.pack,
                "address": r.address, "message": r.message, "detail": r.detail or None, "other": self.other,
                "remediation": r.policy.remediation, "file": r.position.file, "line": r.position.line,
                "column": r.position.column}


@dataclass
class Diff:
    """The whole comparison of ``base`` and ``head``."""

    base: Side
    head: Side
    resources: list[ResourceDiff]
    new_failures: list[PolicyChange]
    resolved: list[PolicyChange]
    still_failing: int
    unchanged: int
    links: list[tuple[str, str]]
    """Resource-level dependency edges of both graphs (``datasets.raw`` -> ``models.churn``)."""

    @property
    def has_changes(self) -> bool:
        return bool(self.resources or self.new_failures or self.resolved)

    @property
    def summary(self) -> dict[str, int]:
        counts = {change: sum(1 for r in self.resources if r.change == change)
                  for change in ("added", "changed", "removed")}
        return {**counts, "unchanged": self.unchanged, "policy_new": len(self.new_failures),
                "policy_resolved": len(self.resolved), "policy_still_failing": self.still_failing}

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "base": self.base.to_json(), "head": self.head.to_json(),
                "resources": [r.to_json() for r in self.resources],
                "policy": {"new": [c.to_json() for c in self.new_failures],
                           "resolved": [c.to_json() for c in self.resolved]},
                "summary": self.summary}


def diff(base: Side, head: Side) -> Diff:
    """Compare two compiled sides. Raises :class:`MlopsError` when neither side has a spec."""
    if not base.present and not head.present:
        raise MlopsError.one(f"no spec at {base.label} nor at {head.label}")
    base_nodes = _by_address(base.graph)
    head_nodes = _by_address(head.graph)
    node_diffs = _node_diffs(base.graph, head.graph)
    in_base, in_head = set(base.addresses()), set(head.addresses())
    resources: list[ResourceDiff] = []
    unchanged = 0
    for address in sorted(in_base | in_head, key=_order):
        if address in SETTINGS and not (base.present and head.present):
            continue  # a whole spec added or removed: its resources say it
        if address not in in_base:
            resources.append(ResourceDiff(address, "added", "create", EFFECTS["create"], ["added to the spec"],
                                          [node_diffs[n.id] for n in head_nodes.get(address, [])]))
        elif address not in in_head:
            resources.append(ResourceDiff(address, "removed", "delete", EFFECTS["delete"], ["removed from the spec"],
                                          [node_diffs[n.id] for n in base_nodes.get(address, [])]))
        else:
            ids = dict.fromkeys(n.id for n in [*head_nodes.get(address, []), *base_nodes.get(address, [])])
            changed = _changed(address, [node_diffs[i] for i in ids], base, head)
            if changed is None:
                unchanged += 1
            else:
                resources.append(changed)
    new, resolved, still = _policy_changes(base, head)
    return Diff(base, head, resources, new, resolved, still, unchanged, _links(base.graph, head.graph))


def _order(address: str) -> tuple[int, str]:
    section = address.partition(".")[0]
    ranks = (*SETTINGS, *SECTIONS)
    return (ranks.index(section) if section in ranks else len(ranks), address)


def _by_address(graph: Graph | None) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {}
    for node in graph.nodes() if graph is not None else []:
        out.setdefault(node.address, []).append(node)
    return out


def _changed(address: str, nodes: list[NodeDiff], base: Side, head: Side) -> ResourceDiff | None:
    """A resource on both sides: ``None`` when neither its settings nor any of its steps differ."""
    assert base.project is not None and head.project is not None
    reasons = config_reasons(_settings(base.project, address), _settings(head.project, address))
    for node in nodes:
        reasons.extend(r for r in node.reasons if r not in reasons)
    action = strongest(n.action for n in nodes) if nodes else "no-op"
    if action == "no-op":
        if not reasons:
            return None
        action = "update"  # settings only (a description, access rules, resources): nothing runs again
    action = {"create": "replace", "delete": "update"}.get(action, action)  # type: ignore[assignment]
    return ResourceDiff(address, "changed", action, _effect(address, action, nodes),
                        reasons or ["fingerprint changed"], nodes)


def _settings(project: Project, address: str) -> Any:
    """A resource's settings as written (defaults applied, fields by their YAML names)."""
    spec = project.spec
    if address == "project":
        return {"project": spec.project, "owners": spec.owners,
                "compliance": spec.compliance.model_dump(mode="json"),
                "waivers": [w.model_dump(mode="json") for w in spec.waivers]}
    if address in ("cluster", "storage"):
        return getattr(spec, address).model_dump(mode="json", by_alias=True)
    section, _, name = address.partition(".")
    return getattr(spec, section)[name].model_dump(mode="json", by_alias=True)


def _effect(address: str, action: Action, nodes: list[NodeDiff]) -> str:
    if action != "replace":
        return EFFECTS[action]
    section = address.partition(".")[0]
    rerun = {n.kind for n in nodes if n.action in ("create", "replace")}
    if section == "models":
        return "will retrain" if rerun & {"trial", "select"} else "will re-evaluate"
    if section == "datasets" and "snapshot" in rerun:
        return "will re-snapshot"
    return RERUN_EFFECTS.get(section, "will be replaced (re-run)")


def _node_diffs(base: Graph | None, head: Graph | None) -> dict[str, NodeDiff]:
    """Every step of either graph, keyed by id: created, deleted, re-run, updated in place or unchanged."""
    before = {n.id: n for n in base.nodes()} if base is not None else {}
    out: dict[str, NodeDiff] = {}
    for node in head.nodes() if head is not None else []:
        old = before.get(node.id)
        if old is None:
            out[node.id] = NodeDiff(node.id, node.kind, "create")
        elif old.fingerprint == node.fingerprint:
            out[node.id] = NodeDiff(node.id, node.kind, "no-op")
        else:
            assert head is not None and base is not None
            upstream = {p: head.node(p).fingerprint for p in head.dag.predecessors(node.id)}
            changed_parents = [p for p in upstream if p not in before or before[p].fingerprint != upstream[p]]
            old_upstream = sorted(base.dag.predecessors(node.id))
            reasons = _node_reasons(old, node, changed_parents)
            in_place = IN_PLACE_KEYS.get(node.kind)
            same_inputs = not changed_parents and old_upstream == sorted(upstream) and old.code_hash == node.code_hash
            action: Action = "update" if in_place and same_inputs and _only(old, node, in_place) else "replace"
            out[node.id] = NodeDiff(node.id, node.kind, action, tuple(reasons))
    for node_id, old in before.items():
        if node_id not in out:
            out[node_id] = NodeDiff(node_id, old.kind, "delete")
    return out


def _node_reasons(old: Node, new: Node, changed_parents: list[str]) -> list[str]:
    """Code, data and upstream causes (setting changes are named from the spec, see :func:`_changed`)."""
    reasons = []
    if old.code_hash != new.code_hash and new.code:
        reasons.append(f"code changed: {new.code}")
    if old.data_hash != new.data_hash and new.data_hash is not None:
        reasons.append(f"data changed: {new.address}")
    for parent in sorted(changed_parents):
        address = parent.split("/", 1)[0]
        if address == new.address:
            continue  # another step of the same resource: its own reasons explain it
        label = "data changed" if address.startswith("datasets.") else "upstream changed"
        reason = f"{label}: {address}"
        if reason not in reasons:
            reasons.append(reason)
    return reasons


def _only(old: Node, new: Node, keys: set[str]) -> bool:
    changed = {k for k in set(old.config) | set(new.config)
               if canonical_json(old.config.get(k)) != canonical_json(new.config.get(k))}
    return bool(changed) and changed <= keys





def _policy_changes(base: Side, head: Side) -> tuple[list[PolicyChange], list[PolicyChange], int]:
    """Failures only at head (new), failures only at base (resolved), and how many fail on both."""
    base_status, head_status = _statuses(base.report), _statuses(head.report)
    base_fail, head_fail = _failing(base.report), _failing(head.report)
    base_addresses, head_addresses = set(base.addresses()), set(head.addresses())

    def other(key: tuple[str, str], statuses: dict[tuple[str, str], str], addresses: set[str]) -> str:
        if key in statuses:
            return statuses[key]
        return "not applicable" if key[1] in addresses else "absent"

    new = [PolicyChange(r, other(k, base_status, base_addresses)) for k, r in head_fail.items() if k not in base_fail]
    resolved = [PolicyChange(r, other(k, head_status, head_addresses))
                for k, r in base_fail.items() if k not in head_fail]
    return new, resolved, len(base_fail.keys() & head_fail.keys())


def _statuses(report: PolicyReport | None) -> dict[tuple[str, str], str]:
    return {(r.policy.id, r.address): r.status for r in report.results} if report is not None else {}


def _failing(report: PolicyReport | None) -> dict[tuple[str, str], PolicyResult]:
    return {(r.policy.id, r.address): r for r in report.failures} if report is not None else {}


def _links(*graphs: Graph | None) -> list[tuple[str, str]]:
    """Dependencies between resources (not steps) in either graph."""
    links: set[tuple[str, str]] = set()
    for graph in graphs:
        if graph is None:
            continue
        for a, b in graph.dag.edges:
            source, target = a.split("/", 1)[0], b.split("/", 1)[0]
            if source != target:
                links.add((source, target))
    return sorted(links)
