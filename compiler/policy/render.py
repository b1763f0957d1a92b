"""Render a :class:`PolicyReport` as text, json, sarif (2.1.0), junit or markdown.

``RENDERERS`` maps each ``--format`` name to its function; every renderer returns a string.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from compiler.policy.evaluate import PolicyReport, PolicyResult

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "mlops"
TOOL_URI = "https://github.com/mlops/mlops"


def render_text(report: PolicyReport) -> str:
    """One line per failure or waiver, then problems with waivers, then a summary line."""
    lines = []
    for result in report.results:
        if result.status == "pass":
            continue
        severity = "waived" if result.status == "waived" else result.policy.severity
        line = f"{result.position}: {severity}: {result.address}: {result.policy.id} {result.message}"
        if result.status == "waived":
            line += f" [waived: {result.waiver_reason}]"
        lines.append(line)
    lines.extend(d.render() for d in report.waiver_problems)
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def _summary(report: PolicyReport) -> str:
    c = report.counts()
    packs = ", ".join(report.packs)
    return (f"{c['pass']} passed, {c['error']} error(s), {c['warning']} warning(s), {c['waived']} waived"
            f" ({len({r.policy.id for r in report.results})} policies from packs: {packs})")


def to_json(report: PolicyReport) -> dict[str, Any]:
    """The report as data (also written to ``policy-report.json`` by ``mlops compile``)."""
    return {
        "format_version": "1",
        "ok": report.ok,
        "packs": report.packs,
        "summary": report.counts(),
        "results": [r.to_json() for r in report.results],
        "waiver_problems": [d.to_json() for d in report.waiver_problems],
    }


def render_json(report: PolicyReport) -> str:
    return json.dumps(to_json(report), indent=2, sort_keys=True) + "\n"


def _sarif_level(result: PolicyResult) -> str:
    return {"error": "error", "warning": "warning"}[result.policy.severity]


def render_sarif(report: PolicyReport) -> str:
    """SARIF 2.1.0: one rule per policy, one result per failure or waiver, located at the offending line."""
    policies = {r.policy.id: r for r in report.results}
    rule_ids = sorted(policies)
    rules = [{
        "id": pid,
        "name": policies[pid].policy.title,
        "shortDescription": {"text": policies[pid].policy.title},
        "fullDescription": {"text": policies[pid].policy.rationale},
        "help": {"text": policies[pid].policy.remediation},
        "defaultConfiguration": {"level": _sarif_level(policies[pid])},
        "properties": {"pack": policies[pid].pack},
    } for pid in rule_ids]
    results = []
    for result in report.results:
        if result.status == "pass":
            continue
        entry: dict[str, Any] = {
            "ruleId": result.policy.id,
            "ruleIndex": rule_ids.index(result.policy.id),
            "level": _sarif_level(result),
            "message": {"text": f"{result.address}: {result.message}"},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": Path(result.position.file).as_posix()},
                    "region": {"startLine": result.position.line, "startColumn": result.position.column},
                },
                "logicalLocations": [{"fullyQualifiedName": result.address, "kind": "resource"}],
            }],
        }
        if result.status == "waived":
            entry["suppressions"] = [{"kind": "inSource", "justification": result.waiver_reason}]
        results.append(entry)
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": TOOL_NAME, "informationUri": TOOL_URI, "rules": rules}},
            "results": results,
        }],
    }
    return json.dumps(log, indent=2) + "\n"


def render_junit(report: PolicyReport) -> str:
    """JUnit XML: a test suite per pack, a test case per (policy, resource)."""
    suites = ET.Element("testsuites", name="mlops policy check")
    by_pack: dict[str, list[PolicyResult]] = {}
    for result in report.results:
        by_pack.setdefault(result.pack, []).append(result)
    for pack, results in by_pack.items():
        failures = sum(1 for r in results if r.status == "fail")
        skipped = sum(1 for r in results if r.status == "waived")
        suite = ET.SubElement(suites, "testsuite", name=pack, tests=str(len(results)),
                              failures=str(failures), skipped=str(skipped), errors="0")
        for result in results:
            case = ET.SubElement(suite, "testcase", classname=f"{pack}.{result.policy.id}",
                                 name=result.address, file=result.position.file, line=str(result.position.line))
            if result.status == "fail":
                failure = ET.SubElement(case, "failure", message=result.message, type=result.policy.severity)
                failure.text = f"{result.position}: {result.policy.title}\n{result.detail}\n" \
                               f"Remediation: {result.policy.remediation}"
            elif result.status == "waived":
                ET.SubElement(case, "skipped", message=f"waived: {result.waiver_reason}")
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: PolicyReport) -> str:
    """A summary line and a table of failures and waivers, ready for a pull-request comment."""
    c = report.counts()
    icon = "✅" if report.ok else "❌"
    lines = [f"### {icon} mlops policy check", "",
             f"**{c['error']}** error(s), **{c['warning']}** warning(s), **{c['waived']}** waived, "
             f"{c['pass']} passed — packs: {', '.join(report.packs)}", ""]
    rows = [r for r in report.results if r.status != "pass"]
    if rows:
        lines += ["| | Policy | Resource | Finding | Remediation |", "|---|---|---|---|---|"]
        for r in rows:
            severity_mark = "🔴 error" if r.policy.severity == "error" else "🟡 warning"
            mark = "⚪ waived" if r.status == "waived" else severity_mark
            lines.append(f"| {mark} | `{r.policy.id}` {_cell(r.policy.title)} | `{r.address}` "
                         f"(line {r.position.line}) | {_cell(r.message)} | {_cell(r.policy.remediation)} |")
        lines.append("")
    if report.waiver_problems:
        lines += ["**Waivers**", ""] + [f"- {_cell(d.render())}" for d in report.waiver_problems] + [""]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[PolicyReport], str]] = {
    "text": render_text,
    "json": render_json,
    "sarif": render_sarif,
    "junit": render_junit,
    "markdown": render_markdown,
}
