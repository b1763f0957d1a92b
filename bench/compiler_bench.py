"""Compiler benchmarks: wall time of ``mlops validate`` and ``mlops compile`` on synthetic specs.

    python bench/compiler_bench.py [--repeat 5] [--json OUT]

Specs of 1,000, 5,000 and 10,000 resources (a fifth each of datasets, models, gates, deployments
and monitors; gdpr and security packs on) are generated under a temporary folder; each command runs
``--repeat`` times as a fresh process and the median is reported, with the 10k/1k cost ratio.
Also measures the policy engine alone: microseconds per (policy, view) evaluation at 5,000 resources.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gen_spec import generate  # noqa: E402

SIZES = {"1k": 200, "5k": 1000, "10k": 2000}
TARGETS = {"validate 5k": 1.5, "compile 5k": 4.0, "validate 10k/1k": 12.0, "compile 10k/1k": 12.0}


def _time(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def policy_cost(spec: Path) -> dict[str, float]:
    """Microseconds per (policy, view) evaluation, policy engine alone, at the given spec."""
    from compiler import check_policies, load_project

    project = load_project(spec)
    best = float("inf")
    evaluations = 0
    for _ in range(3):
        start = time.perf_counter()
        report = check_policies(project)
        best = min(best, time.perf_counter() - start)
        evaluations = len(report.results)
    return {"evaluations": evaluations, "seconds": best, "us_per_evaluation": best / max(evaluations, 1) * 1e6}


def run(repeat: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    # byte-compile the project once, as an installed package would be (PYTHONDONTWRITEBYTECODE may be set)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "compiler"), str(root / "runtime")],
                   check=True)
    mlops = [sys.executable, "-m", "runtime.cli.main"]
    results: dict[str, Any] = {"medians_s": {}, "runs_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, per_section in SIZES.items():
            spec = generate(Path(tmp) / label, per_section)
            for command in ("validate", "compile"):
                args = [*mlops, "-f", str(spec), command] + (["--out", str(Path(tmp) / f"out-{label}")]
                                                             if command == "compile" else [])
                _time(args, spec.parent)  # warm the file cache
                runs = [_time(args, spec.parent) for _ in range(repeat)]
                results["runs_s"][f"{command} {label}"] = runs
                results["medians_s"][f"{command} {label}"] = statistics.median(runs)
        results["policy_engine_5k"] = policy_cost(Path(tmp) / "5k" / "mlops.yaml")
    medians = results["medians_s"]
    for command in ("validate", "compile"):
        medians[f"{command} 10k/1k"] = medians[f"{command} 10k"] / medians[f"{command} 1k"]
    results["targets"] = {name: {"target": target, "measured": medians[name], "met": medians[name] <= target}
                          for name, target in TARGETS.items()}
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = ["| measurement | median | target | met |", "|---|---|---|---|"]
    for name, value in results["medians_s"].items():
        target = results["targets"].get(name)
        unit = "×" if "/" in name else " s"
        lines.append(f"| `mlops {name}` | {value:.2f}{unit} | "
                     f"{'≤ ' + str(target['target']) + unit if target else ''} | "
                     f"{('yes' if target['met'] else 'NO') if target else ''} |")
    engine = results["policy_engine_5k"]
    lines.append(f"| policy engine at 5k ({engine['evaluations']:,} policy×view evaluations) | "
                 f"{engine['seconds']:.3f} s ({engine['us_per_evaluation']:.1f} µs each) | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from bench.cli import main

    main(__doc__, run, markdown, repeat=5)
