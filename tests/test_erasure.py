"""Erasure that follows lineage (issue 18): ``mlops erase datasets.NAME --reason TEXT`` erases the dataset's data
and everything derived from it, deletes the objects, lists the model versions trained on it, and the next plan
takes the data again and retrains (``erased data: datasets.NAME``); the audit trail and ``mlops lineage`` show it.
Real applies on Ray, real stores: the local artifact folder with a SQLite file, and the S3 server with PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from compiler import check_policies, load_project
from runtime.apply.operations import apply_project, opened
from runtime.artifacts.store import ArtifactStore
from runtime.export.report import build_report
from runtime.lifecycle.erasure import erase, open_erasures, settle
from runtime.lifecycle.holdings import add_state_refs
from runtime.plan.project import plan_project
from runtime.state import audit
from runtime.views.lineage import lineage
from runtime.views.models import show_model
from runtime.views.status import project_status

ROOT = Path(__file__).resolve().parents[1]
REASON = "data subject 42 asked (Art. 17)"


def spec(**storage: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "mlops/v1", "project": "forget",
        "datasets": {"raw": {"path": "data/raw.csv"},
                     "features": {"from": ["raw"], "transform": "pipeline:build_features"},
                     "other": {"path": "data/other.csv"}},
        "models": {"churn": {"train": "pipeline:train", "data": {"train": "features"}},
                   "side": {"train": "pipeline:train", "data": {"train": "other"}}}}
    if storage:
        body["storage"] = storage
    return body


FILES = {"data/raw.csv": "email,y\na@x.eu,1\nb@x.eu,0\n", "data/other.csv": "z\n7\n"}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def changes(project: Any) -> dict[str, tuple[str, list[str]]]:
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    return {c.address: (c.action, c.reasons) for c in plan.resource_changes}


def held_objects(store: Any, artifacts: ArtifactStore, address: str) -> set[str]:
    """The objects of the newest data of a dataset."""
    if address == "datasets.features":
        return set(artifacts.members(store.latest_result("datasets.features/transform").outputs["artifact"]))
    snapshot = store.latest_snapshot(address)
    return set(artifacts.members(snapshot.artifact_uri))


def test_erasing_a_dataset_follows_lineage_and_the_next_apply_retrains_on_data_taken_again(
        tmp_path: Path, make_project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    project = load_project(make_project(tmp_path, spec(), files=FILES))
    assert apply_project(project).result.ok
    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        erased = held_objects(store, artifacts, "datasets.raw") | held_objects(store, artifacts, "datasets.features")
        kept = held_objects(store, artifacts, "datasets.other")

    code, out, err = run_cli(capsys, "-f", str(project.spec_path), "--json", "erase", "datasets.raw", "--reason",
                             REASON)
    assert code == 0, err
    report = json.loads(out)
    assert report["dataset"] == "datasets.raw" and report["reason"] == REASON
    assert sorted(e["dataset"] for e in report["erased"]) == ["datasets.features", "datasets.raw"]
    assert report["models"] == ["models.churn@1"] and report["in_use"] == ["models.churn@1"]
    assert report["objects_deleted"] == len(erased)

    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        assert not any(artifacts.exists(f"sha256:{d}") for d in erased)
        assert all(artifacts.exists(f"sha256:{d}") for d in kept)
        request = report["request"]
        records = audit.of_actions(store, ["erase", "erasure"])
        assert [(r.action, r.payload.get("dataset")) for r in records] == [
            ("erase", "datasets.raw"), ("erase", "datasets.features"), ("erasure", "datasets.raw")]
        assert all(r.payload["request"] == request for r in records)
        assert records[-1].payload["reason"] == REASON and records[-1].payload["models"] == ["models.churn@1"]
        assert not audit.verify(store)
        assert [(r.address, r.removal, r.request_id) for r in store.data_removals()] == [
            ("datasets.raw", "erased", request), ("datasets.features", "erased", request)]
        assert [(r.id, still) for r, still in open_erasures(store)] == [(request, ["models.churn@1"])]
        assert [(r.id, still) for r, still in project_status(project, store).open_erasures] == [
            (request, ["models.churn@1"])]
        (v1,) = show_model(project, store, "churn").versions
        assert v1.data_flags == ["erased data: datasets.raw"]
        assert show_model(project, store, "side").versions[0].data_flags == []
        add_state_refs(project, store)
        assert project.views["models.churn"]["refs"]["erased_data"] == ["datasets.raw"]
        assert project.views["models.side"]["refs"]["expired_data"] == []
        model = lineage(project, store, "models.churn@1").to_json()
        (features,) = model["datasets"]
        assert features["removed"]["removal"] == "erased" and features["removed"]["erasure"] == request
        assert features["upstream"][0]["address"] == "datasets.raw" and features["upstream"][0]["removed"]
        snapshots = lineage(project, store, "datasets.raw").to_json()["snapshots"]
        assert [(s["removed"]["removal"], s["used_by"]) for s in snapshots] == [("erased", ["models.churn@1"])]
        page = build_report(project, check_policies(project), store)
        assert "trained on erased data: datasets.raw" in page and REASON.replace("(", "") in page.replace("(", "")
        assert "still in use: models.churn@1" in page

    code, out, _ = run_cli(capsys, "-f", str(project.spec_path), "lineage", "datasets.raw")
    assert code == 0 and "[erased " in out and f"erasure {request}]" in out
    code, out, _ = run_cli(capsys, "-f", str(project.spec_path), "models", "show", "churn")
    assert code == 0 and "erased data: datasets.raw" in out

    planned = changes(project)
    assert planned["datasets.raw"] == ("replace", ["erased data: datasets.raw"])
    assert planned["datasets.features"] == ("replace", ["erased data: datasets.raw"])
    assert planned["models.churn"] == ("replace", ["erased data: datasets.raw"])
    assert planned["datasets.other"][0] == planned["models.side"][0] == "no-op"

    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        v1, v2 = show_model(project, store, "churn").versions
        assert v1.data_flags == ["erased data: datasets.raw"] and v2.data_flags == []
        assert open_erasures(store) == []
        assert settle(store) == [request]
        assert store.erasure_requests()[0].closed_at is not None
        snapshots = lineage(project, store, "datasets.raw").to_json()["snapshots"]
        assert [(s["removed"] is not None, s["used_by"]) for s in snapshots] == [
            (True, ["models.churn@1"]), (False, ["models.churn@2"])]
    assert {action for action, _ in changes(project).values()} == {"no-op"}


def test_an_erasure_of_an_unknown_dataset_or_without_a_reason_is_one_line(tmp_path: Path, make_project: Any,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    project = load_project(make_project(tmp_path, spec(), files=FILES))
    code, out, err = run_cli(capsys, "-f", str(project.spec_path), "erase", "datasets.rwa", "--reason", REASON)
    assert (code, out) == (1, "")
    assert err.strip() == "error: unknown dataset 'datasets.rwa' (did you mean 'datasets.raw'?)"
    code, _, err = run_cli(capsys, "-f", str(project.spec_path), "erase", "datasets.raw", "--reason", " ")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "needs a reason" in err
    assert "Traceback" not in err
    with opened(project) as (_, store):
        assert store.erasure_requests() == [] and audit.of_actions(store, ["erase", "erasure"]) == []


def test_an_erasure_refused_while_another_operation_holds_the_state_lock(tmp_path: Path, make_project: Any) -> None:
    from runtime.lifecycle.erasure import ErasureError
    from runtime.state.lock import LockHeld, acquire

    project = load_project(make_project(tmp_path, spec(), files=FILES))
    with opened(project) as (workspace, store):
        artifacts = ArtifactStore(workspace.artifact_root)
        with pytest.raises(ErasureError):
            erase(project, store, artifacts, "datasets.raw", "")
        held = subprocess.Popen([sys.executable, "-c", (
            "import sys, time; from runtime.state.lock import acquire\n"
            f"with acquire({str(workspace.state)!r}, 'apply', 'someone'):\n"
            "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert held.stdout is not None and held.stdout.readline().strip() == "held"
            with pytest.raises(LockHeld):
                erase(project, store, artifacts, "datasets.raw", REASON)
        finally:
            held.kill()
            held.wait()
        assert store.erasure_requests() == []
        with acquire(workspace.state, "check", "me"):  # free again once its holder died
            pass


def test_erasure_on_the_s3_server_with_postgresql_state(tmp_path: Path, make_project: Any, s3_url: str,
                                                        seaweedfs: Any, postgres_server: Any) -> None:
    project = load_project(make_project(tmp_path, spec(artifacts=s3_url, state=postgres_server.database()),
                                        files=FILES))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def mlops(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), *args],
                              cwd=project.root, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    def key(digest: str) -> str:
        return s3_url.removeprefix("s3://") + f"/objects/{digest[:2]}/{digest[2:]}"

    mlops("apply")
    client = seaweedfs.client()
    with opened(project) as (workspace, store):
        assert store.dialect.name == "postgresql"
        artifacts = ArtifactStore(workspace.artifact_root)
        erased = held_objects(store, artifacts, "datasets.raw") | held_objects(store, artifacts, "datasets.features")
        kept = held_objects(store, artifacts, "datasets.other")
    assert all(client.exists(key(d)) for d in erased | kept)
    report = json.loads(mlops("--json", "erase", "raw", "--reason", REASON).stdout)
    assert report["models"] == ["models.churn@1"] and len(report["erased"]) == 2
    assert not any(client.exists(key(d)) for d in erased)
    assert all(client.exists(key(d)) for d in kept)
    assert changes(project)["models.churn"] == ("replace", ["erased data: datasets.raw"])
    status = json.loads(mlops("--json", "status").stdout)
    assert [(e["dataset"], e["models_in_use"]) for e in status["open_erasures"]] == [
        ("datasets.raw", ["models.churn@1"])]
    mlops("apply")
    with opened(project) as (_, store):
        assert [v.data_flags for v in show_model(project, store, "churn").versions] == [
            ["erased data: datasets.raw"], []]
        assert open_erasures(store) == []
        assert [r.action for r in audit.of_actions(store, ["erase", "erasure"])] == ["erase", "erase", "erasure"]
