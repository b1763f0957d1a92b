"""``mlops rollback DEPLOYMENT [--to N]``: serve an earlier version now, and say which spec change makes it last."""

from __future__ import annotations

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail, seconds_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("rollback")
@click.argument("deployment")
@click.option("--to", "to", default=None, type=click.IntRange(1),
              help="The version to serve (default: the newest earlier one that passed the gates).")
@click.option("--reason", default="manual rollback", show_default=True, help="Why (kept in the audit trail).")
@click.option("--lock-timeout", default="0s", show_default=True, help="Wait this long for the state lock.")
@global_options
@pass_app
def rollback_command(app: Application, deployment: str, to: int | None, reason: str, lock_timeout: str) -> None:
    """Serve an earlier model version now.

    It keeps serving until a version newer than the one rolled back from passes the gates; to make it
    last, pin it in the spec (the command prints the change).
    """
    from runtime import rollback

    project = project_or_fail(app)
    name = deployment.removeprefix("deployments.")
    timeout = seconds_or_fail(app, "--lock-timeout", lock_timeout)
    try:
        outcome = rollback(project, name, to, reason, lock_timeout=timeout)
    except MlopsError as error:  # a rollout that failed too: the old version keeps serving
        app.fail(error)
    was = outcome.from_version if outcome.from_version is not None else "none"
    if app.json_output:
        app.emit_json({"ok": True, "deployment": f"deployments.{outcome.deployment}", "model": outcome.model,
                       "from_version": outcome.from_version, "to_version": outcome.to_version,
                       "permanent_change": outcome.permanent_change})
    else:
        app.print(f"deployments.{outcome.deployment} now serves version {outcome.to_version} (was {was}). "
                  f"To make it permanent: {outcome.permanent_change}")
    app.exit(ExitCode.OK)
