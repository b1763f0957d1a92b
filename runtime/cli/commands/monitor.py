"""``mlops monitor run|feedback|history``: evaluate monitors now, feed labels back, read past results.

A breach is a finding, not a failure of the command: ``monitor run`` exits 0 when monitors breach
(their ``on_breach`` actions have run), unless ``--detailed-exitcode`` asks for 2 on a breach, as
``plan --detailed-exitcode`` does for changes. Errors (unknown monitor, unreadable spec) exit 1, and so
does a check that could not be evaluated (status ``error``: a reference that cannot be read, a column
missing): its result is stored and printed first, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from compiler.errors import Diagnostic, MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail, seconds_or_fail
from runtime.cli.commands.runs import print_wide
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options
from runtime.state.records import MonitorResult

STATUS_STYLE = {"ok": "green", "breached": "red", "skipped": "yellow", "error": "red"}
RULE = {"score < threshold": "<", "score >= threshold": ">=", "score > threshold": ">"}


@click.group("monitor")
@global_options
def monitor_group() -> None:
    """Monitors: drift, accuracy and latency of what deployments serve."""


@monitor_group.command("run")
@click.argument("name", required=False)
@click.option("--lock-timeout", default="0s", show_default=True, help="Wait this long for the state lock.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when a monitor breached (default: 0).")
@global_options
@pass_app
def run_command(app: Application, name: str | None, lock_timeout: str, detailed_exitcode: bool) -> None:
    """Evaluate every monitor (or NAME) now, and run the on_breach actions of those that breach."""
    from runtime import opened, run_monitors
    from runtime.monitor.results import check_errors, result_json

    project = project_or_fail(app)
    timeout = seconds_or_fail(app, "--lock-timeout", lock_timeout)
    names = [name.removeprefix("monitors.")] if name else None
    try:
        with opened(project) as (_, store):
            results = run_monitors(project, store, names, lock_timeout=timeout)
    except MlopsError as error:
        app.fail(error)
    breached = any(r.breached for r in results)
    errors = [line for r in results for line in check_errors(r)]
    if app.json_output:
        app.emit_json({"ok": not errors, "breached": breached, "errors": errors,
                       "results": [result_json(r) for r in results]})
    elif not results:
        app.print("No monitors in the spec.")
    else:
        for index, result in enumerate(results):
            if index:
                app.print()
            render_result(app, result)
    if errors:
        app.diagnostics([Diagnostic(line) for line in errors])
        app.exit(ExitCode.FAILED)
    app.exit(ExitCode.CHANGES if breached and detailed_exitcode else ExitCode.OK)


def render_result(app: Application, result: MonitorResult) -> None:
    """A monitor's verdict line, its checks as a table, the errors' reasons and the actions taken."""
    skipped = bool(result.checks) and all(c.get("status") == "skipped" for c in result.checks)
    errors = [(i, c) for i, c in enumerate(result.checks) if c.get("status") == "error"]
    verdict = Text("BREACHED", "bold red") if result.breached else Text("ERROR", "bold red") if errors else \
        Text("not enough data", "yellow") if skipped else Text("ok", "green")
    if result.breached and errors:
        verdict.append(Text(", ERROR", "bold red"))
    version = f"version {result.version}" if result.version is not None else "no live version"
    app.out.print(Text.assemble((f"monitors.{result.monitor}", "bold"),
                                f" on deployments.{result.deployment} ({version}): ", verdict))
    table = Table("CHECK", "METHOD", "SCORE", "BREACH WHEN", "STATUS", "DETAIL", box=None, header_style="bold")
    for check in result.checks:
        rule = RULE.get(check.get("breach_when") or "", "")
        threshold = f"{rule} {_number(check['threshold'])}" if rule else "-"
        status = check.get("status", "ok")
        table.add_row(check["type"], str(check["method"]), _number(check.get("score")), threshold,
                      Text(status, STATUS_STYLE.get(status, "")), Text(_detail(check)))
    print_wide(app, table)
    for index, check in errors:
        app.out.print(Text(f"error: check {index} ({check['type']}, {check['method']}): "
                           f"{check.get('reason') or 'no reason recorded'}", "red"))
    if result.actions:
        app.out.print(Text(f"actions: {'; '.join(result.actions)}"))


def _detail(check: dict[str, Any]) -> str:
    if check.get("reason"):
        return str(check["reason"])
    detail = check.get("detail") or {}
    if check["type"] == "data_drift":
        columns = detail.get("columns", {})
        drifted = detail.get("drifted_columns", [])
        per = f"column {detail.get('column_drift_when', 'score')} {_number(detail.get('column_threshold'))}"
        return f"drifted: {', '.join(drifted) or 'none'} ({len(drifted)} of {len(columns)} columns; {per})"
    if check["type"] == "prediction_drift":
        return f"n={detail.get('n_current')} vs reference {detail.get('n_reference')}"
    if check["type"] == "latency":
        return f"n={detail.get('n')}, p50 {_number(detail.get('p50_ms'))} ms"
    return f"n={detail.get('n')} of window {detail.get('window')}"


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@monitor_group.command("feedback")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@global_options
@pass_app
def feedback_command(app: Application, file: Path) -> None:
    """Store labels for logged predictions: a CSV (id,label) or JSONL ({"id", "label"}) FILE."""
    from runtime import opened
    from runtime.monitor.feedback import read_feedback, store_feedback

    project = project_or_fail(app)
    try:
        labels = read_feedback(file)
        with opened(project) as (workspace, store):
            stored, matched = store_feedback(workspace, store, labels)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, "stored": stored, "matched": matched, "unmatched": stored - matched})
    else:
        unknown = f"; {stored - matched} match no logged prediction (yet)" if stored > matched else ""
        app.print(f"Stored {stored} label(s); {matched} match logged predictions{unknown}.")
    app.exit(ExitCode.OK)


@monitor_group.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="The newest this many results.")
@global_options
@pass_app
def history_command(app: Application, name: str, limit: int) -> None:
    """A monitor's past results, oldest first."""
    from runtime import opened
    from runtime.views.format import when

    project = project_or_fail(app)
    name = name.removeprefix("monitors.")
    if name not in project.spec.monitors:
        from compiler.suggest import did_you_mean

        app.fail(MlopsError.one(f"unknown monitor '{name}'{did_you_mean(name, project.spec.monitors)}"))
    with opened(project) as (_, store):
        results = store.monitor_results(name, limit)
    if app.json_output:
        from runtime.monitor.results import result_json

        app.emit_json({"monitor": f"monitors.{name}", "results": [result_json(r) for r in results]})
        app.exit(ExitCode.OK)
    if not results:
        app.print(f"monitors.{name} has not run yet (mlops monitor run {name}).")
        app.exit(ExitCode.OK)
    table = Table("AT", "VERSION", "RESULT", "CHECKS", "ACTIONS", box=None, header_style="bold",
                  title=f"monitors.{name}", title_justify="left", title_style="bold")
    for result in results:
        checks = ", ".join(f"{c['type']} {c.get('status', '?')}" + (f" {_number(c.get('score'))}"
                                                                   if c.get("score") is not None else "")
                           for c in result.checks)
        errored = any(c.get("status") == "error" for c in result.checks)
        table.add_row(when(result.at), str(result.version or "-"),
                      Text("breached", "red") if result.breached else Text("error", "red") if errored
                      else Text("ok", "green"),
                      Text(checks or "-"), Text("; ".join(result.actions) or "-"))
    print_wide(app, table)
    app.exit(ExitCode.OK)
