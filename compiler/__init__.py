"""The mlops compiler: ``mlops.yaml`` -> validated, policy-checked graph and Terraform.

A thin facade over the passes (load -> parse -> resolve -> policies -> graph -> terraform)::

    project = load_project("mlops.yaml")
    report = check_policies(project)
    graph = build_graph(project)

The compiler never imports the runtime.
"""

from __future__ import annotations

from pathlib import Path

from compiler.errors import Diagnostic, MlopsError, Position
from compiler.graph import Graph, Node, build_graph
from compiler.load import Document, load_file, paused_gc
from compiler.parse import parse
from compiler.policy.evaluate import PolicyReport, PolicyResult, evaluate
from compiler.policy.packs import discover, select
from compiler.resolve import Project, resolve
from compiler.spec import Spec

__all__ = [
    "Diagnostic", "Document", "Graph", "MlopsError", "Node", "PolicyReport", "PolicyResult", "Position",
    "Project", "Spec", "build_graph", "check_policies", "load_project", "policy_dirs_for",
]


def load_project(spec_path: str | Path, display_name: str | None = None) -> Project:
    """Load, parse and resolve one spec file; raises :class:`MlopsError` with positioned diagnostics."""
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
    packs = discover(policy_dirs_for(project, extra_dirs))
    chosen = select(packs, project.spec.compliance.frameworks,
                    project.position("compliance", "frameworks") if project.spec.compliance.frameworks else None)
    with paused_gc():
        return evaluate(project, chosen)
