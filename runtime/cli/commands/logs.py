"""``mlops logs deployments.NAME [--request ID]``: the failures of a deployment's model code, with tracebacks."""

from __future__ import annotations

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("logs")
@click.argument("deployment", metavar="deployments.NAME")
@click.option("--request", "request_id", default=None, help="Only the failure of this request id (a 500's).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="The newest N failures.")
@global_options
@pass_app
def logs_command(app: Application, deployment: str, request_id: str | None, limit: int) -> None:
    """The requests a realtime deployment's model code failed on (each 500's request id and traceback)."""
    from dataclasses import asdict

    from compiler.suggest import did_you_mean
    from runtime.monitor.inference_log import error_dir, read_errors
    from runtime.views.format import when
    from runtime.workspace import Workspace

    project = project_or_fail(app)
    name = deployment.removeprefix("deployments.")
    if name not in project.spec.deployments:
        app.fail(MlopsError.one(f"unknown deployment 'deployments.{name}'"
                                f"{did_you_mean(name, project.spec.deployments)}"))
    records = read_errors(error_dir(Workspace.of(project).artifact_root, name), request_id)[-limit:]
    if request_id is not None and not records:
        app.fail(MlopsError.one(f"deployments.{name} logged no failure of request {request_id}"))
    if app.json_output:
        app.emit_json({"deployment": f"deployments.{name}", "failures": [asdict(r) for r in records]})
        app.exit(ExitCode.OK)
    if not records:
        app.print(f"deployments.{name}: the model's code failed on no request.")
        app.exit(ExitCode.OK)
    for record in records:
        app.print(f"{when(record.at)}  version {record.version}  request {record.request_id}  {record.error}")
        if request_id is not None or len(records) == 1:
            app.print(record.traceback.rstrip())
    app.exit(ExitCode.OK)
