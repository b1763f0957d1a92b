"""The embedded cluster's head (runtime.compute.head): Ray's head node less the Ray Client server, the API server,
the autoscaler monitor and the log monitor, with the minimal dashboard agent (runtime.compute.agent); it stops its
node on SIGTERM (``mlops down``) and when one of its processes fails."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.compute import cluster

NOT_STARTED = {"ray.util.client.server": "the Ray Client server", "dashboard/dashboard.py": "the API server",
               "autoscaler/_private/monitor.py": "the autoscaler monitor", "log_monitor.py": "the log monitor"}


def command_lines(pids: list[int]) -> dict[int, str]:
    found = {}
    for pid in pids:
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
    return found


def wait_until(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


@pytest.fixture
def head(tmp_path: Path) -> Iterator[tuple[Path, cluster.LocalCluster]]:
    state_path = tmp_path / ".mlops" / "state.db"
    local = cluster.up(state_path, num_cpus=1)
    yield state_path, local
    cluster.down(state_path)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_head_runs_the_gcs_the_raylet_and_its_agents_and_nothing_one_machine_never_uses(
        head: tuple[Path, cluster.LocalCluster]) -> None:
    state_path, local = head
    lines = command_lines(cluster.members(local.pgid))
    joined = "\n".join(lines.values())
    for process in ("runtime.compute.head", "gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert process in joined, f"{process} not among the head's processes:\n{joined}"
    for marker, name in NOT_STARTED.items():
        assert marker not in joined, f"{name} runs:\n{joined}"
    # The agents retitle themselves; what they run is in the raylet's arguments.
    raylets = [line for line in lines.values() if "/raylet --" in line]
    assert len(raylets) == 1, raylets
    agent = re.search(r" --dashboard_agent_command=(.*?) --\w+_command=", raylets[0])
    assert agent and "-m runtime.compute.agent " in agent[1] and "dashboard/agent.py" in agent[1], raylets[0]
    assert " --minimal" in agent[1], agent[1]
    raylet = next(pid for pid, line in lines.items() if line == raylets[0])
    environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{raylet}/environ").read_bytes().split(b"\0") if item)
    for name, value in cluster.SOCKET_RETRY_ENV.items():  # retries its object store's socket every 0.1 s, not 1 s
        assert environ.get(name.encode()) == value.encode(), (name, environ.get(name.encode()))
    assert cluster.running(state_path) == local


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_dashboard_agent_loads_no_module_and_logs_no_error(head: tuple[Path, cluster.LocalCluster]) -> None:
    """Ray's agent with the dashboard's dependencies installed loads all its modules, and its event module logs a
    traceback about once a second for want of the API server; the embedded head's agent loads none."""
    _, local = head
    log = Path(local.temp_dir) / "session_latest" / "logs" / "dashboard_agent.log"
    wait_until(lambda: log.is_file() and "Loaded 0 modules." in log.read_text(), "the agent loaded its modules")
    time.sleep(3.0)  # the event module's traceback came every second
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_raylet_that_dies_stops_the_head_and_the_cluster_is_seen_stopped(
        head: tuple[Path, cluster.LocalCluster]) -> None:
    state_path, local = head
    raylets = [pid for pid, line in command_lines(cluster.members(local.pgid)).items() if "/raylet " in line]
    assert len(raylets) == 1, raylets
    os.kill(raylets[0], signal.SIGKILL)
    wait_until(lambda: not cluster.members(local.pgid), "the head and every process of its node exited")
    assert cluster.running(state_path) is None
    log = (state_path.parent / "cluster.log").read_text()
    assert "stopping the node: raylet exited with -9" in log, log
    assert Path(local.temp_dir).is_dir()  # its logs stay until the next up or down
    assert cluster.down(state_path) is False  # nothing was running
    assert not Path(local.temp_dir).exists(), "the stopped cluster's Ray folder was left behind"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_sigterm_stops_every_process_of_the_node(head: tuple[Path, cluster.LocalCluster]) -> None:
    state_path, local = head
    os.kill(local.pgid, signal.SIGTERM)  # what `mlops down` sends first (it kills whatever is left 15 s later)
    wait_until(lambda: not cluster.members(local.pgid), "the head stopped its GCS, raylet and agents")
    assert cluster.running(state_path) is None
    replacement = cluster.up(state_path, num_cpus=1)  # the next apply's: it starts a new head
    assert replacement.pgid != local.pgid and Path(replacement.temp_dir).is_dir()
    assert not Path(local.temp_dir).exists(), "the stopped cluster's Ray folder was left behind"
    assert "stopping the node" not in (state_path.parent / "cluster.log").read_text()  # nothing failed


def test_only_a_folder_named_as_the_local_clusters_are_is_removed(tmp_path: Path) -> None:
    """A record's folder is removed only if it is named as ``up`` names them (a record edited to name another
    folder removes nothing)."""
    precious = tmp_path / "precious"
    precious.mkdir()
    recorded = cluster.LocalCluster("127.0.0.1:1", 2 ** 22 + 1, 8000, str(precious), 0.0)
    cluster.remove_folder(recorded)
    assert precious.is_dir()
    ours = tmp_path / f"{cluster.TEMP_PREFIX}1"
    ours.mkdir()
    cluster.remove_folder(cluster.LocalCluster("127.0.0.1:1", 2 ** 22 + 1, 8000, str(ours), 0.0))
    assert not ours.exists()


EMBEDDED_DRIVER = '''
import os, sys
from runtime.compute import ray_backend
import ray

ray_backend.connect(None, num_cpus=1)  # the embedded Ray of MLOPS_IDLE_STOP=off, of the reconciler, of a test
local = ray_backend._EMBEDDED[0]
assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42
print(local.pgid, local.temp_dir, flush=True)
sys.stdin.readline()  # the test has looked at its processes
if sys.argv[1] == "killed":
    os.kill(os.getpid(), 9)  # ends without stopping anything
ray_backend.shutdown()
print("left", flush=True)
'''


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("ending", ["shutdown", "killed"])
def test_an_embedded_ray_is_the_stripped_head_and_goes_with_its_process_however_it_ends(ending: str) -> None:
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_MODE"}
    driver = subprocess.Popen([sys.executable, "-c", EMBEDDED_DRIVER, ending], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert driver.stdin is not None and driver.stdout is not None
    first = driver.stdout.readline().split()
    assert len(first) == 2, driver.communicate(timeout=60)[1][-3000:]
    pgid, folder = int(first[0]), Path(first[1])
    joined = "\n".join(command_lines(cluster.members(pgid)).values())
    for process in ("runtime.compute.head", "gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert process in joined, f"{process} not among the embedded head's processes:\n{joined}"
    for marker, name in NOT_STARTED.items():
        assert marker not in joined, f"{name} runs:\n{joined}"
    assert folder.is_dir() and folder.name.startswith(cluster.TEMP_PREFIX)
    driver.stdin.write("go\n")
    driver.stdin.flush()
    if ending == "shutdown":
        assert driver.stdout.readline().strip() == "left"
        assert not cluster.members(pgid) and not folder.exists(), "shutdown() left the head or its folder"
    driver.communicate(timeout=60)
    assert driver.returncode == (0 if ending == "shutdown" else -signal.SIGKILL)
    wait_until(lambda: not cluster.members(pgid) and not folder.exists(),
               f"the embedded head's processes and its folder {folder} gone", timeout=20)
