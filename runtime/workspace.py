"""Where a project's state and artifacts live, resolved from its spec's ``storage`` section."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from compiler.resolve import Project
from runtime.errors import StorageError
from runtime.state.pgurl import is_postgresql, shown

STATE_URL_ENV = "MLOPS_STATE_URL"
"""Overrides ``storage.state`` when set and not empty: a CI runner or the reconciler's pod takes the shared state's
URL from a secret, so that a spec can keep a local default. A relative path is relative to the spec, as in the spec."""


def state_url(project: Project) -> str:
    """``$MLOPS_STATE_URL`` when set, else the spec's ``storage.state``."""
    return os.environ.get(STATE_URL_ENV) or project.spec.storage.state


@dataclass(frozen=True)
class Workspace:
    """The resolved locations of one project's state database and artifact store."""

    project: Project
    state_path: Path
    """The SQLite state file; for a PostgreSQL state, ``.mlops/state.db`` next to the spec, a local path whose
    folder holds what stays on this machine (the local cluster's information)."""
    artifact_root: str
    """A local directory (absolute) or an fsspec URL (``s3://...``, ``gs://...``)."""
    state: str = ""
    """Where the state lives, as :meth:`runtime.state.StateStore.open` and :mod:`runtime.state.lock` take it:
    the SQLite file's path, or the ``postgresql://`` URL (its password comes from the environment)."""

    def __post_init__(self) -> None:
        if not self.state:
            object.__setattr__(self, "state", str(self.state_path))

    @classmethod
    def of(cls, project: Project) -> Workspace:
        storage = project.spec.storage
        state_setting = state_url(project)
        base = project.spec_path.parent
        url = None
        if is_postgresql(state_setting):
            url = state_setting
        elif "://" in state_setting:
            source = f"${STATE_URL_ENV}" if os.environ.get(STATE_URL_ENV) else "storage.state"
            raise StorageError.one(f"{source} {shown(state_setting)!r}: a state is a SQLite file or a "
                                   "postgresql://user@host:5432/db URL", project.position("storage", "state"),
                                   "storage")
        state = Path(".mlops/state.db" if url else state_setting)
        artifacts = storage.artifacts
        if "://" not in artifacts:
            artifacts = str((base / artifacts).resolve())
        path = (base / state).resolve() if not state.is_absolute() else state
        return cls(project, path, artifacts, url or str(path))

    @property
    def local_state(self) -> bool:
        """Whether the state is a SQLite file on this machine (not a shared PostgreSQL database)."""
        return not is_postgresql(self.state)
