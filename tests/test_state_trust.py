"""Trust in the state: it knows its own history (lineage, serial, audit head), and decisions exist only through mlops.

Real SQLite files, and real ``mlops`` subprocesses where a user would run them:

* an emptied, a replaced and an older state are refused, in one line naming the state file and the
  recovery command, before anything is written; ``mlops state reset --i-understand`` recovers;
* a corrupt database is one line from ``mlops audit verify`` (exit 1, no traceback);
* an approval row written with plain SQL does not pass a gate and ``audit verify`` reports it; so for a gate
  decision inserted or edited with plain SQL: it is never served, and decisions of an older schema are adopted
  into the chain once, at the migration;
* ten concurrent ``mlops approve`` of one version by one principal make one row and one audit record.

What does not depend on the backend runs on a SQLite file and on a real PostgreSQL database (``any_project``);
the refusals of a state file emptied, replaced or restored, and its corruption, are SQLite's.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import with_version_one
from postgres import raw

from compiler import build_graph, load_project
from compiler.resolve import Project
from runtime.apply.gates import decide
from runtime.apply.operations import opened
from runtime.plan.project import expected_version, gate_views
from runtime.state import audit
from runtime.state.records import ModelVersion, NodeResult
from runtime.state.store import StateError, StateStore
from runtime.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
RECOVERY = "mlops state reset --i-understand"
SPEC = {
    "apiVersion": "mlops/v1", "project": "trust",
    "datasets": {"raw": {"path": "data/raw.csv"}},
    "models": {"churn": {"train": "pipeline:train", "data": {"train": "raw"}}},
    "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}],
                          "approvals": {"required": 2, "from": ["team:risk", "dpo@example.com"]}}},
}


@pytest.fixture
def project(tmp_path: Path, make_project: Callable[..., Path]) -> Project:
    """The project with version 1 of its model in the state, awaiting its 2-of-2 approval."""
    return with_version_one(load_project(make_project(tmp_path, SPEC, files={"data/raw.csv": "a\n1\n"})))


@pytest.fixture
def any_project(tmp_path: Path, make_project: Callable[..., Path], state_location: Path | str) -> Project:
    """:func:`project`, its state the default SQLite file or a PostgreSQL database (``storage.state``)."""
    spec = SPEC if isinstance(state_location, Path) else {**SPEC, "storage": {"state": state_location}}
    return with_version_one(load_project(make_project(tmp_path, spec, files={"data/raw.csv": "a\n1\n"})))


def location(project: Project) -> Path | str:
    """The project's state as :func:`postgres.raw` takes it: the SQLite file, or the PostgreSQL URL."""
    workspace = Workspace.of(project)
    return workspace.state_path if workspace.local_state else workspace.state


def mlops(project: Project, *args: str, actor: str = "ops@example.com") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLOPS_ACTOR": actor, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), *args],
                          cwd=project.root, env=env, capture_output=True, text=True, timeout=120)


def approve(project: Project, by: str) -> subprocess.CompletedProcess[str]:
    return mlops(project, "approve", "quality", "--version", "1", "--by", by)


def state_path(project: Project) -> Path:
    return project.root / ".mlops" / "state.db"


