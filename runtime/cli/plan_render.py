"""Terminal rendering of a plan and of an apply's outcomes (Terraform-like, via rich)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from runtime.apply.outcomes import ApplyResult
from runtime.plan.actions import Plan

SYMBOLS = {"create": ("+", "green"), "update": ("~", "yellow"), "replace": ("-/+", "magenta"),
           "delete": ("-", "red"), "blocked": ("!", "red"), "no-op": (" ", "dim")}
VERBS = {"create": "will be created", "update": "will be updated in place", "replace": "will be replaced (re-run)",
         "delete": "will be removed", "blocked": "is blocked", "no-op": "is up to date"}


def render_plan(console: Console, plan: Plan) -> None:
    changed = [c for c in plan.resource_changes if c.action != "no-op"]
    if not changed:
        console.print("No changes. The live state matches the spec.")
        return
    for change in changed:
        symbol, style = SYMBOLS[change.action]
        line = Text(f"{symbol:>3} ", style=style)
        line.append(change.address, style="bold")
        line.append(f" {VERBS[change.action]}")
        console.print(line)
        for reason in change.reasons:
            console.print(Text(f"      {reason}", style="dim" if change.action != "blocked" else "red"))
    s = plan.summary
    console.print()
    console.print(f"Plan: {s['create']} to create, {s['replace']} to replace, {s['update']} to update, "
                  f"{s['delete']} to delete, {s['blocked']} blocked.")


def render_outcomes(console: Console, result: ApplyResult, seconds: float) -> None:
    for outcome in result.outcomes.values():
        if outcome.status in ("failed", "blocked", "skipped"):
            style = {"failed": "red", "blocked": "yellow", "skipped": "dim"}[outcome.status]
            console.print(Text(f"{outcome.status:>9} {outcome.node_id}: {outcome.message}", style=style))
        elif outcome.node_id.startswith("deployments.") and " at http" in outcome.message:
            console.print(Text(f"{'serving':>9} {outcome.node_id}: {outcome.message}", style="green"))
    console.print(f"Apply complete in {seconds:.1f}s: {result.count('succeeded')} succeeded, "
                  f"{result.count('failed')} failed, {result.count('skipped')} skipped, "
                  f"{result.count('blocked')} blocked.")
