"""What a process of the cluster imports when it starts, which every cold apply pays for on each of them: a Ray
worker importing the tasks' entry point, and the embedded head. Neither needs the compiler's graph (networkx)
or the spec's models (pydantic), torch, or Ray Serve; the compiler's facade imports its passes when asked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("networkx", "pydantic", "compiler.spec", "compiler.graph", "torch", "ray.serve")


def imported_by(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", ["runtime.compute.entry", "runtime.compute.head"])
def test_a_cluster_process_imports_nothing_heavy_it_does_not_use(module: str) -> None:
    loaded = imported_by(module)
    assert module in loaded
    heavy = sorted(name for name in HEAVY if name in loaded)
    assert not heavy, heavy


def test_the_compiler_facade_gives_its_names_when_asked() -> None:
    import compiler
    from compiler.resolve import Project

    assert compiler.Project is Project
    assert callable(compiler.build_graph) and callable(compiler.load_project)
    with pytest.raises(AttributeError):
        compiler.not_a_name  # noqa: B018
