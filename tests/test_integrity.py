"""What the state names is what runs: every read that matters is checked against the content hash, and the plan
sees a tampered or lost artifact (real Ray, Serve, SQLite and artifact store)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import ask_api as ask

from compiler import load_project
from runtime.apply.operations import apply_project, opened
from runtime.artifacts.store import ArtifactCorrupt, ArtifactMissing, ArtifactStore
from runtime.compute import serving
from runtime.plan.project import plan_project
from runtime.workspace import Workspace

PIPELINE = '''
import torch

from runtime.context import TrainResult


def build_features(ctx):
    for name, path in ctx.inputs.items():
        source = path if path.is_file() else next(path.glob("*.csv"))
        (ctx.output_dir / f"{name}.csv").write_bytes(source.read_bytes())


def train(ctx):
    return TrainResult(model={"w": torch.tensor(float(ctx.params["w"]))}, metrics={"auc": 0.9})


def load_predictor(model_path, params):
    w = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [w * float(row["x"]) for row in rows]
'''


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def overwrite(path: str | Path, data: bytes) -> None:
    """Tamper with a stored file in place (objects are read-only; their owner can still write them)."""
    os.chmod(path, 0o644)
    Path(path).write_bytes(data)


def state_dict_bytes(w: float) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.tensor(w)}, buffer)
    return buffer.getvalue()


def change(plan: Any, address: str) -> Any:
    return next(c for c in plan.resource_changes if c.address == address)


def store_of(project: Any) -> ArtifactStore:
    return ArtifactStore(Workspace.of(project).artifact_root)


# --- the one place that verifies -----------------------------------------------------------------


def test_verified_path_refuses_a_tampered_missing_or_padded_artifact_in_one_line(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "data"
    source.mkdir()
    (source / "a.csv").write_text("x\n1\n")
    (source / "b.csv").write_text("x\n2\n")
    file_uri = store.put_bytes(b"weights")
    tree_uri = store.put_dir(source)
    assert store.verified_path(file_uri) == store.local_path(file_uri)
    tree = store.verified_path(tree_uri)
    assert tree is not None and (tree / "a.csv").read_text() == "x\n1\n"

    obj = store.local_path(file_uri)
    assert obj is not None
    overwrite(obj, b"WEIGHTS")  # same size, another content
    with pytest.raises(ArtifactCorrupt) as caught:
        store.verified_path(file_uri)
    assert caught.value.diagnostics[0].message == f"artifact corrupt: {file_uri} ({obj}) hashes to sha256:" + \
        __import__("hashlib").sha256(b"WEIGHTS").hexdigest()
    os.unlink(obj)
    with pytest.raises(ArtifactMissing, match=f"artifact missing: {file_uri}$"):
        store.verified_path(file_uri)

    overwrite(tree / "b.csv", b"x\n9\n")  # a tree file (a hard link to its object) flipped
    with pytest.raises(ArtifactCorrupt, match=rf"artifact corrupt: {tree_uri} \(.*b\.csv\) hashes to sha256:"):
        store.verified_path(tree_uri)
    with pytest.raises(ArtifactCorrupt, match="artifact corrupt: "):  # laid out again from its (flipped) object
        store.verified_path(tree_uri)
    store.put_dir(source)  # stored again from the data: the object is replaced, the tree laid out from it
    tree = store.verified_path(tree_uri)
    assert tree is not None and (tree / "b.csv").read_text() == "x\n2\n"
    os.chmod(tree, 0o755)
    (tree / "extra.csv").write_text("x\n3\n")
    with pytest.raises(ArtifactCorrupt, match=r"extra\.csv\) is not one of its files"):
        store.verified_path(tree_uri)


def test_an_unchanged_artifact_is_verified_by_a_stat_and_any_change_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.artifacts.verify as artifacts_module

    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "data"
    source.mkdir()
    for index in range(5):
        (source / f"{index}.csv").write_text(f"x\n{index}\n")
    uri = store.put_dir(source)
    monkeypatch.setattr(artifacts_module, "VERIFY_RACY_WINDOW_NS", 0)
    reads: list[str] = []
    real = artifacts_module.hash_file
    monkeypatch.setattr(artifacts_module, "hash_file", lambda path: reads.append(str(path)) or real(path))
    store.verified_path(uri)
    assert len(reads) == 6  # the manifest and its five files, once
    store.verified_path(uri)
    store.verified_path(uri)
    assert len(reads) == 6  # remembered: a stat per file
    tree = store.local_path(uri)
    assert tree is not None
    os.utime(tree / "3.csv", ns=(1, 1))  # even a touch (ctime moves) makes it read again
    store.verified_path(uri)
    assert len(reads) == 12


def test_a_task_never_reads_a_tampered_input_it_fails_naming_the_object(tmp_path: Path) -> None:
    from runtime.compute.entry import run_task
    from runtime.compute.task import TaskSpec

    root = tmp_path / "repo"
    root.mkdir()
    (root / "copier.py").write_text(PIPELINE)
    store = ArtifactStore(tmp_path / "store")
    source = tmp_path / "data"
    source.mkdir()
    (source / "raw.csv").write_text("x\n1\n")
    uri = store.put_dir(source)
    tree = store.local_path(uri)
    assert tree is not None
    overwrite(tree / "raw.csv", b"x\n7\n")
    spec = TaskSpec("datasets.f/transform", "transform", "copier:build_features", "c", str(root),
                    str(tmp_path / "store"), {"raw": uri})
    result = run_task(vars(spec))
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith(f"artifact corrupt: {uri} (") and "\n" not in result.error


# --- plan, apply, serving ------------------------------------------------------------------------


def serving_spec(w: float) -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": "integrity", "datasets": {"raw": {"path": "data/raw.csv"}},
            "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}, "params": {"w": w}}},
            "deployments": {"api": {"model": "m", "replicas": 1, "route": "/api"}}}


def test_a_tampered_model_is_planned_as_replace_refused_by_a_replica_and_rebuilt_by_apply(
        tmp_path: Path, make_project: Any, serve_port: int) -> None:
    from runtime.apply.deploy import serve_spec

    project = load_project(make_project(tmp_path, serving_spec(2), files={"data/raw.csv": "x\n1\n"},
                                        pipeline=PIPELINE))
    assert apply_project(project).result.ok
    assert ask(serve_port, 3)["predictions"] == [6.0]
    with opened(project) as (_, store):
        version = store.get_model_version("m", 1)
    assert version is not None
    uri = version.artifact_uri
    path = store_of(project).local_path(uri)
    assert path is not None
    overwrite(path, state_dict_bytes(100.0))  # another valid state dict under the recorded name

    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    model = change(plan, "models.m")
    assert model.action == "replace" and model.reasons == [f"artifact corrupt: {uri}"]
    assert change(plan, "deployments.api").action == "replace"
    assert plan.has_changes

    # a replica that (re)starts on it refuses it, in one line naming the object; version 1 keeps serving
    spec = serve_spec(Workspace.of(project), "api", version)
    with pytest.raises(serving.RolloutFailed) as failed:
        serving.deploy(spec, "/api", 1, serving.ReplicaResources(0.5), serve_port, previous=None, timeout=60)
    message = str(failed.value)
    assert f"TaskError: artifact corrupt: {uri} ({path}) hashes to sha256:" in message and "\n" not in message

    rebuilt = apply_project(project)
    assert rebuilt.result.ok, rebuilt.result.outcomes
    store_of(project).verify(uri)  # the training ran again and stored the object whole
    assert ask(serve_port, 3)["predictions"] == [6.0]  # never 300: the flipped weights were never served
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    assert not plan.has_changes


def pipeline_spec() -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": "integrity",
            "datasets": {"raw": {"path": "data/raw.csv"},
                         "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
            "models": {"m": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"w": 1}}}}


def test_a_tampered_snapshot_is_planned_as_replace_and_the_next_transform_never_reads_it(
        tmp_path: Path, make_project: Any) -> None:
    project = load_project(make_project(tmp_path, pipeline_spec(), files={"data/raw.csv": "x\n1\n2\n"},
                                        pipeline=PIPELINE))
    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        snapshot = store.latest_result("datasets.raw/snapshot")
    assert snapshot is not None
    uri = snapshot.outputs["artifact"]
    path = store_of(project).local_path(uri)
    assert path is not None
    overwrite(path, b"x\n9\n9\n")  # the flipped data: same size

    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    raw = change(plan, "datasets.raw")
    assert raw.action == "replace" and raw.reasons == [f"artifact corrupt: {uri}"]
    assert change(plan, "datasets.features").action == "replace"

    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        features = store.latest_result("datasets.features/transform")
    assert features is not None
    tree = store_of(project).verified_path(features.outputs["artifact"])
    assert tree is not None and (tree / "raw.csv").read_text() == "x\n1\n2\n"  # re-snapshotted from the data
    assert store_of(project).verified_path(uri) is not None
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    assert not plan.has_changes


def test_a_deleted_object_is_planned_as_artifact_missing_and_rebuilt(tmp_path: Path, make_project: Any) -> None:
    project = load_project(make_project(tmp_path, pipeline_spec(), files={"data/raw.csv": "x\n1\n2\n"},
                                        pipeline=PIPELINE))
    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        trained = store.latest_result("models.m/train")
        features = store.latest_result("datasets.features/transform")
    assert trained is not None and features is not None
    model_uri, features_uri = trained.outputs["artifact"], features.outputs["artifact"]
    artifacts = store_of(project)
    model_path = artifacts.local_path(model_uri)
    assert model_path is not None
    os.unlink(model_path)
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    model = change(plan, "models.m")
    assert model.action == "replace" and model.reasons == [f"artifact missing: {model_uri}"]
    assert change(plan, "datasets.features").action == "no-op"
    with pytest.raises(ArtifactMissing, match=f"artifact missing: {model_uri}$"):
        artifacts.verified_path(model_uri)

    tree = artifacts.local_path(features_uri)
    assert tree is not None
    os.chmod(tree, 0o755)
    os.unlink(tree / "raw.csv")  # a file of the transform's output tree gone too
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    assert change(plan, "datasets.features").reasons == [f"artifact missing: {features_uri}"]

    assert apply_project(project).result.ok
    artifacts.verify(model_uri)
    assert artifacts.verified_path(features_uri) is not None
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    assert not plan.has_changes
