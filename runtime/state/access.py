"""What the state store's table mixins are written against: :class:`StateError`, :class:`Dialect` and
:class:`StoreAccess`.

:class:`~runtime.state.store.StateStore` implements :class:`StoreAccess` (connection, retry, error
translation, transactions); the mixins (:mod:`~runtime.state.runs`, :mod:`~runtime.state.models`,
:mod:`~runtime.state.serving`, :mod:`~runtime.state.hashes`) and the audit trail use only these members.
Their SQL is written once, in the dialect both databases share (``?`` placeholders, ``INSERT ... ON CONFLICT``
upserts, qualified columns in ``DO UPDATE``); what differs (DDL, ``BEGIN``, errors, integrity checks) is
the store's :class:`Dialect`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from compiler.errors import MlopsError


class StateError(MlopsError):
    """The state database cannot be used as asked (locked too long, too new, unknown record)."""

    @classmethod
    def of(cls, message: str) -> StateError:
        return cls.one(message)  # type: ignore[return-value]


@dataclass(frozen=True)
class Dialect:
    """What differs between the state's two databases (SQLite, PostgreSQL) beyond the shared SQL."""

    name: str
    """``sqlite`` or ``postgresql``."""
    begin: tuple[str, ...]
    """The statements that open a write transaction: writers are serialised, as SQLite's ``BEGIN IMMEDIATE``."""
    integrity_errors: tuple[type[Exception], ...]
    """A constraint refused a row (a duplicate key, a missing foreign row)."""
    database_errors: tuple[type[Exception], ...]
    """Any error of the database driver."""
    quick_check: str | None
    """A statement whose rows are ``ok`` when the database's files are sound (``None``: the server checks)."""
    triggers: str
    """The names of the triggers on the ``audit`` table (one column)."""
    remote: bool = False
    """Each statement is a network round trip: batch what can be batched (:mod:`runtime.state.hashes`)."""


SQLITE = Dialect("sqlite", ("BEGIN IMMEDIATE",), (sqlite3.IntegrityError,), (sqlite3.DatabaseError,),
                 "PRAGMA quick_check", "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'")


class StoreAccess(Protocol):
    """The store's primitives: every SQL statement of ``runtime.state`` goes through them."""

    path: Path | None
    """The database file (SQLite); ``None`` for a PostgreSQL state."""
    location: str
    """What messages name: the database file, or the PostgreSQL URL without its password."""
    dialect: Dialect
    _conn: Any
    """A ``sqlite3.Connection`` or a :class:`runtime.state.pg.Connection` (the same ``execute`` interface)."""

    @property
    def connection(self) -> Any:
        """The raw connection (statements inside :meth:`transaction`)."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """One atomic unit; nested use makes a savepoint."""
        ...

    def after_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once the current outermost transaction commits."""
        ...

    def sync(self) -> None:
        """Make every committed transaction durable now."""
        ...

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """Rows of one read statement (retried while locked, database faults said as :class:`StateError`).

        A row reads by column name (``row["seq"]``) and by position (``row[0]``), on either database.
        """
        ...

    def _row(self, sql: str, params: Iterable[Any] = ()) -> Any | None:
        """The first row of one read statement, if any."""
        ...

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> Any:
        """Execute one write statement atomically; the cursor (``rowcount``)."""
        ...
