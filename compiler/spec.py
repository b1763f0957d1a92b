"""The spec of ``mlops.yaml``: one pydantic model per section, the single source of truth.

``schemas/mlops.schema.json`` and ``schemas/policy-pack.schema.json`` are generated from these
models (``python -m compiler.schema_export``). Every model forbids unknown keys.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
DURATION_PATTERN = r"^[0-9]+(s|m|h|d)$"
MEMORY_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti)$"
CALLABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
PRINCIPAL_PATTERN = r"^((team|user):[A-Za-z0-9._-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$"

# Upper bounds on what a cluster, a store or a scheduler can take: a spec that asks for more is an error
# at validate time (one line, naming the bound), never an overflow or a request nothing can satisfy.
MAX_CPUS = 1024
"""CPUs of one node, task or replica (the largest machines have a few hundred)."""
MAX_GPUS = 16
"""GPUs of one node, task or replica (8 on the largest common nodes)."""
MAX_MEMORY = "64Ti"
"""Memory of one node, task or replica."""
MAX_NODES = 1000
"""Nodes of one KubeRay worker group (``min`` / ``max``)."""
MAX_WORKERS = 1024
"""Ray Train workers of one training run."""
MAX_REPLICAS = 1000
"""Ray Serve replicas of one deployment."""
MAX_RETRIES = 10
"""Retries of a failed run (each one waits longer)."""
MAX_DURATION = "365d"
"""A timeout or a monitor schedule."""
MAX_RETENTION_DAYS = 36500
"""100 years; object stores count lifecycle expiry in days."""
MAX_SEED = 2**32 - 1
"""numpy's seeds are 32-bit."""
MAX_VERSION = 2**31 - 1
"""Model versions are numbered from 1 and stored as integers."""
MAX_APPROVALS = 100
MAX_WINDOW = 10_000_000
"""Labelled predictions an accuracy check reads at once."""
MAX_LATENCY_MS = 3_600_000
MAX_METRIC = 1e12
"""Metric thresholds and tolerances are finite numbers within +-1e12."""
MAX_BODY_BYTES = 1 << 30
"""A realtime request body (1 GiB; the default limit is 1 MiB)."""
MAX_INSTANCES = 1_000_000
"""Rows in one realtime request (the default limit is 1,000)."""
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_MEMORY_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def _bounded_duration(text: str) -> str:
    if len(text) > 16 or duration_seconds(text) > duration_seconds(MAX_DURATION):
        raise ValueError(f"{_short(text)} is longer than the maximum of {MAX_DURATION}")
    return text


def _bounded_memory(text: str) -> str:
    if len(text) > 20 or memory_bytes(text) > memory_bytes(MAX_MEMORY):
        raise ValueError(f"{_short(text)} is more than the maximum of {MAX_MEMORY}")
    return text


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...{text[-4:]} ({len(text)} characters)"


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN), AfterValidator(_bounded_duration)]
Memory = Annotated[str, StringConstraints(pattern=MEMORY_PATTERN), AfterValidator(_bounded_memory)]
CallableRef = Annotated[str, StringConstraints(pattern=CALLABLE_PATTERN)]
Principal = Annotated[str, StringConstraints(pattern=PRINCIPAL_PATTERN)]
Scalar = str | int | float | bool | None
ParamValue = Scalar | list[Any] | dict[str, Any]


def duration_seconds(text: str) -> int:
    """``'30m'`` -> 1800."""
    match = re.fullmatch(DURATION_PATTERN, text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use 30s, 5m, 1h or 2d)")
    return int(text[:-1]) * _UNITS[text[-1]]


def memory_bytes(text: str) -> int:
    """``'8Gi'`` -> 8589934592."""
    match = re.fullmatch(MEMORY_PATTERN, text)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (use 512Mi or 8Gi)")
    return int(text[:-2]) * _MEMORY_UNITS[text[-2:]]


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- project-wide sections ---------------------------------------------------------------


