"""``storage.mlflow``: the state store mirrored into a real MLflow store (SQLite), read back with MlflowClient."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from runtime.artifacts.store import ArtifactStore
from runtime.export.mlflow_mirror import MirrorError, mirror, mirror_project, resolve_uri
from runtime.state.records import DeploymentState, MetricPoint, ModelVersion, NodeResult, Run
from runtime.state.store import StateStore


def client(uri: str) -> Any:
    """A reader of the store; mlflow is imported here so that collecting this module stays cheap."""
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables made (MLflow's migrations take seconds: done once)."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    made = client(f"sqlite:///{path}")
    made.search_experiments()
    made.search_registered_models()
    return path


def fresh_uri(empty_db: Path, path: Path) -> str:
    """A copy of the empty database at ``path``; its ``sqlite:///`` URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_db, path)
    return f"sqlite:///{path}"


def add_run(store: StateStore, run_id: str, kind: str = "trial", status: str = "succeeded",
            params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            log_uri: str | None = None, error: str | None = None, started: float = 1_700_000_000.0) -> None:
    store.start_run(Run(run_id, f"models.churn/{kind}", "models.churn", kind, f"fp-{run_id}", params or {},
                        started_at=started, host="ci-host", git_commit="abc123", git_dirty=True))
    if status != "running":
        store.finish_run(run_id, status, metrics, error, log_uri, started + 5)  # type: ignore[arg-type]


def runs_by_origin(mlflow_client: Any, experiment_id: str) -> dict[str, Any]:
    found = mlflow_client.search_runs([experiment_id])
    origins = [r.data.tags["mlops.run_id"] for r in found]
    assert len(origins) == len(set(origins)), f"duplicated runs: {origins}"
    return {r.data.tags["mlops.run_id"]: r for r in found}


@pytest.fixture
def state(tmp_path: Path) -> Any:
    """A state store with runs, two model versions (a torch file and a plain file) and a live deployment."""
    import torch

    store = StateStore.open(tmp_path / "state.db")
    artifacts = ArtifactStore(tmp_path / "artifacts")
    log_uri = artifacts.put_bytes(b"epoch 0 loss 1.0\nepoch 2 loss 0.33\n")
    model_v1 = artifacts.save_model({"w": torch.tensor([1.0, 2.0])})
    model_v2 = artifacts.put_bytes(b"a model that is not a torch file")
    add_run(store, "t1", params={"lr": 0.1, "layers": [8, 4]}, metrics={"auc": 0.91, "loss": 1 / 3},
            log_uri=log_uri)
    store.log_metrics("t1", [MetricPoint("t1", "loss", step, 1 / (step + 1)) for step in range(3)])
    store.record_result(NodeResult("models.churn/train", "models.churn", "trial", "fp-t1", {}, status="succeeded",
                                   outputs={"artifact": model_v1, "run_id": "t1"}, run_id="t1"))
    add_run(store, "e1", kind="evaluate", metrics={"auc_eval": 0.88}, started=1_700_000_010.0)
    add_run(store, "f1", status="failed", params={"lr": 9}, error="RuntimeError: boom", started=1_700_000_020.0)
    add_run(store, "t2", params={"lr": 0.2}, metrics={"auc": 0.95}, started=1_700_000_030.0)
    add_run(store, "r1", status="running", started=1_700_000_040.0)
    store.add_model_version(ModelVersion("churn", 1, "fp-v1", model_v1, "t1", {"auc": 0.91}, {"lr": 0.1},
                                         "code1", "abc123", {"datasets.raw": "sha256:aa"}, "approved"))
    store.add_model_version(ModelVersion("churn", 2, "fp-v2", model_v2, "t2", {"auc": 0.95}, {"lr": 0.2},
                                         "code1", "abc123", {"datasets.raw": "sha256:bb"}))
    store.set_deployment(DeploymentState("api", "churn", 1, 1, "Healthy", 1_700_000_100.0))
    yield store, artifacts, {"v1": model_v1, "v2": model_v2}
    store.close()


