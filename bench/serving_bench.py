"""Serving latency: an mlops realtime deployment vs a bare Ray Serve deployment of the same model.

    python bench/serving_bench.py [--repeat 5] [--requests 300]

Both answer the same JSON request with the same torch MLP (the churn example's architecture) on
one local Ray; requests alternate between the two so both see the same machine load. Reported:
the p50 of each (median over ``--repeat`` rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import json
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
    return TrainResult(model=make_model().state_dict(), metrics={"auc": 0.9})


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


def run(repeat: int, requests: int = 300) -> dict[str, Any]:
    import os
    import socket

    import torch
    from ray import serve

    from compiler import load_project
    from runtime import ray_backend
    from runtime.operations import apply_project

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["MLOPS_SERVE_PORT"] = str(port)
    ray_backend.connect(None, num_cpus=2)
    with tempfile.TemporaryDirectory(prefix="mlops-serving-bench-") as name:
        root = Path(name)
        (root / "data").mkdir()
        (root / "data" / "x.csv").write_text("a\n1\n")
        (root / "pipeline.py").write_text(PIPELINE)
        (root / ".git").mkdir()
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
    args = parser.parse_args()
    print(markdown(run(args.repeat, args.requests)))
