"""``mlops state reset --i-understand``: accept a state its audit head does not vouch for (emptied, replaced, older)."""

from __future__ import annotations

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.group("state")
@global_options
def state_group() -> None:
    """The state file's identity: its lineage, serial and audit head."""


@state_group.command("reset")
@click.option("--i-understand", "understood", is_flag=True,
              help="Required: the state as it is now becomes the one its audit head anchors.")
@global_options
@pass_app
def reset_command(app: Application, understood: bool) -> None:
    """Accept the state file as it is now (after it was emptied, replaced or restored from an older copy).

    The old audit-head sidecar is kept beside it (`.replaced-<time>`), a `state-reset` record naming the
    history it anchored is appended to the audit trail, and the sidecar anchors this state from now on.
    Restoring the right state file from a backup is the better recovery when there is one.
    """
    from runtime import reset_state
    from runtime.state.pgurl import shown
    from runtime.workspace import Workspace

    project = project_or_fail(app)
    if not understood:
        app.fail(MlopsError.one("state reset: pass --i-understand: the state file as it is now becomes the one "
                                "its audit head anchors (restoring it from a backup is the better recovery)"))
    workspace = Workspace.of(project)
    try:
        record, (lineage, serial, count) = reset_state(project)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, "lineage": lineage, "serial": serial, "records": count,
                       "previous": record.payload["previous"]})
    else:
        where = workspace.state_path if workspace.local_state else shown(workspace.state)
        app.print(f"State {where} accepted: lineage {lineage}, serial {serial}, {count} audit "
                  f"records (record {record.seq} names the history it replaced).")
    app.exit(ExitCode.OK)
