"""What the compliance report shows, gathered from the project and its state store (no HTML here).

:func:`gather` reads the spec, the policy report and (when the project has one) the state database,
and returns a :class:`ReportData`: policy results with their rationale, waivers and their expiry, a
model card per model (each version flagged when trained on expired or erased data), the history of every
monitor, what retention expires next and the erasure requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from compiler import PolicyReport
from compiler.errors import MlopsError
from compiler.policy.evaluate import utc_today
from compiler.resolve import Project
from compiler.spec import Dataset
from runtime.apply.gates import is_approvals_check, recorded_approval_rule
from runtime.artifacts.store import ArtifactStore
from runtime.lifecycle import erasure, retention
from runtime.lifecycle.holdings import Holdings, label
from runtime.lifecycle.retention import Expiry
from runtime.lifecycle.sizes import StoreSize, store_size
from runtime.state import audit
from runtime.state.records import AuditRecord, ErasureRequest, MonitorResult
from runtime.state.store import StateStore
from runtime.workspace import Workspace

MAX_VERSIONS = 10
"""A model card lists (and plots) at most this many of the newest versions."""
MAX_MONITOR_RESULTS = 500
"""A monitor's plot covers at most this many of its newest results."""
STATUS_ORDER = {"fail": 0, "waived": 1, "pass": 2}

WaiverState = Literal["active", "expired", "invalid"]


@dataclass(frozen=True)
class PolicyRow:
    """One policy checked against one resource."""

    policy: str
    title: str
    pack: str
    severity: str
    address: str
    status: str
    message: str
    detail: str
    rationale: str
    remediation: str
    waiver: str


@dataclass(frozen=True)
class WaiverRow:
    """A waiver of the spec, with whether it still waives anything."""

    policy: str
    resource: str
    reason: str
    approved_by: str
    expires: date
    state: WaiverState
    note: str
    """Days left, when it expired, or why it is invalid."""


@dataclass(frozen=True)
class DatasetRow:
    """A dataset in a model's lineage, with its personal-data declarations."""

    address: str
    origin: str
    """``source: data/x.csv`` or ``derived from datasets.a via module:function``."""
    pii: bool
    """Declared personal data (``pii:`` true or columns)."""
    pii_columns: list[str]
    pii_upstream: bool
    """Derives from a dataset that holds personal data (the obligations follow the data)."""
    legal_basis: str | None
    retention_days: int | None
    region: str | None
    access: list[str]
    description: str | None
    content_hash: str | None
    """The content the newest version was trained on (``None``: not a direct input, or no version yet)."""


@dataclass(frozen=True)
class GateRow:
    """A gate's latest decision on one version, and the approvals recorded for it."""

    gate: str
    version: int
    status: str
    checks: list[str]
    decided_at: float
    approvals: list[tuple[str, float]]
    required: int | None
    """Approvals the rule of the decision's day required; ``None`` when the decision did not record its rule
    (made before rules were recorded, or no decision yet). Never the spec's current rule."""
    counted: list[str] = field(default_factory=list)
    """The approvers the decision counted (approvals recorded later are in ``approvals`` only)."""
    decided: bool = True
    """False: approvals are recorded but no decision was made yet."""


@dataclass(frozen=True)
class VersionRow:
    version: int
    status: str
    reason: str
    created_at: float
    metrics: dict[str, float]
    git_commit: str | None
    live_in: list[str]
    data_flags: list[str] = field(default_factory=list)
    """``erased data: datasets.raw`` / ``expired data: ...``: trained on data mlops no longer holds."""


@dataclass(frozen=True)
class ErasureRow:
    """An erasure request; ``in_use``: the versions in use still trained on its data (open while any)."""

    request: ErasureRequest
    erased: int
    in_use: list[str]


@dataclass(frozen=True)
class MetricCurve:
    """One metric of one version's training run, by step."""

    version: int
    metric: str
    steps: list[int]
    values: list[float]