def one_line_refusal(done: subprocess.CompletedProcess[str], state: Path, why: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert f"state {state} is refused: {why}" in line and RECOVERY in line, line
    return line


def copy_state(source: Path, target: Path) -> None:
    """Copy a closed state file over another one (as `cp` would), leaving no stale WAL behind."""
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


def test_an_emptied_state_is_refused_in_one_line_before_any_write_and_reset_recovers(project: Project) -> None:
    assert approve(project, "dpo@example.com").returncode == 0
    state = state_path(project)
    state.write_bytes(b"")  # `: > state.db`
    for command in (("approve", "quality", "--version", "1", "--by", "team:risk"), ("apply",), ("plan",),
                    ("status",)):
        done = mlops(project, *command)
        line = one_line_refusal(done, state, "it is empty, but state.db.audit-head says its history has 1 audit "
                                             "records")
        assert "lineage" in line and "serial" in line
        assert state.stat().st_size == 0  # nothing was written to it
    verify = mlops(project, "audit", "verify")
    one_line_refusal(verify, state, "it is empty")
    assert state.stat().st_size == 0
    assert "--i-understand" in mlops(project, "state", "reset").stderr  # the flag is required
    reset = mlops(project, "state", "reset", "--i-understand")
    assert reset.returncode == 0, reset.stderr
    assert list(state.parent.glob("state.db.audit-head.replaced-*"))  # the old anchor is kept as evidence
    assert approve(project, "team:risk").returncode == 1  # the version is gone with the emptied state
    verified = mlops(project, "audit", "verify")
    assert verified.returncode == 0 and "audit trail intact: 1 records" in verified.stdout, verified.stderr
    with StateStore.open(state) as store:
        [record] = audit.log(store)
        assert record.action == "state-reset" and record.payload["previous"]["count"] == 1


def test_a_state_replaced_by_another_one_is_refused(project: Project, tmp_path: Path) -> None:
    assert approve(project, "dpo@example.com").returncode == 0
    other = tmp_path / "other" / "state.db"
    with StateStore.open(other) as store:  # another state with as much history: another lineage
        store.add_model_version(ModelVersion("churn", 1, "fp", "sha256:" + "1" * 64, metrics={"auc": 0.9}))
        audit.append(store, "x@example.com", "apply", {})
        audit.append(store, "x@example.com", "apply", {})
    state = state_path(project)
    copy_state(other, state)
    before = state.read_bytes()
    done = approve(project, "team:risk")
    one_line_refusal(done, state, "it is another state (lineage ")
    assert "it was replaced" in done.stderr
    assert state.read_bytes() == before
    verify = mlops(project, "audit", "verify")
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert "state.db.audit-head anchors another state" in verify.stderr


def test_a_state_older_than_its_audit_head_is_refused(project: Project, tmp_path: Path) -> None:
    state = state_path(project)
    assert approve(project, "dpo@example.com").returncode == 0
    backup = tmp_path / "backup.db"
    shutil.copyfile(state, backup)
    assert approve(project, "team:risk").returncode == 0
    copy_state(backup, state)  # an old backup restored over the state
    for command in (("approve", "quality", "--version", "1", "--by", "team:risk"), ("apply",)):
        done = mlops(project, *command)
        line = one_line_refusal(done, state, "it is older than its audit head: it has 1 audit records and serial ")
        assert "state.db.audit-head says 2 audit records" in line
    with sqlite3.connect(state) as conn:
        assert conn.execute("SELECT COUNT(*) FROM approvals").fetchone()[0] == 1  # nothing written
    reset = mlops(project, "state", "reset", "--i-understand")
    assert reset.returncode == 0, reset.stderr
    assert approve(project, "team:risk").returncode == 0
    assert mlops(project, "audit", "verify").returncode == 0


def test_the_serial_grows_with_every_write_and_is_anchored_with_the_lineage(state_location: Path | str) -> None:
    with StateStore.open(state_location) as store:
        lineage, serial, _ = store.identity()
        store.add_model_version(ModelVersion("m", 1, "fp", "sha256:" + "0" * 64))
        store.latest_results()  # a read does not count
        assert store.identity()[:2] == (lineage, serial + 1)
        audit.append(store, "me", "apply", {})
        assert store.identity() == (lineage, serial + 2, 1)
    with StateStore.open(state_location) as store:
        assert store.identity() == (lineage, serial + 2, 1)  # the lineage is the state's, for good


@pytest.mark.parametrize("damage", ["schema", "audit_head", "page"])
def test_a_corrupt_database_is_one_line_from_audit_verify(project: Project, damage: str) -> None:
    assert approve(project, "dpo@example.com").returncode == 0
    state = state_path(project)
    conn = sqlite3.connect(state, isolation_level=None)
    if damage == "schema":  # a table's definition overwritten in sqlite_master
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET sql = 'CREATE TABLE audit (' WHERE name = 'audit'")
    elif damage == "audit_head":  # the anchored head's row removed
        conn.execute("DELETE FROM audit_head")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'approvals'").fetchone()[0]
    conn.close()
    if damage == "page":  # the header of the approvals table's b-tree page overwritten on disk
        with state.open("r+b") as handle:
            handle.seek((root - 1) * page_size)
            handle.write(b"\xff" * 12)
    done = mlops(project, "audit", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr.replace("error:", "")
    [line] = done.stderr.splitlines()
    assert "state.db" in line and ("corrupt" in line or "not a usable state database" in line or "damaged" in line)


def _forge(project: Project, *approvers: str) -> None:
    """What user code did: plain SQL on the state, behind mlops' back."""
    with raw(location(project)) as conn:
        for who in approvers:
            conn.execute("INSERT INTO approvals (gate, model, version, approver, approved_at) VALUES (?,?,?,?,?)",
                         ("quality", "churn", 1, who, time.time()))


def test_an_approval_written_behind_mlops_back_does_not_pass_the_gate_and_audit_verify_reports_it(
        any_project: Project) -> None:
    project = any_project
    _forge(project, "team:risk", "dpo@example.com")
    gate = project.spec.gates["quality"]
    with opened(project) as (_, store):
        approvers = [a.approver for a in store.approvals("quality", "churn", 1)]
        assert approvers == []  # what apply's gate node counts
        assert decide("quality", gate, 1, {"auc": 0.9}, None, approvers).status == "awaiting_approval"
        graph = build_graph(project)
        final = next(n for n in graph.by_address("models.churn") if n.kind == "trial")
        store.record_result(NodeResult(final.id, final.address, final.kind, final.fingerprint, {},
                                       outputs={"version": 1}))
        view = gate_views(project, graph, store)["gates.quality"]
        assert (view.approvals, view.required) == (0, 2)  # what plan shows
    verify = mlops(project, "audit", "verify")
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    lines = verify.stderr.splitlines()
    assert len(lines) == 2
    assert all("has no record in the audit chain: it was written behind mlops' back and does not count" in line
               for line in lines)
    assert any("by team:risk" in line for line in lines) and any("by dpo@example.com" in line for line in lines)
    # the real approval replaces the forged row and counts, audited
    assert approve(project, "team:risk").returncode == 0
    with opened(project) as (_, store):
        assert [a.approver for a in store.approvals("quality", "churn", 1)] == ["team:risk"]
        assert [r.action for r in audit.log(store)] == ["approve"]
    assert "by dpo@example.com" in mlops(project, "audit", "verify").stderr


def test_an_approval_row_pointing_at_another_record_does_not_count(any_project: Project) -> None:
    project = any_project
    assert approve(project, "dpo@example.com").returncode == 0
    with raw(location(project)) as conn:  # reuse dpo's record for team:risk
        seq, digest = conn.execute("SELECT audit_seq, audit_hash FROM approvals").fetchone()
        conn.execute("INSERT INTO approvals VALUES ('quality', 'churn', 1, 'team:risk', ?, ?, ?)",
                     (time.time(), seq, digest))
    with opened(project) as (_, store):
        assert [a.approver for a in store.approvals("quality", "churn", 1)] == ["dpo@example.com"]
        assert [a.approver for a in store.unchained_approvals()] == ["team:risk"]


def _forge_decision(project: Project, status: str) -> None:
    """What user code did: a gate decision inserted with plain SQL, behind mlops' back."""
    with raw(location(project)) as conn:
        conn.execute("INSERT INTO gate_decisions (gate, model, version, status, checks, decided_at)"
                     " VALUES ('quality', 'churn', 1, ?, '[]', ?)", (status, time.time()))


def _recorded_final_node(project: Project, store: StateStore) -> None:
    graph = build_graph(project)
    final = next(n for n in graph.by_address("models.churn") if n.kind == "trial")
    store.record_result(NodeResult(final.id, final.address, final.kind, final.fingerprint, {},
                                   outputs={"version": 1}))


def test_a_gate_decision_written_behind_mlops_back_takes_no_effect_and_audit_verify_reports_it(
        any_project: Project) -> None:
    project = any_project
    state = location(project)
    storage = {} if isinstance(state, Path) else {"storage": {"state": state}}
    spec = {**SPEC, **storage, "deployments": {"api": {"model": "churn", "gates": ["quality"]}}}
    project.spec = type(project.spec).model_validate(spec)
    _forge_decision(project, "passed")
    with opened(project) as (_, store):
        _recorded_final_node(project, store)
        graph = build_graph(project)
        assert store.latest_gate_decision("quality", "churn", 1) is None
        assert store.latest_gate_decision("quality", "churn") is None
        assert gate_views(project, graph, store)["gates.quality"].decision is None  # plan and status
        assert expected_version(project, graph, store, store.latest_results(), "api") is None  # never served
        assert [d.status for d in store.unchained_gate_decisions()] == ["passed"]
        assert store.gate_decisions("churn", 1) == []  # models show
    verify = mlops(project, "audit", "verify")
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    [line] = verify.stderr.splitlines()
    assert ("the passed decision of gates.quality on models.churn version 1 has no record in the audit chain: it "
            "was written behind mlops' back and does not count") in line


def test_a_recorded_gate_decision_edited_with_sql_takes_no_effect(any_project: Project) -> None:
    project = any_project
    gate = project.spec.gates["quality"]
    with opened(project) as (_, store):
        store.record_gate_decision(decide("quality", gate, 1, {"auc": 0.5}, None, []), actor="ci@example.com")
        decided = store.latest_gate_decision("quality", "churn", 1)
        assert decided is not None and decided.status == "failed"
        [record] = audit.log(store)
        assert (record.action, record.actor, record.payload["status"]) == ("decide", "ci@example.com", "failed")
    with raw(location(project)) as conn:  # fail -> pass, behind mlops' back
        conn.execute("UPDATE gate_decisions SET status = 'passed'")
    with opened(project) as (_, store):
        assert store.latest_gate_decision("quality", "churn", 1) is None
        assert [d.status for d in store.unchained_gate_decisions()] == ["passed"]
    with raw(location(project)) as conn:  # or its checks rewritten
        conn.execute("UPDATE gate_decisions SET status = 'failed', checks = '[]'")
    with opened(project) as (_, store):
        assert store.latest_gate_decision("quality", "churn", 1) is None


def test_decisions_recorded_before_they_were_chained_are_adopted_once_at_migration(project: Project) -> None:
    with sqlite3.connect(state_path(project), isolation_level=None) as conn:  # a state of schema 3
        conn.execute("INSERT INTO gate_decisions (gate, model, version, status, checks, decided_at)"
                     " VALUES ('quality', 'churn', 1, 'passed', '[]', 1700000000.0)")
        conn.execute("ALTER TABLE gate_decisions DROP COLUMN audit_seq")
        conn.execute("ALTER TABLE gate_decisions DROP COLUMN audit_hash")
        conn.execute("ALTER TABLE model_versions DROP COLUMN signature")  # added by later steps
        conn.execute("DROP TABLE data_removals")
        conn.execute("DROP TABLE erasure_requests")
        conn.execute("PRAGMA user_version = 3")
    with opened(project) as (_, store):
        decided = store.latest_gate_decision("quality", "churn", 1)
        assert decided is not None and decided.status == "passed"
        [record] = audit.log(store)
        assert record.action == "decide" and record.payload["adopted"] == "schema migration 4"
    _forge_decision(project, "passed")  # later rows are not adopted
    with opened(project) as (_, store):
        assert len(store.gate_decisions("churn", 1)) == 1 and len(store.unchained_gate_decisions()) == 1
    assert "has no record in the audit chain" in mlops(project, "audit", "verify").stderr


def test_ten_concurrent_approvals_by_one_principal_make_one_row_and_one_record(any_project: Project) -> None:
    project = any_project
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), "approve", "quality",
               "--version", "1", "--by", "dpo@example.com"]
    start = project.root / "go"
    # each process waits for the same moment, so all ten open the state and approve at once
    wrapper = ("import os, runpy, sys, time\n"
               f"while not os.path.exists({str(start)!r}): time.sleep(0.005)\n"
               "sys.argv = sys.argv[1:]; runpy.run_module('runtime.cli.main', run_name='__main__')")
    processes = [subprocess.Popen([sys.executable, "-c", wrapper, *command[2:]], cwd=project.root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(10)]
    time.sleep(1.0)
    start.write_text("")
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert sum("Approved models.churn version 1" in out for out, _ in outputs) == 1
    assert sum("already approved" in out for out, _ in outputs) == 9
    with raw(location(project)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM approvals").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'approve'").fetchone()[0] == 1
    assert mlops(project, "audit", "verify").returncode == 0


def test_a_library_open_of_an_emptied_state_raises_a_state_error_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore.open(path) as store:
        audit.append(store, "me", "apply", {})
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StateError, match=f"state {path} is refused: it is missing"):
        StateStore.open(path)
    assert not path.exists()


def test_an_unreachable_postgresql_state_is_one_line_naming_it_from_every_command(
        tmp_path: Path, make_project: Callable[..., Path]) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://ml@127.0.0.1:{port}/mlops"
    project = load_project(make_project(tmp_path, {**SPEC, "storage": {"state": url}},
                                        files={"data/raw.csv": "a\n1\n"}))
    for command in (("plan",), ("status",), ("approve", "quality", "--version", "1", "--by", "team:risk"),
                    ("audit", "verify"), ("force-unlock", "some-id")):
        done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(project.spec_path), *command],
                              cwd=project.root, env={**os.environ, "PYTHONPATH": str(ROOT), "PGPASSWORD": "hunter2"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
        [line] = [text for text in done.stderr.splitlines() if text.strip()]
        assert f"{url}: cannot connect: connection refused" in line, (command, line)
