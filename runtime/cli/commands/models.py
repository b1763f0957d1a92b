"""``mlops models list|show``: the model registry (versions, gate decisions, approvals, deployments)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from compiler.errors import MlopsError
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.commands.runs import print_wide
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options

if TYPE_CHECKING:
    from runtime.views.models import VersionDetail

STATUS_STYLE = {"candidate": "yellow", "approved": "green", "rejected": "red", "passed": "green", "failed": "red",
                "awaiting_approval": "yellow"}


@click.group("models")
@global_options
def models_group() -> None:
    """The model registry."""


@models_group.command("list")
@global_options
@pass_app
def list_command(app: Application) -> None:
    """Every model: its versions, the newest one and where it is deployed."""
    from runtime import opened
    from runtime.views.format import key_metrics
    from runtime.views.models import list_models

    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            models = list_models(project, store)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"models": [m.to_json() for m in models]})
        app.exit(ExitCode.OK)
    if not models:
        app.print("No models in the spec or the state.")
        app.exit(ExitCode.OK)
    table = Table("MODEL", "VERSIONS", "NEWEST", "STATUS", "METRICS", "DEPLOYMENTS", box=None, header_style="bold")
    for model in models:
        newest = model.newest
        deployed = ", ".join(f"{d.name} (desired {d.desired_version or '-'}, live {d.live_version or '-'})"
                             for d in model.deployments) or "-"
        name = f"models.{model.name}" + ("" if model.in_spec else " (not in spec)")
        table.add_row(Text(name), str(model.versions), str(newest.version) if newest else "-",
                      Text(newest.status, STATUS_STYLE.get(newest.status, "")) if newest else "-",
                      Text(key_metrics(newest.metrics) if newest else "-"), Text(deployed))
    print_wide(app, table)
    app.exit(ExitCode.OK)


@models_group.command("show")
@click.argument("name")
@click.option("--version", "version", default=None, type=click.IntRange(1), help="Only this version.")
@global_options
@pass_app
def show_command(app: Application, name: str, version: int | None) -> None:
    """A model's versions with status and reason, metrics, params, gate decisions and approvals."""
    from runtime import opened
    from runtime.views.format import key_metrics, number, when
    from runtime.views.models import show_model

    project = project_or_fail(app)
    try:
        with opened(project) as (_, store):
            detail = show_model(project, store, name, version)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json(detail.to_json())
        app.exit(ExitCode.OK)
    if not detail.versions:
        app.print(f"models.{detail.name} has no versions yet.")
        app.exit(ExitCode.OK)
    table = Table("VERSION", "STATUS", "CREATED", "METRICS", "PARAMS", "RUN", "DEPLOYED", box=None,
                  header_style="bold", title=f"models.{detail.name}", title_justify="left", title_style="bold")
    for item in detail.versions:
        v = item.version
        deployed = [f"{d} (desired)" for d in item.desired_in if d not in item.live_in] + \
                   [f"{d} (live)" for d in item.live_in]
        params = " ".join(f"{k}={number(p)}" for k, p in sorted(v.params.items())) or "-"
        status = Text(v.status, STATUS_STYLE.get(v.status, ""))
        if item.data_flags:
            status.append(f" ({'; '.join(item.data_flags)})", "red")
        if item.collected:
            status.append(" (model file collected by gc)", "yellow")
        table.add_row(str(v.version), status, when(v.created_at),
                      *map(Text, (key_metrics(v.metrics, most=4), params, v.run_id or "-",
                                  ", ".join(deployed) or "-")))
    print_wide(app, table)
    for item in detail.versions:
        _render_version(app.out, item)
    app.exit(ExitCode.OK)


def signature_line(record: dict[str, Any] | None) -> str:
    """``input signature (from the trainer): amount float, plan category, ...`` or that none was recorded."""
    from runtime.endpoint.signature import Signature

    signature = Signature.from_record(record)
    if signature is None:
        return "input signature: not recorded (rows are checked as objects of scalars only)"
    columns = ", ".join(f"{name} {kind}" for name, kind in signature.columns.items())
    return f"input signature (from the {signature.source}): {columns}"


def _render_version(out: Console, item: VersionDetail) -> None:
    from runtime.views.format import short, when

    v = item.version
    out.print()
    out.print(Text.assemble((f"version {v.version}", "bold"), "  ", (v.status, STATUS_STYLE.get(v.status, "")),
                            f": {v.reason}" if v.reason else ""))
    collected = " (collected by mlops gc: the file is gone)" if item.collected else ""
    out.print(Text(f"  artifact {v.artifact_uri}{collected}  code {short(v.code_hash)}  "
                   f"commit {short(v.git_commit, 7)}"))
    out.print(Text(f"  {signature_line(v.signature)}"))
    for removal in item.removed_data:
        request = f"erasure {removal.request_id}, " if removal.request_id is not None else ""
        out.print(Text(f"  ! trained on {removal.removal} data: {removal.address} {short(removal.content_hash)} "
                       f"({request}{removal.removal} {when(removal.removed_at)}; origin {removal.origin})", "red"))
    for decision in item.decisions:
        out.print(Text.assemble(f"  gates.{decision.gate}: ",
                                (decision.status, STATUS_STYLE.get(decision.status, "")),
                                f"  ({when(decision.decided_at)})"))
        for check in decision.checks:
            mark, style = ("✓", "green") if check.get("passed") else ("✗", "red")
            out.print(Text(f"    {mark} {check.get('reason', '')}", style))
    for approval in item.approvals:
        out.print(Text(f"  approved at gates.{approval.gate} by {approval.approver} "
                       f"({when(approval.approved_at)})"))
    if not item.decisions and not item.approvals:
        out.print(Text("  no gate decisions or approvals", "dim"))