@dataclass(frozen=True)
class ModelCard:
    name: str
    description: str | None
    intended_use: str | None
    limitations: str | None
    train: str
    evaluate: str | None
    params: dict[str, Any]
    pii: bool
    datasets: list[DatasetRow]
    versions: list[VersionRow]
    gates: list[GateRow]
    curves: list[MetricCurve]
    deployments: list[str]

    @property
    def address(self) -> str:
        return f"models.{self.name}"


@dataclass(frozen=True)
class CheckSeries:
    """One check of a monitor over time: its score (and per-column scores for data drift)."""

    label: str
    threshold: float | None
    breach_when: str | None
    times: list[float]
    scores: list[float | None]
    breached: list[bool]
    columns: dict[str, list[float | None]] = field(default_factory=dict)
    column_threshold: float | None = None
    column_rule: str | None = None
    """When one column drifts (``score >= threshold``); the check breaches on the share of drifted columns."""


@dataclass(frozen=True)
class MonitorReport:
    name: str
    deployment: str
    results: int
    breaches: int
    latest: MonitorResult | None
    series: list[CheckSeries]


@dataclass(frozen=True)
class DeploymentEvent:
    """One entry of a deployment's history, from the audit trail."""

    at: float
    event: str
    """``deployed`` / ``deploy failed`` (an apply's outcome), ``rollback``, ``rollout failed``."""
    actor: str
    from_version: int | None
    to_version: int | None
    detail: str
    commit: str | None


@dataclass(frozen=True)
class DeploymentHistory:
    name: str
    model: str
    mode: str
    live_version: int | None
    desired_version: int | None
    status: str | None
    """The recorded health (``Healthy``, ``Degraded: rollout failed`` ...); ``None``: never deployed."""
    pinned_version: int | None
    pin_reason: str | None
    events: list[DeploymentEvent]
    """Oldest first."""

    @property
    def address(self) -> str:
        return f"deployments.{self.name}"


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows."""

    project: str
    spec_file: str
    generated_at: float
    risk: str
    frameworks: list[str]
    packs: list[str]
    owners: list[str]
    state_recorded: bool
    """False when the project has no state database yet (nothing applied)."""
    policies: list[PolicyRow]
    counts: dict[str, int]
    waivers: list[WaiverRow]
    models: list[ModelCard]
    monitors: list[MonitorReport]
    deployments: list[DeploymentHistory] = field(default_factory=list)
    store_size: StoreSize | None = None
    """The artifact store's size by kind (``None``: nothing recorded yet, or it could not be read)."""
    store_error: str | None = None
    expiring: list[Expiry] = field(default_factory=list)
    """What retention expires next, soonest first."""
    erasures: list[ErasureRow] = field(default_factory=list)


def gather(project: Project, report: PolicyReport, store: StateStore | None, today: date | None = None) -> ReportData:
    """The report's content; ``store`` is ``None`` for a project that has recorded nothing yet."""
    spec = project.spec
    rows = sorted((_policy_row(r) for r in report.results),
                  key=lambda r: (STATUS_ORDER[r.status], r.severity != "error", r.policy, r.address))
    return ReportData(
        project=spec.project, spec_file=project.spec_path.name, generated_at=time.time(),
        risk=spec.compliance.risk, frameworks=list(spec.compliance.frameworks), packs=list(report.packs),
        owners=list(spec.owners), state_recorded=store is not None, policies=rows, counts=report.counts(),
        waivers=_waivers(project, report, today or utc_today()),
        models=[_model_card(project, store, name) for name in spec.models],
        monitors=[_monitor(project, store, name) for name in spec.monitors],
        deployments=_deployments(project, store), **_store_size(project, store),
        expiring=retention.upcoming(project, store, limit=10) if store else [], erasures=_erasures(store))


def _erasures(store: StateStore | None) -> list[ErasureRow]:
    """Every erasure request, newest first, with the versions in use still trained on its data."""
    if store is None:
        return []
    still = {request.id: versions for request, versions in erasure.open_erasures(store)}
    return [ErasureRow(r, len(store.data_removals(r.id)), still.get(r.id, []))
            for r in reversed(store.erasure_requests())]


