"""``mlops validate``: parse, schema, references, graph, policies; exit 1 on any error."""

from __future__ import annotations

import click

from compiler import build_graph
from compiler.errors import MlopsError
from compiler.policy.render import render_text, to_json
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import policies_or_fail, project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options, policies_option


@click.command("validate")
@policies_option()
@global_options
@pass_app
def validate_command(app: Application, policy_dirs: tuple[str, ...]) -> None:
    """Check the spec: parse, schema, references, graph and policies."""
    project = project_or_fail(app)
    report = policies_or_fail(app, project, policy_dirs)
    try:
        graph = build_graph(project)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": report.ok, "resources": len(project.addresses()), "nodes": graph.dag.number_of_nodes(),
                       "diagnostics": [], "policy": to_json(report)})
    else:
        if not report.ok or report.failures or report.waiver_problems:
            app.err.print(render_text(report).rstrip("\n"), markup=False)
        verdict = "valid" if report.ok else "invalid"
        app.print(f"{app.spec_file}: {verdict} — {len(project.addresses())} resources, "
                  f"{graph.dag.number_of_nodes()} graph nodes")
    app.exit(ExitCode.OK if report.ok else ExitCode.FAILED)
