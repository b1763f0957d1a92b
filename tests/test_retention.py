"""Retention enforced (issue 18): data older than its dataset's ``retention_days`` expires, with what was made
from it; the objects go, the audit trail records each expiry, the versions trained on it are flagged, and the plan
takes the data again. Real applies on Ray, real stores: the local artifact folder with a SQLite file, and the S3
server with PostgreSQL. The clock moves through ``now=`` (and the reconciler's ``clock``), never by sleeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from compiler import load_project
from runtime.apply.operations import apply_project, opened
from runtime.artifacts.store import ArtifactStore, parse_uri
from runtime.lifecycle.holdings import add_state_refs
from runtime.lifecycle.retention import expire_due, upcoming
from runtime.plan.project import plan_project
from runtime.reconcile.loop import Reconciler, Source
from runtime.state import audit
from runtime.views.models import show_model
from runtime.views.status import project_status

DAY = 86400.0
ROOT = Path(__file__).resolve().parents[1]


def spec(raw_days: int = 30, features_days: int | None = None, **storage: str) -> dict[str, Any]:
    features: dict[str, Any] = {"from": ["raw"], "transform": "pipeline:build_features"}
    if features_days is not None:
        features["retention_days"] = features_days
    body: dict[str, Any] = {
        "apiVersion": "mlops/v1", "project": "keep",
        "datasets": {"raw": {"path": "data/raw.csv", "retention_days": raw_days}, "features": features},
        "models": {"churn": {"train": "pipeline:train", "data": {"train": "features"}}}}
    if storage:
        body["storage"] = storage
    return body


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


RETRAIN_PACK = """
apiVersion: mlops/v1
kind: PolicyPack
name: retrain
policies:
  - id: RET-001
    title: No model in use was trained on data past its retention
    severity: error
    applies_to: models
    schema: {properties: {refs: {properties: {expired_data: {maxItems: 0}}}}}
    message: "{address} was trained on data past its retention: retrain it"
    rationale: GDPR Art. 5(1)(e) storage limitation
    remediation: Apply, so that the model retrains on data taken again
"""
"""A project's own pack that requires retraining once data a model in use learnt from expired."""


def applied(root: Path, make_project: Any, body: dict[str, Any]) -> Any:
    project = load_project(make_project(root, body, files={"data/raw.csv": "x,y\n1,2\n3,4\n",
                                                           "policies/retrain.yaml": RETRAIN_PACK}))
    outcome = apply_project(project)
    assert outcome.result.ok, outcome.result.outcomes
    return project


def changes(project: Any) -> dict[str, tuple[str, list[str]]]:
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    return {c.address: (c.action, c.reasons) for c in plan.resource_changes}


def data_objects(store: Any, artifacts: ArtifactStore) -> set[str]:
    """Every object of the data the state holds now (the newest snapshot and transform output)."""
    snapshot = store.latest_snapshot("datasets.raw")
    features = store.latest_result("datasets.features/transform")
    return set(artifacts.members(snapshot.artifact_uri)) | set(artifacts.members(features.outputs["artifact"]))


def retrain_policy(capsys: pytest.CaptureFixture[str], project: Any) -> tuple[int, list[str]]:
    """``mlops policy check``: its exit code and RET-001's status per model."""
    code, out, _ = run_cli(capsys, "-f", str(project.spec_path), "--json", "policy", "check")
    return code, [f"{r['address']} {r['status']}" for r in json.loads(out)["results"] if r["policy"] == "RET-001"]


