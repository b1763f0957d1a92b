"""Resources are accounted, never waited on in silence: serving's share at plan time, a bounded wait at apply time."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from compiler.errors import MlopsError
from runtime.apply.operations import apply_project, opened
from runtime.compute import sizing
from runtime.plan import feasibility
from runtime.views.status import project_status

SLEEPY = '''
import time

from runtime.context import TrainResult


def train(ctx):
    time.sleep(float(ctx.params.get("sleep", 0)))
    return TrainResult(model={"w": 1.0}, metrics={"auc": 0.9})
'''


def _spec(resources: dict[str, Any], params: dict[str, Any] | None = None, timeout: str = "10m",
          deployments: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": "resources", "datasets": {"raw": {"path": "data/raw.csv"}},
            "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}, "params": params or {},
                             "resources": resources, "retries": 2, "timeout": timeout}},
            "deployments": deployments or {}}


SERVED = {"api": {"model": "m", "replicas": 2, "resources": {"cpus": 1}}}


def test_the_local_cluster_is_sized_for_serving_on_top_of_the_machines_cpus(
        tmp_path: Path, make_project: Any) -> None:
    project = load_project(make_project(tmp_path, _spec({"cpus": 2}, deployments=SERVED),
                                        files={"data/raw.csv": "x\n1\n"}, pipeline=SLEEPY))
    machine = os.cpu_count() or 1
    assert sizing.serving_need(project) == {"CPU": 3.0, "GPU": 0.0}  # 2 replicas and a rollout's extra one
    assert sizing.local_cluster_cpus(project) == machine + 3
    capacity = feasibility.capacity(project)
    assert capacity is not None and capacity.total["CPU"] == machine + 3 and capacity.hosts_serving
    feasibility.check(project, capacity)  # training keeps the machine's CPUs: feasible


def test_training_that_cannot_fit_beside_the_deployments_is_infeasible_naming_what_holds_the_cpus(
        tmp_path: Path, make_project: Any) -> None:
    project = load_project(make_project(tmp_path, _spec({"cpus": 2}, deployments=SERVED),
                                        files={"data/raw.csv": "x\n1\n"}, pipeline=SLEEPY))
    too_small = feasibility.Capacity({"CPU": 4.0, "GPU": 0.0}, "the local Ray cluster", True)
    with pytest.raises(MlopsError) as raised:
        feasibility.check(project, too_small)
    [diagnostic] = raised.value.diagnostics
    assert diagnostic.address == "models.m" and diagnostic.position is not None
    assert "infeasible: asks for 2 CPU(s) but the local Ray cluster has 4" in diagnostic.message
    assert "deployments.api holds 2 (2 replicas × 1)" in diagnostic.message
    assert "a rollout's extra replica needs 1" in diagnostic.message and "leaving 1" in diagnostic.message
    assert "`mlops down`" in diagnostic.message


def test_deployments_wider_than_the_cluster_are_infeasible(tmp_path: Path, make_project: Any) -> None:
    wide = {"api": {"model": "m", "replicas": 4, "resources": {"cpus": 1}}}
    project = load_project(make_project(tmp_path, _spec({"cpus": 1}, deployments=wide),
                                        files={"data/raw.csv": "x\n1\n"}, pipeline=SLEEPY))
    with pytest.raises(MlopsError, match=r"deployments.api: infeasible: 4 replicas × 1 CPU and one more for a "
                                         r"rollout need 5 CPU\(s\) but the Ray cluster at x has 4"):
        feasibility.check(project, feasibility.Capacity({"CPU": 4.0}, "the Ray cluster at x", True))


@pytest.fixture(scope="module")
def two_cpus() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def _hog(cpus: float) -> Any:
    """Something outside the apply holding CPUs (another team's actor, a replica the spec does not know)."""
    import ray

    @ray.remote(num_cpus=cpus)
    class Hog:
        def ping(self) -> int:
            return 1

    hog = Hog.remote()  # type: ignore[attr-defined]
    ray.get(hog.ping.remote(), timeout=60)
    return hog


def test_a_task_the_cluster_has_no_room_for_is_reported_waiting_then_fails_as_never_started(
        tmp_path: Path, make_project: Any, two_cpus: Any) -> None:
    import ray

    project = load_project(make_project(tmp_path, _spec({"cpus": 1}), files={"data/raw.csv": "x\n1\n"},
                                        pipeline=SLEEPY))
    hog = _hog(2)
    events: list[tuple[str, str, str]] = []
    seen_while_waiting: list[Any] = []

    def progress(node_id: str, event: str, detail: str) -> None:
        events.append((node_id, event, detail))
        if event == "waiting":
            with opened(project) as (_, store):
                run = store.list_runs("models.m", limit=1)[0]
                status = next(r for r in project_status(project, store).resources if r.address == "models.m")
            seen_while_waiting.append((run.status, status.health, status.detail))

    try:
        started = time.monotonic()
        outcome = apply_project(project, progress=progress, resource_wait=6)
        took = time.monotonic() - started
    finally:
        ray.kill(hog)
    trial = outcome.result.outcomes["models.m/train"]
    assert trial.status == "failed" and trial.message.startswith("never started: waited")
    assert "asks 1 CPU; 0 of 2 CPU free" in trial.message and "timed out" not in trial.message
    assert took < 60, f"the wait for resources was not bounded: {took:.0f}s"
    waiting = [e for e in events if e[1] == "waiting"]
    assert waiting and waiting[0][0] == "models.m/train" and "0 of 2 CPU free" in waiting[0][2]
    assert seen_while_waiting[0] == ("waiting", "Progressing",
                                     "models.m/train is waiting for resources: 1 CPU")
    with opened(project) as (_, store):
        runs = store.list_runs("models.m", limit=10)
    assert len(runs) == 1, "a run that never started was retried"
    assert runs[0].status == "failed" and (runs[0].error or "").startswith("never started")


def test_a_runs_timeout_counts_from_its_start_not_from_its_wait_for_resources(
        tmp_path: Path, make_project: Any, two_cpus: Any) -> None:
    import ray

    project = load_project(make_project(tmp_path, _spec({"cpus": 1}, {"sleep": 1}, timeout="8s"),
                                        files={"data/raw.csv": "x\n1\n"}, pipeline=SLEEPY))
    hog = _hog(2)
    threading.Timer(10.0, lambda: ray.kill(hog)).start()  # the CPUs come free after the run waited 10 s
    events: list[tuple[str, str]] = []
    outcome = apply_project(project, progress=lambda node_id, event, detail: events.append((node_id, event)))
    assert outcome.result.outcomes["models.m/train"].status == "succeeded", outcome.result.outcomes
    assert ("models.m/train", "waiting") in events and ("models.m/train", "running") in events
    with opened(project) as (_, store):
        runs = store.list_runs("models.m", limit=10)
    assert [r.status for r in runs] == ["succeeded"]
    assert runs[0].finished_at is not None and runs[0].finished_at - runs[0].started_at < 8


def test_the_progress_display_says_what_a_waiting_task_waits_for_even_without_a_terminal() -> None:
    import io

    from rich.console import Console

    from runtime.cli.progress import NodeProgress

    out = io.StringIO()
    progress = NodeProgress(Console(file=out, width=200, force_terminal=False))
    with progress:
        progress.update("models.m/train", "started", "attempt 1")
        progress.update("models.m/train", "waiting", "asks 2 CPU; 0 of 5 CPU free (deployments.api holds 2 CPU)")
        assert progress.waiting == {"models.m/train": "asks 2 CPU; 0 of 5 CPU free (deployments.api holds 2 CPU)"}
        progress.update("models.m/train", "running", "started")
        assert progress.waiting == {}
    assert "waiting models.m/train: asks 2 CPU; 0 of 5 CPU free (deployments.api holds 2 CPU)" in out.getvalue()


@pytest.mark.parametrize(("address", "artifacts", "refused"), [
    ("10.0.0.5:6379", ".mlops/artifacts", True),
    ("ray://ray-head.ml.svc:10001", "/srv/artifacts", True),
    ("10.0.0.5:6379", "file:///srv/artifacts", True),
    ("10.0.0.5:6379", "s3://bucket/prefix", False),
    ("127.0.0.1:6379", ".mlops/artifacts", False),
    ("ray://localhost:10001", ".mlops/artifacts", False),
])
def test_a_cluster_on_other_machines_with_a_local_artifact_folder_is_infeasible_at_plan_time(
        tmp_path: Path, make_project: Any, address: str, artifacts: str, refused: bool) -> None:
    spec = {"apiVersion": "mlops/v1", "project": "remote", "cluster": {"address": address},
            "storage": {"artifacts": artifacts}, "datasets": {"raw": {"path": "data/raw.csv"}}}
    project = load_project(make_project(tmp_path, spec, files={"data/raw.csv": "x\n1\n"}))
    if not refused:
        feasibility.check_storage(project)
        return
    with pytest.raises(MlopsError) as caught:
        feasibility.check_storage(project)
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.message.startswith(f"infeasible: cluster.address {address} is a Ray cluster on other machines")
    assert "use an object store (s3://bucket/prefix)" in diagnostic.message
    assert diagnostic.position is not None and diagnostic.position.line > 0  # storage.artifacts in mlops.yaml
