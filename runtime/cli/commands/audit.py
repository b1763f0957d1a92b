"""``mlops audit log|verify``: the append-only, hash-chained audit trail."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from compiler.errors import Diagnostic, MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.commands.runs import print_wide
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.group("audit")
@global_options
def audit_group() -> None:
    """The audit trail of applies, approvals and rollbacks."""


@audit_group.command("log")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the newest N records.")
@global_options
@pass_app
def log_command(app: Application, limit: int | None) -> None:
    """The audit records, oldest first."""
    from runtime import opened
    from runtime.views.audit import audit_log
    from runtime.views.format import short, when

    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            records = audit_log(store, limit)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"records": [asdict(r) for r in records]})
        app.exit(ExitCode.OK)
    if not records:
        app.print("The audit trail is empty.")
        app.exit(ExitCode.OK)
    table = Table("SEQ", "AT", "ACTOR", "ACTION", "COMMIT", "WHAT", box=None, header_style="bold")
    for record in records:
        table.add_row(*map(Text, (str(record.seq), when(record.at), record.actor, record.action,
                                  short(record.commit, 7), _summary(record.action, record.payload))))
    print_wide(app, table)
    app.exit(ExitCode.OK)


def _summary(action: str, payload: dict[str, Any]) -> str:
    """One line about what a record did."""
    if action == "apply":
        changes = payload.get("changes") or {}
        failed = [n for n, status in (payload.get("outcomes") or {}).items() if status == "failed"]
        text = ", ".join(f"{address} {what}" for address, what in sorted(changes.items())) or "no changes"
        return text + (f"; failed: {', '.join(sorted(failed))}" if failed else "")
    if action == "approve":
        return f"{payload.get('gate')} models.{payload.get('model')}@{payload.get('version')}"
    if action == "decide":
        adopted = " (adopted)" if payload.get("adopted") else ""
        return f"{payload.get('gate')} models.{payload.get('model')}@{payload.get('version')} " \
               f"{payload.get('status')}{adopted}"
    if action == "force-unlock":
        lock = payload.get("lock") or {}
        return f"lock {lock.get('id')} ({lock.get('operation')} by {lock.get('who')}, pid {lock.get('pid')})"
    return json.dumps(payload, sort_keys=True)


@audit_group.command("verify")
@global_options
@pass_app
def verify_command(app: Application) -> None:
    """Check the hash chain; exit 1 with one line per problem when a record was edited or deleted."""
    from runtime import opened
    from runtime.state.anchor import refusal_before_open
    from runtime.views.audit import verify_audit
    from runtime.workspace import Workspace

    project = project_or_fail(app)
    try:
        workspace = Workspace.of(project)
        state = workspace.state_path if workspace.local_state else workspace.state  # a URL: checked once open
        if (emptied := refusal_before_open(state)) is not None:
            raise MlopsError.one(emptied)
        with opened(project, check=False) as (_, store):  # report what is wrong with the state, never refuse it
            check = verify_audit(store)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json(check.to_json())
    if not check.ok:
        app.diagnostics([Diagnostic(problem, address="audit") for problem in check.problems])
        app.exit(ExitCode.FAILED)
    app.print(f"audit trail intact: {check.records} records")
    app.exit(ExitCode.OK)
