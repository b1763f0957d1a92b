"""The shipped policy packs (baseline, gdpr, eu-ai-act, security), waivers and project packs.

Every shipped policy has at least one spec that passes it and one that fails it, asserted on the
policy id and the resource address. Specs are built from one compliant, realistic spec (all
frameworks on, risk high) plus a small mutation per case, written to a temporary repository
with its data file and pipeline module, and driven through ``load_project`` + ``check_policies``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import PolicyReport, PolicyResult, check_policies, load_project
from compiler.errors import PolicyPackError
from compiler.policy.packs import discover

# --- the compliant spec and its repository ----------------------------------------------------------

COMPLIANT: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "churn",
    "owners": ["team:ml-platform", "ana@example.com"],
    "compliance": {"frameworks": ["gdpr", "eu-ai-act", "security"], "risk": "high"},
    "cluster": {"provider": "local", "address": "ray://ray-head.ml.svc:10001"},
    "storage": {
        "artifacts": "s3://acme-ml/churn",
        "state": "postgresql://mlops@db.internal:5432/mlops",
        "encryption": "kms",
        "mlflow": "https://mlflow.example.com",
    },
    "datasets": {
        "transactions": {
            "path": "data/transactions.csv",
            "schema": {"customer_id": "string", "email": "string", "amount": "float",
                       "country": "category", "churned": "int"},
            "pii": ["customer_id", "email"],
            "legal_basis": "contract",
            "retention_days": 365,
            "region": "eu-west-1",
            "access": ["team:fraud", "team:ml-platform"],
            "description": "Card transactions of EU customers, one row per payment",
        },
        "features": {
            "from": ["transactions"],
            "transform": "pipeline:build_features",
            "params": {"window_days": 30, "aggregations": ["sum", "count"]},
            "schema": {"customer_id": "string", "amount": "float", "country": "category", "churned": "int"},
            "pii": ["customer_id"],
            "legal_basis": "contract",
            "retention_days": 180,
            "region": "eu-west-1",
            "access": ["team:ml-platform"],
            "description": "Per-customer 30-day spend aggregates keyed by a pseudonymous id",
        },
    },
    "models": {
        "churn": {
            "train": "pipeline:train",
            "evaluate": "pipeline:evaluate",
            "data": {"train": "features", "eval": "features"},
            "params": {"lr": 0.01, "epochs": 20, "hidden": 32,
                       "optimizer": {"name": "adam", "betas": [0.9, 0.99]}},
            "sweep": {"lr": [0.01, 0.003]},
            "objective": {"metric": "auc", "goal": "maximize"},
            "seed": 7,
            "retries": 2,
            "timeout": "30m",
            "description": "Predicts churn in the next 30 days",
            "intended_use": "Retention campaigns; not for credit decisions",
            "limitations": "Trained on EU customers only; not validated for business accounts",
        },
    },
    "gates": {
        "churn-quality": {
            "model": "churn",
            "checks": [{"metric": "auc", "op": ">=", "value": 0.8}, {"metric": "auc", "no_regression": 0.01}],
            "approvals": {"required": 1, "from": ["team:risk"]},
        },
    },
    "deployments": {
        "churn-api": {"model": "churn", "gates": ["churn-quality"], "mode": "realtime", "replicas": 2,
                      "route": "/churn", "auth": {"token_env": "CHURN_API_TOKEN"}},
    },
    "monitors": {
        "churn-drift": {
            "deployment": "churn-api",
            "reference": "features",
            "schedule": "1h",
            "checks": [
                {"type": "data_drift", "method": "psi", "threshold": 0.2, "columns": ["amount"]},
                {"type": "prediction_drift", "method": "ks", "threshold": 0.05},
                {"type": "accuracy", "metric": "auc", "min": 0.75, "window": 1000},
                {"type": "latency", "p95_ms": 200},
            ],
            "on_breach": ["alert", "retrain"],
            "webhook": "https://alerts.example.com/hooks/ml",
        },
    },
}

PIPELINE = '''"""Callables of the test project (the signatures of runtime/context.py)."""

from runtime.context import RunContext, TrainResult


def build_features(ctx: RunContext) -> None:
    (ctx.output_dir / "features.csv").write_bytes(ctx.input("transactions").read_bytes())


def train(ctx: RunContext) -> TrainResult:
    return TrainResult(model={"bias": 0.1}, metrics={"auc": 0.9})


def evaluate(ctx: RunContext) -> dict[str, float]:
    return {"auc": 0.88}
'''

CSV = "customer_id,email,amount,country,churned\nc1,a@example.com,12.5,DE,0\nc2,b@example.com,3.0,FR,1\n"


def make_repo(directory: Path) -> Path:
    """A repository (its own ``.git`` root) with the data file and pipeline module the compliant spec uses."""
    (directory / ".git").mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    (directory / "data" / "transactions.csv").write_text(CSV)
    (directory / "pipeline.py").write_text(PIPELINE)
    return directory


def write_spec(directory: Path, spec: dict[str, Any], name: str = "mlops.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


DROP = object()
"""A mutation value that removes the key."""

Mutation = dict[str, Any]


def mutate(spec: dict[str, Any], changes: Mutation) -> dict[str, Any]:
    """A copy of ``spec`` with each dotted path set to its value (or removed for :data:`DROP`)."""
    out = copy.deepcopy(spec)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return out


Check = Callable[[dict[str, Any]], PolicyReport]
"""Checks the policies of a spec (the ``check`` fixture)."""


def results_for(report: PolicyReport, policy: str, address: str) -> list[PolicyResult]:
    return [r for r in report.results if r.policy.id == policy and r.address == address]


# --- the cases: every shipped policy passes and fails at least once ------------------------------------


@dataclass(frozen=True)
class Case:
    """``policy`` checked on ``address`` of the compliant spec changed by ``changes`` gives ``status``."""

    policy: str
    address: str
    status: str  # pass | fail | absent (the policy does not apply to the resource)
    changes: Mutation

    @property
    def id(self) -> str:
        what = ",".join(f"{k}={'DROP' if v is DROP else v}" for k, v in self.changes.items()) or "compliant"
        return re.sub(r"[^\w.=:/@,-]+", "_", f"{self.policy}-{self.status}-{what}")[:100]


def cases(policy: str, address: str, *, fails: list[Mutation], passes: list[Mutation] | None = None,
          absent: list[Mutation] | None = None) -> list[Case]:
    """A policy's cases; ``passes`` defaults to the compliant spec itself."""
    out = [Case(policy, address, "pass", change) for change in (passes if passes is not None else [{}])]
    out += [Case(policy, address, "fail", change) for change in fails]
    out += [Case(policy, address, "absent", change) for change in absent or []]
    return out


