"""``mlops force-unlock LOCK_ID``: clear the state lock information a dead holder left (Terraform-like)."""

from __future__ import annotations

from dataclasses import asdict

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("force-unlock")
@click.argument("lock_id")
@global_options
@pass_app
def force_unlock_command(app: Application, lock_id: str) -> None:
    """Release a state lock left behind by an operation that is gone.

    Refused when LOCK_ID is not the lock's ID or its holder is still running (stop it instead).
    """
    from runtime.views.audit import force_unlock
    from runtime.views.format import when

    project = project_or_fail(app)
    try:
        cleared = force_unlock(project, lock_id)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, "lock": asdict(cleared)})
    else:
        app.print(f"The state has been unlocked: lock {cleared.id} ({cleared.operation} by {cleared.who}, "
                  f"PID {cleared.pid} on {cleared.host}, since {when(cleared.since)}).")
    app.exit(ExitCode.OK)
