"""User code is contained: nothing it starts outlives its task, nothing it writes into the repository or into
mlops' own files (the artifact store's objects, ``.mlops/``) passes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pygit2
import pytest

from compiler import load_project
from runtime.apply.operations import apply_project, opened

PIPELINE = '''
import os
import tempfile
import time
from pathlib import Path


def spawn_daemon(ctx):
    """Double-fork a daemon in a session of its own, as a careless trainer's helper would."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            Path(ctx.params["pid_file"]).write_text(str(os.getpid()))
            time.sleep(300)
            os._exit(0)
        os._exit(0)
    deadline = time.time() + 30
    while not Path(ctx.params["pid_file"]).exists() and time.time() < deadline:
        time.sleep(0.05)
    (ctx.output_dir / "out.txt").write_text("ok")


def write_into_repo(ctx):
    Path(ctx.params["repo"], "leak.txt").write_text("not an output")
    (ctx.output_dir / "out.txt").write_text("ok")


def tamper_input(ctx):
    """Rewrite the snapshot it reads, in place in the artifact store."""
    for path in ctx.inputs.values():
        os.chmod(path, 0o644)
        Path(path).write_text("tampered")
    (ctx.output_dir / "out.txt").write_text("ok")


def write_into_mlops(ctx):
    Path(ctx.params["repo"], ".mlops", "cluster.json").write_text('{"address": "203.0.113.9:6379"}')
    (ctx.output_dir / "out.txt").write_text("ok")


def use_tempfile(ctx):
    handle, name = tempfile.mkstemp()
    os.close(handle)
    (ctx.output_dir / "out.txt").write_text(name)
'''


def _repo(tmp_path: Path, make_project: Any, transform: str, params: dict[str, Any]) -> Path:
    spec = {"apiVersion": "mlops/v1", "project": "contained", "datasets": {
        "raw": {"path": "data/raw.csv"},
        "made": {"from": ["raw"], "transform": f"pipeline:{transform}", "params": params}}}
    path = make_project(tmp_path, spec, files={"data/raw.csv": "x\n1\n", ".gitignore": ".mlops/\n__pycache__/\n"},
                        pipeline=PIPELINE, git=False)
    repository = pygit2.init_repository(str(tmp_path), initial_head="main")
    repository.index.add_all()
    repository.index.write()
    signature = pygit2.Signature("Test", "test@example.com")
    repository.create_commit("HEAD", signature, signature, "project", repository.index.write_tree(), [])
    return path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_daemon_forked_by_user_code_does_not_outlive_its_task(tmp_path: Path, make_project: Any) -> None:
    pid_file = tmp_path.parent / f"{tmp_path.name}-daemon.pid"
    project = load_project(_repo(tmp_path / "repo", make_project, "spawn_daemon", {"pid_file": str(pid_file)}))
    outcome = apply_project(project)
    assert outcome.result.outcomes["datasets.made/transform"].status == "succeeded", outcome.result.outcomes
    pid = int(pid_file.read_text())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    try:
        assert not _alive(pid), f"the daemon {pid} forked by the transform outlived its task"
    finally:
        if _alive(pid):
            os.kill(pid, 9)


def test_a_task_that_writes_into_the_repository_fails_naming_the_file(tmp_path: Path, make_project: Any) -> None:
    repo = tmp_path / "repo"
    project = load_project(_repo(repo, make_project, "write_into_repo", {"repo": str(repo)}))
    outcome = apply_project(project)
    failed = outcome.result.outcomes["datasets.made/transform"]
    assert failed.status == "failed"
    assert failed.message == "ContainmentError: wrote into the repository: leak.txt (a task writes only into " \
                             "ctx.output_dir)"
    with opened(project) as (_, store):
        assert store.latest_result("datasets.made/transform") is None  # nothing recorded as its output


def test_a_task_that_rewrites_an_object_of_the_artifact_store_fails_naming_it(
        tmp_path: Path, make_project: Any) -> None:
    repo = tmp_path / "repo"
    project = load_project(_repo(repo, make_project, "tamper_input", {}))
    outcome = apply_project(project)
    failed = outcome.result.outcomes["datasets.made/transform"]
    assert failed.status == "failed", outcome.result.outcomes
    assert failed.message.startswith("ContainmentError: touched mlops' own files: changed .mlops/artifacts/objects/")
    assert failed.message.endswith("(a task writes only into ctx.output_dir)")
    with opened(project) as (_, store):
        assert store.latest_result("datasets.made/transform") is None


def test_a_task_that_writes_into_the_mlops_folder_fails_naming_the_file(tmp_path: Path, make_project: Any) -> None:
    repo = tmp_path / "repo"
    project = load_project(_repo(repo, make_project, "write_into_mlops", {"repo": str(repo)}))
    outcome = apply_project(project)
    failed = outcome.result.outcomes["datasets.made/transform"]
    assert failed.status == "failed", outcome.result.outcomes
    assert failed.message == "ContainmentError: touched mlops' own files: created .mlops/cluster.json (a task " \
                             "writes only into ctx.output_dir)"


def test_a_tasks_temporary_files_go_to_a_private_folder_removed_afterwards(
        tmp_path: Path, make_project: Any) -> None:
    from runtime.artifacts.store import ArtifactStore
    from runtime.workspace import Workspace

    project = load_project(_repo(tmp_path / "repo", make_project, "use_tempfile", {}))
    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        result = store.latest_result("datasets.made/transform")
    assert result is not None
    tree = ArtifactStore(Workspace.of(project).artifact_root).local_path(result.outputs["artifact"])
    assert tree is not None
    name = Path(tree, "out.txt").read_text()
    assert "/mlops-tmp-" in name and not Path(name).exists()


def test_a_killed_workers_private_temp_folder_is_removed_by_the_next_workers_first_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import tempfile

    from runtime.compute.containment import PRIVATE_TMP_PREFIX, contained

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a worker killed in its task: its folder stays behind
    orphan = root / f"{PRIVATE_TMP_PREFIX}{gone.pid}-k1ll3d"
    (orphan / "sub").mkdir(parents=True)
    (orphan / "sub" / "half-written.bin").write_bytes(b"x" * 1024)
    running = root / f"{PRIVATE_TMP_PREFIX}{os.getppid()}-busy"  # a live worker's task: left alone
    running.mkdir()
    unrelated = root / "mlops-tmp-legacy"
    unrelated.mkdir()
    with contained(str(tmp_path)):
        inside = Path(tempfile.gettempdir())
        assert inside.name.startswith(f"{PRIVATE_TMP_PREFIX}{os.getpid()}-")
    assert not orphan.exists() and not inside.exists()
    assert running.is_dir() and unrelated.is_dir()
