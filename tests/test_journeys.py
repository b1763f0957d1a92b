"""The everyday journeys of a new user, end to end through the CLI on this machine's CPUs.

Each journey is what a person does: the README's command 1 (or ``mlops init``), then a change applied
while a client keeps asking the endpoint (no request may fail), a rollback (polled the same way), a
monitor run, ``status`` and ``down``. Every step runs as a fresh ``mlops`` process under a deadline, so
a hang fails the test instead of stalling it. The local cluster is the one ``mlops apply`` starts by
itself, with its default settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pygit2
import pytest
from ports import free_port

from runtime import processes
from runtime.compute import cluster
from runtime.daemon import client, record

ROOT = Path(__file__).resolve().parents[1]
APPLY_S = 420
"""The deadline of one apply: a first apply here takes about 20-40 s, a change about 20 s."""
STEP_S = 180
"""The deadline of a rollback, a monitor run, status, up or down."""
EXAMPLE_SPEC = "examples/churn/mlops.yaml"



class User:
    """Runs ``mlops`` as a person would, in one project, each command under a deadline."""

    def __init__(self, cwd: Path, home: Path, spec: str | None = None) -> None:
        self.cwd = cwd
        self.spec = ["-f", spec] if spec else []
        self.env = {"PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                    "HOME": str(home), "MLOPS_SERVE_PORT": str(free_port()), "COLUMNS": "300",
                    "MLOPS_ACTOR": "journey@example.com"}
        self.steps: dict[str, float] = {}

    def run(self, step: str, *args: str, timeout: float = STEP_S, ok: bool = True) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        try:
            result = subprocess.run([sys.executable, "-m", "runtime.cli.main", *self.spec, *args], cwd=self.cwd,
                                    capture_output=True, text=True, timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired as expired:
            pytest.fail(f"step '{step}' (mlops {' '.join(args)}) did not finish within {timeout:.0f}s; "
                        f"its output: {expired.stdout!r} {expired.stderr!r}")
        self.steps[step] = time.monotonic() - started
        if ok:
            assert result.returncode == 0, f"{step}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def url(self, deployment: str) -> str:
        """The deployment's URL as ``mlops status`` prints it."""
        status = self.run("status", "status")
        line = next(line for line in status.stdout.splitlines() if f"deployments.{deployment} " in line)
        found = re.search(r" at (http://\S+)", line)
        assert found, f"status gives no URL for deployments.{deployment}: {line}"
        return found.group(1)

    def state_path(self, spec: str) -> Path:
        return self.cwd / Path(spec).parent / ".mlops" / "state.db"


