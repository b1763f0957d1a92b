"""``mlops compile``: writes graph.json, terraform/ and policy-report.json into ``--out``."""

from __future__ import annotations

from pathlib import Path

import click

from compiler import build_graph
from compiler.emit import emit
from compiler.errors import MlopsError
from compiler.policy.render import render_text
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import policies_or_fail, project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options, policies_option


@click.command("compile")
@click.option("--out", "out_dir", default="out", type=click.Path(file_okay=False), show_default=True,
              help="Where the outputs go.")
@policies_option()
@global_options
@pass_app
def compile_command(app: Application, out_dir: str, policy_dirs: tuple[str, ...]) -> None:
    """Compile the spec; exit 1 (writing nothing) on an error-severity policy failure."""
    project = project_or_fail(app)
    report = policies_or_fail(app, project, policy_dirs)
    if not report.ok:
        if app.json_output:
            from compiler.policy.render import to_json

            app.emit_json({"ok": False, "policy": to_json(report)})
        app.err.print(render_text(report).rstrip("\n"), markup=False)
        app.exit(ExitCode.FAILED)
    try:
        graph = build_graph(project)
        outputs = emit(project, report, graph, Path(out_dir))
    except MlopsError as error:
        app.fail(error)
    written = [outputs.graph, outputs.policy_report, *outputs.terraform]
    if app.json_output:
        app.emit_json({"ok": True, "written": [str(p) for p in written]})
    else:
        for path in written:
            app.print(f"wrote {path}")
    app.exit(ExitCode.OK)
