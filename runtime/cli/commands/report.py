"""``mlops report --out DIR``: a static HTML compliance report (policies, waivers, model cards, drift)."""

from __future__ import annotations

from pathlib import Path

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import policies_or_fail, project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options, policies_option


@click.command("report")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The folder to write index.html into (created if missing).")
@policies_option()
@global_options
@pass_app
def report_command(app: Application, out_dir: Path, policy_dirs: tuple[str, ...]) -> None:
    """Write DIR/index.html: policy results with rationale, waivers, a model card per model, drift per monitor.

    The page is self-contained (figures embedded, no network). Failing policies are reported, not fatal:
    the exit status is 0 once the report is written.
    """
    from runtime import opened
    from runtime.export.report import write_report
    from runtime.workspace import Workspace

    project = project_or_fail(app)
    report = policies_or_fail(app, project, policy_dirs)
    try:
        if not (workspace := Workspace.of(project)).local_state or workspace.state_path.exists():
            with opened(project) as (_, store):
                path = write_report(project, report, store, out_dir)
        else:
            path = write_report(project, report, None, out_dir)
    except MlopsError as error:
        app.fail(error)
    except OSError as error:
        app.fail(MlopsError.one(f"cannot write the report to {out_dir}: {error.strerror or error}"))
    if app.json_output:
        app.emit_json({"ok": True, "written": [str(path)]})
    else:
        app.print(f"wrote {path}")
    app.exit(ExitCode.OK)
