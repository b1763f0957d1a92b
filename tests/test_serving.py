"""Realtime deployments on a real Ray Serve, answered over real HTTP: rollout, failed rollout, drift repair."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ask_api as ask

from compiler import load_project
from runtime.apply.operations import apply_project, opened
from runtime.compute import serving
from runtime.plan.project import plan_project

PIPELINE = '''
import torch

from runtime.context import TrainResult


def train(ctx):
    return TrainResult(model={"w": torch.tensor(float(ctx.params["w"]))}, metrics={"auc": 0.9})


def load_predictor(model_path, params):
    if params.get("broken"):
        raise RuntimeError("this version cannot load")
    w = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [w * float(row["x"]) for row in rows]
'''


def spec(params: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": "serving", "datasets": {"raw": {"path": "data/raw.csv"}},
            "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}, "params": params}},
            "deployments": {"api": {"model": "m", "replicas": 1, "route": "/api"}}}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def write(root: Path, make_project: Any, params: dict[str, Any]) -> Path:
    return make_project(root, spec(params), files={"data/raw.csv": "x\n1\n"}, pipeline=PIPELINE)


def test_rollout_serves_the_new_version_and_a_failed_start_keeps_the_old_one(
        tmp_path: Path, make_project: Any, serve_port: int) -> None:
    project = load_project(write(tmp_path, make_project, {"w": 2}))
    first = apply_project(project)
    assert first.result.ok, first.result.outcomes
    answer = ask(serve_port, 3)
    assert answer["predictions"] == [6.0] and answer["version"] == 1 and len(answer["ids"]) == 1

    project = load_project(write(tmp_path, make_project, {"w": 5}))
    second = apply_project(project)
    assert second.result.ok
    answer = ask(serve_port, 3)
    assert answer["predictions"] == [15.0] and answer["version"] == 2

    project = load_project(write(tmp_path, make_project, {"w": 7, "broken": True}))
    third = apply_project(project)
    failed = third.result.outcomes["deployments.api/deploy"]
    assert failed.status == "failed" and "version 2 keeps serving" in failed.message
    assert "RuntimeError: this version cannot load" in failed.message  # the replica's own cause
    assert ask(serve_port, 3)["version"] == 2  # the old version never stopped answering
    assert not [name for name in serving.applications() if name.endswith("staging")]
    with opened(project) as (_, store):
        state = store.get_deployment("api")
        assert state is not None and state.live_version == 2 and state.status.startswith("Degraded")


def test_a_deployment_deleted_behind_the_tools_back_is_found_and_repaired(
        tmp_path: Path, make_project: Any, serve_port: int) -> None:
    project = load_project(write(tmp_path, make_project, {"w": 3}))
    assert apply_project(project).result.ok
    serving.undeploy("api")
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    change = next(c for c in plan.resource_changes if c.address == "deployments.api")
    assert change.action == "replace"
    assert change.reasons == ["live state differs: deployments.api is not running in Ray Serve"]
    assert next(c for c in plan.resource_changes if c.address == "models.m").action == "no-op"
    repaired = apply_project(project)
    assert repaired.result.ok
    assert ask(serve_port, 2)["predictions"] == [6.0]
    live = serving.live("api")
    assert live is not None and live.health == "Healthy" and live.version is not None


def test_batch_deployment_scores_its_input_into_a_versioned_predictions_artifact(
        tmp_path: Path, make_project: Any) -> None:
    from runtime.artifacts.store import ArtifactStore
    from runtime.workspace import Workspace

    body = spec({"w": 4})
    body["datasets"]["to_score"] = {"path": "data/score.csv"}
    body["deployments"] = {"nightly": {"model": "m", "mode": "batch", "input": "to_score"}}
    path = make_project(tmp_path, body, files={"data/raw.csv": "x\n1\n", "data/score.csv": "id,x\na,1\nb,2.5\n"},
                        pipeline=PIPELINE)
    project = load_project(path)
    outcome = apply_project(project)
    assert outcome.result.ok, outcome.result.outcomes
    with opened(project) as (workspace, store):
        result = store.latest_result("deployments.nightly/deploy")
        state = store.get_deployment("nightly")
    assert result is not None and result.outputs["rows"] == 2 and state is not None and state.live_version == 1
    text = ArtifactStore(Workspace.of(project).artifact_root).read_bytes(result.outputs["predictions"]).decode()
    assert text.splitlines() == ["id,x,prediction", "a,1,4.0", "b,2.5,10.0"]


def _status_of(project: Any, address: str) -> Any:
    from runtime.views.status import project_status

    with opened(project) as (_, store):
        return next(r for r in project_status(project, store).resources if r.address == address)


def test_a_first_rollout_that_cannot_load_is_degraded_with_the_replicas_cause(
        tmp_path: Path, make_project: Any) -> None:
    body = spec({"w": 1})
    body["deployments"] = {"fresh": {"model": "m", "replicas": 1, "route": "/fresh"}}
    no_serving_code = PIPELINE.split("def load_predictor")[0]
    project = load_project(make_project(tmp_path, body, files={"data/raw.csv": "x\n1\n"}, pipeline=no_serving_code))
    outcome = apply_project(project)
    failed = outcome.result.outcomes["deployments.fresh/deploy"]
    assert failed.status == "failed"
    assert "rollout of version 1 failed, nothing serves" in failed.message
    assert "AttributeError: module 'pipeline' has no attribute 'load_predictor'" in failed.message
    assert serving.live("fresh") is None and "fresh--staging" not in serving.staging_applications()
    status = _status_of(project, "deployments.fresh")
    assert status.health == "Degraded" and "load_predictor" in status.detail


def test_a_rollout_not_healthy_in_time_is_undone_and_the_old_version_keeps_serving(
        tmp_path: Path, make_project: Any, serve_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    project = load_project(write(tmp_path, make_project, {"w": 2}))
    assert apply_project(project).result.ok
    monkeypatch.setattr(serving, "ROLLOUT_TIMEOUT_S", 8.0)
    body = spec({"w": 9})
    body["deployments"]["api"]["resources"] = {"cpus": 0.5, "memory": "200Gi"}  # a replica no node can place
    project = load_project(make_project(tmp_path, body, files={"data/raw.csv": "x\n1\n"}, pipeline=PIPELINE))
    started = time.monotonic()
    outcome = apply_project(project)
    took = time.monotonic() - started
    failed = outcome.result.outcomes["deployments.api/deploy"]
    assert failed.status == "failed" and "version 1 keeps serving" in failed.message, failed.message
    assert "was not healthy within 8s" in failed.message
    assert took < 120, f"the rollout's deadline was not kept: {took:.0f}s"
    assert ask(serve_port, 3)["version"] == 1 and ask(serve_port, 3)["predictions"] == [6.0]
    assert "api--staging" not in serving.staging_applications()
    assert _status_of(project, "deployments.api").health == "Degraded"


def test_a_retrained_version_that_passed_its_gates_but_is_not_live_is_an_update(
        tmp_path: Path, make_project: Any, serve_port: int) -> None:
    project = load_project(write(tmp_path, make_project, {"w": 2}))
    assert apply_project(project).result.ok

    class Killed(Exception):
        """The apply dies after the gates passed, before the live switch."""

    def die_at_the_switch(node_id: str, event: str, detail: str) -> None:
        if node_id == "deployments.api/deploy" and event == "started":
            raise Killed

    with opened(project) as (_, store):  # what a monitor's `on_breach: [retrain]` does
        store.request_retrain("m", "monitors.drift")
    with pytest.raises(Killed):
        apply_project(project, progress=die_at_the_switch)
    assert ask(serve_port, 1)["version"] == 1
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    change = next(c for c in plan.resource_changes if c.address == "deployments.api")
    assert change.action == "update" and change.reasons == ["version 2 passed its gates; version 1 is live"]
    assert all(c.action == "no-op" for c in plan.resource_changes if c.address != "deployments.api")
    assert apply_project(project).result.ok
    answer = ask(serve_port, 1)
    assert answer["version"] == 2 and answer["predictions"] == [2.0]
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    assert not plan.has_changes


def test_an_orphaned_staging_application_is_planned_and_removed(
        tmp_path: Path, make_project: Any, serve_port: int) -> None:
    project = load_project(write(tmp_path, make_project, {"w": 2}))
    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        version = store.get_model_version("m", 1)
    from runtime.apply.deploy import serve_spec
    from runtime.workspace import Workspace

    assert version is not None
    leftover = serve_spec(Workspace.of(project), "api", version)
    serving._run(serving._application(leftover, 1, serving.ReplicaResources(0.1)), serving.staging_name("api"),
                 f"{serving.STAGING_PREFIX}/api")  # what an apply killed mid-rollout leaves behind
    assert "api--staging" in serving.staging_applications()
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    change = next(c for c in plan.resource_changes if c.address == "deployments.api")
    assert change.action == "update" and "staging application api--staging" in change.reasons[0]
    assert apply_project(project).result.ok
    assert "api--staging" not in serving.staging_applications()
    assert ask(serve_port, 1)["version"] == 1


def test_a_deployments_memory_is_reserved_for_each_replica(tmp_path: Path, make_project: Any) -> None:
    import ray
    from ray.serve.context import _get_global_client

    body = spec({"w": 2})
    body["deployments"]["api"]["resources"] = {"cpus": 0.5, "memory": "300Mi"}
    project = load_project(make_project(tmp_path, body, files={"data/raw.csv": "x\n1\n"}, pipeline=PIPELINE))
    assert apply_project(project).result.ok
    client: Any = _get_global_client()
    details = ray.get(client._controller.get_serve_instance_details.remote(), timeout=15)
    options = details["applications"]["api"]["deployments"]["api"]["deployment_config"]["ray_actor_options"]
    assert options["memory"] == 300 * 1024 * 1024 and options["num_cpus"] == 0.5


def test_a_rollback_to_a_version_that_cannot_start_is_undone_with_its_cause(
        tmp_path: Path, make_project: Any, serve_port: int) -> None:
    from compiler.errors import MlopsError
    from runtime.apply.operations import rollback
    from runtime.artifacts.store import ArtifactStore
    from runtime.workspace import Workspace

    project = load_project(write(tmp_path, make_project, {"w": 2}))
    assert apply_project(project).result.ok
    project = load_project(write(tmp_path, make_project, {"w": 3}))
    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        first = store.get_model_version("m", 1)
    assert first is not None
    local = ArtifactStore(Workspace.of(project).artifact_root).local_path(first.artifact_uri)
    assert local is not None
    Path(local).unlink()  # version 1's weights are gone: it cannot start
    started = time.monotonic()
    with pytest.raises(MlopsError, match="rollout of version 1 failed, version 2 keeps serving: version 1 did "
                                         "not start: .*Error"):
        rollback(project, "api")
    assert time.monotonic() - started < 150
    assert ask(serve_port, 2)["version"] == 2
    assert "api--staging" not in serving.staging_applications()


def test_a_failed_rollout_is_in_the_audit_trail(tmp_path: Path, make_project: Any) -> None:
    from runtime.state import audit

    body = spec({"w": 1})
    body["deployments"] = {"audited": {"model": "m", "replicas": 1, "route": "/audited"}}
    no_serving_code = PIPELINE.split("def load_predictor")[0]
    project = load_project(make_project(tmp_path, body, files={"data/raw.csv": "x\n1\n"}, pipeline=no_serving_code))
    assert not apply_project(project).result.ok
    with opened(project) as (_, store):
        records = [r for r in audit.log(store) if r.action == "rollout_failed"]
    assert len(records) == 1
    assert records[0].payload["deployment"] == "deployments.audited" and records[0].payload["to"] == 1
    assert records[0].payload["from"] is None and "load_predictor" in records[0].payload["error"]


def _replica_pids(app: str) -> set[int]:
    """The process ids of the running replicas of application ``app`` (from Serve's controller)."""
    import ray
    from ray.serve.context import _get_global_client

    details = ray.get(_get_global_client()._controller.get_serve_instance_details.remote(), timeout=15)
    deployments = details["applications"][app]["deployments"].values()
    return {int(r["pid"]) for d in deployments for r in d["replicas"] if r["state"] == "RUNNING"}


def test_a_switch_and_a_rollback_reload_the_running_replicas_in_place_and_lose_no_request(
        tmp_path: Path, make_project: Any, serve_port: int) -> None:
    import threading
    import urllib.error

    from runtime.apply.operations import rollback

    spec_v1 = spec({"w": 2})
    spec_v1["deployments"]["api"].update(replicas=2, resources={"cpus": 0.25})
    project = load_project(make_project(tmp_path, spec_v1, files={"data/raw.csv": "x\n1\n"}, pipeline=PIPELINE))
    assert apply_project(project).result.ok
    before = _replica_pids("api")
    assert len(before) == 2
    answers: list[int | str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                answers.append(ask(serve_port, 3)["version"])
            except (urllib.error.URLError, OSError) as error:
                answers.append(str(error))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        spec_v2 = spec({"w": 5})
        spec_v2["deployments"]["api"].update(replicas=2, resources={"cpus": 0.25})
        project = load_project(make_project(tmp_path, spec_v2, files={"data/raw.csv": "x\n1\n"}, pipeline=PIPELINE))
        assert apply_project(project).result.ok
        answer = ask(serve_port, 3)
        assert (answer["predictions"], answer["version"]) == ([15.0], 2)
        rollback(project, "api", to=1, reason="test")
        assert ask(serve_port, 3)["predictions"] == [6.0]
    finally:
        stop.set()
        poller.join(30)
    failed = [a for a in answers if not isinstance(a, int)]
    assert not failed, failed[:3]
    assert answers[0] == 1 and 2 in answers and answers[-1] == 1 and len(answers) > 20
    assert _replica_pids("api") == before  # the same processes answer: each version was loaded in place