def _store_size(project: Project, store: StateStore | None) -> dict[str, Any]:
    """``store_size`` (or ``store_error``) of :class:`ReportData`."""
    if store is None:
        return {}
    try:
        return {"store_size": store_size(project, store, ArtifactStore(Workspace.of(project).artifact_root))}
    except MlopsError as error:
        return {"store_error": "; ".join(d.message for d in error.diagnostics)}


def _policy_row(result: Any) -> PolicyRow:
    policy = result.policy
    return PolicyRow(policy.id, policy.title, result.pack, policy.severity, result.address, result.status,
                     result.message, result.detail, policy.rationale, policy.remediation, result.waiver_reason)


def _waivers(project: Project, report: PolicyReport, today: date) -> list[WaiverRow]:
    problems = {d.address: d for d in report.waiver_problems if d.severity == "error"}
    rows = []
    for index, waiver in enumerate(project.spec.waivers):
        problem = problems.get(f"waivers[{index}]")
        state: WaiverState
        if problem is not None:
            state, note = "invalid", problem.message
        elif waiver.expires < today:
            state, note = "expired", f"expired {(today - waiver.expires).days} day(s) ago; it no longer waives"
        else:
            state, note = "active", f"{(waiver.expires - today).days} day(s) left"
        rows.append(WaiverRow(waiver.policy, waiver.resource, waiver.reason, waiver.approved_by, waiver.expires,
                              state, note))
    return rows


def _origin(dataset: Dataset) -> str:
    if dataset.path is not None:
        return f"source: {dataset.path}"
    parents = ", ".join(f"datasets.{p}" for p in dataset.from_ or [])
    return f"derived from {parents} via {dataset.transform}"


def _model_card(project: Project, store: StateStore | None, name: str) -> ModelCard:
    spec = project.spec
    model = spec.models[name]
    refs = project.views[f"models.{name}"]["refs"]
    versions = store.model_versions(name)[-MAX_VERSIONS:] if store else []
    newest = versions[-1] if versions else None
    datasets = []
    for address in refs["datasets"]:
        dataset = spec.datasets[address.split(".", 1)[1]]
        columns = dataset.pii if isinstance(dataset.pii, list) else []
        datasets.append(DatasetRow(
            address, _origin(dataset), dataset.has_pii, columns, bool(project.views[address]["refs"]["pii"]),
            dataset.legal_basis,
            dataset.retention_days, dataset.region, list(dataset.access), dataset.description,
            newest.data.get(address) if newest else None))
    live = [d for d in store.deployments() if d.model == name] if store else []
    holdings = Holdings.read(store) if store is not None and store.data_removals() else None
    version_rows = [VersionRow(v.version, v.status, v.reason, v.created_at, dict(v.metrics), v.git_commit,
                               [d.name for d in live if d.live_version == v.version],
                               list(dict.fromkeys(label(r) for r in holdings.removals_under(v))) if holdings else [])
                    for v in reversed(versions)]
    gates = []
    curves = []
    if store is not None:
        for v in reversed(versions):
            for gate_name, gate in spec.gates.items():
                if gate.model != name:
                    continue
                decision = store.latest_gate_decision(gate_name, name, v.version)
                approvals = store.approvals(gate_name, name, v.version)
                if decision is None and not approvals:
                    continue
                rule = recorded_approval_rule(decision) if decision else None  # the rule of its day, not today's
                gates.append(GateRow(
                    gate_name, v.version, decision.status if decision else "not decided",
                    [f"{'pass' if c.get('passed') else 'FAIL'}: {c.get('reason', '')}" for c in
                     (decision.checks if decision else []) if not is_approvals_check(c)],
                    decision.decided_at if decision else 0.0, [(a.approver, a.approved_at) for a in approvals],
                    rule[0] if rule else None, rule[1] if rule else [], decided=decision is not None))
        for v in versions:
            curves.extend(_curves(store, v.version, v.run_id))
    return ModelCard(name, model.description, model.intended_use, model.limitations, model.train, model.evaluate,
                     dict(model.params), bool(refs["pii"]), datasets, version_rows, gates, curves,
                     list(refs["deployments"]))


