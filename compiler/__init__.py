"""The mlops compiler: ``mlops.yaml`` -> validated, policy-checked graph and Terraform.

A thin facade over the passes (load -> parse -> resolve -> policies -> graph -> terraform)::

    project = load_project("mlops.yaml")
    report = check_policies(project)
    graph = build_graph(project)

The compiler never imports the runtime.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compiler.errors import Diagnostic, MlopsError, Position
    from compiler.graph import Graph, Node, build_graph
    from compiler.load import Document
    from compiler.policy.evaluate import PolicyReport, PolicyResult
    from compiler.resolve import Project
    from compiler.spec import Spec

__all__ = [
    "Diagnostic", "Document", "Graph", "MlopsError", "Node", "PolicyReport", "PolicyResult", "Position",
    "Project", "Spec", "build_graph", "check_policies", "load_project", "policy_dirs_for",
]

_HOMES = {"Diagnostic": "compiler.errors", "MlopsError": "compiler.errors", "Position": "compiler.errors",
          "Graph": "compiler.graph", "Node": "compiler.graph", "build_graph": "compiler.graph",
          "Document": "compiler.load", "PolicyReport": "compiler.policy.evaluate",
          "PolicyResult": "compiler.policy.evaluate", "Project": "compiler.resolve", "Spec": "compiler.spec"}
"""Where each name of the facade lives. They are imported when first asked for, so that a module of a pass
(``compiler.errors``, ``compiler.content_hash``) can be imported alone: a Ray worker that only hashes files
does not pay for the graph (networkx) and the spec's models (pydantic)."""


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")


def load_project(spec_path: str | Path, display_name: str | None = None) -> Project:
    """Load, parse and resolve one spec file; raises :class:`MlopsError` with positioned diagnostics."""
    from compiler.load import load_file, paused_gc
    from compiler.parse import parse
    from compiler.resolve import resolve

    path = Path(spec_path)
    with paused_gc():
        document = load_file(path, display_name or str(spec_path))
        spec = parse(document)
        return resolve(spec, document, path)


def policy_dirs_for(project: Project, extra: list[Path] | None = None) -> list[Path]:
    """The project's own pack folders: ``policies/`` next to the spec, plus ``--policies`` folders."""
    return [project.spec_path.parent / "policies", *(extra or [])]


def check_policies(project: Project, extra_dirs: list[Path] | None = None) -> PolicyReport:
    """Evaluate ``baseline``, the project's frameworks and its own packs against its views."""
    from compiler.load import paused_gc
    from compiler.policy.evaluate import evaluate
    from compiler.policy.packs import discover, select

    packs = discover(policy_dirs_for(project, extra_dirs))
    chosen = select(packs, project.spec.compliance.frameworks,
                    project.position("compliance", "frameworks") if project.spec.compliance.frameworks else None)
    with paused_gc():
        return evaluate(project, chosen)
