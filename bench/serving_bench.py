"""Serving latency: an mlops realtime deployment vs a bare Ray Serve deployment of the same model, and the
latency while the live route switches versions.

    python bench/serving_bench.py [--repeat 5] [--requests 300] [--switches 6]

Both answer the same JSON request with the same torch MLP (the churn example's architecture) on
one local Ray; requests alternate between the two so both see the same machine load. Reported:
the p50 of each (median over ``--repeat`` rounds) and their ratio.

Switches: a deployment of two replicas (the churn example's shape) serves version 2 of a model while a
client process posts back to back; ``--switches`` times the live route is moved (a rollback to version 1,
then to version 2, ...: each a full blue/green rollout). Reported against p99 of the same client in steady
state: p99 while the live route moves to the new version (from handing Serve the new version to its
replicas answering with it) and p99 over the whole rollout (the staging replica that proves the version
first starts a process), the longest request, and how many requests were not answered 200.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

PIPELINE = '''
import torch
from torch import nn

from runtime.context import TrainResult

FEATURES = [f"f{i}" for i in range(16)]


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))


def train(ctx):
    return TrainResult(model=make_model().state_dict(), metrics={"auc": 0.9}, signature=FEATURES)


def load_predictor(model_path, params):
    model = make_model()
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()

    def predictor(rows):
        x = torch.tensor([[float(row[f]) for f in FEATURES] for row in rows])
        with torch.no_grad():
            return torch.sigmoid(model(x)).squeeze(1).tolist()

    return predictor
'''


def _bare_app(model_path: str) -> Any:
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(name="bare-model", num_replicas=1, ray_actor_options={"num_cpus": 1})
    class Bare:
        def __init__(self, path: str) -> None:
            import importlib.util

            spec = importlib.util.spec_from_file_location("bench_pipeline", Path(path).parent / "pipeline.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.predictor = module.load_predictor(Path(path) / "model.pt", {})

        async def __call__(self, request: Request) -> dict[str, Any]:
            body = await request.json()
            return {"predictions": self.predictor(body["instances"])}

    return Bare.bind(model_path)


def _post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return (time.perf_counter() - start) * 1000


def _serve_port() -> int:
    """A free port for Serve's HTTP proxy, handed to mlops as ``MLOPS_SERVE_PORT``."""
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    os.environ["MLOPS_SERVE_PORT"] = str(port)
    return port


def _project_folder(root: Path) -> Path:
    """``root`` made a project folder: its data, the pipeline and a git marker (the spec is the caller's)."""
    (root / "data").mkdir()
    (root / "data" / "x.csv").write_text("a\n1\n")
    (root / "pipeline.py").write_text(PIPELINE)
    (root / ".git").mkdir()
    return root


def run(repeat: int, requests: int = 300) -> dict[str, Any]:
    import torch
    from ray import serve

    from compiler import load_project
    from runtime.apply.operations import apply_project
    from runtime.compute import ray_backend

    port = _serve_port()
    ray_backend.connect(None, num_cpus=2)
    with tempfile.TemporaryDirectory(prefix="mlops-serving-bench-") as name:
        root = _project_folder(Path(name))
        spec = {"apiVersion": "mlops/v1", "project": "latency", "datasets": {"x": {"path": "data/x.csv"}},
                "models": {"m": {"train": "pipeline:train", "data": {"train": "x"}}},
                "deployments": {"api": {"model": "m", "replicas": 1, "route": "/api", "resources": {"cpus": 1}}}}
        (root / "mlops.yaml").write_text(yaml.safe_dump(spec))
        outcome = apply_project(load_project(root / "mlops.yaml"))
        assert outcome.result.ok, outcome.result.outcomes
        bare_dir = root / "bare"
        bare_dir.mkdir()
        (bare_dir / "pipeline.py").write_text(PIPELINE)
        sys.path.insert(0, str(root))
        import pipeline  # type: ignore[import-not-found]

        torch.save(pipeline.make_model().state_dict(), bare_dir / "model.pt")
        serve.run(_bare_app(str(bare_dir)), name="bare", route_prefix="/bare")
        body = json.dumps({"instances": [{f"f{i}": i / 16 for i in range(16)}]}).encode()
        ours_url, bare_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}/bare"
        for _ in range(50):  # warm both
            _post(ours_url, body)
            _post(bare_url, body)
        ours, bare = [], []
        for _ in range(repeat):
            ours_round, bare_round = [], []
            for _ in range(requests):
                ours_round.append(_post(ours_url, body))
                bare_round.append(_post(bare_url, body))
            ours.append(statistics.median(ours_round))
            bare.append(statistics.median(bare_round))
        serve.delete("bare")
    ray_backend.shutdown()
    p50_ours, p50_bare = statistics.median(ours), statistics.median(bare)
    return {"requests": requests * repeat, "p50_ms": p50_ours, "bare_p50_ms": p50_bare, "ratio": p50_ours / p50_bare,
            "target_ratio": 1.2}


