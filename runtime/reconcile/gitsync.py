"""The reconciler's git source: fetch a branch into a local clone, bounded in time and size.

libgit2 (pygit2) has no timeout of its own: a remote that accepts a connection and never answers blocks
a fetch forever. So the network part (creating the clone's ``origin`` and fetching it, pruning branches
the remote deleted) runs in a child process (``python -m runtime.reconcile.gitsync DIR URL MAX_BYTES``), killed at
the deadline; what it may have left (lock files, a half-written pack) is removed. The transfer is
aborted once it has received more than the size cap. The parent then reads the fetched refs, checks
the size of the tree at the tip and hard-resets the work tree (local work, no network).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_FETCH_TIMEOUT = 60.0
"""Seconds a clone or fetch may take (``mlops reconcile --fetch-timeout``)."""
DEFAULT_MAX_REPO_BYTES = 1 << 30
"""The largest repository the reconciler takes: 1 GiB (``mlops reconcile --max-repo-size``)."""


class FetchError(Exception):
    """A clone or fetch that failed, timed out or went over the size cap (one line)."""


class FetchStopped(Exception):
    """The fetch was abandoned because the loop is stopping (SIGTERM, Ctrl-C)."""


def human_size(size: int) -> str:
    """``1 GiB``, ``100 KiB``, ``1.5 MiB``, ``512 B``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB|K|M|G|T)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
          "g": 1024 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3, "t": 1024 ** 4, "tb": 1000 ** 4, "tib": 1024 ** 4}


def parse_size(text: str) -> int:
    """``1GiB``, ``500MB``, ``100k``, ``2048`` -> bytes; ``ValueError`` otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 1GiB, 500MB, 100KiB)")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if size < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return size


def fetch(checkout: Path, url: str, *, timeout: float = DEFAULT_FETCH_TIMEOUT,
          max_bytes: int = DEFAULT_MAX_REPO_BYTES, stopping: Callable[[], bool] | None = None) -> None:
    """Fetch every branch and approval tag of ``url`` into the clone at ``checkout`` (made, without a work tree,
    when missing), pruning the branches and approval tags ``url`` no longer has; in a child process killed after
    ``timeout`` seconds, or as soon as ``stopping()`` says so (then :class:`FetchStopped`)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    child = subprocess.Popen([sys.executable, "-m", "runtime.reconcile.gitsync", str(checkout), url, str(max_bytes)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                out, err = child.communicate(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if stopping is not None and stopping():
                    _kill(child)
                    _clean_after_kill(checkout)
                    raise FetchStopped() from None
                if time.monotonic() >= deadline:
                    _kill(child)
                    _clean_after_kill(checkout)
                    raise FetchError(f"no answer within {timeout:g}s (--fetch-timeout)") from None
    except (FetchError, FetchStopped):
        raise
    except BaseException:  # a second Ctrl-C: leave no child behind
        _kill(child)
        raise
    try:
        answer = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    except ValueError:
        answer = {}
    if child.returncode != 0 or not answer.get("ok"):
        reason = answer.get("error") or (err.strip().splitlines() or [f"exit {child.returncode}"])[-1]
        raise FetchError(" ".join(str(reason).split()))


def _kill(child: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.communicate()


def _clean_after_kill(checkout: Path) -> None:
    """Remove what a killed fetch leaves that would fail the next one: lock files and temporary packs."""
    git = checkout / ".git"
    if not git.is_dir():
        return
    for path in [*git.rglob("*.lock"), *(git / "objects" / "pack").glob("pack_git2_*")]:
        with contextlib.suppress(OSError):
            path.unlink()


def objects_size(checkout: Path) -> int:
    """Bytes the clone's objects take on disk (what a clone of the repository downloads, about)."""
    total = 0
    for directory, _, names in os.walk(checkout / ".git" / "objects"):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def tree_size(repo: Any, tree: Any, limit: int) -> int:
    """Bytes of the files of ``tree`` (from object headers, without reading them); stops past ``limit``."""
    import pygit2

    total = 0
    stack = [tree]
    while stack and total <= limit:
        for entry in stack.pop():
            if entry.type == pygit2.enums.ObjectType.TREE:
                stack.append(repo[entry.id])
            elif entry.type == pygit2.enums.ObjectType.BLOB:
                total += repo.odb.read_header(entry.id)[1]
    return total


REFSPECS = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/approve/*:refs/tags/approve/*"]
"""Every branch, and the approval tags signed-approval gates count (:mod:`runtime.apply.signed_approvals`): a tag
pushed for a commit the clone already has arrives too, and a deleted one is pruned."""


GIT_TOKEN_ENV = "MLOPS_GIT_TOKEN"
GIT_USERNAME_ENV = "MLOPS_GIT_USERNAME"


def git_credentials(url: str, env: Mapping[str, str] = os.environ) -> Any:
    """How the fetch authenticates: the SSH agent for ``ssh://`` and ``git@`` URLs; for ``https://``, the token in
    ``$MLOPS_GIT_TOKEN`` (a GitHub or GitLab access token; user ``$MLOPS_GIT_USERNAME``, default
    ``x-access-token``, which GitHub expects and GitLab ignores for personal and project tokens), so the URL in
    the spec and in the clone's config holds no secret; none otherwise (a public repository)."""
    import pygit2

    if url.startswith(("ssh://", "git@")):
        return pygit2.KeypairFromAgent("git")
    token = env.get(GIT_TOKEN_ENV)
    if token and url.startswith("https://"):
        return pygit2.UserPass(env.get(GIT_USERNAME_ENV) or "x-access-token", token)
    return None


def _child(checkout: Path, url: str, max_bytes: int) -> dict[str, Any]:
    import pygit2

    class Callbacks(pygit2.RemoteCallbacks):
        def transfer_progress(self, stats: Any) -> None:
            if stats.received_bytes > max_bytes:
                raise FetchError(f"the repository is over the {human_size(max_bytes)} cap (--max-repo-size): "
                                 f"{human_size(stats.received_bytes)} received before the transfer was stopped")

    credentials = git_credentials(url)
    if (checkout / ".git").exists():
        repo = pygit2.Repository(str(checkout))
    else:
        repo = pygit2.init_repository(str(checkout), initial_head="main")
    if "origin" not in [remote.name for remote in repo.remotes]:
        repo.remotes.create("origin", url)
    elif repo.remotes["origin"].url != url:
        repo.remotes.set_url("origin", url)
    try:
        repo.remotes["origin"].fetch(REFSPECS, callbacks=Callbacks(credentials=credentials),
                                     prune=pygit2.enums.FetchPrune.PRUNE)
    except FetchError as error:
        return {"ok": False, "error": str(error)}
    except (pygit2.GitError, ValueError, OSError) as error:
        return {"ok": False, "error": str(error)}
    return {"ok": True}


if __name__ == "__main__":
    directory, remote_url, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = _child(Path(directory), remote_url, cap)
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 2)
