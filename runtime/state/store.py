"""The state store: one SQLite file (or one PostgreSQL database) holding what the runtime did (results, runs,
versions, gates, ...).

Settings, chosen for a single-host embedded store that must survive ``kill -9`` of an apply:

* WAL journal: readers (``plan``, ``status``) never block the writer (``apply``) and vice versa.
* ``synchronous=NORMAL``: in WAL mode every committed transaction survives a crash of the process
  (kill -9, OOM); only an OS crash or power loss may drop the last few commits, never corrupt the
  file. Losing a commit there only means a node runs again (artifacts are content-addressed, so a
  re-run converges). ``FULL`` would fsync on every commit, a few ms each, which a 200-node apply
  pays hundreds of times. Records that must be durable at once (the audit trail) call :meth:`sync`.
* ``foreign_keys=ON``, ``busy_timeout``; a ``database is locked`` error that outlives the busy
  timeout is retried with backoff in :func:`_retry`, the one place that does it.

Every method is atomic; :meth:`StateStore.transaction` groups several into one transaction::

    with store.transaction():
        version = store.next_model_version("churn")
        store.add_model_version(ModelVersion("churn", version, fp, uri))
        store.record_result(result)

A store is safe to share between threads of one process (calls are serialised); open one per process.

``StateStore.open("postgresql://user@host:5432/db")`` opens the state in PostgreSQL instead (password from
``PGPASSWORD`` or ``~/.pgpass``): the same tables and SQL (:mod:`runtime.state.pg`), write transactions
serialised by a transaction-level advisory lock as ``BEGIN IMMEDIATE`` serialises them in SQLite, every
commit durable (the server's ``synchronous_commit``), the audit head anchored in the database
(:mod:`runtime.state.anchor`).
"""

from __future__ import annotations

import functools
import inspect
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from runtime.state import anchor
from runtime.state.access import SQLITE, Dialect, StateError
from runtime.state.faults import os_line, sqlite_line
from runtime.state.hashes import HashCache
from runtime.state.migrations import MIGRATIONS, SchemaTooNew, migrate, schema_version
from runtime.state.models import DECIDE, ModelRecords
from runtime.state.pgurl import is_postgresql, shown
from runtime.state.removals import RemovalRecords
from runtime.state.rows import CorruptRecord
from runtime.state.runs import RunRecords
from runtime.state.serving import ServingRecords

__all__ = ["BUSY_TIMEOUT_S", "DECIDE", "CorruptRecord", "StateError", "StateStore"]

T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
RETRY_ATTEMPTS = 8
RETRY_FIRST_DELAY_S = 0.05
RETRY_MAX_DELAY_S = 2.0


