"""What one reconcile tick with nothing to do costs: store opens, plans, Serve queries, and seconds.

    python bench/tick_bench.py [--repeat 10] [--baseline REV] [--json OUT]

The project of ``reconcile_bench`` (a dataset, a model, a gate, a realtime deployment on Ray Serve, a
monitor) is reconciled once from a spec on disk, then no-op ticks are counted and timed on that same
reconciler. Counted per tick:

* **store opens** — ``StateStore.open`` calls;
* **plans** — ``make_plan`` calls (the graph compared with the recorded state);
* **Serve queries** — ``serve.status()`` calls and calls of the Serve controller's
  ``get_serve_instance_details``.

``--baseline REV`` runs the same measurement first on a git worktree of ``REV`` (in a process of its own)
and reports both, so the ratio comes from one run on one machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _module(*names: str) -> Any:
    """The first of ``names`` that imports (the runtime's modules moved between revisions)."""
    import importlib

    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(names[-1])


def _count_calls(function: Callable[..., Any], counts: Counter[str], key: str) -> None:
    """Wrap ``function`` wherever a loaded module holds it (imported by name or not)."""
    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[key] += 1
        return function(*args, **kwargs)

    for module in list(sys.modules.values()):
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if value is function:
                setattr(module, attribute, counted)


def _instrument(counts: Counter[str]) -> None:
    from ray import serve
    from ray.actor import ActorMethod

    from runtime.state.store import StateStore

    opener = StateStore.open.__func__  # type: ignore[attr-defined]

    def open_counted(cls: Any, *args: Any, **kwargs: Any) -> Any:
        counts["store_opens"] += 1
        return opener(cls, *args, **kwargs)

    StateStore.open = classmethod(open_counted)  # type: ignore[method-assign,assignment]
    plan = _module("runtime.plan.actions", "runtime.plan")
    for name in ("runtime.apply.operations", "runtime.operations", "runtime.views.status", "runtime.status",
                 "runtime.reconcile.loop", "runtime.reconciler", "runtime.plan.project"):
        with contextlib.suppress(ImportError):
            _module(name)
    _count_calls(plan.make_plan, counts, "plans")
    status = serve.status

    def status_counted(*args: Any, **kwargs: Any) -> Any:
        counts["serve_queries"] += 1
        return status(*args, **kwargs)

    serve.status = status_counted
    remote = ActorMethod.remote

    def remote_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_method_name", "") == "get_serve_instance_details":
            counts["serve_queries"] += 1
        return remote(self, *args, **kwargs)

    ActorMethod.remote = remote_counted  # type: ignore[method-assign]


def measure(repeat: int) -> dict[str, Any]:
    """Reconcile the bench project once, then count and time ``repeat`` no-op ticks (this source tree)."""
    import yaml

    spec_of = importlib.util.spec_from_file_location("reconcile_bench", ROOT / "bench" / "reconcile_bench.py")
    assert spec_of is not None and spec_of.loader is not None
    reconcile_bench = importlib.util.module_from_spec(spec_of)
    path = list(sys.path)
    spec_of.loader.exec_module(reconcile_bench)
    sys.path[:] = path  # it puts its own tree first: the runtime measured is the one the caller chose
    PIPELINE, _spec = reconcile_bench.PIPELINE, reconcile_bench._spec

    ray_backend = _module("runtime.compute.ray_backend", "runtime.ray_backend")
    cluster = _module("runtime.compute.cluster", "runtime.cluster")
    loop = _module("runtime.reconcile.loop", "runtime.reconciler")
    with tempfile.TemporaryDirectory(prefix="mlops-tick-bench-") as name:
        work = Path(name)
        (work / "data").mkdir()
        (work / "mlops.yaml").write_text(yaml.safe_dump(_spec(), sort_keys=False))
        (work / "pipeline.py").write_text(PIPELINE)
        (work / "data" / "raw.csv").write_text("x\n" + "".join(f"{(i % 97) / 10:.2f}\n" for i in range(1000)))
        state_path = work / ".mlops" / "state.db"
        reconciler = loop.Reconciler(loop.Source(work / "mlops.yaml"))
        try:
            first = reconciler.tick()
            assert first.ok and first.applied is not None, first.error
            reconciler.tick()  # the monitor's first scheduled run
            counts: Counter[str] = Counter()
            _instrument(counts)
            times, per_tick = [], []
            for _ in range(repeat):
                counts.clear()
                start = time.perf_counter()
                result = reconciler.tick()
                times.append(time.perf_counter() - start)
                assert result.ok and result.applied is None, result.error or result.to_json()
                per_tick.append(dict(counts))
        finally:
            ray_backend.shutdown()
            cluster.down(state_path)
    last = per_tick[-1]
    return {"tick_s": statistics.median(times), "store_opens": last.get("store_opens", 0),
            "plans": last.get("plans", 0), "serve_queries": last.get("serve_queries", 0), "ticks": repeat}


def _in_process_of_its_own(source: Path, repeat: int) -> dict[str, Any]:
    """:func:`measure` in a fresh process whose ``runtime`` (and its Ray workers') is ``source``'s."""
    code = ("import importlib.util, json, sys; "
            f"sys.path.insert(0, {str(source)!r}); "
            f"spec = importlib.util.spec_from_file_location('tick_bench', {str(Path(__file__).resolve())!r}); "
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
            f"print('RESULT', json.dumps(bench.measure({repeat})))")
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=900,
                          env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the tick bench failed in {source}: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    return result


def run(repeat: int, baseline: str | None = None) -> dict[str, Any]:
    """This tree's figures, and ``baseline``'s measured in the same run when given."""
    results: dict[str, Any] = {"baseline_rev": baseline}
    if baseline:
        with tempfile.TemporaryDirectory(prefix="mlops-tick-baseline-") as name:
            tree = Path(name) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), baseline], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                results["baseline"] = _in_process_of_its_own(tree, repeat)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    results["current"] = _in_process_of_its_own(ROOT, repeat)
    return results


def markdown(results: dict[str, Any]) -> str:
    now = results["current"]
    before = results.get("baseline")
    rows = ["| per no-op tick | " + (f"before ({results['baseline_rev']}) | " if before else "") + "now |",
            "|---|" + ("---|" if before else "") + "---|"]
    def shown(result: dict[str, Any], key: str) -> str:
        return f"{result[key]:.3f}" if key == "tick_s" else str(result[key])

    for key, label in (("store_opens", "state store opens"), ("plans", "plans"),
                       ("serve_queries", "Serve queries"), ("tick_s", "seconds (median)")):
        rows.append(f"| {label} | " + (f"{shown(before, key)} | " if before else "") + f"{shown(now, key)} |")
    if before:
        rows.append(f"| ratio now / before (seconds) | | {now['tick_s'] / before['tick_s']:.2f}× |")
    return "\n".join(rows) + f"\n\n{now['ticks']} ticks each.\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    outcome = run(args.repeat, args.baseline)
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=2))
    print(markdown(outcome))
