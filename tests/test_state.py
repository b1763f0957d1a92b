"""The state store: settings, migrations, every record kind, transactions, locking contention, crashes.

Every backend-neutral test runs twice, on a SQLite file and on a real PostgreSQL database (``state_location``
in ``conftest.py``); SQLite's own settings, migrations, file faults and busy handling are tested on SQLite.
"""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import raw

from runtime.state import store as store_module
from runtime.state.migrations import MIGRATIONS, migrate
from runtime.state.records import (
    Approval,
    DeploymentState,
    GateDecision,
    MetricPoint,
    ModelVersion,
    NodeResult,
    Run,
    Snapshot,
)
from runtime.state.store import StateError, StateStore

URI = "sha256:" + "ab" * 32


@pytest.fixture
def store(state_location: Path | str) -> Iterator[StateStore]:
    opened = StateStore.open(state_location)
    yield opened
    opened.close()


def _result(node_id: str = "models.churn/train", fingerprint: str = "f1", status: str = "succeeded",
            **extra: object) -> NodeResult:
    return NodeResult(node_id=node_id, address=node_id.split("/")[0], kind="train", fingerprint=fingerprint,
                      config={"params": {"lr": 0.01}, "nested": [1, {"b": 2, "a": 1}]}, status=status,  # type: ignore[arg-type]
                      upstream={"datasets.raw/snapshot": "u1"}, outputs={"artifact": URI}, **extra)  # type: ignore[arg-type]


def _version(store: StateStore, model: str = "churn", **extra: object) -> ModelVersion:
    version = ModelVersion(model=model, version=store.next_model_version(model), fingerprint="fp",
                           artifact_uri=URI, **extra)  # type: ignore[arg-type]
    store.add_model_version(version)
    return version


# --- opening and migrations -------------------------------------------------------------------------

def test_open_creates_parents_and_sets_wal_normal_sync_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    with StateStore.open(path) as store:
        assert path.is_file()
        assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert store.connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.connection.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert store.schema_version() == len(MIGRATIONS)


def test_reopening_keeps_data_and_does_not_migrate_again(state_location: Path | str) -> None:
    path = state_location
    with StateStore.open(path) as store:
        store.record_result(_result())
    with StateStore.open(path) as store:
        assert store.latest_result("models.churn/train") is not None
        assert store.schema_version() == len(MIGRATIONS)


