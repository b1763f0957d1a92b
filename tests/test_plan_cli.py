"""``mlops plan`` through a subprocess: exit codes, JSON shape, saved plans, targets, infeasible requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SPEC: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "demo",
    "datasets": {"raw": {"path": "data/raw.csv"},
                 "features": {"from": ["raw"], "transform": "pipeline:build_features"}},
    "models": {"churn": {"train": "pipeline:train", "data": {"train": "features"}, "params": {"lr": 0.01}}},
}


def mlops(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                       "HOME": str(cwd)})


def test_plan_of_a_new_project_lists_creates_and_detailed_exitcode_is_2(tmp_path: Path, make_project: Any) -> None:
    make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})
    plain = mlops(tmp_path, "plan")
    assert plain.returncode == 0, plain.stderr
    assert "datasets.raw will be created" in plain.stdout and "models.churn will be created" in plain.stdout
    assert "Plan: 3 to create, 0 to replace, 0 to update, 0 to delete, 0 blocked." in plain.stdout
    assert mlops(tmp_path, "plan", "--detailed-exitcode").returncode == 2


def test_plan_json_follows_the_spec_contract(tmp_path: Path, make_project: Any) -> None:
    make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})
    result = mlops(tmp_path, "--json", "plan")
    plan = json.loads(result.stdout)
    assert plan["format_version"] == "1"
    assert {c["address"]: c["action"] for c in plan["resource_changes"]} == {
        "datasets.raw": "create", "datasets.features": "create", "models.churn": "create"}
    assert all(isinstance(c["reasons"], list) for c in plan["resource_changes"])
    assert plan["summary"]["create"] == 3


def test_plan_target_limits_to_the_resource_and_its_upstream(tmp_path: Path, make_project: Any) -> None:
    make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})
    plan = json.loads(mlops(tmp_path, "--json", "plan", "--target", "datasets.features").stdout)
    assert {c["address"] for c in plan["resource_changes"]} == {"datasets.raw", "datasets.features"}
    unknown = mlops(tmp_path, "plan", "--target", "models.nope")
    assert unknown.returncode == 1 and "no such resource" in unknown.stderr


def test_plan_out_writes_a_plan_file(tmp_path: Path, make_project: Any) -> None:
    make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})
    result = mlops(tmp_path, "plan", "--out", "plan.json")
    assert result.returncode == 0
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["kind"] == "mlops-plan" and saved["plan"]["summary"]["create"] == 3


def test_apply_refuses_a_file_that_is_not_a_plan(tmp_path: Path, make_project: Any) -> None:
    make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})
    (tmp_path / "bogus.json").write_text("{}")
    result = mlops(tmp_path, "apply", "bogus.json")
    assert result.returncode == 1 and "not a saved plan" in result.stderr and "Traceback" not in result.stderr


def test_infeasible_gpu_request_is_a_positioned_error_at_plan_time(tmp_path: Path, make_project: Any) -> None:
    spec = {**SPEC, "models": {"churn": {**SPEC["models"]["churn"], "resources": {"gpus": 2}}}}
    make_project(tmp_path, spec, files={"data/raw.csv": "a\n1\n"})
    result = mlops(tmp_path, "plan")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith("mlops.yaml:") and "models.churn: infeasible: asks for 2 GPU(s)" in line


def test_distributed_training_wider_than_the_cluster_is_infeasible(tmp_path: Path, make_project: Any) -> None:
    import os

    cpus = os.cpu_count() or 1
    spec = {**SPEC, "models": {"churn": {**SPEC["models"]["churn"], "resources": {"cpus": 1, "workers": cpus + 1}}}}
    make_project(tmp_path, spec, files={"data/raw.csv": "a\n1\n"})
    result = mlops(tmp_path, "plan")
    assert result.returncode == 1
    assert f"infeasible: asks for {cpus + 1} CPU(s) ({cpus + 1} workers × 1)" in result.stderr
