"""The state's identity and where it is anchored: lineage, serial and the ``<state file>.audit-head`` sidecar.

Like Terraform's ``lineage`` and ``serial``: a state gets a random ``lineage`` when it is created and a
``serial`` that grows with every write transaction (``state_meta`` in the database). The audit-head
sidecar next to the database anchors, besides the audit log's head (record count and last hash), the
lineage and serial of the state at that head. A state is refused (:func:`refusal`) before any write
when it cannot be the one its sidecar anchors:

* **empty**: the database file is missing or empty (``: > state.db``) while the sidecar names records;
* **replaced**: its lineage is not the sidecar's (another state copied over it);
* **older**: it has fewer audit records, or a lower serial, than the sidecar (an old backup restored).

The recovery is to restore the right file, or ``mlops state reset --i-understand``, which keeps the
old sidecar as evidence, records a ``state-reset`` audit record naming the history it left, and
anchors the state as it is now (:func:`runtime.state.audit.reset`).

A PostgreSQL state has no file next to it, and every driver sharing it (CI runners, the reconciler, a
laptop) must see one anchor: its anchor is the ``audit_anchor`` table of the same database
(:class:`TableAnchor`), written the same way (after the commit, never backwards, never over a
disagreeing one). Honestly, that guards against what SQL can do to the log (its last records deleted,
the chain rewritten without the anchor), not against the whole database being replaced or restored
from an older dump: the anchor goes with it. Copy :func:`runtime.state.audit.head` somewhere the
database's users cannot write (a git commit, a CI log) to make that evident.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.state.access import StoreAccess

RECOVERY = "mlops state reset --i-understand"


@dataclass(frozen=True)
class Anchor:
    """What the sidecar says: the audit head, and the lineage and serial of the state at that head."""

    count: int
    hash: str
    lineage: str | None = None
    """``None`` in a sidecar written before states had a lineage."""
    serial: int | None = None


def sidecar_path(state_path: Path | str) -> Path:
    """``<state file>.audit-head``."""
    path = Path(state_path)
    return path.with_name(path.name + ".audit-head")


def read(path: Path) -> Anchor | str | None:
    """The sidecar at ``path``; an error message when unreadable; ``None`` when missing."""
    try:
        data = json.loads(path.read_text())
        lineage = data.get("lineage")
        serial = data.get("serial")
        return Anchor(int(data["count"]), str(data["hash"]), None if lineage is None else str(lineage),
                      None if serial is None else int(serial))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return str(exc)


def _refused(state: Path | str, why: str) -> str:
    what = state.name if isinstance(state, Path) else "the database"
    return (f"state {state} is refused: {why}; restore {what} from a backup, or run "
            f"`{RECOVERY}` to accept it as it is (the old history stays in the audit trail)")


def _named(anchor: Anchor) -> str:
    lineage = f", lineage {anchor.lineage[:12]}" if anchor.lineage else ""
    serial = f", serial {anchor.serial}" if anchor.serial is not None else ""
    return f"{anchor.count} audit records{lineage}{serial}"


def refusal_before_open(state_path: Path | str) -> str | None:
    """Why the state file cannot be opened for its history: missing or empty while its sidecar names records.

    ``None`` for a PostgreSQL state (a URL): its anchor is in the database, checked once it is open.
    """
    if not isinstance(state_path, Path):
        return None
    anchor = read(sidecar_path(state_path))
    if not isinstance(anchor, Anchor) or anchor.count == 0:
        return None
    try:
        size = state_path.stat().st_size
    except FileNotFoundError:
        return _refused(state_path, f"it is missing, but {sidecar_path(state_path).name} says its history has "
                                    f"{_named(anchor)}")
    if size == 0:
        return _refused(state_path, f"it is empty, but {sidecar_path(state_path).name} says its history has "
                                    f"{_named(anchor)}")
    return None


def refusal(state_path: Path | str, anchor: Anchor | str | None, lineage: str, serial: int, count: int) -> str | None:
    """Why an open state (its ``lineage``, ``serial`` and audit record ``count``) is not the one ``anchor`` names.

    Read ``anchor`` *before* the state: the sidecar is written only after the state it names committed, so a
    state read afterwards is never older than it, even while another process appends.
    """
    if not isinstance(anchor, Anchor):
        return None
    side = sidecar_path(state_path).name if isinstance(state_path, Path) else f"its {TableAnchor.name} table"
    if anchor.lineage is not None and anchor.lineage != lineage:
        if count == 0 and serial <= 1:
            return _refused(state_path, f"it is a new, empty state (lineage {lineage[:12]}), but {side} says its "
                                        f"history has {_named(anchor)}")
        return _refused(state_path, f"it is another state (lineage {lineage[:12]}, {count} audit records) than the "
                                    f"one {side} anchors ({_named(anchor)}): it was replaced")
    if anchor.count > count or (anchor.serial is not None and anchor.serial > serial):
        return _refused(state_path, f"it is older than its audit head: it has {count} audit records and serial "
                                    f"{serial}, {side} says {_named(anchor)}")
    return None


class Anchorage(Protocol):
    """Where a state's audit head is anchored: the sidecar file (SQLite) or the ``audit_anchor`` table."""

    name: str
    """What messages call it (``state.db.audit-head``, ``audit_anchor``)."""

    def read(self) -> Anchor | str | None:
        """The anchor; an error message when unreadable; ``None`` when there is none."""
        ...

    def write(self, anchor: Anchor) -> None:
        """Anchor ``anchor`` (the caller checked that it extends the current one)."""
        ...

    def set_aside(self) -> None:
        """Keep the current anchor as evidence and anchor nothing (``state reset``)."""
        ...