def test_migrations_apply_only_missing_steps_in_order(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    assert migrate(conn, [("CREATE TABLE a (x)",)]) == 1
    conn.execute("INSERT INTO a VALUES (1)")
    steps = [("CREATE TABLE a (x)",), ("ALTER TABLE a ADD COLUMN y DEFAULT 7", "CREATE TABLE b (z)")]
    assert migrate(conn, steps) == 2  # step 1 is not re-run (it would fail: table a exists)
    assert conn.execute("SELECT x, y FROM a").fetchall() == [(1, 7)]


def test_a_failing_migration_step_leaves_the_previous_version_intact(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [("CREATE TABLE a (x)", "CREATE TABLE b (y)", "THIS IS NOT SQL")])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []


def test_a_database_from_a_newer_mlops_is_refused(state_location: Path | str) -> None:
    path = state_location
    StateStore.open(path).close()
    with raw(path) as conn:
        if isinstance(path, Path):
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        else:
            conn.execute("UPDATE mlops_schema SET version = ?", (len(MIGRATIONS) + 1,))
    with pytest.raises(StateError, match="newer than this mlops"):
        StateStore.open(path)


def test_a_file_that_is_not_a_database_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(StateError, match="not a usable state database"):
        StateStore.open(path)


# --- node results -----------------------------------------------------------------------------------

def test_latest_result_is_the_newest_succeeded_one_with_json_fields_intact(store: StateStore) -> None:
    store.record_result(_result(fingerprint="f1", finished_at=1.0))
    store.record_result(_result(fingerprint="f2", finished_at=2.0))
    store.record_result(_result(fingerprint="f3", status="failed", finished_at=3.0))
    latest = store.latest_result("models.churn/train")
    assert latest == _result(fingerprint="f2", finished_at=2.0)
    assert store.latest_result("models.churn/train", succeeded_only=False).fingerprint == "f3"  # type: ignore[union-attr]
    assert store.latest_result("nope") is None


def test_latest_results_maps_every_node_to_its_newest_success(store: StateStore) -> None:
    store.record_result(_result("a/x", "1"))
    store.record_result(_result("b/x", "1"))
    store.record_result(_result("a/x", "2"))
    store.record_result(_result("c/x", "1", status="failed"))
    latest = store.latest_results()
    assert {k: v.fingerprint for k, v in latest.items()} == {"a/x": "2", "b/x": "1"}


def test_named_artifacts_are_every_uri_the_state_refers_to(store: StateStore) -> None:
    uri = {name: "sha256:" + name * 64 for name in "abcdef"}
    store.start_run(_run("r1"))
    store.finish_run("r1", "succeeded", log_uri=uri["a"])
    store.start_run(_run("r2"))  # no log yet
    store.add_model_version(ModelVersion(model="churn", version=1, fingerprint="fp", artifact_uri=uri["b"]))
    store.add_snapshot(Snapshot("datasets.raw", "fp", "hash", uri["c"]))
    store.add_snapshot(Snapshot("datasets.other", "fp", "hash"))  # hashed only, nothing stored
    store.record_result(dataclasses.replace(_result("a/x"), outputs={"artifact": uri["d"], "input": uri["e"]}))
    store.record_result(dataclasses.replace(_result("b/x", status="failed"), outputs={"artifact": uri["f"]}))
    assert store.named_artifacts() == {uri[name] for name in "abcde"}


def test_forget_node_removes_its_results_only(store: StateStore) -> None:
    store.record_result(_result("a/x"))
    store.record_result(_result("a/x"))
    store.record_result(_result("b/x"))
    assert store.forget_node("a/x") == 2
    assert set(store.latest_results()) == {"b/x"}


# --- runs and metrics -------------------------------------------------------------------------------

def _run(run_id: str, address: str = "models.churn", started_at: float = 10.0) -> Run:
    return Run(run_id=run_id, node_id=f"{address}/train", address=address, kind="train", fingerprint="fp",
               params={"lr": 0.1}, started_at=started_at, host="h", pid=42, git_commit="abc", git_dirty=True)


def test_runs_start_finish_and_read_back(store: StateStore) -> None:
    store.start_run(_run("r1"))
    assert store.get_run("r1") == _run("r1")
    store.finish_run("r1", "succeeded", {"auc": 0.91}, log_uri=URI, finished_at=12.5)
    run = store.get_run("r1")
    assert run is not None
    assert (run.status, run.metrics, run.log_uri, run.finished_at, run.git_dirty) == (
        "succeeded", {"auc": 0.91}, URI, 12.5, True)
    store.finish_run("r1", "failed", error="boom")
    assert store.get_run("r1").log_uri == URI  # type: ignore[union-attr]  # kept when not given again
    assert store.get_run("missing") is None


def test_finishing_an_unknown_run_is_an_error(store: StateStore) -> None:
    with pytest.raises(StateError, match="unknown run 'ghost'"):
        store.finish_run("ghost", "failed")


def test_list_runs_newest_first_filtered_and_limited(store: StateStore) -> None:
    for i in range(5):
        store.start_run(_run(f"m{i}", "models.churn", started_at=100.0 + i))
    store.start_run(_run("d0", "datasets.features", started_at=200.0))
    assert [r.run_id for r in store.list_runs()] == ["d0", "m4", "m3", "m2", "m1", "m0"]
    assert [r.run_id for r in store.list_runs("models.churn", limit=2)] == ["m4", "m3"]
    assert store.list_runs("datasets.none") == []


def test_metric_history_in_order_and_a_relogged_step_replaces(store: StateStore) -> None:
    store.start_run(_run("r1"))
    store.log_metrics("r1", [MetricPoint("r1", "loss", s, 1.0 / (s + 1)) for s in range(3)])
    store.log_metrics("r1", [MetricPoint("r1", "auc", 0, 0.5), MetricPoint("r1", "loss", 2, 0.0)])
    assert [(p.name, p.step, p.value) for p in store.metric_history("r1")] == [
        ("auc", 0, 0.5), ("loss", 0, 1.0), ("loss", 1, 0.5), ("loss", 2, 0.0)]


def test_metrics_of_an_unknown_run_are_refused_and_nothing_is_written(store: StateStore) -> None:
    with pytest.raises(StateError, match="unknown run 'ghost'"):
        store.log_metrics("ghost", [MetricPoint("ghost", "loss", 0, 1.0)])
    with pytest.raises(ValueError, match="logged under run"):
        store.log_metrics("r1", [MetricPoint("other", "loss", 0, 1.0)])
    assert store.connection.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0


# --- snapshots --------------------------------------------------------------------------------------

def test_snapshots_history_and_latest(store: StateStore) -> None:
    assert store.latest_snapshot("datasets.raw") is None
    first = Snapshot("datasets.raw", "fp1", "h1", None, 1.0)
    second = Snapshot("datasets.raw", "fp2", "h2", URI, 2.0)
    store.add_snapshot(first)
    store.add_snapshot(second)
    store.add_snapshot(Snapshot("datasets.other", "fp", "h", None, 3.0))
    assert store.latest_snapshot("datasets.raw") == second
    assert store.snapshots("datasets.raw") == [first, second]


# --- model versions ---------------------------------------------------------------------------------

def test_model_versions_are_numbered_per_model_and_read_back(store: StateStore) -> None:
    one = _version(store, metrics={"auc": 0.9}, params={"lr": 0.1}, data={"datasets.raw": "h1"}, run_id="r1",
                   code_hash="c", git_commit="g", created_at=5.0)
    two = _version(store, created_at=6.0)
    other = _version(store, "fraud", created_at=7.0)
    assert (one.version, two.version, other.version) == (1, 2, 1)
    assert store.model_versions("churn") == [one, two]
    assert store.get_model_version("churn", 1) == one
    assert store.get_model_version("churn", 9) is None
    assert store.models() == ["churn", "fraud"]


def test_version_numbers_are_never_reused_even_after_a_row_is_deleted(store: StateStore) -> None:
    _version(store)
    _version(store)
    store.connection.execute("DELETE FROM model_versions WHERE model = 'churn' AND version = 2")
    assert store.next_model_version("churn") == 3


def test_a_rolled_back_transaction_releases_its_reserved_version(store: StateStore) -> None:
    _version(store)
    with pytest.raises(RuntimeError), store.transaction():
        assert store.next_model_version("churn") == 2
        raise RuntimeError("training failed")
    assert _version(store).version == 2


def test_adding_a_version_twice_is_an_error_and_an_explicit_number_advances_the_counter(store: StateStore) -> None:
    store.add_model_version(ModelVersion("churn", 7, "fp", URI))
    with pytest.raises(StateError, match="already has a version 7"):
        store.add_model_version(ModelVersion("churn", 7, "fp2", URI))
    assert store.next_model_version("churn") == 8


def test_version_status_and_reason(store: StateStore) -> None:
    _version(store)
    store.set_model_version_status("churn", 1, "rejected", "auc 0.7 < 0.8")
    got = store.get_model_version("churn", 1)
    assert got is not None and (got.status, got.reason) == ("rejected", "auc 0.7 < 0.8")
    with pytest.raises(StateError, match="no version 5"):
        store.set_model_version_status("churn", 5, "approved")


def test_concurrent_writers_on_two_connections_never_get_the_same_version(state_location: Path | str) -> None:
    path = state_location
    StateStore.open(path).close()
    got: list[int] = []
    errors: list[BaseException] = []

    def reserve() -> None:
        try:
            with StateStore.open(path) as mine:
                for _ in range(40):
                    with mine.transaction():
                        version = mine.next_model_version("churn")
                        mine.add_model_version(ModelVersion("churn", version, "fp", URI))
                    got.append(version)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reserve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(got) == list(range(1, 121))


# --- gates, approvals, deployments ------------------------------------------------------------------

def test_gate_decisions_latest_per_version_and_per_model(store: StateStore) -> None:
    _version(store)
    _version(store)
    checks = [{"metric": "auc", "op": ">=", "expected": 0.8, "actual": 0.7, "passed": False, "reason": "low"}]
    store.record_gate_decision(GateDecision("quality", "churn", 1, "failed", checks, 1.0))
    store.record_gate_decision(GateDecision("quality", "churn", 1, "awaiting_approval", [], 2.0))
    store.record_gate_decision(GateDecision("quality", "churn", 2, "passed", [], 3.0))
    assert store.latest_gate_decision("quality", "churn", 1) == GateDecision(
        "quality", "churn", 1, "awaiting_approval", [], 2.0)
    assert store.latest_gate_decision("quality", "churn").version == 2  # type: ignore[union-attr]
    assert store.latest_gate_decision("other", "churn", 1) is None


def test_a_decision_or_approval_on_a_missing_version_is_refused(store: StateStore) -> None:
    with pytest.raises(StateError, match="no version 3"):
        store.record_gate_decision(GateDecision("quality", "churn", 3, "passed"))
    with pytest.raises(StateError, match="no version 3"):
        store.add_approval(Approval("quality", "churn", 3, "a@x.io"))


def test_approvals_are_idempotent_per_approver(store: StateStore) -> None:
    _version(store)
    assert store.add_approval(Approval("quality", "churn", 1, "a@x.io", 1.0)) is True
    assert store.add_approval(Approval("quality", "churn", 1, "a@x.io", 5.0)) is False
    assert store.add_approval(Approval("quality", "churn", 1, "b@x.io", 2.0)) is True
    assert store.approvals("quality", "churn", 1) == [Approval("quality", "churn", 1, "a@x.io", 1.0),
                                                      Approval("quality", "churn", 1, "b@x.io", 2.0)]
    assert store.approvals("quality", "churn", 2) == []


def test_deployments_upsert(store: StateStore) -> None:
    store.set_deployment(DeploymentState("api", "churn", 1, None, "progressing", 1.0))
    store.set_deployment(DeploymentState("api", "churn", 2, 1, "healthy", 2.0))
    store.set_deployment(DeploymentState("batch", "churn", 1, 1, "healthy", 3.0))
    assert store.get_deployment("api") == DeploymentState("api", "churn", 2, 1, "healthy", 2.0)
    assert [d.name for d in store.deployments()] == ["api", "batch"]
    assert store.get_deployment("nope") is None


# --- hash cache -------------------------------------------------------------------------------------

def test_hash_cache_matches_only_the_same_size_mtime_and_inode(store: StateStore) -> None:
    store.store_hash("/d/a.csv", 10, 123, 7, "h1")
    assert store.cached_hash("/d/a.csv", 10, 123, 7) == "h1"
    assert store.cached_hash("/d/a.csv", 11, 123, 7) is None
    assert store.cached_hash("/d/a.csv", 10, 124, 7) is None
    assert store.cached_hash("/d/a.csv", 10, 123, 8) is None
    store.store_hash("/d/a.csv", 11, 124, 7, "h2")
    assert store.cached_hash("/d/a.csv", 11, 124, 7) == "h2"
    store.store_hashes([("/d/sub/b", 1, 1, 1, "hb"), ("/d2/c", 1, 1, 1, "hc")])
    assert set(store.cached_hashes_under("/d")) == {"/d/a.csv", "/d/sub/b"}


# --- transactions -----------------------------------------------------------------------------------

def test_a_transaction_is_all_or_nothing(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.record_result(_result("a/x"))
        store.start_run(_run("r1"))
        raise RuntimeError("crash")
    assert store.latest_results() == {}
    assert store.get_run("r1") is None
    with store.transaction():
        store.record_result(_result("a/x"))
        store.start_run(_run("r1"))
    assert set(store.latest_results()) == {"a/x"} and store.get_run("r1") is not None


def test_a_failed_call_inside_a_transaction_undoes_only_itself(store: StateStore) -> None:
    with store.transaction():
        store.record_result(_result("a/x"))
        with pytest.raises(StateError):
            store.log_metrics("ghost", [MetricPoint("ghost", "m", 0, 1.0)])
        store.start_run(_run("r1"))
    assert set(store.latest_results()) == {"a/x"} and store.get_run("r1") is not None


def test_after_commit_hooks_run_on_commit_only(store: StateStore) -> None:
    ran: list[str] = []
    with store.transaction():
        store.after_commit(lambda: ran.append("outer"))
        with pytest.raises(RuntimeError), store.transaction():
            store.after_commit(lambda: ran.append("inner, rolled back"))
            raise RuntimeError
        assert ran == []
    assert ran == ["outer"]
    with pytest.raises(RuntimeError), store.transaction():
        store.after_commit(lambda: ran.append("rolled back"))
        raise RuntimeError
    store.after_commit(lambda: ran.append("now"))
    assert ran == ["outer", "now"]


def test_readers_see_only_committed_data_while_a_transaction_is_open(state_location: Path | str) -> None:
    path = state_location
    with StateStore.open(path) as writer, StateStore.open(path) as reader:
        with writer.transaction():
            writer.record_result(_result("a/x"))
            assert reader.latest_results() == {}  # WAL: the reader is not blocked and sees the old state
        assert set(reader.latest_results()) == {"a/x"}


def test_a_killed_process_leaves_no_half_of_its_transaction(state_location: Path | str) -> None:
    path = state_location
    StateStore.open(path).close()
    code = f"""
import os, signal
from runtime.state.store import StateStore
from runtime.state.records import NodeResult, Run
store = StateStore.open({str(path)!r})
store.record_result(NodeResult("done/x", "done", "t", "f", {{}}))
with store.transaction():
    store.record_result(NodeResult("half/x", "half", "t", "f", {{}}))
    store.start_run(Run("r1", "half/x", "half", "t", "f"))
    os.kill(os.getpid(), signal.SIGKILL)
"""
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert finished.returncode == -9, finished.stderr.decode()
    with StateStore.open(path) as store:
        assert set(store.latest_results()) == {"done/x"}
        assert store.get_run("r1") is None
        if isinstance(path, Path):
            assert store.connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- contention -------------------------------------------------------------------------------------

def _hold_write_lock(path: Path, seconds: float, started: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_a_write_waits_for_another_writer_then_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore.open(path, busy_timeout=0.05) as store:
        started = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 0.4, started))
        holder.start()
        started.wait()
        began = time.monotonic()
        store.record_result(_result())  # busy_timeout is 50 ms: the retry loop must carry it past 0.4 s
        waited = time.monotonic() - began
        holder.join()
        assert waited >= 0.3
        assert store.latest_result("models.churn/train") is not None


def test_a_lock_held_past_every_retry_is_a_state_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "RETRY_ATTEMPTS", 3)
    monkeypatch.setattr(store_module, "RETRY_FIRST_DELAY_S", 0.01)
    path = tmp_path / "state.db"
    with StateStore.open(path, busy_timeout=0.01) as store:
        started = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 0.5, started))
        holder.start()
        started.wait()
        with pytest.raises(StateError, match="stayed locked"):
            store.record_result(_result())
        holder.join()
        store.record_result(_result())


def test_a_database_url_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StateError, match="only a local SQLite file or a postgresql:// URL"):
        StateStore.open("mysql://db/mlops")
    assert list(tmp_path.iterdir()) == []


def test_a_postgresql_server_that_cannot_be_reached_is_one_line_naming_it_without_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PGPASSWORD", "hunter2")
    for url in (f"postgresql://ml@127.0.0.1:{port}/db", f"postgresql://ml:hunter2@127.0.0.1:{port}/db"):
        with pytest.raises(StateError) as caught:
            StateStore.open(url)
        [line] = str(caught.value).splitlines()
        assert line.startswith(f"error: postgresql://ml@127.0.0.1:{port}/db: cannot connect: connection refused")
        assert "hunter2" not in line


def test_a_missing_postgresql_database_is_one_line(postgres_server: object) -> None:
    url = postgres_server.url("no_such_db")  # type: ignore[attr-defined]
    with pytest.raises(StateError) as caught:
        StateStore.open(url)
    assert str(caught.value).splitlines() == [f'error: {url}: database "no_such_db" does not exist']