class Client:
    """Keeps asking an endpoint from a thread; counts answers by version and every failed request."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.url, self.body = url, json.dumps(body).encode()
        self.versions: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def ask(self) -> dict[str, Any]:
        request = urllib.request.Request(self.url, data=self.body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.versions[int(self.ask()["version"])] += 1
            except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
            time.sleep(0.05)

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _commit_all(repo: Path, message: str) -> None:
    repository = pygit2.Repository(str(repo))
    index = repository.index
    index.add_all()
    index.write()
    signature = pygit2.Signature("Journey", "journey@example.com")
    parents = [] if repository.head_is_unborn else [repository.head.target]
    repository.create_commit("HEAD", signature, signature, message, index.write_tree(), parents)


def _set_param(spec: Path, old: str, new: str) -> None:
    text = spec.read_text()
    assert old in text, f"{old!r} not in {spec}"
    spec.write_text(text.replace(old, new, 1))


def _down_and_check(user: User, state_path: Path, url: str) -> None:
    """``mlops down`` stops every process of the local cluster and the endpoint stops answering."""
    local = cluster.running(state_path)
    assert local is not None, "no local cluster is running before `mlops down`"
    driver = record.read(state_path)
    assert driver is not None, "no warm driver ran the applies (it is on by default)"
    user.run("down", "down")
    assert cluster.members(local.pgid) == [], "processes of the local cluster outlived `mlops down`"
    assert record.read(state_path) is None and not processes.alive(driver.pid), "the warm driver outlived `mlops down`"
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=5)


@pytest.fixture
def stop_clusters() -> Any:
    """Whatever a journey leaves running is stopped, even when it fails midway."""
    started: list[Path] = []
    yield started
    for state_path in started:
        client.stop(state_path)
        local = cluster.running(state_path)
        if local is not None:
            cluster.down(state_path)



def _walk_change_rollback_monitor(user: User, spec: str, deployment: str, body: dict[str, Any],
                                  old: str, new: str) -> tuple[str, Client, Client]:
    """Change a param and apply while a client asks, roll back while it asks, run the monitors."""
    url = user.url(deployment)
    with Client(url, body) as client:
        assert client.ask()["version"] == 1
        _set_param(user.cwd / spec, old, new)
        _commit_all(user.cwd, "a change after the first deploy")
        changed = user.run("apply after a change", "apply", timeout=APPLY_S)
        assert " 0 failed" in changed.stdout, changed.stdout
        time.sleep(1)
    assert client.failures == [], f"requests failed during the change's apply: {client.failures[:5]}"
    assert client.versions[1] > 0 and client.versions[2] > 0, client.versions
    assert Client(url, body).ask()["version"] == 2

    with Client(url, body) as rolling_back:
        back = user.run("rollback", "rollback", deployment)
        assert "now serves version 1 (was 2)" in back.stdout, back.stdout
        time.sleep(1)
    assert rolling_back.failures == [], f"requests failed during the rollback: {rolling_back.failures[:5]}"
    assert Client(url, body).ask()["version"] == 1

    monitored = user.run("monitor run", "monitor", "run")
    assert "ERROR" not in monitored.stdout and "error:" not in monitored.stderr, monitored.stdout
    status = user.run("status", "status")
    line = next(line for line in status.stdout.splitlines() if f"deployments.{deployment} " in line)
    assert "version 1" in line and f"at {url}" in line and "Healthy" in line, line
    return url, client, rolling_back


def test_the_readme_example_applies_changes_rolls_back_and_stops_on_two_cpus(
        tmp_path: Path, stop_clusters: list[Path]) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples" / "churn", repo / "examples" / "churn",
                    ignore=shutil.ignore_patterns(".mlops", "__pycache__"))
    shutil.copy(ROOT / "examples" / "__init__.py", repo / "examples" / "__init__.py")
    (repo / ".gitignore").write_text(".mlops/\n__pycache__/\n")
    pygit2.init_repository(str(repo), initial_head="main")
    _commit_all(repo, "the example")
    user = User(repo, tmp_path / "home", EXAMPLE_SPEC)
    stop_clusters.append(user.state_path(EXAMPLE_SPEC))

    user.run("plan", "plan")
    first = user.run("first apply", "apply", timeout=APPLY_S)
    assert "0 failed" in first.stdout and "serving deployments.churn-api/deploy" in first.stdout, first.stdout
    assert "No changes" in user.run("plan again", "plan").stdout
    user.run("apply again", "apply")  # nothing to do, and the warm driver is up: it runs there too
    ran = re.findall(r"apply in .*: exit 0", record.log_path(user.state_path(EXAMPLE_SPEC)).read_text())
    assert len(ran) == 2, f"the second apply did not run in the warm driver: {ran}"

    sys.path.insert(0, str(repo))
    try:
        from examples.churn.pipeline import FEATURE_NAMES
    finally:
        sys.path.remove(str(repo))
    body = {"instances": [{name: 0.5 for name in FEATURE_NAMES}]}
    local = cluster.running(user.state_path(EXAMPLE_SPEC))
    assert local is not None and local.num_cpus == (os.cpu_count() or 1) + 3  # 2 replicas + a rollout's extra one
    url, _, _ = _walk_change_rollback_monitor(user, EXAMPLE_SPEC, "churn-api", body,
                                              "params: {lr: 0.01,", "params: {lr: 0.02,")
    _down_and_check(user, user.state_path(EXAMPLE_SPEC), url)
    print("journey step times (s):", json.dumps({k: round(v, 1) for k, v in user.steps.items()}))


def test_the_init_starter_serves_changes_rolls_back_monitors_and_stops_on_two_cpus(
        tmp_path: Path, stop_clusters: list[Path]) -> None:
    project = tmp_path / "churnstart"
    user = User(project, tmp_path / "home")
    project.mkdir()
    user.run("init", "init", ".")
    _commit_all(project, "mlops init")
    stop_clusters.append(user.state_path("mlops.yaml"))
    readme = (project / "README.md").read_text()
    shape = re.search(r"-d '(\{\"instances\".*?\})'", readme)
    assert shape, "the starter's README documents no request"
    body = json.loads(shape.group(1))

    user.run("validate", "validate")
    user.run("plan", "plan")
    first = user.run("first apply", "apply", timeout=APPLY_S)
    assert "0 failed" in first.stdout and "serving deployments.churn-api/deploy" in first.stdout, first.stdout
    answer = Client(user.url("churn-api"), body).ask()
    assert answer["version"] == 1 and len(answer["predictions"]) == 1 and 0 <= answer["predictions"][0] <= 1

    url, client, _ = _walk_change_rollback_monitor(user, "mlops.yaml", "churn-api", body,
                                                   "lr: 0.05", "lr: 0.1")
    history = user.run("monitor history", "monitor", "history", "churn-drift")
    assert "error" not in history.stdout, history.stdout
    _down_and_check(user, user.state_path("mlops.yaml"), url)
    print("journey step times (s):", json.dumps({k: round(v, 1) for k, v in user.steps.items()}))
