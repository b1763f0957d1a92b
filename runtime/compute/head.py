"""The embedded cluster's head process: ``python -m runtime.compute.head PORT TEMP_DIR NUM_CPUS AGENT_PORT [OWNER]``
(``NUM_CPUS`` empty: the machine's; ``OWNER``: the pid of the process it runs for, when it is to stop with it).

It does what ``ray start --head --block`` does, through the same class (Ray's ``Node``), less three Python
processes that one machine's cluster never uses and that a cold start pays for on a small machine:

- no Ray Client server (``ray start`` always starts one when its dependencies are installed): the embedded
  cluster is joined by its GCS address, never through ``ray://``;
- no API server (the dashboard's backend: jobs, state and dashboard HTTP APIs): mlops submits no Ray jobs
  and reads no state API, and Ray starts it before the raylet and waits for it, about 1.5 s here;
- no autoscaler monitor: one machine's cluster never grows;
- no log monitor: it streams the workers' logs to drivers that ask for them, and mlops's never do (each task's
  output is kept in its run's log); the workers still write their log files.

Its dashboard agent runs as Ray's *minimal* agent (as where the dashboard's dependencies are not installed), through
:mod:`runtime.compute.agent`: without the API server there is no one to serve its HTTP endpoints, to read its
metrics or to ask its modules, and the raylet, which waits for the agent before it registers, need not wait for
them. The head sees the raylet registered within 0.05 s (Ray's own check asks once a second). The GCS and the
raylet with its agents start as ``ray start`` starts them. The head prints
:data:`runtime.compute.cluster.READY_LINE` once the raylet has registered, then blocks: SIGTERM stops the
node's processes in order and exits 0; any of them that fails stops the rest and exits 1 (as
``ray start --block`` does), so the cluster is seen as stopped.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import ray._private.node
import ray._private.parameter
import ray._private.ray_constants
import ray._private.services
import ray._private.utils
import ray.exceptions
from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled

from runtime.compute.cluster import LOOPBACK, READY_LINE, remove_ray_folder

STOPPED_CODES = (0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM)
"""Exit codes of a process that was stopped, not one that failed (as ``ray start --block`` counts them)."""


def _minimal_agent() -> ImportError:
    """In place of Ray's check for the dashboard's dependencies, which decides that the node's dashboard agent
    runs as the minimal one (no metrics or HTTP server) and takes 0.7 s of importing them to decide it."""
    return ImportError("the mlops embedded head runs no dashboard: its node's agent runs as the minimal one")


_python_command = ray._private.services._build_python_executable_command_memory_profileable


def _python_command_of(component: str, session_dir: str, unbuffered: bool = True) -> list[str]:
    """In place of Ray's Python command for its node's processes: the dashboard agent's runs through
    :mod:`runtime.compute.agent`, which then runs Ray's agent script (the next argument) as the minimal agent."""
    command = _python_command(component, session_dir, unbuffered)
    if component == ray._private.ray_constants.PROCESS_TYPE_DASHBOARD_AGENT:
        return [*command, "-m", "runtime.compute.agent"]
    return command


REGISTERED_POLL_S = 0.05
"""How often the head asks the GCS whether its raylet has registered."""
REGISTERED_WAIT_S = 30.0
"""How long the head waits for that: as long as Ray's ``Node`` waits for it."""


class EmbeddedNode(ray._private.node.Node):
    """Ray's head node without the API server (see the module's docstring)."""

    def start_api_server(self, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        """Not started: nothing of mlops uses the dashboard's jobs, state or HTTP APIs."""

    def start_ray_processes(self) -> None:
        """Start the raylet and its agents as Ray does, then wait until the raylet has registered with the GCS.

        Ray's ``Node`` then looks the node up once; its own lookup waits a whole second between asks, which a
        cold start would pay half of on average. The wait is bounded as Ray's (:data:`REGISTERED_WAIT_S`); past
        it, Ray's lookup reports the raylet that did not register."""
        super().start_ray_processes()
        deadline = time.monotonic() + REGISTERED_WAIT_S
        gcs = self.get_gcs_client()
        while time.monotonic() < deadline:
            try:
                if any(node_id.hex() == self.node_id for node_id in gcs.get_all_node_info(timeout=5)):
                    return
            except ray.exceptions.RayError:
                pass  # the GCS did not answer this time: asked again until the deadline, then by Ray's lookup
            time.sleep(REGISTERED_POLL_S)


def start(port: int, temp_dir: str, num_cpus: int | None, agent_port: int) -> ray._private.node.Node:
    """Start the head node's processes on the loopback address and wait until its raylet registers."""
    params = ray._private.parameter.RayParams(
        node_ip_address=LOOPBACK, node_name=LOOPBACK, gcs_server_port=port, num_cpus=num_cpus,
        temp_dir=temp_dir, include_dashboard=False, dashboard_host=LOOPBACK, dashboard_agent_listen_port=agent_port,
        no_monitor=True, ray_client_server_port=None,
        include_log_monitor=False)  # type: ignore[arg-type]  # annotated str by Ray, read as a flag ("If True")
    ray._private.utils.get_dashboard_dependency_error = _minimal_agent  # this process starts the node only
    ray._private.services._build_python_executable_command_memory_profileable = _python_command_of
    ensure_token_if_auth_enabled(None, create_token_if_missing=False)  # RAY_AUTH_MODE is set by the caller
    node = EmbeddedNode(params, head=True, shutdown_at_exit=True, spawn_reaper=True)
    ray._private.utils.write_ray_address(node.address, temp_dir)
    return node


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # Node's exit handler stops its processes (raylet first, then the GCS)


def main(argv: list[str]) -> int:
    port, temp_dir, agent_port = int(argv[0]), argv[1], int(argv[3])
    num_cpus = int(argv[2]) if argv[2] else None
    owner = int(argv[4]) if len(argv) > 4 and argv[4] else None
    signal.signal(signal.SIGTERM, _stop)
    node = start(port, temp_dir, num_cpus, agent_port)
    print(f"{READY_LINE.decode()}: the mlops embedded head at {node.address}", flush=True)
    while True:
        time.sleep(1.0)
        if owner is not None and os.getppid() != owner:  # the process it ran for ended without stopping it
            print(f"stopping the node: its owner (pid {owner}) exited", flush=True)
            node.kill_all_processes(check_alive=False, allow_graceful=True)
            remove_ray_folder(Path(temp_dir))
            return 0
        failed = [(kind, process.returncode) for kind, process in node.dead_processes()
                  if process.returncode not in STOPPED_CODES]
        if failed:
            print("stopping the node: " + ", ".join(f"{kind} exited with {code}" for kind, code in failed), flush=True)
            node.kill_all_processes(check_alive=False, allow_graceful=False)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
