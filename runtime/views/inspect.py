"""Read-only views of what the runtime recorded: runs, the model registry, lineage and the audit trail.

The queries behind ``mlops runs|models|lineage|audit`` (and ``force-unlock``). Each takes an open
:class:`~runtime.state.store.StateStore` (and the :class:`~compiler.resolve.Project` where the spec
matters) and returns a small dataclass with ``to_json()``; the CLI only renders them. Unknown run ids,
models, versions and addresses raise :class:`~compiler.errors.MlopsError` with a did-you-mean::

    with opened(project) as (workspace, store):
        runs = list_runs(store, address="models.churn", limit=10)
        detail = run_detail(store, ArtifactStore(workspace.artifact_root), runs[0].run_id)
        tree = lineage(project, store, "models.churn@1")
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from compiler.errors import MlopsError
from compiler.resolve import Project
from compiler.suggest import did_you_mean
from runtime.artifacts.store import ArtifactStore
from runtime.state import audit
from runtime.state.records import (
    Approval,
    AuditRecord,
    DeploymentState,
    GateDecision,
    LockInfo,
    MetricPoint,
    ModelVersion,
    Run,
    Snapshot,
)
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


# --- runs ----------------------------------------------------------------------------------------


def resolve_run_id(store: StateStore, text: str) -> str:
    """The run id ``text`` names: the id itself or an unambiguous prefix of one (like a git hash)."""
    if store.get_run(text) is not None:
        return text
    matches = [str(row[0]) for row in store.query("SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ?"
                                                  " ORDER BY run_id", (len(text), text))] if text else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise MlopsError.one(f"run id prefix '{text}' is ambiguous: it matches {', '.join(matches[:5])}"
                             f"{' ...' if len(matches) > 5 else ''}")
    known = [str(row[0]) for row in store.query("SELECT run_id FROM runs")]
    raise MlopsError.one(f"unknown run '{text}'{did_you_mean(text, known)}")


def _check_address(project: Project, store: StateStore, address: str) -> None:
    """Refuse an address neither the spec nor any recorded run knows."""
    if address in project.views or store.query("SELECT 1 FROM runs WHERE address = ? LIMIT 1", (address,)):
        return
    known = set(project.addresses()) | {str(r[0]) for r in store.query("SELECT DISTINCT address FROM runs")}
    raise MlopsError.one(f"unknown resource '{address}'{did_you_mean(address, sorted(known))}")


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
        raise MlopsError.one("runs compare needs at least two run ids")
    runs = []
    for text in run_ids:
        run = store.get_run(resolve_run_id(store, text))
        assert run is not None
        runs.append(run)

    def rows(values: list[dict[str, Any]]) -> list[CompareRow]:
        keys = sorted({key for value in values for key in value})
        return [CompareRow(key, [value.get(key) for value in values]) for key in keys]

    return RunComparison(runs, rows([r.params for r in runs]), rows([dict(r.metrics) for r in runs]))


# --- models --------------------------------------------------------------------------------------


def _model_name(project: Project, store: StateStore, text: str) -> str:
    """``churn`` or ``models.churn`` -> ``churn``; a model neither the spec nor the state knows is an error."""
    name = text.removeprefix("models.")
    known = sorted(set(project.spec.models) | set(store.models()))
    if name not in known:
        prefix = "models." if text.startswith("models.") else ""
        raise MlopsError.one(f"unknown model '{text}'{did_you_mean(text, [prefix + k for k in known])}")
    return name


@dataclass
class ModelSummary:
    name: str
    in_spec: bool
    versions: int
    newest: ModelVersion | None
    deployments: list[DeploymentState]
    """The deployments serving this model (desired and live versions)."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": f"models.{self.name}", "in_spec": self.in_spec,
                "versions": self.versions, "newest": asdict(self.newest) if self.newest else None,
                "deployments": [asdict(d) for d in self.deployments]}


def list_models(project: Project, store: StateStore) -> list[ModelSummary]:
    """Every model of the spec or the state, with its newest version and where it is deployed."""
    deployments = store.deployments()
    out = []
    for name in sorted(set(project.spec.models) | set(store.models())):
        versions = store.model_versions(name)
        out.append(ModelSummary(name, name in project.spec.models, len(versions), versions[-1] if versions else None,
                                [d for d in deployments if d.model == name]))
    return out


@dataclass
class VersionDetail:
    version: ModelVersion
    decisions: list[GateDecision] = field(default_factory=list)
    """Every gate decision on this version, oldest first."""
    approvals: list[Approval] = field(default_factory=list)
    desired_in: list[str] = field(default_factory=list)
    """Deployments whose desired version this is."""
    live_in: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": asdict(self.version), "gate_decisions": [asdict(d) for d in self.decisions],
                "approvals": [asdict(a) for a in self.approvals], "desired_in": self.desired_in,
                "live_in": self.live_in}