def _deployments(project: Project, store: StateStore | None) -> list[DeploymentHistory]:
    """Each deployment of the spec, and of the audit trail, with its recorded state and its history."""
    records = audit.of_actions(store, ["apply", "rollback", audit.ROLLOUT_FAILED]) if store else []
    models = {name: spec.model for name, spec in project.spec.deployments.items()}
    for record in records:
        named = str(record.payload.get("deployment") or "")
        if named.startswith("deployments.") and named.split(".", 1)[1] not in project.spec.deployments:
            # gone from the spec: its history stays in the report
            models[named.split(".", 1)[1]] = str(record.payload.get("model") or "-")
    out = []
    for name, model in models.items():
        spec = project.spec.deployments.get(name)
        state = store.get_deployment(name) if store else None
        events = [event for record in records for event in _events(record, name)]
        out.append(DeploymentHistory(
            name, state.model if state else model, spec.mode if spec else "removed from the spec",
            state.live_version if state else None, state.desired_version if state else None,
            state.status if state else None, state.pinned_version if state else None,
            state.pin_reason if state else None, events))
    return out


def _events(record: AuditRecord, name: str) -> list[DeploymentEvent]:
    """What ``record`` says about deployment ``name`` (nothing, or one event)."""
    payload = record.payload
    address = f"deployments.{name}"
    if record.action == "apply":
        status = (payload.get("outcomes") or {}).get(f"{address}/deploy")
        if status not in ("succeeded", "failed"):
            return []  # blocked or skipped: the deployment did not change
        change = (payload.get("changes") or {}).get(address)
        return [DeploymentEvent(record.at, "deployed" if status == "succeeded" else "deploy failed", record.actor,
                                None, None, f"apply ({change})" if change else "apply", record.commit)]
    if payload.get("deployment") != address:
        return []
    if record.action == "rollback":
        return [DeploymentEvent(record.at, "rollback", record.actor, _int(payload.get("from")),
                                _int(payload.get("to")), str(payload.get("reason") or ""), record.commit)]
    return [DeploymentEvent(record.at, "rollout failed", record.actor, _int(payload.get("from")),
                            _int(payload.get("to")), str(payload.get("error") or ""), record.commit)]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _curves(store: StateStore, version: int, run_id: str | None) -> list[MetricCurve]:
    if run_id is None:
        return []
    by_metric: dict[str, list[tuple[int, float]]] = {}
    for point in store.metric_history(run_id):
        by_metric.setdefault(point.name, []).append((point.step, point.value))
    return [MetricCurve(version, metric, [s for s, _ in points], [v for _, v in points])
            for metric, points in sorted(by_metric.items())]


def _monitor(project: Project, store: StateStore | None, name: str) -> MonitorReport:
    monitor = project.spec.monitors[name]
    results = store.monitor_results(name, MAX_MONITOR_RESULTS) if store else []
    series: dict[str, dict[str, Any]] = {}
    for result in results:
        for index, check in enumerate(result.checks):
            label = f"{check.get('type')} ({check.get('method')})"
            entry = series.setdefault(f"{index}:{label}", {
                "label": label, "threshold": check.get("threshold"), "breach_when": check.get("breach_when"),
                "times": [], "scores": [], "breached": [], "columns": {}, "column_threshold": None,
                "column_rule": None})
            entry["times"].append(result.at)
            entry["scores"].append(_float(check.get("score")))
            entry["breached"].append(check.get("status") == "breached")
            entry["breach_when"] = entry["breach_when"] or check.get("breach_when")
            detail = check.get("detail") or {}
            if check.get("type") == "data_drift" and isinstance(detail.get("columns"), dict):
                entry["column_threshold"] = _float(detail.get("column_threshold"))
                entry["column_rule"] = detail.get("column_drift_when")
                for column, col in detail["columns"].items():
                    values = entry["columns"].setdefault(column, [None] * (len(entry["times"]) - 1))
                    values.append(_float(col.get("score")) if isinstance(col, dict) else None)
            for values in entry["columns"].values():
                values.extend([None] * (len(entry["times"]) - len(values)))
    return MonitorReport(name, monitor.deployment, len(results), sum(r.breached for r in results),
                         results[-1] if results else None, [CheckSeries(**entry) for entry in series.values()])


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
