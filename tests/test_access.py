"""Access: ``mlops approve`` records an approval only from a principal the gate allows, and a refused one leaves
no trace: no approval, no audit record, and the trail still verifies.

The model version approved is put in the real state store directly (no training is needed to approve).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import with_version_one

from compiler import load_project
from compiler.resolve import Project
from runtime.apply.operations import opened
from runtime.state import audit

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "apiVersion": "mlops/v1", "project": "access",
    "datasets": {"raw": {"path": "data/raw.csv"}},
    "models": {"churn": {"train": "pipeline:train", "data": {"train": "raw"}}},
    "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                          "approvals": {"required": 1, "from": ["team:risk", "dpo@example.com"]}}},
}


@pytest.fixture
def project(tmp_path: Path, make_project: Callable[..., Path]) -> Project:
    """The project with version 1 of its model in the state, awaiting approval."""
    return with_version_one(load_project(make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})))


def approve(project: Project, *args: str, actor: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MLOPS_ACTOR"}
    if actor is not None:
        env["MLOPS_ACTOR"] = actor
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), "approve",
                           "quality", "--version", "1", *args], cwd=project.root, env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)


def recorded(project: Project) -> tuple[list[str], list[tuple[str, str]]]:
    """The approvers of version 1 at the gate, and the audit trail as (actor, action); the trail must verify."""
    with opened(project) as (_, store):
        assert audit.verify(store) == []
        return ([a.approver for a in store.approvals("quality", "churn", 1)],
                [(r.actor, r.action) for r in audit.log(store)])


@pytest.mark.parametrize(("args", "actor", "who"), [
    (("--by", "team:intern"), None, "team:intern"),  # named explicitly
    (("--by", "team:risk-adjacent"), None, "team:risk-adjacent"),  # a prefix of an allowed one is not it
    ((), "mallory@example.com", "mallory@example.com"),  # the acting identity, when --by is left out
])
def test_an_approval_from_a_principal_the_gate_does_not_allow_is_refused_and_leaves_no_trace(
        project: Project, args: tuple[str, ...], actor: str | None, who: str) -> None:
    refused = approve(project, *args, actor=actor)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [line] = refused.stderr.splitlines()
    assert f"{who} may not approve gates.quality (allowed: team:risk, dpo@example.com)" in line
    assert ":" in line.split(" ", 1)[0] and "Traceback" not in refused.stderr  # positioned at the gate's from:
    assert recorded(project) == ([], [])


def test_an_allowed_principal_is_recorded_once_in_the_approvals_and_the_audit_trail(project: Project) -> None:
    assert approve(project, "--by", "team:intern").returncode == 1
    done = approve(project, actor="dpo@example.com")
    assert done.returncode == 0, done.stderr
    again = approve(project, "--by", "dpo@example.com")
    assert again.returncode == 0, again.stderr
    approvers, trail = recorded(project)
    assert approvers == ["dpo@example.com"]  # the same approver twice counts once
    assert trail == [("dpo@example.com", "approve")]  # audited once; the repeat and the refused one are not


def test_a_repeated_approval_writes_no_row_and_no_audit_record_and_says_it_was_already_approved(
        project: Project) -> None:
    first = approve(project, "--by", "dpo@example.com")
    assert first.returncode == 0 and "Approved models.churn version 1 at gates.quality" in first.stdout, first.stderr
    with opened(project) as (_, store):
        [approval] = store.approvals("quality", "churn", 1)
    again = approve(project, "--by", "dpo@example.com")
    assert again.returncode == 0, again.stderr
    assert "models.churn version 1 was already approved at gates.quality by dpo@example.com" in again.stdout
    assert "nothing recorded" in again.stdout and not again.stderr
    as_json = approve(project, "--json", "--by", "dpo@example.com")
    assert as_json.returncode == 0, as_json.stderr
    reported = json.loads(as_json.stdout)
    assert reported["already_approved"] is True and reported["approved_at"] == approval.approved_at
    with opened(project) as (_, store):
        assert store.approvals("quality", "churn", 1) == [approval]  # the first approval's time stands
    assert recorded(project) == (["dpo@example.com"], [("dpo@example.com", "approve")])
    other = approve(project, "--by", "team:risk")  # another principal is a new approval
    assert other.returncode == 0 and "Approved" in other.stdout, other.stderr
    assert recorded(project) == (["dpo@example.com", "team:risk"],
                                 [("dpo@example.com", "approve"), ("team:risk", "approve")])
