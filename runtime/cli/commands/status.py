"""``mlops status``: per resource, sync (Synced / OutOfSync) and health (Healthy / Progressing / Degraded / Missing)."""

from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.commands.runs import print_wide
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options

SYNC_STYLE = {"Synced": "green", "OutOfSync": "yellow", "Unknown": "red"}
HEALTH_STYLE = {"Healthy": "green", "Progressing": "cyan", "Degraded": "red", "Missing": "yellow"}


@click.command("status")
@global_options
@pass_app
def status_command(app: Application) -> None:
    """Sync and health of every resource, and the reconciler's last synced commit (exit 0 whatever they are)."""
    from runtime import opened, project_status
    from runtime.lifecycle.sizes import store_line
    from runtime.views.format import when

    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            status = project_status(project, store, measure_store=True)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json(status.to_json())
        app.exit(ExitCode.OK)
    table = Table("RESOURCE", "SYNC", "HEALTH", "DETAIL", box=None, header_style="bold")
    for resource in status.resources:
        detail = resource.detail
        if resource.reasons:
            detail = f"{detail} · " if detail else ""
            detail += "plan: " + "; ".join(resource.reasons)
        table.add_row(Text(resource.address), Text(resource.sync, SYNC_STYLE.get(resource.sync, "")),
                      Text(resource.health, HEALTH_STYLE.get(resource.health, "")), Text(detail))
    print_wide(app, table)
    if status.plan_error:
        app.out.print(Text(f"sync unknown: {status.plan_error}", "red"))
    if status.store_size is not None:
        app.out.print(Text(f"artifact store: {store_line(status.store_size)}"))
    elif status.store_error:
        app.out.print(Text(f"artifact store: size unknown: {status.store_error}", "red"))
    reconciler = status.reconciler
    if reconciler.commit:
        line = f"reconciler: last synced commit {reconciler.commit[:12]} at {when(reconciler.synced_at)}"
    else:
        line = "reconciler: no commit synced yet"
    if reconciler.tick_at:
        line += f"; last tick {when(reconciler.tick_at)}"
    if reconciler.error:
        line += f"; last error ({reconciler.errors} in a row): {reconciler.error}"
    app.out.print(Text(line))
    rewrite = status.history_rewritten
    if rewrite:
        app.out.print(Text(f"reconciler: history of {rewrite['branch']} rewritten at {when(rewrite['at'])}: "
                           f"followed {str(rewrite['to'])[:12]}, which does not descend from "
                           f"{str(rewrite['from'])[:12]}", "yellow"))
    for expiry in status.expiring:
        app.out.print(Text(f"retention: {expiry.address} {expiry.item.item_kind} {expiry.item.content_hash[:12]} "
                           f"expires {when(expiry.expires_at)} ({expiry.reason})"))
    for request, still in status.open_erasures:
        app.out.print(Text(f"erasure {request.id} of {request.dataset} open ({when(request.requested_at)}, "
                           f"{request.reason}): still in use: {', '.join(still)}", "yellow"))
    app.exit(ExitCode.OK)
