"""The state lock: one apply (or other writing operation) per state at a time.

The lock is ``fcntl.flock`` on ``<state file>.lock``. The kernel releases a flock when its holder
exits for any reason, ``kill -9`` included, so a dead apply never blocks the next one. The holder
writes who it is (:class:`LockInfo`, JSON) into the lock file so a blocked caller can say who holds
it, Terraform-style. Stale information left by a killed holder is harmless (the next holder
overwrites it) and ``force_unlock`` clears it; a lock held by a *live* process cannot be broken
from outside — stop that process instead.

The lock file is never deleted (deleting it while held would let a second process lock a new
file). Children forked while the lock is held share it until they exit; processes started with
``exec`` (``subprocess``, Ray's workers) do not inherit it (the descriptor is close-on-exec).
On NFS, Linux maps flock to POSIX byte-range locks, which work when the server supports locking.

A PostgreSQL state (``postgresql://...``) is locked with a PostgreSQL advisory lock instead, held on a
connection of its own and freed by the server when that connection ends (:mod:`runtime.state.pglock`);
the holder's information is a row in the database. Every function here takes either kind of state.

>>> import tempfile, pathlib
>>> state = pathlib.Path(tempfile.mkdtemp()) / "state.db"
>>> with acquire(state, "apply", "me@host") as lock:
...     read_info(state).operation
'apply'
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from compiler.errors import Diagnostic, MlopsError
from runtime.state.pgurl import is_postgresql, shown
from runtime.state.records import LockInfo

POLL_S = 0.1


class LockError(MlopsError):
    """A lock operation was refused (wrong ID, lock still held by a live process, nothing to unlock)."""


class LockHeld(LockError):
    """The state is locked by another operation; ``info`` says by whom (``None`` if it could not be read)."""

    def __init__(self, info: LockInfo | None, lock_path: Path | str) -> None:
        self.info = info
        self.lock_path = lock_path
        super().__init__([Diagnostic(_held_message(info, lock_path))])

    def __reduce__(self) -> tuple[type[LockHeld], tuple[LockInfo | None, Path | str]]:
        return LockHeld, (self.info, self.lock_path)


def lock_path(state_path: Path | str) -> Path:
    """``<state file>.lock``."""
    return Path(f"{state_path}.lock")


def _key(state_path: Path | str) -> str:
    """What names a state's lock in this process: its lock file, or its URL (without a password)."""
    return shown(str(state_path)) if is_postgresql(state_path) else str(lock_path(state_path).resolve())


def default_who() -> str:
    """``user@host``, the default holder name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


class StateLock:
    """A held state lock; release it with :meth:`release` or by leaving the ``with`` block."""

    def __init__(self, path: Path | str, fd: int, info: LockInfo, conn: Any = None) -> None:
        self.path = path
        """The lock file, or the PostgreSQL URL (without a password)."""
        self.info = info
        self._fd = fd
        self._conn = conn
        """The connection holding a PostgreSQL state's advisory lock."""

    @property
    def held(self) -> bool:
        return self._fd >= 0 or self._conn is not None

    def release(self) -> None:
        """Clear the holder information and unlock (idempotent)."""
        if self._conn is not None:
            from runtime.state import pglock

            conn, self._conn = self._conn, None
            pglock.release(conn, self.info.id)
            return
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def acquire(state_path: Path | str, operation: str, who: str | None = None, timeout: float = 0.0) -> StateLock:
    """Lock the state for ``operation``; wait up to ``timeout`` seconds (0: fail at once) or raise :class:`LockHeld`."""
    if is_postgresql(state_path):
        return _acquire_postgresql(str(state_path), operation, who, timeout)
    path = lock_path(state_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + max(timeout, 0.0)
    try:
        while not _try_flock(fd):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockHeld(read_info(state_path), path)
            time.sleep(min(POLL_S, remaining))
    except BaseException:
        os.close(fd)
        raise
    info = LockInfo(id=str(uuid.uuid4()), operation=operation, who=who or default_who(), pid=os.getpid(),
                    host=socket.gethostname(), since=time.time())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(info)).encode(), 0)
    except BaseException as exc:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk: say which file it refused
            exc.filename = str(path)
        raise
    return StateLock(path, fd, info)


def _acquire_postgresql(url: str, operation: str, who: str | None, timeout: float) -> StateLock:
    from runtime.state import pglock

    deadline = time.monotonic() + max(timeout, 0.0)
    while (conn := pglock.try_lock(url)) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockHeld(pglock.read_info(url), shown(url))
        time.sleep(min(POLL_S, remaining))
    info = LockInfo(id=str(uuid.uuid4()), operation=operation, who=who or default_who(), pid=os.getpid(),
                    host=socket.gethostname(), since=time.time())
    try:
        pglock.write_info(conn, url, info)
    except BaseException:
        pglock.release(conn, info.id)
        raise
    return StateLock(shown(url), -1, info, conn)


