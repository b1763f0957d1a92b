"""``mlops erase datasets.NAME --reason TEXT``: erase a dataset's data and everything derived from it."""

from __future__ import annotations

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail, seconds_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("erase")
@click.argument("dataset")
@click.option("--reason", required=True, help="Why (the erasure request, kept in the audit trail).")
@click.option("--lock-timeout", default="0s", show_default=True, help="Wait this long for the state lock.")
@global_options
@pass_app
def erase_command(app: Application, dataset: str, reason: str, lock_timeout: str) -> None:
    """Erase a dataset's snapshots and everything derived from them (GDPR Art. 17).

    Deletes their objects, records the request in the audit trail and lists every model version trained on
    them; the next plan takes the dataset again from its source and retrains the models in use.
    """
    from runtime import opened
    from runtime.artifacts.store import ArtifactStore
    from runtime.lifecycle.erasure import erase
    from runtime.views.format import short

    project = project_or_fail(app)
    timeout = seconds_or_fail(app, "--lock-timeout", lock_timeout)
    try:
        with opened(project) as (workspace, store):
            report = erase(project, store, ArtifactStore(workspace.artifact_root), dataset, reason,
                           lock_timeout=timeout)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, **report.to_json()})
        app.exit(ExitCode.OK)
    request = report.request
    app.print(f"Erasure {request.id} of {request.dataset}: {len(report.erased)} snapshot(s) erased, "
              f"{report.objects_deleted} object(s) deleted.")
    for removal in report.erased:
        app.print(f"  erased {removal.address} {removal.item_kind} {short(removal.content_hash)}")
    if report.models:
        app.print(f"Model versions trained on it: {', '.join(report.models)}")
    if report.in_use:
        app.print(f"In use, retrained by the next apply: {', '.join(report.in_use)}")
    app.exit(ExitCode.OK)