class Compliance(Strict):
    frameworks: list[Name] = Field(default_factory=list, description="Policy packs applied besides `baseline`.")
    risk: Literal["minimal", "limited", "high"] = "limited"


class NodeShape(Strict):
    cpus: float = Field(2, ge=0, le=MAX_CPUS)
    memory: Memory = "8Gi"


class WorkerGroup(Strict):
    gpus: int = Field(0, ge=0, le=MAX_GPUS)
    gpu_type: str | None = Field(None, description="Node selector / accelerator type, e.g. nvidia-h100.")
    cpus: float = Field(4, ge=0, le=MAX_CPUS)
    memory: Memory = "16Gi"
    min: int = Field(0, ge=0, le=MAX_NODES)
    max: int = Field(1, ge=0, le=MAX_NODES)

    @model_validator(mode="after")
    def _min_le_max(self) -> WorkerGroup:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


GIT_URL_PATTERN = r"^(https://|ssh://|git@)[^\s@/]+(@[^\s@/]+)?[:/]\S+$"
IMAGE_PATTERN = r"^[a-z0-9]([a-z0-9._/:-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"


def _git_url(url: str) -> str:
    if re.match(r"^[a-z+]+://[^/@\s]*:[^/@\s]*@", url):  # checked first: the message must not repeat the token
        raise ValueError("the URL holds a password or token: the reconciler takes it from its Secret (MLOPS_GIT_TOKEN)")
    if not re.fullmatch(GIT_URL_PATTERN, url):
        raise ValueError(f"{_short(url)} is not a URL to clone from in Kubernetes (https://, ssh://, git@host:path)")
    return url


def _pinned_image(image: str) -> str:
    name, _, digest = image.partition("@")
    if not digest and not re.search(r":(?!latest$)[^:/]+$", name):
        raise ValueError(f"image {_short(image)} is not pinned: give a version tag (not `latest`) or a digest")
    return image


class Reconciler(Strict):
    """``mlops reconcile --watch`` as a Deployment next to the KubeRay cluster (emitted by ``mlops compile``)."""

    repo: Annotated[str, StringConstraints(max_length=2048), AfterValidator(_git_url)] = Field(
        json_schema_extra={"pattern": GIT_URL_PATTERN}, description="The git repository to follow.")
    branch: str = Field("main", max_length=255, pattern=r"^[A-Za-z0-9._/-]+$")
    image: Annotated[str, StringConstraints(max_length=512, pattern=IMAGE_PATTERN), AfterValidator(_pinned_image)] = \
        Field(description="A pinned image with mlops-gitops, the pipeline's dependencies and the cluster's Ray.")
    secret: str = Field("mlops-reconciler", max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                        description="An existing Secret of the namespace: the environment (PGPASSWORD, ...).")


class Cluster(Strict):
    provider: Literal["local", "kuberay"] = "local"
    address: str | None = Field(None, description='An existing Ray cluster ("ray://host:10001" or "auto").')
    serve_host: str = Field("127.0.0.1", max_length=253, pattern=r"^[A-Za-z0-9.:_-]+$", description=(
        "The address Serve's HTTP proxy listens on (embedded cluster). Beyond loopback, every realtime "
        "deployment needs `auth`."))
    namespace: str | None = None
    head: NodeShape = Field(default_factory=NodeShape)
    workers: dict[Name, WorkerGroup] = Field(default_factory=dict)
    reconciler: Reconciler | None = Field(None, description="With `provider: kuberay`: the GitOps loop in the cluster.")

    @model_validator(mode="after")
    def _reconciler_on_kuberay(self) -> Cluster:
        if self.reconciler is not None and (self.provider != "kuberay" or not self.address):
            raise ValueError("`reconciler` needs `provider: kuberay` and `address`, ray://<project>-head-svc."
                             "<namespace>.svc.cluster.local:10001 (the Terraform output `ray_address`)")
        return self


