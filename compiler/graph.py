"""Build the dependency graph of a project: a networkx DAG of the steps the reconciler runs.

Nodes are dataset snapshots, transforms, training trials, trial selection, evaluation, gates,
deployments and monitors. Each node's fingerprint hashes its own normalized config, its
upstream fingerprints, the source of its callable's module file and, for snapshots, the content
hash of the data; so reformatting YAML changes nothing, and changing one param changes exactly
that node and what is downstream of it.

The graph is built by the small transformers listed in ``BUILDERS``, run in order, then
fingerprinted in topological order and checked to be acyclic.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import networkx as nx

from compiler.content_hash import PathHasher, canonical_json, hash_file, hash_path, hash_value
from compiler.errors import ResolveError
from compiler.load import paused_gc
from compiler.resolve import Project
from compiler.spec import Model

NODE_KINDS = ("snapshot", "transform", "trial", "select", "evaluate", "gate", "deploy", "monitor")


@dataclass
class Node:
    """One step of the graph. ``config`` is what the step's fingerprint covers besides its inputs."""

    id: str
    kind: str
    address: str
    config: dict[str, Any]
    code: str | None = None
    """Path of the callable's module file, relative to the repository root."""
    code_hash: str | None = None
    data_hash: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    @property
    def name(self) -> str:
        """The resource's name: ``churn`` for a node of ``models.churn``."""
        return self.address.split(".", 1)[1]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "address": self.address,
                               "fingerprint": self.fingerprint, "config": self.config}
        if self.code is not None:
            out["code"] = {"path": self.code, "hash": self.code_hash}
        if self.data_hash is not None:
            out["data_hash"] = self.data_hash
        if self.resources:
            out["resources"] = self.resources
        return out


class Graph:
    """The DAG (node ids as networkx nodes, :class:`Node` under the ``node`` attribute).

    A built graph is not changed afterwards, so its order and address index are computed once.
    """

    def __init__(self, dag: nx.DiGraph) -> None:
        self.dag = dag

    def node(self, node_id: str) -> Node:
        node: Node = self.dag.nodes[node_id]["node"]
        return node

    @cached_property
    def _order(self) -> list[Node]:
        return [self.node(n) for n in nx.lexicographical_topological_sort(self.dag)]

    @cached_property
    def _by_address(self) -> dict[str, list[Node]]:
        index: dict[str, list[Node]] = {}
        for node in self._order:
            index.setdefault(node.address, []).append(node)
        return index

    def nodes(self) -> list[Node]:
        """Every node in a stable topological order."""
        return list(self._order)

    def by_address(self, address: str) -> list[Node]:
        return list(self._by_address.get(address, []))

    def downstream(self, node_id: str) -> set[str]:
        return set(nx.descendants(self.dag, node_id))

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [n.to_json() for n in self._order],
                "edges": sorted([a, b] for a, b in self.dag.edges)}


class _Builder:
    """Shared state of the transformers: the DAG, the project and the hashers."""

    def __init__(self, project: Project, data_hasher: PathHasher) -> None:
        self.project = project
        self.dag = nx.DiGraph()
        self.data_hasher = data_hasher
        self._code_hashes: dict[Path, str] = {}
        self.output_of: dict[str, str] = {}
        """address -> the node whose result stands for that resource (a dataset's or model's final step)."""

    def add(self, node: Node, upstream: list[str]) -> Node:
        self.dag.add_node(node.id, node=node)
        for parent in upstream:
            self.dag.add_edge(parent, node.id)
        return node

    def code(self, target: str) -> tuple[str, str]:
        path = self.project.callables[target]
        if path not in self._code_hashes:
            self._code_hashes[path] = hash_file(path)
        return path.relative_to(self.project.root).as_posix(), self._code_hashes[path]


def _add_datasets(b: _Builder) -> None:
    """A snapshot per source dataset, a transform per derived one (in derivation order)."""
    spec = b.project.spec
    order = sorted(spec.datasets, key=lambda n: len(b.project.upstream[n]))
    for name in order:
        dataset = spec.datasets[name]
        address = f"datasets.{name}"
        if dataset.path is not None:
            path = b.project.dataset_path(name)
            form = dataset.resolved_format() or ("dir" if path.is_dir() else None)
            config: dict[str, Any] = {"path": dataset.path, "format": form, "schema": dataset.schema_}
            node = Node(f"{address}/snapshot", "snapshot", address, config, data_hash=b.data_hasher(path))
            b.output_of[address] = b.add(node, []).id
    for name in order:
        dataset = spec.datasets[name]
        if dataset.path is not None:
            continue
        address = f"datasets.{name}"
        assert dataset.transform is not None and dataset.from_ is not None
        code, code_hash = b.code(dataset.transform)
        config = {"transform": dataset.transform, "from": dataset.from_, "params": dataset.params,
                  "format": dataset.format, "schema": dataset.schema_}
        node = Node(f"{address}/transform", "transform", address, config, code, code_hash,
                    resources=dataset.resources.model_dump(mode="json"))
        b.output_of[address] = b.add(node, [_dataset_node(b, d) for d in dataset.from_]).id


def _dataset_node(b: _Builder, name: str) -> str:
    return b.output_of[f"datasets.{name}"]


