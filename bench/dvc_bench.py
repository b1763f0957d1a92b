"""mlops vs DVC on the same pipeline (medians; the ratio is DVC's time / ours, measured side by side).

    python bench/dvc_bench.py [--repeat 3] [--json OUT]

The pipeline is generated twice, as ``dvc.yaml`` and as ``mlops.yaml``, at 10, 100 and 500 stages: a
random DAG of chains and fan-in over the previous 20 stages, with four source files read at evenly
spaced stages. Each stage reads the first 64 bytes of each input and writes a SHA-256 of them (so any
upstream change reaches every descendant): ``python stage.py NAME OUT INPUT...`` for DVC, the
transform ``pipeline:step`` (``cpus: 1``) for mlops. Every command runs as a fresh process:

* full run — ``dvc repro`` vs ``mlops apply --parallelism 8 --allow-dirty`` in a fresh repository (at 500
  stages ``dvc repro`` takes about 20 minutes on 2 cores, so it is timed only with ``DVC_BENCH_FULL_500=1``;
  otherwise DVC's repository is brought up to date untimed: every stage command, then ``dvc commit``);
* no-op check — ``dvc status`` vs ``mlops plan --detailed-exitcode``;
* incremental — the last source file changes in both; ``dvc repro`` vs ``mlops apply``; both must rerun
  exactly the stages downstream of it (checked).

mlops is measured twice for the full run and the incremental one, with its default settings (the warm
driver on, ``runtime/daemon``):

* cold — the first apply after a cold machine: no local cluster and no warm driver run (``mlops down``
  before it, untimed), so the apply starts both;
* warm — the warm driver the apply before started is up: the full run is ``mlops apply`` after an edit of
  the stages' code (every stage runs again; DVC's row is its full run, the same work), the incremental one
  the next source change.

Repeats: ``--repeat``, at most 5, 3 and 2 at 10, 100 and 500 stages. DVC is installed on first use into
``.venv-dvc`` (``python3 -m venv .venv-dvc && pip install dvc``). The generated repositories are not
committed, so apply gets ``--allow-dirty``. Each attempt ends with ``mlops down`` (nothing is left running).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

DVC_VENV = ROOT / ".venv-dvc"
DVC = DVC_VENV / "bin" / "dvc"
SIZES = (10, 100, 500)
MOST_REPEATS = {10: 5, 100: 3, 500: 2}
"""``--repeat`` is capped per size to keep the bench near 10 minutes on 2 cores."""
SOURCES = 4
NOOP_TARGET = 5.0
"""``dvc status`` / ``mlops plan`` at 500 stages must be at least this."""

STAGE_SCRIPT = '''import hashlib
import sys
from pathlib import Path

name, out, *inputs = sys.argv[1:]
heads = b"".join(Path(p).read_bytes()[:64] for p in inputs)
Path(out).parent.mkdir(parents=True, exist_ok=True)
Path(out).write_text(hashlib.sha256(heads).hexdigest() + " " + name + "\\n")
'''

TRANSFORM = '''import hashlib
from pathlib import Path


def _first_file(path: Path) -> Path:
    return path if path.is_file() else min(q for q in path.rglob("*") if q.is_file())


def step(ctx):
    heads = b"".join(_first_file(Path(p)).read_bytes()[:64] for p in ctx.inputs.values())
    (ctx.output_dir / "out.txt").write_text(hashlib.sha256(heads).hexdigest() + " " + ctx.params["name"] + "\\n")
'''


# --- the pipeline, generated ----------------------------------------------------------------------


def dag(stages: int, sources: int = SOURCES, seed: int = 7) -> dict[str, list[str]]:
    """stage -> inputs (stages ``s0..``, source files ``src0..``), in topological order.

    Each stage reads one (60%) or two earlier stages among the previous 20 (chains and fan-in; fan-out
    where several pick the same one); source ``srcK`` is read by stage ``K * stages // sources``.
    """
    rng = random.Random(seed)
    feeds = {k * stages // sources: f"src{k}" for k in range(sources)}
    graph: dict[str, list[str]] = {}
    for i in range(stages):
        ups: set[str] = set()
        if i:
            count = 1 if rng.random() < 0.6 else 2
            ups = {f"s{rng.randrange(max(0, i - 20), i)}" for _ in range(count)}
        if i in feeds:
            ups.add(feeds[i])
        graph[f"s{i}"] = sorted(ups)
    return graph


def source_names(graph: dict[str, list[str]]) -> list[str]:
    return sorted({u for ups in graph.values() for u in ups if u.startswith("src")})


def downstream(graph: dict[str, list[str]], source: str) -> set[str]:
    """The stages that must run again when ``source`` changes."""
    hit: set[str] = set()
    for stage, ups in graph.items():  # topological order: parents are decided first
        if any(u == source or u in hit for u in ups):
            hit.add(stage)
    return hit


def _sources(root: Path, graph: dict[str, list[str]]) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name in source_names(graph):
        (root / "data" / f"{name}.txt").write_text(f"{name} " + "x" * 80 + "\n")


def _git_init(root: Path) -> None:
    subprocess.run(["git", "init", "-q", str(root)], check=True)


def write_dvc(root: Path, graph: dict[str, list[str]], python: str = sys.executable) -> Path:
    """``stage.py``, the source files and ``dvc.yaml`` under ``root`` (no ``git``/``dvc init``)."""
    root.mkdir(parents=True, exist_ok=True)
    _sources(root, graph)
    (root / "stage.py").write_text(STAGE_SCRIPT)

    def path(node: str) -> str:
        return f"data/{node}.txt" if node.startswith("src") else f"out/{node}.txt"

    stages = {name: {"cmd": " ".join([python, "stage.py", name, path(name), *map(path, ups)]),
                     "deps": ["stage.py", *map(path, ups)], "outs": [path(name)]}
              for name, ups in graph.items()}
    spec = root / "dvc.yaml"
    spec.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return spec


def write_mlops(root: Path, graph: dict[str, list[str]]) -> Path:
    """``pipeline.py``, the source files and ``mlops.yaml`` under ``root`` (no ``git init``)."""
    root.mkdir(parents=True, exist_ok=True)
    _sources(root, graph)
    (root / "pipeline.py").write_text(TRANSFORM)
    datasets: dict[str, Any] = {name: {"path": f"data/{name}.txt"} for name in source_names(graph)}
    for name, ups in graph.items():
        datasets[name] = {"from": ups, "transform": "pipeline:step", "params": {"name": name},
                          "resources": {"cpus": 1}}
    spec = root / "mlops.yaml"
    spec.write_text(yaml.safe_dump({"apiVersion": "mlops/v1", "project": "dvcbench", "owners": ["team:bench"],
                                    "datasets": datasets}, sort_keys=False))
    return spec


# --- running both -----------------------------------------------------------------------------------


def ensure_dvc() -> float:
    """Install DVC into ``.venv-dvc`` when missing; the seconds it took (0 when it was there)."""
    if DVC.exists():
        return 0.0
    start = time.perf_counter()
    subprocess.run(["python3", "-m", "venv", str(DVC_VENV)], check=True)
    subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc"], check=True, capture_output=True)
    return time.perf_counter() - start


ENV = {**{k: v for k, v in os.environ.items() if k != "MLOPS_IDLE_STOP"},  # mlops' default: the warm driver on
       "DVC_NO_ANALYTICS": "1", "DVC_NO_UPDATER": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _timed(command: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def _mlops(spec: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "runtime.cli.main", "-f", str(spec), *args]


def _outputs(root: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in (root / "out").glob("*.txt")}


def _applied(stdout: str, expected: set[str]) -> None:
    import json

    outcomes = json.loads(stdout)["outcomes"]
    ran = {nid.split("/")[0].removeprefix("datasets.") for nid, o in outcomes.items()
           if o["status"] == "succeeded" and not nid.split("/")[0].removeprefix("datasets.").startswith("src")}
    failed = {nid: o for nid, o in outcomes.items() if o["status"] != "succeeded"}
    if failed or ran != expected:
        raise RuntimeError(f"mlops apply ran {len(ran)} stages, expected {len(expected)}; failed: {failed}")


def _dvc_prepare(root: Path) -> None:
    """The state ``dvc repro`` leaves, reached without it: run every stage's command, then ``dvc commit``."""
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():  # in topological order
        subprocess.run(stage["cmd"].split(), cwd=root, check=True)
    subprocess.run([str(DVC), "commit", "-f", "-q"], cwd=root, env=ENV, check=True, capture_output=True)