TX = "datasets.transactions"
FEATURES = "datasets.features"
MODEL = "models.churn"
GATE = "gates.churn-quality"
DEPLOYMENT = "deployments.churn-api"
MONITOR = "monitors.churn-drift"
TX_SCHEMA: dict[str, str] = COMPLIANT["datasets"]["transactions"]["schema"]
HEALTH_SCHEMA = {**TX_SCHEMA, "health_condition": "category"}
LOOKALIKE_SCHEMA = {**TX_SCHEMA, "trace_id": "string", "embrace_score": "float"}
THRESHOLD_ONLY = [{"metric": "auc", "op": ">=", "value": 0.8}]
ACCURACY = {"type": "accuracy", "metric": "auc", "min": 0.75}
LATENCY = {"type": "latency", "p95_ms": 200}
NO_ACCURACY = [{"type": "data_drift", "method": "psi", "threshold": 0.2}, LATENCY]

LIMITED_RISK: Mutation = {"compliance.risk": "limited"}
NO_MONITORS: Mutation = {"monitors": DROP}
NO_PII: Mutation = {"datasets.transactions.pii": False, "datasets.features.pii": False}
BATCH: Mutation = {"deployments.churn-api.mode": "batch", "deployments.churn-api.input": "features",
                   "deployments.churn-api.route": DROP}
LOCAL_ARTIFACTS: Mutation = {"storage.artifacts": ".mlops/artifacts", "storage.encryption": "none"}
KUBERAY: Mutation = {"cluster.provider": "kuberay", "cluster.address": DROP, "cluster.namespace": "ml-churn"}

