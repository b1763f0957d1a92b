"""Policy views (SPEC §2): no unset field is ever ``null``, the spec's defaults stay, and governance
follows the data (a derived dataset inherits ``pii``, ``legal_basis``, ``region``, ``retention_days`` and
``access`` from its upstream datasets unless it declares its own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import PolicyReport, PolicyResult, check_policies, load_project
from compiler.resolve import Project

MakeProject = Callable[..., Path]

FILES = {
    "data/customers.csv": "email,amount,country\na@example.com,1.0,DE\n",
    "data/tickets.csv": "email,topic\na@example.com,billing\n",
    "data/weather.csv": "day,temp\n2026-01-01,3.5\n",
}


def every_section() -> dict[str, Any]:
    """A spec with every section, each resource leaving its optional fields unset."""
    return {
        "apiVersion": "mlops/v1",
        "project": "demo",
        "datasets": {
            "customers": {"path": "data/customers.csv"},
            "features": {"from": ["customers"], "transform": "pipeline:build_features"},
        },
        "models": {"churn": {"train": "pipeline:train", "data": {"train": "features"}}},
        "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8},
                                                           {"metric": "auc", "no_regression": 0.01}]}},
        "deployments": {"api": {"model": "churn", "gates": ["quality"]}},
        "monitors": {"drift": {"deployment": "api", "checks": [{"type": "data_drift"},
                                                                {"type": "accuracy", "metric": "auc", "min": 0.7}]}},
    }


def governed() -> dict[str, Any]:
    """Two personal sources that agree on their legal basis and region, one non-personal source."""
    spec = every_section()
    spec["datasets"] = {
        "customers": {"path": "data/customers.csv", "pii": ["email"], "legal_basis": "contract",
                      "region": "eu-west-1", "retention_days": 365, "access": ["team:crm", "team:ml"]},
        "tickets": {"path": "data/tickets.csv", "pii": ["email"], "legal_basis": "contract",
                    "region": "eu-west-1", "retention_days": 90, "access": ["team:ml", "team:support"]},
        "weather": {"path": "data/weather.csv"},
        "features": {"from": ["customers", "tickets", "weather"], "transform": "pipeline:build_features"},
        "scores": {"from": ["features"], "transform": "pipeline:build_features"},
    }
    spec["datasets"]["customers"]["description"] = "One row per customer"
    spec["datasets"]["tickets"]["description"] = "One row per support ticket"
    spec["models"]["churn"]["intended_use"] = "Ranking customers for retention offers"
    return spec


def nulls(value: Any, path: str = "") -> Iterator[str]:
    """Where ``value`` holds ``None``, as dotted paths."""
    if value is None:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from nulls(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from nulls(item, f"{path}.{i}")


def results(report: PolicyReport, policy: str, address: str) -> list[PolicyResult]:
    return [r for r in report.results if r.policy.id == policy and r.address == address]


def write_pack(directory: Path, policies: list[dict[str, Any]]) -> None:
    (directory / "policies").mkdir(exist_ok=True)
    pack = {"apiVersion": "mlops/v1", "kind": "PolicyPack", "name": "house", "description": "House rules",
            "policies": [{"severity": "error", "message": "{address} fails", "rationale": "r", "remediation": "r",
                          **policy} for policy in policies]}
    (directory / "policies" / "house.yaml").write_text(yaml.safe_dump(pack, sort_keys=False))


@pytest.fixture
def project(tmp_path: Path, make_project: MakeProject) -> Project:
    spec = every_section()
    spec["cluster"] = {"provider": "kuberay", "workers": {"gpu": {"gpus": 1}}}
    spec["deployments"]["api"]["auth"] = {"token_env": "API_TOKEN"}  # served in the cluster: a token is required
    return load_project(make_project(tmp_path, spec, FILES))


# --- part 1: views without unset fields -------------------------------------------------------------------


def test_no_view_of_any_section_holds_null(project: Project) -> None:
    assert {"project", "cluster", "storage", "datasets.customers", "datasets.features", "models.churn",
            "gates.quality", "deployments.api", "monitors.drift"} <= set(project.views)
    found = {address: list(nulls(view)) for address, view in project.views.items()}
    assert {address: paths for address, paths in found.items() if paths} == {}


def test_unset_optional_fields_are_absent_from_the_views(project: Project) -> None:
    views = project.views
    absent = {
        "cluster": ["namespace"],
        "storage": ["mlflow"],
        "datasets.customers": ["from", "transform", "schema", "legal_basis", "retention_days", "region",
                               "description"],
        "datasets.features": ["path", "format", "schema", "description"],
        "models.churn": ["evaluate", "sweep", "objective", "description", "intended_use", "limitations"],
        "gates.quality": ["approvals"],
        "deployments.api": ["input", "version", "columns"],
        "monitors.drift": ["reference", "webhook"],
    }
    for address, fields in absent.items():
        assert [f for f in fields if f in views[address]] == [], address
    assert "memory" not in views["models.churn"]["resources"]
    assert "gpu_type" not in views["cluster"]["workers"]["gpu"]
    threshold, regression = views["gates.quality"]["checks"]
    assert threshold == {"metric": "auc", "op": ">=", "value": 0.8}
    assert regression == {"metric": "auc", "no_regression": 0.01}
    assert views["monitors.drift"]["checks"][0] == {"type": "data_drift", "method": "psi", "min_requests": 20}
    # the cluster's own Ray `address`, unset, leaves the view's `address` that of the resource
    assert views["cluster"]["address"] == "cluster"


def test_a_field_written_as_null_is_absent_too(tmp_path: Path, make_project: MakeProject) -> None:
    spec = every_section()
    spec["storage"] = {"mlflow": None}
    spec["deployments"]["api"].update(input=None, version=None, route=None)
    spec["models"]["churn"]["limitations"] = None
    views = load_project(make_project(tmp_path, spec, FILES)).views
    assert "mlflow" not in views["storage"]
    assert [k for k in ("input", "version", "limitations") if k in views["deployments.api"]] == []
    assert "limitations" not in views["models.churn"]


def test_defaults_the_spec_applies_stay_in_the_views(project: Project) -> None:
    views = project.views
    model = views["models.churn"]
    assert (model["seed"], model["retries"], model["timeout"], model["params"]) == (0, 0, "1h", {})
    assert model["resources"] == {"cpus": 1, "gpus": 0, "workers": 1}
    deployment = views["deployments.api"]
    assert (deployment["mode"], deployment["replicas"], deployment["route"]) == ("realtime", 1, "/api")
    assert views["monitors.drift"]["schedule"] == "1h" and views["monitors.drift"]["on_breach"] == ["alert"]
    assert views["datasets.customers"]["format"] == "csv"  # from the path's suffix
    assert (views["datasets.customers"]["pii"], views["datasets.customers"]["access"]) == (False, [])
    assert views["storage"]["encryption"] == "none"
    assert views["project"]["compliance"] == {"frameworks": [], "risk": "limited"}
    assert views["gates.quality"]["checks"][0]["op"] == ">="


def test_a_pack_requiring_limitations_fails_a_model_without_them(tmp_path: Path, make_project: MakeProject) -> None:
    write_pack(tmp_path, [{"id": "HOUSE-001", "title": "Limitations are documented", "applies_to": "models",
                           "schema": {"required": ["limitations"]}},
                          {"id": "HOUSE-002", "title": "Gates name approvers", "applies_to": "gates",
                           "schema": {"required": ["approvals"]}},
                          {"id": "HOUSE-003", "title": "Monitors post somewhere", "applies_to": "monitors",
                           "schema": {"required": ["webhook"]}},
                          {"id": "HOUSE-004", "title": "Tracking is mirrored", "applies_to": "storage",
                           "schema": {"required": ["mlflow"]}}])
    report = check_policies(load_project(make_project(tmp_path, every_section(), FILES)))
    for policy, address in (("HOUSE-001", "models.churn"), ("HOUSE-002", "gates.quality"),
                            ("HOUSE-003", "monitors.drift"), ("HOUSE-004", "storage")):
        [result] = results(report, policy, address)
        assert result.status == "fail", (policy, result.detail)
        assert "null" not in result.detail and "None" not in result.detail
    spec = every_section()
    spec["models"]["churn"]["limitations"] = "Trained on EU customers only"
    fixed = check_policies(load_project(make_project(tmp_path, spec, FILES)))
    assert [r.status for r in results(fixed, "HOUSE-001", "models.churn")] == ["pass"]


# --- part 2: governance follows the data ------------------------------------------------------------------


def test_a_derived_dataset_inherits_governance_from_its_upstream(tmp_path: Path, make_project: MakeProject) -> None:
    views = load_project(make_project(tmp_path, governed(), FILES)).views
    features = views["datasets.features"]
    assert features["pii"] is True                      # personal: some upstream is
    assert features["legal_basis"] == "contract"        # every personal upstream agrees
    assert features["region"] == "eu-west-1"
    assert features["retention_days"] == 90             # the shortest upstream
    assert features["access"] == ["team:ml"]            # allowed on every upstream that restricts access
    assert features["refs"]["inherited"] == {"pii": True, "legal_basis": "contract", "region": "eu-west-1",
                                             "retention_days": 90, "access": ["team:ml"]}
    assert features["refs"]["declared"] == [] and features["refs"]["widens"] == {}
    assert features["refs"]["pii"] is True
    # transitively: what features carries, scores inherits
    scores = views["datasets.scores"]
    assert {k: scores[k] for k in ("pii", "legal_basis", "region", "retention_days", "access")} == \
        {"pii": True, "legal_basis": "contract", "region": "eu-west-1", "retention_days": 90, "access": ["team:ml"]}
    # a source inherits nothing
    assert views["datasets.customers"]["refs"]["inherited"] == {}
    assert views["datasets.customers"]["refs"]["declared"] == ["pii", "legal_basis", "region", "retention_days",
                                                               "access"]
    assert "legal_basis" not in views["datasets.weather"]


def test_legal_basis_and_region_are_inherited_only_when_every_personal_upstream_agrees(
        tmp_path: Path, make_project: MakeProject) -> None:
    spec = governed()
    spec["datasets"]["tickets"].update(legal_basis="legitimate_interests", region="eu-central-1")
    spec["datasets"]["weather"].update(legal_basis="consent", region="us-east-1")  # not personal: not counted
    views = load_project(make_project(tmp_path, spec, FILES)).views
    features = views["datasets.features"]
    assert "legal_basis" not in features and "region" not in features
    assert set(features["refs"]["inherited"]) == {"pii", "retention_days", "access"}
    spec["datasets"]["tickets"].update(legal_basis="contract", region="eu-west-1")
    views = load_project(make_project(tmp_path, spec, FILES)).views
    assert (views["datasets.features"]["legal_basis"], views["datasets.features"]["region"]) == \
        ("contract", "eu-west-1")


def test_a_derived_dataset_of_non_personal_data_is_not_personal(tmp_path: Path, make_project: MakeProject) -> None:
    spec = governed()
    spec["datasets"]["features"]["from"] = ["weather"]
    features = load_project(make_project(tmp_path, spec, FILES)).views["datasets.features"]
    assert features["pii"] is False and features["refs"]["pii"] is False
    assert features["refs"]["inherited"] == {"pii": False}


def test_what_a_derived_dataset_declares_wins_over_what_it_inherits(
        tmp_path: Path, make_project: MakeProject) -> None:
    spec = governed()
    spec["datasets"]["features"].update(pii=["email"], legal_basis="consent", region="eu-central-1",
                                        retention_days=30, access=["team:ml"])
    features = load_project(make_project(tmp_path, spec, FILES)).views["datasets.features"]
    assert {k: features[k] for k in ("pii", "legal_basis", "region", "retention_days", "access")} == \
        {"pii": ["email"], "legal_basis": "consent", "region": "eu-central-1", "retention_days": 30,
         "access": ["team:ml"]}
    assert features["refs"]["declared"] == ["pii", "legal_basis", "region", "retention_days", "access"]
    assert features["refs"]["inherited"]["retention_days"] == 90
    assert features["refs"]["widens"] == {}


def test_a_longer_retention_or_a_wider_access_than_inherited_fails(
        tmp_path: Path, make_project: MakeProject) -> None:
    spec = governed()
    spec["datasets"]["features"].update(retention_days=365, access=["team:ml", "team:crm"])
    path = make_project(tmp_path, spec, FILES)
    project = load_project(path)
    assert project.views["datasets.features"]["refs"]["widens"] == {"retention_days": 365, "access": ["team:crm"]}
    report = check_policies(project)
    [retention] = results(report, "BASE-013", "datasets.features")
    [access] = results(report, "BASE-014", "datasets.features")
    assert (retention.status, access.status) == ("fail", "fail")
    assert retention.blocking and access.blocking and not report.ok
    assert retention.message == ("datasets.features declares retention_days 365, longer than the 90 days of the "
                                 "upstream data it is made from")
    assert access.message.startswith("datasets.features lets [team:crm] read it")
    lines = path.read_text().splitlines()
    assert lines[retention.position.line - 1][retention.position.column - 1:].startswith("365")
    assert lines[access.position.line - 1].strip().startswith("access:") or \
        lines[access.position.line - 1].strip().startswith("- team:")
    # the scores derived from features inherit the declared (wider) values and may not widen them further
    assert [r.status for r in results(report, "BASE-013", "datasets.scores")] == ["pass"]


def test_declaring_nothing_or_less_than_inherited_passes(tmp_path: Path, make_project: MakeProject) -> None:
    spec = governed()
    spec["datasets"]["scores"].update(retention_days=30, access=["team:ml"])
    report = check_policies(load_project(make_project(tmp_path, spec, FILES)))
    for address in ("datasets.features", "datasets.scores"):
        assert [r.status for r in results(report, "BASE-013", address)] == ["pass"]
        assert [r.status for r in results(report, "BASE-014", address)] == ["pass"]
    assert results(report, "BASE-013", "datasets.customers") == []  # a source inherits nothing


def gdpr(spec: dict[str, Any]) -> dict[str, Any]:
    spec["compliance"] = {"frameworks": ["gdpr"]}
    for name in ("customers", "tickets"):
        spec["datasets"][name]["description"] = f"The {name} of the CRM"
    return spec


def test_derived_personal_data_that_declares_nothing_passes_gdpr(tmp_path: Path, make_project: MakeProject) -> None:
    spec = gdpr(governed())
    report = check_policies(load_project(make_project(tmp_path, spec, FILES)))
    failing = [(r.policy.id, r.address, r.message) for r in report.failures if r.address == "datasets.features"]
    # only the description cannot be inherited; no GDPR-008 claiming a `pii: false` it never wrote
    assert failing == [("GDPR-002", "datasets.features", "datasets.features holds personal data but has no "
                                                         "description")]
    assert [r.status for r in results(report, "GDPR-008", "datasets.features")] == ["pass"]
    assert results(report, "GDPR-009", "datasets.features") == []  # its inherited `pii: true` is no declaration
    assert not report.ok
    for name in ("features", "scores"):
        spec["datasets"][name]["description"] = f"{name} per customer"
    described = check_policies(load_project(make_project(tmp_path, spec, FILES)))
    assert [r for r in described.failures if r.policy.id.startswith("GDPR")] == [] and described.ok


@pytest.mark.parametrize(("declared", "shown"), [(False, "false"), ([], "[]")])
def test_declaring_derived_personal_data_anonymous_needs_a_waiver(
        tmp_path: Path, make_project: MakeProject, declared: Any, shown: str) -> None:
    spec = gdpr(governed())
    spec["datasets"]["features"]["pii"] = declared
    spec["datasets"]["features"]["description"] = "Spend per customer, anonymised"  # the record of processing
    report = check_policies(load_project(make_project(tmp_path, spec, FILES)))
    [claim] = results(report, "GDPR-008", "datasets.features")
    assert claim.status == "fail" and claim.blocking
    assert claim.message == f"datasets.features derives from personal data but declares `pii: {shown}`, " \
                            "a claim that it is anonymous"
    spec["waivers"] = [{"policy": "GDPR-008", "resource": "datasets.features", "reason": "Anonymisation assessed",
                        "approved_by": "dpo@example.com", "expires": "2999-01-01"}]
    waived = check_policies(load_project(make_project(tmp_path, spec, FILES)))
    assert [r.status for r in results(waived, "GDPR-008", "datasets.features")] == ["waived"]
    # the anonymised data passes no personal data on: what is derived from it is not personal
    assert waived.ok
    assert load_project(make_project(tmp_path, spec, FILES)).views["datasets.scores"]["pii"] is False
