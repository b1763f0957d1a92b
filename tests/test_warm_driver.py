"""The warm driver (runtime/daemon): successive CLI applies on the embedded default share one Ray job.

Every command here is a real ``mlops`` process with the default environment (the suite turns the driver off
for other tests, see conftest.py): the first apply with work to do starts the local cluster and the
driver, later ones run in it (the same driver, the same Ray workers), an idle driver stops and takes the
cluster with it, ``mlops down`` stops both, a killed driver is replaced by the next apply, Ctrl-C of a
forwarded apply interrupts it there, and a no-op apply starts nothing. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from compiler import load_project
from runtime import processes
from runtime.apply.operations import opened
from runtime.compute import cluster
from runtime.daemon import client, record

ROOT = Path(__file__).resolve().parents[1]
COMMAND_S = 240.0
SLOW_PIPELINE = '''import time
from pathlib import Path


def step(ctx):
    if ctx.params.get("sleep"):
        time.sleep(float(ctx.params["sleep"]))
    text = "".join(Path(p).read_text()[:64] for p in ctx.inputs.values() if Path(p).is_file())
    (ctx.output_dir / "out.csv").write_text(text + ctx.params["name"] + "\\n")
'''


def _spec(stages: int, sleep: float = 0.0) -> dict[str, object]:
    datasets: dict[str, object] = {"raw": {"path": "data/raw.csv"}}
    previous = "raw"
    for index in range(stages):
        params: dict[str, object] = {"name": f"s{index}"}
        if sleep and index == 0:
            params["sleep"] = sleep
        datasets[f"s{index}"] = {"from": [previous], "transform": "pipeline:step", "params": params}
        previous = f"s{index}"
    return {"apiVersion": "mlops/v1", "project": "warm", "datasets": datasets}


def _as_in_a_terminal() -> None:
    """In the command's process before it starts: Ctrl-C's signal as a terminal's foreground command has it.
    A suite started in the background by a non-interactive shell (``.ci/run &``) has SIGINT ignored, and a
    child inherits an ignored signal: its Ctrl-C would then never reach mlops."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Commands:
    """``mlops`` in one project, as a person runs it: the default environment, each command bounded."""

    def __init__(self, spec_path: Path, home: Path, **env: str) -> None:
        self.spec_path = spec_path
        self.env = {"PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                    "HOME": str(home), **env}

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "-f", str(self.spec_path), *args],
                                cwd=self.spec_path.parent, env=self.env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=_as_in_a_terminal)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        process = self.start(*args)
        try:
            out, err = process.communicate(timeout=COMMAND_S)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"mlops {' '.join(args)} did not finish within {COMMAND_S:.0f}s: {out} {err}")
        assert "Traceback" not in err, err
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def apply(self) -> subprocess.CompletedProcess[str]:
        done = self.run("apply", "--allow-dirty")
        assert done.returncode == 0 and " 0 failed" in done.stdout, done.stdout + done.stderr
        return done


@pytest.fixture
def project(tmp_path: Path, make_project: Callable[..., Path]) -> Iterator[Path]:
    spec = make_project(tmp_path / "p", _spec(4), files={"data/raw.csv": "x\n1\n"}, pipeline=SLOW_PIPELINE)
    yield spec
    state_path = spec.parent / ".mlops" / "state.db"
    client.stop(state_path)
    cluster.down(state_path)


def _state(spec: Path) -> Path:
    return spec.parent / ".mlops" / "state.db"


def _transform_workers(spec: Path) -> dict[str, int]:
    """Run id -> the worker process each recorded transform ran in."""
    with opened(load_project(spec)) as (_, store):
        return {run.run_id: run.pid for run in store.list_runs(limit=1000) if run.node_id.endswith("/transform")}


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)


def test_later_applies_run_in_the_same_driver_and_workers_and_down_stops_both(project: Path, tmp_path: Path) -> None:
    user = Commands(project, tmp_path / "home")
    user.apply()
    driver = record.read(_state(project))
    local = cluster.running(_state(project))
    assert driver is not None and local is not None, "the first apply with work started no warm driver"
    first = _transform_workers(project)
    assert len(first) == 4 and driver.pid not in first.values(), first

    warm = set(cluster.members(local.pgid))  # the cluster's processes as the second apply starts
    (project.parent / "data" / "raw.csv").write_text("x\n1\n2\n")
    user.apply()
    after = record.read(_state(project))
    assert after is not None and after.pid == driver.pid, "the second apply started another driver"
    second = {run: pid for run, pid in _transform_workers(project).items() if run not in first}
    assert len(second) == 4, second
    # which of the warm workers takes a task is Ray's choice; that none was started for this apply is the point
    assert set(second.values()) <= warm, \
        f"the second apply's transforms ran in workers started for it ({second}; before it: {sorted(warm)})"

    down = user.run("down")
    assert down.returncode == 0, down.stderr
    assert record.read(_state(project)) is None and not processes.alive(driver.pid)
    assert cluster.running(_state(project)) is None and cluster.members(local.pgid) == []


