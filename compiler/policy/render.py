"""Render a :class:`PolicyReport` as text, json, sarif (2.1.0), junit or markdown.

``RENDERERS`` maps each ``--format`` name to its function; every renderer returns a string.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from compiler.errors import Position
from compiler.policy.evaluate import PolicyReport, PolicyResult
from compiler.repository import find_root

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
TOOL_NAME = "mlops"
TOOL_URI = "https://github.com/mlops/mlops"
DISTRIBUTION = "mlops-gitops"
"""The installed distribution whose version the SARIF log names."""
SRCROOT = "SRCROOT"
"""The uriBaseId of every location: the repository (git work tree) that holds the spec."""
FINGERPRINT = "mlopsPolicyResult/v1"
"""The partialFingerprints key: a hash of the policy id and the resource address, stable across line moves."""
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


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


@lru_cache(maxsize=1)
def tool_version() -> str | None:
    """The installed distribution's version (None when running from a tree that was never installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def repository_path(file: str) -> tuple[str, Path]:
    """A spec's path relative to the repository holding it, and that repository's root.

    ``file`` is the path as the user typed it (``-f``): relative to the current directory or absolute. The
    result is the same for every spelling of the same file and from every working directory.
    """
    path = Path(file)
    absolute = (path if path.is_absolute() else Path.cwd() / path).resolve()
    root = find_root(absolute)
    return absolute.relative_to(root).as_posix(), root


def fingerprint(result: PolicyResult) -> str:
    """A result's identity across runs: which policy, about which resource (not where in the file)."""
    return hashlib.sha256(f"{result.policy.id}\0{result.address}".encode()).hexdigest()


def _region(position: Position) -> dict[str, int]:
    region = {"startLine": position.line, "startColumn": position.column}
    if position.end_line is not None and position.end_column is not None \
            and (position.end_line, position.end_column) > (position.line, position.column):
        region.update(endLine=position.end_line, endColumn=position.end_column)
    return region


def _driver(rules: list[dict[str, Any]]) -> dict[str, Any]:
    driver: dict[str, Any] = {"name": TOOL_NAME, "informationUri": TOOL_URI}
    version = tool_version()
    if version:
        driver["version"] = version
        if _SEMVER.match(version):
            driver["semanticVersion"] = version
    driver["rules"] = rules
    return driver


def render_sarif(report: PolicyReport) -> str:
    """SARIF 2.1.0: one rule per policy, one result per failure or waiver, located at the offending node.

    Locations are relative to the repository root (``uriBaseId: SRCROOT``), as code scanning resolves them;
    each result has a fingerprint of its policy and resource, so an alert keeps its identity when lines move.
    """
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
    paths = {file: repository_path(file) for file in sorted({r.position.file for r in report.results})}
    results = []
    for result in report.results:
        if result.status == "pass":
            continue
        uri, _ = paths[result.position.file]
        entry: dict[str, Any] = {
            "ruleId": result.policy.id,
            "ruleIndex": rule_ids.index(result.policy.id),
            "level": _sarif_level(result),
            "message": {"text": f"{result.address}: {result.message}"},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": {"uri": uri, "uriBaseId": SRCROOT},
                    "region": _region(result.position),
                },
                "logicalLocations": [{"fullyQualifiedName": result.address, "kind": "resource"}],
            }],
            "partialFingerprints": {FINGERPRINT: fingerprint(result)},
        }
        if result.status == "waived":
            entry["suppressions"] = [{"kind": "inSource", "justification": result.waiver_reason}]
        results.append(entry)
    run: dict[str, Any] = {"tool": {"driver": _driver(rules)}}
    roots = {root for _, root in paths.values()}
    if len(roots) == 1:
        run["originalUriBaseIds"] = {SRCROOT: {"uri": roots.pop().as_uri() + "/"}}
    run["columnKind"] = "unicodeCodePoints"
    run["results"] = results
    log = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2) + "\n"


def render_junit(report: PolicyReport) -> str:
    """JUnit XML (valid against Jenkins' junit-10.xsd): a test suite per pack, a test case per (policy, resource).

    The schema has no place for a file or line on a test case: each case's ``system-out`` holds its position
    (``mlops.yaml:12:5``), and a failure's text starts with it.
    """
    suites = ET.Element("testsuites", name="mlops policy check")
    by_pack: dict[str, list[PolicyResult]] = {}
    for result in report.results:
        by_pack.setdefault(result.pack, []).append(result)
    for pack, results in by_pack.items():
        failures = sum(1 for r in results if r.status == "fail")
        skipped = sum(1 for r in results if r.status == "waived")
        attributes = {"name": pack, "tests": str(len(results)), "failures": str(failures), "errors": "0",
                      "skipped": str(skipped)}
        files = {r.position.file for r in results}
        if len(files) == 1:
            attributes["file"] = files.pop()
        suite = ET.SubElement(suites, "testsuite", attributes)
        for result in results:
            case = ET.SubElement(suite, "testcase", classname=f"{pack}.{result.policy.id}", name=result.address)
            if result.status == "fail":
                failure = ET.SubElement(case, "failure", message=result.message, type=result.policy.severity)
                failure.text = f"{result.position}: {result.policy.title}\n{result.detail}\n" \
                               f"Remediation: {result.policy.remediation}"
            elif result.status == "waived":
                ET.SubElement(case, "skipped", message=f"waived: {result.waiver_reason}")
            ET.SubElement(case, "system-out").text = f"{result.position}: {result.address}"
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
