"""Steps several commands share: load the project, check its policies."""

from __future__ import annotations

from pathlib import Path

from compiler import PolicyReport, Project, check_policies, load_project
from compiler.errors import MlopsError
from runtime.cli.app import Application


def project_or_fail(app: Application) -> Project:
    """Load, parse and resolve the spec named by ``-f``; a user error exits 1 with its diagnostics."""
    try:
        return load_project(app.spec_path, app.spec_file)
    except MlopsError as error:
        app.fail(error)


def policies_or_fail(app: Application, project: Project, policy_dirs: tuple[str, ...] = ()) -> PolicyReport:
    try:
        return check_policies(project, [Path(d) for d in policy_dirs])
    except MlopsError as error:
        app.fail(error)
