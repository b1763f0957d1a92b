"""``mlops apply``: run the plan on Ray and record the result."""

from __future__ import annotations

from pathlib import Path

import click

from compiler.errors import MlopsError
from compiler.resolve import Project
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail, seconds_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options
from runtime.cli.plan_render import render_outcomes, render_plan
from runtime.cli.progress import NodeProgress


@click.command("apply")
@click.argument("plan_file", required=False, type=click.Path(dir_okay=False))
@click.option("--parallelism", default=4, show_default=True, type=click.IntRange(1), help="Nodes run at once.")
@click.option("--target", "targets", multiple=True, help="Only this resource (and what it needs); repeatable.")
@click.option("--lock-timeout", default="0s", show_default=True, help="Wait this long for the state lock (30s, 5m).")
@click.option("--allow-dirty", is_flag=True, help="Apply even with uncommitted changes in the work tree.")
@click.option("--resource-timeout", default="2m", show_default=True,
              help="Give up when no task of the apply could start for this long (the cluster has no room).")
@global_options
@pass_app
def apply_command(app: Application, plan_file: str | None, parallelism: int, targets: tuple[str, ...],
                  lock_timeout: str, allow_dirty: bool, resource_timeout: str) -> None:
    """Make the live state match the spec."""
    from runtime import apply_project

    project = project_or_fail(app)
    forwarded = _in_warm_driver(app, project, plan_file)
    if forwarded is not None:
        app.exit(forwarded)
    timeout = seconds_or_fail(app, "--lock-timeout", lock_timeout)
    resource_wait = seconds_or_fail(app, "--resource-timeout", resource_timeout)
    progress = NodeProgress(app.err, enabled=not app.json_output)
    try:
        with progress:
            outcome = apply_project(project, plan_path=Path(plan_file) if plan_file else None,
                                    targets=list(targets), parallelism=parallelism, lock_timeout=timeout,
                                    progress=progress.update, allow_dirty=allow_dirty,
                                    resource_wait=resource_wait)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": outcome.result.ok, "plan": outcome.plan.to_json(), "seconds": outcome.seconds,
                       "outcomes": {nid: {"status": o.status, "message": o.message}
                                    for nid, o in outcome.result.outcomes.items()}})
    else:
        render_plan(app.out, outcome.plan)
        render_outcomes(app.out, outcome.result, outcome.seconds)
    app.exit(ExitCode.OK if outcome.result.ok else ExitCode.FAILED)


def _in_warm_driver(app: Application, project: Project, plan_file: str | None) -> int | None:
    """Run this apply in the project's warm driver (:mod:`runtime.daemon`) and return its exit code; ``None``:
    run it here (the warm driver is off or not for this project, or none runs and there is nothing to do: a
    no-op apply starts nothing)."""
    from runtime.daemon import client

    try:
        if not client.eligible(project):
            return None
        if client.running_for(project, app.environ) is None and not _has_work(project, plan_file):
            return None
        return client.run(project, app.argv, app.environ)
    except MlopsError as error:
        app.fail(error)


def _has_work(project: Project, plan_file: str | None) -> bool:
    """Whether the apply changes anything: the saved plan's summary, else a plan made now (without the lock).
    A plan that cannot be read or made says no: the apply then runs in this process, which reports why."""
    from runtime import opened
    from runtime.plan import planfile
    from runtime.plan.project import plan_project

    try:
        if plan_file is not None:
            summary = planfile.load(Path(plan_file)).body["summary"]
            return any(count for action, count in summary.items() if action != "no-op")  # as Plan.has_changes
        with opened(project) as (_, store):
            _, plan = plan_project(project, store)
    except Exception:  # noqa: BLE001 - the apply in this process loads or makes the plan again and reports its error
        return False
    return plan.has_changes
