"""Render a :class:`~compiler.graph.Graph` as mermaid, dot or json (``mlops graph --format``)."""

from __future__ import annotations

import json
from collections.abc import Callable

from compiler.graph import Graph

_SHAPES = {"snapshot": ("[(", ")]"), "transform": ("[/", "/]"), "trial": ("[", "]"), "select": ("{{", "}}"),
           "evaluate": ("[", "]"), "gate": ("{", "}"), "deploy": ("([", "])"), "monitor": ("[[", "]]")}


def _mermaid_id(index: int) -> str:
    return f"n{index}"


def render_mermaid(graph: Graph) -> str:
    """A ``flowchart LR`` with one node per step, labelled by its id."""
    nodes = graph.nodes()
    ids = {node.id: _mermaid_id(i) for i, node in enumerate(nodes)}
    lines = ["flowchart LR"]
    for node in nodes:
        left, right = _SHAPES[node.kind]
        label = node.id.replace('"', "'")
        lines.append(f'  {ids[node.id]}{left}"{label}"{right}')
    for a, b in sorted(graph.dag.edges):
        lines.append(f"  {ids[a]} --> {ids[b]}")
    return "\n".join(lines) + "\n"


def render_dot(graph: Graph) -> str:
    """Graphviz dot, one cluster per resource address."""
    lines = ["digraph mlops {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    by_address: dict[str, list[str]] = {}
    for node in graph.nodes():
        by_address.setdefault(node.address, []).append(node.id)
    for i, (address, node_ids) in enumerate(by_address.items()):
        lines.append(f'  subgraph "cluster_{i}" {{ label="{address}";')
        lines.extend(f'    "{node_id}";' for node_id in node_ids)
        lines.append("  }")
    lines.extend(f'  "{a}" -> "{b}";' for a, b in sorted(graph.dag.edges))
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_json(graph: Graph) -> str:
    """``{"nodes": [...], "edges": [[from, to], ...]}`` (SPEC §3)."""
    return json.dumps(graph.to_json(), indent=2, sort_keys=True) + "\n"


RENDERERS: dict[str, Callable[[Graph], str]] = {"mermaid": render_mermaid, "dot": render_dot, "json": render_json}
