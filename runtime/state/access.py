"""What the state store's table mixins are written against: :class:`StateError` and :class:`StoreAccess`.

:class:`~runtime.state.store.StateStore` implements :class:`StoreAccess` (connection, retry, error
translation, transactions); the mixins (:mod:`~runtime.state.runs`, :mod:`~runtime.state.models`,
:mod:`~runtime.state.serving`, :mod:`~runtime.state.hashes`) and the audit trail use only these members.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from compiler.errors import MlopsError


class StateError(MlopsError):
    """The state database cannot be used as asked (locked too long, too new, unknown record)."""

    @classmethod
    def of(cls, message: str) -> StateError:
        return cls.one(message)  # type: ignore[return-value]


class StoreAccess(Protocol):
    """The store's primitives: every SQL statement of ``runtime.state`` goes through them."""

    path: Path
    """The database file."""
    _conn: sqlite3.Connection

    @property
    def connection(self) -> sqlite3.Connection:
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

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read statement (retried while locked, SQLite faults said as :class:`StateError`)."""
        ...

    def _row(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read statement, if any."""
        ...

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Execute one write statement atomically."""
        ...
