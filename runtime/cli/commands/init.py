"""``mlops init [DIR]``: a working starter project."""

from __future__ import annotations

from pathlib import Path

import click

from compiler.errors import MlopsError
from compiler.starter import create_starter
from runtime.cli.app import Application, pass_app
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--name", default=None, help="Project name (default: the folder's name).")
@global_options
@pass_app
def init_command(app: Application, directory: str, name: str | None) -> None:
    """Write a starter project (spec and its JSON Schema, data, pipeline code, CI workflow) into DIRECTORY."""
    try:
        written = create_starter(Path(directory), name)
    except MlopsError as error:
        app.fail(error)
    if app.json_output:
        app.emit_json({"ok": True, "written": [str(p) for p in written]})
    else:
        for path in written:
            app.print(f"created {path}")
        app.print(f"\nnext: cd {directory} && mlops validate && mlops plan "
                  "(README.md: apply, then ask the API)")
    app.exit(ExitCode.OK)
