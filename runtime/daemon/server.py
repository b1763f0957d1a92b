"""The warm driver process: ``python -m runtime.daemon.server STATE_PATH NUM_CPUS IDLE_S FINGERPRINT``.

It starts (or joins) the local Ray cluster of ``STATE_PATH``, joins it as one long-lived Ray job, and runs
the commands clients forward (:mod:`runtime.daemon.client`), one at a time, in this process: the Ray
connection, the workers and the modules they imported stay warm from one command to the next. It stops
after ``IDLE_S`` seconds without a command (and stops the cluster then unless a deployment serves), when
the cluster stops, or when told to (``mlops down``). ``FINGERPRINT`` is the starting caller's
(:func:`runtime.daemon.record.fingerprint`), recorded for the callers after it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from runtime.daemon import record, wire
from runtime.daemon.record import READY_LINE

if TYPE_CHECKING:
    from runtime.compute.cluster import LocalCluster

POLL_S = 1.0
"""How often an idle driver looks at its clock and at the cluster."""


class Driver:
    """Accepts commands on ``listener`` and runs them, one at a time, until idle or told to stop."""

    def __init__(self, state_path: Path, listener: socket.socket, idle_s: float, local: LocalCluster) -> None:
        self.state_path, self.listener, self.idle_s, self.local = state_path, listener, idle_s, local
        self.last_active = time.monotonic()
        self._running = False
        self._interrupted = False

    def serve(self) -> str:
        """Serve until a reason to stop; returns it (for the log)."""
        from runtime.compute import cluster

        signal.signal(signal.SIGINT, self._on_interrupt)
        self.listener.settimeout(POLL_S)
        while True:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                if not self.state_path.parent.is_dir():  # nobody can reach its cluster any more: stop it
                    cluster.stop(self.local)
                    return f"its state folder {self.state_path.parent} was removed: stopped the local cluster"
                if cluster.running(self.state_path) is None:
                    return "the local Ray cluster stopped"
                if time.monotonic() - self.last_active > self.idle_s:
                    return self._idle_stop()
                continue
            with connection:
                connection.settimeout(None)
                if self._handle(connection) == "stop":
                    return "told to stop"
            self.last_active = time.monotonic()

    def _idle_stop(self) -> str:
        from runtime.compute import cluster

        if _serving():
            return f"idle for {self.idle_s:.0f}s (the local cluster keeps serving its deployments)"
        cluster.down(self.state_path)
        return f"idle for {self.idle_s:.0f}s: stopped the local cluster too"

    def _handle(self, connection: socket.socket) -> str:
        reader = wire.Reader(connection)
        try:
            request = reader.next()
        except ValueError:
            return "bad request"
        if request is None:
            return "no request"
        if request.get("command") == "stop":
            wire.send(connection, {"exit": 0})
            return "stop"
        if request.get("command") == "ping":
            wire.send(connection, {"exit": 0, "pid": os.getpid()})
            return "ping"
        started = time.monotonic()
        code = self._run(connection, reader, request)
        print(f"mlops {' '.join(request.get('argv') or [])} in {request.get('cwd')}: exit {code} after "
              f"{time.monotonic() - started:.2f}s{' (cancelled by its client)' if self._interrupted else ''}",
              flush=True)  # logged before the answer: the log is complete when the client has its exit code
        with contextlib.suppress(OSError):
            wire.send(connection, {"exit": code})
        return "run"

    def _run(self, connection: socket.socket, reader: wire.Reader, request: dict[str, Any]) -> int:
        """Run one CLI command as the client would have: its arguments, folder, environment and terminal."""
        from runtime.cli.main import main

        lock = threading.Lock()
        out_tty, err_tty = request.get("tty") or (False, False)
        out = wire.Stream(connection, "out", bool(out_tty), lock)
        err = wire.Stream(connection, "err", bool(err_tty), lock)
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        finished = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(reader, finished), daemon=True)
        try:
            os.environ.clear()
            os.environ.update(request["env"])
            os.environ["MLOPS_IN_DAEMON"] = "1"
            os.chdir(request["cwd"])
            self._running, self._interrupted = True, False
            watcher.start()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(list(request["argv"]))
                except KeyboardInterrupt:
                    code = 130
        except OSError as error:  # the client's folder is gone
            code = 1
            err.write(f"error: the warm driver could not run the command: {error}\n")
        finally:
            self._running = False
            finished.set()
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            gc.enable()  # the CLI turns the collector off for a one-shot process; this one lives on
            gc.collect()
        return code

    def _watch(self, reader: wire.Reader, finished: threading.Event) -> None:
        """Interrupt the running command when its client cancels it or goes away."""
        try:
            message = reader.next()
        except (OSError, ValueError):
            message = None
        if finished.is_set():
            return
        if message is None or message.get("command") == "cancel":
            self._interrupted = True
            os.kill(os.getpid(), signal.SIGINT)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl-C of a client interrupts its command; between commands the driver ignores SIGINT."""
        if self._running:
            raise KeyboardInterrupt


def _serving() -> bool:
    """Whether Ray Serve runs an application on the joined cluster."""
    try:
        from runtime.compute import serving

        return bool(serving.applications())
    except Exception:  # noqa: BLE001 - no Serve, or it does not answer: nothing to keep serving
        return False


def _import_commands() -> None:
    """Import what running ``mlops apply`` needs (Ray, the CLI, the apply machinery, and pygit2, with which an
    apply records the commit it applies: 0.13 s of a cold apply's first command otherwise)."""
    import pygit2  # noqa: F401

    from runtime.compute import ray_backend

    ray_backend.preload()
    import runtime.apply.operations  # noqa: F401
    import runtime.cli.commands.apply  # noqa: F401
    import runtime.cli.main  # noqa: F401


def main(argv: list[str]) -> int:
    from runtime.compute import cluster, ray_backend

    state_path, num_cpus, idle_s, fingerprint = Path(argv[0]), int(argv[1]), float(argv[2]), argv[3]
    os.environ["MLOPS_IN_DAEMON"] = "1"
    began = time.monotonic()
    imports = threading.Thread(target=_import_commands, daemon=True)
    imports.start()  # while the cluster starts: Ray and the commands' modules, which the first command needs
    local = cluster.up(state_path, num_cpus=num_cpus)
    cluster_s = time.monotonic() - began
    imports.join(timeout=60)
    ray_backend.connect(local.address)
    ray_backend.warm_workers(num_cpus)  # its first command's tasks then find workers that imported mlops
    joined_s = time.monotonic() - began - cluster_s
    path = record.socket_path(state_path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(8)
    record.write(state_path, record.DaemonRecord(os.getpid(), str(path), time.time(), idle_s, fingerprint,
                                                 local.address))
    print(f"{READY_LINE}: pid {os.getpid()}, cluster {local.address} (ready in {cluster_s:.2f}s, joined in "
          f"{joined_s:.2f}s), idle stop after {idle_s:.0f}s", flush=True)
    try:
        why = Driver(state_path, listener, idle_s, local).serve()
    finally:
        record.remove(state_path, os.getpid())
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    print(f"mlops warm driver stopped: {why}", flush=True)
    ray_backend.shutdown()
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)
