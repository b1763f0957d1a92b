"""The floor of a cold apply on a local Ray, beside DVC's small pipeline (medians; fresh processes, one run).

    python bench/ray_floor_bench.py [--repeat 5] [--json OUT]

What no apply on the embedded default can go below on this machine, whatever mlops does: a Ray started from
nothing and one task run on it, with no mlops code at all. Each repeat measures, in this order, each as a
fresh process:

* ``python`` — the interpreter alone (``python -c pass``);
* ``import ray`` — what each of a cluster's Python processes (its two agents, the driver, each worker) pays
  before it does anything;
* ``ray.init`` — Ray's own local start, its defaults but the dashboard: ``ray.init()`` then one trivial task,
  timed until the task's result is printed (Ray's shutdown is not timed);
* ``embedded`` — the embedded head mlops starts (``runtime.compute.head``: no API server, client server,
  monitors, the minimal agent), with a driver that imports Ray meanwhile, joins it and runs one trivial
  task, as a cold apply overlaps them; timed until the result is printed;
* DVC's 10-stage pipeline of ``bench/dvc_bench.py`` in a fresh repository: ``dvc repro`` (full) and then
  ``dvc repro`` after one source changed (one change).

The embedded row is the floor of a cold 10-stage apply: it runs one task where the apply runs ten, and
plans, records and hashes nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dvc_bench import (  # noqa: E402
    DVC,
    _dvc_incremental,
    _edit,
    _git_init,
    _timed,
    dag,
    downstream,
    ensure_dvc,
    source_names,
    write_dvc,
)

STAGES = 10
ENV = {**{k: v for k, v in os.environ.items() if k != "MLOPS_IDLE_STOP"}, "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_AUTH_MODE": "token", "PYTHONPATH": str(ROOT)}
DONE = "task done"

RAY_INIT = f"""
import ray
ray.init(include_dashboard=False)
assert ray.get(ray.remote(lambda: 1).remote()) == 1
print("{DONE}", flush=True)
"""

EMBEDDED = f"""
import sys, threading
from pathlib import Path
from runtime.compute import cluster

state = Path(sys.argv[1])
started = {{}}
up = threading.Thread(target=lambda: started.update(c=cluster.up(state)))
up.start()  # the head starts in its own process while this one imports Ray, as a cold apply overlaps them
import ray
from runtime.compute import ray_backend
up.join()
ray_backend.connect(started["c"].address)  # as the driver joins it: on the loopback address
assert ray.get(ray.remote(lambda: 1).remote()) == 1
print("{DONE}", flush=True)
"""


def _until_done(code: str, *args: str) -> float:
    """Seconds from starting ``python -c code`` until it prints :data:`DONE` (its exit is not timed)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if line.strip() == DONE:
            seconds = time.perf_counter() - start
            child.stdout.close()
            child.wait(timeout=120)
            return seconds
    _, err = child.communicate(timeout=120)
    raise RuntimeError(f"the child exited {child.returncode} before its task ran:\n{err[-2000:]}")


def _whole(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def attempt(tmp: Path, index: int) -> dict[str, float]:
    row = {"python": _whole([sys.executable, "-c", "pass"]),
           "import ray": _whole([sys.executable, "-c", "import ray"]),
           "ray.init": _until_done(RAY_INIT)}
    state = tmp / f"embedded-{index}" / "state.db"
    state.parent.mkdir(parents=True)
    try:
        row["embedded"] = _until_done(EMBEDDED, str(state))
    finally:
        from runtime.compute import cluster

        os.environ["RAY_AUTH_MODE"] = "token"
        cluster.down(state)
    graph = dag(STAGES)
    changed = source_names(graph)[-1]
    root = tmp / f"dvc-{index}"
    write_dvc(root, graph)
    _git_init(root)
    subprocess.run([str(DVC), "init", "-q"], cwd=root, env=ENV, check=True)
    row["dvc full"], _ = _timed([str(DVC), "repro"], root)
    _edit((root,), changed, f"change {index}")
    row["dvc one change"] = _dvc_incremental(root, downstream(graph, changed))
    return row


def run(repeat: int) -> dict[str, Any]:
    ensure_dvc()
    with tempfile.TemporaryDirectory(prefix="mlops-floor-") as name:
        rows = [attempt(Path(name), index) for index in range(repeat)]
    return {"repeat": repeat, "load": os.getloadavg(), "rows": rows,
            "median": {key: statistics.median(r[key] for r in rows) for key in rows[0]}}


def markdown(results: dict[str, Any]) -> str:
    median = results["median"]
    lines = [f"Medians of {results['repeat']} (load average at the end {results['load'][0]:.2f}):", "",
             "| what | seconds |", "|---|---|"]
    lines += [f"| {key} | {value:.2f} |" for key, value in median.items()]
    lines += ["", f"The floor of a cold apply (embedded head, one task): {median['embedded']:.2f} s; DVC's whole "
              f"10-stage run {median['dvc full']:.2f} s, one change {median['dvc one change']:.2f} s."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = run(args.repeat)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