class Storage(Strict):
    artifacts: str = ".mlops/artifacts"
    state: str = ".mlops/state.db"
    encryption: Literal["none", "sse", "kms"] = "none"
    mlflow: str | None = None


# --- resources ---------------------------------------------------------------------------


class Resources(Strict):
    cpus: float = Field(1, ge=0, le=MAX_CPUS)
    gpus: float = Field(0, ge=0, le=MAX_GPUS)
    memory: Memory | None = None
    workers: int = Field(1, ge=1, le=MAX_WORKERS, description="More than 1: distributed training through Ray Train.")


ColumnType = Literal["int", "float", "string", "bool", "category", "datetime"]
LegalBasis = Literal[
    "consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"
]


class Dataset(Strict):
    """A source dataset (``path``) or a derived one (``from`` + ``transform``)."""

    path: str | None = Field(None, description="File or directory relative to the spec; stays in the repo.")
    format: Literal["csv", "parquet", "jsonl", "npy", "dir"] | None = None
    from_: list[Name] | None = Field(None, alias="from")
    transform: CallableRef | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    schema_: dict[str, ColumnType] | None = Field(None, alias="schema")
    pii: bool | list[str] = False
    legal_basis: LegalBasis | None = None
    retention_days: int | None = Field(None, ge=1, le=MAX_RETENTION_DAYS)
    region: str | None = None
    access: list[Principal] = Field(default_factory=list)
    description: str | None = None

    @model_validator(mode="after")
    def _source_or_derived(self) -> Dataset:
        if self.path is not None and (self.from_ is not None or self.transform is not None):
            raise ValueError("a dataset has either `path` (source) or `from` + `transform` (derived), not both")
        if self.path is None:
            if self.from_ is None and self.transform is None:
                raise ValueError("a dataset needs `path` (source) or `from` + `transform` (derived)")
            if self.transform is None:
                raise ValueError("a derived dataset needs `transform`")
            if not self.from_:
                raise ValueError("a derived dataset needs `from` with at least one dataset")
        return self

    @property
    def derived(self) -> bool:
        return self.path is None

    @property
    def has_pii(self) -> bool:
        return bool(self.pii)

    def resolved_format(self) -> str | None:
        """The declared format, else the path's known suffix; ``None`` when neither says (the snapshot
        step tells a directory from an opaque file by looking)."""
        if self.format or self.path is None:
            return self.format
        last = self.path.rstrip("/").rsplit("/", 1)[-1]
        suffix = last.rsplit(".", 1)[-1].lower() if "." in last else ""
        return suffix if suffix in ("csv", "parquet", "jsonl", "npy") else None


class Objective(Strict):
    metric: str
    goal: Literal["maximize", "minimize"] = "maximize"


