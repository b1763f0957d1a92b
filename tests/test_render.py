"""Policy report renderers: SARIF 2.1.0 structure, junit counts, markdown and text lines.

The SARIF log is validated against the OASIS SARIF 2.1.0 JSON schema and the JUnit XML against Jenkins'
junit-10.xsd, both committed in ``tests/schemas/`` (``tests/schemas/README.md`` names their sources).
"""

from __future__ import annotations

import json
from datetime import date
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest
from schema_validators import validate_junit, validate_sarif

from compiler.errors import Position
from compiler.policy.evaluate import PolicyReport, PolicyResult
from compiler.policy.render import RENDERERS, render_junit, render_markdown, render_sarif, render_text
from compiler.spec import Policy

# The parts of the SARIF 2.1.0 schema (OASIS, sarif-schema-2.1.0.json) that code-scanning consumers require.
LEVEL = {"enum": ["none", "note", "warning", "error"]}
REGION = {"type": "object", "properties": {"startLine": {"type": "integer", "minimum": 1},
                                           "startColumn": {"type": "integer", "minimum": 1}}}
LOCATION = {"type": "object", "properties": {"physicalLocation": {
    "type": "object", "required": ["artifactLocation"],
    "properties": {"artifactLocation": {"type": "object", "required": ["uri"]}, "region": REGION}}}}
RESULT = {"type": "object", "required": ["message"], "properties": {
    "ruleId": {"type": "string"},
    "ruleIndex": {"type": "integer", "minimum": 0},
    "level": LEVEL,
    "message": {"type": "object", "required": ["text"]},
    "suppressions": {"type": "array", "items": {"type": "object", "required": ["kind"],
                                                 "properties": {"kind": {"enum": ["inSource", "external"]}}}},
    "locations": {"type": "array", "items": LOCATION}}}
RULE = {"type": "object", "required": ["id"],
        "properties": {"defaultConfiguration": {"properties": {"level": LEVEL}}}}
DRIVER = {"type": "object", "required": ["name"],
          "properties": {"name": {"type": "string"}, "rules": {"type": "array", "items": RULE}}}
RUN = {"type": "object", "required": ["tool"], "properties": {
    "tool": {"type": "object", "required": ["driver"], "properties": {"driver": DRIVER}},
    "results": {"type": "array", "items": RESULT}}}
SARIF_SUBSET = {"type": "object", "required": ["version", "runs"], "properties": {
    "version": {"const": "2.1.0"}, "runs": {"type": "array", "minItems": 1, "items": RUN}}}


def _policy(pid: str, severity: str = "error") -> Policy:
    return Policy.model_validate({"id": pid, "title": f"title {pid}", "severity": severity, "applies_to": "models",
                                  "schema": {"required": ["description"]}, "message": "{address} lacks it",
                                  "rationale": "because", "remediation": "add it"})


def _report() -> PolicyReport:
    error, warning = _policy("BASE-001"), _policy("BASE-002", "warning")
    return PolicyReport(results=[
        PolicyResult(error, "baseline", "models.a", "fail", "models.a lacks it", Position("mlops.yaml", 12, 5)),
        PolicyResult(error, "baseline", "models.b", "pass", "title", Position("mlops.yaml", 20, 5)),
        PolicyResult(warning, "baseline", "models.c", "waived", "models.c lacks it", Position("mlops.yaml", 30, 5),
                     waiver_reason=f"legacy (expires {date(2099, 1, 1)})"),
    ], packs=["baseline"])


def test_sarif_is_structurally_valid_and_points_at_the_line() -> None:
    log = json.loads(render_sarif(_report()))
    jsonschema.Draft202012Validator(SARIF_SUBSET).validate(log)
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["BASE-001", "BASE-002"]  # passes are not results
    for result in results:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    region = results[0]["locations"][0]["physicalLocation"]["region"]
    assert (region["startLine"], region["startColumn"]) == (12, 5)
    assert results[0]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "models.a"
    assert results[1]["suppressions"][0]["kind"] == "inSource"


def test_junit_counts_failures_and_skips() -> None:
    suite = ET.fromstring(render_junit(_report())).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.find("testcase[@name='models.a']/failure")
    assert failure is not None and "add it" in (failure.text or "")


def test_text_has_one_line_per_finding_and_a_summary() -> None:
    lines = render_text(_report()).strip().splitlines()
    assert lines[0] == "mlops.yaml:12:5: error: models.a: BASE-001 models.a lacks it"
    assert lines[1].startswith("mlops.yaml:30:5: waived: models.c: BASE-002") and "legacy" in lines[1]
    assert lines[-1].startswith("1 passed, 1 error(s), 0 warning(s), 1 waived")


def test_markdown_table_escapes_pipes() -> None:
    report = _report()
    bad = _policy("BASE-003")
    report.results.append(PolicyResult(bad, "baseline", "models.d", "fail", "a | b", Position("mlops.yaml", 40, 5)))
    markdown = render_markdown(report)
    assert "a \\| b" in markdown and "❌" in markdown


def test_every_format_renders(tmp_path: Path) -> None:
    for name, render in RENDERERS.items():
        assert render(_report()).strip(), name


# --- SARIF against the OASIS schema, and what code scanning needs of it -------------------------------


