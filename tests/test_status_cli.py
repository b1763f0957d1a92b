"""``mlops status`` and ``mlops rollback`` over real applies on a real local Ray with Ray Serve.

The commands run in this process (``runtime.cli.main.main``) so that they share the test's Ray
connection: Serve is then reachable and health comes from Serve itself. (A rollback on Ray Serve,
blue/green, is exercised by ``test_monitoring.py``; here the CLI rolls back a batch deployment.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli

from compiler import load_project
from runtime.apply.operations import apply_project, opened
from runtime.state import audit
from runtime.state.records import ReconcilerStatus

PIPELINE = '''
from runtime.context import TrainResult


def build_features(ctx):
    for path in ctx.inputs.values():
        (ctx.output_dir / "features.csv").write_bytes(path.read_bytes())


def train(ctx):
    if ctx.params.get("fail"):
        raise RuntimeError("the trainer broke")
    return TrainResult(model={"w": float(ctx.params.get("w", 1.0))}, metrics={"auc": float(ctx.params["auc"])},
                       signature=["x"])  # the features carry the label too


def load_predictor(model_path, params):
    import torch

    w = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [w * float(row["x"]) for row in rows]
'''
DATA = "x,label\n" + "".join(f"{i / 10},{i % 2}\n" for i in range(40))


def spec() -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1",
        "project": "shown",
        "datasets": {"raw": {"path": "data/raw.csv"},
                     "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
        "models": {"m": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"w": 2.0, "auc": 0.9}}},
        "gates": {"ok": {"model": "m", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]}},
        "deployments": {"api": {"model": "m", "gates": ["ok"], "resources": {"cpus": 0.25}, "route": "/api"}},
        "monitors": {"watch": {"deployment": "api", "reference": "features",
                               "checks": [{"type": "data_drift", "method": "psi", "threshold": 0.2},
                                          {"type": "latency", "p95_ms": 10000}]}},
    }


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    from ray.serve import context

    from runtime.compute import ray_backend

    context._disconnect()  # Serve's cached client outlives ray.shutdown() and is taken for this session's
    ray_backend.connect(None, num_cpus=2)  # (job ids restart at 01000000): drop one an earlier module left
    yield
    ray_backend.shutdown()
    context._disconnect()


mlops = run_cli


def status(capsys: pytest.CaptureFixture[str], spec_file: Path) -> dict[str, Any]:
    code, out, _ = mlops(capsys, "-f", str(spec_file), "status", "--json")
    assert code == 0
    payload: dict[str, Any] = json.loads(out)
    return payload


def table(payload: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {r["address"]: (r["sync"], r["health"]) for r in payload["resources"]}


def post(port: int, route: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps({"instances": rows}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


ADDRESSES = ["datasets.raw", "datasets.features", "models.m", "gates.ok", "deployments.api", "monitors.watch"]


def test_a_fresh_project_is_out_of_sync_and_missing(tmp_path: Path, make_project: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = make_project(tmp_path, spec(), files={"data/raw.csv": DATA}, pipeline=PIPELINE)
    payload = status(capsys, spec_file)
    assert table(payload) == dict.fromkeys(ADDRESSES, ("OutOfSync", "Missing"))
    assert payload["synced"] is False and payload["healthy"] is False and payload["plan_error"] is None
    assert payload["reconciler"]["commit"] is None
    reasons = {r["address"]: r["reasons"] for r in payload["resources"]}
    assert reasons["models.m"] == ["not yet run"] and reasons["datasets.raw"] == ["new data: datasets.raw"]
    code, out, _ = mlops(capsys, "-f", str(spec_file), "status")
    assert code == 0
    assert re.search(r"deployments\.api\s+OutOfSync\s+Missing\s+not running in Ray Serve · plan: not yet run", out)
    assert out.rstrip().endswith("reconciler: no commit synced yet")


def test_rollback_refuses_unknown_deployments_and_missing_versions(tmp_path: Path, make_project: Any,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = str(make_project(tmp_path, spec(), files={"data/raw.csv": DATA}, pipeline=PIPELINE))
    code, out, err = mlops(capsys, "-f", spec_file, "rollback", "apo")
    assert code == 1 and out == "" and err.strip() == "error: unknown deployment 'apo' (did you mean 'api'?)"
    code, _, err = mlops(capsys, "-f", spec_file, "rollback", "api")
    assert code == 1
    assert err.strip() == "error: deployments.api: no earlier version of models.m passed the gates of deployments.api"
    code, out, _ = mlops(capsys, "-f", spec_file, "rollback", "api", "--to", "3", "--json")
    assert code == 1 and json.loads(out)["diagnostics"][0]["message"] == "models.m has no version 3"


def test_failed_runs_and_gates_are_degraded_and_an_awaited_approval_progressing(
        tmp_path: Path, make_project: Any, capsys: pytest.CaptureFixture[str]) -> None:
    body = {
        "apiVersion": "mlops/v1", "project": "mixed", "datasets": {"raw": {"path": "data/raw.csv"}},
        "models": {"broken": {"train": "pipeline:train", "data": {"train": "raw"}, "params": {"fail": True},
                              "retries": 0},
                   "weak": {"train": "pipeline:train", "data": {"train": "raw"}, "params": {"auc": 0.6}},
                   "good": {"train": "pipeline:train", "data": {"train": "raw"}, "params": {"auc": 0.9}}},
        "gates": {"strict": {"model": "weak", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]},
                  "signoff": {"model": "good", "approvals": {"required": 1, "from": ["team:risk"]}}},
    }
    spec_file = make_project(tmp_path, body, files={"data/raw.csv": DATA}, pipeline=PIPELINE)
    assert not apply_project(load_project(spec_file)).result.ok
    payload = status(capsys, spec_file)
    rows = {r["address"]: r for r in payload["resources"]}
    assert table(payload) == {
        "datasets.raw": ("Synced", "Healthy"), "models.broken": ("OutOfSync", "Degraded"),
        "models.weak": ("Synced", "Healthy"), "models.good": ("Synced", "Healthy"),
        "gates.strict": ("OutOfSync", "Degraded"), "gates.signoff": ("OutOfSync", "Progressing")}
    assert "the trainer broke" in rows["models.broken"]["detail"]
    assert rows["gates.strict"]["detail"].startswith("version 1 failed: auc")
    assert rows["gates.signoff"]["detail"] == "version 1 awaiting approval (0 of 1)"


def test_status_after_apply_is_synced_and_healthy_from_ray_serve(tmp_path: Path, make_project: Any,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 serve_port: int) -> None:
    spec_file = make_project(tmp_path, spec(), files={"data/raw.csv": DATA}, pipeline=PIPELINE)
    assert apply_project(load_project(spec_file)).result.ok
    payload = status(capsys, spec_file)
    assert payload["serve"] == "reachable"
    assert table(payload) == {**dict.fromkeys(ADDRESSES, ("Synced", "Healthy")),
                              "monitors.watch": ("Synced", "Missing")}
    detail = {r["address"]: r["detail"] for r in payload["resources"]}
    assert detail["deployments.api"].startswith("Ray Serve: version 1, 1 replica(s), RUNNING")

    post(serve_port, "/api", [{"x": i / 10} for i in range(40)])  # the reference's distribution
    time.sleep(1.1)  # the replica's log writer flushes on the next write after a second
    post(serve_port, "/api", [{"x": 2.5}])
    assert mlops(capsys, "-f", str(spec_file), "monitor", "run")[0] == 0
    with opened(load_project(spec_file)) as (_, store):
        store.set_reconciler_status(ReconcilerStatus(commit="0123456789abcdef", synced_at=time.time()))
    payload = status(capsys, spec_file)
    assert set(table(payload).values()) == {("Synced", "Healthy")} and payload["healthy"] and payload["synced"]
    assert payload["reconciler"]["commit"] == "0123456789abcdef"
    code, out, _ = mlops(capsys, "-f", str(spec_file), "status")
    for address in ADDRESSES:
        assert re.search(rf"{re.escape(address)}\s+Synced\s+Healthy", out), out
    assert "reconciler: last synced commit 0123456789ab at " in out

    # Another process, with no local cluster running (`mlops up`): nothing can be serving the deployment.
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec_file), "status", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    alone = json.loads(done.stdout)
    assert alone["serve"] == "down"
    assert table(alone) == {**dict.fromkeys(ADDRESSES, ("Synced", "Healthy")),
                            "deployments.api": ("OutOfSync", "Missing")}
    row = next(r for r in alone["resources"] if r["address"] == "deployments.api")
    assert row["reasons"] == ["live state differs: the local Ray cluster is down (`mlops apply` starts it again)"]


def test_rollback_cli_on_a_batch_deployment(tmp_path: Path, make_project: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    body = spec()
    del body["monitors"]
    body["deployments"] = {"scores": {"model": "m", "gates": ["ok"], "mode": "batch", "input": "raw"}}
    spec_file = make_project(tmp_path, body, files={"data/raw.csv": DATA}, pipeline=PIPELINE)
    assert apply_project(load_project(spec_file)).result.ok
    body["models"]["m"]["params"]["w"] = 3.0
    spec_file.write_text(yaml.safe_dump(body, sort_keys=False))
    assert apply_project(load_project(spec_file)).result.ok
    code, out, _ = mlops(capsys, "-f", str(spec_file), "rollback", "scores", "--reason", "bad scores")
    assert code == 0
    assert out.strip() == ("deployments.scores now serves version 1 (was 2). To make it permanent: "
                           "set `deployments.scores.version: 1` in mlops.yaml")
    with opened(load_project(spec_file)) as (_, store):
        state = store.get_deployment("scores")
    assert state is not None and (state.live_version, state.pinned_version, state.pin_reason) == (1, 1, "bad scores")
    row = next(r for r in status(capsys, spec_file)["resources"] if r["address"] == "deployments.scores")
    assert (row["sync"], row["health"]) == ("Synced", "Healthy")
    assert row["detail"] == "version 1; rolled back (bad scores)"

    code, out, _ = mlops(capsys, "-f", str(spec_file), "rollback", "deployments.scores", "--to", "2", "--json")
    assert code == 0
    assert json.loads(out) == {"ok": True, "deployment": "deployments.scores", "model": "m", "from_version": 1,
                               "to_version": 2, "permanent_change": "set `deployments.scores.version: 2` in mlops.yaml"}
    with opened(load_project(spec_file)) as (_, store):
        state = store.get_deployment("scores")
        reasons = [r.payload["reason"] for r in audit.log(store) if r.action == "rollback"]
    assert state is not None and state.live_version == 2 and reasons == ["bad scores", "manual rollback"]
