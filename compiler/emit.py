"""Write the compiler's outputs: ``graph.json``, ``terraform/`` and ``policy-report.json`` (``mlops compile``)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from compiler.graph import Graph
from compiler.graph_render import render_json
from compiler.policy.evaluate import PolicyReport
from compiler.policy.render import to_json
from compiler.resolve import Project


@dataclass
class CompileOutputs:
    """What ``emit`` wrote."""

    graph: Path
    policy_report: Path
    terraform: list[Path] = field(default_factory=list)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def emit(project: Project, report: PolicyReport, graph: Graph, out_dir: Path) -> CompileOutputs:
    """Write all outputs into ``out_dir``. ``terraform/`` always exists; it holds ``cdk.tf.json`` when the
    project needs cloud resources (a local cluster on local storage needs none)."""
    from compiler.terraform import synthesize  # lazy: it is the only place that starts Node

    # synthesized in place (atomically per file): terraform.tfstate and .terraform/ kept there survive
    (out_dir / "terraform").mkdir(parents=True, exist_ok=True)
    terraform = synthesize(project, out_dir / "terraform")
    graph_path = out_dir / "graph.json"
    _write_atomic(graph_path, render_json(graph))
    report_path = out_dir / "policy-report.json"
    _write_atomic(report_path, json.dumps(to_json(report), indent=2, sort_keys=True) + "\n")
    return CompileOutputs(graph_path, report_path, terraform)
