"""A monitor's result as others read it: JSON (``--json``, the webhook) and one line per check that failed."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from runtime.state.records import MonitorResult


def result_json(result: MonitorResult) -> dict[str, Any]:
    """A result as JSON (what ``--json`` prints and the webhook receives)."""
    return {"address": f"monitors.{result.monitor}", **asdict(result)}


def check_errors(result: MonitorResult) -> list[str]:
    """One line per check of ``result`` that could not be evaluated (status ``error``), with its reason."""
    return [f"monitors.{result.monitor}: check {index} ({check.get('type')}, {check.get('method')}) could not be "
            f"evaluated: {check.get('reason') or 'no reason recorded'}"
            for index, check in enumerate(result.checks) if check.get("status") == "error"]
