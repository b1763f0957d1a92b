"""Fault injection on a real local Ray: a worker killed mid-task, an artifact write the OS refuses, two
reconcilers on one state.

* A training task SIGKILLs its own Ray worker on its first attempt: Ray retries the task on a new worker
  (``max_retries`` in ``runtime/compute/ray_backend.py``), the node succeeds, the driver records one run.
* A training task's artifact write is refused by the kernel: the task lowers its own process's
  ``RLIMIT_FSIZE`` (ignoring ``SIGXFSZ``), so the artifact store's write of the model gets ``EFBIG`` part
  way, exactly where a full disk gives ``ENOSPC``. The ``mlops apply`` that ran it fails cleanly; the
  state and the store stay consistent; the next apply converges.
* Two ``mlops reconcile`` loops on one state: one applies, the other's tick fails on the state lock,
  backs off, and then finds nothing to do.

The CLIs join this module's Ray cluster (``cluster.address``), so none starts a Ray of its own; the
Ray workers of a CLI's job end with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from compiler.resolve import Project
from runtime.apply.operations import apply_project, opened
from runtime.artifacts.store import ArtifactStore
from runtime.plan.project import plan_project
from runtime.state import audit

ROOT = Path(__file__).resolve().parents[1]

PIPELINE = '''
import os
import resource
import signal
import time
from pathlib import Path

from runtime.context import TrainResult


def build_features(ctx):
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())


def train(ctx):
    p = ctx.params
    with open(p["attempts"], "a") as log:  # one line per attempt: the pid of the worker that ran it
        log.write(f"{os.getpid()}\\n")
    if p.get("die_once") and len(Path(p["attempts"]).read_text().split()) == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-task, before any result
    if p.get("release"):  # block until the test lets the training finish
        deadline = time.time() + 120
        while not Path(p["release"]).exists() and time.time() < deadline:
            time.sleep(0.05)
    model = ctx.output_dir / "model.bin"
    model.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    if p.get("disk_full") and Path(p["disk_full"]).exists():
        # From here on this process cannot make a file larger than 256 KiB: the artifact store's copy of
        # the model fails part way with EFBIG, as it would with ENOSPC on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return TrainResult(model=model, metrics={"auc": 0.9})
'''
MODEL = bytes(range(256)) * 4096
MODEL_URI = "sha256:" + hashlib.sha256(MODEL).hexdigest()
"""What ``train`` stores as its model, and its artifact URI."""


@pytest.fixture(scope="module", autouse=True)
def gcs_address() -> Iterator[str]:
    """This module's local Ray; the CLIs it starts join it."""
    import ray

    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield str(ray.get_runtime_context().gcs_address)
    ray_backend.shutdown()