BASELINE_CASES = [
    *cases("BASE-001", "project", fails=[{"owners": []}, {"owners": DROP}]),
    *cases("BASE-002", GATE, passes=[{}, {"gates.churn-quality.checks": []}],
           fails=[{"gates.churn-quality.checks": [], "gates.churn-quality.approvals": DROP},
                  {"gates.churn-quality.checks": [], "gates.churn-quality.approvals": {"required": 0}}]),
    *cases("BASE-003", DEPLOYMENT, fails=[{"deployments.churn-api.gates": []}]),
    *cases("BASE-004", DEPLOYMENT, fails=[NO_MONITORS], absent=[{**NO_MONITORS, **BATCH}]),
    *cases("BASE-005", MONITOR, fails=[{"monitors.churn-drift.checks": []}]),
    *cases("BASE-006", MODEL, fails=[{"models.churn.description": DROP}, {"models.churn.description": ""}]),
    *cases("BASE-007", MODEL, fails=[{"models.churn.retries": 0}, {"models.churn.retries": DROP}]),
    *cases("BASE-008", DEPLOYMENT, fails=[{"deployments.churn-api.replicas": 1}], absent=[BATCH]),
    *cases("BASE-009", MONITOR, fails=[{"monitors.churn-drift.reference": DROP}],
           absent=[{"monitors.churn-drift.reference": DROP,
                    "monitors.churn-drift.checks": [{"type": "latency", "p95_ms": 200}]}]),
    *cases("BASE-010", TX, fails=[{"datasets.transactions.schema": DROP}]),
    *cases("BASE-010", FEATURES, passes=[], fails=[], absent=[{}]),
    *cases("BASE-011", GATE, fails=[{"gates.churn-quality.checks": THRESHOLD_ONLY}],
           absent=[{"gates.churn-quality.checks": THRESHOLD_ONLY, "deployments": DROP, "monitors": DROP}]),
    *cases("BASE-012", MODEL, fails=[{"models.churn.evaluate": DROP}],
           absent=[{"models.churn.evaluate": DROP, "gates": DROP, "deployments.churn-api.gates": []}]),
    # derived data may be kept no longer, and read by no more principals, than the data it is made from
    *cases("BASE-013", FEATURES,
           passes=[{}, {"datasets.features.retention_days": 365}, {"datasets.features.retention_days": DROP}],
           fails=[{"datasets.features.retention_days": 366}],
           absent=[{"datasets.transactions.retention_days": DROP}]),
    *cases("BASE-013", TX, passes=[], fails=[], absent=[{}]),
    *cases("BASE-014", FEATURES,
           passes=[{}, {"datasets.features.access": ["team:fraud", "team:ml-platform"]},
                   {"datasets.features.access": DROP}, {"datasets.features.access": []}],
           fails=[{"datasets.features.access": ["team:ml-platform", "team:crm"]}],
           absent=[{"datasets.transactions.access": []}]),
    *cases("BASE-014", TX, passes=[], fails=[], absent=[{}]),
]

GDPR_CASES = [
    *cases("GDPR-001", TX, fails=[{"datasets.transactions.legal_basis": DROP}], absent=[NO_PII]),
    # obligations follow the data: a derived dataset that claims no PII still inherits them, and it
    # inherits the legal basis of its personal upstream data unless it declares one (SPEC §2)
    *cases("GDPR-001", FEATURES,
           passes=[{}, {"datasets.features.legal_basis": DROP}],
           fails=[{"datasets.features.legal_basis": DROP, "datasets.features.pii": False,
                   "datasets.transactions.legal_basis": DROP}]),
    *cases("GDPR-002", TX, fails=[{"datasets.transactions.description": DROP}], absent=[NO_PII]),
    *cases("GDPR-003", TX, fails=[{"datasets.transactions.access": []}], absent=[NO_PII]),
    *cases("GDPR-004", TX, fails=[{"datasets.transactions.retention_days": DROP}], absent=[NO_PII]),
    *cases("GDPR-005", TX, passes=[{}, {"datasets.transactions.retention_days": 3650}],
           fails=[{"datasets.transactions.retention_days": 5000}]),
    *cases("GDPR-006", TX, fails=[{"datasets.transactions.region": DROP}], absent=[NO_PII]),
    *cases("GDPR-007", TX,
           passes=[{}, {"datasets.transactions.region": "europe-west4"},
                   {"datasets.transactions.region": "westeurope"}],
           fails=[{"datasets.transactions.region": "us-east-1"},
                  {"datasets.transactions.region": "asia-southeast1"},
                  {"datasets.transactions.region": "eu-west-1-us"}],
           absent=[NO_PII, {"datasets.transactions.region": DROP}]),
    *cases("GDPR-008", FEATURES, passes=[{}, {"datasets.features.pii": DROP}],
           fails=[{"datasets.features.pii": False}, {"datasets.features.pii": []}],
           absent=[NO_PII]),
    *cases("GDPR-008", TX, passes=[], fails=[], absent=[{}]),
    *cases("GDPR-009", TX, fails=[{"datasets.transactions.pii": True}], absent=[NO_PII]),
    # an inherited `pii: true` is no declaration of the derived dataset's own
    *cases("GDPR-009", FEATURES, passes=[{}], fails=[{"datasets.features.pii": True}],
           absent=[{"datasets.transactions.pii": True, "datasets.features.pii": DROP}]),
    *cases("GDPR-010", MODEL, fails=[{"models.churn.intended_use": DROP}], absent=[NO_PII]),
    *cases("GDPR-011", TX,
           passes=[{"datasets.transactions.schema": HEALTH_SCHEMA,
                    "datasets.transactions.legal_basis": "consent"}],
           fails=[{"datasets.transactions.schema": HEALTH_SCHEMA},
                  {"datasets.transactions.schema": HEALTH_SCHEMA, "datasets.transactions.pii": False,
                   "datasets.transactions.legal_basis": DROP}],
           absent=[{}, {"datasets.transactions.schema": LOOKALIKE_SCHEMA}]),
]

