"""The model registry view behind ``mlops models list|show``: versions, gate decisions, approvals,
where each version is deployed, and whether it was trained on data that expired or was erased. An unknown
model or version raises :class:`~compiler.errors.MlopsError` with a did-you-mean."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from compiler.resolve import Project
from compiler.suggest import did_you_mean
from runtime.errors import ViewError
from runtime.lifecycle.holdings import Holdings, label
from runtime.lifecycle.references import collected_versions
from runtime.state.records import Approval, DataRemoval, DeploymentState, GateDecision, ModelVersion
from runtime.state.store import StateStore


def model_name(project: Project, store: StateStore, text: str) -> str:
    """``churn`` or ``models.churn`` -> ``churn``; a model neither the spec nor the state knows is an error."""
    name = text.removeprefix("models.")
    known = sorted(set(project.spec.models) | set(store.models()))
    if name not in known:
        prefix = "models." if text.startswith("models.") else ""
        raise ViewError.one(f"unknown model '{text}'{did_you_mean(text, [prefix + k for k in known])}")
    return name


def no_version(name: str, version: int, store: StateStore) -> str:
    """The error line for a version ``models.NAME`` does not have, with the versions it has."""
    numbers = [str(v.version) for v in store.model_versions(name)]
    have = f"versions: {', '.join(numbers)}" if numbers else "it has no versions yet"
    return f"models.{name} has no version {version} ({have})"


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
    removed_data: list[DataRemoval] = field(default_factory=list)
    """Data it was trained on that mlops no longer holds (expired or erased), erasures first."""
    collected: bool = False
    """Its model file was freed by ``mlops gc`` (the version stays in the registry; it cannot be served again)."""

    @property
    def data_flags(self) -> list[str]:
        """``erased data: datasets.raw``, ``expired data: datasets.raw``: one per cause."""
        return list(dict.fromkeys(label(r) for r in self.removed_data))

    def to_json(self) -> dict[str, Any]:
        return {"version": asdict(self.version), "gate_decisions": [asdict(d) for d in self.decisions],
                "approvals": [asdict(a) for a in self.approvals], "desired_in": self.desired_in,
                "live_in": self.live_in, "data_flags": self.data_flags, "collected": self.collected,
                "removed_data": [{"dataset": r.address, "kind": r.item_kind, "content_hash": r.content_hash,
                                  "removal": r.removal, "origin": r.origin, "reason": r.reason,
                                  "erasure": r.request_id, "removed_at": r.removed_at} for r in self.removed_data]}


@dataclass
class ModelDetail:
    name: str
    versions: list[VersionDetail]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": f"models.{self.name}", "versions": [v.to_json() for v in self.versions]}


def show_model(project: Project, store: StateStore, text: str, version: int | None = None) -> ModelDetail:
    """A model's versions (or one of them) with status, reason, gate decisions, approvals and deployments."""
    name = model_name(project, store, text)
    versions = store.model_versions(name)
    if version is not None:
        versions = [v for v in versions if v.version == version]
        if not versions:
            raise ViewError.one(no_version(name, version, store))
    deployments = [d for d in store.deployments() if d.model == name]
    holdings = Holdings.read(store) if store.data_removals() else None
    collected = collected_versions(store).get(name, set())
    details = []
    for v in versions:
        decisions = store.gate_decisions(name, v.version)
        approvals = [a for gate in store.approval_gates(name, v.version)
                     for a in store.approvals(gate, name, v.version)]
        details.append(VersionDetail(v, decisions, approvals,
                                     [d.name for d in deployments if d.desired_version == v.version],
                                     [d.name for d in deployments if d.live_version == v.version],
                                     holdings.removals_under(v) if holdings else [], v.version in collected))
    return ModelDetail(name, details)
