"""Run every benchmark and write ``BENCHMARKS.md``.

    python bench/run.py [--repeat N] [--only compiler,hash,runtime,reconcile,tick,dvc,serving,gpu]

Each section is produced by one module under ``bench/`` (its ``run`` and ``markdown``); absolute
times on a shared 2-core machine are noisy, so each section reports medians and, where it has a
baseline, the ratio measured in the same run. ``bench/state_bench.py`` and ``bench/artifact_bench.py`` start
servers of their own (PostgreSQL, SeaweedFS) and are run by hand; add their tables to the file again.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = {
    "compiler": ("bench.compiler_bench", "Compiler: validate and compile on synthetic specs",
                 "`python bench/compiler_bench.py`"),
    "hash": ("bench.hash_bench", "Data hashing: cold throughput and a cached pass over 1 GiB",
             "`python bench/hash_bench.py`"),
    "runtime": ("bench.runtime_bench", "Reconciler: no-op plan, DAG apply vs plain Ray, parallel trainings",
                "`python bench/runtime_bench.py`"),
    "reconcile": ("bench.reconcile_bench", "GitOps loop: a reconcile tick with nothing to do",
                  "`python bench/reconcile_bench.py`"),
    "tick": ("bench.tick_bench", "Reconciler: what a no-op tick costs (store opens, plans, Serve queries)",
             "`python bench/tick_bench.py --baseline REV`"),
    "dvc": ("bench.dvc_bench", "Versus DVC: full run, no-op check and one changed file at 10-500 stages",
            "`python bench/dvc_bench.py`"),
    "serving": ("bench.serving_bench", "Serving: p50 latency vs a bare Ray Serve deployment",
                "`python bench/serving_bench.py`"),
    "gpu": ("bench.gpu_bench", "GPU: a training through mlops apply with gpus: 1",
            "`bash bench/gpu.sh` (on a CUDA machine; elsewhere the newest recorded run)"),
}
ENTRY = {"gpu": "harness"}
"""Sections whose harness entry point is not ``run``."""
NOTES = ROOT / "bench" / "NOTES.md"
"""Hand-written analysis (profiles of missed targets), appended to ``BENCHMARKS.md`` as it is."""


def machine() -> list[str]:
    versions = {name: _version(name) for name in ("ray", "torch", "pydantic", "jsonschema-rs", "networkx", "cdktf")}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        f"- Python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    lines = ["# Benchmarks", "", "Written by `python bench/run.py`; every figure is a median over repeated runs on the",
             "machine below. Ratios compare with a baseline measured in the same run.", "", *machine(), ""]
    raw: dict[str, Any] = {}
    for key in args.only.split(","):
        module_name, title, command = SECTIONS[key]
        module = importlib.import_module(module_name)
        print(f"running {key} ...", flush=True)
        results = getattr(module, ENTRY.get(key, "run"))(args.repeat)
        raw[key] = results
        lines += [f"## {title}", "", f"Command: {command}", "", module.markdown(results)]
    if NOTES.is_file():
        lines += [NOTES.read_text()]
    args.out.write_text("\n".join(lines) + "\n")
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    (ROOT / "bench" / "out" / "results.json").write_text(json.dumps(raw, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
