"""Crash safety and concurrency of apply: kill -9 mid-apply, two applies at once, approvals during an apply.

The applies under test run as real ``mlops`` processes (``python -m runtime.cli.main``), each in its own
session so that everything it started (its embedded Ray: gcs, raylet, workers, agents) can be found and
killed afterwards: a SIGKILL of the driver takes gcs, raylet and the workers down with it, but Ray's
dashboard and runtime-env agents outlive it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from compiler.resolve import Project
from runtime.apply.operations import ApplyOutcome, apply_project, opened
from runtime.artifacts.store import ArtifactStore
from runtime.compute.cluster import members
from runtime.plan.project import plan_project
from runtime.state import audit

PIPELINE = '''
import time

from runtime.context import TrainResult


def build_features(ctx):
    time.sleep(float(ctx.params.get("sleep", 0)))
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())


def train(ctx):
    time.sleep(float(ctx.params.get("sleep", 0)))
    for step in range(3):
        ctx.log_metric("loss", 1.0 / (step + 1))
    return TrainResult(model={"w": float(ctx.params["lr"])}, metrics={"auc": 0.9})
'''


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


# --- helpers ---------------------------------------------------------------------------------------


def model(lr: float, sleep: float) -> dict[str, Any]:
    return {"train": "pipeline:train", "data": {"train": "features"}, "params": {"lr": lr, "sleep": sleep},
            "resources": {"cpus": 1}}


def spec(models: dict[str, Any], gates: dict[str, Any] | None = None, transform_sleep: float = 0) -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": "crash",
            "datasets": {"raw": {"path": "data/raw.csv"},
                         "features": {"from": ["raw"], "transform": "pipeline:build_features",
                                      "params": {"sleep": transform_sleep}}},
            "models": models, "gates": gates or {}}


def write(root: Path, make_project: Any, body: dict[str, Any]) -> Project:
    return load_project(make_project(root, body, files={"data/raw.csv": "a,b\n1,2\n"}, pipeline=PIPELINE))


def cli_env() -> dict[str, str]:
    """This process's environment without the Ray settings the test's own cluster put there; a CLI that
    needs Ray starts its own (``RAY_ADDRESS=local``), never joining this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}


def mlops(project: Project, *args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), *args]



def kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process, then everything left in its session (its process group and any stragglers)."""
    if process.poll() is None:
        process.kill()
    process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.time() + 15
    while (left := members(process.pid)) and time.time() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    assert not members(process.pid), "processes of the killed apply outlived it"


class Cli:
    """An ``mlops`` command running in its own session; its stdout and stderr go to files."""

    def __init__(self, command: list[str], cwd: Path, logs: Path) -> None:
        self.stdout, self.stderr = logs.with_suffix(".out"), logs.with_suffix(".err")
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(command, cwd=cwd, env=cli_env(), stdout=out, stderr=err,
                                            start_new_session=True)

    def output(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[list[str], Path], Cli]]:
    """Start ``mlops`` commands; every one and all it started are killed at the end of the test."""
    started: list[Cli] = []

    def start(command: list[str], cwd: Path) -> Cli:
        started.append(Cli(command, cwd, tmp_path / f"cli-{len(started)}"))
        return started[-1]

    yield start
    for cli in started:
        kill_session(cli.process)


def query(project: Project, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the state database as it is on disk now (a separate reader: WAL lets it read during writes)."""
    path = project.root / ".mlops" / "state.db"
    if not path.exists():
        return []
    connection = sqlite3.connect(path, timeout=10)
    try:
        return connection.execute(sql).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        connection.close()