def trial_points(model: Model) -> list[dict[str, Any]]:
    """The sweep's grid points (one empty point without a sweep), in a stable order."""
    if not model.sweep:
        return [{}]
    keys = sorted(model.sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(model.sweep[k] for k in keys))]


def trial_id(address: str, point: dict[str, Any]) -> str:
    """``models.churn/train[lr=0.01]`` (``models.churn/train`` without a sweep)."""
    if not point:
        return f"{address}/train"
    inner = ",".join(f"{k}={canonical_json(v).strip(chr(34))}" for k, v in sorted(point.items()))
    return f"{address}/train[{inner}]"


def _add_models(b: _Builder) -> None:
    """Trials (one per sweep point), a selection when sweeping, and an evaluation when declared."""
    for name, model in b.project.spec.models.items():
        address = f"models.{name}"
        code, code_hash = b.code(model.train)
        data_nodes = [_dataset_node(b, d) for d in dict.fromkeys(model.data.values())]
        resources = model.resources.model_dump(mode="json")
        trials = []
        for point in trial_points(model):
            config = {"train": model.train, "params": {**model.params, **point}, "seed": model.seed,
                      "data": model.data, "workers": model.resources.workers}
            node = Node(trial_id(address, point), "trial", address, config, code, code_hash, resources=resources)
            trials.append(b.add(node, data_nodes).id)
        final = trials[0]
        if model.sweep:
            assert model.objective is not None
            config = {"objective": model.objective.model_dump(mode="json")}
            final = b.add(Node(f"{address}/select", "select", address, config), trials).id
        if model.evaluate:
            eval_code, eval_hash = b.code(model.evaluate)
            config = {"evaluate": model.evaluate, "data": model.data}
            node = Node(f"{address}/evaluate", "evaluate", address, config, eval_code, eval_hash, resources=resources)
            final = b.add(node, [final, *data_nodes]).id
        b.output_of[address] = final


def _add_gates(b: _Builder) -> None:
    for name, gate in b.project.spec.gates.items():
        address = f"gates.{name}"
        config = {"model": gate.model, "checks": [c.model_dump(mode="json", exclude_none=True) for c in gate.checks],
                  "approvals": gate.approvals.model_dump(mode="json", by_alias=True) if gate.approvals else None}
        b.output_of[address] = b.add(Node(f"{address}/check", "gate", address, config),
                                     [b.output_of[f"models.{gate.model}"]]).id


def _add_deployments(b: _Builder) -> None:
    for name, deployment in b.project.spec.deployments.items():
        address = f"deployments.{name}"
        config = {"model": deployment.model, "gates": deployment.gates, "mode": deployment.mode,
                  "replicas": deployment.replicas, "route": deployment.route or f"/{name}",
                  "input": deployment.input, "version": deployment.version,
                  "resources": deployment.resources.model_dump(mode="json")}
        upstream = [b.output_of[f"models.{deployment.model}"], *(b.output_of[f"gates.{g}"] for g in deployment.gates)]
        if deployment.input:
            upstream.append(_dataset_node(b, deployment.input))
        node = Node(f"{address}/deploy", "deploy", address, config,
                    resources=deployment.resources.model_dump(mode="json"))
        b.output_of[address] = b.add(node, upstream).id


def _add_monitors(b: _Builder) -> None:
    for name, monitor in b.project.spec.monitors.items():
        address = f"monitors.{name}"
        config = {"deployment": monitor.deployment, "reference": monitor.reference, "schedule": monitor.schedule,
                  "checks": [c.model_dump(mode="json") for c in monitor.checks], "on_breach": monitor.on_breach}
        upstream = [b.output_of[f"deployments.{monitor.deployment}"]]
        if monitor.reference:
            upstream.append(_dataset_node(b, monitor.reference))
        b.output_of[address] = b.add(Node(f"{address}/watch", "monitor", address, config), upstream).id


BUILDERS: tuple[Callable[[_Builder], None], ...] = (
    _add_datasets,     # snapshots of source data, then transforms in derivation order
    _add_models,       # trials per sweep point -> select -> evaluate
    _add_gates,        # one check per gate, after its model's final step
    _add_deployments,  # after the model and every gate in front of it
    _add_monitors,     # after the deployment they watch and their reference data
)


def build_graph(project: Project, data_hasher: PathHasher | None = None) -> Graph:
    """Run the builders, check the DAG is acyclic, and fingerprint every node."""
    with paused_gc():
        return _build(project, data_hasher)


def _build(project: Project, data_hasher: PathHasher | None) -> Graph:
    b = _Builder(project, data_hasher or (lambda p: hash_path(p)))
    for builder in BUILDERS:
        builder(b)
    if not nx.is_directed_acyclic_graph(b.dag):  # the builders only add edges forward; this guards them
        cycle = " -> ".join(edge[0] for edge in nx.find_cycle(b.dag))
        raise ResolveError.one(f"dependency cycle: {cycle}")
    for node_id in nx.topological_sort(b.dag):
        node: Node = b.dag.nodes[node_id]["node"]
        upstream = sorted((p, b.dag.nodes[p]["node"].fingerprint) for p in b.dag.predecessors(node_id))
        node.fingerprint = hash_value({"id": node.id, "kind": node.kind, "config": node.config,
                                       "code": node.code_hash, "data": node.data_hash, "upstream": upstream})
    return Graph(b.dag)
