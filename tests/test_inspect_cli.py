"""``mlops runs|models|lineage|audit|force-unlock`` through a subprocess, over a state made by real applies.

One real project per module: a git repository, a source and a derived dataset, a swept model with an
evaluation, a model that always fails (retried once), a gate that needs an approval and a deployment.
It is applied on a real local Ray, approved, and applied again; the commands then read that state.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import write_project

from compiler import load_project
from compiler.content_hash import hash_path
from runtime.apply.operations import apply_project, approve
from runtime.artifacts.store import ArtifactStore
from runtime.provenance import actor
from runtime.state import StateStore, audit, lock

ROOT = Path(__file__).resolve().parents[1]

PIPELINE = '''
import torch

from runtime.context import TrainResult


def build_features(ctx):
    rows = [path.read_text() for _, path in sorted(ctx.inputs.items())]
    (ctx.output_dir / "features.csv").write_text("".join(rows))


def train(ctx):
    if ctx.params.get("fail"):
        raise RuntimeError("boom")
    torch.manual_seed(ctx.seed)
    weight = torch.randn(4)
    for step in range(3):
        ctx.log_metric("loss", 1.0 / (step + 1))
    print("training on", ctx.device)
    return TrainResult(model={"weight": weight}, metrics={"auc": float(ctx.params["lr"]) * 5})


def evaluate(ctx):
    state = torch.load(ctx.model_path, weights_only=True)
    return {"auc_eval": float(state["weight"].abs().mean())}


def load_predictor(model_path, params):
    weight = torch.load(model_path, weights_only=True)["weight"]
    return lambda rows: [float(weight.sum()) for _ in rows]
'''

SPEC: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "demo",
    "datasets": {"raw": {"path": "data/raw.csv"},
                 "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
    "models": {
        "churn": {"train": "pipeline:train", "evaluate": "pipeline:evaluate",
                  "data": {"train": "features", "eval": "features"}, "sweep": {"lr": [0.1, 0.18]},
                  "objective": {"metric": "auc", "goal": "maximize"}, "seed": 3},
        "weak": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"fail": True}, "retries": 1},
    },
    "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                          "approvals": {"required": 1, "from": ["team:risk"]}}},
    "deployments": {"api": {"model": "churn", "gates": ["quality"]}},
}
RAW = "a,b\n1,2\n3,4\n"
Runs = list[dict[str, Any]]


@dataclass
class Applied:
    root: Path
    commit: str
    actor: str
    home: Path


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null"}
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    """The project after apply (gate awaits approval), approve, apply (gate passes, deployed)."""
    from runtime.compute import ray_backend

    root = tmp_path_factory.mktemp("inspect") / "demo"
    spec_path = write_project(root, SPEC, files={"data/raw.csv": RAW, ".gitignore": ".mlops/\n__pycache__/\n"},
                              pipeline=PIPELINE, git=False)
    git(root, "init", "-q")
    git(root, "config", "user.email", "ml@example.com")
    git(root, "config", "user.name", "ML")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    project = load_project(spec_path)
    ray_backend.connect(None, num_cpus=2)
    try:
        first = apply_project(project, parallelism=1)  # one warm worker: no second worker start
        assert first.result.outcomes["gates.quality/check"].status == "blocked", first.result.outcomes
        approve(project, "quality", 1, "team:risk")
        second = apply_project(project, parallelism=1)  # one warm worker: no second worker start
        assert second.result.outcomes["deployments.api/deploy"].status == "succeeded", second.result.outcomes
    finally:
        ray_backend.shutdown()
    home = tmp_path_factory.mktemp("home")
    yield Applied(root, git(root, "rev-parse", "HEAD"), actor(root), home)


def mlops(applied: Applied, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(applied.home)}
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args], cwd=cwd or applied.root,
                          capture_output=True, text=True, timeout=120, env=env)


def ok_json(applied: Applied, *args: str, cwd: Path | None = None) -> Any:
    result = mlops(applied, "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a user error (exit 1, no traceback)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def runs(applied: Applied) -> Runs:
    """``mlops runs list --json``, once."""
    listed: list[dict[str, Any]] = ok_json(applied, "runs", "list")["runs"]
    return listed


def run_of(runs: Runs, node_id: str) -> dict[str, Any]:
    return next(r for r in runs if r["node_id"] == node_id)


def copy_of(applied: Applied, tmp_path: Path) -> Path:
    """A copy of the applied project (state, audit anchor and artifacts) to damage freely."""
    target = tmp_path / "copy"
    shutil.copytree(applied.root, target)
    return target


# --- runs ----------------------------------------------------------------------------------------


def test_runs_list_shows_every_run_newest_first_with_provenance(applied: Applied, runs: Runs) -> None:
    nodes = sorted(r["node_id"] for r in runs)
    assert nodes == sorted(["datasets.features/transform", "models.churn/train[lr=0.1]",
                            "models.churn/train[lr=0.18]", "models.churn/evaluate", *["models.weak/train"] * 4])
    assert [r["started_at"] for r in runs] == sorted((r["started_at"] for r in runs), reverse=True)
    assert {r["git_commit"] for r in runs} == {applied.commit}
    weak = [r for r in runs if r["node_id"] == "models.weak/train"]
    assert sorted(r["attempt"] for r in weak) == [1, 1, 2, 2] and {r["status"] for r in weak} == {"failed"}
    trial = next(r for r in runs if r["node_id"] == "models.churn/train[lr=0.18]")
    assert trial["status"] == "succeeded" and trial["metrics"]["auc"] == pytest.approx(0.9)
    assert trial["duration"] is not None and trial["duration"] >= 0

    churn = ok_json(applied, "runs", "list", "--model", "churn")["runs"]
    assert {r["address"] for r in churn} == {"models.churn"} and len(churn) == 3
    assert len(ok_json(applied, "runs", "list", "--address", "models.weak", "--limit", "2")["runs"]) == 2

    human = mlops(applied, "runs", "list", "--model", "churn")
    assert human.returncode == 0, human.stderr
    assert "models.churn/train[lr=0.18]" in human.stdout and trial["run_id"] in human.stdout
    assert applied.commit[:7] in human.stdout and "auc=0.9" in human.stdout


def test_runs_list_of_an_unknown_model_suggests_the_close_one(applied: Applied) -> None:
    line = one_line_error(mlops(applied, "runs", "list", "--model", "chrn"))
    assert line == "error: unknown resource 'models.chrn' (did you mean 'models.churn'?)"


def test_runs_show_has_params_metric_history_provenance_and_the_log(applied: Applied, runs: Runs) -> None:
    trial = run_of(runs, "models.churn/train[lr=0.18]")
    shown = ok_json(applied, "runs", "show", trial["run_id"][:8])  # a unique prefix names the run
    assert shown["run"]["run_id"] == trial["run_id"]
    assert shown["run"]["params"] == {"lr": 0.18}
    assert shown["history"]["loss"] == [[0, 1.0], [1, 0.5], [2, pytest.approx(1 / 3)]]
    assert shown["run"]["git_commit"] == applied.commit and shown["run"]["git_dirty"] is False
    assert shown["run"]["host"] and "training on cpu" in shown["log"]

    human = mlops(applied, "runs", "show", trial["run_id"])
    assert human.returncode == 0, human.stderr
    for text in ("models.churn/train[lr=0.18]", "succeeded", "lr", "0.18", "LOSS", "0.3333", applied.commit,
                 "training on cpu"):
        assert text in human.stdout, text
    without_log = mlops(applied, "runs", "show", trial["run_id"], "--no-log")
    assert without_log.returncode == 0 and "training on cpu" not in without_log.stdout


def test_runs_show_of_a_failed_run_has_its_error_and_the_traceback_it_logged(applied: Applied, runs: Runs) -> None:
    failed = run_of(runs, "models.weak/train")
    shown = ok_json(applied, "runs", "show", failed["run_id"])
    assert shown["run"]["status"] == "failed" and "boom" in shown["run"]["error"]
    assert "RuntimeError: boom" in shown["log"]
    human = mlops(applied, "runs", "show", failed["run_id"])
    assert "error: RuntimeError: boom" in human.stdout and 'raise RuntimeError("boom")' in human.stdout


def test_runs_show_of_an_unknown_id_is_one_line_with_a_suggestion(applied: Applied, runs: Runs) -> None:
    real = run_of(runs, "models.churn/evaluate")["run_id"]
    typo = real[:-1] + ("0" if real[-1] != "0" else "1")
    assert one_line_error(mlops(applied, "runs", "show", typo)) == \
        f"error: unknown run '{typo}' (did you mean '{real}'?)"


def test_runs_compare_puts_runs_side_by_side_and_marks_what_differs(applied: Applied, runs: Runs) -> None:
    low, high = run_of(runs, "models.churn/train[lr=0.1]"), run_of(runs, "models.churn/train[lr=0.18]")
    compared = ok_json(applied, "runs", "compare", low["run_id"], high["run_id"])
    assert [r["run_id"] for r in compared["runs"]] == [low["run_id"], high["run_id"]]
    params = {row["key"]: row for row in compared["params"]}
    metrics = {row["key"]: row for row in compared["metrics"]}
    assert params["lr"] == {"key": "lr", "values": [0.1, 0.18], "differs": True}
    assert metrics["auc"]["differs"] is True and metrics["loss"]["differs"] is False

    human = mlops(applied, "runs", "compare", low["run_id"], high["run_id"])
    assert human.returncode == 0, human.stderr
    lr_line = next(line for line in human.stdout.splitlines() if " lr " in f"{line} ")
    assert "≠" in lr_line and "0.1" in lr_line and "0.18" in lr_line
    loss_line = next(line for line in human.stdout.splitlines() if "loss" in line)
    assert "≠" not in loss_line
    assert "at least two" in one_line_error(mlops(applied, "runs", "compare", low["run_id"]))


# --- models --------------------------------------------------------------------------------------


def test_models_list_shows_versions_and_where_they_are_deployed(applied: Applied) -> None:
    models = {m["name"]: m for m in ok_json(applied, "models", "list")["models"]}
    assert set(models) == {"churn", "weak"}
    churn = models["churn"]
    assert churn["versions"] == 1 and churn["newest"]["version"] == 1 and churn["newest"]["status"] == "approved"
    assert [(d["name"], d["desired_version"]) for d in churn["deployments"]] == [("api", 1)]
    assert models["weak"]["versions"] == 0 and models["weak"]["newest"] is None

    human = mlops(applied, "models", "list")
    assert human.returncode == 0, human.stderr
    churn_line = next(line for line in human.stdout.splitlines() if "models.churn" in line)
    assert "approved" in churn_line and "api (desired 1" in churn_line


def test_models_show_has_gate_decisions_and_approvals_per_version(applied: Applied) -> None:
    shown = ok_json(applied, "models", "show", "churn")
    [version] = shown["versions"]
    assert version["version"]["params"] == {"lr": 0.18} and version["version"]["metrics"]["auc"] == pytest.approx(0.9)
    assert [d["status"] for d in version["gate_decisions"]] == ["awaiting_approval", "passed"]
    assert version["gate_decisions"][-1]["checks"][0]["passed"] is True
    assert [(a["gate"], a["approver"]) for a in version["approvals"]] == [("quality", "team:risk")]
    assert version["desired_in"] == ["api"] and version["live_in"] == ["api"]  # served by Ray Serve
    assert ok_json(applied, "models", "show", "models.churn", "--version", "1") == shown

    human = mlops(applied, "models", "show", "churn")
    assert human.returncode == 0, human.stderr
    for text in ("gates.quality: awaiting_approval", "gates.quality: passed", "auc 0.9 >= 0.8",
                 "approved at gates.quality by team:risk", "api (live)"):
        assert text in human.stdout, text


def test_models_show_refuses_unknown_models_and_versions(applied: Applied) -> None:
    assert one_line_error(mlops(applied, "models", "show", "chrn")) == \
        "error: unknown model 'chrn' (did you mean 'churn'?)"
    assert one_line_error(mlops(applied, "models", "show", "churn", "--version", "2")) == \
        "error: models.churn has no version 2 (versions: 1)"


# --- lineage -------------------------------------------------------------------------------------


def test_lineage_of_a_model_version_reaches_the_source_data(applied: Applied, runs: Runs) -> None:
    found = ok_json(applied, "lineage", "models.churn@1")
    assert ok_json(applied, "lineage", "models.churn") == found  # without @N: the newest version
    assert found["run"]["run_id"] == run_of(runs, "models.churn/train[lr=0.18]")["run_id"]
    assert found["params"] == {"lr": 0.18} and found["git_commit"] == applied.commit
    assert found["code_hash"] == hashlib.sha256((applied.root / "pipeline.py").read_bytes()).hexdigest()
    [features] = found["datasets"]
    assert features["address"] == "datasets.features" and features["run_id"] is not None
    assert found["data"] == {"datasets.features": features["content_hash"]}
    # the recorded hash is the hash of what the transform stored
    stored = ArtifactStore(applied.root / ".mlops" / "artifacts").materialize_dir(
        features["artifact_uri"], applied.home / "features")
    assert hash_path(stored) == features["content_hash"]
    [raw] = features["upstream"]
    raw_hash = hashlib.sha256(RAW.encode()).hexdigest()
    assert raw["address"] == "datasets.raw" and raw["content_hash"] == raw_hash
    assert found["upstream_datasets"] == ["datasets.features", "datasets.raw"]

    human = mlops(applied, "lineage", "models.churn@1")
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith("models.churn@1")
    raw_line = next(line for line in human.stdout.splitlines() if "datasets.raw" in line)
    assert raw_hash in raw_line and raw_line.lstrip(" │").startswith("└── datasets.raw")
    assert "lr = 0.18" in human.stdout and applied.commit in human.stdout


def test_lineage_of_a_dataset_lists_its_snapshots_and_their_users(applied: Applied) -> None:
    raw = ok_json(applied, "lineage", "datasets.raw")
    [snapshot] = raw["snapshots"]
    assert snapshot["number"] == 1 and snapshot["content_hash"] == hashlib.sha256(RAW.encode()).hexdigest()
    assert snapshot["used_by"] == ["models.churn@1"]
    assert raw["consumers"] == ["datasets.features"] and raw["source"] == "data/raw.csv"
    features = ok_json(applied, "lineage", "datasets.features@1")
    assert features["upstream"] == ["datasets.raw"] and features["transform"] == "pipeline:build_features"
    assert [u["address"] for u in features["snapshots"][0]["upstream"]] == ["datasets.raw"]
    human = mlops(applied, "lineage", "datasets.raw")
    assert "#1" in human.stdout and "used by models.churn@1" in human.stdout


def test_lineage_refuses_unknown_addresses_and_versions(applied: Applied) -> None:
    assert one_line_error(mlops(applied, "lineage", "churn@1")) == \
        "error: unknown address 'churn' (did you mean 'models.churn'?)"
    assert one_line_error(mlops(applied, "lineage", "models.churn@9")) == \
        "error: models.churn has no version 9 (versions: 1)"
    assert one_line_error(mlops(applied, "lineage", "datasets.featurs")) == \
        "error: unknown dataset 'datasets.featurs' (did you mean 'datasets.features'?)"


# --- audit ---------------------------------------------------------------------------------------


def test_audit_log_lists_applies_and_the_approval_and_verify_says_intact(applied: Applied) -> None:
    records = ok_json(applied, "audit", "log")["records"]
    assert [(r["seq"], r["action"]) for r in records] == [(1, "decide"), (2, "apply"), (3, "approve"), (4, "decide"),
                                                          (5, "apply")]
    assert records[2]["actor"] == "team:risk" and records[1]["actor"] == applied.actor
    assert records[1]["commit"] == applied.commit
    assert [records[0]["payload"]["status"], records[3]["payload"]["status"]] == ["awaiting_approval", "passed"]
    assert records[0]["actor"] == applied.actor and records[0]["commit"] == applied.commit
    assert records[4]["payload"]["outcomes"]["deployments.api/deploy"] == "succeeded"
    assert [r["seq"] for r in ok_json(applied, "audit", "log", "--limit", "1")["records"]] == [5]
    human = mlops(applied, "audit", "log")
    assert "gates.quality models.churn@1" in human.stdout and "failed: models.weak/train" in human.stdout
    assert "gates.quality models.churn@1 passed" in human.stdout

    verified = mlops(applied, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == "audit trail intact: 5 records"


def test_audit_verify_names_an_edited_record_and_a_deleted_one(applied: Applied, tmp_path: Path) -> None:
    root = copy_of(applied, tmp_path)
    with sqlite3.connect(root / ".mlops" / "state.db") as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET payload = replace(payload, '\"version\":1', '\"version\":2') WHERE seq = 3")
    result = mlops(applied, "audit", "verify", cwd=root)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert "error: audit: record 3: edited (its content does not match its hash)" in lines
    assert "error: audit: the append-only trigger audit_no_update was dropped" in lines
    assert "intact" not in result.stdout
    report = json.loads(mlops(applied, "--json", "audit", "verify", cwd=root).stdout)
    assert report["ok"] is False and report["records"] == 5 and len(report["problems"]) == len(lines)

    root = copy_of(applied, tmp_path / "second")
    with sqlite3.connect(root / ".mlops" / "state.db") as db:
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit WHERE seq = 5")
    result = mlops(applied, "audit", "verify", cwd=root)
    assert result.returncode == 1
    assert any("log ends at record 4: the last records were deleted" in line for line in result.stderr.splitlines())


# --- force-unlock --------------------------------------------------------------------------------


def test_force_unlock_refuses_a_wrong_id_and_a_live_holder_then_clears_a_dead_ones(applied: Applied,
                                                                                     tmp_path: Path) -> None:
    root = copy_of(applied, tmp_path)
    state = root / ".mlops" / "state.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom runtime.state import lock\n"
         "held = lock.acquire(sys.argv[1], 'apply', 'tester@ci')\nprint(held.info.id, flush=True)\ntime.sleep(120)",
         str(state)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None
        lock_id = holder.stdout.readline().strip()
        assert lock_id, "the holder did not take the lock"
        wrong = one_line_error(mlops(applied, "force-unlock", "not-the-id", cwd=root))
        assert f"does not match the lock's ID '{lock_id}'" in wrong
        live = one_line_error(mlops(applied, "force-unlock", lock_id, cwd=root))
        assert f"lock {lock_id} is held by a live process (PID {holder.pid}" in live
        assert lock.read_info(state) is not None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.read_info(state) is not None  # kill -9 leaves its information behind
    cleared = ok_json(applied, "force-unlock", lock_id, cwd=root)
    assert cleared["lock"]["id"] == lock_id and cleared["lock"]["who"] == "tester@ci"
    assert lock.read_info(state) is None
    with StateStore.open(state) as store:
        [record] = audit.log(store, limit=1)
    assert record.action == "force-unlock" and record.payload["lock"]["id"] == lock_id
    assert "not locked" in one_line_error(mlops(applied, "force-unlock", lock_id, cwd=root))
    assert mlops(applied, "audit", "verify", cwd=root).stdout.strip() == "audit trail intact: 6 records"


def test_runs_list_and_show_give_a_run_of_milliseconds_in_ms_not_zero_seconds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import run_cli

    from runtime.state.records import Run

    spec_path = write_project(tmp_path, SPEC, files={"data/raw.csv": RAW}, pipeline=PIPELINE)
    with StateStore.open(tmp_path / ".mlops" / "state.db") as store:
        for run_id, kind, seconds in (("e" * 16, "evaluate", 0.014), ("t" * 16, "trial", 1.5)):
            store.start_run(Run(run_id, f"models.churn/{kind}", "models.churn", kind, "fp", started_at=1_767_225_600.0))
            store.finish_run(run_id, "succeeded", {"auc": 0.9}, finished_at=1_767_225_600.0 + seconds)
    code, out, _ = run_cli(capsys, "-f", str(spec_path), "--no-color", "runs", "list")
    assert code == 0
    [evaluation] = [line for line in out.splitlines() if line.strip().startswith("e" * 16)]
    assert " 14ms " in evaluation and "0.0s" not in evaluation
    assert " 1.5s " in next(line for line in out.splitlines() if line.strip().startswith("t" * 16))
    code, out, _ = run_cli(capsys, "-f", str(spec_path), "--no-color", "runs", "show", "e" * 16)
    assert code == 0 and re.search(r"duration\s+14ms", out), out
