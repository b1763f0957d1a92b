"""What a no-op plan costs with its state on PostgreSQL against SQLite, on a project of 100 nodes.

    python bench/state_bench.py [--nodes 100] [--repeat 30] [--json OUT]

Two measures, each a median of ``--repeat`` with the ratio PostgreSQL / SQLite from the same run
(target: a no-op plan ≤ 1.5 × SQLite's):

* **plan** — the real thing, in process: a project of ``--nodes`` source datasets is applied once to
  each state, then ``load_project`` + open the state + ``plan_project`` (``No changes``) is timed.
* **reads** — only the store calls a no-op plan makes, on a richer state (below): the part PostgreSQL
  makes slower, one network round trip per call where SQLite reads its file in process.

A real PostgreSQL server is started for the run (``initdb`` + ``postgres`` on loopback TCP, as
``tests/postgres.py`` does), and both states are seeded alike: ``--nodes`` graph nodes with three
results each, their source files in the hash cache, one model per ten nodes with two versions, a
chained gate decision on each, a deployment, runs and a monitor's results. One "plan" is the store
calls a no-op ``mlops plan`` makes (``runtime/plan/project.py``): open the store (migration check,
identity and audit anchor), ``cached_hashes_under`` per dataset folder, ``latest_results``,
``open_retrain_requests``, per deployment ``get_deployment`` and ``get_model_version``, per gate
``latest_gate_decision``, ``monitor_results``, close. Medians of ``--repeat`` plans, and the ratio
PostgreSQL / SQLite from the same run (target: ≤ 1.5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from runtime.state.records import (  # noqa: E402
    DeploymentState,
    GateDecision,
    ModelVersion,
    MonitorResult,
    NodeResult,
    Run,
)
from runtime.state.store import StateStore  # noqa: E402

FOLDERS = 10
"""Dataset folders the plan hashes through the cache (one ``cached_hashes_under`` each)."""


def seed(location: Path | str, nodes: int) -> None:
    """The state of a project of ``nodes`` nodes after a few applies."""
    with StateStore.open(location) as store, store.transaction():
        for round_ in range(3):
            for i in range(nodes):
                node = f"datasets.d{i}/transform" if i % 10 else f"models.m{i // 10}/train"
                store.record_result(NodeResult(node, node.split("/")[0], "transform", f"fp{round_}-{i}",
                                               {"params": {"i": i}, "code": "pipeline:transform"},
                                               code_hash="c" * 64, data_hash="d" * 64,
                                               upstream={f"datasets.d{i - 1}/transform": f"fp{round_}-{i - 1}"},
                                               outputs={"artifact": "sha256:" + f"{i:064x}"}, finished_at=1.0 + i))
        store.store_hashes([(f"/repo/data/f{i % FOLDERS}/file{i}.csv", 100 + i, 10**18 + i, 10**6 + i, "h" * 64)
                            for i in range(nodes)])
        for m in range(max(1, nodes // 10)):
            for version in (1, 2):
                run_id = f"run-m{m}-v{version}"
                store.start_run(Run(run_id, f"models.m{m}/train", f"models.m{m}", "train", "fp", started_at=1.0))
                store.finish_run(run_id, "succeeded", {"auc": 0.9})
                store.add_model_version(ModelVersion(f"m{m}", version, "fp", "sha256:" + "0" * 64, run_id=run_id,
                                                     metrics={"auc": 0.9}, created_at=1.0))
                store.record_gate_decision(GateDecision(f"g{m}", f"m{m}", version, "passed", [], 2.0))
            store.set_deployment(DeploymentState(f"api{m}", f"m{m}", 2, 2, "healthy", 3.0))
            for k in range(5):
                store.add_monitor_result(MonitorResult(f"mon{m}", f"api{m}", 2, 4.0 + k, False, [], []))


def plan_reads(location: Path | str, nodes: int) -> int:
    """The store calls of one no-op plan; how many results it saw (so nothing is optimised away)."""
    seen = 0
    with StateStore.open(location) as store:
        for folder in range(FOLDERS):
            seen += len(store.cached_hashes_under(f"/repo/data/f{folder}"))
        recorded = store.latest_results()
        seen += len(recorded) + len(store.open_retrain_requests())
        for m in range(max(1, nodes // 10)):
            deployment = store.get_deployment(f"api{m}")
            assert deployment is not None and deployment.live_version is not None
            seen += store.get_model_version(f"m{m}", deployment.live_version) is not None
            seen += store.latest_gate_decision(f"g{m}", f"m{m}", 2) is not None
            seen += len(store.monitor_results(f"mon{m}", limit=10))
    return seen


def measure(location: Path | str, nodes: int, repeat: int) -> dict[str, Any]:
    plan_reads(location, nodes)  # warm: the first open migrates nothing more, caches the statements
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        plan_reads(location, nodes)
        times.append(time.perf_counter() - began)
    return {"median_ms": round(statistics.median(times) * 1000, 2), "min_ms": round(min(times) * 1000, 2)}


def plan_project_times(root: Path, state: str | None, nodes: int, repeat: int) -> dict[str, Any]:
    """Apply a project of ``nodes`` source datasets once, then time no-op plans (load, open, plan)."""
    import yaml

    from compiler import load_project
    from runtime.apply.operations import apply_project, opened
    from runtime.plan.project import plan_project

    (root / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for i in range(nodes):
        (root / "data" / f"d{i}.csv").write_text(f"a,b\n{i},2\n")
    spec: dict[str, Any] = {"apiVersion": "mlops/v1", "project": "bench", "owners": ["team:bench"],
                            "datasets": {f"d{i}": {"path": f"data/d{i}.csv"} for i in range(nodes)}}
    if state is not None:
        spec["storage"] = {"state": state}
    (root / "mlops.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    apply_project(load_project(root / "mlops.yaml"), allow_dirty=True)
    times = []
    for _ in range(repeat + 1):
        began = time.perf_counter()
        project = load_project(root / "mlops.yaml")
        with opened(project) as (_, store):
            _, plan = plan_project(project, store)
        times.append(time.perf_counter() - began)
        assert not plan.has_changes, plan.to_json()
    times = times[1:]  # the first warms the imports
    return {"median_ms": round(statistics.median(times) * 1000, 2), "min_ms": round(min(times) * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from postgres import PostgresServer, binaries

    found = binaries()
    if found is None:
        raise SystemExit("PostgreSQL is not installed (initdb, postgres)")
    server = PostgresServer(found).start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            sqlite = Path(folder) / "state.db"
            postgresql = server.database("bench")
            for location in (sqlite, postgresql):
                seed(location, args.nodes)
            results: dict[str, Any] = {"nodes": args.nodes, "repeat": args.repeat, "plan": {
                "sqlite": plan_project_times(Path(folder) / "p-sqlite", None, args.nodes, args.repeat),
                "postgresql": plan_project_times(Path(folder) / "p-postgresql", server.database("plan"), args.nodes,
                                                 args.repeat)}, "reads": {
                "sqlite": measure(sqlite, args.nodes, args.repeat),
                "postgresql": measure(postgresql, args.nodes, args.repeat)}}
    finally:
        server.stop()
    for kind, what in (("plan", "no-op plan (load, open, plan_project)"), ("reads", "no-op plan's store calls only")):
        row = results[kind]
        row["ratio"] = round(row["postgresql"]["median_ms"] / row["sqlite"]["median_ms"], 2)
        print(f"{what}, {args.nodes} nodes, median of {args.repeat}: SQLite {row['sqlite']['median_ms']} ms, "
              f"PostgreSQL {row['postgresql']['median_ms']} ms (loopback TCP): {row['ratio']}x")
    print("target: a no-op plan <= 1.5x SQLite's")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
