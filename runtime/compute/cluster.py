"""The embedded default's long-lived local Ray cluster: ``mlops up`` / ``mlops down``.

Serve deployments must outlive the ``mlops apply`` process, so on the embedded default they run on
a local Ray head started in the background (:mod:`runtime.compute.head`, in its own process group).
Its address, process group and Serve HTTP port are kept in ``<state dir>/cluster.json``; apply and
the reconciler join it when it is up. ``cluster.address`` in the spec (an existing cluster) wins.

The head uses Ray's token authentication (its GCS listens on every interface) with the user's token
(``~/.ray/auth_token``, created when missing, or ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``);
:func:`running` prepares the calling process to present it, since Ray only does that by itself for
``address="auto"``. ``RAY_AUTH_MODE=disabled`` in the environment of ``mlops up`` opts out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from compiler.errors import MlopsError
from runtime import processes
from runtime.errors import ClusterError

DEFAULT_SERVE_PORT = 8000
READY_LINE = b"Ray runtime started"
"""What the head logs once its GCS, its raylet and the raylet's agents are up (``ray start`` logs it too)."""
# The embedded cluster is this machine's alone: its node, its agents and its workers bind the loopback
# address only. Ray replaces a loopback node address with the machine's external address unless it runs
# as it does on a laptop (ray._private.services.resolve_ip_for_localhost, get_node_ip_address); so told, its
# GCS, raylet, agents, workers and Serve listen on 127.0.0.1 (tests/test_cluster_loopback.py).
LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TEMP_PREFIX = "mlops-ray-"
"""How a local cluster's Ray folder (in the system's temporary folder, with the GCS port after it) is named."""
SOCKET_RETRY_ENV = {"RAY_raylet_client_connect_timeout_milliseconds": "100",
                    "RAY_raylet_client_num_connect_attempts": "100"}
"""How the head's processes retry a local socket that is not listening yet: every 0.1 s for 10 s, where Ray's
default is every 1 s for 10 s. The raylet connects to its own object store as that store starts, and when it
comes first it waited a whole second (in two of four cold applies whose logs were read here). A caller's own
settings win."""


@dataclass(frozen=True)
class LocalCluster:
    address: str
    """``127.0.0.1:PORT`` of the GCS."""
    pgid: int
    serve_port: int
    temp_dir: str
    started_at: float
    auth: str = "token"
    """Ray's authentication mode on the head: ``token`` or ``disabled``."""
    num_cpus: float | None = None
    """The logical CPUs the head offers (``None``: recorded before this was kept; the machine's)."""

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"


def default_serve_port() -> int:
    """``$MLOPS_SERVE_PORT``, else 8000: where Serve listens on a cluster mlops did not start for a state."""
    return int(os.environ.get("MLOPS_SERVE_PORT") or DEFAULT_SERVE_PORT)


