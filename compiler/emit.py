"""Write the compiler's outputs: ``graph.json``, ``terraform/`` and ``policy-report.json`` (``mlops compile``)."""

from __future__ import annotations

import json
import os
import secrets
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
    """Write a temporary file next to ``path`` and rename it over ``path``.

    The temporary file is created with mode 0666 less the umask (0644 under umask 022), as any file a
    program writes: ``tempfile.mkstemp`` would make it, and so the output, readable by its owner only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 random names taken
        raise FileExistsError(f"no free temporary name next to {path}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
