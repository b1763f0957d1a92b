"""``mlops schema``: print the JSON Schema of ``mlops.yaml``."""

from __future__ import annotations

import click

from compiler.schema_export import render
from runtime.cli.app import Application, pass_app
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options


@click.command("schema")
@click.option("--policy-pack", is_flag=True, help="The schema of a policy pack instead.")
@global_options
@pass_app
def schema_command(app: Application, policy_pack: bool) -> None:
    """Print the JSON Schema (draft 2020-12) of mlops.yaml."""
    app.write(render("policy-pack.schema.json" if policy_pack else "mlops.schema.json"))
    app.exit(ExitCode.OK)
