"""The desired state's source: a spec on disk, or a branch of a git repository synced into a clone.

A sync fetches the branch (bounded in time and size, :mod:`runtime.reconcile.gitsync`) and hard-resets a
detached work tree to ``origin/BRANCH``; a branch deleted on the remote is an error, a force push is
followed and reported (:attr:`Synced.rewritten`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import ReconcileError
from runtime.reconcile import gitsync
from runtime.reconcile.gitsync import DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_REPO_BYTES

logger = logging.getLogger("mlops.reconcile")


@dataclass(frozen=True)
class Source:
    """The spec on disk, or the spec at ``spec`` inside ``branch`` of the git repository ``repo``."""

    spec: Path
    repo: str | None = None
    branch: str = "main"
    checkout: Path | None = None
    """Where the repository is cloned; default ``.mlops/checkouts/NAME-BRANCH-HASH`` under the current directory."""
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    """Seconds a clone or fetch may take; then the tick fails (and the loop backs off)."""
    max_repo_bytes: int = DEFAULT_MAX_REPO_BYTES
    """A repository larger than this (its objects, or the files at the tip) is refused."""

    def checkout_dir(self) -> Path:
        if self.checkout is not None:
            return self.checkout.resolve()
        url = (self.repo or "").rstrip("/")
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", url.rsplit("/", 1)[-1].removesuffix(".git"))[:40] or "repo"
        digest = hashlib.sha256(f"{url}#{self.branch}".encode()).hexdigest()[:8]
        branch = re.sub(r"[^A-Za-z0-9._-]+", "-", self.branch)[:40]
        return (Path(".mlops") / "checkouts" / f"{name}-{branch}-{digest}").resolve()

    def spec_path(self) -> Path:
        return self.checkout_dir() / self.spec if self.repo else self.spec


@dataclass(frozen=True)
class Synced:
    """The commit a sync checked out, and the one checked out before (``None`` the first time)."""

    commit: str
    previous: str | None = None
    rewritten: bool = False
    """History was rewritten: ``commit`` does not descend from ``previous`` (a force push)."""


def sync_checkout(url: str, branch: str, checkout: Path, *, timeout: float = DEFAULT_FETCH_TIMEOUT,
                  max_bytes: int = DEFAULT_MAX_REPO_BYTES) -> str:
    """Fetch ``branch`` of ``url`` into the clone at ``checkout`` and hard-reset its work tree; the commit id."""
    return sync_branch(url, branch, checkout, timeout=timeout, max_bytes=max_bytes).commit


def sync_branch(url: str, branch: str, checkout: Path, *, timeout: float = DEFAULT_FETCH_TIMEOUT,
                max_bytes: int = DEFAULT_MAX_REPO_BYTES, stopping: Callable[[], bool] | None = None) -> Synced:
    """Fetch ``url`` into the clone at ``checkout`` (made the first time), pruning the branches it deleted, in
    at most ``timeout`` seconds; refuse a repository over ``max_bytes``; then hard-reset the clone's detached
    work tree to ``origin/BRANCH``. Untracked files (the state) are kept. ``stopping()`` true abandons the
    fetch (:class:`runtime.reconcile.gitsync.FetchStopped`)."""
    import pygit2

    repo = _open_clone(checkout)
    previous = None
    if repo is not None and not repo.head_is_unborn:
        previous = str(repo.head.target)
    fresh = repo is None
    if fresh:
        checkout.parent.mkdir(parents=True, exist_ok=True)
    try:
        gitsync.fetch(checkout, url, timeout=timeout, max_bytes=max_bytes, stopping=stopping)
    except gitsync.FetchStopped:
        if fresh:
            shutil.rmtree(checkout, ignore_errors=True)
        raise
    except gitsync.FetchError as error:
        if fresh:
            shutil.rmtree(checkout, ignore_errors=True)
        raise ReconcileError.one(f"cannot {'clone' if fresh else 'fetch'} {url}: {error}") from None
    repo = pygit2.Repository(str(checkout))
    try:
        reference = repo.references[f"refs/remotes/origin/{branch}"]
    except KeyError:
        if previous is None:
            raise ReconcileError.one(f"--branch {branch}: {url} has no such branch") from None
        raise ReconcileError.one(f"branch {branch} no longer exists on origin ({url}); nothing is undeployed, "
                             f"the last synced commit {previous[:12]} stays") from None
    commit = repo[reference.target].peel(pygit2.Commit)
    stored = gitsync.objects_size(checkout)
    files = gitsync.tree_size(repo, commit.tree, max_bytes) if stored <= max_bytes else 0
    if max(stored, files) > max_bytes:
        what = f"its objects take {gitsync.human_size(stored)}" if stored > max_bytes else \
            f"the files of {str(commit.id)[:12]} take over {gitsync.human_size(files)}"
        raise ReconcileError.one(f"{url}: the repository is over the {gitsync.human_size(max_bytes)} cap "
                             f"(--max-repo-size): {what}")
    rewritten = previous is not None and previous != str(commit.id) and \
        not (pygit2.Oid(hex=previous) in repo and repo.descendant_of(commit.id, pygit2.Oid(hex=previous)))
    repo.set_head(commit.id)
    repo.reset(commit.id, pygit2.enums.ResetMode.HARD)
    return Synced(str(commit.id), previous, rewritten)


def _open_clone(checkout: Path) -> Any:
    """The clone at ``checkout``; ``None`` when there is none (a broken one is removed)."""
    import pygit2

    if not (checkout / ".git").exists():
        if checkout.exists() and any(checkout.iterdir()):
            raise ReconcileError.one(f"{checkout} exists and is not a clone; remove it or pick another --checkout")
        return None
    try:
        repo = pygit2.Repository(str(checkout))
        repo.remotes["origin"]  # noqa: B018 - raises KeyError on a clone without its remote
        return repo
    except (pygit2.GitError, KeyError):
        logger.warning("%s is not a usable clone; cloning again", checkout)
        shutil.rmtree(checkout, ignore_errors=True)
        return None


# --- one tick -----------------------------------------------------------------------------------------
