"""``mlops plan``: what apply would do, and why, against the live state."""

from __future__ import annotations

from pathlib import Path

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options
from runtime.cli.plan_render import render_plan


@click.command("plan")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Save the plan for apply.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when the plan has changes.")
@click.option("--target", "targets", multiple=True, help="Only this resource (and what it needs); repeatable.")
@global_options
@pass_app
def plan_command(app: Application, out_file: str | None, detailed_exitcode: bool, targets: tuple[str, ...]) -> None:
    """Show what apply would do."""
    from runtime import opened, plan_project
    from runtime.plan import planfile

    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            _, plan = plan_project(project, store, list(targets))
        if out_file:
            planfile.save(plan, project.spec_path, Path(out_file))
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json(plan.to_json())
    else:
        render_plan(app.out, plan)
        if out_file:
            app.print(f"\nSaved the plan to {out_file}: `mlops apply {out_file}` runs exactly this.")
    app.exit(ExitCode.CHANGES if detailed_exitcode and plan.has_changes else ExitCode.OK)
