"""``mlops graph``: the dependency graph as mermaid, dot or json."""

from __future__ import annotations

import click

from compiler import build_graph
from compiler.errors import MlopsError
from compiler.graph_render import RENDERERS
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("graph")
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default=None,
              help="Output format (default mermaid; json with --json).")
@global_options
@pass_app
def graph_command(app: Application, fmt: str | None) -> None:
    """Print the dependency graph."""
    project = project_or_fail(app)
    try:
        graph = build_graph(project)
    except MlopsError as error:
        app.fail(error)
    app.write(RENDERERS[fmt or ("json" if app.json_output else "mermaid")](graph))
    app.exit(ExitCode.OK)
