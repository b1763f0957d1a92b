"""Crash soak: ``kill -9`` of ``mlops apply`` at random moments, then check that the next apply repairs everything.

    python bench/soak.py [--trials 20] [--seed 7] [--models 4] [--json OUT] [--keep]

One small project (a snapshot, a transform, ``--models`` trainings of a torch model, a gate) lives in a
temporary git-less repository for the whole soak, so its state, artifact store and audit trail grow
over every trial. It is applied once in full. Then each trial:

1. changes the spec so that there is work (a new transform param: everything downstream retrains; or a
   new param for some of the models);
2. starts ``mlops apply`` in its own session (it starts its own embedded Ray) and, at a random moment
   (:func:`kill_moment`: in its first seconds, or once a random number of its tasks have started or
   finished), SIGKILLs the whole session: the CLI, Ray's GCS, raylet, workers, agents;
3. records which (node, fingerprint) pairs had finished (a succeeded run or a succeeded node result);
4. runs ``mlops apply`` again to completion, and checks:

   * it exits 0 and ``mlops plan --detailed-exitcode`` then exits 0 (nothing left to do: converged);
   * no run or node result of a pair that had finished was made again (nothing finished is redone),
     and no model has two versions with one fingerprint;
   * every object in the artifact store hashes to its name, and every artifact the state names exists
     and verifies (nothing half-written);
   * no run is left ``running``; ``mlops audit verify`` exits 0.

It prints a table with one row per trial and a summary; ``--json`` writes the rows too. Exit status 1
when any check failed in any trial. An apply that had already exited when its kill moment came is
reported, checked, and not counted: trials go on until ``--trials`` applies were killed while running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.artifacts.store import ArtifactCorrupt, ArtifactError, ArtifactStore  # noqa: E402
from runtime.compute.cluster import members  # noqa: E402
from runtime.state.store import StateStore  # noqa: E402

PIPELINE = '''
import time

import torch

from runtime.context import TrainResult


def build_features(ctx):
    time.sleep(float(ctx.params.get("sleep", 0)))
    for name, path in ctx.inputs.items():
        (ctx.output_dir / f"{name}.csv").write_bytes(path.read_bytes())


def train(ctx):
    torch.manual_seed(ctx.seed)
    for step in range(4):
        time.sleep(float(ctx.params.get("sleep", 0)) / 4)
        ctx.log_metric("loss", 1.0 / (step + 1))
    weight = torch.randn(64, 64)
    return TrainResult(model={"weight": weight, "round": torch.tensor(float(ctx.params["round"]))},
                       metrics={"auc": 0.9})
'''
DATA = "x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(500))


@dataclass
class Trial:
    """One kill and its recovery."""

    trial: int
    change: str
    moment: str
    """What the apply was doing when it was killed (see :func:`kill_moment`)."""
    kill_after_s: float
    alive_at_kill: bool
    finished_by_killed: int
    """Nodes (at their new fingerprints) the killed apply had finished before it was killed."""
    running_at_kill: int
    recovery_exit: int
    recovery_s: float
    plan_exit: int
    redone: list[str] = field(default_factory=list)
    duplicate_versions: list[str] = field(default_factory=list)
    objects: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    temp_files: int = 0
    left_running: int = 0
    audit_exit: int = 0
    audit: str = ""

    @property
    def ok(self) -> bool:
        return (self.recovery_exit == 0 and self.plan_exit == 0 and not self.redone and not self.duplicate_versions
                and not self.corrupt and not self.missing and self.left_running == 0 and self.audit_exit == 0)


# --- the project ------------------------------------------------------------------------------------------


def spec(models: int, transform_round: int, model_rounds: list[int]) -> dict[str, Any]:
    return {
        "apiVersion": "mlops/v1", "project": "soak",
        "datasets": {"raw": {"path": "data/raw.csv"},
                     "features": {"from": ["raw"], "transform": "pipeline:build_features",
                                  "params": {"sleep": 1.0, "round": transform_round}}},
        "models": {f"m{i}": {"train": "pipeline:train", "data": {"train": "features"}, "seed": i,
                             "params": {"sleep": 1.5, "round": model_rounds[i]}, "resources": {"cpus": 1}}
                   for i in range(models)},
        "gates": {"quality": {"model": "m0", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]}},
    }


def write_spec(root: Path, body: dict[str, Any]) -> None:
    (root / "mlops.yaml").write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")


def make_project(root: Path, models: int) -> None:
    (root / "data").mkdir(parents=True)
    (root / "data" / "raw.csv").write_text(DATA, encoding="utf-8")
    (root / "pipeline.py").write_text(PIPELINE, encoding="utf-8")
    write_spec(root, spec(models, 0, [0] * models))


# --- processes --------------------------------------------------------------------------------------------


def env() -> dict[str, str]:
    """No Ray settings from outside: each apply starts its own embedded Ray and never joins another."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**clean, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def mlops(root: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", "-f", str(root / "mlops.yaml"), *args],
                          cwd=root, env=env(), capture_output=True, text=True, timeout=timeout)



def kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the apply, then everything left in its session (Ray's agents outlive their driver)."""
    if process.poll() is None:
        process.kill()
    process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while (left := members(process.pid)) and time.time() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if members(process.pid):
        raise RuntimeError(f"processes of the killed apply {process.pid} outlived it")


# --- the state, read directly -----------------------------------------------------------------------------


def rows(root: Path, sql: str) -> list[tuple[Any, ...]]:
    path = root / ".mlops" / "state.db"
    if not path.exists():
        return []
    connection = sqlite3.connect(path, timeout=30)
    try:
        return connection.execute(sql).fetchall()
    except sqlite3.OperationalError:  # no tables yet: killed before the first migration committed
        return []
    finally:
        connection.close()


def finished_pairs(root: Path) -> set[tuple[str, str]]:
    """(node id, fingerprint) of every succeeded run and succeeded node result."""
    succeeded = "SELECT node_id, fingerprint FROM {} WHERE status = 'succeeded'"
    return {(node, fingerprint) for table in ("runs", "node_results")
            for node, fingerprint in rows(root, succeeded.format(table))}


def counts(root: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(node id, fingerprint) -> (runs, succeeded node results)."""
    runs: dict[tuple[str, str], int] = {}
    for node, fingerprint, n in rows(root, "SELECT node_id, fingerprint, COUNT(*) FROM runs GROUP BY 1, 2"):
        runs[(node, fingerprint)] = n
    results: dict[tuple[str, str], int] = {}
    for node, fingerprint, n in rows(root, "SELECT node_id, fingerprint, COUNT(*) FROM node_results "
                                           "WHERE status = 'succeeded' GROUP BY 1, 2"):
        results[(node, fingerprint)] = n
    return {key: (runs.get(key, 0), results.get(key, 0)) for key in runs.keys() | results.keys()}


def check_store(root: Path, trial: Trial) -> None:
    store = ArtifactStore(root / ".mlops" / "artifacts")
    objects = root / ".mlops" / "artifacts" / "objects"
    stored = list(objects.glob("??/*"))
    trial.objects = len(stored)
    trial.temp_files = len(list(objects.glob(".tmp-*")))
    for path in stored:
        try:
            store.verify(f"sha256:{path.parent.name}{path.name}")
        except ArtifactCorrupt:
            trial.corrupt.append(path.parent.name + path.name)
    state = StateStore.open(root / ".mlops" / "state.db")
    try:
        named = state.named_artifacts()
    finally:
        state.close()
    for uri in sorted(named):
        try:
            if not store.exists(uri):
                trial.missing.append(uri)
            else:
                store.verify(uri)
        except ArtifactCorrupt:
            trial.corrupt.append(uri)
        except ArtifactError as error:
            trial.missing.append(f"{uri}: {error}")


# --- the soak ---------------------------------------------------------------------------------------------


def run_counts(root: Path) -> tuple[int, int]:
    """(runs started, runs succeeded) so far."""
    found = rows(root, "SELECT COUNT(*), COALESCE(SUM(status = 'succeeded'), 0) FROM runs")
    return (int(found[0][0]), int(found[0][1])) if found else (0, 0)


def kill_moment(root: Path, process: subprocess.Popen[bytes], rng: random.Random, remote: int,
                before: tuple[int, int]) -> str:
    """Wait for a random moment of the apply and say what it was; the caller kills it then.

    One kill in five comes in the first 4 s (migrations, the snapshot, Ray starting, planning); two in five
    once ``k`` of this apply's ``remote`` tasks have started (``k`` in 1..remote), plus up to 1.5 s: mid-task;
    two in five once ``k`` of them have finished (``k`` in 1..remote-1), plus up to 0.5 s: with finished
    work behind it and some still to do.
    """
    draw = rng.random()
    if draw < 0.2 or (draw >= 0.6 and remote < 2):
        delay = rng.uniform(0.0, 4.0)
        time.sleep(delay)
        return f"{delay:.1f} s in"
    finishing = draw >= 0.6
    k = rng.randint(1, remote - 1) if finishing else rng.randint(1, remote)
    which = 1 if finishing else 0
    deadline = time.time() + 600
    while process.poll() is None and time.time() < deadline:
        if run_counts(root)[which] - before[which] >= k:
            break
        time.sleep(0.05)
    extra = rng.uniform(0.0, 0.5 if finishing else 1.5)
    time.sleep(extra)
    return f"{k}/{remote} tasks {'done' if finishing else 'started'} +{extra:.1f} s"


def run_trial(root: Path, number: int, models: int, rounds: dict[str, Any], rng: random.Random) -> Trial:
    if rng.random() < 0.4:
        rounds["transform"] += 1
        change, remote = "transform: all", 1 + models
    else:
        chosen = sorted(rng.sample(range(models), rng.randint(1, models)))
        for i in chosen:
            rounds["models"][i] += 1
        change, remote = "models " + ",".join(f"m{i}" for i in chosen), len(chosen)
    write_spec(root, spec(models, rounds["transform"], rounds["models"]))
    finished_before = finished_pairs(root)
    before_runs = run_counts(root)

    logs = root.parent / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"{number}.out").open("wb") as out, (logs / f"{number}.err").open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "-f", str(root / "mlops.yaml"),
                                    "apply"], cwd=root, env=env(), stdout=out, stderr=err, start_new_session=True)
        moment = kill_moment(root, process, rng, remote, before_runs)
        alive = process.poll() is None
        killed_at = time.perf_counter() - started
        kill_session(process)
    finished = finished_pairs(root)
    before = counts(root)
    running = rows(root, "SELECT COUNT(*) FROM runs WHERE status = 'running'")

    began = time.perf_counter()
    recovery = mlops(root, "apply")
    recovery_s = time.perf_counter() - began
    plan = mlops(root, "plan", "--detailed-exitcode")
    trial = Trial(number, change, moment if alive else f"{moment} (had already exited)", round(killed_at, 2),
                  alive, len(finished - finished_before), running[0][0] if running else 0, recovery.returncode,
                  round(recovery_s, 1), plan.returncode)
    if recovery.returncode != 0:
        print(f"trial {number}: the recovery apply failed:\n{(recovery.stdout + recovery.stderr)[-3000:]}",
              file=sys.stderr)
    after = counts(root)
    trial.redone = sorted(f"{node}@{fp[:12]}: {before.get((node, fp))} -> {after.get((node, fp))}"
                          for node, fp in finished if after.get((node, fp)) != before.get((node, fp)))
    trial.duplicate_versions = [f"{m}@{fp[:12]} x{n}" for m, fp, n in
                                rows(root, "SELECT model, fingerprint, COUNT(*) FROM model_versions "
                                           "GROUP BY 1, 2 HAVING COUNT(*) > 1")]
    check_store(root, trial)
    trial.left_running = rows(root, "SELECT COUNT(*) FROM runs WHERE status = 'running'")[0][0]
    audit = mlops(root, "audit", "verify")
    trial.audit_exit, trial.audit = audit.returncode, (audit.stdout + audit.stderr).strip()
    return trial


def table(trials: list[Trial]) -> str:
    head = ("| # | change | killed (after) | nodes it had finished | runs in flight | recovery apply | "
            "plan after | finished re-run | objects | corrupt / missing | tmp files | audit verify |")
    lines = [head, "|" + "---|" * 12]
    for t in trials:
        lines.append(
            f"| {t.trial} | {t.change} | {t.moment} ({t.kill_after_s:.1f} s) | {t.finished_by_killed} | "
            f"{t.running_at_kill} | exit {t.recovery_exit}, {t.recovery_s:.1f} s | "
            f"{'no changes' if t.plan_exit == 0 else f'exit {t.plan_exit}'} | {len(t.redone)} | {t.objects} | "
            f"{len(t.corrupt)} / {len(t.missing)} | {t.temp_files} | "
            f"{'ok' if t.audit_exit == 0 else 'FAILED'} |")
    return "\n".join(lines)


def summary(trials: list[Trial]) -> str:
    n = len(trials)
    return (f"{sum(t.alive_at_kill for t in trials)}/{n} applies killed while running "
            f"({sum(t.running_at_kill > 0 for t in trials)} with tasks in flight, "
            f"{sum(t.finished_by_killed > 0 for t in trials)} after finishing some of their nodes); "
            f"{sum(t.recovery_exit == 0 and t.plan_exit == 0 for t in trials)}/{n} converged on the next apply "
            f"(plan: no changes); {sum(len(t.redone) for t in trials)} finished nodes re-run; "
            f"{sum(len(t.duplicate_versions) for t in trials)} duplicate model versions; "
            f"{sum(len(t.corrupt) for t in trials)} corrupt and {sum(len(t.missing) for t in trials)} missing "
            f"artifacts; {sum(t.left_running for t in trials)} runs left running; "
            f"audit verify ok {sum(t.audit_exit == 0 for t in trials)}/{n}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None, help="Write the trials as JSON here.")
    parser.add_argument("--keep", action="store_true", help="Keep the project directory (its path is printed).")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="mlops-soak-"))
    root = work / "project"
    make_project(root, args.models)
    try:
        started = time.perf_counter()
        first = mlops(root, "apply")
        full_s = time.perf_counter() - started
        if first.returncode != 0:
            print((first.stdout + first.stderr)[-3000:], file=sys.stderr)
            return 1
        print(f"first full apply: {full_s:.1f} s; seed {args.seed}", flush=True)
        rounds: dict[str, Any] = {"transform": 0, "models": [0] * args.models}
        trials: list[Trial] = []
        number = 0
        while sum(t.alive_at_kill for t in trials) < args.trials and number < 2 * args.trials:
            number += 1  # an apply that had exited before its kill moment is not a kill: draw another
            trial = run_trial(root, number, args.models, rounds, rng)
            trials.append(trial)
            print(f"trial {number}: {trial.change}, killed {trial.moment} ({trial.kill_after_s:.1f} s), "
                  f"{trial.finished_by_killed} finished, {trial.running_at_kill} in flight -> "
                  f"{'ok' if trial.ok else 'FAILED'}", flush=True)
        print()
        print(table(trials))
        print()
        print(summary(trials))
        if args.json:
            args.json.write_text(json.dumps({"seed": args.seed, "full_apply_s": full_s, "summary": summary(trials),
                                             "trials": [asdict(t) | {"ok": t.ok} for t in trials]}, indent=2))
        for trial in trials:
            for problem in trial.redone + trial.duplicate_versions + trial.corrupt + trial.missing:
                print(f"trial {trial.trial}: {problem}", file=sys.stderr)
        return 0 if all(t.ok for t in trials) and sum(t.alive_at_kill for t in trials) >= args.trials else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
