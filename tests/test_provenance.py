"""Provenance: every run records the commit it ran from and whether the work tree was dirty; apply
refuses a dirty tree unless ``--allow-dirty``. Real git repositories in temporary directories."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_project

from compiler import load_project
from compiler.errors import MlopsError
from runtime.apply.operations import apply_project
from runtime.provenance import changed_paths, git_state

SPEC = {"apiVersion": "mlops/v1", "project": "prov",
        "datasets": {"raw": {"path": "data/raw.csv"},
                     "features": {"from": ["raw"], "transform": "pipeline:build_features", "params": {"v": 1}}}}


IGNORED = ".mlops/\n__pycache__/\n"
"""What a project's ``.gitignore`` holds: the state and artifacts, and the bytecode its workers write."""


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null",
           "GIT_AUTHOR_NAME": "ML", "GIT_AUTHOR_EMAIL": "ml@example.com",
           "GIT_COMMITTER_NAME": "ML", "GIT_COMMITTER_EMAIL": "ml@example.com"}
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, env=env).stdout.strip()


def committed_project(root: Path) -> Path:
    spec = write_project(root, SPEC, files={"data/raw.csv": "a\n1\n", ".gitignore": IGNORED}, git=False)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    return spec


def runs(root: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(root / ".mlops" / "state.db") as conn:
        return conn.execute("SELECT node_id, git_commit, git_dirty FROM runs ORDER BY started_at").fetchall()


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def test_a_dirty_tree_is_refused_with_one_line_and_nothing_recorded(tmp_path: Path) -> None:
    spec = committed_project(tmp_path)
    (tmp_path / "pipeline.py").write_text((tmp_path / "pipeline.py").read_text() + "\n# edited\n")
    assert git_state(tmp_path)[1] is True
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec), "apply"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "uncommitted changes" in lines[0] and "--allow-dirty" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / ".mlops" / "state.db").exists() or runs(tmp_path) == []


def test_runs_record_the_commit_and_the_dirty_flag(tmp_path: Path) -> None:
    spec = committed_project(tmp_path)
    first = git(tmp_path, "rev-parse", "HEAD")
    assert apply_project(load_project(spec), allow_dirty=False).result.ok
    assert runs(tmp_path) == [("datasets.features/transform", first, 0)]

    spec.write_text(spec.read_text().replace("v: 1", "v: 2"))  # uncommitted: refused, then allowed
    with pytest.raises(Exception, match="uncommitted changes"):
        apply_project(load_project(spec), allow_dirty=False)
    assert apply_project(load_project(spec), allow_dirty=True).result.ok
    assert runs(tmp_path)[-1] == ("datasets.features/transform", first, 1)

    git(tmp_path, "commit", "-q", "-am", "v2")
    spec.write_text(spec.read_text().replace("v: 2", "v: 3"))
    git(tmp_path, "commit", "-q", "-am", "v3")
    third = git(tmp_path, "rev-parse", "HEAD")
    assert apply_project(load_project(spec), allow_dirty=False).result.ok
    assert runs(tmp_path)[-1] == ("datasets.features/transform", third, 0)


def test_untracked_files_make_the_tree_dirty_and_ignored_ones_do_not(tmp_path: Path) -> None:
    committed_project(tmp_path)
    commit = git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / ".mlops").mkdir()
    (tmp_path / ".mlops" / "state.db").write_text("ignored")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "pipeline.cpython-311.pyc").write_bytes(b"ignored")
    assert git_state(tmp_path) == (commit, False)  # ignored files are not changes
    (tmp_path / "helpers.py").write_text("SCALE = 2\n")  # code a run could import, in no commit
    assert git_state(tmp_path) == (commit, True)
    assert changed_paths(tmp_path) == ["helpers.py"]
    (tmp_path / "helpers.py").unlink()
    (tmp_path / "data" / "extra").mkdir()
    (tmp_path / "data" / "extra" / "more.csv").write_text("a\n2\n")  # an untracked folder counts too
    assert git_state(tmp_path) == (commit, True)
    with pytest.raises(MlopsError, match=r"uncommitted changes \(data/extra/\); .* --allow-dirty"):
        apply_project(load_project(tmp_path / "mlops.yaml"), allow_dirty=False)