DECISIONS_CHAINED_SINCE = 4
"""The schema version from which every gate decision carries its ``decide`` record."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    message = str(exc).lower()
    return "database is locked" in message or "database is busy" in message or "database table is locked" in message


def _retry(operation: Callable[[], T]) -> T:
    """Run ``operation``; on ``database is locked`` retry with exponential backoff and jitter.

    SQLite's busy handler already waits ``busy_timeout`` inside each attempt; this outer loop covers
    the cases it does not (a lock held longer, a busy error returned without waiting).
    """
    attempts, delay = RETRY_ATTEMPTS, RETRY_FIRST_DELAY_S
    for attempt in range(attempts):
        try:
            return operation()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if attempt == attempts - 1:
                raise StateError.of(f"the state database stayed locked by another process: {exc}") from exc
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
    raise AssertionError("unreachable")


def _identity(conn: Any) -> tuple[str, int, int]:
    row = conn.execute("SELECT m.lineage, m.serial, h.count FROM state_meta m, audit_head h"
                       " WHERE m.id = 1 AND h.id = 1").fetchone()
    if row is None:
        raise sqlite3.DatabaseError("its state_meta or audit_head row is missing")
    return str(row[0]), int(row[1]), int(row[2])


def _translated(path: Path | str, exc: BaseException, dialect: Dialect = SQLITE) -> StateError | None:
    """The one-line error naming the database for a fault of the database or a damaged record, else ``None``.

    ``path`` is the SQLite file, or the PostgreSQL URL (shown without its password).
    """
    if dialect is not SQLITE:
        if isinstance(exc, CorruptRecord):
            return StateError.of(f"{shown(str(path))}: {exc}; the state is corrupted: restore it from a backup")
        if isinstance(exc, dialect.database_errors) and not isinstance(exc, dialect.integrity_errors):
            from runtime.state import pg

            return StateError.of(pg.line(str(path), exc))
        return None
    if isinstance(exc, CorruptRecord):
        return StateError.of(f"{sqlite_line(path, sqlite3.DatabaseError(str(exc)))}; the state is corrupted:"
                             " restore it from a backup")
    if isinstance(exc, sqlite3.OperationalError) and not _is_busy(exc) or type(exc) is sqlite3.DatabaseError:
        return StateError.of(sqlite_line(path, cast(sqlite3.Error, exc)))
    return None


class StateStore(RunRecords, ModelRecords, ServingRecords, RemovalRecords, HashCache):
    """Typed access to the state database; create with :meth:`open`.

    This class holds the connection, its transactions and retries; the tables' methods come from the
    mixins (:mod:`~runtime.state.runs`, :mod:`~runtime.state.models`, :mod:`~runtime.state.serving`,
    :mod:`~runtime.state.hashes`).
    """

    def __init__(self, conn: Any, path: Path | None, *, url: str | None = None, dialect: Dialect = SQLITE) -> None:
        self._conn = conn
        self.path = path
        self._url = url
        """The PostgreSQL URL as given (``None`` for SQLite)."""
        self.location = str(path) if url is None else shown(url)
        self.dialect = dialect
        self._lock = threading.RLock()
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []

    # --- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, busy_timeout: float = BUSY_TIMEOUT_S, *, check: bool = True) -> StateStore:
        """Open (creating it and its parent directories if needed) and migrate the database at ``path``.

        With ``check`` (the default) a state that is not the one its audit-head sidecar anchors (emptied,
        replaced by another lineage, older than the head: :mod:`runtime.state.anchor`) is refused with a
        :class:`StateError` before anything is written to it. ``audit verify`` and ``state reset`` open
        without the check, to report and to recover.

        ``path`` may be a ``postgresql://`` URL: the state is then that database (:meth:`_open_postgresql`).
        """
        if is_postgresql(path):
            return cls._open_postgresql(str(path), check)
        if "://" in str(path):
            raise StateError.of(f"state {path}: only a local SQLite file or a postgresql:// URL is supported as the "
                                "state store")
        path = Path(path)
        side = anchor.read(anchor.sidecar_path(path))  # before the state: see anchor.refusal
        if check and (why := anchor.refusal_before_open(path)) is not None:
            raise StateError.of(why)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError.of(os_line(exc)) from exc
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = _retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise StateError.of(f"{path}: cannot use WAL journaling (got {mode!r}); is it on a network drive?")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            before = _retry(lambda: schema_version(conn))
            _retry(lambda: migrate(conn))
            if check:
                lineage, serial, count = _identity(conn)
                if (why := anchor.refusal(path, side, lineage, serial, count)) is not None:
                    raise StateError.of(why)
        except SchemaTooNew as exc:
            conn.close()
            raise StateError.of(f"{path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            line = sqlite_line(path, exc, "not a usable state database: {reason}")
            if "not a usable state database" not in line:  # a damaged file: say so, and what it is not
                line = line.replace(": the database is damaged", ": not a usable state database: the database is "
                                    "damaged", 1)
            raise StateError.of(line) from exc
        except BaseException:
            conn.close()
            raise
        store = cls(conn, path)
        if 0 < before < DECISIONS_CHAINED_SINCE:
            store._adopt_decisions()
        return store

    @classmethod
    def _open_postgresql(cls, url: str, check: bool) -> StateStore:
        """Connect to the database at ``url``, migrate it, and (with ``check``) refuse it when its
        ``audit_anchor`` does not vouch for it; every failure is one :class:`StateError` line naming ``url``."""
        from runtime.state import pg

        conn = pg.Connection(pg.connect(url), url)
        location = shown(url)
        try:
            store = cls(conn, None, url=url, dialect=pg.POSTGRESQL)
            now = pg.current(conn)  # an existing state: one round trip
            side: anchor.Anchor | str | None
            if now is not None and now[0] == len(MIGRATIONS):
                before, (lineage, serial, count), side = now
            else:
                before = pg.schema_version(conn)
                pg.migrate(conn)
                side = anchor.TableAnchor(store).read()  # before the state, as the sidecar is
                lineage, serial, count = _identity(conn)
            if check and (why := anchor.refusal(location, side, lineage, serial, count)) is not None:
                raise StateError.of(why)
        except SchemaTooNew as exc:
            conn.close()
            raise StateError.of(f"{location}: {exc}") from exc
        except pg.POSTGRESQL.database_errors as exc:
            conn.close()
            raise StateError.of(pg.line(url, exc)) from exc
        except sqlite3.DatabaseError as exc:  # _identity: a row of its own tables is missing
            conn.close()
            raise StateError.of(f"{location}: not a usable state database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if 0 < before < DECISIONS_CHAINED_SINCE:
            store._adopt_decisions()
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def connection(self) -> Any:
        """The raw connection (for the audit module and tests); prefer the typed methods."""
        return self._conn

    def identity(self) -> tuple[str, int, int]:
        """(lineage, serial, audit records) of this state, read in one statement."""
        with self._lock:
            return _retry(lambda: _identity(self._conn))

    def schema_version(self) -> int:
        with self._lock:
            if self.path is None:
                from runtime.state import pg

                return pg.schema_version(self._conn)
            return schema_version(self._conn)

    def sync(self) -> None:
        """Make every committed transaction durable now (fsync the WAL and the database file; on PostgreSQL
        a commit is durable when it returns)."""
        if self.path is None:
            return
        with self._lock:
            for name in (f"{self.path}-wal", str(self.path)):
                try:
                    fd = os.open(name, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    # --- transactions ----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[StateStore]:
        """One atomic unit: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception); on PostgreSQL
        ``BEGIN`` and the writers' advisory lock.

        Nested use makes a savepoint, so an inner failure the caller catches undoes only the inner part.
        """
        with self._lock:
            if self._depth == 0:
                yield from self._outer()
            else:
                yield from self._savepoint()

    def _outer(self) -> Iterator[StateStore]:
        try:
            for statement in self.dialect.begin:
                _retry(lambda statement=statement: self._conn.execute(statement))  # type: ignore[misc]
        except self.dialect.database_errors as exc:
            if self._conn.in_transaction:
                with suppress(*self.dialect.database_errors):
                    self._conn.execute("ROLLBACK")
            translated = self._translated(exc)
            if translated is None:
                raise
            raise translated from exc
        self._depth = 1
        changes = self._conn.total_changes
        try:
            yield self
            if self._conn.total_changes != changes:  # a write: the state's serial grows with it
                self._conn.execute("UPDATE state_meta SET serial = serial + 1 WHERE id = 1")
            _retry(lambda: self._conn.execute("COMMIT"))
        except BaseException as exc:
            self._after_commit.clear()
            if self._conn.in_transaction:
                with suppress(*self.dialect.database_errors):  # SQLite has rolled back itself (a full disk, ...)
                    self._conn.execute("ROLLBACK")
            translated = self._translated(exc)
            if translated is not None:
                raise translated from exc
            raise
        finally:
            self._depth = 0
        hooks, self._after_commit = self._after_commit, []
        for hook in hooks:
            hook()

    def _savepoint(self) -> Iterator[StateStore]:
        name = f"sp{self._depth}"
        hooks_before = len(self._after_commit)
        self._conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield self
        except BaseException:
            del self._after_commit[hooks_before:]
            self._conn.execute(f"ROLLBACK TO {name}")
            self._conn.execute(f"RELEASE {name}")
            raise
        else:
            self._conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the current outermost transaction commits (at once when there is none)."""
        with self._lock:
            if self._depth == 0:
                hook()
            else:
                self._after_commit.append(hook)

    def _translated(self, exc: BaseException) -> StateError | None:
        return _translated(self._url if self._url is not None else self.location, exc, self.dialect)

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Rows of one read statement, retried while locked; a database fault is said as a :class:`StateError`."""
        with self._lock:
            args = tuple(params)
            try:
                return cast(list[Any], _retry(lambda: self._conn.execute(sql, args).fetchall()))
            except self.dialect.database_errors as exc:
                translated = self._translated(exc)
                if translated is None:
                    raise
                raise translated from exc

    def _row(self, sql: str, params: Iterable[Any] = ()) -> Any | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """Execute one write statement atomically (inside the current transaction when there is one).

        Inside a transaction no savepoint is needed: SQLite undoes a failed statement by itself (a failed
        statement aborts a PostgreSQL transaction: the caller's ``transaction()`` rolls it back).
        """
        with self._lock:
            if self._depth:
                return self._conn.execute(sql, tuple(params))
            with self.transaction():
                return self._conn.execute(sql, tuple(params))


def _naming_the_database(method: Callable[..., T]) -> Callable[..., T]:
    """``method``, with a corrupted record it reads said as a :class:`StateError` naming the database."""
    @functools.wraps(method)
    def wrapper(self: StateStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except CorruptRecord as exc:
            translated = self._translated(exc)
            assert translated is not None
            raise translated from exc
    return wrapper


for _name in dir(StateStore):  # its own methods and the mixins'
    _member = inspect.getattr_static(StateStore, _name)
    if callable(_member) and not _name.startswith("_") and _name != "transaction":
        setattr(StateStore, _name, _naming_the_database(_member))
