"""The global options (``-f``, ``--json``, ``--no-color``), accepted before or after the command name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from runtime.cli.app import Application

F = TypeVar("F", bound=Callable[..., Any])


def _set(field_name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is not None and value is not False:
            app = ctx.ensure_object(Application)
            setattr(app, field_name, value)
            if field_name == "color":
                app.__post_init__()
        return value

    return callback


def global_options(func: F) -> F:
    """Add ``-f/--file``, ``--json`` and ``--no-color`` to a group or command."""
    func = click.option("-f", "--file", "spec_file", default=None, expose_value=False, is_eager=True,
                        callback=_set("spec_file"), help="The spec file (default ./mlops.yaml).")(func)
    func = click.option("--json", "json_output", is_flag=True, default=False, expose_value=False,
                        callback=_set("json_output"), help="Machine output on stdout.")(func)
    func = click.option("--no-color", "color", flag_value=False, default=None, expose_value=False,
                        is_eager=True, callback=_set("color"), help="No colors.")(func)
    return func


def policies_option(help_text: str = "A folder of extra policy packs (repeatable).") -> Callable[[F], F]:
    """``--policies DIR`` (repeatable) -> the ``policy_dirs`` argument."""
    return click.option("--policies", "policy_dirs", multiple=True, type=click.Path(file_okay=False), help=help_text)
