"""Apply on a real local Ray with a real SQLite state and real artifacts: the reconciler's core behaviours."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from compiler.errors import MlopsError
from runtime.apply.operations import apply_project, approve, opened
from runtime.plan.project import plan_project

ROOT = Path(__file__).resolve().parents[1]

PIPELINE = '''
import os
import time

import torch

from runtime.context import TrainResult


def build_features(ctx):
    rows = []
    for name, path in sorted(ctx.inputs.items()):
        source = path if path.is_file() else next(p for p in path.rglob("*") if p.is_file())
        rows.append(source.read_text())
    (ctx.output_dir / "features.csv").write_text("".join(rows))


def train(ctx):
    if ctx.params.get("fail"):
        raise RuntimeError("boom")
    time.sleep(float(ctx.params.get("sleep", 0)))
    torch.manual_seed(ctx.seed)
    weight = torch.randn(4)
    score = float(ctx.params.get("lr", 0.1)) * 5 + float(weight.abs().mean()) / 100
    for step in range(3):
        ctx.log_metric("loss", 1.0 / (step + 1))
    print("training on", ctx.device)
    return TrainResult(model={"weight": weight}, metrics={"auc": score})


def evaluate(ctx):
    state = torch.load(ctx.model_path, weights_only=True)
    return {"auc_eval": float(state["weight"].abs().mean())}


def load_predictor(model_path, params):
    weight = torch.load(model_path, weights_only=True)["weight"]
    return lambda rows: [float(weight.sum()) * float(row.get("x", 1)) for row in rows]
'''


def spec(**models: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1",
        "project": "demo",
        "datasets": {"raw": {"path": "data/raw.csv"},
                     "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
        "models": models or {"churn": {"train": "pipeline:train", "evaluate": "pipeline:evaluate",
                                       "data": {"train": "features", "eval": "features"},
                                       "params": {"lr": 0.18}, "seed": 3}},
        "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]}},
        "deployments": {"api": {"model": "churn", "gates": ["quality"]}},
    }


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Any:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    yield
    ray_backend.shutdown()


def write(root: Path, make_project: Any, body: dict[str, Any]) -> Path:
    return make_project(root, body, files={"data/raw.csv": "a,b\n1,2\n3,4\n"}, pipeline=PIPELINE)


def actions(project: Any) -> dict[str, str]:
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    return {c.address: c.action for c in plan.resource_changes}


def test_apply_runs_everything_then_the_plan_is_a_no_op(tmp_path: Path, make_project: Any) -> None:
    project = load_project(write(tmp_path, make_project, spec()))
    outcome = apply_project(project)
    assert outcome.result.ok, outcome.result.outcomes
    assert {o.status for o in outcome.result.outcomes.values()} == {"succeeded"}
    assert set(actions(project).values()) == {"no-op"}
    with opened(project) as (workspace, store):
        version = store.get_model_version("churn", 1)
        assert version is not None and version.metrics["auc"] >= 0.9 and "auc_eval" in version.metrics
        assert version.data["datasets.features"]
        runs = store.list_runs("models.churn")
        assert {r.kind for r in runs} == {"trial", "evaluate"} and all(r.status == "succeeded" for r in runs)
        trial = next(r for r in runs if r.kind == "trial")
        assert [p.value for p in store.metric_history(trial.run_id) if p.name == "loss"] == [1.0, 0.5, 1 / 3]
        assert trial.log_uri is not None
        deployment = store.get_deployment("api")
        assert deployment is not None and deployment.desired_version == 1
        assert workspace.state_path == tmp_path / ".mlops" / "state.db"


def test_outputs_are_synced_to_disk_before_the_state_records_them(tmp_path: Path, make_project: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.artifacts.store import ArtifactStore

    project = load_project(write(tmp_path, make_project, spec()))
    state_db = tmp_path / ".mlops" / "state.db"
    syncs: list[tuple[set[str], set[str]]] = []  # at each sync: trees on disk, transform outputs recorded
    real_sync = ArtifactStore.sync

    def observed_sync(self: ArtifactStore) -> None:
        trees = Path(self.root) / "trees"
        with sqlite3.connect(state_db) as conn:
            recorded = {json.loads(outputs)["artifact"] for (outputs,) in
                        conn.execute("SELECT outputs FROM node_results WHERE kind = 'transform'")}
        syncs.append(({f"dir:sha256:{p.name}" for p in trees.iterdir()} if trees.is_dir() else set(), recorded))
        real_sync(self)

    monkeypatch.setattr(ArtifactStore, "sync", observed_sync)
    assert apply_project(project).result.ok
    with opened(project) as (_, store):
        outputs = [r.outputs["artifact"] for r in store.latest_results().values() if r.kind == "transform"]
    assert outputs and all(any(uri in trees and uri not in recorded for trees, recorded in syncs) for uri in outputs)


def test_param_change_retrains_only_the_model_and_makes_version_2(tmp_path: Path, make_project: Any) -> None:
    apply_project(load_project(write(tmp_path, make_project, spec())))
    changed = spec()
    changed["models"]["churn"]["params"]["lr"] = 0.2
    project = load_project(write(tmp_path, make_project, changed))
    assert actions(project)["datasets.features"] == "no-op"
    outcome = apply_project(project)
    ran = {nid for nid, o in outcome.result.outcomes.items() if o.status == "succeeded"}
    assert "datasets.features/transform" not in ran and "models.churn/train" in ran
    with opened(project) as (_, store):
        assert [v.version for v in store.model_versions("churn")] == [1, 2]


def test_same_fingerprint_trains_to_the_same_metrics(tmp_path: Path, make_project: Any) -> None:
    first = load_project(write(tmp_path / "a", make_project, spec()))
    second = load_project(write(tmp_path / "b", make_project, spec()))
    apply_project(first)
    apply_project(second)
    with opened(first) as (_, a), opened(second) as (_, b):
        va, vb = a.get_model_version("churn", 1), b.get_model_version("churn", 1)
        assert va is not None and vb is not None and va.metrics == vb.metrics


def test_failure_is_retried_then_skips_downstream_and_the_rest_goes_on(tmp_path: Path, make_project: Any) -> None:
    body = spec(churn={"train": "pipeline:train", "data": {"train": "features"}, "params": {"fail": True},
                       "retries": 1},
                other={"train": "pipeline:train", "data": {"train": "features"}, "params": {"lr": 0.2}})
    body["gates"]["quality"]["model"] = "churn"
    project = load_project(write(tmp_path, make_project, body))
    outcome = apply_project(project)
    statuses = {nid: o.status for nid, o in outcome.result.outcomes.items()}
    assert statuses["models.churn/train"] == "failed"
    assert "boom" in outcome.result.outcomes["models.churn/train"].message
    assert statuses["gates.quality/check"] == "skipped" and statuses["deployments.api/deploy"] == "skipped"
    assert statuses["models.other/train"] == "succeeded"
    assert not outcome.result.ok
    with opened(project) as (_, store):
        attempts = [r for r in store.list_runs("models.churn") if r.kind == "trial"]
        assert len(attempts) == 2 and all(r.status == "failed" for r in attempts)
        assert all(r.error and "boom" in r.error for r in attempts)


def test_timeout_fails_the_node(tmp_path: Path, make_project: Any) -> None:
    body = spec(churn={"train": "pipeline:train", "data": {"train": "features"}, "params": {"sleep": 30},
                       "timeout": "2s"})
    project = load_project(write(tmp_path, make_project, body))
    started = time.time()
    outcome = apply_project(project)
    assert outcome.result.outcomes["models.churn/train"].status == "failed"
    assert "timed out" in outcome.result.outcomes["models.churn/train"].message
    assert time.time() - started < 25


def test_sweep_trials_run_and_the_objective_picks_one(tmp_path: Path, make_project: Any) -> None:
    body = spec(churn={"train": "pipeline:train", "data": {"train": "features"}, "sweep": {"lr": [0.1, 0.3]},
                       "objective": {"metric": "auc", "goal": "maximize"}})
    project = load_project(write(tmp_path, make_project, body))
    outcome = apply_project(project, parallelism=2)
    assert outcome.result.ok
    with opened(project) as (_, store):
        version = store.get_model_version("churn", 1)
        assert version is not None and version.params["lr"] == 0.3


def test_gate_awaits_approval_then_promotes_after_approve(tmp_path: Path, make_project: Any) -> None:
    body = spec()
    body["gates"]["quality"]["approvals"] = {"required": 1, "from": ["team:risk"]}
    project = load_project(write(tmp_path, make_project, body))
    first = apply_project(project)
    assert first.result.outcomes["gates.quality/check"].status == "blocked"
    assert first.result.outcomes["deployments.api/deploy"].status == "blocked"
    assert actions(project)["gates.quality"] == "blocked"
    with pytest.raises(MlopsError, match="may not approve"):
        approve(project, "quality", 1, "team:intern")
    approve(project, "quality", 1, "team:risk")
    assert actions(project)["gates.quality"] == "update"
    second = apply_project(project)
    assert second.result.ok and second.result.outcomes["deployments.api/deploy"].status == "succeeded"


def test_failing_gate_rejects_the_version_with_its_reason(tmp_path: Path, make_project: Any) -> None:
    body = spec()
    body["models"]["churn"]["params"]["lr"] = 0.01
    project = load_project(write(tmp_path, make_project, body))
    outcome = apply_project(project)
    assert outcome.result.outcomes["gates.quality/check"].status == "blocked"
    with opened(project) as (_, store):
        version = store.get_model_version("churn", 1)
        assert version is not None and version.status == "rejected" and "auc" in version.reason
    assert actions(project)["gates.quality"] == "blocked"


def test_gpu_request_on_a_cpu_cluster_is_refused_at_plan_time(tmp_path: Path, make_project: Any) -> None:
    body = spec()
    body["models"]["churn"]["resources"] = {"gpus": 1}
    project = load_project(write(tmp_path, make_project, body))
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(MlopsError, match="infeasible: asks for 1 GPU"), opened(project) as (_, store):
        plan_project(project, store)


def test_a_saved_plan_is_refused_once_stale(tmp_path: Path, make_project: Any) -> None:
    from runtime.plan import planfile

    project = load_project(write(tmp_path, make_project, spec()))
    with opened(project) as (_, store):
        _, plan = plan_project(project, store)
    saved = tmp_path / "plan.json"
    planfile.save(plan, project.spec_path, saved)
    apply_project(project)
    with pytest.raises(MlopsError, match="plan is stale"):
        apply_project(project, plan_path=saved)


def test_cli_apply_trains_the_churn_example_and_passes_its_gate(tmp_path: Path) -> None:
    workdir = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(workdir)], check=True)
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    try:
        result = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", "examples/churn/mlops.yaml",
                                 "--json", "apply"], cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        assert report["outcomes"]["gates.churn-quality/check"]["status"] == "succeeded"
        assert report["outcomes"]["deployments.churn-api/deploy"]["status"] == "succeeded"
    finally:  # the realtime deployment started the long-lived local cluster: stop it
        subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", "examples/churn/mlops.yaml", "down"],
                       cwd=workdir, capture_output=True, text=True, env=env, timeout=120)


RETURNING = '''

def train_returning(ctx):
    """Returns the model the ``returns`` param names: a Module, a path outside ctx.output_dir, a link, a file."""
    returns = ctx.params["returns"]
    if returns == "module":
        return TrainResult(model=torch.nn.Linear(2, 1), metrics={"auc": 0.9})
    if returns == "passwd":
        return TrainResult(model="/etc/passwd", metrics={"auc": 0.9})
    if returns == "link":
        (ctx.output_dir / "model.pt").symlink_to("/etc/passwd")
        return TrainResult(model=ctx.output_dir / "model.pt", metrics={"auc": 0.9})
    (ctx.output_dir / "model.bin").write_bytes(b"weights")
    return TrainResult(model=str(ctx.output_dir / "model.bin"), metrics={"auc": 0.9})
'''


def test_a_trainer_returning_a_module_or_a_path_outside_its_output_dir_fails_with_one_line(
        tmp_path: Path, make_project: Any) -> None:
    models = {name: {"train": "pipeline:train_returning", "data": {"train": "features"}, "params": {"returns": name}}
              for name in ("module", "passwd", "link", "file")}
    body = {**spec(**models), "gates": {}, "deployments": {}}
    project = load_project(make_project(tmp_path, body, files={"data/raw.csv": "a,b\n1,2\n"},
                                        pipeline=PIPELINE + RETURNING))
    outcomes = apply_project(project, parallelism=1).result.outcomes
    messages = {name: outcomes[f"models.{name}/train"].message for name in models}
    assert {name: outcomes[f"models.{name}/train"].status for name in models} == {
        "module": "failed", "passwd": "failed", "link": "failed", "file": "succeeded"}, messages
    assert "returned a torch.nn.Module (Linear)" in messages["module"]
    assert "TrainResult(model=model.state_dict(), ...)" in messages["module"]
    assert "'/etc/passwd', which is outside ctx.output_dir" in messages["passwd"]
    assert "model.pt', which is outside ctx.output_dir" in messages["link"]  # the link is resolved
    assert all("\n" not in message for message in messages.values())
    with opened(project) as (_, store):
        assert [v.model for v in store.model_versions("module") + store.model_versions("passwd")
                + store.model_versions("link") + store.model_versions("file")] == ["file"]
        [run] = [r for r in store.list_runs("models.passwd") if r.kind == "trial"]
        assert run.status == "failed" and run.error == messages["passwd"]


def test_a_run_records_when_its_worker_ran_it_not_when_it_was_queued(tmp_path: Path, make_project: Any) -> None:
    # On 2 CPUs: a's trial and b's run at once, c's waits; when a's ends, c's takes its CPU (the queue is in
    # submission order), so a's evaluation, submitted then, waits for b's or c's 5 s of training.
    slow = {"train": "pipeline:train", "data": {"train": "features"}, "params": {"sleep": 5}}
    body = spec(a={"train": "pipeline:train", "evaluate": "pipeline:evaluate",
                   "data": {"train": "features", "eval": "features"}, "params": {"lr": 0.18}}, b=slow, c=slow)
    body["gates"]["quality"]["model"] = "a"
    body["deployments"]["api"]["model"] = "a"
    project = load_project(write(tmp_path, make_project, body))
    outcome = apply_project(project, parallelism=4)
    assert outcome.result.ok, outcome.result.outcomes
    with opened(project) as (_, store):
        runs = {r.kind: r for r in store.list_runs("models.a")}
    trial, evaluation = runs["trial"], runs["evaluate"]
    assert trial.finished_at is not None and evaluation.finished_at is not None
    assert evaluation.started_at - trial.finished_at > 1.0  # it waited for a CPU ...
    assert evaluation.finished_at - evaluation.started_at < 1.0  # ... and that wait is not its duration


def test_a_run_records_the_host_and_pid_of_the_worker_that_ran_it(tmp_path: Path, make_project: Any) -> None:
    import socket

    project = load_project(make_project(tmp_path, spec(), files={"data/raw.csv": "x\n1\n"}, pipeline=PIPELINE))
    assert apply_project(project, targets=["models.churn"]).result.ok
    with opened(project) as (_, store):
        runs = store.list_runs(None, limit=10)
    assert {r.kind for r in runs} == {"transform", "trial", "evaluate"}
    for run in runs:
        assert run.pid not in (0, os.getpid()), f"{run.node_id} records pid {run.pid}, not its worker's"
        assert run.host == socket.gethostname()