@dataclass
class ModelDetail:
    name: str
    versions: list[VersionDetail]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": f"models.{self.name}", "versions": [v.to_json() for v in self.versions]}


def show_model(project: Project, store: StateStore, text: str, version: int | None = None) -> ModelDetail:
    """A model's versions (or one of them) with status, reason, gate decisions, approvals and deployments."""
    name = _model_name(project, store, text)
    versions = store.model_versions(name)
    if version is not None:
        versions = [v for v in versions if v.version == version]
        if not versions:
            raise MlopsError.one(no_version(name, version, store))
    deployments = [d for d in store.deployments() if d.model == name]
    details = []
    for v in versions:
        decisions = store.gate_decisions(name, v.version)
        gates = sorted({str(r[0]) for r in store.query(
            "SELECT DISTINCT gate FROM approvals WHERE model = ? AND version = ?", (name, v.version))})
        approvals = [a for gate in gates for a in store.approvals(gate, name, v.version)]
        details.append(VersionDetail(v, decisions, approvals,
                                     [d.name for d in deployments if d.desired_version == v.version],
                                     [d.name for d in deployments if d.live_version == v.version]))
    return ModelDetail(name, details)


def no_version(name: str, version: int, store: StateStore) -> str:
    numbers = [str(v.version) for v in store.model_versions(name)]
    have = f"versions: {', '.join(numbers)}" if numbers else "it has no versions yet"
    return f"models.{name} has no version {version} ({have})"


# --- lineage -------------------------------------------------------------------------------------


@dataclass
class DataLineage:
    """A dataset as a model version (or another dataset) saw it, and what it was made from."""

    address: str
    content_hash: str | None
    """The content's sha256 (for a derived dataset, the hash of its stored output directory)."""
    artifact_uri: str | None = None
    fingerprint: str | None = None
    created_at: float | None = None
    run_id: str | None = None
    """The transform run that made it (derived datasets)."""
    upstream: list[DataLineage] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "content_hash": self.content_hash, "artifact_uri": self.artifact_uri,
                "fingerprint": self.fingerprint, "created_at": self.created_at, "run_id": self.run_id,
                "upstream": [u.to_json() for u in self.upstream]}

    def walk(self) -> list[DataLineage]:
        """This node and everything upstream of it."""
        return [self, *(node for parent in self.upstream for node in parent.walk())]


@dataclass
class ModelLineage:
    address: str
    version: ModelVersion
    run: Run | None
    data: list[DataLineage]
    """What the version was trained on, as recorded, back to the source snapshots."""
    upstream_datasets: list[str] = field(default_factory=list)
    """Every dataset the model reads, transitively, per the spec's graph now."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": "model", "address": self.address, "version": self.version.version,
                "status": self.version.status, "reason": self.version.reason, "params": self.version.params,
                "metrics": self.version.metrics, "code_hash": self.version.code_hash,
                "git_commit": self.version.git_commit, "fingerprint": self.version.fingerprint,
                "artifact_uri": self.version.artifact_uri, "created_at": self.version.created_at,
                "run": run_json(self.run) if self.run else None,
                "data": {d.address: d.content_hash for d in self.data},
                "datasets": [d.to_json() for d in self.data], "upstream_datasets": self.upstream_datasets}


@dataclass
class DatasetSnapshot:
    number: int
    """1, 2, ... in the order the snapshots were made (what ``datasets.x@N`` names)."""
    lineage: DataLineage
    used_by: list[str]
    """Model versions (``models.churn@1``) whose lineage includes this snapshot."""

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, **self.lineage.to_json(), "used_by": self.used_by}


@dataclass
class DatasetLineage:
    address: str
    source: str | None
    """The source path, ``None`` for a derived dataset."""
    transform: str | None
    upstream: list[str]
    """Every dataset it derives from, per the spec's graph."""
    consumers: list[str]
    snapshots: list[DatasetSnapshot]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "dataset", "address": self.address, "source": self.source, "transform": self.transform,
                "upstream": self.upstream, "consumers": self.consumers,
                "snapshots": [s.to_json() for s in self.snapshots]}


def parse_target(text: str) -> tuple[str, int | None]:
    """``models.churn@3`` -> ``("models.churn", 3)``; ``datasets.x`` -> ``("datasets.x", None)``."""
    address, at, number = text.partition("@")
    if not at:
        return address, None
    if not number.isdigit() or int(number) < 1:
        raise MlopsError.one(f"'{text}': expected ADDRESS@N with N a version number (1, 2, ...)")
    return address, int(number)


