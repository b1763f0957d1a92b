"""A Ray cluster of two nodes on this machine, one of which cannot see the repository.

The head offers no CPUs; the only node that can run tasks is a worker started in a mount namespace of
its own (``unshare --mount``) with a tmpfs over the project's folder: like a remote machine, it cannot
read the driver's files. ``mlops apply`` with ``cluster.address`` set ships the work tree as a Ray
``runtime_env`` package (``runtime/compute/shipping.py``), so the transform and the training run there,
and a second apply whose code did not change uploads nothing. A worker that would run other code than the
plan's is refused in one line. Every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_nodes import TwoNodes

from compiler import load_project
from runtime.apply.operations import apply_project, opened
from runtime.compute import ray_backend


@pytest.fixture(scope="module")
def hidden_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the worker node cannot see: the projects live under it."""
    return tmp_path_factory.mktemp("driver-only")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, hidden_root: Path, seaweedfs: Any) -> Iterator[str]:
    """A head without CPUs and a worker node that cannot see ``hidden_root``; yields the GCS address. The
    worker offers 5 logical CPUs, as ``mlops up`` sizes the local cluster: the example's training (2) beside
    its two replicas and a rollout's extra one. The nodes hold the S3 server's credentials, as a cloud
    cluster's nodes hold theirs."""
    ray_backend.shutdown()  # this process joins the two-node cluster, not a Ray of its own
    nodes = TwoNodes(tmp_path_factory.mktemp("ray-logs"), hidden_root, seaweedfs.env(), worker_cpus=5).start()
    try:
        yield nodes.address
    finally:
        ray_backend.shutdown()
        nodes.stop()


def _spec(address: str, store: Path) -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": "twonodes",
            "storage": {"artifacts": str(store)},
            "cluster": {"address": address},
            "datasets": {"raw": {"path": "data/raw.csv"},
                         "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
            "models": {"m": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"lr": 0.5},
                             "retries": 0}}}


