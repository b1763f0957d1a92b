"""``mlops policy check``: policy results only, in text, json, sarif, junit or markdown."""

from __future__ import annotations

from pathlib import Path

import click

from compiler.policy.render import RENDERERS
from runtime.cli.app import Application, pass_app
from runtime.cli.commands.common import policies_or_fail, project_or_fail
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options, policies_option


@click.group("policy")
@global_options
def policy_group() -> None:
    """Compliance policies."""


@policy_group.command("check")
@click.option("--format", "fmt", type=click.Choice(sorted(RENDERERS)), default=None,
              help="Output format (default text; json with --json).")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write the report to a file.")
@policies_option()
@global_options
@pass_app
def check_command(app: Application, fmt: str | None, output: str | None, policy_dirs: tuple[str, ...]) -> None:
    """Evaluate the policy packs; exit 1 on an error-severity failure that is not waived."""
    project = project_or_fail(app)
    report = policies_or_fail(app, project, policy_dirs)
    text = RENDERERS[fmt or ("json" if app.json_output else "text")](report)
    if output:
        Path(output).write_text(text)
        app.err.print(f"wrote {output}", markup=False)
    else:
        app.write(text)
    app.exit(ExitCode.OK if report.ok else ExitCode.FAILED)
