"""Forward a CLI command to the warm driver of its state directory, starting one when none suits.

Every wait is bounded: the driver's start (:data:`START_TIMEOUT_S`), connecting to it, and the answer to a
cancelled command (:data:`CANCEL_TIMEOUT_S`). While the command runs, the driver's output is the wait's sign
of life; a driver that dies closes the socket, which ends the wait with a one-line error.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from compiler.resolve import Project
from runtime import processes
from runtime.daemon import record, wire
from runtime.errors import ClusterError
from runtime.workspace import Workspace

START_TIMEOUT_S = 150.0
"""The local cluster's start (90 s at most) and the driver joining it."""
CONNECT_TIMEOUT_S = 10.0
CANCEL_TIMEOUT_S = 60.0
"""How long an interrupted command may take to wind down before the client leaves it."""
STOP_TIMEOUT_S = 30.0


def idle_stop_s() -> float | None:
    """The idle time after which a driver stops; ``None``: the warm driver is off (``MLOPS_IDLE_STOP=off``)."""
    try:
        return record.idle_seconds()
    except ValueError as error:
        raise ClusterError.one(str(error)) from None


def eligible(project: Project) -> bool:
    """Whether the project's commands go through a warm driver: the embedded default (no ``cluster.address``),
    not already inside a driver, and not turned off."""
    return (not project.spec.cluster.address and not os.environ.get("MLOPS_IN_DAEMON")
            and idle_stop_s() is not None)


def running_for(project: Project, environ: dict[str, str]) -> record.DaemonRecord | None:
    """The project's warm driver, if one is running and suits a caller with the environment ``environ``."""
    found = record.read(Workspace.of(project).state_path)
    return found if found is not None and found.fingerprint == record.fingerprint(environ) else None


def run(project: Project, argv: list[str], environ: dict[str, str]) -> int:
    """Run ``mlops ARGV`` in the project's warm driver (started now when none suits), in the environment
    ``environ`` (the caller's as it started: Ray, once imported, adds its own variables); its exit code."""
    state_path = Workspace.of(project).state_path
    log = record.log_path(state_path)
    try:
        return _forward(ensure(project, environ), argv, log, environ)
    except (ConnectionRefusedError, FileNotFoundError):  # it stopped (idle) between the check and the connect
        return _forward(ensure(project, environ), argv, log, environ)


def ensure(project: Project, environ: dict[str, str]) -> record.DaemonRecord:
    """The project's warm driver: the running one when it suits a caller with the environment ``environ``,
    else a new one started in it (an unsuitable one is stopped first)."""
    from runtime.compute.sizing import local_cluster_cpus

    state_path = Workspace.of(project).state_path
    idle = idle_stop_s()
    assert idle is not None
    with _exclusive(state_path):
        found = record.read(state_path)
        if found is not None and found.fingerprint == record.fingerprint(environ) and _answers(found):
            return found
        if found is not None:
            stop(state_path)
        return _start(state_path, local_cluster_cpus(project), idle, environ)


def _start(state_path: Path, num_cpus: int, idle_s: float, environ: dict[str, str]) -> record.DaemonRecord:
    log = record.log_path(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    # The caller's fingerprint (record.fingerprint): the driver's own environment differs by its PYTHONPATH.
    command = [sys.executable, "-m", "runtime.daemon.server", str(state_path), str(num_cpus), str(idle_s),
               record.fingerprint(environ)]
    env = processes.importing_mlops(environ)
    with log.open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError.one(f"the warm driver exited with {process.returncode} while starting; see {log}")
        with log.open("rb") as handle:
            handle.seek(offset)
            ready = record.READY_LINE.encode() in handle.read()
        found = record.read(state_path) if ready else None
        if found is not None and found.pid == process.pid:
            return found
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    raise ClusterError.one(f"the warm driver did not start within {START_TIMEOUT_S:.0f}s; see {log}")


def stop(state_path: Path) -> bool:
    """Stop the state's warm driver (asked, then killed after :data:`STOP_TIMEOUT_S`); ``False`` when none
    ran. The local cluster is left as it is."""
    found = record.read(state_path)
    if found is None:
        return False
    with contextlib.suppress(OSError, ValueError), _connected(found, CONNECT_TIMEOUT_S) as connection:
        wire.send(connection, {"command": "stop"})
        wire.Reader(connection).next()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _stopping(state_path, found.pid):
        time.sleep(0.05)
    if _stopping(state_path, found.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(found.pid, signal.SIGKILL)
        record.remove(state_path, found.pid)
    return True


def _stopping(state_path: Path, pid: int) -> bool:
    """Whether the driver ``pid`` still runs or is still recorded: it leaves Ray after removing its record, and
    ``down`` stops the cluster only once it is gone."""
    return record.read(state_path) is not None or processes.alive(pid)


def _answers(found: record.DaemonRecord) -> bool:
    try:
        with _connected(found, CONNECT_TIMEOUT_S) as connection:
            wire.send(connection, {"command": "ping"})
            reply = wire.Reader(connection).next()
    except (OSError, ValueError):
        return False
    return reply is not None and reply.get("pid") == found.pid


@contextlib.contextmanager
def _connected(found: record.DaemonRecord, timeout: float | None) -> Iterator[socket.socket]:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(CONNECT_TIMEOUT_S)
        connection.connect(found.socket)
        connection.settimeout(timeout)
        yield connection
    finally:
        connection.close()


def _forward(found: record.DaemonRecord, argv: list[str], log: Path, environ: dict[str, str]) -> int:
    """Send the command, copy its output here as it comes, return its exit code (Ctrl-C cancels it there)."""
    with _connected(found, None) as connection:
        wire.send(connection, {"command": "run", "argv": argv, "cwd": os.getcwd(), "env": environ,
                               "tty": [sys.stdout.isatty(), sys.stderr.isatty()]})
        reader = wire.Reader(connection)
        cancelled_at: float | None = None
        while True:
            try:
                message = reader.next()
            except KeyboardInterrupt:
                if cancelled_at is None:
                    cancelled_at = time.monotonic()
                    with contextlib.suppress(OSError):
                        wire.send(connection, {"command": "cancel"})
                    connection.settimeout(CANCEL_TIMEOUT_S)
                continue
            except TimeoutError:
                print(f"error: the warm driver (pid {found.pid}) did not stop the cancelled command within "
                      f"{CANCEL_TIMEOUT_S:.0f}s", file=sys.stderr)
                return 130
            if message is None:
                print(f"error: the warm driver (pid {found.pid}) ended without finishing the command; see {log}",
                      file=sys.stderr)
                return 1
            if "out" in message:
                sys.stdout.write(message["out"])
                sys.stdout.flush()
            elif "err" in message:
                sys.stderr.write(message["err"])
                sys.stderr.flush()
            elif "exit" in message:
                return int(message["exit"])


@contextlib.contextmanager
def _exclusive(state_path: Path) -> Iterator[None]:
    """One start or stop of the state's driver at a time (two applies must not start two)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    path = state_path.parent / "daemon.lock"
    with path.open("a") as handle:
        deadline = time.monotonic() + START_TIMEOUT_S + STOP_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ClusterError.one(f"{path}: another mlops has been starting the warm driver for longer than "
                                         f"{START_TIMEOUT_S + STOP_TIMEOUT_S:.0f}s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
