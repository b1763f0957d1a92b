"""Reconciler benchmarks (medians; ratios measured side by side in the same run).

    python bench/runtime_bench.py [--repeat 5] [--json OUT]

* ``noop_plan_1gb`` — a project whose source datasets hold 1 GiB, applied once; then the time of a
  no-op plan in-process (open state, build the graph through the hash cache, plan) and of the
  ``mlops plan`` command as a fresh process.
* ``dag200`` — apply of a 200-node DAG of trivial transforms (each reads its parents, writes one
  file) vs the same DAG submitted as plain Ray tasks that do the same file work.
* ``dag1000`` — the same at 1,000 nodes: scheduling throughput in nodes per second.
* ``trainings8`` — 8 independent 1-second trainings with ``cpus: 1`` on a 2-CPU Ray: wall time vs
  the ideal 4 s.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from bench.hash_bench import generate as generate_gib  # noqa: E402

TRANSFORM = '''
from pathlib import Path


def step(ctx):
    text = "".join((p / "out.txt" if p.is_dir() else p).read_text()[:64] for p in ctx.inputs.values())
    (ctx.output_dir / "out.txt").write_text(text + ctx.params["name"])


def sleep_train(ctx):
    import time

    from runtime.context import TrainResult

    time.sleep(1.0)
    return TrainResult(model={"w": [1.0]}, metrics={"auc": 1.0})
'''


def _project(root: Path, spec: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.py").write_text(TRANSFORM)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    path = root / "mlops.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _base(name: str) -> dict[str, Any]:
    return {"apiVersion": "mlops/v1", "project": name, "owners": ["team:bench"]}


def noop_plan(repeat: int, tmp: Path) -> dict[str, Any]:
    from compiler import load_project
    from runtime.apply.operations import apply_project, opened
    from runtime.plan.project import plan_project

    root = tmp / "gib"
    size = generate_gib(root / "data", 1024)
    datasets = {f"big{i}": {"path": f"data/big/{p.name}", "format": "dir" if p.is_dir() else None}
                for i, p in enumerate(sorted((root / "data" / "big").iterdir()))}
    datasets["small"] = {"path": "data/small", "format": "dir"}
    for body in datasets.values():
        if body["format"] is None:
            del body["format"]
    spec = _project(root, {**_base("gib"), "datasets": datasets})
    project = load_project(spec)
    apply_project(project)
    inproc = []
    for _ in range(repeat):
        start = time.perf_counter()
        project = load_project(spec)
        with opened(project) as (_, store):
            _, plan = plan_project(project, store)
        inproc.append(time.perf_counter() - start)
        assert not plan.has_changes, plan.to_json()
    cli = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec), "plan", "--detailed-exitcode"],
                       check=True, capture_output=True)
        cli.append(time.perf_counter() - start)
    return {"bytes": size, "in_process_s": statistics.median(inproc), "cli_s": statistics.median(cli),
            "target_s": 0.5}


def _dag(count: int, seed: int = 7) -> dict[str, list[str]]:
    """node -> parents: a random DAG mixing chains and fan-out/fan-in (node 0 is the source)."""
    rng = random.Random(seed)
    parents: dict[str, list[str]] = {"n0": []}
    for i in range(1, count):
        k = 1 if rng.random() < 0.6 else 2
        parents[f"n{i}"] = sorted({f"n{rng.randrange(max(0, i - 20), i)}" for _ in range(k)})
    return parents


def dag200(repeat: int, tmp: Path) -> dict[str, Any]:
    return {**dag_vs_plain(200, repeat, tmp), "target_ratio": 2.0}


def dag1000(repeat: int, tmp: Path) -> dict[str, Any]:
    """Scheduling throughput: 1,000 trivial nodes, in nodes per second."""
    measured = dag_vs_plain(1000, repeat, tmp)
    return {**measured, "nodes_per_s": 1000 / measured["apply_s"], "plain_nodes_per_s": 1000 / measured["plain_ray_s"]}


def dag_vs_plain(count: int, repeat: int, tmp: Path) -> dict[str, Any]:
    """Apply of a ``count``-node DAG of trivial transforms vs the same DAG as plain Ray tasks (medians)."""
    import ray

    from compiler import load_project
    from runtime.apply.operations import apply_project

    dag = _dag(count)
    ours, plain = [], []
    for attempt in range(repeat):
        root = tmp / f"dag{count}-{attempt}"
        (root / "data").mkdir(parents=True)
        (root / "data" / "n0.txt").write_text("seed\n")
        datasets: dict[str, Any] = {"n0": {"path": "data/n0.txt"}}
        for node, ups in dag.items():
            if ups:
                datasets[node] = {"from": ups, "transform": "pipeline:step", "params": {"name": node},
                                  "resources": {"cpus": 1}}
        spec = _project(root, {**_base("dag"), "datasets": datasets})
        project = load_project(spec)
        start = time.perf_counter()
        outcome = apply_project(project, parallelism=64)
        ours.append(time.perf_counter() - start)
        assert outcome.result.ok and outcome.result.count("succeeded") == count

        @ray.remote(num_cpus=1)
        def step(name: str, out_dir: str, *inputs: str) -> str:
            text = "".join(Path(p).read_text()[:64] for p in inputs)
            out = Path(out_dir) / f"{name}.txt"
            out.write_text(text + name)
            return str(out)

        plain_dir = root / "plain"
        plain_dir.mkdir()
        start = time.perf_counter()
        refs: dict[str, Any] = {"n0": str(root / "data" / "n0.txt")}
        for node, ups in dag.items():
            if ups:
                refs[node] = step.remote(node, str(plain_dir), *[refs[u] for u in ups])
        ray.get([r for r in refs.values() if not isinstance(r, str)])
        plain.append(time.perf_counter() - start)
    ours_median, plain_median = statistics.median(ours), statistics.median(plain)
    return {"nodes": count, "apply_s": ours_median, "plain_ray_s": plain_median, "ratio": ours_median / plain_median}


def trainings8(repeat: int, tmp: Path) -> dict[str, Any]:
    from compiler import load_project
    from runtime.apply.operations import apply_project

    walls = []
    for attempt in range(repeat):
        root = tmp / f"train8-{attempt}"
        (root / "data").mkdir(parents=True)
        (root / "data" / "x.csv").write_text("a\n1\n")
        models = {f"m{i}": {"train": "pipeline:sleep_train", "data": {"train": "x"}, "params": {"i": i},
                            "resources": {"cpus": 1}} for i in range(8)}
        spec = _project(root, {**_base("train8"), "datasets": {"x": {"path": "data/x.csv"}}, "models": models})
        project = load_project(spec)
        start = time.perf_counter()
        outcome = apply_project(project, parallelism=8)
        walls.append(time.perf_counter() - start)
        assert outcome.result.ok
    wall = statistics.median(walls)
    return {"trainings": 8, "wall_s": wall, "ideal_s": 4.0, "ratio": wall / 4.0, "target_ratio": 1.2}


def run(repeat: int) -> dict[str, Any]:
    from runtime.compute import ray_backend

    ray_backend.connect(None, num_cpus=2)
    with tempfile.TemporaryDirectory(prefix="mlops-runtime-bench-") as name:
        tmp = Path(name)
        results = {"trainings8": trainings8(repeat, tmp), "dag200": dag200(repeat, tmp),
                   "dag1000": dag1000(max(1, repeat // 2), tmp),
                   "noop_plan_1gb": noop_plan(repeat, tmp)}
    ray_backend.shutdown()
    return results


def markdown(results: dict[str, Any]) -> str:
    n, d, t = results["noop_plan_1gb"], results["dag200"], results["trainings8"]
    rows = [
        "| measurement | median | target | met |", "|---|---|---|---|",
        f"| no-op plan over {n['bytes'] / 2**30:.2f} GiB, in process | {n['in_process_s']:.3f} s | ≤ 0.5 s | "
        f"{'yes' if n['in_process_s'] <= 0.5 else 'NO'} |",
        f"| no-op `mlops plan` over the same, fresh process | {n['cli_s']:.3f} s | | |",
        f"| apply of a 200-node DAG vs plain Ray tasks | {d['apply_s']:.2f} s vs {d['plain_ray_s']:.2f} s = "
        f"{d['ratio']:.2f}× | ≤ 2.0× | {'yes' if d['ratio'] <= 2.0 else 'NO'} |",
        f"| scheduling throughput, 1,000 trivial nodes | {results['dag1000']['nodes_per_s']:.0f} nodes/s "
        f"({results['dag1000']['apply_s']:.2f} s; plain Ray {results['dag1000']['plain_nodes_per_s']:.0f} nodes/s, "
        f"{results['dag1000']['ratio']:.2f}×) | | |",
        f"| 8 × 1 s trainings, cpus: 1, 2 CPUs | {t['wall_s']:.2f} s = {t['ratio']:.2f}× ideal 4 s | ≤ 1.2× | "
        f"{'yes' if t['ratio'] <= 1.2 else 'NO'} |",
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    from bench.cli import main

    main(__doc__, run, markdown, repeat=3)
