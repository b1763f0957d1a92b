"""Where a CLI apply's time goes, cold and warm: the 10-stage DVC-bench DAG (medians; fresh processes).

    python bench/cold_apply_bench.py [--repeat 5] [--json OUT]

Each repeat uses a fresh repository (``bench/dvc_bench.py``'s generator) and measures, as its own process:

* ``before`` — the way every apply ran before the warm driver (``MLOPS_IDLE_STOP=off``): an embedded Ray
  started inside the apply, for the full run;
* ``plan`` — ``mlops plan`` (a cold apply plans once in the caller to learn that it has work);
* ``cold`` — the full run of a cold machine: no local cluster, no warm driver (it starts both), with the
  parts the driver's log gives: the cluster ready (its head, ``runtime.compute.head``), the driver joined
  (``ray.init``), the apply inside the driver;
* ``warm`` — the next full run (after an edit of the stages' code), in the warm driver; and its part inside
  the driver.

What the parts leave of ``cold`` is the caller's own start and the forwarding. Nothing is left running (``mlops down``
at the end of each repeat).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dvc_bench import dag, write_mlops  # noqa: E402

STAGES = 10
ENV = {**{k: v for k, v in os.environ.items() if k != "MLOPS_IDLE_STOP"}, "RAY_USAGE_STATS_ENABLED": "0"}
_READY = re.compile(r"ready in ([\d.]+)s, joined in ([\d.]+)s")
_RAN = re.compile(r" apply .*: exit 0 after ([\d.]+)s")


def _timed(spec: Path, *args: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec), *args], cwd=spec.parent,
                          env=env or ENV, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 2):
        raise RuntimeError(f"mlops {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds


def _edit_code(root: Path, mark: str) -> None:
    with (root / "pipeline.py").open("a") as code:
        code.write(f"# {mark}\n")


def attempt(tmp: Path, index: int) -> dict[str, float]:
    graph = dag(STAGES)
    root = tmp / f"cold-{index}"
    spec = write_mlops(root, graph)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    apply = ("apply", "--parallelism", "8", "--allow-dirty")
    times: dict[str, float] = {}
    try:
        times["before"] = _timed(spec, *apply, env={**ENV, "MLOPS_IDLE_STOP": "off"})
        _edit_code(root, "plan")
        times["plan"] = _timed(spec, "plan")
        times["cold"] = _timed(spec, *apply)
        log = (root / ".mlops" / "daemon.log").read_text()
        times["cold_cluster"], times["cold_join"] = (float(x) for x in _READY.findall(log)[-1])
        times["cold_inside"] = float(_RAN.findall(log)[-1])
        _edit_code(root, "warm")
        times["warm"] = _timed(spec, *apply)
        times["warm_inside"] = float(_RAN.findall((root / ".mlops" / "daemon.log").read_text())[-1])
    finally:
        subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(spec), "down"], cwd=root, env=ENV,
                       capture_output=True, timeout=120)
    return times


def run(repeat: int) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlops-cold-bench-") as name:
        runs = [attempt(Path(name), i) for i in range(repeat)]
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {"stages": STAGES, "repeat": repeat, "cpus": os.cpu_count(), **medians,
            "wall_s": time.perf_counter() - start}


def markdown(results: dict[str, Any]) -> str:
    r = results
    rest = r["cold"] - r["plan"] - r["cold_cluster"] - r["cold_join"] - r["cold_inside"]
    rows = [f"{r['stages']}-stage DAG, medians of {r['repeat']}, {r['cpus']} CPUs; every command a fresh process.", "",
            "| what | seconds |", "|---|---|",
            f"| before: `mlops apply`, an embedded Ray started inside it (`MLOPS_IDLE_STOP=off`) | {r['before']:.2f} |",
            f"| **cold**: `mlops apply` with no cluster and no warm driver (it starts both) | {r['cold']:.2f} |",
            f"| &nbsp;&nbsp;its plan in the caller (as `mlops plan`) | {r['plan']:.2f} |",
            f"| &nbsp;&nbsp;the local cluster ready (its head: `runtime.compute.head`) | {r['cold_cluster']:.2f} |",
            f"| &nbsp;&nbsp;the warm driver joined (`ray.init`) | {r['cold_join']:.2f} |",
            f"| &nbsp;&nbsp;the apply inside the new driver (imports, worker start-up, 10 tasks) | "
            f"{r['cold_inside']:.2f} |",
            f"| &nbsp;&nbsp;the rest (the driver's Python start, forwarding) | {rest:.2f} |",
            f"| **warm**: `mlops apply` while the warm driver is up | {r['warm']:.2f} |",
            f"| &nbsp;&nbsp;the apply inside the driver | {r['warm_inside']:.2f} |", "",
            f"The whole bench took {r['wall_s']:.0f} s."]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    from bench.cli import main

    main(__doc__, run, markdown, repeat=5)
