"""The application object: owns all terminal output and the single place the CLI exits."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console

from compiler.errors import Diagnostic, MlopsError
from runtime.cli.exit_codes import ExitCode


class Exit(Exception):
    """Raised to leave the CLI with ``code`` after output has been written."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Application:
    """Global options and output channels of one ``mlops`` invocation."""

    spec_file: str = "mlops.yaml"
    json_output: bool = False
    color: bool = True
    argv: list[str] = field(default_factory=list)
    """The command line as given (what a warm driver is handed, :mod:`runtime.daemon`)."""
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    """The environment as the command started (Ray adds variables of its own once imported)."""
    out: Console = field(init=False)
    err: Console = field(init=False)

    def __post_init__(self) -> None:
        no_color = not self.color
        # No markup, no emoji codes, no highlighting: what is printed is the text, whatever it holds
        # (``mlops.yaml:100:5:`` would print as ``mlops.yaml💯5:`` with rich's emoji codes on, and a message
        # holding ``[red]`` would lose it as markup). Styles come only from ``style=`` and Text objects.
        self.out = Console(no_color=no_color, highlight=False, soft_wrap=True, markup=False, emoji=False)
        self.err = Console(stderr=True, no_color=no_color, highlight=False, soft_wrap=True, markup=False,
                           emoji=False)

    @property
    def spec_path(self) -> Path:
        return Path(self.spec_file)

    def print(self, text: str = "", style: str | None = None) -> None:
        """Human output (suppressed in ``--json`` mode)."""
        if not self.json_output:
            self.out.print(text, style=style, markup=False)

    def write(self, text: str) -> None:
        """Raw text to stdout (rendered documents, JSON), unstyled."""
        sys.stdout.write(text)
        sys.stdout.flush()

    def emit_json(self, value: Any) -> None:
        self.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")

    def diagnostics(self, diagnostics: list[Diagnostic]) -> None:
        """Positioned problems, one line each, on stderr."""
        for diagnostic in diagnostics:
            style = "red" if diagnostic.severity == "error" else "yellow"
            self.err.print(diagnostic.render(), style=style, markup=False)

    def fail(self, error: MlopsError) -> NoReturn:
        """Report a user error and exit ``FAILED`` (JSON on stdout too in ``--json`` mode)."""
        if self.json_output:
            self.emit_json({"ok": False, "diagnostics": [d.to_json() for d in error.diagnostics]})
        self.diagnostics(error.diagnostics)
        raise Exit(ExitCode.FAILED)

    def exit(self, code: int = ExitCode.OK) -> NoReturn:
        raise Exit(code)


pass_app = click.make_pass_decorator(Application, ensure=True)
