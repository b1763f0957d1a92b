"""Values in user-facing messages are written as in YAML or JSON (``null``, ``true``,
``[{metric: auc, ...}]``), never as Python reprs (``None``, ``True``, ``[{'metric': 'auc', ...}]``):
policy messages and details, spec errors, and plan / diff change reasons."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import check_policies, load_project
from compiler.change_reasons import config_reasons
from compiler.errors import SpecError
from compiler.load import load_text
from compiler.parse import parse
from compiler.values import quoted, yaml_text

MakeProject = Callable[..., Path]
PYTHON_REPR = re.compile(r"\bNone\b|\bTrue\b|\bFalse\b|\{'|\['|'[a-z_]+': ")

SPEC: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "demo",
    "datasets": {"raw": {"path": "data/raw.csv", "schema": {"a": "int"}}},
    "models": {"churn": {"train": "pipeline:train", "evaluate": "pipeline:evaluate", "data": {"train": "raw"},
                         "description": "Churn", "retries": 2,
                         "params": {"lr": 0.01, "optimizer": None, "amsgrad": True, "layers": [{"units": 8}]}}},
    "gates": {"quality": {"model": "churn", "checks": [{"metric": "auc", "op": ">=", "value": 0.8},
                                                       {"metric": "logloss", "op": "<=", "value": 0.5}]}},
    "deployments": {"api": {"model": "churn", "gates": ["quality"], "replicas": 2}},
    "monitors": {"drift": {"deployment": "api", "reference": "raw", "checks": [{"type": "latency", "p95_ms": 200}]}},
}

HOUSE = [
    {"id": "HOUSE-001", "applies_to": "gates", "schema": {"properties": {"checks": {"maxItems": 1}}},
     "message": "{address} has {checks}"},
    {"id": "HOUSE-002", "applies_to": "models", "schema": {"properties": {"params": {"properties": {
        "optimizer": {"type": "string"}}}}}, "message": "{address} uses optimizer {params.optimizer}"},
    {"id": "HOUSE-003", "applies_to": "models", "schema": {"properties": {"params": {"properties": {
        "amsgrad": {"const": False}}}}}, "message": "{address} sets amsgrad to {params.amsgrad}"},
    {"id": "HOUSE-004", "applies_to": "models", "schema": {"properties": {"params": {"properties": {
        "layers": {"items": {"properties": {"units": {"minimum": 16}}}}}}}},
     "message": "{address} has layers {params.layers}"},
    {"id": "HOUSE-005", "applies_to": "models", "schema": {"properties": {"params": {"not": {"required": ["lr"]}}}},
     "message": "{address} sets params {params}"},
]


def house_pack(directory: Path) -> None:
    (directory / "policies").mkdir(exist_ok=True)
    pack = {"apiVersion": "mlops/v1", "kind": "PolicyPack", "name": "house", "description": "House rules",
            "policies": [{"title": p["id"], "severity": "warning", "rationale": "r", "remediation": "r", **p}
                         for p in HOUSE]}
    (directory / "policies" / "house.yaml").write_text(yaml.safe_dump(pack, sort_keys=False))


def test_policy_messages_and_details_write_values_as_yaml(tmp_path: Path, make_project: MakeProject) -> None:
    house_pack(tmp_path)
    report = check_policies(load_project(make_project(tmp_path, SPEC, {"data/raw.csv": "a\n1\n"})))
    found = {r.policy.id: (r.message, r.detail) for r in report.failures}
    assert found["HOUSE-001"] == (
        "gates.quality has [{metric: auc, op: '>=', value: 0.8}, {metric: logloss, op: '<=', value: 0.5}]",
        "checks: [{metric: auc, op: '>=', value: 0.8}, {metric: logloss, op: '<=', value: 0.5}] has more than "
        "1 item")
    assert found["HOUSE-002"] == ("models.churn uses optimizer null", "params.optimizer: null is not of type string")
    assert found["HOUSE-003"] == ("models.churn sets amsgrad to true", "params.amsgrad: true is not false")
    assert found["HOUSE-004"] == ("models.churn has layers [{units: 8}]",
                                  "params.layers.0.units: 8 is less than the minimum of 16")
    message, detail = found["HOUSE-005"]
    assert message == "models.churn sets params {lr: 0.01, optimizer: null, amsgrad: true, layers: [{units: 8}]}"
    assert detail == "params: {lr: 0.01, optimizer: null, amsgrad: true, layers: [{units: 8}]} is not allowed here"
    # a shipped policy over a list of mappings (BASE-011: no no_regression check)
    [regression] = [r for r in report.failures if r.policy.id == "BASE-011"]
    assert regression.detail.startswith("checks: no item of [{metric: auc, op: '>=', value: 0.8}, ")
    for result in report.results:
        assert not PYTHON_REPR.search(result.message), result.message
        assert not PYTHON_REPR.search(result.detail), result.detail


@pytest.mark.parametrize(("written", "expected"), [
    ("compliance: {risk: [high]}", "compliance: risk: [high] is not one of"),
    ("compliance: {risk: null}", "compliance: risk: null is not one of"),
    ("compliance: {risk: true}", "compliance: risk: true is not one of"),
    ("cluster: {provider: {kind: ray}}", "cluster: provider: {kind: ray} is not one of"),
    ("storage: {encryption: false}", "storage: encryption: false is not one of"),
    ("owners: [nobody]", "project: owners.0: 'nobody' is not a principal"),
    ("monitors: {w: {deployment: d, checks: [{type: null}]}}", "monitors.w: checks.0: unknown type null;"),
    ("monitors: {w: {deployment: d, checks: [{type: [x]}]}}", "monitors.w: checks.0: unknown type [x];"),
])
def test_spec_errors_write_values_as_yaml(written: str, expected: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse(load_text(f"apiVersion: mlops/v1\nproject: demo\n{written}\n", "m.yaml"))
    [error] = raised.value.diagnostics
    assert f"{error.address}: {error.message}".startswith(expected), error.render()
    assert not PYTHON_REPR.search(error.message), error.message


def test_change_reasons_write_values_as_json() -> None:
    before = {"checks": [{"metric": "auc", "op": ">=", "value": 0.8}], "route": None, "params": {"amsgrad": False}}
    after = {"checks": [{"metric": "auc", "op": ">=", "value": 0.85}], "route": "/api", "params": {"amsgrad": True}}
    reasons = config_reasons(before, after)
    assert reasons == ['checks: [{"metric":"auc","op":">=","value":0.8}] -> [{"metric":"auc","op":">=","value":0.85}]',
                       "params.amsgrad: false -> true", 'route: null -> "/api"']
    assert not any(PYTHON_REPR.search(reason) for reason in reasons)


def test_values_render_as_one_line_of_yaml() -> None:
    assert yaml_text([{"metric": "auc", "op": ">=", "value": 0.8}]) == "[{metric: auc, op: '>=', value: 0.8}]"
    assert (yaml_text(None), yaml_text(True), yaml_text(False), yaml_text([]), yaml_text({})) == \
        ("null", "true", "false", "[]", "{}")
    assert yaml_text(["team:crm", "ana@example.com"]) == "[team:crm, ana@example.com]"
    assert yaml_text(["yes", "null", "2027-01-31", "1.5"]) == "['yes', 'null', '2027-01-31', '1.5']"  # stay strings
    assert yaml_text("a\nb") == '"a\\nb"'
    assert quoted("eu-west-1") == "'eu-west-1'" and quoted("it's") == "'it''s'"
    assert yaml_text(10 ** 400, limit=24).endswith("... (401 digits)")
    for value in ([{"a": None, "b": [True, 1.5, "x y"]}], {"k": "v: w"}, "-----BEGIN KEY-----\nMII"):
        assert yaml.safe_load(yaml_text(value, limit=None)) == value
