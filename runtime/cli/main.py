"""``mlops``: the command tree. Each command lives in its own module under ``runtime/cli/``."""

from __future__ import annotations

import gc
import sys

import click

from compiler.errors import MlopsError
from runtime.cli.app import Application, Exit
from runtime.cli.commands import COMMANDS
from runtime.cli.options import global_options


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.version_option("0.1.0", prog_name="mlops")
def cli() -> None:
    """mlops: a declarative GitOps compiler and reconciler for machine learning."""


for command in COMMANDS:
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every exit, user error or not, goes through here."""
    app = Application()
    # A one-shot command builds a large, long-lived object graph and exits: the cyclic collector would
    # only rescan it. Long-running commands (the reconcile loop) turn it back on for themselves.
    gc.disable()
    try:
        cli.main(args=argv, prog_name="mlops", obj=app, standalone_mode=False)
    except Exit as done:
        return done.code
    except MlopsError as error:  # a library error a command did not catch itself
        app.diagnostics(error.diagnostics)
        return 1
    except click.exceptions.Abort:
        app.err.print("aborted")
        return 130
    except click.ClickException as error:
        error.show()
        return 1 if error.exit_code == 2 else error.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
