"""One lock policy and one plan per tick.

* every verb that changes what runs takes the state lock in the library: apply, rollback, monitors (which
  may act), ``state reset``, and the reconciler's tick; while another process holds it, each is refused
  with the holder named (or waits ``lock_timeout``); an approval is the exception, one atomic transaction
  that an apply holding the lock does not block (``test_crash_safety``);
* a verb inside another's hold in this process (a monitor's rollback in a tick) reuses the hold;
* a reconcile tick with nothing to do opens the state store once and plans once.

No Ray here: the project is a dataset snapshot, a gate and a monitor; what is refused is refused before
anything would run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compiler import load_project
from compiler.resolve import Project
from runtime import Reconciler, Source, apply_project, approve, opened, reset_state, rollback, run_monitors
from runtime.plan import actions
from runtime.state import lock
from runtime.state.lock import LockHeld
from runtime.state.store import StateStore
from runtime.workspace import Workspace

HOLDER = """
import sys, time
from runtime.state import lock
held = lock.acquire(sys.argv[1], "apply", "holder@ci")
print(held.info.id, flush=True)
time.sleep(60)
"""


def _spec() -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1", "project": "locks",
        "datasets": {"raw": {"path": "data/raw.csv"}},
        "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}}},
        "gates": {"g": {"model": "m", "checks": [{"metric": "auc", "op": ">=", "value": 0.5}],
                        "approvals": {"required": 1, "from": ["alice@example.com"]}}},
        "deployments": {"api": {"model": "m", "gates": ["g"], "replicas": 1, "route": "/api"}},
        "monitors": {"drift": {"deployment": "api", "reference": "raw", "schedule": "1h",
                               "checks": [{"type": "data_drift", "method": "psi", "columns": ["x"]}]}},
    }


@pytest.fixture
def project(tmp_path: Path, make_project: Callable[..., Path]) -> Project:
    return load_project(make_project(tmp_path / "p", _spec(), files={"data/raw.csv": "x\n1\n2\n"}))


@pytest.fixture
def held_elsewhere(project: Project) -> Iterator[str]:
    """Another process holds the project's state lock; yields the lock's id."""
    state = Workspace.of(project).state_path
    state.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        lock_id = holder.stdout.readline().strip()
        assert lock_id, "the holder did not take the lock"
        yield lock_id
    finally:
        holder.kill()
        holder.wait()


def _monitors(project: Project) -> Any:
    with opened(project) as (_, store):
        return run_monitors(project, store)


VERBS: dict[str, Callable[[Project], Any]] = {
    "apply": lambda p: apply_project(p),
    "rollback": lambda p: rollback(p, "api", 1),
    "monitor": _monitors,
    "state reset": lambda p: reset_state(p),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_that_writes_takes_the_state_lock_in_the_library(project: Project, held_elsewhere: str,
                                                                     verb: str) -> None:
    with pytest.raises(LockHeld) as refused:
        VERBS[verb](project)
    assert "Error acquiring the state lock" in str(refused.value)
    assert refused.value.info is not None and refused.value.info.id == held_elsewhere
    assert refused.value.info.who == "holder@ci"


def test_an_approval_is_not_held_up_by_the_lock(project: Project, held_elsewhere: str) -> None:
    from runtime.errors import ApprovalError

    with pytest.raises(ApprovalError, match="has no version 1"):  # it got past the lock to the state
        approve(project, "g", 1, "alice@example.com")


def test_a_reconcile_tick_takes_the_lock_even_with_nothing_to_do(project: Project, held_elsewhere: str) -> None:
    from runtime.compute import cluster

    state = Workspace.of(project).state_path
    try:
        result = Reconciler(Source(project.spec_path)).tick()
        assert result.error is not None and "Error acquiring the state lock" in result.error
        assert result.plan is None and result.applied is None and result.monitors == []
        assert cluster.running(state) is None  # refused before it would start the local cluster for serving
    finally:
        cluster.down(state)


def test_a_verb_inside_another_s_hold_in_this_process_reuses_it(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with lock.exclusive(state, "reconcile", "me") as outer:
        assert lock.held_here(state)
        with lock.exclusive(state, "rollback", "me", timeout=0.0) as inner:
            assert inner is outer and inner.held
        assert outer.held and lock.read_info(state) is not None and lock.read_info(state).operation == "reconcile"
    assert not lock.held_here(state) and lock.read_info(state) is None
    with pytest.raises(LockHeld), lock.acquire(state, "apply"):  # acquire itself stays exclusive
        lock.acquire(state, "apply")


def test_another_thread_of_this_process_does_not_share_the_hold(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    refused: list[BaseException] = []

    def second() -> None:
        try:
            with lock.exclusive(state, "apply", "thread", timeout=0.0):
                pass
        except LockHeld as error:
            refused.append(error)

    with lock.exclusive(state, "reconcile", "me"):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(10)
    assert len(refused) == 1 and not thread.is_alive()


def _counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"store_opens": 0, "plans": 0}
    opener = StateStore.open.__func__  # type: ignore[attr-defined]

    def open_counted(cls: type[StateStore], *args: Any, **kwargs: Any) -> StateStore:
        counts["store_opens"] += 1
        result: StateStore = opener(cls, *args, **kwargs)
        return result

    monkeypatch.setattr(StateStore, "open", classmethod(open_counted))
    make_plan = actions.make_plan

    def plan_counted(*args: Any, **kwargs: Any) -> actions.Plan:
        counts["plans"] += 1
        return make_plan(*args, **kwargs)

    import runtime.plan.project as planning

    monkeypatch.setattr(planning, "make_plan", plan_counted)
    return counts


def test_a_tick_with_nothing_to_do_opens_the_store_once_and_plans_once(
        tmp_path: Path, make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {"apiVersion": "mlops/v1", "project": "oneplan", "datasets": {"raw": {"path": "data/raw.csv"}}}
    path = make_project(tmp_path / "p", spec, files={"data/raw.csv": "x\n1\n"})
    reconciler = Reconciler(Source(path))
    first = reconciler.tick()
    assert first.ok and first.applied is not None and first.applied.result.ok, first.error
    counts = _counting(monkeypatch)
    quiet = reconciler.tick()
    assert quiet.ok and quiet.applied is None, quiet.error
    assert counts == {"store_opens": 1, "plans": 1}
    with opened(load_project(path)) as (_, store):
        assert store.reconciler_status().error is None
