"""``mlops gc [--apply] [--keep N]``: free what no recorded snapshot, kept model version, reusable result or run
log names in the artifact store (a dry run unless ``--apply``)."""

from __future__ import annotations

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail, seconds_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("gc")
@click.option("--apply", "apply", is_flag=True, help="Delete (default: only say what would be freed).")
@click.option("--keep", type=click.IntRange(1), default=None,
              help="Keep the files of each model's newest N versions (default: models.<name>.keep_versions, else "
                   "all); the versions deployments serve, want or pin are always kept.")
@click.option("--lock-timeout", default="0s", show_default=True, help="Wait this long for the state lock.")
@global_options
@pass_app
def gc_command(app: Application, apply: bool, keep: int | None, lock_timeout: str) -> None:
    """Free the artifact store's objects that the state no longer names.

    Kept: every recorded snapshot, the newest result of each node (what the plan reuses), the model versions
    deployments serve, want or pin and the newest N of each model, and every run's log. Objects written after
    gc started are never deleted; --apply holds the state lock, so no apply runs meanwhile.
    """
    from runtime.lifecycle.gc import collect_project
    from runtime.lifecycle.sizes import human_bytes

    project = project_or_fail(app)
    timeout = seconds_or_fail(app, "--lock-timeout", lock_timeout)
    try:
        report = collect_project(project, apply=apply, keep=keep, lock_timeout=timeout)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, **report.to_json()})
        app.exit(ExitCode.OK)
    for uri, problem in sorted(report.unreadable.items()):
        app.err.print(f"warning: {uri} is named by the state but cannot be read: {problem}", style="yellow",
                      markup=False)
    before = report.before
    app.print(f"store {before.location}: {before.summary()}")
    versions = "; ".join(f"models.{model} version(s) {', '.join(map(str, numbers))}"
                         for model, numbers in sorted(report.released_versions.items()))
    if report.applied:
        app.print(f"freed {report.freed_objects} object(s), {human_bytes(report.freed_bytes)}: "
                  f"{human_bytes(before.total_bytes)} before, {human_bytes(report.after_bytes)} after")
        if versions:
            app.print(f"model files collected (the versions stay in the registry): {versions}")
    else:
        app.print(f"would free {report.garbage_objects} object(s), {human_bytes(report.garbage_bytes)}: "
                  f"{human_bytes(before.total_bytes)} now, {human_bytes(before.total_bytes - report.garbage_bytes)} "
                  "after; run `mlops gc --apply` to free them")
        if versions:
            app.print(f"model files it would collect (the versions stay in the registry): {versions}")
    if report.too_new:
        app.print(f"kept {report.too_new} unreferenced object(s) written after gc started")
    app.exit(ExitCode.OK)
