"""Realtime deployments on a real Ray Serve, answered over real HTTP: rollout, failed rollout, drift repair."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from runtime import serving
from runtime.operations import apply_project, opened, plan_project

pytestmark = pytest.mark.xdist_group("ray")

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
    from runtime import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def ask(port: int, x: float) -> dict[str, Any]:
    body = json.dumps({"instances": [{"x": x}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


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
    from runtime.artifacts import ArtifactStore
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