AIACT_CASES = [
    *cases("AIACT-001", MODEL, fails=[{"models.churn.intended_use": DROP}], absent=[LIMITED_RISK]),
    *cases("AIACT-002", MODEL, fails=[{"models.churn.limitations": DROP}, {"models.churn.limitations": ""}],
           absent=[LIMITED_RISK]),
    *cases("AIACT-003", TX, fails=[{"datasets.transactions.description": DROP},
                                   {"datasets.transactions.schema": DROP}], absent=[LIMITED_RISK]),
    *cases("AIACT-004", GATE,
           fails=[{"gates.churn-quality.checks": [{"metric": "auc", "no_regression": 0.01}]},
                  {"gates.churn-quality.checks": []}],
           absent=[LIMITED_RISK]),
    *cases("AIACT-005", GATE,
           fails=[{"gates.churn-quality.approvals": DROP},
                  {"gates.churn-quality.approvals": {"required": 0, "from": ["team:risk"]}},
                  {"gates.churn-quality.approvals": {"required": 1}}],
           absent=[LIMITED_RISK]),
    *cases("AIACT-006", DEPLOYMENT, fails=[{"deployments.churn-api.gates": []}], absent=[LIMITED_RISK]),
    *cases("AIACT-007", DEPLOYMENT, fails=[NO_MONITORS, {**NO_MONITORS, **BATCH}], absent=[LIMITED_RISK]),
    *cases("AIACT-008", MONITOR, fails=[{"monitors.churn-drift.checks": NO_ACCURACY}], absent=[LIMITED_RISK]),
    *cases("AIACT-009", MONITOR,
           passes=[{}, {"monitors.churn-drift.checks": [{"type": "prediction_drift"}, ACCURACY]}],
           fails=[{"monitors.churn-drift.checks": [ACCURACY, LATENCY]}], absent=[LIMITED_RISK]),
    *cases("AIACT-010", MONITOR, fails=[{"monitors.churn-drift.on_breach": ["retrain", "rollback"]},
                                        {"monitors.churn-drift.on_breach": []}], absent=[LIMITED_RISK]),
    *cases("AIACT-011", MONITOR,
           passes=[{}, {"monitors.churn-drift.schedule": "24h"}, {"monitors.churn-drift.schedule": "1d"},
                   {"monitors.churn-drift.schedule": "1440m"}],
           fails=[{"monitors.churn-drift.schedule": "2d"}, {"monitors.churn-drift.schedule": "25h"},
                  {"monitors.churn-drift.schedule": "90000s"}],
           absent=[LIMITED_RISK]),
]

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ML_PARAMS = {"max_tokens": 256, "tokenizer": "bpe", "pad_token": "<pad>", "eos_token_id": 2,
             "key_column": "id", "run_name": "baseline_experiment_with_a_long_descriptive_name_v2",
             "url": "https://example.com/data.csv", "secondary": {"activation": "gelu", "dims": [64, 32]}}

