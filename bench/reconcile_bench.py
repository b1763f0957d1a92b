"""The GitOps loop's steady state: how long a reconcile tick takes when there is nothing to do (target ≤ 1 s).

    python bench/reconcile_bench.py [--repeat 10] [--json OUT]

A project with a dataset, a model, a gate, a realtime deployment on Ray Serve and a monitor is pushed to
a local bare git repository and reconciled once (trained, gated, served) by a reconciler that joins a
persistent local cluster (``mlops up``). Then, on that same reconciler (one Ray connection for its
life), ticks with nothing to do are timed:

* ``git`` — ``--repo``: fetch the branch, hard-reset the clone, compile with policies, plan against the
  state and Ray Serve's live state, check the monitors' schedule, record the status;
* ``disk`` — the same spec read from disk (no fetch).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

TARGET_S = 1.0
PIPELINE = '''
import torch

from runtime.context import TrainResult


def train(ctx):
    return TrainResult(model={"w": torch.tensor(float(ctx.params["w"]))}, metrics={"auc": 0.9})


def load_predictor(model_path, params):
    w = float(torch.load(model_path, weights_only=True)["w"])
    return lambda rows: [w * float(row["x"]) for row in rows]
'''


def _spec() -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1", "project": "tickbench", "owners": ["team:bench"],
        "datasets": {"raw": {"path": "data/raw.csv"}},
        "models": {"m": {"train": "pipeline:train", "data": {"train": "raw"}, "params": {"w": 2.0}}},
        "gates": {"quality": {"model": "m", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]}},
        "deployments": {"tickbench": {"model": "m", "gates": ["quality"], "replicas": 1, "route": "/tickbench",
                                      "resources": {"cpus": 0.5}}},
        "monitors": {"drift": {"deployment": "tickbench", "reference": "raw", "schedule": "1h",
                               "checks": [{"type": "data_drift", "method": "psi", "columns": ["x"]}]}},
    }


def _origin(root: Path) -> Path:
    import pygit2

    origin = root / "origin.git"
    pygit2.init_repository(str(origin), bare=True, initial_head="main")
    work = root / "work"
    repo = pygit2.init_repository(str(work), initial_head="main", origin_url=str(origin))
    rng = random.Random(3)
    files = {"mlops.yaml": yaml.safe_dump(_spec(), sort_keys=False), "pipeline.py": PIPELINE,
             "data/raw.csv": "x\n" + "".join(f"{rng.gauss(0, 1):.4f}\n" for _ in range(1000)),
             ".gitignore": ".mlops/\n"}
    for relative, text in files.items():
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        (work / relative).write_text(text)
    repo.index.add_all()
    repo.index.write()
    signature = pygit2.Signature("bench", "bench@example.com")
    repo.create_commit("refs/heads/main", signature, signature, "bench", repo.index.write_tree(), [])
    repo.remotes["origin"].push(["refs/heads/main"])
    return origin


def _noop_ticks(reconciler: Any, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = reconciler.tick()
        times.append(time.perf_counter() - start)
        assert result.ok and result.applied is None, result.error or result.to_json()
    return times


def run(repeat: int) -> dict[str, Any]:
    from runtime.compute import cluster, ray_backend
    from runtime.reconcile.loop import Reconciler, Source

    repeat = max(repeat, 5)
    with tempfile.TemporaryDirectory(prefix="mlops-reconcile-bench-") as name:
        tmp = Path(name)
        origin = _origin(tmp)
        checkout = tmp / "checkout"
        state_path = checkout / ".mlops" / "state.db"
        git = Reconciler(Source(Path("mlops.yaml"), str(origin), "main", checkout))
        try:
            start = time.perf_counter()
            first = git.tick()  # starts the local cluster, joins it, trains, gates, serves
            first_s = time.perf_counter() - start
            assert first.ok and first.applied is not None and first.applied.result.ok, first.error
            git.tick()  # warm: the monitor's first scheduled run
            git_times = _noop_ticks(git, repeat)
            disk = Reconciler(Source(checkout / "mlops.yaml"))
            disk_times = _noop_ticks(disk, repeat)
        finally:
            ray_backend.shutdown()
            cluster.down(state_path)
    return {"first_tick_s": first_s, "git_noop_tick_s": statistics.median(git_times),
            "git_noop_tick_max_s": max(git_times), "disk_noop_tick_s": statistics.median(disk_times),
            "ticks": repeat, "target_s": TARGET_S}


def markdown(results: dict[str, Any]) -> str:
    r = results
    met = "yes" if r["git_noop_tick_s"] <= r["target_s"] else "NO"
    rows = [
        "| measurement | median | target | met |", "|---|---|---|---|",
        f"| no-op reconcile tick, `--repo` (fetch, reset, compile, plan with Serve's live state, "
        f"monitor schedule, status), {r['ticks']} ticks | {r['git_noop_tick_s']:.3f} s "
        f"(max {r['git_noop_tick_max_s']:.3f} s) | ≤ {r['target_s']:.0f} s | {met} |",
        f"| no-op reconcile tick, spec on disk | {r['disk_noop_tick_s']:.3f} s | | |",
        f"| first tick: start the local cluster, train, gate, serve | {r['first_tick_s']:.1f} s | | |",
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    from bench.cli import main

    main(__doc__, run, markdown, repeat=10)