class Model(Strict):
    train: CallableRef
    evaluate: CallableRef | None = None
    data: dict[str, Name]
    params: dict[str, ParamValue] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] | None = None
    objective: Objective | None = None
    resources: Resources = Field(default_factory=Resources)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    retries: int = Field(0, ge=0, le=MAX_RETRIES)
    timeout: Duration = "1h"
    description: str | None = None
    intended_use: str | None = None
    limitations: str | None = None
    keep_versions: int | None = Field(None, ge=1, le=MAX_VERSION, description=(
        "How many of the newest versions `mlops gc` keeps the model files of (besides the versions deployments "
        "serve, want or pin); older versions stay in the registry with their files collected. Unset: every "
        "version keeps its files unless `mlops gc --keep N` says otherwise."))

    @field_validator("data")
    @classmethod
    def _train_role(cls, value: dict[str, str]) -> dict[str, str]:
        if "train" not in value:
            raise ValueError("`data` needs a `train` role")
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep_values(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for key, points in (value or {}).items():
            if not points:
                raise ValueError(f"sweep `{key}` has no values")
        return value

    @model_validator(mode="after")
    def _objective_with_sweep(self) -> Model:
        if self.sweep and self.objective is None:
            raise ValueError("`objective` is required with a `sweep` (it picks the trial)")
        return self


class GateCheck(Strict):
    """Either a threshold (``metric``, ``op``, ``value``) or ``no_regression`` against the live version."""

    metric: str
    op: Literal[">=", ">", "<=", "<", "=="] | None = None
    value: float | None = Field(None, ge=-MAX_METRIC, le=MAX_METRIC, allow_inf_nan=False)
    no_regression: float | None = Field(None, ge=0, le=MAX_METRIC, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_kind(self) -> GateCheck:
        threshold = self.op is not None or self.value is not None
        if threshold and self.no_regression is not None:
            raise ValueError("a check is either `op` + `value` or `no_regression`, not both")
        if not threshold and self.no_regression is None:
            raise ValueError("a check needs `op` + `value` or `no_regression`")
        if threshold and (self.op is None or self.value is None):
            raise ValueError("a threshold check needs both `op` and `value`")
        return self


class Approvals(Strict):
    required: int = Field(1, ge=0, le=MAX_APPROVALS)
    from_: list[Principal] = Field(default_factory=list, alias="from")
    signers: str | None = Field(None, description=(
        "OpenSSH allowed_signers file, relative to the spec (git's gpg.ssh.allowedSignersFile format). When set, "
        "approvals count only as tags approve/<gate>/v<version>/<name> signed by a key of this file."))


class Gate(Strict):
    model: Name
    checks: list[GateCheck] = Field(default_factory=list)
    approvals: Approvals | None = None


class Limits(Strict):
    """What one realtime request may carry; more is refused with 413."""

    max_body_bytes: int = Field(1 << 20, ge=1, le=MAX_BODY_BYTES, description="Request body size (default 1 MiB).")
    max_instances: int = Field(1000, ge=1, le=MAX_INSTANCES, description="Rows in one request (default 1000).")
    max_logged_row_bytes: int = Field(4096, ge=64, le=1 << 20, description=(
        "A logged row's size in the inference log; a bigger row is logged without its inputs."))


class Auth(Strict):
    """A bearer-token check: the tokens come from an environment variable or a file, never the spec."""

    token_env: str | None = Field(None, pattern=ENV_NAME_PATTERN, description=(
        "Environment variable of the apply holding the token (several, comma-separated, while rotating)."))
    token_file: str | None = Field(None, max_length=4096, description=(
        "File (relative to the spec, or absolute) holding the tokens, one a line; keep it out of git."))

    @model_validator(mode="after")
    def _one_source(self) -> Auth:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("auth takes exactly one of `token_env` or `token_file`")
        return self


class Deployment(Strict):
    model: Name
    gates: list[Name] = Field(default_factory=list)
    mode: Literal["realtime", "batch"] = "realtime"
    replicas: int = Field(1, ge=0, le=MAX_REPLICAS)
    resources: Resources = Field(default_factory=Resources)
    route: str | None = Field(None, pattern=r"^/[A-Za-z0-9/_-]*$")
    input: Name | None = None
    version: int | None = Field(None, ge=1, le=MAX_VERSION)
    columns: dict[str, ColumnType] | None = Field(None, description=(
        "The input columns a request's rows must have (name: type); default: the model version's signature."))
    limits: Limits = Field(default_factory=Limits)
    auth: Auth | None = None

    @model_validator(mode="after")
    def _batch_input(self) -> Deployment:
        if self.mode == "batch" and self.input is None:
            raise ValueError("a batch deployment needs `input` (the dataset to score)")
        if self.mode == "realtime" and self.input is not None:
            raise ValueError("`input` is for batch deployments only")
        return self


DriftMethod = Literal["psi", "ks", "js", "wasserstein", "chi2"]


MIN_REQUESTS_DESCRIPTION = ("Requests a drift window must hold before it is judged (each request counts as at most "
                            "the median request's rows), so that no single request decides a drift.")


class DataDriftCheck(Strict):
    type: Literal["data_drift"]
    method: DriftMethod = "psi"
    threshold: float | None = Field(None, ge=0, le=MAX_METRIC, allow_inf_nan=False)
    columns: list[str] | None = None
    min_requests: int = Field(20, ge=1, le=MAX_WINDOW, description=MIN_REQUESTS_DESCRIPTION)


class PredictionDriftCheck(Strict):
    type: Literal["prediction_drift"]
    method: DriftMethod = "ks"
    threshold: float | None = Field(None, ge=0, le=MAX_METRIC, allow_inf_nan=False)
    min_requests: int = Field(20, ge=1, le=MAX_WINDOW, description=MIN_REQUESTS_DESCRIPTION)


class AccuracyCheck(Strict):
    type: Literal["accuracy"]
    metric: str
    min: float = Field(ge=-MAX_METRIC, le=MAX_METRIC, allow_inf_nan=False)
    window: int = Field(1000, ge=1, le=MAX_WINDOW)


class LatencyCheck(Strict):
    type: Literal["latency"]
    p95_ms: float = Field(gt=0, le=MAX_LATENCY_MS)


MonitorCheck = Annotated[
    DataDriftCheck | PredictionDriftCheck | AccuracyCheck | LatencyCheck, Field(discriminator="type")
]


BreachAction = Literal["alert", "retrain", "rollback"]


class Monitor(Strict):
    deployment: Name
    reference: Name | None = None
    schedule: Duration = "1h"
    checks: list[MonitorCheck] = Field(default_factory=list)
    on_breach: list[BreachAction] = Field(default_factory=lambda: list[BreachAction](["alert"]))
    webhook: str | None = Field(None, description="URL that `alert` posts breaches to.")


class Waiver(Strict):
    policy: str
    resource: str
    reason: str = Field(min_length=1)
    approved_by: Principal
    expires: date


class Spec(Strict):
    """The whole of ``mlops.yaml``."""

    apiVersion: Literal["mlops/v1"]
    project: Name
    owners: list[Principal] = Field(default_factory=list)
    compliance: Compliance = Field(default_factory=Compliance)
    cluster: Cluster = Field(default_factory=Cluster)
    storage: Storage = Field(default_factory=Storage)
    datasets: dict[Name, Dataset] = Field(default_factory=dict)
    models: dict[Name, Model] = Field(default_factory=dict)
    gates: dict[Name, Gate] = Field(default_factory=dict)
    deployments: dict[Name, Deployment] = Field(default_factory=dict)
    monitors: dict[Name, Monitor] = Field(default_factory=dict)
    waivers: list[Waiver] = Field(default_factory=list)


SECTIONS = ("datasets", "models", "gates", "deployments", "monitors")
"""The named-resource sections, in dependency order."""


# --- policy packs ------------------------------------------------------------------------

AppliesTo = Literal["project", "cluster", "storage", "datasets", "models", "gates", "deployments", "monitors"]


class Policy(Strict):
    id: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]*-[0-9]{3}$")]
    title: str
    severity: Literal["error", "warning"] = "error"
    applies_to: AppliesTo
    when: dict[str, Any] | None = Field(None, description="JSON Schema: the policy applies to views it matches.")
    schema_: dict[str, Any] = Field(alias="schema", description="JSON Schema (2020-12) the view must satisfy.")
    message: str
    rationale: str
    remediation: str


class WaiverRules(Strict):
    max_days: int = Field(ge=0, le=36500, description="A waiver in a project using this pack may expire at most "
                                                      "this many days after today (the UTC date).")


class PolicyPack(Strict):
    apiVersion: Literal["mlops/v1"]
    kind: Literal["PolicyPack"]
    name: Name
    description: str = ""
    waivers: WaiverRules | None = Field(None, description="Rules for every waiver of a project that uses this pack.")
    policies: list[Policy]
