"""Evaluate policies against the views of a project, applying waivers.

Each policy's ``when`` and ``schema`` are compiled once into jsonschema validators; a policy
is checked against every view of its section that matches ``when``.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any, Literal

import jsonschema_rs

from compiler.errors import Diagnostic, Position
from compiler.policy.packs import LoadedPack, all_policies
from compiler.resolve import Project, loc_of
from compiler.spec import SECTIONS, Policy

Status = Literal["pass", "fail", "waived"]


@dataclass(frozen=True)
class PolicyResult:
    """One policy checked against one resource."""

    policy: Policy
    pack: str
    address: str
    status: Status
    message: str
    position: Position
    detail: str = ""
    waiver_reason: str = ""

    @property
    def blocking(self) -> bool:
        """An error-severity failure that no waiver covers."""
        return self.status == "fail" and self.policy.severity == "error"

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.id,
            "pack": self.pack,
            "title": self.policy.title,
            "severity": self.policy.severity,
            "address": self.address,
            "status": self.status,
            "message": self.message,
            "detail": self.detail or None,
            "rationale": self.policy.rationale,
            "remediation": self.policy.remediation,
            "waiver": self.waiver_reason or None,
            "file": self.position.file,
            "line": self.position.line,
            "column": self.position.column,
        }


@dataclass
class PolicyReport:
    """All policy results of a project, plus problems with its waivers."""

    results: list[PolicyResult] = field(default_factory=list)
    waiver_problems: list[Diagnostic] = field(default_factory=list)
    packs: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[PolicyResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def errors(self) -> list[PolicyResult]:
        return [r for r in self.results if r.blocking]

    @property
    def ok(self) -> bool:
        """No blocking failure and no waiver error."""
        return not self.errors and not any(d.severity == "error" for d in self.waiver_problems)

    def counts(self) -> dict[str, int]:
        out = {"pass": 0, "fail": 0, "waived": 0, "error": 0, "warning": 0}
        for result in self.results:
            out[result.status] += 1
            if result.status == "fail":
                out[result.policy.severity] += 1
        return out


class _Formatter(string.Formatter):
    """``{address}``-style messages over a view; an unknown field stays as written."""

    def get_value(self, key: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(key, str):
            return kwargs.get(key, "{" + key + "}")
        return super().get_value(key, args, kwargs)

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, AttributeError, IndexError, TypeError):
            return "{" + field_name + "}", field_name


_FORMATTER = _Formatter()


def _views_by_target(project: Project) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Views grouped by what a policy ``applies_to``: a section name, or project / cluster / storage."""
    grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {section: [] for section in SECTIONS}
    for address, view in project.views.items():
        section, dot, _ = address.partition(".")
        grouped.setdefault(section if dot else address, []).append((address, view))
    return grouped


@lru_cache(maxsize=512)
def _compiled(schema_json: str) -> Any:
    """A compiled validator for the hot ``is_valid`` path (jsonschema-rs, draft 2020-12)."""
    return jsonschema_rs.Draft202012Validator(json.loads(schema_json))


def _validator(schema: dict[str, Any]) -> Any:
    return _compiled(json.dumps(schema, sort_keys=True))


def evaluate(project: Project, packs: list[LoadedPack], today: date | None = None) -> PolicyReport:
    """Check every policy of ``packs`` against the project's views and apply its waivers.

    Matching is decided by jsonschema-rs (compiled once per schema, about 1 µs per view); a failure is
    then explained by python-jsonschema's ``best_match``, which names the offending field.
    """
    today = today or date.today()
    report = PolicyReport(packs=[loaded.pack.name for loaded in packs])
    waivers = _active_waivers(project, packs, today, report)
    targets = _views_by_target(project)
    for loaded, _, policy in all_policies(packs):
        when = _validator(policy.when) if policy.when is not None else None
        must = _validator(policy.schema_)
        for address, view in targets.get(policy.applies_to, []):
            if when is not None and not when.is_valid(view):
                continue
            position = project.position(address)
            if must.is_valid(view):
                report.results.append(PolicyResult(policy, loaded.pack.name, address, "pass", policy.title,
                                                   position))
                continue
            error = _explain(policy.schema_, view)
            detail = _describe(error) if error is not None else ""
            message = _FORMATTER.format(policy.message, **view)
            if error is not None and error.absolute_path:
                position = project.document.position_of(_loc(address, error.absolute_path))
            reason = waivers.get((policy.id, address))
            status: Status = "waived" if reason is not None else "fail"
            report.results.append(PolicyResult(policy, loaded.pack.name, address, status, message, position,
                                               detail, reason or ""))
    return report


def _loc(address: str, path: Any) -> tuple[str | int, ...]:
    return (*loc_of(address), *[p for p in path if p != "refs"])


def _explain(schema: dict[str, Any], view: dict[str, Any]) -> Any:
    """The most relevant reason ``view`` fails ``schema`` (python-jsonschema's ``best_match``; failures only)."""
    import jsonschema
    from jsonschema.exceptions import best_match

    return best_match(jsonschema.Draft202012Validator(schema).iter_errors(view))


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


def _active_waivers(project: Project, packs: list[LoadedPack], today: date,
                    report: PolicyReport) -> dict[tuple[str, str], str]:
    known = {policy.id for _, _, policy in all_policies(packs)}
    addresses = set(project.views)
    active: dict[tuple[str, str], str] = {}
    for index, waiver in enumerate(project.spec.waivers):
        where = f"waivers[{index}]"
        if waiver.policy not in known:
            report.waiver_problems.append(Diagnostic(
                f"waiver names unknown policy '{waiver.policy}' (not in packs {', '.join(report.packs)})",
                project.document.position_of(("waivers", index, "policy")), where))
            continue
        if waiver.resource not in addresses:
            report.waiver_problems.append(Diagnostic(
                f"waiver names unknown resource '{waiver.resource}'",
                project.document.position_of(("waivers", index, "resource")), where))
            continue
        if waiver.expires < today:
            report.waiver_problems.append(Diagnostic(
                f"waiver of {waiver.policy} for {waiver.resource} expired on {waiver.expires.isoformat()}",
                project.document.position_of(("waivers", index, "expires")), where, "warning"))
            continue
        active[(waiver.policy, waiver.resource)] = f"{waiver.reason} (approved by {waiver.approved_by}, " \
                                                   f"expires {waiver.expires.isoformat()})"
    return active
