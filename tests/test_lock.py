"""The state lock across real processes: fail at once, wait with a timeout, survive kill -9, force-unlock.

Each test runs on both backends (``state_location``): the file lock of a SQLite state, and the advisory lock
of a PostgreSQL state on a real server.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compiler.errors import MlopsError
from runtime.state import lock
from runtime.state.lock import LockError, LockHeld

HOLDER = """
import sys, time
from runtime.state import lock
held = lock.acquire(sys.argv[1], "apply", "holder@ci")
print(held.info.id, flush=True)
time.sleep(float(sys.argv[2]))
held.release()
print("released", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spawn_holder(tmp_path: Path) -> Iterator[object]:
    """Start a process that takes the lock, holds it ``seconds``, releases it and stays alive; yields (proc, id)."""
    procs: list[subprocess.Popen[str]] = []

    def spawn(state: Path | str, seconds: float = 60.0) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state), str(seconds)], stdout=subprocess.PIPE,
                                text=True)
        procs.append(proc)
        assert proc.stdout is not None
        return proc, proc.stdout.readline().strip()

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_acquire_writes_holder_info_and_release_clears_it(state_location: Path | str) -> None:
    state = state_location.parent / "sub" / "state.db" if isinstance(state_location, Path) else state_location
    with lock.acquire(state, "apply", "me@host") as held:
        info = lock.read_info(state)
        assert info == held.info
        assert (info.operation, info.who, info.pid, info.host) == ("apply", "me@host", os.getpid(), os.uname().nodename)
        assert abs(info.since - time.time()) < 5
        if isinstance(state, Path):
            assert json.loads(lock.lock_path(state).read_text())["id"] == held.info.id
        assert lock.holder(state) == held.info
    assert not held.held
    assert lock.read_info(state) is None and lock.holder(state) is None
    if isinstance(state, Path):
        assert lock.lock_path(state).exists()  # never deleted


def test_a_second_acquire_in_another_process_fails_at_once_with_the_holder_info(state_location: Path | str,
                                                                               spawn_holder: object) -> None:
    state = state_location
    proc, lock_id = spawn_holder(state)  # type: ignore[operator]
    began = time.monotonic()
    with pytest.raises(LockHeld) as caught:
        lock.acquire(state, "apply", "me@host")
    assert time.monotonic() - began < 0.5
    error = caught.value
    assert isinstance(error, MlopsError)
    assert error.info is not None and (error.info.id, error.info.pid, error.info.who) == (lock_id, proc.pid,
                                                                                         "holder@ci")
    message = str(error)
    assert "Error acquiring the state lock" in message
    for line in (f"ID:        {lock_id}", "Operation: apply", "Who:       holder@ci", f"PID:       {proc.pid}",
                 f"Host:      {os.uname().nodename}", "Created:   20"):
        assert line in message


def test_a_timeout_waits_for_the_holder_to_release(state_location: Path | str, spawn_holder: object) -> None:
    state = state_location
    proc, _ = spawn_holder(state, 0.7)  # type: ignore[operator]
    began = time.monotonic()
    with lock.acquire(state, "apply", "waiter", timeout=20) as held:
        waited = time.monotonic() - began
        assert lock.read_info(state) == held.info
    assert 0.3 < waited < 15
    assert proc.poll() is None  # the holder released, it did not die


def test_a_timeout_that_expires_raises_lock_held(state_location: Path | str, spawn_holder: object) -> None:
    state = state_location
    spawn_holder(state)  # type: ignore[operator]
    began = time.monotonic()
    with pytest.raises(LockHeld):
        lock.acquire(state, "apply", timeout=0.4)
    assert time.monotonic() - began >= 0.4


def test_a_holder_killed_with_sigkill_releases_the_lock(state_location: Path | str, spawn_holder: object) -> None:
    state = state_location
    proc, lock_id = spawn_holder(state)  # type: ignore[operator]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = lock.read_info(state)
    assert stale is not None and stale.id == lock_id  # its information is left behind ...
    assert lock.holder(state) is None  # ... but nobody holds the lock
    with lock.acquire(state, "apply", "next") as held:
        assert lock.read_info(state) == held.info


def test_force_unlock_clears_stale_info_but_refuses_a_wrong_id_or_a_live_holder(state_location: Path | str,
                                                                               spawn_holder: object) -> None:
    state = state_location
    proc, lock_id = spawn_holder(state)  # type: ignore[operator]
    with pytest.raises(LockError, match="does not match"):
        lock.force_unlock(state, "not-the-id")
    with pytest.raises(LockError, match=f"held by a live process \\(PID {proc.pid}"):
        lock.force_unlock(state, lock_id)
    assert lock.holder(state) is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cleared = lock.force_unlock(state, lock_id)
    assert cleared.id == lock_id and cleared.pid == proc.pid
    assert lock.read_info(state) is None
    with pytest.raises(LockError, match="not locked"):
        lock.force_unlock(state, lock_id)


def test_two_holders_in_one_process_also_exclude_each_other(state_location: Path | str) -> None:
    state = state_location
    with lock.acquire(state, "apply"), pytest.raises(LockHeld):
        lock.acquire(state, "approve")
    lock.acquire(state, "approve").release()


def test_lock_held_survives_pickling_for_reporting_across_processes(state_location: Path | str) -> None:
    state = state_location
    with lock.acquire(state, "apply", "me"), pytest.raises(LockHeld) as caught:
        lock.acquire(state, "apply")
    again = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(again, LockHeld) and again.info == caught.value.info and str(again) == str(caught.value)
