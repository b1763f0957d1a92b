"""Policy report renderers: SARIF 2.1.0 structure, junit counts, markdown and text lines."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema

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