_HOLDS = threading.local()
"""Per thread: the locks it holds through :func:`exclusive`, by lock file (``holds``)."""


def _held() -> dict[str, StateLock]:
    holds: dict[str, StateLock] | None = getattr(_HOLDS, "holds", None)
    if holds is None:
        holds = _HOLDS.holds = {}
    return holds


@contextmanager
def exclusive(state_path: Path | str, operation: str, who: str | None = None,
              timeout: float = 0.0) -> Iterator[StateLock]:
    """Hold the state lock for one mutating verb (apply, rollback, approve, monitors that act, a reconcile tick).

    The lock policy: every verb that writes takes the lock here, in the library, never in the CLI. A verb
    run inside another's hold in the same thread (a monitor's rollback, the reconciler's apply) reuses that
    hold instead of refusing itself; any other holder makes it wait ``timeout`` seconds or raise
    :class:`LockHeld`.
    """
    path = _key(state_path)
    holds = _held()
    held = holds.get(path)
    if held is not None and held.held:
        yield held
        return
    with acquire(state_path, operation, who, timeout) as taken:
        holds[path] = taken
        try:
            yield taken
        finally:
            holds.pop(path, None)


def read_info(state_path: Path | str) -> LockInfo | None:
    """The holder information in the lock file (possibly stale: see :func:`holder`); ``None`` if there is none."""
    if is_postgresql(state_path):
        from runtime.state import pglock

        return pglock.read_info(str(state_path))
    path = lock_path(state_path)
    for _ in range(20):  # the holder may be between truncating the file and writing its information
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if text:
            try:
                data = json.loads(text)
                return LockInfo(id=str(data["id"]), operation=str(data["operation"]), who=str(data["who"]),
                                pid=int(data["pid"]), host=str(data["host"]), since=float(data["since"]))
            except (ValueError, KeyError, TypeError):
                pass
        time.sleep(0.01)
    return None


def holder(state_path: Path | str) -> LockInfo | None:
    """Who holds the lock right now, or ``None`` when it is free (stale information is ignored)."""
    if is_postgresql(state_path):
        from runtime.state import pglock

        return pglock.read_info(str(state_path)) if pglock.is_held(str(state_path)) else None
    path = lock_path(state_path)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if _try_flock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    return read_info(state_path)


def force_unlock(state_path: Path | str, lock_id: str) -> LockInfo:
    """Clear the lock information ``lock_id`` left by a holder that is gone; return what was cleared.

    Refuses when ``lock_id`` is not the lock's ID, and when the lock is still held by a live process
    (a flock cannot be taken from its holder: stop that process and the kernel releases the lock). On
    PostgreSQL likewise: the advisory lock is its holder's connection's; ending it frees the lock.
    """
    postgresql = is_postgresql(state_path)
    path: Path | str = shown(str(state_path)) if postgresql else lock_path(state_path)
    info = read_info(state_path)
    if info is None:
        raise LockError.one(f"the state is not locked: {path} holds no lock information")
    if info.id != lock_id:
        raise LockError.one(f"lock ID {lock_id!r} does not match the lock's ID {info.id!r}; nothing was unlocked")
    if postgresql:
        from runtime.state import pglock

        if not pglock.clear(str(state_path), lock_id):
            raise _live(info)
        return info
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if not _try_flock(fd):
            raise _live(info)
        try:
            current = read_info(state_path)
            if current is not None and current.id == lock_id:
                os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return info


def _live(info: LockInfo) -> LockError:
    return LockError.one(  # type: ignore[return-value]
        f"lock {info.id} is held by a live process (PID {info.pid} on {info.host}, {info.operation} by "
        f"{info.who} since {_iso(info.since)}); a held lock cannot be broken from outside: stop that "
        "process and the lock is released")


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _iso(since: float) -> str:
    return datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds")


def _held_message(info: LockInfo | None, path: Path | str) -> str:
    lines = ["Error acquiring the state lock: another operation holds it", "Lock Info:"]
    if info is None:
        lines.append("  (the holder wrote no lock information yet)")
    else:
        lines += [f"  ID:        {info.id}", f"  Path:      {path}", f"  Operation: {info.operation}",
                  f"  Who:       {info.who}", f"  PID:       {info.pid}", f"  Host:      {info.host}",
                  f"  Created:   {_iso(info.since)}"]
    lines.append("mlops locks the state so that one operation at a time changes it. Wait for that one to "
                 "finish, or retry with --lock-timeout to wait for it. A lock is released when its holder exits, "
                 "even when it is killed.")
    return "\n".join(lines)


def held_here(state_path: Path | str) -> bool:
    """Whether this thread holds the state's lock through :func:`exclusive`."""
    held = _held().get(_key(state_path))
    return held is not None and held.held