def test_an_apply_runs_on_a_node_that_cannot_see_the_repository(
        two_nodes: str, hidden_root: Path, tmp_path_factory: pytest.TempPathFactory,
        make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path_factory.mktemp("shared-store")  # both nodes reach the artifact store
    project = load_project(make_project(hidden_root / "p", _spec(two_nodes, store),
                                        files={"data/raw.csv": "x\n1\n2\n"}))
    outcome = apply_project(project)
    assert outcome.result.ok, {k: (o.status, o.message) for k, o in outcome.result.outcomes.items()}
    with opened(project) as (_, state):
        runs = {r.node_id: r for r in state.list_runs(limit=10)}
    assert set(runs) == {"datasets.features/transform", "models.m/train"}
    assert all(r.status == "succeeded" for r in runs.values())

    uploads = _uploads_counted(monkeypatch)
    again = apply_project(project)  # nothing changed: nothing runs, nothing is uploaded
    assert again.result.ok and not again.plan.has_changes and uploads() == 0

    (hidden_root / "p" / "data" / "raw.csv").write_text("x\n1\n2\n3\n")
    new_data = apply_project(load_project(project.spec_path))  # the tasks run again on the same code package
    assert new_data.result.ok and new_data.plan.has_changes and uploads() == 0, new_data.result.outcomes

    pipeline = hidden_root / "p" / "pipeline.py"
    pipeline.write_text(pipeline.read_text().replace("0.9", "0.8"))
    new_code = apply_project(load_project(project.spec_path))  # the new code is shipped, and runs there
    assert new_code.result.ok and uploads() == 1, new_code.result.outcomes
    with opened(project) as (_, state):
        assert state.list_runs("models.m", limit=1)[0].metrics.get("auc") == 0.8


def _uploads_counted(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many packages are uploaded to the cluster from now on (until the test ends)."""
    from ray._private.runtime_env import packaging

    calls: list[str] = []
    original = packaging.upload_package_to_gcs

    def counted(uri: str, data: bytes) -> None:
        calls.append(uri)
        original(uri, data)

    monkeypatch.setattr(packaging, "upload_package_to_gcs", counted)
    return lambda: len(calls)


def test_a_task_refuses_code_other_than_the_plans() -> None:
    from runtime.compute.worker import import_callable
    from runtime.errors import TaskError

    root = Path(os.environ.get("TMPDIR", "/tmp"))
    with pytest.raises(TaskError, match="not to the planned 0000"):
        import_callable("json:dumps", "0" * 64, str(root), planned=True)


HOLDER = """
import sys, time
from runtime.state import lock
held = lock.acquire(sys.argv[1], "apply", "runner-one@ci")
print(held.info.id, flush=True)
time.sleep(120)
"""


def test_two_ci_runners_share_postgresql_state_and_s3_artifacts(
        two_nodes: str, hidden_root: Path, s3_url: str, postgres_server: Any,
        make_project: Callable[..., Path]) -> None:
    """The first runner applies on the cluster (its worker sees neither the repository nor any local
    artifact folder); a second clone plans ``No changes`` against the same state, and its apply is refused
    while the first holds the shared lock."""
    from runtime.plan.project import plan_project
    from runtime.state.lock import LockHeld

    state = postgres_server.database("twonodes")
    spec = {**_spec(two_nodes, Path("unused")), "storage": {"state": state, "artifacts": s3_url}}
    files = {"data/raw.csv": "x\n1\n2\n"}
    first = load_project(make_project(hidden_root / "runner-one", spec, files=files))
    outcome = apply_project(first)
    assert outcome.result.ok, {k: (o.status, o.message) for k, o in outcome.result.outcomes.items()}
    assert not (hidden_root / "runner-one" / ".mlops" / "artifacts").exists()  # nothing on the driver's disk

    second = load_project(make_project(hidden_root / "runner-two", spec, files=files))
    with opened(second) as (_, store):
        _, plan = plan_project(second, store)
    assert not plan.has_changes, [(c.address, c.reasons) for c in plan.resource_changes if c.action != "no-op"]

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, state], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip(), "the first runner took no lock"
        with pytest.raises(LockHeld) as refused:
            apply_project(second)
        assert refused.value.info is not None and refused.value.info.who == "runner-one@ci"
    finally:
        holder.kill()
        holder.wait()


def test_the_example_applies_and_serves_on_two_nodes_from_a_checkout_the_worker_cannot_see(
        two_nodes: str, hidden_root: Path, s3_url: str, postgres_server: Any, serve_port: int) -> None:
    """The README's churn example, its spec changed in the three settings SPEC §4 names (state, artifacts,
    cluster), applied by the CLI: the features, the training and both Serve replicas run on the worker node,
    which sees no checkout; a request through Serve's proxy is answered by the version the apply recorded,
    a malformed one gets a 4xx, and the plan after it shows no changes."""
    import json
    import shutil
    import urllib.error
    import urllib.request

    import pygit2
    import yaml

    root = Path(__file__).resolve().parents[1]
    repo = hidden_root / "example"
    shutil.copytree(root / "examples" / "churn", repo / "examples" / "churn",
                    ignore=shutil.ignore_patterns(".mlops", "__pycache__"))
    shutil.copy(root / "examples" / "__init__.py", repo / "examples" / "__init__.py")
    spec_path = repo / "examples" / "churn" / "mlops.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["storage"] = {"state": postgres_server.database("example"), "artifacts": s3_url}
    spec["cluster"] = {"address": two_nodes}
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    pygit2.init_repository(str(repo), initial_head="main")

    def mlops(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec_path), *args], cwd=repo,
                              capture_output=True, text=True, timeout=timeout, env={**os.environ})
        return done

    applied = mlops("apply", "--allow-dirty")
    assert applied.returncode == 0 and "0 failed" in applied.stdout, applied.stdout + applied.stderr
    assert "serving deployments.churn-api/deploy" in applied.stdout, applied.stdout

    sys.path.insert(0, str(repo))
    try:
        from examples.churn.pipeline import FEATURE_NAMES
    finally:
        sys.path.remove(str(repo))
    url = f"http://127.0.0.1:{serve_port}/churn"
    body = json.dumps({"instances": [{name: 0.5 for name in FEATURE_NAMES}]}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        reply = json.loads(answer.read())
    assert reply["version"] == 1 and len(reply["predictions"]) == 1 and 0 <= reply["predictions"][0] <= 1, reply

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, b"{not json", {"Content-Type": "application/json"}),
                               timeout=30)
    assert refused.value.code == 400 and "JSON" in refused.value.read().decode(), refused.value

    replanned = mlops("plan", timeout=120)
    assert replanned.returncode == 0 and "No changes" in replanned.stdout, replanned.stdout + replanned.stderr
