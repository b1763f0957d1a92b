"""The records the state store keeps: plain dataclasses, one per table.

Times are POSIX seconds (float). JSON-ish fields are plain dicts/lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["running", "waiting", "succeeded", "failed"]
"""``waiting``: submitted, but its task has not started (the cluster has no room for it yet)."""
VersionStatus = Literal["candidate", "approved", "rejected"]
GateStatus = Literal["passed", "failed", "awaiting_approval"]


@dataclass
class NodeResult:
    """The outcome of one graph node at one fingerprint; the plan compares against the latest one."""

    node_id: str
    address: str
    kind: str
    fingerprint: str
    config: dict[str, Any]
    """The node's config at that fingerprint (plan reasons diff it against the desired one)."""
    code_hash: str | None = None
    data_hash: str | None = None
    upstream: dict[str, str] = field(default_factory=dict)
    """Upstream node id -> its fingerprint when this node ran."""
    status: RunStatus = "succeeded"
    outputs: dict[str, Any] = field(default_factory=dict)
    """What the node produced: e.g. {"artifact": uri}, {"metrics": {...}}, {"version": 3}."""
    run_id: str | None = None
    finished_at: float = 0.0


@dataclass
class Run:
    """One execution attempt of a node (a transform, a training trial, an evaluation)."""

    run_id: str
    node_id: str
    address: str
    kind: str
    fingerprint: str
    params: dict[str, Any] = field(default_factory=dict)
    status: RunStatus = "running"
    attempt: int = 1
    started_at: float = 0.0
    finished_at: float | None = None
    host: str = ""
    pid: int = 0
    device: str = "cpu"
    git_commit: str | None = None
    git_dirty: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    """Final metrics (the last value of each)."""
    log_uri: str | None = None
    error: str | None = None


@dataclass
class MetricPoint:
    run_id: str
    name: str
    step: int
    value: float


@dataclass
class Snapshot:
    """A version of a dataset's content: source data hashed, or a transform's output stored."""

    address: str
    fingerprint: str
    content_hash: str
    artifact_uri: str | None = None
    created_at: float = 0.0


@dataclass
class ModelVersion:
    """A trained model, numbered per model (1, 2, 3, ...), with its lineage."""

    model: str
    """The model's name (``churn``), not its address."""
    version: int
    fingerprint: str
    artifact_uri: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    code_hash: str | None = None
    git_commit: str | None = None
    data: dict[str, str] = field(default_factory=dict)
    """Dataset address -> content hash of the snapshot it was trained on (lineage)."""
    status: VersionStatus = "candidate"
    reason: str = ""
    created_at: float = 0.0
    signature: dict[str, Any] | None = None
    """The input signature it was trained with: ``{"columns": [[name, type], ...], "source": ...}``
    (:mod:`runtime.endpoint.signature`)."""


@dataclass
class GateDecision:
    gate: str
    model: str
    version: int
    status: GateStatus
    checks: list[dict[str, Any]] = field(default_factory=list)
    """Each: {"metric", "op" or "no_regression", "expected", "actual", "passed", "reason"}."""
    decided_at: float = 0.0


@dataclass
class Approval:
    gate: str
    model: str
    version: int
    approver: str
    approved_at: float = 0.0
    commit: str | None = None
    """The commit its ``approve`` audit record carries (for a signed approval, the tag object's id)."""


@dataclass
class DeploymentState:
    name: str
    model: str
    desired_version: int | None = None
    live_version: int | None = None
    status: str = "pending"
    updated_at: float = 0.0
    pinned_version: int | None = None
    """Set by a rollback: served instead of the newest approved version until the spec pins one."""
    pin_reason: str | None = None


@dataclass
class MonitorResult:
    """One evaluation of a monitor: each check's result, whether any breached, what was done about it."""

    monitor: str
    deployment: str
    version: int | None
    at: float
    breached: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


@dataclass
class RetrainRequest:
    """A monitor breach asking for a model to be trained again (consumed by the version it produced)."""

    id: int
    model: str
    reason: str
    at: float
    consumed_by: int | None = None


@dataclass
class ReconcilerStatus:
    commit: str | None = None
    synced_at: float | None = None
    tick_at: float | None = None
    error: str | None = None
    errors: int = 0


@dataclass
class AuditRecord:
    seq: int
    at: float
    actor: str
    action: str
    """apply | approve | rollback | force-unlock | ..."""
    commit: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass
class LockInfo:
    """Who holds the state lock (Terraform-style lock information)."""

    id: str
    operation: str
    who: str
    pid: int
    host: str
    since: float


@dataclass
class DataItem:
    """Data mlops holds or held for a dataset: a source snapshot (``snapshots`` row) or a derived dataset's
    output (a ``node_results`` row of its transform), with its removal when it expired or was erased."""

    item_kind: str
    """``snapshot`` or ``transform``."""
    item_id: int
    address: str
    content_hash: str
    """The hex digest: the source's content hash, or the digest in the derived output's artifact URI."""
    artifact_uri: str | None
    fingerprint: str
    created_at: float
    upstream: dict[str, str] = field(default_factory=dict)
    """A derived output's upstream node id -> its fingerprint when it was made (``{}`` for a snapshot)."""
    removal: DataRemoval | None = None


@dataclass
class DataRemoval:
    """A snapshot or derived output mlops no longer holds: ``expired`` (past its retention) or ``erased``."""

    item_kind: str
    item_id: int
    address: str
    content_hash: str
    artifact_uri: str | None
    created_at: float
    removal: str
    """``expired`` or ``erased``."""
    origin: str
    """The dataset whose retention or erasure removed it (itself, or one upstream of it)."""
    reason: str
    request_id: int | None = None
    """The erasure request (``None`` for an expiry)."""
    removed_at: float = 0.0
    audit_seq: int | None = None


@dataclass
class ErasureRequest:
    """``mlops erase datasets.NAME --reason TEXT``: what was asked, by whom, and the versions trained on it."""

    id: int
    dataset: str
    reason: str
    requested_by: str
    requested_at: float
    models: list[str] = field(default_factory=list)
    """``models.NAME@N`` of every model version trained on the erased data."""
    closed_at: float | None = None