class FileAnchor:
    """The sidecar file ``<state file>.audit-head``, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name

    def read(self) -> Anchor | str | None:
        return read(self.path)

    def write(self, anchor: Anchor) -> None:
        write_atomically(self.path, json.dumps({"count": anchor.count, "hash": anchor.hash,
                                                "lineage": anchor.lineage, "serial": anchor.serial}) + "\n")

    def set_aside(self) -> None:
        """Rename the sidecar to ``<sidecar>.replaced-<time>``."""
        if self.path.exists():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            os.replace(self.path, self.path.with_name(f"{self.path.name}.replaced-{stamp}"))


class TableAnchor:
    """The ``audit_anchor`` row of a PostgreSQL state; written outside any transaction, never backwards."""

    name = "audit_anchor"

    def __init__(self, store: StoreAccess) -> None:
        self.store = store

    def read(self) -> Anchor | str | None:
        row = self.store._row("SELECT count, hash, lineage, serial FROM audit_anchor WHERE id = 1")
        if row is None:
            return None
        return Anchor(int(row[0]), str(row[1]), None if row[2] is None else str(row[2]),
                      None if row[3] is None else int(row[3]))

    def write(self, anchor: Anchor) -> None:
        self.store.connection.execute(
            "INSERT INTO audit_anchor (id, count, hash, lineage, serial) VALUES (1, ?, ?, ?, ?) ON CONFLICT (id)"
            " DO UPDATE SET count = excluded.count, hash = excluded.hash, lineage = excluded.lineage,"
            " serial = excluded.serial WHERE audit_anchor.count <= excluded.count"
            " AND COALESCE(audit_anchor.serial, 0) <= excluded.serial",
            (anchor.count, anchor.hash, anchor.lineage, anchor.serial))

    def set_aside(self) -> None:
        """Delete the row: the ``state-reset`` record that follows names what it anchored."""
        self.store.connection.execute("DELETE FROM audit_anchor WHERE id = 1")


def anchorage(store: StoreAccess) -> Anchorage:
    """Where ``store``'s head is anchored."""
    return FileAnchor(sidecar_path(store.path)) if store.path is not None else TableAnchor(store)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, durably: a temporary file fsynced, renamed, the folder fsynced."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
