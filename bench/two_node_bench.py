"""The same DAGs applied on a two-node cluster whose worker cannot see the repository, against one node.

    python bench/two_node_bench.py [--repeat 3] [--json OUT]

A DAG of 10 and one of 100 trivial transforms (``bench/runtime_bench.py``'s) are applied from scratch:

* **one node** — the embedded default: a local Ray of 2 CPUs in this process, the code read in place;
* **two nodes** — ``cluster.address`` set to a head with no CPUs and a 2-CPU worker started in a mount
  namespace with a tmpfs over the projects' folder (``tests/ray_nodes.py``): the work tree travels as a
  ``runtime_env`` package, and every task runs on the worker.

Both use the same local artifact folder (visible to both nodes) and the same 2 CPUs for tasks, so the
ratio is what a cluster beyond the driver costs: the package upload, a second raylet, cross-node calls.
Medians of ``--repeat`` applies.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _apply_dag(root: Path, count: int, address: str | None, store: Path) -> float:
    from bench.runtime_bench import _base, _dag, _project
    from compiler import load_project
    from runtime.apply.operations import apply_project

    (root / "data").mkdir(parents=True)
    (root / "data" / "n0.txt").write_text("seed\n")
    datasets: dict[str, Any] = {"n0": {"path": "data/n0.txt"}}
    for node, ups in _dag(count).items():
        if ups:
            datasets[node] = {"from": ups, "transform": "pipeline:step", "params": {"name": node},
                              "resources": {"cpus": 1}}
    spec: dict[str, Any] = {**_base("dag"), "storage": {"artifacts": str(store)}, "datasets": datasets}
    if address:
        spec["cluster"] = {"address": address}
    project = load_project(_project(root, spec))
    start = time.perf_counter()
    outcome = apply_project(project, parallelism=64)
    took = time.perf_counter() - start
    assert outcome.result.ok and outcome.result.count("succeeded") == count, outcome.result.outcomes
    return took


def run(repeat: int) -> dict[str, Any]:
    from ray_nodes import TwoNodes

    from runtime.compute import ray_backend

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mlops-2n-bench-") as name:
        tmp = Path(name)
        hidden, store = tmp / "projects", tmp / "store"
        hidden.mkdir()
        for count in (10, 100):
            ray_backend.shutdown()
            ray_backend.connect(None, num_cpus=2)
            one = [_apply_dag(hidden / f"one-{count}-{i}", count, None, store / f"one-{count}-{i}")
                   for i in range(repeat)]
            ray_backend.shutdown()
            logs = tmp / f"logs-{count}"
            logs.mkdir()
            nodes = TwoNodes(logs, hidden).start()
            try:
                two = [_apply_dag(hidden / f"two-{count}-{i}", count, nodes.address, store / f"two-{count}-{i}")
                       for i in range(repeat)]
            finally:
                ray_backend.shutdown()
                nodes.stop()
            results[f"dag{count}"] = {"one_node_s": statistics.median(one), "two_nodes_s": statistics.median(two),
                                      "ratio": statistics.median(two) / statistics.median(one)}
    return {**results, "repeat": repeat}


def markdown(results: dict[str, Any]) -> str:
    rows = ["| DAG, apply from scratch | one node (embedded) | two nodes (code shipped) | ratio |",
            "|---|---|---|---|"]
    for count in (10, 100):
        r = results[f"dag{count}"]
        rows.append(f"| {count} transforms | {r['one_node_s']:.2f} s | {r['two_nodes_s']:.2f} s | {r['ratio']:.2f}× |")
    return "\n".join(rows) + f"\n\nMedians of {results['repeat']} applies.\n"


if __name__ == "__main__":
    from bench.cli import main

    main(__doc__, run, markdown, repeat=3)
