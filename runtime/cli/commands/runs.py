"""``mlops runs list|show|compare``: the experiments the reconciler ran."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click
from rich.console import RenderableType
from rich.table import Column, Table
from rich.text import Text

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options

if TYPE_CHECKING:
    from runtime.views.runs import RunDetail

STATUS_STYLE = {"succeeded": "green", "failed": "red", "running": "yellow"}
PIPED_WIDTH = 1000
"""Piped output is as wide as it needs: ids and hashes are never cut to fit 80 columns."""
HISTORY_ROWS = 24
"""``runs show`` prints at most this many steps of metric history (half from each end); ``--json`` has all."""


def print_wide(app: Application, renderable: RenderableType) -> None:
    """Print a table or tree at the terminal's width (or ``$COLUMNS``); piped, at its natural width."""
    if not app.out.is_terminal and not os.environ.get("COLUMNS"):
        app.out.width = PIPED_WIDTH
    app.out.print(renderable)


@click.group("runs")
@global_options
def runs_group() -> None:
    """Experiments: every training, evaluation and transform run."""


@runs_group.command("list")
@click.option("--model", default=None, help="Only the runs of this model.")
@click.option("--address", default=None, help="Only the runs of this resource (models.x, datasets.y).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="At most this many runs.")
@global_options
@pass_app
def list_command(app: Application, model: str | None, address: str | None, limit: int) -> None:
    """The newest runs first."""
    from runtime import opened
    from runtime.views.format import key_metrics, short, took, when
    from runtime.views.runs import duration, list_runs, run_json

    if model and address:
        app.fail(MlopsError.one("--model and --address cannot be used together"))
    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            runs = list_runs(project, store, f"models.{model.removeprefix('models.')}" if model else address,
                             limit)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"runs": [run_json(r) for r in runs]})
        app.exit(ExitCode.OK)
    if not runs:
        app.print("No runs recorded yet.")
        app.exit(ExitCode.OK)
    table = Table(Column("RUN", no_wrap=True, min_width=16), "NODE", "STATUS", "ATTEMPT", "STARTED", "DURATION",
                  "METRICS", "DEVICE", "COMMIT", box=None, header_style="bold")
    for run in runs:
        commit = short(run.git_commit, 7) + ("*" if run.git_dirty else "")
        table.add_row(*map(Text, (run.run_id, run.node_id)), Text(run.status, STATUS_STYLE.get(run.status, "")),
                      *map(Text, (str(run.attempt), when(run.started_at), took(duration(run)),
                                  key_metrics(run.metrics), run.device, commit)))
    print_wide(app, table)
    app.exit(ExitCode.OK)


@runs_group.command("show")
@click.argument("run_id")
@click.option("--no-log", is_flag=True, help="Do not print the run's log.")
@global_options
@pass_app
def show_command(app: Application, run_id: str, no_log: bool) -> None:
    """One run: params, metrics, history, timings, provenance, error and log."""
    from runtime import opened
    from runtime.artifacts.store import ArtifactStore
    from runtime.views.format import number, took, when
    from runtime.views.runs import duration, run_detail

    project = project_or_fail(app)
    try:
        with opened(project) as (workspace, store):
            detail = run_detail(store, None if no_log else ArtifactStore(workspace.artifact_root), run_id)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json(detail.to_json())
        app.exit(ExitCode.OK)
    run = detail.run
    out = app.out
    out.print(Text.assemble(("Run ", "bold"), (run.run_id, "bold"), f"  {run.node_id}  ",
                            (run.status, STATUS_STYLE.get(run.status, ""))))
    facts = Table.grid(padding=(0, 2))
    for label, value in (
            ("kind", run.kind), ("attempt", str(run.attempt)), ("started", when(run.started_at)),
            ("finished", when(run.finished_at)), ("duration", took(duration(run))),
            ("host", f"{run.host} (pid {run.pid})" if run.pid else run.host or "-"), ("device", run.device),
            ("commit", (run.git_commit or "-") + (" (dirty work tree)" if run.git_dirty else "")),
            ("fingerprint", run.fingerprint)):
        facts.add_row(Text(f"  {label}", "dim"), Text(value))
    print_wide(app, facts)
    if run.params:
        params = Table("PARAM", "VALUE", box=None, header_style="bold", title_justify="left")
        for key, param in sorted(run.params.items()):
            params.add_row(Text(key), Text(number(param)))
        print_wide(app, params)
    if run.metrics:
        metrics = Table("METRIC", "FINAL", box=None, header_style="bold")
        for key, metric in sorted(run.metrics.items()):
            metrics.add_row(Text(key), Text(number(metric)))
        print_wide(app, metrics)
    if detail.history:
        print_wide(app, _history_table(detail))
    if run.error:
        out.print(Text(f"error: {run.error}", "red"))
    if not no_log:
        out.print(Text("log:", "bold"))
        if detail.log is not None:
            out.print(Text.from_ansi(detail.log.rstrip("\n") or "(empty)"), soft_wrap=True)
        else:
            out.print(Text(f"({detail.log_problem})", "dim"))
    app.exit(ExitCode.OK)


def _history_table(detail: RunDetail) -> Table:
    from runtime.views.format import number

    names = sorted(detail.history)
    by_step: dict[int, dict[str, float]] = {}
    for name, points in detail.history.items():
        for point in points:
            by_step.setdefault(point.step, {})[name] = point.value
    steps = sorted(by_step)
    table = Table("STEP", *(n.upper() for n in names), box=None, header_style="bold")
    shown = steps if len(steps) <= HISTORY_ROWS else steps[:HISTORY_ROWS // 2] + [-1] + steps[-HISTORY_ROWS // 2:]
    for step in shown:
        if step == -1:
            table.add_row(f"... {len(steps) - HISTORY_ROWS} more", *("" for _ in names))
            continue
        table.add_row(str(step), *(Text(number(by_step[step].get(n))) for n in names))
    return table


@runs_group.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@global_options
@pass_app
def compare_command(app: Application, run_ids: tuple[str, ...]) -> None:
    """Params and metrics of two or more runs side by side."""
    from runtime import opened
    from runtime.views.format import number, took
    from runtime.views.runs import compare_runs, duration

    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            comparison = compare_runs(store, list(run_ids))
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json(comparison.to_json())
        app.exit(ExitCode.OK)
    table = Table("", "", *(r.run_id for r in comparison.runs), box=None, header_style="bold")
    for label, values in (("node", [r.node_id for r in comparison.runs]),
                          ("status", [r.status for r in comparison.runs]),
                          ("duration", [took(duration(r)) for r in comparison.runs])):
        table.add_row("", Text(label, "dim"), *map(Text, values))
    for section, rows in (("params", comparison.params), ("metrics", comparison.metrics)):
        table.add_section()
        table.add_row("", Text(section, "bold"), *("" for _ in comparison.runs))
        for row in rows:
            style = "yellow bold" if row.differs else ""
            table.add_row(Text("≠" if row.differs else "", "yellow"), Text(f"  {row.key}", style),
                          *(Text(number(v), style) for v in row.values))
    print_wide(app, table)
    changed = sum(row.differs for row in [*comparison.params, *comparison.metrics])
    app.print(f"\n{changed} of {len(comparison.params) + len(comparison.metrics)} params and metrics differ (≠).")
    app.exit(ExitCode.OK)