def test_sarif_is_valid_against_the_oasis_sarif_2_1_0_schema() -> None:
    log = json.loads(render_sarif(_report()))
    validate_sarif(log)
    empty = json.loads(render_sarif(PolicyReport(packs=["baseline"])))
    validate_sarif(empty)
    assert empty["runs"][0]["results"] == []


def test_the_sarif_schema_check_rejects_a_broken_log() -> None:
    log = json.loads(render_sarif(_report()))
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(AssertionError, match="fatal"):
        validate_sarif(log)


def _repository(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / ".git").mkdir(parents=True)
    (root / "teams" / "churn").mkdir(parents=True)
    (root / "teams" / "churn" / "mlops.yaml").write_text("apiVersion: mlops/v1\n")
    (root / "docs").mkdir()
    return root


def _located_at(file: str) -> PolicyReport:
    policy = _policy("BASE-001")
    return PolicyReport(results=[PolicyResult(policy, "baseline", "models.a", "fail", "models.a lacks it",
                                              Position(file, 3, 5, 7, 20))], packs=["baseline"])


def test_sarif_locations_are_repository_relative_whatever_the_cwd_and_the_spelling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _repository(tmp_path)
    spec = root / "teams" / "churn" / "mlops.yaml"
    rendered = []
    for cwd, typed in [(spec.parent, "mlops.yaml"), (spec.parent, "./mlops.yaml"), (root, "teams/churn/mlops.yaml"),
                       (root / "docs", "../teams/churn/mlops.yaml"), (tmp_path, str(spec)), (root / "docs", str(spec))]:
        monkeypatch.chdir(cwd)
        rendered.append(render_sarif(_located_at(typed)))
    assert len(set(rendered)) == 1, "the log depends on the working directory or on how -f was spelt"
    run = json.loads(rendered[0])["runs"][0]
    location = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "teams/churn/mlops.yaml", "uriBaseId": "SRCROOT"}
    assert run["originalUriBaseIds"] == {"SRCROOT": {"uri": root.resolve().as_uri() + "/"}}
    validate_sarif(json.loads(rendered[0]))


def test_sarif_fingerprints_are_stable_across_runs_and_line_moves() -> None:
    def fingerprints(report: PolicyReport) -> list[dict[str, str]]:
        return [r["partialFingerprints"] for r in json.loads(render_sarif(report))["runs"][0]["results"]]

    first = fingerprints(_report())
    assert first == fingerprints(_report())
    moved = _report()
    moved.results[:] = [PolicyResult(r.policy, r.pack, r.address, r.status, r.message,
                                     Position(r.position.file, r.position.line + 40, r.position.column + 2),
                                     r.detail, r.waiver_reason) for r in moved.results]
    assert fingerprints(moved) == first
    assert len({value for prints in first for value in prints.values()}) == len(first)  # one per result
    other = _report()
    other.results[0] = PolicyResult(other.results[0].policy, "baseline", "models.z", "fail", "models.z lacks it",
                                    Position("mlops.yaml", 12, 5))
    assert fingerprints(other)[0] != first[0] and fingerprints(other)[1] == first[1]


def test_sarif_names_the_installed_tool_version() -> None:
    driver = json.loads(render_sarif(_report()))["runs"][0]["tool"]["driver"]
    version = metadata.version("mlops-gitops")
    assert driver["version"] == driver["semanticVersion"] == version


def test_sarif_regions_end_where_the_offending_node_ends() -> None:
    region = json.loads(render_sarif(_located_at("mlops.yaml")))["runs"][0]["results"][0]["locations"][0][
        "physicalLocation"]["region"]
    assert region == {"startLine": 3, "startColumn": 5, "endLine": 7, "endColumn": 20}
    without_end = json.loads(render_sarif(_report()))["runs"][0]["results"][0]["locations"][0][
        "physicalLocation"]["region"]
    assert without_end == {"startLine": 12, "startColumn": 5}


# --- JUnit against Jenkins' junit-10.xsd ------------------------------------------------------------------


def test_junit_is_valid_against_jenkins_junit_10_xsd(tmp_path: Path) -> None:
    validate_junit(render_junit(_report()), tmp_path)
    validate_junit(render_junit(PolicyReport(packs=["baseline"])), tmp_path)


def test_the_junit_schema_check_rejects_file_and_line_on_a_testcase(tmp_path: Path) -> None:
    broken = render_junit(_report()).replace('<testcase classname="baseline.BASE-001" name="models.a"',
                                             '<testcase classname="baseline.BASE-001" name="models.a" line="12"')
    assert 'line="12"' in broken
    with pytest.raises(AssertionError):
        validate_junit(broken, tmp_path)


def test_junit_keeps_each_results_position_where_the_schema_allows() -> None:
    suite = ET.fromstring(render_junit(_report())).find("testsuite")
    assert suite is not None and suite.get("file") == "mlops.yaml"
    outputs = {case.get("name"): case.findtext("system-out") for case in suite.iter("testcase")}
    assert outputs == {"models.a": "mlops.yaml:12:5: models.a", "models.b": "mlops.yaml:20:5: models.b",
                       "models.c": "mlops.yaml:30:5: models.c"}
    failure = suite.find("testcase[@name='models.a']/failure")
    assert failure is not None and (failure.text or "").startswith("mlops.yaml:12:5: ")
    assert all(case.get("file") is None and case.get("line") is None for case in suite.iter("testcase"))
