"""The GitOps loop under faults of its git remote, on real bare repositories and a real silent TCP server:
a deleted branch, a remote that never answers, a force push to an older commit, a repository over the cap.

The projects have only datasets: nothing runs on Ray, a tick takes about a second."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
import yaml
from conftest import GitRemote

from compiler import load_project
from runtime.apply.operations import opened
from runtime.reconcile.loop import Backoff, Reconciler, Source, TickResult
from runtime.state import audit
from runtime.views.status import project_status

ROOT = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_dump({"apiVersion": "mlops/v1", "project": "faults", "datasets": {"raw": {"path": "data/raw.csv"}}})


def files(rows: int) -> dict[str, str]:
    return {"mlops.yaml": SPEC, "data/raw.csv": "x\n" + "".join(f"{i}\n" for i in range(rows))}


def reconciler(remote: GitRemote | str, checkout: Path, **options: float) -> Reconciler:
    url = remote if isinstance(remote, str) else str(remote.origin)
    return Reconciler(Source(Path("mlops.yaml"), url, "main", checkout, **options))  # type: ignore[arg-type]


def mlops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung git host); its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def test_a_deleted_remote_branch_is_the_ticks_error_shown_by_status_and_nothing_is_undeployed(
        tmp_path: Path) -> None:
    remote = GitRemote(tmp_path)
    first = remote.commit(files(10), "one")
    checkout = tmp_path / "checkout"
    loop = reconciler(remote, checkout)
    synced = loop.tick()
    assert synced.ok and synced.commit == first and synced.applied is not None, synced.error
    pygit2.Repository(str(remote.origin)).references.delete("refs/heads/main")
    for count in (1, 2):  # every tick says so, not only the first
        result = loop.tick()
        assert result.error == (f"error: branch main no longer exists on origin ({remote.origin}); nothing is "
                                f"undeployed, the last synced commit {first[:12]} stays")
        assert loop.failures == count
    project = load_project(checkout / "mlops.yaml")
    with opened(project) as (_, store):
        recorded = store.reconciler_status()
        resources = {r.address: r for r in project_status(project, store).resources}
    assert recorded.error == result.error and recorded.errors == 2 and recorded.commit == first
    assert resources["datasets.raw"].sync == "Synced"  # still recorded, not undeployed
    assert (checkout / "data" / "raw.csv").exists()  # the work tree stays at the last synced commit
    shown = mlops("-f", "mlops.yaml", "status", cwd=checkout)
    assert shown.returncode == 0, shown.stderr
    assert "last error (2 in a row): error: branch main no longer exists on origin" in " ".join(shown.stdout.split())


def test_a_clone_from_a_remote_that_never_answers_times_out_and_backs_off(
        tmp_path: Path, silent_server: int) -> None:
    url = f"http://127.0.0.1:{silent_server}/repo.git"
    loop = reconciler(url, tmp_path / "checkout", fetch_timeout=1.0)
    ticks: list[TickResult] = []
    delays: list[float] = []

    def wait(seconds: float) -> bool:
        delays.append(seconds)
        return len(delays) >= 3

    runner = threading.Thread(target=loop.run, args=(60.0, Backoff(base=1.0, cap=8.0)),
                              kwargs={"wait": wait, "on_tick": ticks.append}, daemon=True)
    started = time.monotonic()
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "a tick is still blocked on the remote"
    assert delays == [1.0, 2.0, 4.0]  # failed ticks back off
    assert [t.error for t in ticks] == [f"error: cannot clone {url}: no answer within 1s (--fetch-timeout)"] * 3
    assert all(t.seconds < 10 for t in ticks), [t.seconds for t in ticks]
    assert time.monotonic() - started < 40
    assert not (tmp_path / "checkout").exists()  # a failed clone leaves nothing


def test_a_fetch_from_a_remote_that_stops_answering_times_out_and_the_next_fetch_recovers(
        tmp_path: Path, silent_server: int) -> None:
    remote = GitRemote(tmp_path)
    first = remote.commit(files(10), "one")
    checkout = tmp_path / "checkout"
    assert reconciler(remote, checkout).tick().ok
    hung = reconciler(f"http://127.0.0.1:{silent_server}/repo.git", checkout, fetch_timeout=2.0).tick()
    assert hung.error == f"error: cannot fetch http://127.0.0.1:{silent_server}/repo.git: no answer within 2s " \
                         "(--fetch-timeout)"
    assert hung.seconds < 15
    second = remote.commit(files(20), "two")
    back = reconciler(remote, checkout).tick()
    assert back.ok and back.commit == second and back.commit != first, back.error


def test_a_force_push_to_an_older_commit_is_reported_audited_and_followed(tmp_path: Path) -> None:
    remote = GitRemote(tmp_path)
    old = remote.commit(files(10), "one")
    checkout = tmp_path / "checkout"
    loop = reconciler(remote, checkout)
    assert loop.tick().ok
    newer = remote.commit(files(20), "two")
    forward = loop.tick()
    assert forward.ok and forward.commit == newer and forward.rewritten is None and forward.notes == []
    remote.repo.references["refs/heads/main"].set_target(old)  # git push --force origin OLD:main
    remote.repo.remotes["origin"].push(["+refs/heads/main"])
    result = loop.tick()
    assert result.ok, result.error
    assert result.commit == old and result.rewritten == (newer, old)
    assert result.notes == [f"history of main rewritten: {old[:12]} does not descend from {newer[:12]}; "
                            "following it"]
    assert result.applied is not None and result.applied.result.ok  # followed: the data went back
    assert result.to_json()["history_rewritten"] == {"from": newer, "to": old}
    project = load_project(checkout / "mlops.yaml")
    with opened(project) as (_, store):
        [record] = audit.of_actions(store, ["history_rewritten"])
        assert audit.verify(store) == []
        assert store.reconciler_status().commit == old
    assert record.payload == {"repo": str(remote.origin), "branch": "main", "from": newer, "to": old}
    assert record.commit == old
    assert loop.tick().rewritten is None  # reported once
    shown = mlops("-f", "mlops.yaml", "status", cwd=checkout)
    assert "history of main rewritten at" in shown.stdout
    assert f"followed {old[:12]}, which does not descend from {newer[:12]}" in " ".join(shown.stdout.split())


@pytest.mark.parametrize(("content", "expected"), [
    ({"blob.bin": os.urandom(300 * 1024).hex()}, "KiB received before the transfer was stopped"),  # a download
    ({"zeros.txt": "0" * (4 << 20)}, "the files of"),                 # a tiny pack that checks out 4 MiB
])
def test_a_repository_over_the_size_cap_is_refused_in_one_line(
        tmp_path: Path, content: dict[str, str], expected: str) -> None:
    remote = GitRemote(tmp_path)
    remote.commit({**files(10), **content}, "big")
    checkout = tmp_path / "checkout"
    result = reconciler(remote, checkout, max_repo_bytes=256 * 1024).tick()
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith("error: ") and str(remote.origin) in result.error
    assert "the repository is over the 256 KiB cap (--max-repo-size): " in result.error and expected in result.error
    assert not (checkout / "mlops.yaml").exists()  # nothing was checked out
    done = mlops("-f", "mlops.yaml", "reconcile", "--repo", str(remote.origin), "--checkout", str(checkout),
                 "--max-repo-size", "256KiB", cwd=tmp_path)
    assert done.returncode == 1 and "over the 256 KiB cap" in done.stdout and "Traceback" not in done.stderr
    assert reconciler(remote, checkout).tick().ok  # under the default 1 GiB cap it is taken


def test_a_stop_during_a_fetch_from_a_silent_remote_ends_the_tick_at_once(tmp_path: Path, silent_server: int) -> None:
    loop = reconciler(f"http://127.0.0.1:{silent_server}/repo.git", tmp_path / "checkout", fetch_timeout=60.0)
    timer = threading.Timer(0.5, loop.stop.set)  # what SIGTERM does
    timer.start()
    result = loop.tick()
    timer.join()
    assert result.stopped and result.error is None
    assert result.seconds < 5, result.seconds  # not the 60 s of the timeout
    assert not (tmp_path / "checkout").exists()
