"""The state lock of a PostgreSQL state: a session-level advisory lock and its holder's row.

Like Terraform's ``pg`` backend: the holder takes ``pg_try_advisory_lock`` on a connection of its own,
held for the lock's life, so the server frees the lock when that connection ends for any reason
(the holder exits, is killed, loses the network). Who holds it (:class:`~runtime.state.records.LockInfo`)
is a row of ``mlops_lock``, written by the holder once it has the lock and deleted when it releases it;
a row left by a holder that died is stale, harmless and cleared by ``force_unlock``. Advisory locks
belong to their database, so each state database has its own lock.

These are the primitives; :mod:`runtime.state.lock` gives them the file lock's interface.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import psycopg

from runtime import processes
from runtime.state.access import StateError
from runtime.state.pg import STATE_LOCK_KEY, connect, line
from runtime.state.records import LockInfo

_TABLE = ("CREATE TABLE IF NOT EXISTS mlops_lock (id INTEGER PRIMARY KEY CHECK (id = 1), lock_id TEXT NOT NULL,"
          " operation TEXT NOT NULL, who TEXT NOT NULL, pid BIGINT NOT NULL, host TEXT NOT NULL,"
          " since DOUBLE PRECISION NOT NULL)")


def try_lock(url: str) -> psycopg.Connection[Any] | None:
    """A new connection holding the state's advisory lock, or ``None`` when another session holds it."""
    conn = connect(url, application="mlops state lock")
    try:
        row = conn.execute(f"SELECT pg_try_advisory_lock({STATE_LOCK_KEY})").fetchone()
    except psycopg.Error as exc:
        conn.close()
        raise StateError.of(line(url, exc)) from exc
    except BaseException:
        conn.close()
        raise
    if row is not None and row[0]:
        return conn
    conn.close()
    return None


def write_info(conn: psycopg.Connection[Any], url: str, info: LockInfo) -> None:
    """Record ``info`` as the holder's (on the holding connection, after the lock was taken)."""
    try:
        conn.execute(_TABLE.encode())  # only a holder creates it: no two sessions race on it
        conn.execute("INSERT INTO mlops_lock (id, lock_id, operation, who, pid, host, since)"
                     " VALUES (1, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET lock_id = excluded.lock_id,"
                     " operation = excluded.operation, who = excluded.who, pid = excluded.pid, host = excluded.host,"
                     " since = excluded.since", (info.id, info.operation, info.who, info.pid, info.host, info.since))
    except psycopg.Error as exc:
        raise StateError.of(line(url, exc)) from exc


def release(conn: psycopg.Connection[Any], lock_id: str) -> None:
    """Delete the holder's row and end the holding connection (which frees the lock)."""
    try:
        if not conn.closed and lock_id:
            conn.execute("DELETE FROM mlops_lock WHERE lock_id = %s", (lock_id,))
        if not conn.closed:
            conn.execute(f"SELECT pg_advisory_unlock({STATE_LOCK_KEY})".encode())
    except psycopg.Error:
        pass  # the connection is gone: so is the lock; the row is stale information
    finally:
        conn.close()


def read_info(url: str) -> LockInfo | None:
    """The holder's row (possibly stale), or ``None`` when there is none."""
    with connect(url, application="mlops state lock") as conn:
        try:
            return _info(conn)
        except psycopg.Error as exc:
            raise StateError.of(line(url, exc)) from exc


def _info(conn: psycopg.Connection[Any]) -> LockInfo | None:
    present = conn.execute(b"SELECT to_regclass('mlops_lock') IS NOT NULL").fetchone()
    if not present or not present[0]:
        return None
    row = conn.execute(b"SELECT lock_id, operation, who, pid, host, since FROM mlops_lock WHERE id = 1").fetchone()
    if row is None:
        return None
    return LockInfo(id=str(row[0]), operation=str(row[1]), who=str(row[2]), pid=int(row[3]), host=str(row[4]),
                    since=float(row[5]))


DEAD_HOLDER_GRACE_S = 5.0
"""How long the server may take to end the session of a holder that died on this machine (kill -9): the kernel
frees a file lock at once, PostgreSQL once its backend notices the dropped connection."""


def is_held(url: str) -> bool:
    """Whether a live session holds the state's advisory lock now (a holder that died on this machine is
    waited for, a few seconds at most, until the server lets its lock go)."""
    deadline = time.monotonic() + DEAD_HOLDER_GRACE_S
    while True:
        conn = try_lock(url)
        if conn is not None:
            release(conn, "")
            return False
        info = read_info(url)
        if (info is None or info.host != socket.gethostname() or processes.alive(info.pid)
                or time.monotonic() > deadline):
            return True
        time.sleep(0.1)


def clear(url: str, lock_id: str) -> bool:
    """Delete the row of ``lock_id`` while holding the lock (so no live holder is cleared); False when held."""
    conn = try_lock(url)
    if conn is None:
        return False
    try:
        conn.execute("DELETE FROM mlops_lock WHERE lock_id = %s", (lock_id,))
    except psycopg.Error as exc:
        raise StateError.of(line(url, exc)) from exc
    finally:
        release(conn, "")
    return True
