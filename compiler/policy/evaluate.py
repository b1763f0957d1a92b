"""Evaluate policies against the views of a project, applying waivers.

Each policy's ``when`` and ``schema`` are compiled once into jsonschema validators; a policy
is checked against every view of its section that matches ``when``.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import jsonschema_rs

from compiler.errors import Diagnostic, Position
from compiler.policy.packs import LoadedPack, all_policies
from compiler.resolve import Project, loc_of
from compiler.spec import SECTIONS, Policy
from compiler.values import quoted, yaml_text

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


class _Unknown(str):
    """A field the view does not have: shown as written in the message (``{field}``)."""


class _Formatter(string.Formatter):
    """``{address}``-style messages over a view: ``{refs.inherited.retention_days}`` reaches into mappings,
    values are written as in YAML (``null``, ``[team:a, team:b]``), and an unknown field stays as written."""

    def get_value(self, key: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(key, str):
            return kwargs.get(key, _Unknown("{" + key + "}"))
        return super().get_value(key, args, kwargs)

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        if "." in field_name and "[" not in field_name:
            value: Any = kwargs
            for part in field_name.split("."):
                if not isinstance(value, dict) or part not in value:
                    return _Unknown("{" + field_name + "}"), field_name
                value = value[part]
            return value, field_name
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, AttributeError, IndexError, TypeError):
            return _Unknown("{" + field_name + "}"), field_name

    def format_field(self, value: Any, format_spec: str) -> Any:
        if isinstance(value, str) or format_spec:
            return super().format_field(value, format_spec)
        return yaml_text(value)


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


def utc_today() -> date:
    """Today's date in UTC: when a waiver expires does not depend on the machine's time zone."""
    return datetime.now(UTC).date()


def evaluate(project: Project, packs: list[LoadedPack], today: date | None = None) -> PolicyReport:
    """Check every policy of ``packs`` against the project's views and apply its waivers.

    Matching is decided by jsonschema-rs (compiled once per schema, about 1 µs per view); a failure is
    then explained by python-jsonschema's ``best_match``, which names the offending field.
    """
    today = today or utc_today()
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
    """Where in ``mlops.yaml`` a failing part of a view is: ``refs.widens.access`` is the dataset's ``access``."""
    parts = list(path)
    if parts[:2] == ["refs", "widens"]:
        parts = parts[2:]
    return (*loc_of(address), *[p for p in parts if p != "refs"])


def _explain(schema: dict[str, Any], view: dict[str, Any]) -> Any:
    """The most relevant reason ``view`` fails ``schema`` (python-jsonschema's ``best_match``; failures only)."""
    import jsonschema
    from jsonschema.exceptions import best_match

    return best_match(jsonschema.Draft202012Validator(schema).iter_errors(view))


def _describe(error: Any) -> str:
    """``retention_days: 5000 is more than the maximum of 3650``: the failing field and why, values as YAML."""
    where = ".".join(str(p) for p in error.absolute_path)
    text = _reason(error)
    return f"{where}: {text}" if where else text


def _shown(value: Any, error: Any) -> str:
    """A failing instance, YAML-style; a whole view (a root-level ``anyOf`` or ``not``) is named, not printed."""
    if not error.absolute_path and isinstance(value, dict) and "address" in value:
        return f"the view of {value['address']}"
    return quoted(value, limit=80)


def _reason(error: Any) -> str:
    """jsonschema's reason for one error, with every value written as in YAML instead of as a Python repr."""
    kind, expected, instance = error.validator, error.validator_value, error.instance
    value = _shown(instance, error)
    if error.schema is False:
        return f"{value} is not allowed here"
    if kind == "required":
        missing = next((name for name in expected if f"{name!r} is a required property" == error.message),
                       next((name for name in expected if name not in instance), ""))
        return f"'{missing}' is not set"
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        return f"{value} is not of type {' or '.join(str(t) for t in types)}"
    if kind == "const":
        return f"{value} is not {quoted(expected)}"
    if kind == "enum":
        return f"{value} is not one of {yaml_text(expected)}"
    if kind == "pattern":
        return f"{value} does not match the pattern {quoted(expected)}"
    if kind in ("minItems", "minLength", "minProperties"):
        unit = {"minItems": "item", "minLength": "character", "minProperties": "key"}[kind]
        return f"{value} is empty" if expected == 1 else f"{value} has fewer than {expected} {unit}s"
    if kind in ("maxItems", "maxLength", "maxProperties"):
        unit = {"maxItems": "item", "maxLength": "character", "maxProperties": "key"}[kind]
        return f"{value} has more than {expected} {unit}{'s' if expected != 1 else ''}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": "less than the minimum of", "maximum": "more than the maximum of",
                 "exclusiveMinimum": "not more than", "exclusiveMaximum": "not less than"}[kind]
        return f"{value} is {bound} {yaml_text(expected)}"
    if kind == "contains":
        return f"no item of {value} matches" if instance else f"{value} has no items"
    if kind == "not":
        return f"{value} is not allowed here"
    if kind in ("anyOf", "oneOf"):
        return f"{value} matches none of the allowed forms"
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = set((error.schema or {}).get("properties", {}))
        extra = [key for key in instance if key not in known]
        return f"unexpected keys {yaml_text(extra)}" if extra else f"{value} has keys it may not have"
    message = str(error.message)
    raw = repr(instance)
    return message.replace(raw, value) if raw in message else message


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
        cap = _waiver_cap(packs)
        if cap is not None and waiver.expires > today + timedelta(days=cap[0]):
            latest = (today + timedelta(days=cap[0])).isoformat()
            report.waiver_problems.append(Diagnostic(
                f"waiver of {waiver.policy} for {waiver.resource} expires on {waiver.expires.isoformat()}, more "
                f"than {cap[0]} days ahead: pack {cap[1]} caps waivers at {cap[0]} days (at most {latest}, "
                f"today being {today.isoformat()} UTC)",
                project.document.position_of(("waivers", index, "expires")), where))
            continue
        active[(waiver.policy, waiver.resource)] = f"{waiver.reason} (approved by {waiver.approved_by}, " \
                                                   f"expires {waiver.expires.isoformat()})"
    return active


def _waiver_cap(packs: list[LoadedPack]) -> tuple[int, str] | None:
    """The tightest ``waivers.max_days`` of the packs in use, with the pack that sets it."""
    caps = [(loaded.pack.waivers.max_days, loaded.pack.name) for loaded in packs if loaded.pack.waivers is not None]
    return min(caps) if caps else None
