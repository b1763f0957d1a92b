"""The audit trail: append-only, hash-chained records of every apply, approval and rollback.

Each record's ``hash`` is ``sha256(prev_hash + canonical_json(record without its hash))`` and its
``prev_hash`` is the hash of the record before it (``""`` for the first), so changing, removing or
reordering any record breaks the chain from there on. Removing the *last* record leaves a valid
shorter chain, so the head (record count and last hash) is also anchored twice: in the
``audit_head`` table, written in the same transaction as the record, and in a sidecar file next to
the database (``state.db.audit-head``), written atomically once the record is durable.

Threat model, honestly:

* Detected: accidental or casual tampering through SQL or a SQLite browser — editing a record
  (even after dropping the append-only triggers), deleting one in the middle, reordering records,
  deleting the last records (the anchors remember the count), dropping the triggers, rewriting
  the whole chain but not the sidecar file.
* Not detected: someone who can write both the database and the sidecar file and recomputes the
  chain and both anchors; nothing local can stop that. To make such edits evident, copy the head
  (``head(store)``) somewhere they cannot write — a git commit, a CI log, a WORM bucket — and
  compare it later. The triggers only stop ordinary SQL; anyone with the file can drop them.
* After a crash between the database commit and the sidecar write, the sidecar may lag the log
  by a record; that is not reported (it is a prefix of the chain) and the next append catches up.
  The sidecar is never overwritten while it disagrees with the log, so evidence is not erased.

On PostgreSQL the same holds with the ``audit_anchor`` table in place of the sidecar file (see
:mod:`runtime.state.anchor` for what that anchor can and cannot tell), and PostgreSQL triggers
(``TRUNCATE`` included) in place of SQLite's.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.content_hash import canonical_json
from runtime.state import anchor
from runtime.state.access import StateError, StoreAccess
from runtime.state.records import AuditRecord
from runtime.state.rows import audit_record_of

if TYPE_CHECKING:
    from runtime.state.store import StateStore

TRIGGERS = ("audit_no_update", "audit_no_delete")


def head_path(store: StoreAccess) -> Path:
    """The sidecar file that anchors the head of the log: ``<state file>.audit-head`` (SQLite states only)."""
    if store.path is None:
        raise StateError.of(f"{store.location}: a PostgreSQL state anchors its audit head in its "
                            f"{anchor.TableAnchor.name} table, not in a file")
    return anchor.sidecar_path(store.path)


def record_hash(record: AuditRecord) -> str:
    """The hash a record must carry: sha256 of its ``prev_hash`` + the canonical JSON of the rest."""
    body = {"seq": record.seq, "at": record.at, "actor": record.actor, "action": record.action,
            "commit": record.commit, "payload": record.payload, "prev_hash": record.prev_hash}
    return hashlib.sha256((record.prev_hash + canonical_json(body)).encode()).hexdigest()


def append(store: StoreAccess, actor: str, action: str, payload: dict[str, Any], commit: str | None = None,
           at: float | None = None) -> AuditRecord:
    """Append one record (atomically; inside the caller's transaction when there is one) and return it."""
    normal_payload = json.loads(canonical_json(payload))  # what reading it back will give, so the hash holds
    conn = store.connection
    with store.transaction():
        count, prev_hash = conn.execute("SELECT count, hash FROM audit_head WHERE id = 1").fetchone()
        record = AuditRecord(seq=count + 1, at=time.time() if at is None else at, actor=actor, action=action,
                             commit=commit, payload=normal_payload, prev_hash=prev_hash, hash="")
        record.hash = record_hash(record)
        conn.execute("INSERT INTO audit (seq, at, actor, action, git_commit, payload, prev_hash, hash)"
                     " VALUES (?,?,?,?,?,?,?,?)",
                     (record.seq, record.at, actor, action, commit, canonical_json(normal_payload), prev_hash,
                      record.hash))
        conn.execute("UPDATE audit_head SET count = ?, hash = ? WHERE id = 1", (record.seq, record.hash))
        store.after_commit(lambda: _publish_head(store))
    return record


ROLLOUT_FAILED = "rollout_failed"
"""The action of a record that a deployment's new version did not go live (:func:`rollout_failed`)."""


def rollout_failed(store: StateStore, actor: str, deployment: str, model: str, version: int,
                   serving: int | None, error: str, commit: str | None = None) -> AuditRecord:
    """Audit a rollout that failed: ``version`` of ``model`` did not go live at ``deployment``.

    ``deployment`` is the deployment's name (or its ``deployments.NAME`` address); ``serving`` is the version
    that keeps serving (``None``: nothing does); ``error`` says why, in one line. Call it before raising,
    outside any transaction the failure rolls back, or the record goes with it. The payload has the
    shape of a ``rollback`` record: ``{"deployment", "model", "from", "to", "error"}``.
    """
    address = deployment if deployment.startswith("deployments.") else f"deployments.{deployment}"
    return append(store, actor, ROLLOUT_FAILED, {"deployment": address, "model": model, "from": serving,
                                                 "to": version, "error": " ".join(str(error).split())}, commit)


def of_actions(store: StateStore, actions: list[str]) -> list[AuditRecord]:
    """The records of these actions, oldest first."""
    if not actions:
        return []
    marks = ",".join("?" * len(actions))
    rows = store._rows(f"SELECT * FROM audit WHERE action IN ({marks}) ORDER BY seq", tuple(actions))
    return [audit_record_of(row) for row in rows]


def log(store: StateStore, limit: int | None = None) -> list[AuditRecord]:
    """The records in order (oldest first); with ``limit``, only the newest ``limit`` of them."""
    if limit is None:
        rows = store._rows("SELECT * FROM audit ORDER BY seq")
    else:
        rows = store._rows("SELECT * FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?) AS newest ORDER BY seq",
                           (limit,))
    return [audit_record_of(row) for row in rows]


def record_count(store: StateStore) -> int:
    """How many records the log holds (what is there, not what its head anchors)."""
    return int(store._rows("SELECT COUNT(*) FROM audit")[0][0])


def head(store: StateStore) -> tuple[int, str]:
    """The anchored head: (number of records, hash of the last one)."""
    rows = store._rows("SELECT count, hash FROM audit_head WHERE id = 1")
    if not rows:
        raise StateError.of(f"{store.location}: its audit_head row is missing")
    count, last = rows[0]
    return int(count), str(last)


def verify(store: StateStore) -> list[str]:
    """Every problem found in the state and its log (an empty list means intact as far as it can tell).

    First SQLite's ``PRAGMA quick_check``: a corrupt database is one problem, and nothing else is read.
    """
    errors = store.dialect.database_errors
    name = store.path.name if store.path is not None else store.location
    if store.dialect.quick_check is not None:
        try:
            checked = [str(row[0]) for row in store._rows(store.dialect.quick_check)]
        except errors as exc:
            checked = [str(exc)]
        if checked != ["ok"]:
            more = f" (and {len(checked) - 1} more)" if len(checked) > 1 else ""
            return [f"{name} is corrupt: SQLite's quick_check says: {' '.join(checked[0].split())}{more}"]
    try:
        return _verify(store)
    except (StateError, KeyError, IndexError, *errors) as exc:  # type: ignore[misc]
        return [f"{name} is not a usable state database: {' '.join(str(exc).split())}"]


def _verify(store: StateStore) -> list[str]:
    problems: list[str] = []
    hashes: dict[int, str] = {}
    expected_seq, prev_hash = 1, ""
    for row in store._rows("SELECT * FROM audit ORDER BY seq"):
        seq = row["seq"]
        if seq != expected_seq:
            missing = f"record {expected_seq}" if seq == expected_seq + 1 else f"records {expected_seq}-{seq - 1}"
            problems.append(f"{missing} missing: deleted from the log")
        if row["prev_hash"] != prev_hash:
            problems.append(f"record {seq}: does not follow the record before it (a record was deleted, inserted "
                            "or reordered)")
        try:
            record = audit_record_of(row)
        except ValueError:
            problems.append(f"record {seq}: edited (its payload is not valid JSON)")
        else:
            if record_hash(record) != record.hash:
                problems.append(f"record {seq}: edited (its content does not match its hash)")
        hashes[seq] = row["hash"]
        expected_seq, prev_hash = seq + 1, row["hash"]
    last_seq = expected_seq - 1
    anchored_count, anchored_hash = head(store)
    if anchored_count > last_seq:
        problems.append(f"the audit head in the database says {anchored_count} records but the log ends at record "
                        f"{last_seq}: the last records were deleted")
    elif (anchored_count, anchored_hash) != (last_seq, prev_hash):
        problems.append("the audit head in the database does not match the end of the log: the log was rewritten")
    lineage, serial, _ = store.identity()
    problems.extend(_check_anchor(anchor.anchorage(store), hashes, lineage, serial))
    present = {row[0] for row in store._rows(store.dialect.triggers)}
    problems.extend(f"the append-only trigger {name} was dropped" for name in TRIGGERS if name not in present)
    problems.extend(f"the approval of models.{a.model} version {a.version} at gates.{a.gate} by {a.approver} has no "
                    "record in the audit chain: it was written behind mlops' back and does not count"
                    for a in store.unchained_approvals())
    problems.extend(f"the {d.status} decision of gates.{d.gate} on models.{d.model} version {d.version} has no record "
                    "in the audit chain: it was written behind mlops' back and does not count"
                    for d in store.unchained_gate_decisions())
    return problems


def _check_anchor(place: anchor.Anchorage, hashes: dict[int, str], lineage: str, serial: int) -> list[str]:
    sidecar = place.read()
    name = place.name
    if sidecar is None:
        return [f"{name} is missing: the log's head is not anchored"] if hashes else []
    if isinstance(sidecar, str):
        return [f"{name} is unreadable ({sidecar})"]
    if sidecar.lineage is not None and sidecar.lineage != lineage:
        return [f"{name} anchors another state (lineage {sidecar.lineage[:12]}, {sidecar.count} records) than "
                f"this one (lineage {lineage[:12]}): the state file was replaced"]
    last_seq = max(hashes, default=0)
    if sidecar.count > last_seq:
        return [f"{name} says the log has {sidecar.count} records but it ends at record {last_seq}: "
                "the last records were deleted"]
    if sidecar.count and hashes.get(sidecar.count) != sidecar.hash:
        return [f"{name} does not match record {sidecar.count}: the log was rewritten"]
    if sidecar.serial is not None and sidecar.serial > serial:
        return [f"{name} says the state was at serial {sidecar.serial} but it is at serial {serial}: "
                "an older copy of the state"]
    return []


def _publish_head(store: StoreAccess) -> None:
    """Make the log durable, then anchor its head, lineage and serial in the sidecar (unless it disagrees).

    What is anchored is read first, then synced: everything the sidecar names is durable before it does.
    """
    lineage, serial, count, last = store._rows(
        "SELECT m.lineage, m.serial, h.count, h.hash FROM state_meta m, audit_head h WHERE m.id = 1 AND h.id = 1")[0]
    store.sync()
    place = anchor.anchorage(store)
    current = place.read()
    if isinstance(current, anchor.Anchor):
        if current.lineage is not None and current.lineage != lineage:
            return  # keep the evidence for verify
        rows = store._rows("SELECT hash FROM audit WHERE seq = ?", (current.count,))
        if current.count > count or (current.count and (not rows or rows[0][0] != current.hash)):
            return  # keep the evidence for verify
        if current.count >= count and (current.serial or 0) >= serial:
            return
    place.write(anchor.Anchor(int(count), str(last), str(lineage), int(serial)))


RESET = "state-reset"
"""The action of the record :func:`reset` appends."""


def reset(store: StateStore, actor: str, commit: str | None = None) -> AuditRecord:
    """Accept the state as it is now as the one its sidecar anchors (``mlops state reset --i-understand``).

    The old sidecar is kept as evidence (``<state file>.audit-head.replaced-<time>``); a ``state-reset``
    record naming the history it anchored (count, hash, lineage, serial) is appended; the sidecar then
    anchors this state (on PostgreSQL: the ``audit_anchor`` row, which the record names). Open ``store``
    with ``check=False`` and hold the state lock.
    """
    place = anchor.anchorage(store)
    previous = place.read()
    before = None
    if isinstance(previous, anchor.Anchor):
        before = {"count": previous.count, "hash": previous.hash, "lineage": previous.lineage,
                  "serial": previous.serial}
    elif isinstance(previous, str):
        before = {"unreadable": previous}
    place.set_aside()
    lineage, serial, count = store.identity()
    return append(store, actor, RESET, {"previous": before, "state": {"lineage": lineage, "serial": serial,
                                                                      "count": count}}, commit)
