"""The files ``mlops compile --out DIR`` writes (compiler/emit.py): where, how and with which mode."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from compiler import build_graph, load_project
from compiler.emit import emit
from compiler.policy.evaluate import PolicyReport
from compiler.resolve import Project


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _local_project(root: Path) -> Project:
    (root / "data").mkdir(parents=True)
    (root / "data" / "rows.csv").write_text("a,b\n1,2\n")
    (root / "mlops.yaml").write_text(yaml.safe_dump({
        "apiVersion": "mlops/v1", "project": "modes",
        "datasets": {"rows": {"path": "data/rows.csv", "schema": {"a": "int", "b": "int"}}}}))
    return load_project(root / "mlops.yaml")


def test_graph_and_policy_report_are_written_with_the_umask_mode_atomically(tmp_path: Path, umask_022: None) -> None:
    project = _local_project(tmp_path / "spec")
    out = tmp_path / "out"
    outputs = emit(project, PolicyReport(), build_graph(project), out)
    for path in (outputs.graph, outputs.policy_report):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path, oct(path.stat().st_mode))
        json.loads(path.read_text())
    assert sorted(p.name for p in out.iterdir()) == ["graph.json", "policy-report.json", "terraform"]  # no temp left

    # a second compile replaces the files (a new inode each: readers never see half a file)
    before = outputs.graph.stat().st_ino
    os.umask(0o027)
    again = emit(project, PolicyReport(), build_graph(project), out)
    assert again.graph.stat().st_ino != before
    assert stat.S_IMODE(again.graph.stat().st_mode) == 0o640
