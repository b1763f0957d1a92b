"""PostgreSQL as the state's database (psycopg 3): the connection the store and its mixins use, its rows,
its errors said in one line naming the database, and its migrations.

The state's SQL is written once with ``?`` placeholders (:mod:`runtime.state.access`); :class:`Connection`
turns them into psycopg's ``%s`` and gives the ``execute`` / ``executemany`` / ``total_changes`` /
``in_transaction`` interface of a ``sqlite3.Connection``, with rows that read by name and by position.
The connection runs in autocommit mode; the store sends ``BEGIN`` / ``COMMIT`` / ``SAVEPOINT`` itself.

The password never appears in the spec: libpq reads it from ``PGPASSWORD`` or ``~/.pgpass``; a message
shows the URL without it (:func:`runtime.state.pgurl.shown`) and scrubs it from the server's words.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import pq

from runtime.state.access import Dialect, StateError
from runtime.state.anchor import Anchor
from runtime.state.pg_schema import MIGRATIONS, Step
from runtime.state.pgurl import password_of, shown

CONNECT_TIMEOUT_S = 10

WRITER_KEY = 0x6D6C6F7073_0001
"""The transaction-level advisory lock every write transaction takes: writers are serialised, as in SQLite."""
MIGRATION_KEY = 0x6D6C6F7073_0002
"""The transaction-level advisory lock a migration step takes."""
STATE_LOCK_KEY = 0x6D6C6F7073_0003
"""The session-level advisory lock of the state lock (:mod:`runtime.state.pglock`)."""

POSTGRESQL = Dialect(
    "postgresql", ("BEGIN", f"SELECT pg_advisory_xact_lock({WRITER_KEY})"), (psycopg.IntegrityError,),
    (psycopg.Error,), None,
    "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass('audit') AND NOT tgisinternal", remote=True)

_WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE")


class Row(tuple[Any, ...]):
    """A row that reads by column name (``row["seq"]``) and by position (``row[0]``), like ``sqlite3.Row``."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _rows_of(cursor: psycopg.Cursor[Any]) -> Any:
    names: dict[str, int] = {}
    for index, column in enumerate(cursor.description or ()):
        names.setdefault(column.name, index)  # the first of equal names, as sqlite3.Row

    def make(values: Sequence[Any]) -> Row:
        return Row(values, names)
    return make


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class Connection:
    """A psycopg connection with the part of ``sqlite3.Connection``'s interface the state uses."""

    def __init__(self, raw: psycopg.Connection[Any], url: str) -> None:
        self.raw = raw
        self.url = url
        self.total_changes = 0
        """Rows written so far (the store bumps the serial of a transaction that wrote)."""

    def execute(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        args = tuple(params)
        cursor = self.raw.cursor(row_factory=_rows_of)
        cursor.execute(_placeholders(sql) if args else sql, args or None)
        if cursor.rowcount > 0 and (cursor.statusmessage or "").startswith(_WRITES):
            self.total_changes += cursor.rowcount
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        batch = [tuple(row) for row in rows]
        cursor = self.raw.cursor(row_factory=_rows_of)
        cursor.executemany(_placeholders(sql), batch)
        self.total_changes += len(batch)
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str, *, application: str = "mlops") -> psycopg.Connection[Any]:
    """A new autocommit connection to ``url``; a :class:`StateError` in one line when it cannot be made."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               application_name=application)
    except psycopg.Error as exc:
        raise StateError.of(line(url, exc)) from exc


def line(url: str, error: BaseException) -> str:
    """``postgresql://user@host/db: what happened`` for a driver or server error: one line, no password."""
    lines = [" ".join(part.split()) for part in str(error).splitlines() if part.strip()]
    reason = lines[0] if lines else type(error).__name__
    for prefix in ("connection failed: ",):
        reason = reason.removeprefix(prefix)
    if "failed: " in reason and reason.startswith("connection to server"):
        reason = reason.rsplit("failed: ", 1)[1]
    reason = reason.removeprefix("FATAL: ").strip()
    hints = [text for text in lines[1:] if not text.startswith(("connection to server", "LINE ", "^"))]
    if reason.lower() in ("connection refused", "no such file or directory", "timeout expired"):
        reason = f"cannot connect: {reason[:1].lower()}{reason[1:]}"
    if hints:
        reason += f" ({'; '.join(hints)})"
    secret = password_of(url)
    if secret:
        reason = reason.replace(secret, "***")
    return f"{shown(url)}: {reason}"


_CURRENT = ("SELECT s.version, m.lineage, m.serial, h.count, a.count, a.hash, a.lineage, a.serial FROM mlops_schema s"
            " JOIN state_meta m ON m.id = 1 JOIN audit_head h ON h.id = 1 LEFT JOIN audit_anchor a ON a.id = 1"
            " WHERE s.id = 1")


def current(conn: Connection) -> tuple[int, tuple[str, int, int], Anchor | None] | None:
    """In one round trip: the schema version, the identity (lineage, serial, audit records) and the audit
    anchor of an existing state, read in one snapshot; ``None`` for a database without them (not migrated)."""
    try:
        row = conn.execute(_CURRENT).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    if row is None:
        return None
    side = None if row[4] is None else Anchor(int(row[4]), str(row[5]), None if row[6] is None else str(row[6]),
                                                 None if row[7] is None else int(row[7]))
    return int(row[0]), (str(row[1]), int(row[2]), int(row[3])), side


def schema_version(conn: Connection) -> int:
    """The state's schema version (0 before the first migration)."""
    row = conn.execute("SELECT to_regclass('mlops_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT version FROM mlops_schema WHERE id = 1").fetchone()
    return int(found[0]) if found else 0


def migrate(conn: Connection, steps: Sequence[Step] = MIGRATIONS) -> int:
    """Apply the steps the database lacks, each in one transaction under the migration lock; the version."""
    from runtime.state.migrations import SchemaTooNew

    current = schema_version(conn)
    if current > len(steps):
        raise SchemaTooNew(f"the state database has schema version {current}, newer than this mlops "
                           f"understands ({len(steps)}); upgrade mlops")
    for version in range(current, len(steps)):
        conn.execute("BEGIN")
        try:
            conn.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_KEY})")
            if schema_version(conn) != version:  # another driver migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            for statement in steps[version]:
                conn.execute(statement)
            conn.execute("CREATE TABLE IF NOT EXISTS mlops_schema (id INTEGER PRIMARY KEY CHECK (id = 1),"
                         " version INTEGER NOT NULL)")
            conn.execute("INSERT INTO mlops_schema (id, version) VALUES (1, ?) ON CONFLICT (id) DO UPDATE"
                         " SET version = excluded.version", (version + 1,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return schema_version(conn)
