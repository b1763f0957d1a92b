"""``mlops approve GATE --version N [--by P]``: record a human approval."""

from __future__ import annotations

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("approve")
@click.argument("gate")
@click.option("--version", "version", required=True, type=click.IntRange(1), help="The model version approved.")
@click.option("--by", "by", default=None, help="The approver (default: git's user.email).")
@global_options
@pass_app
def approve_command(app: Application, gate: str, version: int, by: str | None) -> None:
    """Approve a model version at a gate."""
    from runtime import approve

    project = project_or_fail(app)
    name = gate.removeprefix("gates.")
    try:
        outcome = approve(project, name, version, by)
    except MlopsError as error:
        app.fail(error)
    approval = outcome.approval
    if app.json_output:
        app.emit_json({"ok": True, "gate": f"gates.{name}", "model": approval.model, "version": version,
                       "approver": approval.approver, "already_approved": not outcome.new,
                       "approved_at": approval.approved_at})
    elif outcome.new:
        app.print(f"Approved models.{approval.model} version {version} at gates.{name} as {approval.approver}.")
    else:
        from runtime.views.format import when

        app.print(f"models.{approval.model} version {version} was already approved at gates.{name} by "
                  f"{approval.approver} ({when(approval.approved_at)}); nothing recorded.")
    app.exit(ExitCode.OK)