SECURITY_CASES = [
    *cases("SEC-001", MODEL, passes=[{}, {"models.churn.params": ML_PARAMS}],
           fails=[{"models.churn.params.api_key": "x"}, {"models.churn.params.wandb": {"API_TOKEN": "x"}},
                  {"models.churn.params.db": [{"Password": "x"}]},
                  {"models.churn.params.client_secret": "x"}]),
    *cases("SEC-002", FEATURES, passes=[{}, {"datasets.features.params": ML_PARAMS}],
           fails=[{"datasets.features.params.db_password": "x"}, {"datasets.features.params.hf_token": "x"}]),
    *cases("SEC-003", MODEL, passes=[{}, {"models.churn.params": ML_PARAMS}],
           fails=[{"models.churn.params.endpoint": "AKIAIOSFODNN7EXAMPLE"},
                  {"models.churn.params.signing": AWS_SECRET},
                  {"models.churn.params.pinned": SHA256},
                  {"models.churn.params.sources": ["ok", {"db": "postgresql://ml:hunter2@db/prod"}]}]),
    *cases("SEC-004", FEATURES, passes=[{}, {"datasets.features.params": ML_PARAMS}],
           fails=[{"datasets.features.params.llm": "sk-proj-abcdefghijklmnopqrstuvwxyz012345"},
                  {"datasets.features.params.gh": "ghp_abcdefghijklmnopqrstuvwxyz0123456789"},
                  {"datasets.features.params.pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n"}]),
    *cases("SEC-005", "storage", passes=[{}, {"storage.encryption": "sse"}],
           fails=[{"storage.encryption": "none"},
                  {"storage.artifacts": "gs://acme/ml", "storage.encryption": DROP}],
           absent=[LOCAL_ARTIFACTS]),
    *cases("SEC-006", "storage", fails=[{"storage.encryption": "sse"}], absent=[LOCAL_ARTIFACTS]),
    *cases("SEC-007", "cluster",
           passes=[{}, {"cluster.address": "ray://localhost:10001"}, {"cluster.address": "ray://10.0.0.5:10001"},
                   {"cluster.address": "ray://ray-head:10001"}],
           fails=[{"cluster.address": "ray://203.0.113.10:10001"}, {"cluster.address": "ray://ray.example.com:10001"}],
           absent=[{"cluster.address": "auto"}, {"cluster.address": DROP}]),
    *cases("SEC-008", "storage",
           fails=[{"storage.state": "postgresql://mlops:hunter2@db.internal:5432/mlops"},
                  {"storage.mlflow": "https://ana:pw@mlflow.example.com"},
                  {"storage.artifacts": "s3://acme/ml?X-Amz-Signature=abc123"}]),
    *cases("SEC-009", "project", fails=[{"owners": ["ana@example.com"]}, {"owners": ["user:ana"]}]),
    *cases("SEC-010", MONITOR, fails=[{"monitors.churn-drift.webhook": "http://alerts.example.com/hook"}],
           absent=[{"monitors.churn-drift.webhook": DROP}]),
    *cases("SEC-011", "storage",
           passes=[{"storage.mlflow": "http://localhost:5000"}, {"storage.mlflow": "http://mlflow.ml.svc:5000"}],
           fails=[{"storage.mlflow": "http://mlflow.example.com:5000"},
                  {"storage.mlflow": "http://localhost.attacker.com"}],
           absent=[{}, {"storage.mlflow": DROP}]),
    *cases("SEC-012", "cluster", passes=[KUBERAY],
           fails=[{**KUBERAY, "cluster.namespace": DROP}, {**KUBERAY, "cluster.namespace": "default"}],
           absent=[{}]),
]

ALL_CASES = BASELINE_CASES + GDPR_CASES + AIACT_CASES + SECURITY_CASES


