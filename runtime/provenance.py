"""Where a run came from: the git commit of the repository and whether its work tree was dirty."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pygit2


@dataclass(frozen=True)
class Provenance:
    commit: str | None
    dirty: bool
    actor: str
    host: str


def git_state(root: Path) -> tuple[str | None, bool]:
    """(HEAD commit id, dirty?) of the repository at ``root``; (None, False) outside git.

    Dirty means a tracked file is changed (staged or not) or a file git does not know and does not
    ignore is there: a run from such a tree cannot be reproduced from the commit alone. Ignored files
    (``.gitignore``: build outputs, ``.mlops/``) do not count.
    """
    import pygit2

    try:
        repo = pygit2.Repository(str(root))
    except (pygit2.GitError, KeyError):
        return None, False
    try:
        commit = str(repo.head.target)
    except pygit2.GitError:  # no commit yet
        commit = None
    return commit, bool(_changes(repo))


def changed_paths(root: Path) -> list[str]:
    """The paths that make the work tree at ``root`` dirty (changed, or untracked and not ignored), sorted."""
    import pygit2

    try:
        repo = pygit2.Repository(str(root))
    except (pygit2.GitError, KeyError):
        return []
    return _changes(repo)


def _changes(repo: pygit2.Repository) -> list[str]:
    import pygit2

    # "normal": an untracked folder is one entry, not walked file by file; ignored files are not listed
    status = repo.status(untracked_files="normal", ignored=False)
    return sorted(path for path, flags in status.items()
                  if flags not in (pygit2.enums.FileStatus.CURRENT, pygit2.enums.FileStatus.IGNORED))


def actor(root: Path) -> str:
    """Who is acting: ``$MLOPS_ACTOR``, else git's user.email, else the login name."""
    explicit = os.environ.get("MLOPS_ACTOR")
    if explicit:
        return explicit
    try:
        import pygit2

        config = pygit2.Repository(str(root)).config
        return str(config["user.email"])
    except Exception:  # noqa: BLE001 - no repo, no config entry: fall back to the login name
        try:
            return getpass.getuser()
        except Exception:  # noqa: BLE001
            return "unknown"


def provenance(root: Path) -> Provenance:
    commit, dirty = git_state(root)
    return Provenance(commit, dirty, actor(root), socket.gethostname())