def test_mirror_writes_runs_versions_and_aliases_once_and_moves_them(tmp_path: Path, state: Any,
                                                                    empty_db: Path) -> None:
    store, artifacts, models = state
    uri = fresh_uri(empty_db, tmp_path / "mlflow.db")
    report = mirror("churn-proj", store, artifacts, uri)
    assert sorted(report.runs_created) == ["e1", "f1", "t1", "t2"]  # r1 is still running
    assert report.versions_created == ["churn-proj.churn/1", "churn-proj.churn/2"]

    read = client(uri)
    experiment = read.get_experiment_by_name("churn-proj")
    assert experiment is not None and experiment.experiment_id == report.experiment_id
    assert experiment.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    runs = runs_by_origin(read, experiment.experiment_id)
    assert set(runs) == {"t1", "e1", "f1", "t2"}

    t1 = runs["t1"]
    assert t1.info.status == "FINISHED" and t1.info.run_name == "models.churn/trial"
    assert t1.info.start_time == 1_700_000_000_000 and t1.info.end_time == 1_700_000_005_000
    assert t1.data.params == {"lr": "0.1", "layers": "[8, 4]"}
    assert t1.data.metrics["auc"] == pytest.approx(0.91)
    history = read.get_metric_history(t1.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert {m.timestamp for m in history} == {1_700_000_005_000}
    tags = t1.data.tags
    assert tags["mlops.node_id"] == "models.churn/trial" and tags["mlops.address"] == "models.churn"
    assert tags["mlops.git_commit"] == "abc123" and tags["mlflow.source.git.commit"] == "abc123"
    assert tags["mlops.git_dirty"] == "true" and tags["mlops.host"] == "ci-host"
    assert tags["mlops.status"] == "succeeded" and tags["mlops.fingerprint"] == "fp-t1"
    assert [a.path for a in read.list_artifacts(t1.info.run_id)] == ["log.txt", "model"]
    assert [a.path for a in read.list_artifacts(t1.info.run_id, "model")] == ["model/model.pt"]
    log_copy = Path(read.download_artifacts(t1.info.run_id, "log.txt", str(tmp_path / "dl")))
    assert log_copy.read_text() == "epoch 0 loss 1.0\nepoch 2 loss 0.33\n"
    model_copy = Path(read.download_artifacts(t1.info.run_id, "model/model.pt", str(tmp_path / "dl")))
    assert model_copy.read_bytes() == artifacts.read_bytes(models["v1"])
    assert [a.path for a in read.list_artifacts(runs["t2"].info.run_id, "model")] == ["model/model.bin"]

    failed = runs["f1"]
    assert failed.info.status == "FAILED" and failed.data.tags["mlops.error"] == "RuntimeError: boom"
    assert read.list_artifacts(failed.info.run_id) == []
    assert runs["e1"].data.tags["mlops.kind"] == "evaluate" and runs["e1"].data.metrics == {"auc_eval": 0.88}

    versions = {int(v.tags["mlops.version"]): v for v in read.search_model_versions("name = 'churn-proj.churn'")}
    assert set(versions) == {1, 2}
    v1 = versions[1]
    assert v1.run_id == t1.info.run_id and v1.source == f"runs:/{t1.info.run_id}/model"
    assert v1.tags["mlops.fingerprint"] == "fp-v1" and v1.tags["mlops.status"] == "approved"
    assert v1.tags["mlops.lineage"] == '{"datasets.raw": "sha256:aa"}'
    assert versions[2].run_id == runs["t2"].info.run_id
    live = read.get_model_version_by_alias("churn-proj.churn", "live")
    assert live.tags["mlops.version"] == "1"
    assert read.get_model_version_by_alias("churn-proj.churn", "live-api").version == live.version

    again = mirror("churn-proj", store, artifacts, uri)
    assert again.runs_created == [] and again.versions_created == [] and again.aliases_set == []
    assert again.runs_present == 4
    assert len(read.search_model_versions("name = 'churn-proj.churn'")) == 2

    store.finish_run("r1", "succeeded", {"auc": 0.5}, finished_at=1_700_000_050.0)
    store.set_model_version_status("churn", 2, "approved", "passed gates.quality")
    store.set_deployment(DeploymentState("api", "churn", 2, 2, "Healthy", 1_700_000_200.0))
    store.set_deployment(DeploymentState("shadow", "churn", 1, 1, "Healthy", 1_700_000_150.0))
    moved = mirror("churn-proj", store, artifacts, uri)
    assert moved.runs_created == ["r1"] and moved.versions_created == []
    assert set(runs_by_origin(read, experiment.experiment_id)) == {"t1", "e1", "f1", "t2", "r1"}
    assert read.get_model_version_by_alias("churn-proj.churn", "live").tags["mlops.version"] == "2"
    assert read.get_model_version_by_alias("churn-proj.churn", "live-api").tags["mlops.version"] == "2"
    assert read.get_model_version_by_alias("churn-proj.churn", "live-shadow").tags["mlops.version"] == "1"
    assert read.get_model_version(name="churn-proj.churn", version=versions[2].version).tags["mlops.status"] \
        == "approved"

    store.set_deployment(DeploymentState("shadow", "churn", None, None, "Missing", 1_700_000_300.0))
    gone = mirror("churn-proj", store, artifacts, uri)
    assert gone.aliases_removed == ["churn-proj.churn@live-shadow"]
    assert set(read.get_registered_model("churn-proj.churn").aliases) == {"live", "live-api"}


def test_a_copy_left_half_made_is_replaced(tmp_path: Path, state: Any, empty_db: Path) -> None:
    store, artifacts, _ = state
    uri = fresh_uri(empty_db, tmp_path / "mlflow.db")
    read = client(uri)
    experiment_id = read.create_experiment("churn-proj")
    read.create_run(experiment_id, tags={"mlops.run_id": "t1"})  # a mirror that died before it finished
    report = mirror("churn-proj", store, artifacts, uri)
    assert "t1" in report.runs_created
    copy = runs_by_origin(read, experiment_id)["t1"]
    assert copy.info.status == "FINISHED" and copy.data.metrics["auc"] == pytest.approx(0.91)


def test_an_unreachable_store_is_an_error_for_mirror_and_a_warning_for_the_hook(
        tmp_path: Path, state: Any, make_project: Any, caplog: pytest.LogCaptureFixture) -> None:
    store, artifacts, _ = state
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database's folder should be")
    bad = f"sqlite:///{blocker / 'mlflow.db'}"
    with pytest.raises(MirrorError, match="mirroring to MLflow at sqlite:///.*not-a-dir/mlflow.db failed"):
        mirror("churn-proj", store, artifacts, bad)
    project = load_project(make_project(tmp_path / "p", {"apiVersion": "mlops/v1", "project": "demo",
                                                          "storage": {"mlflow": bad}}))
    with caplog.at_level(logging.WARNING, logger="mlops.mlflow"):
        assert mirror_project(project, store, str(tmp_path / "artifacts")) is None
    assert "MLflow mirror skipped" in caplog.text and "not-a-dir" in caplog.text


def test_relative_uris_are_taken_from_the_spec_directory(tmp_path: Path) -> None:
    assert resolve_uri("sqlite:///.mlops/mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/.mlops/mlflow.db"
    assert resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert resolve_uri("mlruns", tmp_path) == (tmp_path / "mlruns").as_uri()
    assert resolve_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"


def test_apply_mirrors_the_trained_run_and_the_live_version(tmp_path: Path, make_project: Any,
                                                           empty_db: Path) -> None:
    from runtime.apply.operations import apply_project, opened
    from runtime.compute import ray_backend

    spec = {"apiVersion": "mlops/v1", "project": "demo",
            "storage": {"mlflow": "sqlite:///.mlops/mlflow.db"},
            "datasets": {"raw": {"path": "data/raw.csv"}},
            "models": {"churn": {"train": "pipeline:train", "data": {"train": "raw"}, "params": {"lr": 0.5}}},
            "deployments": {"scores": {"model": "churn", "mode": "batch", "input": "raw"}}}
    project = load_project(make_project(tmp_path, spec, files={"data/raw.csv": "x\n1\n2\n"}))
    uri = fresh_uri(empty_db, tmp_path / ".mlops" / "mlflow.db")  # the spec's relative path, resolved
    connected = ray_backend.connected()
    if not connected:
        ray_backend.connect(None, num_cpus=2)
    try:
        started = time.time()
        outcome = apply_project(project)
    finally:
        if not connected:
            ray_backend.shutdown()
    assert outcome.result.ok, outcome.result.outcomes
    with opened(project) as (_, store):
        trial = next(r for r in store.list_runs("models.churn") if r.kind == "trial")
    read = client(uri)
    experiment = read.get_experiment_by_name("demo")
    assert experiment is not None
    runs = runs_by_origin(read, experiment.experiment_id)
    assert set(runs) == {trial.run_id}
    copy = runs[trial.run_id]
    assert copy.info.status == "FINISHED" and copy.data.params == {"lr": "0.5"}
    assert copy.data.metrics == {"auc": 0.9} and copy.info.start_time >= int(started * 1000) - 1000
    assert {a.path for a in read.list_artifacts(copy.info.run_id)} == {"log.txt", "model"}
    live = read.get_model_version_by_alias("demo.churn", "live")
    assert live.tags["mlops.version"] == "1" and live.run_id == copy.info.run_id