def lineage(project: Project, store: StateStore, target: str) -> ModelLineage | DatasetLineage:
    """Where ``models.NAME[@N]`` (the newest version without ``@N``) or ``datasets.NAME[@N]`` came from."""
    address, number = parse_target(target)
    section, _, name = address.partition(".")
    if section == "models" and name:
        return _model_lineage(project, store, _model_name(project, store, address), number)
    if section == "datasets" and name:
        if name not in project.spec.datasets and not _dataset_recorded(store, address):
            known = [f"datasets.{n}" for n in project.spec.datasets]
            raise MlopsError.one(f"unknown dataset '{address}'{did_you_mean(address, known)}")
        return _dataset_lineage(project, store, address, number)
    candidates = [a for a in project.addresses() if a.startswith(("models.", "datasets."))]
    hint = did_you_mean(address, candidates)
    if not hint:
        named = [a for a in candidates if a.partition(".")[2] == address]
        hint = f" (did you mean '{named[0]}'?)" if named else ""
    if address in project.views:
        raise MlopsError.one(f"'{address}': lineage covers models and datasets only")
    raise MlopsError.one(f"unknown address '{address}'{hint}")


def _model_lineage(project: Project, store: StateStore, name: str, number: int | None) -> ModelLineage:
    versions = store.model_versions(name)
    if number is None:
        if not versions:
            raise MlopsError.one(f"models.{name} has no versions yet: run `mlops apply`")
        version = versions[-1]
    else:
        found = store.get_model_version(name, number)
        if found is None:
            raise MlopsError.one(no_version(name, number, store))
        version = found
    run = store.get_run(version.run_id) if version.run_id else None
    data = [_data_lineage(project, store, address, value) for address, value in sorted(version.data.items())]
    refs = project.views.get(f"models.{name}", {}).get("refs", {})
    return ModelLineage(f"models.{name}", version, run, data, list(refs.get("datasets", [])))


def _digest(value: str) -> str:
    """The hex digest in a content hash or an artifact URI."""
    return value.rsplit(":", 1)[-1]


def _results(store: StateStore, address: str) -> list[dict[str, Any]]:
    """A dataset's succeeded node results, oldest first (fingerprint, outputs, upstream, run, time)."""
    rows = store.query("SELECT node_id, kind, fingerprint, outputs, upstream, run_id, finished_at FROM node_results"
                       " WHERE address = ? AND status = 'succeeded' ORDER BY id", (address,))
    return [{"node_id": r["node_id"], "kind": r["kind"], "fingerprint": r["fingerprint"],
             "outputs": json.loads(r["outputs"]), "upstream": json.loads(r["upstream"]), "run_id": r["run_id"],
             "finished_at": r["finished_at"]} for r in rows]


def _dataset_recorded(store: StateStore, address: str) -> bool:
    return bool(store.snapshots(address) or _results(store, address))


def _data_lineage(project: Project, store: StateStore, address: str, value: str | None,
                  fingerprint: str | None = None) -> DataLineage:
    """The recorded lineage of one dataset content (by content hash / artifact URI, or by fingerprint)."""
    for snapshot in reversed(store.snapshots(address)):
        if (value is not None and _digest(value) == snapshot.content_hash) or \
                (value is None and fingerprint == snapshot.fingerprint):
            return _from_snapshot(snapshot)
    for result in reversed(_results(store, address)):
        artifact = result["outputs"].get("artifact")
        if result["kind"] == "transform" and ((value is not None and artifact == value) or
                                              (value is None and fingerprint == result["fingerprint"])):
            return _from_transform(project, store, address, result)
    upstream = [_data_lineage(project, store, f"datasets.{parent}", None)
                for parent in _spec_parents(project, address)]
    return DataLineage(address, _digest(value) if value else None, upstream=upstream)


def _spec_parents(project: Project, address: str) -> list[str]:
    dataset = project.spec.datasets.get(address.partition(".")[2])
    return list(dataset.from_ or []) if dataset else []


def _from_snapshot(snapshot: Snapshot) -> DataLineage:
    return DataLineage(snapshot.address, snapshot.content_hash, snapshot.artifact_uri, snapshot.fingerprint,
                       snapshot.created_at)


def _from_transform(project: Project, store: StateStore, address: str, result: dict[str, Any]) -> DataLineage:
    artifact = result["outputs"].get("artifact")
    upstream = [_data_lineage(project, store, node_id.partition("/")[0], None, fingerprint)
                for node_id, fingerprint in sorted(result["upstream"].items())]
    return DataLineage(address, _digest(artifact) if artifact else None, artifact, result["fingerprint"],
                       result["finished_at"], result["run_id"], upstream)


