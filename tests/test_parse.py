"""Parsing a loaded document into the typed spec: positioned, addressed errors and defaults."""

from __future__ import annotations

from datetime import date

import pytest

from compiler.errors import Diagnostic, Position, SpecError
from compiler.load import load_text
from compiler.parse import address_of, parse
from compiler.spec import Spec, duration_seconds, memory_bytes

HEAD = "apiVersion: mlops/v1\nproject: demo\n"


def _parse(text: str) -> Spec:
    return parse(load_text(text, "m.yaml"))


def _errors(text: str) -> list[Diagnostic]:
    with pytest.raises(SpecError) as info:
        _parse(text)
    return info.value.diagnostics


def _one(text: str) -> Diagnostic:
    errors = _errors(text)
    assert len(errors) == 1, "\n".join(e.render() for e in errors)
    return errors[0]


def _at(line: int, column: int) -> Position:
    return Position("m.yaml", line, column)


# --- unknown keys ------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_section() -> None:
    error = _one(HEAD + "dataset:\n  a: {path: a.csv}\n")
    assert error.position == _at(3, 1)
    assert error.address == "project"
    assert error.message == "unknown key 'dataset' (did you mean 'datasets'?)"
    assert error.render() == "m.yaml:3:1: error: project: unknown key 'dataset' (did you mean 'datasets'?)"


def test_unknown_nested_key_suggests_within_its_own_model() -> None:
    error = _one(
        HEAD + "models:\n  churn:\n    train: p:t\n    data: {train: x}\n    resources:\n      cpuz: 2\n"
    )
    assert error.position == _at(8, 7)
    assert error.address == "models.churn"
    assert "unknown key 'cpuz'" in error.message
    assert "(did you mean 'cpus'?)" in error.message


def test_unknown_key_in_cluster_section_is_addressed_to_the_section() -> None:
    error = _one(HEAD + "cluster:\n  head: {cpuz: 2}\n")
    assert error.address == "cluster"
    assert error.position == _at(4, 10)
    assert "(did you mean 'cpus'?)" in error.message


def test_did_you_mean_uses_the_yaml_spelling_of_aliased_fields() -> None:
    errors = _errors(HEAD + "datasets:\n  a:\n    path: a.csv\n    shema: {x: int}\n")
    assert [e.message for e in errors] == ["unknown key 'shema' (did you mean 'schema'?)"]


def test_unknown_key_with_nothing_close_has_no_suggestion() -> None:
    error = _one(HEAD + "zzzzzz: 1\n")
    assert error.message == "unknown key 'zzzzzz'"


def test_unknown_key_inside_a_list_item_points_at_that_item() -> None:
    error = _one(
        HEAD + "gates:\n  g:\n    model: m\n    checks:\n"
        "      - {metric: auc, op: '>=', value: 1}\n      - {metric: auc, no_regresion: 0.1}\n"
    )
    assert error.position == _at(8, 23)
    assert error.address == "gates.g"
    assert "(did you mean 'no_regression'?)" in error.message


# --- missing keys, names, types ----------------------------------------------------------


def test_missing_required_key_points_at_the_parent() -> None:
    error = _one(HEAD + "models:\n  churn:\n    data: {train: x}\n    seed: 3\n")
    assert error.message == "missing required key 'train'"
    assert error.address == "models.churn"
    assert error.position == _at(5, 5)  # where the mapping of models.churn starts


def test_missing_top_level_key_points_at_the_document() -> None:
    error = _one("project: demo\n")
    assert error.message == "missing required key 'apiVersion'"
    assert error.position == _at(1, 1)


def test_invalid_resource_name_points_at_the_key() -> None:
    error = _one(HEAD + "datasets:\n  ok: {path: a.csv}\n  Bad_Name:\n    path: b.csv\n")
    assert error.position == _at(5, 3)
    assert error.address == "datasets.Bad_Name"
    assert "invalid name 'Bad_Name'" in error.message


def test_wrong_type_points_at_the_value() -> None:
    error = _one(HEAD + "deployments:\n  api:\n    model: m\n    replicas: many\n")
    assert error.position == _at(6, 15)
    assert error.address == "deployments.api"
    assert error.message.startswith("replicas: ")


def test_cross_field_rule_points_at_the_resource() -> None:
    error = _one(HEAD + "datasets:\n  a:\n    path: a.csv\n    from: [b]\n    transform: m:f\n")
    assert error.address == "datasets.a"
    assert error.position == _at(5, 5)
    assert "not both" in error.message


def test_sweep_without_objective_is_an_error() -> None:
    error = _one(HEAD + "models:\n  m:\n    train: p:t\n    data: {train: x}\n    sweep: {lr: [0.1, 0.2]}\n")
    assert error.address == "models.m"
    assert "objective" in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [("timeout", "30 min"), ("train", "not-a-callable")],
)
def test_pattern_mismatch_names_the_field(field: str, value: str) -> None:
    body = {"train": "p:t", "timeout": "1h", field: value}
    error = _one(
        HEAD + "models:\n  m:\n    data: {train: x}\n" + "".join(f"    {k}: {v}\n" for k, v in body.items())
    )
    assert error.address == "models.m"
    assert error.message.startswith(f"{field}: '{value}'")


# --- discriminated unions ----------------------------------------------------------------