def _poll(url: str, body: bytes, stop: Any, out: str) -> None:
    """Post back to back until ``stop`` is set; write (start, latency ms, status) of each request to ``out`` as
    JSON. Runs in a process of its own, as a client would (the driver's polling does not share its GIL)."""
    import urllib.error

    log: list[tuple[float, float, int]] = []
    while not stop.is_set():
        start = time.perf_counter()
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = 0
        log.append((start, (time.perf_counter() - start) * 1000, status))
    Path(out).write_text(json.dumps(log))


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def switch(switches: int, steady_s: float = 10.0) -> dict[str, Any]:
    """Move the live route between two versions ``switches`` times under a back-to-back client."""
    import multiprocessing

    from compiler import load_project
    from runtime.apply.operations import apply_project, rollback
    from runtime.compute import ray_backend, serving

    port = _serve_port()
    ray_backend.connect(None, num_cpus=4)
    with tempfile.TemporaryDirectory(prefix="mlops-switch-bench-") as name:
        root = _project_folder(Path(name))
        for seed in (1, 2):  # two versions
            spec = {"apiVersion": "mlops/v1", "project": "switch", "datasets": {"x": {"path": "data/x.csv"}},
                    "models": {"m": {"train": "pipeline:train", "data": {"train": "x"}, "seed": seed}},
                    "deployments": {"api": {"model": "m", "replicas": 2, "route": "/api",
                                            "resources": {"cpus": 0.5}}}}
            (root / "mlops.yaml").write_text(yaml.safe_dump(spec))
            outcome = apply_project(load_project(root / "mlops.yaml"))
            assert outcome.result.ok, outcome.result.outcomes
        project = load_project(root / "mlops.yaml")
        body = json.dumps({"instances": [{f"f{i}": i / 16 for i in range(16)}]}).encode()
        url = f"http://127.0.0.1:{port}/api"
        for _ in range(50):
            _post(url, body)
        spawn = multiprocessing.get_context("spawn")
        stop = spawn.Event()
        out = str(root / "client.json")
        client = spawn.Process(target=_poll, args=(url, body, stop, out), daemon=True)
        client.start()
        time.sleep(3.0)  # the client process starts
        time.sleep(steady_s)
        steady_end = time.perf_counter()
        moves: list[tuple[float, float]] = []
        run_app, wait_running = serving._run, serving._wait_running

        def timed_run(application: Any, name: str, route: str) -> None:  # the live route's moves, timed
            if not name.endswith(serving.STAGING_SUFFIX):
                moves.append((time.perf_counter(), math.inf))
            run_app(application, name, route)

        def timed_wait(name: str, version: int, timeout: float) -> None:
            wait_running(name, version, timeout)
            if not name.endswith(serving.STAGING_SUFFIX):
                moves[-1] = (moves[-1][0], time.perf_counter())

        serving._run, serving._wait_running = timed_run, timed_wait
        windows, took = [], []
        for index in range(switches):
            started = time.perf_counter()
            rollback(project, "api", to=1 if index % 2 == 0 else 2, reason="benchmark switch")
            windows.append((started, time.perf_counter()))
            took.append(windows[-1][1] - started)
            time.sleep(1.0)
        stop.set()
        client.join(60)
        serving._run, serving._wait_running = run_app, wait_running
        log = [(float(a), float(b), int(c)) for a, b, c in json.loads(Path(out).read_text())]
    ray_backend.shutdown()
    steady = [latency for start, latency, _ in log if start < steady_end]
    during = [latency for start, latency, _ in log if any(a <= start <= b for a, b in windows)]
    moving = [latency for start, latency, _ in log if any(a <= start <= b for a, b in moves)]
    failed = sum(1 for start, _, status in log if status != 200 and start >= steady_end)
    return {"switches": switches, "steady_requests": len(steady), "switch_requests": len(during),
            "move_requests": len(moving), "steady_p99_ms": _p99(steady), "switch_p99_ms": _p99(during),
            "move_p99_ms": _p99(moving), "switch_max_ms": max(during), "steady_max_ms": max(steady),
            "failed": failed, "switch_seconds": statistics.median(took),
            "move_seconds": statistics.median(b - a for a, b in moves), "ratio": _p99(moving) / _p99(steady),
            "rollout_ratio": _p99(during) / _p99(steady), "target_ratio": 2.0}


def switch_markdown(results: dict[str, Any]) -> str:
    def met(ratio: float) -> str:
        return "yes" if ratio <= results["target_ratio"] else "NO"

    return "\n".join([
        "| measurement | steady | during | ratio | target | met |", "|---|---|---|---|---|---|",
        f"| p99 while the live route moves to the new version ({results['switches']} switches of 2 replicas, "
        f"{results['steady_requests']:,} steady / {results['move_requests']:,} moving requests) | "
        f"{results['steady_p99_ms']:.1f} ms | {results['move_p99_ms']:.1f} ms | {results['ratio']:.2f}× | ≤ 2× | "
        f"{met(results['ratio'])} |",
        f"| p99 over the whole rollout, the staging replica's start included ({results['switch_requests']:,} "
        f"requests) | {results['steady_p99_ms']:.1f} ms | {results['switch_p99_ms']:.1f} ms | "
        f"{results['rollout_ratio']:.2f}× | ≤ 2× | {met(results['rollout_ratio'])} |",
        f"| longest request | {results['steady_max_ms']:.1f} ms | {results['switch_max_ms']:.1f} ms | | | |",
        f"| requests not answered 200 | | {results['failed']} | | 0 | {'yes' if results['failed'] == 0 else 'NO'} |",
        f"| time: the live route's move / the whole rollout | | {results['move_seconds']:.2f} s / "
        f"{results['switch_seconds']:.1f} s | | | |",
    ]) + "\n"


def markdown(results: dict[str, Any]) -> str:
    ok = "yes" if results["ratio"] <= results["target_ratio"] else "NO"
    return "\n".join([
        "| measurement | median | target | met |", "|---|---|---|---|",
        f"| p50 latency, mlops realtime deployment vs bare Ray Serve ({results['requests']:,} requests each) | "
        f"{results['p50_ms']:.2f} ms vs {results['bare_p50_ms']:.2f} ms = {results['ratio']:.2f}× | ≤ 1.2× | {ok} |",
    ]) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--switches", type=int, default=6, help="0: skip the switch measurement")
    args = parser.parse_args()
    print(markdown(run(args.repeat, args.requests)))
    if args.switches:
        print(switch_markdown(switch(args.switches)))
