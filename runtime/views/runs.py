"""The runs view behind ``mlops runs list|show|compare``: runs, one run's metric history and log, and runs
side by side.

An unknown run id or resource raises :class:`~compiler.errors.MlopsError` with a did-you-mean; a run is
named by its id or an unambiguous prefix of it (like a git hash)::

    runs = list_runs(project, store, address="models.churn", limit=10)
    detail = run_detail(store, ArtifactStore(workspace.artifact_root), runs[0].run_id)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from compiler.errors import MlopsError
from compiler.resolve import Project
from compiler.suggest import did_you_mean
from runtime.artifacts.store import ArtifactStore
from runtime.errors import ViewError
from runtime.state.records import MetricPoint, Run
from runtime.state.store import StateStore

LOG_LIMIT_BYTES = 1 << 20
"""``runs show`` prints at most the last MiB of a run's log."""


def run_json(run: Run) -> dict[str, Any]:
    """A run as JSON, with its ``duration``."""
    out = asdict(run)
    out["duration"] = duration(run)
    return out


def duration(run: Run) -> float | None:
    """Seconds the run took (``None`` while it runs)."""
    return None if run.finished_at is None else max(0.0, run.finished_at - run.started_at)


def resolve_run_id(store: StateStore, text: str) -> str:
    """The run id ``text`` names: the id itself or an unambiguous prefix of one (like a git hash)."""
    if store.get_run(text) is not None:
        return text
    matches = store.run_ids_starting_with(text) if text else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ViewError.one(f"run id prefix '{text}' is ambiguous: it matches {', '.join(matches[:5])}"
                             f"{' ...' if len(matches) > 5 else ''}")
    raise ViewError.one(f"unknown run '{text}'{did_you_mean(text, store.run_ids())}")


def _check_address(project: Project, store: StateStore, address: str) -> None:
    """Refuse an address neither the spec nor any recorded run knows."""
    if address in project.views or store.has_runs_of(address):
        return
    known = set(project.addresses()) | store.run_addresses()
    raise ViewError.one(f"unknown resource '{address}'{did_you_mean(address, sorted(known))}")


def list_runs(project: Project, store: StateStore, address: str | None = None, limit: int = 50) -> list[Run]:
    """The newest runs first, optionally of one resource (``models.churn``, ``datasets.features``)."""
    if address is not None:
        _check_address(project, store, address)
    return store.list_runs(address, limit)


@dataclass
class RunDetail:
    """One run with its metric history and (unless skipped) its log text."""

    run: Run
    history: dict[str, list[MetricPoint]]
    """Metric name -> its values by step."""
    log: str | None = None
    log_problem: str | None = None
    """Why the log could not be shown (no log recorded, artifact missing or corrupt)."""

    def to_json(self) -> dict[str, Any]:
        return {"run": run_json(self.run),
                "history": {name: [[p.step, p.value] for p in points] for name, points in self.history.items()},
                "log": self.log, "log_problem": self.log_problem}


def run_detail(store: StateStore, artifacts: ArtifactStore | None, run_id: str) -> RunDetail:
    """A run (by id or unique prefix) with its metric history; its log when ``artifacts`` is given."""
    run = store.get_run(resolve_run_id(store, run_id))
    assert run is not None
    history: dict[str, list[MetricPoint]] = {}
    for point in store.metric_history(run.run_id):
        history.setdefault(point.name, []).append(point)
    detail = RunDetail(run, history)
    if artifacts is not None:
        detail.log, detail.log_problem = _read_log(artifacts, run)
    return detail


def _read_log(artifacts: ArtifactStore, run: Run) -> tuple[str | None, str | None]:
    if not run.log_uri:
        return None, "no log was recorded (the run has not finished)" if run.finished_at is None else "no log"
    try:
        data = artifacts.read_bytes(run.log_uri)
    except (MlopsError, OSError) as exc:
        return None, f"log {run.log_uri} cannot be read: {exc}"
    if len(data) > LOG_LIMIT_BYTES:
        data = b"[... earlier output cut ...]\n" + data[-LOG_LIMIT_BYTES:]
    return data.decode("utf-8", errors="replace"), None


@dataclass
class CompareRow:
    key: str
    values: list[Any]
    """One value per compared run (``None`` where the run has no such key)."""

    @property
    def differs(self) -> bool:
        first = json.dumps(self.values[0], sort_keys=True)
        return any(json.dumps(v, sort_keys=True) != first for v in self.values[1:])

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "values": self.values, "differs": self.differs}


@dataclass
class RunComparison:
    runs: list[Run]
    params: list[CompareRow]
    metrics: list[CompareRow]

    def to_json(self) -> dict[str, Any]:
        return {"runs": [run_json(r) for r in self.runs], "params": [r.to_json() for r in self.params],
                "metrics": [r.to_json() for r in self.metrics]}


def compare_runs(store: StateStore, run_ids: list[str]) -> RunComparison:
    """Params and final metrics of two or more runs side by side."""
    if len(run_ids) < 2:
        raise ViewError.one("runs compare needs at least two run ids")
    runs = []
    for text in run_ids:
        run = store.get_run(resolve_run_id(store, text))
        assert run is not None
        runs.append(run)

    def rows(values: list[dict[str, Any]]) -> list[CompareRow]:
        keys = sorted({key for value in values for key in value})
        return [CompareRow(key, [value.get(key) for value in values]) for key in keys]

    return RunComparison(runs, rows([r.params for r in runs]), rows([dict(r.metrics) for r in runs]))