def _dataset_lineage(project: Project, store: StateStore, address: str, number: int | None) -> DatasetLineage:
    name = address.partition(".")[2]
    dataset = project.spec.datasets.get(name)
    snapshots = [_from_snapshot(s) for s in store.snapshots(address)]
    seen: set[str | None] = set()
    for result in _results(store, address):
        if result["kind"] == "transform" and result["outputs"].get("artifact") not in seen:
            seen.add(result["outputs"].get("artifact"))
            snapshots.append(_from_transform(project, store, address, result))
    snapshots.sort(key=lambda s: s.created_at or 0.0)
    users = _users(project, store)
    numbered = [DatasetSnapshot(i, s, users.get((address, s.content_hash), []))
                for i, s in enumerate(snapshots, 1)]
    if number is not None:
        if not 1 <= number <= len(numbered):
            have = f"it has {len(numbered)}" if numbered else "it has none yet"
            raise MlopsError.one(f"{address} has no snapshot {number} ({have})")
        numbered = [numbered[number - 1]]
    view = project.views.get(address, {})
    refs = view.get("refs", {})
    return DatasetLineage(address, dataset.path if dataset else None, dataset.transform if dataset else None,
                          list(refs.get("upstream", [])), list(refs.get("consumers", [])), numbered)


def _users(project: Project, store: StateStore) -> dict[tuple[str, str | None], list[str]]:
    """(dataset address, content hash) -> the model versions whose lineage includes it."""
    users: dict[tuple[str, str | None], list[str]] = {}
    for name in store.models():
        for version in store.model_versions(name):
            label = f"models.{name}@{version.version}"
            for address, value in sorted(version.data.items()):
                for node in _data_lineage(project, store, address, value).walk():
                    entry = users.setdefault((node.address, node.content_hash), [])
                    if label not in entry:
                        entry.append(label)
    return users


# --- audit and lock ------------------------------------------------------------------------------


@dataclass
class AuditCheck:
    records: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "problems": self.problems}


def audit_log(store: StateStore, limit: int | None = None) -> list[AuditRecord]:
    """The audit records, oldest first (the newest ``limit`` with a limit)."""
    return audit.log(store, limit)


def verify_audit(store: StateStore) -> AuditCheck:
    """Check the hash chain and its anchors; every problem found, one line each."""
    problems = audit.verify(store)
    try:
        count = int(store.query("SELECT COUNT(*) FROM audit")[0][0])
    except sqlite3.DatabaseError:  # a corrupt database: verify said so
        count = 0
    return AuditCheck(count, problems)


def force_unlock(project: Project, lock_id: str) -> LockInfo:
    """Clear the lock information a dead holder left (refused for a wrong id or a live holder); audited."""
    from runtime.provenance import provenance
    from runtime.state import lock
    from runtime.workspace import Workspace

    workspace = Workspace.of(project)
    cleared = lock.force_unlock(workspace.state_path, lock_id)
    origin = provenance(project.root)
    with StateStore.open(workspace.state_path) as store:
        audit.append(store, origin.actor, "force-unlock", {"lock": asdict(cleared)}, origin.commit)
    return cleared


# --- display helpers (shared by the commands that render these views) ---------------------------


def when(seconds: float | None) -> str:
    """A POSIX time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for none)."""
    import time

    return "-" if not seconds else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def took(seconds: float | None) -> str:
    """``14ms``, ``0.4s``, ``12.0s``, ``3m05s``, ``1h02m`` (``-`` for none): a run of a few milliseconds
    (an evaluation on a warm worker) is not shown as ``0.0s``."""
    if seconds is None:
        return "-"
    if seconds < 0.095:  # would show as 0.0s or 0.1s
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def short(value: str | None, length: int = 12) -> str:
    """The first ``length`` characters of a hash (after any ``sha256:`` style prefix); ``-`` for none."""
    return "-" if not value else _digest(value)[:length]


def number(value: Any) -> str:
    """A metric or param value, compactly (floats to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else json.dumps(value) if isinstance(value, dict | list) else str(value)


def key_metrics(metrics: dict[str, float], most: int = 3) -> str:
    """``auc=0.9042 loss=0.3333`` (the first ``most`` by name, then ``+N``)."""
    names = sorted(metrics)
    text = " ".join(f"{name}={number(metrics[name])}" for name in names[:most])
    return text + (f" +{len(names) - most}" if len(names) > most else "") if text else "-"
