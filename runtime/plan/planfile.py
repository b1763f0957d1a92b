"""The saved plan (``mlops plan --out FILE``): its own type, with explicit encode and decode.

A saved plan records the digests of the spec and of the state it was made against; apply refuses
it once either has changed ("plan is stale").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.errors import Position
from runtime.errors import PlanError
from runtime.plan.actions import FORMAT_VERSION, Plan


@dataclass(frozen=True)
class SavedPlan:
    spec_path: str
    spec_digest: str
    state_digest: str
    targets: list[str]
    body: dict[str, Any]


def encode(plan: Plan, spec_path: Path) -> str:
    body = plan.to_json()
    return json.dumps({"format_version": FORMAT_VERSION, "kind": "mlops-plan", "spec": str(spec_path.resolve()),
                       "plan": body}, indent=2, sort_keys=True) + "\n"


def save(plan: Plan, spec_path: Path, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(encode(plan, spec_path))
    tmp.replace(out)


def load(path: Path) -> SavedPlan:
    where = Position(str(path), 1, 1)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError.one(f"no such plan file: {path}", where) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError.one(f"not a saved plan: {exc}", where) from None
    if not isinstance(data, dict) or data.get("kind") != "mlops-plan":
        raise PlanError.one("not a saved plan (written by `mlops plan --out`)", where)
    if data.get("format_version") != FORMAT_VERSION:
        raise PlanError.one(f"plan format {data.get('format_version')!r} is not supported "
                             f"(expected {FORMAT_VERSION})", where)
    body = data["plan"]
    return SavedPlan(data["spec"], body["spec_digest"], body["state_digest"], list(body.get("targets", [])), body)


def check_fresh(saved: SavedPlan, current: Plan, plan_path: Path) -> None:
    """Refuse a saved plan made against another spec or state."""
    if saved.spec_digest != current.spec_digest:
        raise PlanError.one("plan is stale: the spec, its code or its data changed since the plan was made; "
                             "run `mlops plan` again", Position(str(plan_path), 1, 1))
    if saved.state_digest != current.state_digest:
        raise PlanError.one("plan is stale: the state changed since the plan was made (another apply ran); "
                             "run `mlops plan` again", Position(str(plan_path), 1, 1))
