"""End to end, as a user runs it: ``mlops reconcile --watch --repo ORIGIN`` follows a real git repository,
on the persistent local Ray cluster, serving over real HTTP.

``mlops up`` starts the cluster and ``mlops apply`` serves a first version that outlives it; the watching
reconciler joins the cluster and finds nothing to do. A commit changes a param -> it retrains, the gate
passes, the new version serves; then drifted traffic -> the monitor breaches on its next run -> retrain
request -> the next tick retrains (plan reason ``monitor breach: monitors.drift``) and serves the new version.
SIGTERM ends the loop (exit 0) and the deployment keeps serving; ``mlops down`` leaves no process behind.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import GitRemote
from ports import free_port

from runtime.compute import cluster
from runtime.reconcile.source import sync_checkout

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 110.0

PIPELINE = '''
import torch

from runtime.context import TrainResult


def train(ctx):
    return TrainResult(model={"w": torch.tensor(float(ctx.params["w"]))}, metrics={"auc": 0.9})


def load_predictor(model_path, params):
    w = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [w * float(row["x"]) for row in rows]
'''

RNG = random.Random(11)
XS = [round(RNG.gauss(0.0, 1.0), 4) for _ in range(200)]


def spec(w: float) -> str:
    return yaml.safe_dump({
        "apiVersion": "mlops/v1", "project": "gitops",
        "datasets": {"raw": {"path": "data/raw.csv"}},
        "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}, "params": {"w": w}}},
        "gates": {"quality": {"model": "m", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]}},
        "deployments": {"api": {"model": "m", "gates": ["quality"], "replicas": 1, "route": "/api",
                                "resources": {"cpus": 0.5}}},
        "monitors": {"drift": {"deployment": "api", "reference": "raw", "schedule": "1s", "on_breach": ["retrain"],
                               "checks": [{"type": "data_drift", "method": "psi", "threshold": 0.2,
                                           "columns": ["x"]}]}},
    }, sort_keys=False)



class Watcher:
    """``mlops --json reconcile --watch`` as a subprocess; its JSON tick lines collected from a thread."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.ticks: list[dict[str, Any]] = []
        self.log = log
        self._stderr = log.open("w")
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=self._stderr,
                                        text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.ticks.append(json.loads(line))

    def tail(self) -> str:
        return self.log.read_text()[-4000:]

    def until(self, what: str, condition: Callable[[], Any], deadline: float) -> Any:
        """Poll ``condition`` until it returns something truthy; fail naming ``what`` at the deadline."""
        while time.time() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the reconciler exited ({self.process.returncode}) waiting for {what}:\n{self.tail()}")
            value = condition()
            if value:
                return value
            time.sleep(0.25)
        pytest.fail(f"timed out waiting for {what}; ticks: {self.ticks[-3:]}\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        self._stderr.close()
        return code


def ask(port: int, rows: list[dict[str, float]]) -> dict[str, Any] | None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api", data=json.dumps({"instances": rows}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def serving(port: int, version: int) -> Callable[[], dict[str, Any] | None]:
    """A condition: the deployment answers, from ``version``, on rows like the reference (no drift)."""
    def check() -> dict[str, Any] | None:
        answer = ask(port, [{"x": x} for x in XS])
        return answer if answer is not None and answer.get("version") == version else None
    return check


def metric(port: int, name: str, **labels: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if match and match.group(1) == name:
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(3))
    return None



def mlops(*args: str, env: dict[str, str], cwd: Path) -> Any:
    """Run the CLI with ``--json``; its parsed output (a failed command fails the test)."""
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "--json", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mlops {' '.join(args)}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def test_a_commit_retrains_and_serves_then_drift_breaches_and_retrains(tmp_path: Path, serve_port: int) -> None:
    started = time.time()
    deadline = started + BUDGET_S
    remote = GitRemote(tmp_path)
    data = "x\n" + "".join(f"{x}\n" for x in XS)
    first = remote.commit({"mlops.yaml": spec(2.0), "pipeline.py": PIPELINE, "data/raw.csv": data,
                           ".gitignore": ".mlops/\n"}, "a model and its deployment")
    checkout = tmp_path / "checkout"
    spec_file = str(checkout / "mlops.yaml")
    state_path = checkout / ".mlops" / "state.db"
    metrics_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLOPS_SERVE_PORT": str(serve_port)}
    assert sync_checkout(str(remote.origin), "main", checkout) == first  # the clone the reconciler will follow

    # `mlops up`, then `mlops apply` in a process of its own: the deployment outlives it.
    up = mlops("-f", spec_file, "up", "--num-cpus", "2", env=env, cwd=tmp_path)
    local = cluster.running(state_path)
    assert local is not None, up
    watcher = None
    try:
        assert up["started"] is True and local.serve_port == serve_port
        applied = mlops("-f", spec_file, "apply", env=env, cwd=tmp_path)
        assert applied["ok"] is True
        answer = serving(serve_port, 1)()  # rows like the reference: the monitor must see no drift yet
        assert answer is not None and answer["predictions"] == pytest.approx([2.0 * x for x in XS])

        # The reconciler joins that cluster; its first tick finds nothing to do.
        watcher = Watcher([sys.executable, "-m", "runtime.cli.main", "--json", "reconcile", "--watch", "--interval",
                           "1s", "--repo", str(remote.origin), "--branch", "main", "--checkout", str(checkout),
                           "--metrics-port", str(metrics_port)], tmp_path, env, tmp_path / "reconcile.log")
        tick = watcher.until("the first tick", lambda: watcher.ticks[:1], deadline)[0]
        assert tick["ok"] and tick["commit"] == first and tick["applied"] is None and tick["changes"] == {}, tick

        # A commit changes a param: retrained, gated, rolled out.
        second = remote.commit({"mlops.yaml": spec(3.0)}, "w: 3")
        answer = watcher.until("version 2 to serve", serving(serve_port, 2), deadline)
        assert answer["predictions"] == pytest.approx([3.0 * x for x in XS])
        retrained = watcher.until("the tick that retrained", lambda: next(
            (t for t in watcher.ticks if t["commit"] == second and t["applied"]), None), deadline)
        assert "params.w: 2.0 -> 3.0" in retrained["changes"]["models.m"]["reasons"]
        assert retrained["applied"]["outcomes"]["gates.quality/check"]["status"] == "succeeded"
        assert retrained["applied"]["outcomes"]["deployments.api/deploy"]["status"] == "succeeded"

        # Drifted traffic (x shifted by 6): the monitor's next run breaches and asks for a retrain ...
        seen = len(watcher.ticks)
        for start in range(0, len(XS), 8):  # 25 requests: a drift window judges 20 or more
            drifted = ask(serve_port, [{"x": x + 6.0} for x in XS[start:start + 8]])
            assert drifted is not None and drifted["version"] == 2
        time.sleep(1.1)  # the replica flushes its inference log at a write once a second has passed
        assert ask(serve_port, [{"x": 6.0}]) is not None

        def breached() -> dict[str, Any] | None:
            return next((t for t in watcher.ticks[seen:] for m in t["monitors"]
                         if m["monitor"] == "drift" and m["breached"]), None)

        breach = watcher.until("the drift monitor to breach", breached, deadline)
        assert any(a.startswith("retrain: requested models.m") for m in breach["monitors"] for a in m["actions"])
        assert breach["requeue"] is True

        # ... and the next tick retrains for that reason; the new version passes the gate and serves.
        watcher.until("version 3 to serve", serving(serve_port, 3), deadline)
        retrain = watcher.until("the tick that retrained", lambda: next(
            (t for t in watcher.ticks[seen:] if t["applied"] and "models.m" in t["changes"]), None), deadline)
        assert retrain["changes"]["models.m"]["action"] == "replace"
        assert retrain["changes"]["models.m"]["reasons"] == ["monitor breach: monitors.drift"]
        assert retrain["applied"]["outcomes"]["gates.quality/check"]["status"] == "succeeded"

        # The Prometheus endpoint saw all of it.
        assert (metric(metrics_port, "mlops_gate_decisions_total", project="gitops", gate="quality",
                       status="passed") or 0) >= 2
        assert (metric(metrics_port, "mlops_monitor_runs_total", project="gitops", monitor="drift",
                       result="breached") or 0) >= 1
        assert metric(metrics_port, "mlops_synced_commit_info", project="gitops", commit=second,
                      repo=str(remote.origin), branch="main") == 1.0

        # SIGTERM ends the loop; the deployment keeps serving; status shows the last synced commit.
        assert watcher.stop() == 0, watcher.tail()
        answer = ask(serve_port, [{"x": 1.0}])
        assert answer is not None and answer["version"] == 3 and answer["predictions"] == [3.0]
        status = mlops("-f", spec_file, "status", env=env, cwd=tmp_path)
        assert status["reconciler"]["commit"] == second and status["reconciler"]["errors"] == 0
    finally:
        if watcher is not None:
            watcher.stop()
        down = subprocess.run([sys.executable, "-m", "runtime.cli.main", "--json", "-f", spec_file, "down"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] is True, down.stderr[-3000:]
    assert cluster.members(local.pgid) == []  # no raylet, GCS, Serve proxy or replica left
    assert ask(serve_port, [{"x": 1.0}]) is None
    assert time.time() - started < 120