def spec(params: dict[str, Any], cluster: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "mlops/v1", "project": "faults",
        "datasets": {"raw": {"path": "data/raw.csv"},
                     "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
        "models": {"m": {"train": "pipeline:train", "data": {"train": "features"}, "params": params,
                         "retries": 0, "resources": {"cpus": 1}}},
    }
    if cluster:
        body["cluster"] = {"address": cluster}
    return body


def write(root: Path, make_project: Callable[..., Path], body: dict[str, Any]) -> Project:
    return load_project(make_project(root, body, files={"data/raw.csv": "a,b\n1,2\n"}, pipeline=PIPELINE))


def mlops(project: Project, *args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def runs(project: Project, node: str) -> list[tuple[str, str | None]]:
    """(status, error) of every run of ``node``, oldest first."""
    with opened(project) as (_, store):
        return [(r.status, r.error) for r in reversed(store.list_runs(limit=1000)) if r.node_id == node]


def actions(project: Project) -> set[str]:
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    return {c.action for c in plan.resource_changes}


def assert_store_consistent(project: Project) -> None:
    """Every object hashes to its name, no temporary file is left, every artifact the state names is whole,
    and the audit trail verifies."""
    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        objects = Path(workspace.artifact_root) / "objects"
        assert not list(objects.glob(".tmp-*")), "a failed write left its temporary file"
        stored = list(objects.glob("??/*"))
        assert stored
        for path in stored:
            artifacts.verify(f"sha256:{path.parent.name}{path.name}")
        for uri in store.named_artifacts():
            assert artifacts.exists(uri), uri
            artifacts.verify(uri)
        assert audit.verify(store) == []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- a Ray worker killed mid-task ------------------------------------------------------------------------


def test_a_worker_killed_mid_task_is_retried_by_ray_and_the_node_succeeds(
        tmp_path: Path, make_project: Callable[..., Path]) -> None:
    attempts = tmp_path / "attempts.txt"
    project = write(tmp_path / "p", make_project, spec({"attempts": str(attempts), "die_once": True}))
    outcome = apply_project(project)
    assert outcome.result.ok, outcome.result.outcomes
    pids = [int(line) for line in attempts.read_text().split()]
    assert len(pids) == 2 and pids[0] != pids[1], pids  # killed once, run again in another worker ...
    assert not alive(pids[0])  # ... the first one really died
    assert runs(project, "models.m/train") == [("succeeded", None)]  # retried by Ray: retries is 0 here
    with opened(project) as (_, store):
        assert [v.version for v in store.model_versions("m")] == [1]
    assert actions(project) == {"no-op"}
    assert_store_consistent(project)


# --- an artifact write the kernel refuses ----------------------------------------------------------------


def test_an_artifact_write_refused_by_the_os_fails_cleanly_and_the_next_apply_converges(
        tmp_path: Path, make_project: Callable[..., Path], gcs_address: str) -> None:
    full = tmp_path / "disk-full"
    full.touch()
    params = {"attempts": str(tmp_path / "attempts.txt"), "disk_full": str(full)}
    project = write(tmp_path / "p", make_project, spec(params, gcs_address))

    failed = subprocess.run(mlops(project, "apply"), cwd=project.root, env=env(), capture_output=True, text=True,
                            timeout=300)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1, output
    assert "Traceback" not in output
    assert re.search(r"models\.m/train: OSError: \[Errno 27\] File too large: '[^']+/objects'$", output,
                     re.MULTILINE), output  # the line names the store's folder
    [(status, error)] = runs(project, "models.m/train")
    assert status == "failed" and error is not None and "File too large" in error
    with opened(project) as (workspace, store):
        assert store.latest_result("models.m/train") is None  # no success recorded
        assert store.model_versions("m") == []
        assert store.latest_result("datasets.features/transform") is not None  # what succeeded is kept
        artifacts = ArtifactStore(workspace.artifact_root)
        assert not artifacts.exists(MODEL_URI)  # not under its name, not half-written
    assert_store_consistent(project)

    full.unlink()  # space again
    again = subprocess.run(mlops(project, "apply"), cwd=project.root, env=env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s for s, _ in runs(project, "models.m/train")] == ["failed", "succeeded"]
    assert [s for s, _ in runs(project, "datasets.features/transform")] == ["succeeded"]  # not redone
    with opened(project) as (workspace, store):
        [version] = store.model_versions("m")
        assert version.artifact_uri == MODEL_URI
        assert ArtifactStore(workspace.artifact_root).read_bytes(MODEL_URI) == MODEL
    assert actions(project) == {"no-op"}
    assert_store_consistent(project)


# --- two reconcilers on one state ------------------------------------------------------------------------


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_reconcilers_on_one_state_apply_once_and_the_other_backs_off_on_the_lock(
        tmp_path: Path, make_project: Callable[..., Path], gcs_address: str) -> None:
    attempts, release = tmp_path / "attempts.txt", tmp_path / "release"
    project = write(tmp_path / "p", make_project,
                    spec({"attempts": str(attempts), "release": str(release)}, gcs_address))
    logs = {name: (tmp_path / f"{name}.out", tmp_path / f"{name}.err") for name in ("first", "second")}
    handles = {name: (out.open("w"), err.open("w")) for name, (out, err) in logs.items()}
    first = subprocess.Popen(mlops(project, "--json", "reconcile"), cwd=project.root, env=env(),
                             stdout=handles["first"][0], stderr=handles["first"][1])
    second = None
    try:
        wait_for(attempts.exists, "the first reconciler to be training")
        second = subprocess.Popen(mlops(project, "--json", "reconcile", "--watch", "--interval", "1s"),
                                  cwd=project.root, env=env(), stdout=handles["second"][0],
                                  stderr=handles["second"][1])
        wait_for(lambda: bool(json_lines(logs["second"][0])), "the second reconciler's first tick")
        release.touch()  # let the first one's training finish
        assert first.wait(120) == 0, logs["first"][1].read_text()[-3000:]
        wait_for(lambda: any(t["ok"] for t in json_lines(logs["second"][0])), "a good tick of the second")
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, logs["second"][1].read_text()[-3000:]
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        for out, err in handles.values():
            out.close()
            err.close()

    [applied] = json_lines(logs["first"][0])
    assert applied["ok"] and applied["applied"]["outcomes"]["models.m/train"]["status"] == "succeeded"
    ticks = json_lines(logs["second"][0])
    refused = ticks[0]
    assert not refused["ok"] and "Error acquiring the state lock" in refused["error"], refused
    assert refused["applied"] is None
    good = next(t for t in ticks if t["ok"])
    assert good["applied"] is None and good["changes"] == {}  # nothing left to do: it applies nothing
    assert all(t["applied"] is None for t in ticks)
    assert len(attempts.read_text().split()) == 1  # trained once
    assert runs(project, "models.m/train") == [("succeeded", None)]
    with opened(project) as (_, store):
        assert [r.action for r in audit.log(store)] == ["apply"]
        status = store.reconciler_status()
        assert status.error is None and status.errors == 0
    assert_store_consistent(project)