def wait_for(condition: Callable[[], bool], cli: Cli | None, what: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while not condition():
        if cli is not None and cli.process.poll() is not None:
            pytest.fail(f"the apply exited ({cli.process.returncode}) before {what}:\n{cli.output()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def finished(project: Project) -> dict[str, tuple[int, int]]:
    """Each node with a recorded success -> (its number of results, its number of runs)."""
    results = dict(query(project, "SELECT node_id, COUNT(*) FROM node_results WHERE status = 'succeeded'"
                                  " GROUP BY node_id"))
    runs = dict(query(project, "SELECT node_id, COUNT(*) FROM runs GROUP BY node_id"))
    return {node: (count, runs.get(node, 0)) for node, count in results.items()}


def assert_not_run_again(before: dict[str, tuple[int, int]], project: Project) -> None:
    now = finished(project)
    again = {node: (counts, now.get(node)) for node, counts in before.items() if now.get(node) != counts}
    assert not again, f"finished nodes ran again (results, runs) before -> after: {again}"


def assert_artifacts_whole(project: Project) -> None:
    """Every object in the store hashes to its name, and every artifact the state names is complete."""
    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        objects = [p for p in Path(workspace.artifact_root, "objects").glob("??/*")]
        assert objects
        for path in objects:
            artifacts.verify(f"sha256:{path.parent.name}{path.name}")
        for uri in store.named_artifacts():
            assert artifacts.exists(uri), uri
            artifacts.verify(uri)


def actions(project: Project) -> set[str]:
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    return {c.action for c in plan.resource_changes}


def in_background(project: Project) -> tuple[threading.Thread, list[ApplyOutcome]]:
    outcomes: list[ApplyOutcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(apply_project(project)), daemon=True)
    thread.start()
    return thread, outcomes


# --- kill -9 ---------------------------------------------------------------------------------------


def test_kill_9_at_two_moments_then_apply_converges_without_redoing_finished_work(
        tmp_path: Path, make_project: Any, spawn: Callable[[list[str], Path], Cli]) -> None:
    models = {f"m{i}": model(i / 10, 1.5) for i in range(4)}
    gates = {"quality": {"model": "m0", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]}}
    project = write(tmp_path, make_project, spec(models, gates, transform_sleep=1.0))
    trials = "SELECT COUNT(*) FROM node_results WHERE kind = 'trial'"

    # 1: killed while its first Ray task (the transform) runs, before any remote result
    first = spawn(mlops(project, "apply"), project.root)
    wait_for(lambda: bool(query(project, "SELECT 1 FROM runs")), first, "a run started")
    kill_session(first.process)
    after_first = finished(project)
    assert not any(node.startswith("models.") for node in after_first)
    assert_artifacts_whole(project)

    # 2: killed after two trials were recorded, with others still running
    second = spawn(mlops(project, "apply"), project.root)
    wait_for(lambda: query(project, trials)[0][0] >= 2, second, "two trials recorded")
    kill_session(second.process)
    after_second = finished(project)
    assert_not_run_again(after_first, project)
    assert_artifacts_whole(project)

    # then an apply in this process converges, and runs nothing that had finished
    outcome = apply_project(project)
    assert outcome.result.ok, outcome.result.outcomes
    assert_not_run_again(after_second, project)
    assert actions(project) == {"no-op"}
    assert_artifacts_whole(project)
    with opened(project) as (_, store):
        for name in models:  # each model has one version: none lost, none made twice by a re-run
            assert [v.version for v in store.model_versions(name)] == [1], name
        runs = store.list_runs(limit=1000)
        assert not [r for r in runs if r.status == "running"]
        interrupted = [r for r in runs if r.error and r.error.startswith("interrupted")]
        assert interrupted and all(r.status == "failed" for r in interrupted)  # killed mid-run, closed after
        remote = {"datasets.features/transform", *(f"models.{name}/train" for name in models)}
        assert Counter(r.node_id for r in runs if r.status == "succeeded") == dict.fromkeys(remote, 1)
        assert audit.verify(store) == []


# --- the state lock --------------------------------------------------------------------------------


def test_a_second_apply_fails_at_once_on_the_lock_or_waits_for_it_with_lock_timeout(
        tmp_path: Path, make_project: Any, spawn: Callable[[list[str], Path], Cli]) -> None:
    project = write(tmp_path, make_project, spec({"slow": model(0.1, 10)}))
    thread, outcomes = in_background(project)
    wait_for(lambda: bool(query(project, "SELECT 1 FROM runs WHERE node_id = 'models.slow/train'")), None,
             "the first apply to be training")
    waiting = spawn(mlops(project, "--json", "apply", "--lock-timeout", "60s"), project.root)
    refused = subprocess.run(mlops(project, "apply"), cwd=project.root, env=cli_env(), capture_output=True,
                             text=True, timeout=60)
    assert thread.is_alive(), "the first apply ended before the second was refused: this proves nothing"
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Error acquiring the state lock" in refused.stderr
    assert f"PID:       {os.getpid()}" in refused.stderr and f"Host:      {socket.gethostname()}" in refused.stderr
    assert "Operation: apply" in refused.stderr
    thread.join(60)
    assert outcomes and outcomes[0].result.ok
    assert waiting.process.wait(90) == 0, waiting.output()[-3000:]
    report = json.loads(waiting.stdout.read_text())
    assert report["ok"] and report["seconds"] >= 1.0  # it waited for the lock ...
    assert {c["action"] for c in report["plan"]["resource_changes"]} == {"no-op"}  # ... then planned anew
    with opened(project) as (_, store):
        assert len(store.list_runs("models.slow")) == 1
        assert [r.action for r in audit.log(store)] == ["apply", "apply"]
        assert audit.verify(store) == []


# --- approvals during an apply ---------------------------------------------------------------------


def test_an_approval_recorded_during_an_apply_is_kept_and_used_by_the_next_apply(
        tmp_path: Path, make_project: Any) -> None:
    gates = {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                         "approvals": {"required": 1, "from": ["team:risk"]}}}
    project = write(tmp_path, make_project, spec({"churn": model(0.1, 0), "other": model(0.2, 0)}, gates))
    first = apply_project(project)
    assert first.result.outcomes["gates.quality/check"].status == "blocked"

    changed = write(tmp_path, make_project, spec({"churn": model(0.1, 0), "other": model(0.3, 8)}, gates))
    thread, outcomes = in_background(changed)  # retrains `other` for 8 s
    wait_for(lambda: len(query(project, "SELECT 1 FROM runs WHERE node_id = 'models.other/train'")) == 2, None,
             "the second apply to be training")
    approved = subprocess.run(mlops(project, "approve", "quality", "--version", "1", "--by", "team:risk"),
                              cwd=project.root, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert approved.returncode == 0, approved.stderr
    assert thread.is_alive(), "the apply ended before the approval: this proves nothing"
    thread.join(60)
    assert outcomes and outcomes[0].result.outcomes["models.other/train"].status == "succeeded"

    with opened(changed) as (_, store):
        assert [a.approver for a in store.approvals("quality", "churn", 1)] == ["team:risk"]
        trail = audit.log(store)
        assert [r.action for r in trail if r.action != "decide"] == ["apply", "approve", "apply"]
        assert [r.payload["status"] for r in trail if r.action == "decide"][0] == "awaiting_approval"
    third = apply_project(changed)
    assert third.result.outcomes["gates.quality/check"].status == "succeeded"
    with opened(changed) as (_, store):
        decision = store.latest_gate_decision("quality", "churn", 1)
        assert decision is not None and decision.status == "passed"
        version = store.get_model_version("churn", 1)
        assert version is not None and version.status == "approved"
        assert audit.verify(store) == []
    assert actions(changed) == {"no-op"}