def test_an_idle_driver_stops_itself_and_the_cluster(project: Path, tmp_path: Path) -> None:
    user = Commands(project, tmp_path / "home", MLOPS_IDLE_STOP="3s")
    user.apply()
    driver, local = record.read(_state(project)), cluster.running(_state(project))
    assert driver is not None and driver.idle_s == 3 and local is not None
    _wait_until(lambda: not processes.alive(driver.pid), "the idle driver's stop")
    assert record.read(_state(project)) is None
    _wait_until(lambda: cluster.members(local.pgid) == [], "the idle cluster's stop")
    assert "idle for 3s: stopped the local cluster too" in record.log_path(_state(project)).read_text()


def test_a_killed_driver_is_replaced_by_the_next_apply(project: Path, tmp_path: Path) -> None:
    user = Commands(project, tmp_path / "home")
    user.apply()
    driver = record.read(_state(project))
    assert driver is not None
    os.kill(driver.pid, signal.SIGKILL)
    _wait_until(lambda: not processes.alive(driver.pid), "the killed driver's end")

    (project.parent / "data" / "raw.csv").write_text("x\n3\n")
    user.apply()
    replacement = record.read(_state(project))
    assert replacement is not None and replacement.pid != driver.pid
    assert replacement.cluster_address == driver.cluster_address  # the cluster outlived its driver and is reused


def test_ctrl_c_interrupts_the_forwarded_apply_and_the_driver_serves_the_next(
        tmp_path: Path, make_project: Callable[..., Path]) -> None:
    spec = make_project(tmp_path / "slow", _spec(1, sleep=120), files={"data/raw.csv": "x\n1\n"},
                        pipeline=SLOW_PIPELINE)
    user = Commands(spec, tmp_path / "home")
    try:
        assert user.run("up").returncode == 0  # the apply below is forwarded from its start
        applying = user.start("apply", "--allow-dirty")
        _wait_until(lambda: any(run.status == "running" for run in _runs(spec)), "the slow task's start")
        applying.send_signal(signal.SIGINT)
        out, err = applying.communicate(timeout=COMMAND_S)
        assert applying.returncode == 130, out + err
        assert "Traceback" not in err, err
        driver = record.read(_state(spec))
        assert driver is not None, "the driver did not survive the interrupted command"
        plan = user.run("plan")
        assert plan.returncode in (0, 2) and "datasets.s0" in plan.stdout, plan.stdout + plan.stderr
        status = user.run("status")
        assert status.returncode in (0, 2), status.stderr
        assert not any(run.status == "running" for run in _runs(spec)), "the interrupted run is still recorded running"
    finally:
        client.stop(_state(spec))
        cluster.down(_state(spec))


def _runs(spec: Path) -> list:  # type: ignore[type-arg]
    with opened(load_project(spec)) as (_, store):
        return list(store.list_runs(limit=10))


def test_a_no_op_apply_a_plan_and_a_bogus_plan_file_start_nothing(project: Path, tmp_path: Path) -> None:
    user = Commands(project, tmp_path / "home")
    user.apply()
    user.run("down")
    assert record.read(_state(project)) is None and cluster.running(_state(project)) is None
    noop = user.apply()
    assert "0 succeeded" in noop.stdout, noop.stdout
    assert user.run("plan").returncode == 0
    (project.parent / "bogus.json").write_text("{}")
    bogus = user.run("apply", "bogus.json")
    assert bogus.returncode == 1 and "not a saved plan" in bogus.stderr, bogus.stderr
    assert record.read(_state(project)) is None and cluster.running(_state(project)) is None


def test_a_driver_started_under_another_environment_is_replaced(project: Path, tmp_path: Path) -> None:
    Commands(project, tmp_path / "home").apply()
    driver = record.read(_state(project))
    assert driver is not None
    (project.parent / "data" / "raw.csv").write_text("x\n4\n")
    Commands(project, tmp_path / "home", MLOPS_ACTOR="someone-else@example.com").apply()
    replacement = record.read(_state(project))
    assert replacement is not None and replacement.pid != driver.pid and not processes.alive(driver.pid)


def test_the_idle_time_is_checked() -> None:
    assert record.idle_seconds("90s") == 90 and record.idle_seconds("2h") == 7200
    assert record.idle_seconds("off") is None and record.idle_seconds("") == record.DEFAULT_IDLE_S
    with pytest.raises(ValueError, match="MLOPS_IDLE_STOP='soon' is not a duration"):
        record.idle_seconds("soon")


def test_a_driver_whose_state_folder_is_removed_stops_its_cluster(project: Path, tmp_path: Path) -> None:
    """Nobody can reach a cluster whose state folder is gone (a deleted checkout, a cleaned temporary folder):
    its driver stops it rather than leave it running for ever."""
    import shutil

    Commands(project, tmp_path / "home").apply()
    driver, local = record.read(_state(project)), cluster.running(_state(project))
    assert driver is not None and local is not None
    shutil.rmtree(project.parent / ".mlops")
    _wait_until(lambda: not processes.alive(driver.pid), "the driver's stop")
    _wait_until(lambda: cluster.members(local.pgid) == [], "the orphaned cluster's stop")
    _wait_until(lambda: not Path(local.temp_dir).exists(), "the orphaned cluster's Ray folder's removal")
