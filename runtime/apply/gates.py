"""Gate decisions: a model version's metrics against a gate's checks, its baseline and its approvals."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from typing import Any

from compiler.spec import Gate
from runtime.state.records import GateDecision, GateStatus

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}


def decide(gate_name: str, gate: Gate, version: int, metrics: dict[str, float],
           baseline: dict[str, float] | None, approvers: list[str]) -> GateDecision:
    """Check ``metrics`` against the gate.

    ``baseline`` holds the metrics of the version live behind the gate (``None`` when nothing is live:
    a ``no_regression`` check then passes). Checks failing -> ``failed``; checks passing but approvals
    missing -> ``awaiting_approval``; else ``passed``.

    >>> from compiler.spec import Gate
    >>> g = Gate.model_validate({"model": "m", "checks": [{"metric": "auc", "op": ">=", "value": 0.8}]})
    >>> decide("q", g, 1, {"auc": 0.7}, None, []).checks[0]["reason"]
    'auc 0.7 >= 0.8 is false'
    """
    checks = []
    for check in gate.checks:
        actual = metrics.get(check.metric)
        if check.no_regression is not None:
            before = (baseline or {}).get(check.metric)
            if actual is None:
                passed, reason = False, f"metric {check.metric} was not reported"
            elif before is None:
                passed, reason = True, f"{check.metric}: no live version to compare with"
            else:
                passed = actual >= before - check.no_regression
                reason = (f"{check.metric} {actual:.4g} vs live {before:.4g} "
                          f"(allowed drop {check.no_regression:g}){'' if passed else ' regressed'}")
            checks.append({"metric": check.metric, "no_regression": check.no_regression, "baseline": before,
                           "actual": actual, "passed": passed, "reason": reason})
            continue
        assert check.op is not None and check.value is not None
        if actual is None:
            passed, reason = False, f"metric {check.metric} was not reported"
        else:
            passed = OPS[check.op](actual, check.value)
            reason = f"{check.metric} {actual:.4g} {check.op} {check.value:g} is {'true' if passed else 'false'}"
        checks.append({"metric": check.metric, "op": check.op, "expected": check.value, "actual": actual,
                       "passed": passed, "reason": reason})
    status: GateStatus
    approved = sorted(set(approvers))
    required = gate.approvals.required if gate.approvals is not None else 0
    if not all(c["passed"] for c in checks):
        status = "failed"
    elif len(approved) < required:
        status = "awaiting_approval"
    else:
        status = "passed"
    checks.append(approvals_check(gate, approved))
    return GateDecision(gate_name, gate.model, version, status, checks, time.time())


def approvals_check(gate: Gate, approved: list[str]) -> dict[str, Any]:
    """The approval rule a decision was made under, recorded as the decision's last check.

    ``{"approvals": {"required": N, "from": [...]}, "approved": [principals counted], "passed", "reason"}``:
    so the decision can be read later against the rule of its day, not the spec's current one.
    """
    required = gate.approvals.required if gate.approvals is not None else 0
    allowed = list(gate.approvals.from_) if gate.approvals is not None else []
    if required == 0:
        reason = "no approvals required"
    else:
        who = f" ({', '.join(approved)})" if approved else ""
        reason = f"approvals: {len(approved)} of {required} required{who}"
    return {"approvals": {"required": required, "from": allowed}, "approved": approved,
            "passed": len(approved) >= required, "reason": reason}


def recorded_approval_rule(decision: GateDecision) -> tuple[int, list[str]] | None:
    """(approvals required, principals counted) as recorded with ``decision``; ``None`` for a decision made
    before the rule was recorded with it."""
    for check in decision.checks:
        rule = check.get("approvals")
        if isinstance(rule, dict) and isinstance(rule.get("required"), int):
            approved = check.get("approved")
            return rule["required"], [str(a) for a in approved] if isinstance(approved, list) else []
    return None


def is_approvals_check(check: dict[str, Any]) -> bool:
    """Whether a decision's check is its recorded approval rule (:func:`approvals_check`), not a metric check."""
    return isinstance(check.get("approvals"), dict)


def failed_reasons(checks: list[dict[str, Any]]) -> list[str]:
    """Why a decision failed: the reasons of its failed metric checks (its recorded approval rule left out)."""
    return [str(c.get("reason", "")) for c in checks if not c.get("passed") and not is_approvals_check(c)]


def may_approve(gate: Gate, principal: str) -> bool:
    """Whether ``principal`` is among the gate's allowed approvers (anyone when ``from`` is empty)."""
    allowed = gate.approvals.from_ if gate.approvals else []
    return not allowed or principal in allowed