def test_data_past_its_retention_expires_with_what_was_made_from_it_and_the_plan_takes_it_again(
        tmp_path: Path, make_project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    project = applied(tmp_path, make_project, spec())
    assert retrain_policy(capsys, project) == (0, ["models.churn pass"])
    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        snapshot = store.latest_snapshot("datasets.raw")
        features_uri = store.latest_result("datasets.features/transform").outputs["artifact"]
        objects = data_objects(store, artifacts)
        assert expire_due(project, store, artifacts, now=time.time() + 29 * DAY) == []
        coming = upcoming(project, store)
        assert sorted((e.address, e.origin) for e in coming) == [("datasets.features", "datasets.raw"),
                                                                 ("datasets.raw", "datasets.raw")]
        assert coming[0].expires_at == pytest.approx(snapshot.created_at + 30 * DAY)
        assert coming[1].expires_at == coming[0].expires_at  # derived data never outlives its source

        expired = expire_due(project, store, artifacts, now=time.time() + 31 * DAY)
        assert sorted((e.address, e.origin) for e in expired) == [("datasets.features", "datasets.raw"),
                                                                  ("datasets.raw", "datasets.raw")]
        for digest in objects:
            assert not artifacts.exists(f"sha256:{digest}")
        assert not (Path(workspace.artifact_root) / "trees" / parse_uri(features_uri)[1]).exists()
        records = audit.of_actions(store, ["expire"])
        assert sorted((r.payload["dataset"], r.payload["retention_days"]) for r in records) == [
            ("datasets.features", 30), ("datasets.raw", 30)]
        assert all(r.payload["origin"] == "datasets.raw" for r in records)
        assert expire_due(project, store, artifacts, now=time.time() + 31 * DAY) == []  # each item expires once

        (v1,) = show_model(project, store, "churn").versions
        assert v1.data_flags == ["expired data: datasets.raw"]
        add_state_refs(project, store)
        assert project.views["models.churn"]["refs"]["expired_data"] == ["datasets.raw"]
        assert project.views["models.churn"]["refs"]["erased_data"] == []

    assert retrain_policy(capsys, project) == (1, ["models.churn fail"])  # the pack requires retraining
    planned = changes(project)
    assert planned["datasets.raw"] == ("replace", ["expired data: datasets.raw"])
    assert planned["datasets.features"] == ("replace", ["expired data: datasets.raw"])
    assert planned["models.churn"] == ("replace", ["expired data: datasets.raw"])

    assert apply_project(project).result.ok
    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        assert data_objects(store, artifacts) == objects  # the same content, taken again from the source
        artifacts.verify(store.latest_result("datasets.features/transform").outputs["artifact"])
        v1, v2 = show_model(project, store, "churn").versions
        assert v1.data_flags == ["expired data: datasets.raw"] and v2.data_flags == []
        add_state_refs(project, store)
        assert project.views["models.churn"]["refs"]["expired_data"] == []
        assert [e.expires_at > time.time() + 29 * DAY for e in upcoming(project, store)] == [True, True]
    assert {action for action, _ in changes(project).values()} == {"no-op"}
    assert retrain_policy(capsys, project) == (0, ["models.churn pass"])


def test_a_derived_dataset_that_declares_a_shorter_retention_expires_alone(tmp_path: Path,
                                                                          make_project: Any) -> None:
    project = applied(tmp_path, make_project, spec(raw_days=30, features_days=10))
    with opened(project) as (workspace, store):
        expired = expire_due(project, store, ArtifactStore(workspace.artifact_root), now=time.time() + 11 * DAY)
        assert [(e.address, e.origin, e.retention_days) for e in expired] == [
            ("datasets.features", "datasets.features", 10)]
        assert store.held_snapshot_artifacts() == [("datasets.raw", store.latest_snapshot("datasets.raw").artifact_uri)]
        status = project_status(project, store)
        assert [(e.address, e.origin) for e in status.expiring] == [("datasets.raw", "datasets.raw")]
        assert status.to_json()["retention"]["expiring_next"][0]["dataset"] == "datasets.raw"
    planned = changes(project)
    assert planned["datasets.raw"] == ("no-op", [])
    assert planned["datasets.features"] == ("replace", ["expired data: datasets.features"])
    assert planned["models.churn"] == ("replace", ["expired data: datasets.features"])


def test_gc_expires_what_is_due_before_it_collects_and_a_dry_run_only_says_so(tmp_path: Path,
                                                                              make_project: Any) -> None:
    from runtime.lifecycle.gc import collect

    project = applied(tmp_path, make_project, spec())
    later = time.time() + 31 * DAY
    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        objects = data_objects(store, artifacts)
        dry = collect(project, store, artifacts, apply=False, now=later)
        assert sorted(e.address for e in dry.expired) == ["datasets.features", "datasets.raw"]
        assert all(artifacts.exists(f"sha256:{d}") for d in objects) and store.data_removals() == []
        report = collect(project, store, artifacts, apply=True, now=later)
        assert sorted(e["dataset"] for e in report.to_json()["expired"]) == ["datasets.features", "datasets.raw"]
        assert not any(artifacts.exists(f"sha256:{d}") for d in objects)
        assert [r.action for r in audit.of_actions(store, ["expire", "gc"])] == ["expire", "expire", "gc"]
        assert collect(project, store, artifacts, apply=True, now=later).expired == []


def test_the_reconciler_tick_expires_what_is_due_then_takes_it_again_and_retrains(tmp_path: Path,
                                                                                 make_project: Any) -> None:
    project = applied(tmp_path, make_project, spec())
    later = time.time() + 31 * DAY
    tick = Reconciler(Source(project.spec_path), clock=lambda: later).tick()
    assert tick.ok, tick.error
    assert len(tick.expired) == 2 and all("older than its retention_days (30)" in line or "made from datasets.raw"
                                          in line for line in tick.expired)
    assert tick.applied is not None and tick.applied.result.ok
    assert tick.plan is not None
    assert {c.address: c.reasons for c in tick.plan.resource_changes}["models.churn"] == ["expired data: datasets.raw"]
    with opened(project) as (_, store):
        assert [v.version for v in store.model_versions("churn")] == [1, 2]
        assert len(audit.of_actions(store, ["expire"])) == 2
    again = Reconciler(Source(project.spec_path)).tick()
    assert again.ok and again.expired == [] and again.applied is None  # what was taken again is not due yet


def cli_apply(project: Any) -> None:
    """``mlops apply`` in a process of its own: its Ray workers get the S3 server's ``AWS_*`` variables."""
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), "apply"],
                          cwd=project.root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_retention_on_the_s3_server_with_postgresql_state(tmp_path: Path, make_project: Any, s3_url: str,
                                                          seaweedfs: Any, postgres_server: Any) -> None:
    body = spec(artifacts=s3_url, state=postgres_server.database())
    project = load_project(make_project(tmp_path, body, files={"data/raw.csv": "x,y\n1,2\n3,4\n"}))
    cli_apply(project)
    client = seaweedfs.client()

    def key(digest: str) -> str:
        return s3_url.removeprefix("s3://") + f"/objects/{digest[:2]}/{digest[2:]}"

    with opened(project) as (workspace, store):
        assert store.dialect.name == "postgresql"
        artifacts = ArtifactStore(workspace.artifact_root)
        objects = data_objects(store, artifacts)
        assert objects and all(client.exists(key(d)) for d in objects)
        expired = expire_due(project, store, artifacts, now=time.time() + 31 * DAY)
        assert len(expired) == 2
        assert not any(client.exists(key(d)) for d in objects)
        assert [r.removal for r in store.data_removals()] == ["expired", "expired"]
        assert show_model(project, store, "churn").versions[0].data_flags == ["expired data: datasets.raw"]
    assert changes(project)["datasets.raw"] == ("replace", ["expired data: datasets.raw"])
    cli_apply(project)
    assert all(client.exists(key(d)) for d in objects)
    with opened(project) as (_, store):
        versions = show_model(project, store, "churn").versions
        assert [v.data_flags for v in versions] == [["expired data: datasets.raw"], []]
