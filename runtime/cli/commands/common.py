"""Steps several commands share: load the project, check its policies, read a duration option."""

from __future__ import annotations

from pathlib import Path

from compiler import PolicyReport, Project, check_policies, load_project
from compiler.errors import MlopsError
from compiler.spec import duration_seconds
from runtime.cli.app import Application


def seconds_or_fail(app: Application, option: str, text: str) -> float:
    """A duration option (``30s``, ``5m``) in seconds, or a one-line error naming the option."""
    try:
        return float(duration_seconds(text))
    except ValueError as error:
        app.fail(MlopsError.one(f"{option}: {error}"))


def project_or_fail(app: Application) -> Project:
    """Load, parse and resolve the spec named by ``-f``; a user error exits 1 with its diagnostics."""
    try:
        return load_project(app.spec_path, app.spec_file)
    except MlopsError as error:
        app.fail(error)


def policies_or_fail(app: Application, project: Project, policy_dirs: tuple[str, ...] = ()) -> PolicyReport:
    """The policy results, the views carrying what the project's state knows when it has one
    (:func:`with_state_refs`)."""
    try:
        with_state_refs(project)
        return check_policies(project, [Path(d) for d in policy_dirs])
    except MlopsError as error:
        app.fail(error)


def with_state_refs(project: Project) -> None:
    """Add the state's ``refs`` to the models' policy views (``refs.expired_data``, ``refs.erased_data``:
    :func:`runtime.lifecycle.holdings.add_state_refs`) when the project has a state: a SQLite file that exists
    (none is created), or a PostgreSQL database that answers. Without one the views are the spec's alone."""
    from runtime.workspace import Workspace

    try:
        workspace = Workspace.of(project)
    except MlopsError:  # a storage setting no state can be opened from: said by the commands that need one
        return
    if workspace.local_state and not workspace.state_path.is_file():
        return
    from runtime.lifecycle.holdings import add_state_refs
    from runtime.state.store import StateStore

    try:
        store = StateStore.open(workspace.state)
    except MlopsError:
        if workspace.local_state:
            raise
        return  # a shared database this machine cannot reach (an offline CI check): the spec's views
    with store:
        add_state_refs(project, store)