# --- running specs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def check(repo: Path) -> Check:
    """Write a spec into the shared repository and check its policies (one evaluation per distinct spec)."""
    reports: dict[str, PolicyReport] = {}

    def run(spec: dict[str, Any]) -> PolicyReport:
        text = yaml.safe_dump(spec, sort_keys=False)
        if text not in reports:
            path = repo / f"spec-{len(reports)}.yaml"
            path.write_text(text)
            reports[text] = check_policies(load_project(path))
        return reports[text]

    return run


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)
def test_policy_case(case: Case, check: Check) -> None:
    report = check(mutate(COMPLIANT, case.changes))
    found = results_for(report, case.policy, case.address)
    if case.status == "absent":
        assert found == [], f"{case.policy} should not apply to {case.address}"
        return
    assert [r.status for r in found] == [case.status], \
        f"{case.policy} on {case.address}: {[(r.status, r.message, r.detail) for r in found]}"
    result = found[0]
    if case.status == "fail":
        assert not re.search(r"\{[a-z_.]+\}", result.message), f"unformatted message: {result.message}"
        assert result.detail
        assert result.position.line >= 1 and result.position.file.endswith(".yaml")


def test_every_shipped_policy_has_a_passing_and_a_failing_case() -> None:
    shipped = {policy.id for loaded in discover([]) if loaded.shipped for policy in loaded.pack.policies}
    passing = {case.policy for case in ALL_CASES if case.status == "pass"}
    failing = {case.policy for case in ALL_CASES if case.status == "fail"}
    assert len(shipped) >= 24
    assert shipped - passing == set(), "policies without a passing case"
    assert shipped - failing == set(), "policies without a failing case"
    assert (passing | failing) - shipped == set(), "cases for policies that do not exist"


def test_shipped_packs_are_complete_and_documented() -> None:
    packs = {loaded.pack.name: loaded.pack for loaded in discover([]) if loaded.shipped}
    assert set(packs) == {"baseline", "gdpr", "eu-ai-act", "security"}
    prefixes = {"baseline": "BASE-", "gdpr": "GDPR-", "eu-ai-act": "AIACT-", "security": "SEC-"}
    for name, pack in packs.items():
        assert pack.description
        for policy in pack.policies:
            assert policy.id.startswith(prefixes[name])
            assert policy.title and policy.rationale and policy.remediation and policy.message


def test_a_compliant_realistic_spec_passes_every_policy(check: Check) -> None:
    report = check(COMPLIANT)
    assert report.packs == ["baseline", "eu-ai-act", "gdpr", "security"]
    assert [(r.policy.id, r.address, r.message, r.detail) for r in report.failures] == []
    assert report.waiver_problems == []
    assert report.ok
    shipped = {policy.id for loaded in discover([]) if loaded.shipped for policy in loaded.pack.policies}
    applied = {r.policy.id for r in report.results}
    # only the policies about special-category columns, KubeRay and plain-HTTP tracking find nothing to check
    assert shipped - applied == {"GDPR-011", "SEC-011", "SEC-012"}


def test_frameworks_select_the_packs(check: Check) -> None:
    report = check(mutate(COMPLIANT, {"compliance.frameworks": ["security"]}))
    assert report.packs == ["baseline", "security"]
    assert {r.pack for r in report.results} == {"baseline", "security"}
    baseline_only = check(mutate(COMPLIANT, {"compliance": DROP}))
    assert baseline_only.packs == ["baseline"]


def test_an_error_failure_blocks_and_a_warning_does_not(check: Check) -> None:
    warning = check(mutate(COMPLIANT, {"models.churn.retries": 0}))
    assert [r.policy.id for r in warning.failures] == ["BASE-007"]
    assert warning.ok and warning.errors == []
    error = check(mutate(COMPLIANT, {"datasets.transactions.legal_basis": DROP}))
    assert [(r.policy.id, r.address) for r in error.errors] == [("GDPR-001", TX)]
    assert not error.ok


# --- waivers -------------------------------------------------------------------------------------------


def waiver(policy: str, resource: str, expires: str) -> dict[str, Any]:
    return {"policy": policy, "resource": resource, "reason": "Legacy export; deletion scheduled",
            "approved_by": "dpo@example.com", "expires": expires}


NO_RETENTION: Mutation = {"datasets.transactions.retention_days": DROP}


def test_an_active_waiver_waives_the_failure(check: Check) -> None:
    report = check(mutate(COMPLIANT, {**NO_RETENTION, "waivers": [waiver("GDPR-004", TX, "2999-12-31")]}))
    [result] = results_for(report, "GDPR-004", TX)
    assert result.status == "waived"
    assert "Legacy export" in result.waiver_reason and "dpo@example.com" in result.waiver_reason
    assert report.waiver_problems == []
    assert report.ok