MONITOR = (
    HEAD
    + """\
monitors:
  watch:
    deployment: api
    checks:
      - {type: latency, p95_ms: 100}
      - {type: data_drift, threshold: -1}
      - {type: accuracy, metric: auc}
      - {type: bogus}
      - {method: psi}
"""
)


def test_monitor_check_errors_point_at_their_list_items() -> None:
    errors = _errors(MONITOR)
    by_line = {e.position.line: e for e in errors if e.position}
    assert sorted(by_line) == [8, 9, 10, 11]
    assert all(e.address == "monitors.watch" for e in errors)
    assert by_line[8].message.startswith("checks.1.threshold")
    assert by_line[8].position == _at(8, 39)
    assert "'min'" in by_line[9].message
    assert by_line[9].position == _at(9, 9)
    assert "unknown type 'bogus'" in by_line[10].message and "data_drift" in by_line[10].message
    assert by_line[10].message.startswith("checks.3")
    assert "missing key 'type'" in by_line[11].message and by_line[11].message.startswith("checks.4")


def test_valid_monitor_checks_become_their_types() -> None:
    spec = _parse(
        MONITOR.replace("threshold: -1", "threshold: 0.2")
        .replace("metric: auc}", "metric: auc, min: 0.7}")
        .replace("      - {type: bogus}\n      - {method: psi}\n", "")
    )
    kinds = [type(c).__name__ for c in spec.monitors["watch"].checks]
    assert kinds == ["LatencyCheck", "DataDriftCheck", "AccuracyCheck"]


# --- ordering ----------------------------------------------------------------------------


def test_errors_are_sorted_by_position_and_each_reported_once() -> None:
    text = (
        "project: Demo\n"  # 1: bad name
        "apiVersion: mlops/v2\n"  # 2: bad literal
        "models:\n"
        "  m:\n"
        "    train: p:t\n"
        "    data: {train: x}\n"
        "    seed: lots\n"  # 7: bad int
        "datasets:\n"
        "  a: {path: a.csv, retention_days: 0}\n"  # 9: below minimum
        "zzz: 1\n"  # 10: unknown key
    )
    errors = _errors(text)
    lines = [e.position.line for e in errors if e.position]
    assert lines == [1, 2, 7, 9, 10]
    assert len({e.render() for e in errors}) == len(errors)


# --- defaults and typed values -----------------------------------------------------------


def test_defaults_are_applied() -> None:
    spec = _parse(
        HEAD + "datasets:\n  a: {path: a.csv}\nmodels:\n  m: {train: p:t, data: {train: a}}\n"
        "deployments:\n  d: {model: m}\nmonitors:\n  w: {deployment: d}\n"
    )
    assert spec.compliance.risk == "limited"
    assert spec.compliance.frameworks == []
    assert spec.cluster.provider == "local"
    assert spec.cluster.address is None
    assert spec.storage.artifacts == ".mlops/artifacts"
    assert spec.storage.state == ".mlops/state.db"
    assert spec.datasets["a"].pii is False
    assert spec.datasets["a"].resolved_format() == "csv"
    model = spec.models["m"]
    assert (model.timeout, model.seed, model.retries, model.resources.cpus, model.resources.workers) == (
        "1h",
        0,
        0,
        1,
        1,
    )
    deployment = spec.deployments["d"]
    assert (deployment.mode, deployment.replicas, deployment.gates, deployment.version) == (
        "realtime",
        1,
        [],
        None,
    )
    assert spec.monitors["w"].on_breach == ["alert"]
    assert spec.monitors["w"].schedule == "1h"


def test_waiver_expiry_becomes_a_date() -> None:
    spec = _parse(
        HEAD + "waivers:\n  - {policy: GDPR-004, resource: datasets.a, reason: r,"
        " approved_by: dpo@example.com, expires: 2027-01-31}\n"
    )
    assert spec.waivers[0].expires == date(2027, 1, 31)


def test_impossible_waiver_date_is_positioned() -> None:
    error = _one(
        HEAD + "waivers:\n  - policy: GDPR-004\n    resource: datasets.a\n    reason: r\n"
        "    approved_by: dpo@example.com\n    expires: 2027-02-30\n"
    )
    assert error.address == "waivers[0]"
    assert error.position == _at(8, 14)


@pytest.mark.parametrize(
    ("loc", "address"),
    [
        ((), ""),
        (("project",), "project"),
        (("models", "churn", "params", "lr"), "models.churn"),
        (("waivers", 2, "expires"), "waivers[2]"),
        (("cluster", "head", "cpus"), "cluster"),
    ],
)
def test_address_of_a_data_path(loc: tuple[str | int, ...], address: str) -> None:
    assert address_of(loc) == address


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("2d", 172800), ("0s", 0)]
)
def test_duration_seconds(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [("512Mi", 512 * 2**20), ("8Gi", 8 * 2**30), ("4Ki", 4096), ("1Ti", 2**40)],
)
def test_memory_bytes(text: str, size: int) -> None:
    assert memory_bytes(text) == size


@pytest.mark.parametrize("text", ["30", "1w", "1.5h", "h", "-1m", " 1h", "1H"])
def test_duration_seconds_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)


@pytest.mark.parametrize("text", ["8G", "8GB", "512", "1.5Gi", "Gi", "8gi"])
def test_memory_bytes_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        memory_bytes(text)