def info_path(state_path: Path) -> Path:
    return state_path.parent / "cluster.json"


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of this process (a zombie still counts as alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def members(session: int) -> list[int]:
    """Live (not zombie) processes of the cluster's session: the head and everything it started, Ray's
    workers included (they move to process groups of their own but stay in the session)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: only the head's process group can be seen
        try:
            os.killpg(session, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [session]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[3]) == session:  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def _alive(pgid: int) -> bool:
    _reap(pgid)
    return bool(members(pgid))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _authenticate(cluster: LocalCluster) -> None:
    """Make this process present the Ray token when it connects (Ray skips it for explicit addresses)."""
    if cluster.auth != "token" or os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray" in sys.modules:  # Ray read the mode when it was imported: make it read it again, as Ray itself does
        with contextlib.suppress(Exception):
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")


def _recorded(state_path: Path) -> LocalCluster | None:
    """The cluster recorded for this state, alive or not."""
    try:
        return LocalCluster(**json.loads(info_path(state_path).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def running(state_path: Path) -> LocalCluster | None:
    """The cluster ``mlops up`` started for this state, if it is still alive (this process is then set
    up to authenticate to it)."""
    cluster = _recorded(state_path)
    if cluster is None or not _alive(cluster.pgid):
        return None
    _authenticate(cluster)
    return cluster


def stop(cluster: LocalCluster) -> None:
    """Stop ``cluster``'s head and everything it started (:func:`down_pgid`), then remove its Ray folder
    (:func:`remove_folder`): nothing of it is left on the machine."""
    down_pgid(cluster.pgid)
    remove_folder(cluster)


def remove_folder(cluster: LocalCluster) -> None:
    """Remove the Ray folder of a stopped ``cluster`` (:func:`remove_ray_folder`)."""
    remove_ray_folder(Path(cluster.temp_dir))


def remove_ray_folder(folder: Path) -> None:
    """Remove a stopped local cluster's Ray folder: its sessions' logs, sockets and spilled objects. Only a
    folder named as :func:`up` names them is removed, whatever a cluster's record says."""
    if folder.name.startswith(TEMP_PREFIX):
        shutil.rmtree(folder, ignore_errors=True)


def _ensure_token() -> None:
    """Create the user's Ray token (``~/.ray/auth_token``, mode 0600) unless one is configured."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))


@contextlib.contextmanager
def _exclusive(state_path: Path) -> Iterator[None]:
    """One ``up``/``down`` at a time per state directory (two applies must not start two heads)."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with (state_path.parent / "cluster.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up(state_path: Path, num_cpus: int | None = None, serve_port: int | None = None,
       timeout: float = 90.0) -> LocalCluster:
    """Start the local head (idempotent: an alive one is returned as is) and wait until it is ready.

    The Serve port is ``serve_port``, else ``$MLOPS_SERVE_PORT``, else 8000 when free, else any free port.
    """
    with _exclusive(state_path):
        existing = running(state_path)
        if existing is not None:
            return existing
        stale = _recorded(state_path)
        if stale is not None:  # its head exited by itself (a failed process, a kill): its folder goes now
            remove_folder(stale)
        return _start(state_path, num_cpus, serve_port, timeout)


def _start(state_path: Path, num_cpus: int | None, serve_port: int | None, timeout: float) -> LocalCluster:
    cluster = _launch(num_cpus, serve_port, timeout, state_path.parent / "cluster.log")
    info = info_path(state_path)
    tmp = info.with_name(info.name + ".tmp")
    tmp.write_text(json.dumps(asdict(cluster)))
    tmp.replace(info)
    _authenticate(cluster)
    return cluster


def start_embedded(num_cpus: int | None, timeout: float = 90.0) -> LocalCluster:
    """A head for this process alone: the embedded Ray of an apply with ``MLOPS_IDLE_STOP=off``, of the
    reconciler, of a test. It is :func:`up`'s head, less one thing: it is recorded nowhere (its log is in its
    own Ray folder), and it stops when this process stops it (:func:`stop`) or ends, however it ends: the head
    watches that this process is still its parent. It starts in about half of what Ray's own in-process start
    takes here (``bench/ray_floor_bench.py``)."""
    cluster = _launch(num_cpus, default_serve_port(), timeout, None, owner=os.getpid())
    _authenticate(cluster)
    return cluster


def _launch(num_cpus: int | None, serve_port: int | None, timeout: float, log: Path | None,
            owner: int | None = None) -> LocalCluster:
    """Start a head and wait until it is ready; its log is ``log`` (``None``: ``head.log`` in its Ray folder).
    ``owner``: the pid of this process, which the head then stops with."""
    port = _free_port()
    temp_dir = Path(tempfile.gettempdir()) / f"{TEMP_PREFIX}{port}"
    if log is None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        log = temp_dir / "head.log"
    # The head (runtime.compute.head) is Ray's own head node less the processes one machine's cluster never uses
    # (Ray Client server, API server, autoscaler and log monitors), run by this interpreter with this package
    # importable.
    # Its agent port is chosen here: Ray's fixed default (52365) would collide with a second cluster's.
    command = [sys.executable, "-m", "runtime.compute.head", str(port), str(temp_dir),
               "" if num_cpus is None else str(num_cpus), str(_free_port()), "" if owner is None else str(owner)]
    auth = "disabled" if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" else "token"
    # One node: a drain on SIGTERM has nowhere to move Serve's replicas and would only wait out its 30 s.
    env = {**SOCKET_RETRY_ENV, **processes.importing_mlops(dict(os.environ)), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": auth, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **LOOPBACK_ENV}
    if auth == "token":
        _ensure_token()
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    chosen_port = serve_port or int(os.environ.get("MLOPS_SERVE_PORT") or 0) or _free_port_or(DEFAULT_SERVE_PORT)
    cluster = LocalCluster(f"127.0.0.1:{port}", process.pid, chosen_port, str(temp_dir), time.time(), auth,
                           float(num_cpus if num_cpus is not None else os.cpu_count() or 1))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:  # what the head's node started before it failed is stopped
            raise _failed(cluster, log, f"the local Ray head exited with {process.returncode}")
        with log.open("rb") as handle:
            handle.seek(offset)
            if READY_LINE in handle.read():
                break
        time.sleep(0.05)
    else:
        raise _failed(cluster, log, f"the local Ray head did not start within {timeout:.0f}s")
    return cluster


def _failed(cluster: LocalCluster, log: Path, what: str) -> MlopsError:
    """Stop a head that failed to start; the error names its log, or quotes the log's last line when the log
    went with the head's folder (an embedded head's)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    stop(cluster)
    if log.exists():
        return ClusterError.one(f"{what}; see {log}")
    if not lines:
        return ClusterError.one(f"{what}; it logged nothing")
    return ClusterError.one(f"{what}; its log ended with: {lines[-1].strip()}")


def _free_port_or(preferred: int) -> int:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    return _free_port()


def down_pgid(pgid: int, timeout: float = 15.0) -> None:
    """Stop a head started in its own session: SIGTERM to the head (:mod:`runtime.compute.head`; it stops the
    raylet, the GCS and the agents in order; workers exit with their raylet), then SIGKILL whatever is left of
    the session after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pgid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and _alive(pgid):
        time.sleep(0.2)
    for pid in members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap(pgid)


def down(state_path: Path) -> bool:
    """Stop the local head and everything it started, and remove its session folder; ``False`` when none was
    running (what a head that exited by itself left is removed all the same)."""
    with _exclusive(state_path):
        cluster = _recorded(state_path)
        if cluster is None:
            return False
        was_running = _alive(cluster.pgid)
        if was_running:
            stop(cluster)
        else:  # its head exited by itself: its folder only (a stale record's pgid may be another's by now)
            remove_folder(cluster)
        info_path(state_path).unlink(missing_ok=True)
        return was_running
