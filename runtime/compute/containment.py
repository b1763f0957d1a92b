"""What a task's user code may leave behind: nothing running, nothing written into the repository.

Runs inside a Ray worker around the user's callable (:func:`contained`):

- **processes**: the worker becomes a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so a daemon the
  user's code forks, even one that double-forks and calls ``setsid``, stays a descendant of the worker;
  when the task ends every process it started is killed and reaped;
- **the repository**: when the spec's repository is a git work tree, its status before and after the call
  is compared; a file the task created or changed there (other than ``__pycache__`` and ``.mlops``) is a
  violation that fails the node (a task writes only into ``ctx.output_dir``);
- **mlops' own files**: the artifacts the task reads in place from a local store (its inputs: objects and
  trees, immutable once written) and the files at the top of the repository's ``.mlops/`` folder other than
  the state database and its companions, which mlops writes while tasks run (they are guarded by the audit
  chain and the state's anchor instead). A change, a removal or a new file there is a violation that fails
  the node. The rest of the store is not scanned (its cost grows with the store); an object changed there is
  refused when it is next read, as its content no longer matches its hash (:mod:`runtime.artifacts.store`);
- **temporary files**: ``TMPDIR`` (and :mod:`tempfile`'s default) points into a private folder for the
  call, removed afterwards; the folder of a worker killed in its task is removed by the first task of a
  worker started after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from runtime import processes

PR_SET_CHILD_SUBREAPER = 36
IGNORED_PARTS = ("__pycache__", ".mlops")
WORKSPACE = ".mlops"
WRITTEN_WHILE_TASKS_RUN = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal", "state.db.audit-head",
                           "state.db.lock", "cluster.lock")
"""Files at the top of ``.mlops/`` that mlops itself writes while tasks run (not a task's violation)."""
_SUBREAPER = False
Stamp = tuple[int, int, int]
"""(inode, size, mtime_ns) of a file."""


@dataclass
class Watch:
    """What :func:`contained` found when the call ended."""

    repository_writes: list[str] = field(default_factory=list)
    """Repository-relative paths the call created or changed."""
    killed: list[int] = field(default_factory=list)
    """Processes the call started that were still running when it ended."""
    mlops_writes: list[str] = field(default_factory=list)
    """mlops' own files (artifact objects, verification records, ``.mlops/`` files) the call changed, removed
    or created, each as ``changed PATH``, ``removed PATH`` or ``created PATH``."""


def _become_subreaper() -> None:
    global _SUBREAPER
    if _SUBREAPER or not os.path.isdir("/proc"):
        return
    with contextlib.suppress(Exception):  # not Linux, or not allowed: orphans go to init as before
        libc = ctypes.CDLL(None, use_errno=True)
        _SUBREAPER = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _descendants(root: int) -> set[int]:
    """Live processes below ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _status(repo_root: str) -> dict[str, int] | None:
    """Path -> git status flags of the work tree's changed and untracked (not ignored) files."""
    try:
        import pygit2

        repo = pygit2.Repository(repo_root)
        if repo.workdir is None:
            return None
        return {path: int(flags) for path, flags in repo.status(untracked_files="all").items()
                if not any(part in IGNORED_PARTS for part in path.split("/"))
                and flags != pygit2.enums.FileStatus.IGNORED}
    except Exception:  # noqa: BLE001 - not a git work tree: nothing to compare
        return None


def _stamps(folder: Path, recursive: bool) -> dict[str, Stamp]:
    """Path -> (inode, size, mtime_ns) of the files in ``folder`` (below it too when ``recursive``)."""
    found: dict[str, Stamp] = {}
    todo = [str(folder)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if recursive:
                        todo.append(entry.path)
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            found[entry.path] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def guarded_files(repo_root: str, inputs: Iterable[Path]) -> dict[str, Stamp]:
    """What a task must leave as it is: the artifacts it reads in place and the top of ``.mlops/``."""
    files: dict[str, Stamp] = {}
    for path in inputs:
        if path.is_dir():
            files.update(_stamps(path, recursive=True))
        else:
            with contextlib.suppress(OSError):
                info = path.stat()
                files[str(path)] = (info.st_ino, info.st_size, info.st_mtime_ns)
    workspace = Path(repo_root) / WORKSPACE
    files.update((path, stamp) for path, stamp in _stamps(workspace, recursive=False).items()
                 if os.path.basename(path) not in WRITTEN_WHILE_TASKS_RUN)
    return files


def _guarded_changes(before: dict[str, Stamp], after: dict[str, Stamp], repo_root: str) -> list[str]:
    """``changed``/``removed`` for each guarded file that is not as it was; ``created`` for a new file at the top
    of ``.mlops/``."""
    workspace = os.path.join(repo_root, WORKSPACE)

    def shown(path: str) -> str:
        return os.path.relpath(path, repo_root) if path.startswith(workspace + os.sep) else path

    changes = [f"{'removed' if path not in after else 'changed'} {shown(path)}"
               for path, stamp in sorted(before.items()) if after.get(path) != stamp]
    changes += [f"created {shown(path)}" for path in sorted(after)
                if path not in before and os.path.dirname(path) == workspace]
    return changes


def _kill(pids: set[int]) -> list[int]:
    killed = []
    for pid in sorted(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    for pid in killed:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
    return killed


PRIVATE_TMP_PREFIX = "mlops-tmp-"
"""A task's private temp folder: ``mlops-tmp-<pid of its worker>-<random>``."""


@contextlib.contextmanager
def contained(repo_root: str, inputs: Iterable[Path] = ()) -> Iterator[Watch]:
    """Run the block as a task's user code; the :class:`Watch` is filled in when it ends.

    ``inputs`` are the artifacts the task reads in place (files or trees of a local store); they are guarded.
    """
    inputs = list(inputs)
    _become_subreaper()
    me = os.getpid()
    before_processes = _descendants(me) if os.path.isdir("/proc") else set()
    before_tree = _status(repo_root)
    before_guarded = guarded_files(repo_root, inputs)
    processes.sweep_orphaned_folders_once(Path(tempfile.gettempdir()), PRIVATE_TMP_PREFIX)
    private = tempfile.mkdtemp(prefix=processes.folder_prefix(PRIVATE_TMP_PREFIX))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = private, private
    watch = Watch()
    try:
        yield watch
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        shutil.rmtree(private, ignore_errors=True)
        if os.path.isdir("/proc"):
            watch.killed = _kill(_descendants(me) - before_processes)
        if before_tree is not None:
            after_tree = _status(repo_root) or {}
            watch.repository_writes = sorted(path for path, flags in after_tree.items()
                                             if before_tree.get(path) != flags)
        watch.mlops_writes = _guarded_changes(before_guarded, guarded_files(repo_root, inputs), repo_root)