def test_a_waiver_only_covers_its_own_policy_and_resource(check: Check) -> None:
    spec = mutate(COMPLIANT, {**NO_RETENTION, "datasets.features.retention_days": DROP,
                              "waivers": [waiver("GDPR-004", TX, "2999-12-31")]})
    report = check(spec)
    assert [r.status for r in results_for(report, "GDPR-004", TX)] == ["waived"]
    assert [r.status for r in results_for(report, "GDPR-004", FEATURES)] == ["fail"]
    assert not report.ok


def test_an_expired_waiver_does_not_waive_and_is_reported(check: Check) -> None:
    report = check(mutate(COMPLIANT, {**NO_RETENTION, "waivers": [waiver("GDPR-004", TX, "2000-01-31")]}))
    assert [r.status for r in results_for(report, "GDPR-004", TX)] == ["fail"]
    [problem] = report.waiver_problems
    assert "expired on 2000-01-31" in problem.message and "GDPR-004" in problem.message
    assert problem.position is not None and problem.position.line > 1
    assert not report.ok


@pytest.mark.parametrize(("policy", "resource", "expected"), [
    ("GDPR-999", TX, "unknown policy 'GDPR-999'"),
    ("GDPR-004", "datasets.transaction", "unknown resource 'datasets.transaction'"),
])
def test_a_waiver_of_an_unknown_policy_or_resource_is_reported(
        check: Check, policy: str, resource: str, expected: str) -> None:
    report = check(mutate(COMPLIANT, {"waivers": [waiver(policy, resource, "2999-12-31")]}))
    [problem] = report.waiver_problems
    assert expected in problem.message
    assert problem.severity == "error"
    assert not report.ok


# --- project packs and pack selection errors ------------------------------------------------------------

ACME_PACK: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "kind": "PolicyPack",
    "name": "acme",
    "description": "House rules",
    "policies": [{
        "id": "ACME-001",
        "title": "Training is seeded explicitly",
        "severity": "error",
        "applies_to": "models",
        "schema": {"properties": {"seed": {"minimum": 1}}},
        "message": "{address} trains with the default seed",
        "rationale": "Reproducible runs need a chosen seed.",
        "remediation": "Set `seed:`.",
    }],
}


def project_with_pack(directory: Path, spec: dict[str, Any], pack: dict[str, Any]) -> Path:
    make_repo(directory)
    (directory / "policies").mkdir()
    (directory / "policies" / f"{pack['name']}.yaml").write_text(yaml.safe_dump(pack, sort_keys=False))
    return write_spec(directory, spec)


@pytest.mark.parametrize(("seed", "status"), [(7, "pass"), (0, "fail")])
def test_a_policies_folder_next_to_the_spec_adds_a_pack(tmp_path: Path, seed: int, status: str) -> None:
    spec_path = project_with_pack(tmp_path, mutate(COMPLIANT, {"models.churn.seed": seed}), ACME_PACK)
    report = check_policies(load_project(spec_path))
    assert "acme" in report.packs
    assert [r.status for r in results_for(report, "ACME-001", MODEL)] == [status]
    assert {r.pack for r in results_for(report, "ACME-001", MODEL)} == {"acme"}


def test_a_duplicate_policy_id_across_packs_is_an_error(tmp_path: Path) -> None:
    duplicate = copy.deepcopy(ACME_PACK)
    duplicate["policies"][0]["id"] = "BASE-001"
    spec_path = project_with_pack(tmp_path, COMPLIANT, duplicate)
    with pytest.raises(PolicyPackError) as raised:
        check_policies(load_project(spec_path))
    [diagnostic] = raised.value.diagnostics
    assert "policy id BASE-001 is already defined in" in diagnostic.message
    assert diagnostic.position is not None and diagnostic.position.file.endswith("acme.yaml")


def test_an_unknown_framework_is_an_error_with_a_suggestion(repo: Path) -> None:
    spec = mutate(COMPLIANT, {"compliance.frameworks": ["gdrp", "security"]})
    spec_path = write_spec(repo, spec, "typo.yaml")
    with pytest.raises(PolicyPackError) as raised:
        check_policies(load_project(spec_path))
    [diagnostic] = raised.value.diagnostics
    assert diagnostic.message == "unknown policy pack 'gdrp' (did you mean 'gdpr'?)"
    assert diagnostic.position is not None and diagnostic.position.line > 1