def _edit(roots: tuple[Path, Path], source: str, text: str) -> None:
    for root in roots:
        (root / "data" / f"{source}.txt").write_text(f"{source} {text} " + "y" * 80 + "\n")


def _dvc_incremental(root: Path, rerun: set[str]) -> float:
    before = _outputs(root)
    seconds, _ = _timed([str(DVC), "repro"], root)
    after = _outputs(root)
    if {name for name in after if after[name] != before.get(name)} != rerun:
        raise RuntimeError("dvc repro did not rerun exactly the stages downstream of the change")
    return seconds


def attempt(tmp: Path, stages: int, index: int, dvc_full: bool = True) -> dict[str, float]:
    """One full run, no-op check and incremental run of each tool on fresh repositories; mlops cold and warm.

    Without ``dvc_full`` DVC's repository is brought up to date by :func:`_dvc_prepare`, untimed.
    """
    graph = dag(stages)
    changed = source_names(graph)[-1]
    rerun = downstream(graph, changed)
    dvc_root, ours_root = tmp / f"dvc-{stages}-{index}", tmp / f"mlops-{stages}-{index}"
    write_dvc(dvc_root, graph)
    _git_init(dvc_root)
    subprocess.run([str(DVC), "init", "-q"], cwd=dvc_root, env=ENV, check=True)
    spec = write_mlops(ours_root, graph)
    _git_init(ours_root)
    apply = _mlops(spec, "--json", "apply", "--parallelism", "8", "--allow-dirty")
    down = _mlops(spec, "down")
    times: dict[str, float] = {}
    try:
        if dvc_full:
            times["dvc_full"], _ = _timed([str(DVC), "repro"], dvc_root)
        else:
            _dvc_prepare(dvc_root)
        if len(_outputs(dvc_root)) != stages:
            raise RuntimeError(f"dvc wrote {len(_outputs(dvc_root))} outputs, expected {stages}")
        times["mlops_full_cold"], out = _timed(apply, ours_root)  # starts the local cluster and the warm driver
        _applied(out, set(graph))

        times["dvc_noop"], out = _timed([str(DVC), "status"], dvc_root)
        if "up to date" not in out:
            raise RuntimeError(f"dvc status after repro:\n{out}")
        times["mlops_noop"], _ = _timed(_mlops(spec, "plan", "--detailed-exitcode"), ours_root)

        _edit((dvc_root, ours_root), changed, f"edit {index}")
        times["dvc_incremental"] = _dvc_incremental(dvc_root, rerun)
        times["mlops_incremental_warm"], out = _timed(apply, ours_root)
        _applied(out, rerun)

        with (ours_root / "pipeline.py").open("a") as code:  # new code for every stage: all of them run again
            code.write(f"# edit {index}\n")
        times["mlops_full_warm"], out = _timed(apply, ours_root)
        _applied(out, set(graph))

        _timed(down, ours_root)  # a cold machine again: no cluster, no warm driver
        _edit((dvc_root, ours_root), changed, f"again {index}")
        times["dvc_incremental_2"] = _dvc_incremental(dvc_root, rerun)
        times["mlops_incremental_cold"], out = _timed(apply, ours_root)
        _applied(out, rerun)
    finally:
        subprocess.run(down, cwd=ours_root, env=ENV, capture_output=True, timeout=120)
    return times


