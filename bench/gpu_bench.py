"""GPU benchmark: the churn example's model trained through ``mlops apply`` with ``gpus: 1``.

    python bench/gpu_bench.py [--seconds 60] [--json OUT]      (bench/gpu.sh runs it on the device)

A project is made in a temporary git repository from the churn example (its data, its transform,
its MLP); the trainer trains that MLP for ``--seconds`` of wall time and reports the time spent
inside itself. Measured with ``mlops apply`` as a fresh process each time, after a first apply has
built the features (so the measured applies retrain only):

* ``warm`` — the local cluster and the warm driver are up (``mlops up``): apply runs in the driver
  (``runtime/daemon``), whose Ray workers already run;
* ``cold`` — nothing runs (``mlops down``): apply starts the local cluster and the warm driver itself;
* ``resident`` — apply called in one long-lived process joined to the cluster, as the reconciler
  does each tick, after an earlier apply started its workers (no process, Ray or worker start-up).

For each: apply's wall time, the time inside the training function, their ratio (target ≥ 0.9 for
a 60-second training), and the device the run recorded (``cuda`` on a GPU). Without CUDA it runs
the same on the CPU with ``gpus: 0``, so the script can be checked anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pygit2
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHURN = ROOT / "examples" / "churn"

TRAINER = '''
"""Trains the churn example's MLP for a fixed wall time; reports the time spent in here."""

import time

import torch

from churn_pipeline import _fit, auc, load_features, make_model, predict
from runtime.context import RunContext, TrainResult


def train(ctx: RunContext) -> TrainResult:
    entered = time.perf_counter()
    ctx.seed_everything()
    x_train, y_train = load_features(ctx.input("train"), "train")
    x_valid, y_valid = load_features(ctx.input("train"), "valid")
    model = make_model(x_train.shape[1], int(ctx.params["hidden"])).to(ctx.device)
    if ctx.device == "cuda":
        ctx.logger.info("training on %s", torch.cuda.get_device_name(0))
    budget = float(ctx.params["seconds"])
    rounds = 0
    while time.perf_counter() - entered < budget:
        loss = _fit(ctx, model, x_train, y_train, x_valid, y_valid)
        rounds += 1
    if ctx.device == "cuda":
        torch.cuda.synchronize()
    metrics = {"auc": auc(y_valid, predict(model, x_valid, ctx.device)), "loss": loss, "rounds": float(rounds)}
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    metrics["inside_s"] = time.perf_counter() - entered
    return TrainResult(model=state, metrics=metrics)
