"""``mlops gc`` on real stores: the local folder and the S3 server, with the state in SQLite or PostgreSQL; the
references come from real applies.

What a collection must keep (every recorded snapshot, the newest result of each node, the model versions served,
wanted, pinned or among the newest N, every run's log), what it frees (older results, versions past N, what no
row names), that it says so in the registry, status, the report and the audit trail, that it never deletes what
was written after it started, that it waits for the state lock, and that a kill -9 in the middle of deleting loses
nothing still referenced (a second gc finishes the job).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from compiler import load_project
from compiler.errors import SpecError
from compiler.load import load_text
from compiler.parse import parse
from compiler.resolve import Project
from runtime.apply.operations import apply_project, opened, rollback_target
from runtime.artifacts.store import ArtifactStore, StoredObject, parse_uri
from runtime.errors import DeployError
from runtime.lifecycle.gc import GC, collect
from runtime.lifecycle.references import GC_VERSIONS
from runtime.state import audit
from runtime.state.lock import acquire
from runtime.state.records import DeploymentState
from runtime.state.store import StateStore
from runtime.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]

PIPELINE = '''
from runtime.context import TrainResult


def build_features(ctx):
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())


def train(ctx):
    data = sum(len(p.read_bytes()) for p in sorted(ctx.input("train").rglob("*")) if p.is_file())
    print("training on", data, "bytes with", ctx.params)
    return TrainResult(model={"w": float(data) + float(ctx.params["lr"])}, metrics={"auc": 0.9})
'''

DATA = ["x,y\n1,2\n", "x,y\n1,2\n3,4\n"]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(seaweedfs: Any) -> Iterator[None]:
    """This module's Ray, its workers started with the S3 server's ``AWS_*`` settings (the S3 stores need them)."""
    from runtime.compute import ray_backend

    os.environ.update(seaweedfs.env())
    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def body(artifacts: str, state: str, lr: float = 0.1, keep_versions: int | None = None) -> dict[str, Any]:
    model: dict[str, Any] = {"train": "pipeline:train", "data": {"train": "features"}, "params": {"lr": lr},
                             "resources": {"cpus": 1}}
    if keep_versions is not None:
        model["keep_versions"] = keep_versions
    return {"apiVersion": "mlops/v1", "project": "gcdemo", "storage": {"artifacts": artifacts, "state": state},
            "datasets": {"raw": {"path": "data/raw.csv"},
                         "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
            "models": {"m": model}}


def applied(root: Path, make_project: Any, spec: dict[str, Any], data: str) -> Project:
    """Write the project with ``spec`` and ``data``, apply it (for real, on Ray) and return it."""
    project = load_project(make_project(root, spec, files={"data/raw.csv": data}, pipeline=PIPELINE))
    outcome = apply_project(project)
    assert outcome.result.ok, outcome.result.outcomes
    return project


def history(root: Path, make_project: Any, artifacts: str, state: str) -> Project:
    """Three applies: the first data, new data (a new features output and version 2), a new lr (version 3)."""
    applied(root, make_project, body(artifacts, state), DATA[0])
    applied(root, make_project, body(artifacts, state), DATA[1])
    return applied(root, make_project, body(artifacts, state, lr=0.2), DATA[1])


def kept_uris(store: StateStore, versions: set[int] | None = None) -> set[str]:
    """What the state names that gc must keep, read straight from the state (``versions``: of model m)."""
    uris = {uri for _, uri in store.snapshot_artifacts()} | {uri for _, uri in store.run_logs()}
    for result in store.latest_results().values():
        uris |= {str(result.outputs[k]) for k in ("artifact", "input") if k in result.outputs}
    uris |= {v.artifact_uri for v in store.model_versions("m") if versions is None or v.version in versions}
    return uris


def listing(artifacts: ArtifactStore) -> dict[str, StoredObject]:
    return {o.digest: o for o in artifacts.objects()}


def assert_whole(artifacts: ArtifactStore, uris: set[str]) -> None:
    """Every artifact is there and hashes to its name (a directory: its manifest and each file)."""
    for uri in uris:
        assert artifacts.exists(uri), uri
        artifacts.verify(uri)


def settled(artifacts: ArtifactStore) -> None:
    """Wait until the store's clock has moved past every object's time (the S3 server stamps whole seconds), so
    that what the test stored counts as written before the gc it runs next."""
    newest = max((o.written_at for o in artifacts.objects()), default=0.0)
    while artifacts.clock() <= newest:
        time.sleep(0.1)


def stores(request: Any, tmp_path: Path) -> tuple[str, str]:
    """(artifact root, state) for the test's parameter."""
    kind, state_kind = request.param
    artifacts = request.getfixturevalue("s3_url") if kind == "s3" else str(tmp_path / "store")
    state = request.getfixturevalue("postgres_server").database() if state_kind == "postgresql" else \
        str(tmp_path / "state" / "state.db")
    return artifacts, state


