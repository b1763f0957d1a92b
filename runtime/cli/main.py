"""``mlops``: the command tree. Each command lives in its own module under ``runtime/cli/``."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import sqlite3
import sys

import click

from compiler import load_project
from compiler.errors import MlopsError
from runtime.cli.app import Application, Exit
from runtime.cli.commands import COMMANDS
from runtime.cli.exit_codes import ExitCode
from runtime.cli.options import global_options
from runtime.state.faults import os_line, shown, sqlite_line


class LazyGroup(click.Group):
    """A group whose commands are imported when used (see :data:`runtime.cli.commands.COMMANDS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.version_option("0.1.0", prog_name="mlops")
def cli() -> None:
    """mlops: a declarative GitOps compiler and reconciler for machine learning."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every exit, user error or not, goes through here."""
    app = Application(argv=list(sys.argv[1:] if argv is None else argv))
    # A one-shot command builds a large, long-lived object graph and exits: the cyclic collector would
    # only rescan it. Long-running commands (the reconcile loop) turn it back on for themselves.
    gc.disable()
    try:
        cli.main(args=argv, prog_name="mlops", obj=app, standalone_mode=False)
    except Exit as done:
        return done.code
    except MlopsError as error:  # a library error a command did not catch itself
        app.diagnostics(error.diagnostics)
        return ExitCode.FAILED
    except click.exceptions.Abort:
        app.err.print("aborted")
        return ExitCode.INTERRUPTED
    except click.ClickException as error:
        error.show()
        return ExitCode.FAILED if error.exit_code == 2 else error.exit_code  # click's usage errors
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except OSError as error:  # a fault of the machine no command translated: one line naming the file
        app.err.print(f"error: {os_line(error)}", style="red")
        return ExitCode.FAILED
    except sqlite3.Error as error:
        app.err.print(f"error: {sqlite_line(_state_path(app), error)}", style="red")
        return ExitCode.FAILED
    except json.JSONDecodeError as error:  # a corrupted state record read outside the store's own methods
        app.err.print(f"error: {shown(_state_path(app))}: a record is not valid JSON ({error}); the state is"
                      " corrupted: restore it from a backup", style="red")
        return ExitCode.FAILED
    return ExitCode.OK


def _state_path(app: Application) -> str:
    """The state database of the spec ``-f`` names (the only SQLite file mlops opens), for an error line."""
    try:
        from runtime.workspace import Workspace

        return str(Workspace.of(load_project(app.spec_path, app.spec_file)).state_path)
    except Exception:  # noqa: BLE001 - the error line must come out whatever the spec holds
        return str(app.spec_path.parent / ".mlops" / "state.db")


def entry() -> None:
    """The console script: run, then leave without tearing down the object graph one object at a time.

    Interpreter shutdown runs a full garbage collection over everything a large spec built (measured:
    0.2-0.5 s at 5,000 resources) and, once Ray was joined, hooks that took 0.8 s to leave a cluster
    that ``ray.shutdown()`` leaves in 0.03 s. So the command leaves Ray itself (stopping an embedded
    Ray it started), flushes its output and exits straight away.
    """
    code = main()
    if "ray" in sys.modules:
        from runtime.compute import ray_backend

        ray_backend.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry()
