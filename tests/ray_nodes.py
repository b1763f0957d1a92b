"""A Ray cluster of two nodes on this machine whose worker cannot see one folder (a remote machine's view).

The head offers no CPUs; the worker (``--num-cpus``) runs in a mount namespace of its own (``unshare
--mount``) with a tmpfs over ``hidden``, so it cannot read the driver's files there. Used by
``tests/test_two_nodes.py`` and ``bench/two_node_bench.py``. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ports import free_port, free_ports

from runtime.compute.cluster import READY_LINE, _ensure_token, down_pgid

START_TIMEOUT_S = 90.0



def _ray_start(*options: str) -> list[str]:
    agent_port, metrics_port = free_ports(2)  # distinct: two free_port() calls can return the same port
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={agent_port}",
            f"--metrics-export-port={metrics_port}", *options]


def _wait_for(log: Path, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {log.read_text()[-2000:]}")
        if READY_LINE in log.read_bytes():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not start within {START_TIMEOUT_S:.0f}s: {log.read_text()[-2000:]}")


def alive_nodes(address: str) -> int:
    """How many nodes of the cluster at ``address`` are alive (read from its GCS)."""
    from ray._raylet import InnerGcsClient  # type: ignore[attr-defined]
    from ray.core.generated.gcs_pb2 import GcsNodeInfo  # type: ignore[attr-defined]

    client = InnerGcsClient.standalone(address, None, 5000)
    return sum(node.state == GcsNodeInfo.ALIVE for node in client.get_all_node_info(timeout=5).values())


class TwoNodes:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`address` is the head's GCS."""

    def __init__(self, logs: Path, hidden: Path, env: dict[str, str] | None = None, worker_cpus: int = 2) -> None:
        self.logs, self.hidden, self.worker_cpus = logs, hidden, worker_cpus
        self.address = f"127.0.0.1:{free_port()}"
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}  # two nodes on one (loopback) address
        self._processes: list[subprocess.Popen[bytes]] = []
        self._session: Path | None = None

    def start(self) -> TwoNodes:
        _ensure_token()
        os.environ["RAY_AUTH_MODE"] = "token"  # this process joins it too
        if "ray" in sys.modules:  # Ray read the mode when it was imported: make it read it again
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
        session = Path(tempfile.mkdtemp(prefix="mlops-2n-", dir="/tmp"))  # short: unix socket paths are limited
        self._session = session
        try:
            head_log = self.logs / "head.log"
            port = self.address.rsplit(":", 1)[1]
            self._spawn(_ray_start("--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                                   f"--ray-client-server-port={free_port()}", f"--temp-dir={session}"), head_log)
            _wait_for(head_log, self._processes[-1], "the head node")
            worker_log = self.logs / "worker.log"
            hide = f"mount -t tmpfs -o size=1m mlops-hidden {self.hidden} && exec \"$@\""
            self._spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh",
                         *_ray_start(f"--address={self.address}", f"--num-cpus={self.worker_cpus}")], worker_log)
            _wait_for(worker_log, self._processes[-1], "the worker node")
            deadline = time.monotonic() + START_TIMEOUT_S
            while alive_nodes(self.address) < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError("the worker node never joined the head")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, command: list[str], log: Path) -> None:
        with log.open("wb") as handle:
            self._processes.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=self.env,
                                                    start_new_session=True))

    def stop(self) -> None:
        for process in reversed(self._processes):
            down_pgid(process.pid)
        self._processes.clear()
        if self._session is not None:  # the nodes' Ray folder (sessions, logs, sockets): gone with them
            shutil.rmtree(self._session, ignore_errors=True)
            self._session = None