@pytest.fixture(params=[("local", "sqlite"), ("local", "postgresql"), ("s3", "sqlite")], ids=lambda p: "+".join(p))
def where(request: Any, tmp_path: Path) -> tuple[str, str]:
    return stores(request, tmp_path)


def test_gc_frees_what_no_reference_names_keeps_the_rest_and_says_so(where: tuple[str, str], tmp_path: Path,
                                                                     make_project: Any,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    artifact_root, state = where
    project = history(tmp_path / "repo", make_project, artifact_root, state)
    artifacts = ArtifactStore(artifact_root)
    orphans = tmp_path / "orphan"  # what a killed apply leaves: stored, recorded nowhere
    (orphans / "sub").mkdir(parents=True)
    (orphans / "a.bin").write_bytes(os.urandom(5000))
    (orphans / "sub" / "b.bin").write_bytes(os.urandom(7000))
    planted = [artifacts.put_dir(orphans), artifacts.put_bytes(os.urandom(3000))]
    with opened(project) as (_, store):
        features = store.succeeded_results("datasets.features")
        assert len(features) == 2 and len(store.model_versions("m")) == 3
        old_features = str(features[0].outputs["artifact"])
        keep_all = kept_uris(store)
    assert old_features not in keep_all
    settled(artifacts)
    before = listing(artifacts)
    spec = str(project.spec_path)

    code, out, err = run_cli(capsys, "-f", spec, "--json", "gc")  # a dry run deletes nothing
    assert code == 0, err
    dry = json.loads(out)
    assert listing(artifacts) == before
    doomed = {parse_uri(old_features)[1]} | {d for uri in planted for d in artifacts.members(uri)}
    assert dry["garbage"]["objects"] == len(doomed)
    assert dry["garbage"]["bytes"] == sum(before[d].size for d in doomed)
    assert dry["before"]["bytes_by_kind"]["unreferenced"] == dry["garbage"]["bytes"]
    assert dry["before"]["total_bytes"] == sum(o.size for o in before.values())
    assert dry["released_versions"] == {}  # no keep: every version keeps its file

    code, out, err = run_cli(capsys, "-f", spec, "gc", "--apply")
    assert code == 0, err
    after = listing(artifacts)
    assert set(after) == set(before) - doomed
    assert_whole(artifacts, keep_all)
    assert not any(artifacts.exists(uri) for uri in [old_features, *planted])
    freed = sum(before[d].size for d in doomed)
    assert f"freed {len(doomed)} object(s)" in out
    with opened(project) as (_, store):
        [record] = audit.of_actions(store, [GC])
        assert record.payload["objects_freed"] == len(doomed) and record.payload["bytes_freed"] == freed
        assert record.payload["bytes_before"] - record.payload["bytes_after"] == freed
        assert record.payload["bytes_after"] == sum(o.size for o in after.values())
        assert audit.verify(store) == []
    code, out, _ = run_cli(capsys, "-f", spec, "plan")
    assert code == 0 and "No changes" in out, out  # every result the plan reuses is intact

    # keep the newest version and the pinned one (a rollback's pin, as `mlops rollback` records it)
    with opened(project) as (_, store):
        store.set_deployment(DeploymentState("api", "m", desired_version=1, live_version=1, status="Healthy",
                                             pinned_version=1, pin_reason="manual rollback"))
        versions = {v.version: v.artifact_uri for v in store.model_versions("m")}
    assert len(set(versions.values())) == 3  # three distinct model files
    code, out, err = run_cli(capsys, "-f", spec, "--json", "gc", "--apply", "--keep", "1")
    assert code == 0, err
    report = json.loads(out)
    assert report["released_versions"] == {"m": [2]}
    assert report["freed"]["objects"] == 1
    assert not artifacts.exists(versions[2])
    with opened(project) as (_, store):
        assert_whole(artifacts, kept_uris(store, {1, 3}))
        [marked] = audit.of_actions(store, [GC_VERSIONS])
        assert marked.payload["versions"] == {"m": [2]}
        records = audit.log(store)
        assert [r.action for r in records[-2:]] == [GC_VERSIONS, GC]  # marked before anything was deleted
    code, out, _ = run_cli(capsys, "-f", spec, "--json", "models", "show", "m")
    assert {v["version"]["version"]: v["collected"] for v in json.loads(out)["versions"]} == \
        {1: False, 2: True, 3: False}
    code, out, _ = run_cli(capsys, "-f", spec, "models", "show", "m")
    assert "candidate (model file collected by gc)" in out

    with_api = body(artifact_root, state, lr=0.2)
    with_api["deployments"] = {"api": {"model": "m", "mode": "batch", "input": "features"}}
    project = load_project(make_project(tmp_path / "repo", with_api, files={"data/raw.csv": DATA[1]},
                                        pipeline=PIPELINE))
    with opened(project) as (_, store):
        with pytest.raises(DeployError, match="models.m version 2 cannot be served: mlops gc collected its model"):
            rollback_target(project, store, "api", 2)
        assert rollback_target(project, store, "api", 1) == 1


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_gc_killed_mid_delete_loses_nothing_referenced_and_the_next_one_finishes(
        kind: str, tmp_path: Path, make_project: Any, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    artifact_root = request.getfixturevalue("s3_url") if kind == "s3" else str(tmp_path / "store")
    state = str(tmp_path / "state" / "state.db")
    project = history(tmp_path / "repo", make_project, artifact_root, state)
    artifacts = ArtifactStore(artifact_root)
    for _ in range(4):
        artifacts.put_bytes(os.urandom(2000))
    settled(artifacts)
    with opened(project) as (_, store):
        keep = kept_uris(store, {3})
    code, out, err = run_cli(capsys, "-f", str(project.spec_path), "--json", "gc", "--keep", "1")
    assert code == 0, err
    garbage = json.loads(out)["garbage"]["objects"]
    assert garbage == 1 + 2 + 4  # the first features manifest, versions 1 and 2's files, the orphans
    before = listing(artifacts)

    killer = f"""
import os, signal, sys
from runtime.artifacts.store import ArtifactStore
from runtime.cli.main import main

delete = ArtifactStore.delete_objects

def delete_two_then_die(self, digests):
    delete(self, digests[:2])  # two objects gone, the rest of the batch not yet
    os.kill(os.getpid(), signal.SIGKILL)

ArtifactStore.delete_objects = delete_two_then_die
sys.exit(main(["-f", {str(project.spec_path)!r}, "gc", "--apply", "--keep", "1"]))
"""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    killed = subprocess.run([sys.executable, "-c", killer], cwd=project.root, env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    halfway = listing(artifacts)
    assert len(before) - len(halfway) == 2  # killed mid-delete
    assert_whole(artifacts, keep)  # nothing still referenced was touched
    for digest in halfway:  # what is left is whole: every object hashes to its name
        artifacts.verify(f"sha256:{digest}")
    with opened(project) as (_, store):
        assert audit.of_actions(store, [GC]) == []  # it never finished
        assert [r.payload["versions"] for r in audit.of_actions(store, [GC_VERSIONS])] == [{"m": [1, 2]}]
        assert audit.verify(store) == []

    code, out, err = run_cli(capsys, "-f", str(project.spec_path), "--json", "gc", "--apply", "--keep", "1")
    assert code == 0, err  # the lock died with the killed gc
    second = json.loads(out)
    assert second["freed"]["objects"] == garbage - 2 and second["released_versions"] == {}
    assert len(listing(artifacts)) == len(before) - garbage
    with opened(project) as (_, store):
        assert_whole(artifacts, keep)
        assert [r.payload["objects_freed"] for r in audit.of_actions(store, [GC])] == [garbage - 2]
    code, out, _ = run_cli(capsys, "-f", str(project.spec_path), "plan")
    assert code == 0 and "No changes" in out, out


class WrittenWhileListing(ArtifactStore):
    """The store with a writer outside the lock (a worker of a killed apply) storing an object while gc lists."""

    armed = False
    late: str | None = None

    def objects(self) -> Iterator[StoredObject]:
        if self.armed and self.late is None:
            self.late = self.put_bytes(b"written after gc started")
        return super().objects()


def test_gc_never_deletes_what_was_written_after_it_started_and_waits_for_the_state_lock(
        tmp_path: Path, make_project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    spec = make_project(tmp_path / "repo", {"apiVersion": "mlops/v1", "project": "empty"})
    project = load_project(spec)
    workspace = Workspace.of(project)
    artifacts = WrittenWhileListing(workspace.artifact_root)
    early = artifacts.put_bytes(b"an orphan from before")
    torn = Path(workspace.artifact_root) / "trees" / ".torn-0123"  # a tree a killed gc was discarding
    (torn / "sub").mkdir(parents=True)
    (torn / "sub" / "f").write_text("x")
    os.chmod(torn / "sub", 0o555)
    settled(artifacts)
    artifacts.armed = True
    with opened(project) as (_, store):
        report = collect(project, store, artifacts, apply=True)
    assert artifacts.late is not None and artifacts.exists(artifacts.late)
    assert not artifacts.exists(early) and not torn.exists()
    assert (report.freed_objects, report.too_new) == (1, 1)

    with acquire(workspace.state, "apply", "someone@else"):  # an apply holds the state
        code, out, err = run_cli(capsys, "-f", str(spec), "gc", "--apply")
        assert code == 1 and "Error acquiring the state lock" in err and "someone@else" in err
        assert "Traceback" not in out + err
        assert artifacts.exists(artifacts.late)
        code, out, err = run_cli(capsys, "-f", str(spec), "gc")  # a dry run needs no lock
        assert code == 0 and "would free 1 object(s)" in out, err


def test_status_and_the_report_show_the_store_by_kind_and_keep_versions_is_the_default_keep(
        tmp_path: Path, make_project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path / "state" / "state.db")
    artifact_root = str(tmp_path / "store")
    applied(tmp_path / "repo", make_project, body(artifact_root, state), DATA[0])
    project = applied(tmp_path / "repo", make_project, body(artifact_root, state, keep_versions=1), DATA[1])
    spec = str(project.spec_path)
    with opened(project) as (_, store):
        [first, second] = store.model_versions("m")
    artifacts = ArtifactStore(artifact_root)
    objects = listing(artifacts)

    code, out, err = run_cli(capsys, "-f", spec, "--json", "status")
    assert code == 0, err
    size = json.loads(out)["artifact_store"]
    assert size["total_bytes"] == sum(o.size for o in objects.values()) and size["objects"] == len(objects)
    assert sum(size["bytes_by_kind"].values()) == size["total_bytes"]
    old_model = objects[parse_uri(first.artifact_uri)[1]].size
    old_manifest = size["bytes_by_kind"]["unreferenced"] - old_model  # version 1's file (keep_versions: 1)
    assert old_manifest > 0 and size["bytes_by_kind"]["models"] == objects[parse_uri(second.artifact_uri)[1]].size
    assert size["bytes_by_kind"]["logs"] > 0 and size["bytes_by_kind"]["datasets"] > 0
    code, out, _ = run_cli(capsys, "-f", spec, "status")
    assert "artifact store: " in out and "`mlops gc --apply` frees about" in out

    code, out, err = run_cli(capsys, "-f", spec, "report", "--out", str(tmp_path / "report"))
    assert code == 0, err
    page = (tmp_path / "report" / "index.html").read_text()
    assert '<h2 id="artifact-store">Artifact store</h2>' in page and "<td>unreferenced</td><td>2</td>" in page

    code, out, err = run_cli(capsys, "-f", spec, "--json", "gc", "--apply")  # the spec's keep_versions: 1
    assert code == 0, err
    assert json.loads(out)["released_versions"] == {"m": [1]}
    code, out, _ = run_cli(capsys, "-f", spec, "--json", "status")
    assert json.loads(out)["artifact_store"]["bytes_by_kind"]["unreferenced"] == 0


def test_keep_versions_and_keep_are_bounded_with_one_line_errors(tmp_path: Path, make_project: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    text = ("apiVersion: mlops/v1\nproject: p\ndatasets:\n  raw: {path: raw.csv}\nmodels:\n  m:\n"
            "    train: pipeline:train\n    data: {train: raw}\n    keep_versions: 0\n")
    with pytest.raises(SpecError, match="keep_versions"):
        parse(load_text(text, "mlops.yaml"))
    schema = json.loads((ROOT / "schemas" / "mlops.schema.json").read_text())
    assert schema["$defs"]["Model"]["properties"]["keep_versions"]["anyOf"][0]["minimum"] == 1

    spec = make_project(tmp_path / "repo", {"apiVersion": "mlops/v1", "project": "p"})
    code, out, err = run_cli(capsys, "-f", str(spec), "gc", "--keep", "0")
    assert code == 1 and "Error: Invalid value for '--keep': 0 is not in the range x>=1." in err, err  # click's usage
    bad = make_project(tmp_path / "bad", {"apiVersion": "mlops/v1", "project": "p",
                                          "storage": {"artifacts": "s3://"}})
    code, out, err = run_cli(capsys, "-f", str(bad), "gc")
    assert code == 1 and err.strip().splitlines() == ["error: artifact store s3://: it names no bucket (expected "
                                                      "s3://bucket/prefix)"], err