ROWS = (("full", "full_cold"), ("full", "full_warm"), ("noop", "noop"), ("incremental", "incremental_cold"),
        ("incremental", "incremental_warm"))
"""(DVC's measurement, mlops' measurement) of each row."""


def measure(tmp: Path, stages: int, repeat: int, dvc_full: bool | str = True) -> dict[str, Any]:
    """Medians over ``repeat`` attempts; ``dvc_full="once"`` times ``dvc repro`` from scratch in the first only."""
    runs = [attempt(tmp, stages, i, dvc_full is True or (dvc_full == "once" and i == 0)) for i in range(repeat)]
    for r in runs:  # both of DVC's incremental runs of an attempt are samples of the one row
        r["dvc_incremental"] = statistics.median([r["dvc_incremental"], r.pop("dvc_incremental_2")])
    medians: dict[str, float | None] = {key: statistics.median(r[key] for r in runs if key in r)
                                        for key in dict.fromkeys(k for r in runs for k in r)}
    medians.setdefault("dvc_full", None)
    result_full_runs = sum("dvc_full" in r for r in runs)
    graph = dag(stages)
    result: dict[str, Any] = {"stages": stages, "repeat": repeat, "dvc_full_runs": result_full_runs,
                              "rerun": len(downstream(graph, source_names(graph)[-1])), **medians}
    for theirs, ours in ROWS:
        dvc, mine = medians[f"dvc_{theirs}"], medians[f"mlops_{ours}"]
        result[f"{ours}_ratio"] = dvc / mine if dvc is not None and mine else None
    return result


