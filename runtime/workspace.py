"""Where a project's state and artifacts live, resolved from its spec's ``storage`` section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compiler.resolve import Project
from runtime.errors import StorageError


@dataclass(frozen=True)
class Workspace:
    """The resolved locations of one project's state database and artifact store."""

    project: Project
    state_path: Path
    artifact_root: str
    """A local directory (absolute) or an fsspec URL (``s3://...``, ``gs://...``)."""

    @classmethod
    def of(cls, project: Project) -> Workspace:
        storage = project.spec.storage
        base = project.spec_path.parent
        if "://" in storage.state:
            raise StorageError.one(f"storage.state {storage.state!r}: only a SQLite file is supported as state so far",
                                   project.position("storage", "state"), "storage")
        state = Path(storage.state)
        artifacts = storage.artifacts
        if "://" not in artifacts:
            artifacts = str((base / artifacts).resolve())
        return cls(project, (base / state).resolve() if not state.is_absolute() else state, artifacts)