'''


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _spec(seconds: float, round_no: int, gpus: int) -> dict[str, Any]:
    churn = yaml.safe_load((CHURN / "mlops.yaml").read_text())
    features = {**churn["datasets"]["features"], "transform": "churn_pipeline:build_features"}
    return {
        "apiVersion": "mlops/v1", "project": "gpu-bench", "owners": ["team:bench"],
        "storage": {"artifacts": ".mlops/artifacts", "state": ".mlops/state.db"},
        "datasets": {"transactions": churn["datasets"]["transactions"], "features": features},
        "models": {"churn": {"train": "gpu_train:train", "data": {"train": "features"},
                             "params": {"seconds": seconds, "round": round_no, "hidden": 64, "epochs": 5,
                                        "batch_size": 256, "lr": 0.01},
                             "resources": {"cpus": 1, "gpus": gpus}, "timeout": "30m", "retries": 0,
                             "description": "churn MLP trained for a fixed wall time"}},
    }


def _project(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    shutil.copy(CHURN / "data" / "transactions.csv", root / "data" / "transactions.csv")
    shutil.copy(CHURN / "pipeline.py", root / "churn_pipeline.py")
    (root / "gpu_train.py").write_text(TRAINER)
    (root / ".gitignore").write_text(".mlops/\n__pycache__/\n")
    pygit2.init_repository(str(root))
    return root / "mlops.yaml"


def _commit(root: Path, message: str) -> None:
    """Commit the whole tree with pygit2 (the device machine need not have a git binary)."""
    repo = pygit2.Repository(str(root))
    repo.index.add_all()
    repo.index.write()
    author = pygit2.Signature("bench", "bench@example.invalid")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    repo.create_commit("HEAD", author, author, message, repo.index.write_tree(), parents)


def _mlops(spec: Path, *args: str) -> float:
    """Run one ``mlops`` command as its own process; its wall time."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLOPS_IDLE_STOP"},  # the default: warm driver on
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec), *args], env=env,
                          capture_output=True, text=True, timeout=3600, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"mlops {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall


def _last_training(root: Path) -> dict[str, Any]:
    with sqlite3.connect(root / ".mlops" / "state.db") as conn:
        device, metrics = conn.execute(
            "SELECT device, metrics FROM runs WHERE kind = 'trial' AND status = 'succeeded'"
            " ORDER BY started_at DESC LIMIT 1").fetchone()
    return {"device": device, **json.loads(metrics)}


def _measure(root: Path, spec: Path, seconds: float, round_no: int, gpus: int) -> dict[str, Any]:
    spec.write_text(yaml.safe_dump(_spec(seconds, round_no, gpus), sort_keys=False))
    _commit(root, f"round {round_no}")
    wall = _mlops(spec, "apply")
    trained = _last_training(root)
    return {"apply_s": wall, "inside_s": trained["inside_s"], "share": trained["inside_s"] / wall,
            "device": trained["device"], "rounds": trained["rounds"]}


def _resident(root: Path, spec: Path, seconds: float, round_no: int, gpus: int) -> dict[str, Any]:
    """Apply in this process, as the reconciler does, after an apply that started its workers."""
    from compiler import load_project
    from runtime.apply.operations import apply_project

    spec.write_text(yaml.safe_dump(_spec(1.0, round_no, gpus), sort_keys=False))
    _commit(root, f"round {round_no}")
    assert apply_project(load_project(spec)).result.ok
    spec.write_text(yaml.safe_dump(_spec(seconds, round_no + 1, gpus), sort_keys=False))
    _commit(root, f"round {round_no + 1}")
    start = time.perf_counter()
    assert apply_project(load_project(spec)).result.ok
    wall = time.perf_counter() - start
    trained = _last_training(root)
    return {"apply_s": wall, "inside_s": trained["inside_s"], "share": trained["inside_s"] / wall,
            "device": trained["device"], "rounds": trained["rounds"]}


def run(seconds: float) -> dict[str, Any]:
    gpus = 1 if _cuda() else 0
    with tempfile.TemporaryDirectory(prefix="mlops-gpu-bench-") as name:
        root = Path(name) / "project"
        spec = _project(root)
        spec.write_text(yaml.safe_dump(_spec(1.0, 0, gpus), sort_keys=False))
        _commit(root, "first")
        up_s = _mlops(spec, "up")
        try:
            _mlops(spec, "apply")  # snapshot, features and a 1-second training: the measured applies retrain only
            warm = _measure(root, spec, seconds, 1, gpus)
            resident = _resident(root, spec, seconds, 2, gpus)
        finally:
            from runtime.compute import ray_backend

            ray_backend.shutdown()
            _mlops(spec, "down")
        cold = _measure(root, spec, seconds, 4, gpus)
    gpu_name = None
    if gpus:
        import torch

        gpu_name = torch.cuda.get_device_name(0)
    return {"seconds": seconds, "gpus": gpus, "gpu": gpu_name, "up_s": up_s, "warm": warm, "resident": resident,
            "cold": cold,
            "target_share": 0.9}


RECORDED = sorted((ROOT / "bench" / "results").glob("gpu-*.json"))
"""Results ``bench/gpu.sh --json`` wrote on a GPU machine (``bench/results/gpu-<card>-<date>.json``)."""


def harness(repeat: int) -> dict[str, Any]:
    """For ``bench/run.py``: measure here when CUDA is present, else report the newest recorded GPU run."""
    if _cuda():
        return run(60.0)
    if not RECORDED:
        return {"skipped": "no CUDA here and no recorded GPU run in bench/results/"}
    return {**json.loads(RECORDED[-1].read_text()), "recorded": RECORDED[-1].relative_to(ROOT).as_posix()}


def markdown(results: dict[str, Any]) -> str:
    if "skipped" in results:
        return f"Not measured: {results['skipped']}.\n"
    where = results["gpu"] or "CPU (no CUDA here)"
    source = f" Recorded by `bench/gpu.sh --json` on the device machine: `{results['recorded']}`." \
        if "recorded" in results else ""
    rows = [f"Training of {results['seconds']:.0f} s on {where}, `resources.gpus: {results['gpus']}`.{source}", "",
            "| apply | wall | inside the trainer | share | target | device recorded |", "|---|---|---|---|---|---|"]
    for label, key in (("`mlops apply`, the cluster and the warm driver up (`mlops up`)", "warm"),
                       ("`mlops apply` after `mlops down`: it starts the cluster and the warm driver", "cold"),
                       ("apply in a long-lived process (the reconciler's way), its workers started", "resident")):
        m = results[key]
        met = "yes" if m["share"] >= results["target_share"] else "NO"
        rows.append(f"| {label} | {m['apply_s']:.1f} s | {m['inside_s']:.1f} s | {m['share']:.3f} | "
                    f"≥ {results['target_share']} ({met}) | {m['device']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    outcome = run(args.seconds)
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2))
    print(json.dumps(outcome, indent=2))
    print(markdown(outcome))