FULL_500 = "DVC_BENCH_FULL_500"
"""Set to 1 to time ``dvc repro`` from scratch at 500 stages too, in the first attempt only (about 20 minutes
on 2 cores)."""


def run(repeat: int) -> dict[str, Any]:
    install = ensure_dvc()
    version = subprocess.run([str(DVC), "--version"], env=ENV, capture_output=True, text=True).stdout.strip()
    start = time.perf_counter()
    results: dict[str, Any] = {"dvc_version": version, "install_s": install, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="mlops-dvc-bench-") as name:
        for stages in SIZES:
            big = stages == max(SIZES)
            count = max(1, min(repeat, MOST_REPEATS[stages]))
            dvc_full: bool | str = not big or ("once" if os.environ.get(FULL_500) == "1" else False)
            results["sizes"].append(measure(Path(name), stages, count, dvc_full))
            print(f"  dvc bench: {stages} stages done at {time.perf_counter() - start:.0f} s", file=sys.stderr)
    results["wall_s"] = time.perf_counter() - start
    return results


def markdown(results: dict[str, Any]) -> str:
    def pair(size: dict[str, Any], theirs: str, ours: str) -> str:
        dvc, ratio = size[f"dvc_{theirs}"], size[f"{ours}_ratio"]
        if dvc is None:
            return f"not timed (set {FULL_500}=1) | {size[f'mlops_{ours}']:.2f} s | -"
        return f"{dvc:.2f} s | {size[f'mlops_{ours}']:.2f} s | {ratio:.2f}×"

    def met(ratio: float | None, target: float) -> str:
        return "-" if ratio is None else "yes" if ratio >= target else "NO"

    rows = ["| stages (repeats) | measurement | mlops | `dvc` | `mlops` | dvc / mlops | target | met |",
            "|---|---|---|---|---|---|---|---|"]
    for size in results["sizes"]:
        n = f"{size['stages']} ({size['repeat']})"
        rerun = f"{size['rerun']} stage{'s' if size['rerun'] != 1 else ''}"
        big = size["stages"] == max(SIZES)
        once = size.get("dvc_full_runs", size["repeat"])
        full = "full run" if once in (0, size["repeat"]) else f"full run (`dvc repro` timed {once}×)"
        names = {"full": f"{full}: `dvc repro` vs `mlops apply`", "noop": "no-op: `dvc status` vs `mlops plan`",
                 "incremental": f"one source changed, {rerun} rerun: `dvc repro` vs `mlops apply`"}
        for theirs, ours in ROWS:
            how = "cold" if ours.endswith("cold") else "warm" if ours.endswith("warm") else "either"
            target = NOOP_TARGET if theirs == "noop" and big else 1.0
            rows.append(f"| {n} | {names[theirs]} | {how} | {pair(size, theirs, ours)} | ≥ {target:.0f}× | "
                        f"{met(size[f'{ours}_ratio'], target)} |")
    notes = [f"DVC {results['dvc_version']}, git-backed repository; every command a fresh process; "
             "`mlops apply --parallelism 8 --allow-dirty` with the default settings: *cold* is the first apply "
             "after `mlops down` (it starts the local cluster and the warm driver), *warm* an apply while the warm "
             "driver is up (the full run after an edit of the stages' code: every stage runs again); "
             "`mlops plan` never starts anything. Both tools rerun exactly the stages downstream of the changed "
             "file (checked). Without "
             f"{FULL_500}=1, DVC's 500-stage repository is brought up to date untimed (stage commands, then "
             f"`dvc commit`); with it, `dvc repro` from scratch at 500 stages is timed in the first repeat only "
             f"(about 20 minutes). The whole bench took {results['wall_s']:.0f} s."]
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


if __name__ == "__main__":
    from bench.cli import main

    main(__doc__, run, markdown, repeat=3)
