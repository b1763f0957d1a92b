"""The audit trail: hash chain, append-only triggers, head anchors, and verify catching each kind of tampering.

Each test runs on a SQLite state (its head anchored in the sidecar file) and on a PostgreSQL state (its head
anchored in the ``audit_anchor`` table), with plain SQL on a connection of its own for the tampering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres import raw

from runtime.state import anchor, audit
from runtime.state.store import StateStore


@pytest.fixture
def store(state_location: Path | str) -> Iterator[StateStore]:
    if isinstance(state_location, Path):
        state_location = state_location.with_name("state.db")
    opened = StateStore.open(state_location)
    for i in range(1, 5):
        audit.append(opened, f"user{i}@x.io", "apply", {"changes": [f"models.m{i}"], "n": i}, commit=f"c{i}",
                     at=1000.0 + i)
    yield opened
    opened.close()


def _raw(store: StateStore) -> Any:
    """A plain SQL connection, as someone editing the database by hand would use."""
    return raw(store.path if store.path is not None else store._url)  # type: ignore[arg-type]


def _postgresql(store: StateStore) -> bool:
    return store.path is None


def _drop_triggers(conn: Any, store: StateStore) -> None:
    on = " ON audit" if _postgresql(store) else ""
    conn.execute(f"DROP TRIGGER audit_no_update{on}")
    conn.execute(f"DROP TRIGGER audit_no_delete{on}")


def _create_trigger(conn: Any, store: StateStore, name: str, event: str) -> None:
    if _postgresql(store):
        conn.execute(f"CREATE TRIGGER {name} BEFORE {event} ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only()")
    else:
        conn.execute(f"CREATE TRIGGER {name} BEFORE {event} ON audit BEGIN SELECT RAISE(ABORT, 'x'); END")


def _anchor_name(store: StateStore) -> str:
    return anchor.anchorage(store).name


def test_records_chain_and_read_back_in_order(store: StateStore) -> None:
    records = audit.log(store)
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == ""
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(records, records[1:], strict=False))
    assert all(audit.record_hash(r) == r.hash for r in records)
    assert (records[1].actor, records[1].action, records[1].commit, records[1].payload, records[1].at) == (
        "user2@x.io", "apply", "c2", {"changes": ["models.m2"], "n": 2}, 1002.0)
    assert [r.seq for r in audit.log(store, limit=2)] == [3, 4]
    assert audit.verify(store) == []


def test_the_head_is_anchored_in_the_table_and_the_sidecar_file(store: StateStore) -> None:
    last = audit.log(store)[-1]
    assert audit.head(store) == (4, last.hash)
    lineage, serial, count = store.identity()
    assert anchor.anchorage(store).read() == anchor.Anchor(4, last.hash, lineage, serial)
    assert count == 4 and serial >= 4 and len(lineage) == 32
    if _postgresql(store):
        assert _anchor_name(store) == "audit_anchor"
        return
    assert json.loads(audit.head_path(store).read_text()) == {"count": 4, "hash": last.hash, "lineage": lineage,
                                                              "serial": serial}
    assert audit.head_path(store).name == "state.db.audit-head"


def test_payloads_that_are_not_plain_json_still_verify_after_reopening(state_location: Path | str) -> None:
    path = state_location
    with StateStore.open(path) as store:
        record = audit.append(store, "me", "approve", {"path": Path("/x"), "pair": (1, 2), "f": 0.1})
        assert record.payload == {"path": "/x", "pair": [1, 2], "f": 0.1}
    with StateStore.open(path) as store:
        assert audit.verify(store) == []
        assert audit.log(store)[-1] == record


def test_sql_cannot_update_or_delete_records(store: StateStore) -> None:
    conn = _raw(store)
    with pytest.raises(store.dialect.database_errors, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(store.dialect.database_errors, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 4")
    if _postgresql(store):
        with pytest.raises(store.dialect.database_errors, match="append-only"):
            conn.execute("TRUNCATE audit")
    assert audit.verify(store) == []


def test_an_edited_record_is_detected_even_with_the_triggers_dropped(store: StateStore) -> None:
    conn = _raw(store)
    _drop_triggers(conn, store)
    conn.execute("""UPDATE audit SET payload = '{"changes":["models.evil"],"n":2}' WHERE seq = 2""")
    problems = audit.verify(store)
    assert "record 2: edited (its content does not match its hash)" in problems
    assert "the append-only trigger audit_no_update was dropped" in problems


def test_an_edit_with_its_hash_recomputed_breaks_the_chain(store: StateStore) -> None:
    records = audit.log(store)
    forged = records[1]
    forged.actor = "mallory"
    forged.hash = audit.record_hash(forged)
    conn = _raw(store)
    _drop_triggers(conn, store)
    conn.execute("UPDATE audit SET actor = ?, hash = ? WHERE seq = 2", (forged.actor, forged.hash))
    assert any("record 3: does not follow" in p for p in audit.verify(store))


def test_a_record_deleted_in_the_middle_is_detected(store: StateStore) -> None:
    conn = _raw(store)
    _drop_triggers(conn, store)
    conn.execute("DELETE FROM audit WHERE seq = 2")
    problems = audit.verify(store)
    assert "record 2 missing: deleted from the log" in problems
    assert any(p.startswith("record 3: does not follow") for p in problems)


def test_reordered_records_are_detected(store: StateStore) -> None:
    conn = _raw(store)
    _drop_triggers(conn, store)
    conn.execute("UPDATE audit SET seq = -1 WHERE seq = 2")
    conn.execute("UPDATE audit SET seq = 2 WHERE seq = 3")
    conn.execute("UPDATE audit SET seq = 3 WHERE seq = -1")
    problems = audit.verify(store)
    assert "record 2: edited (its content does not match its hash)" in problems
    assert any(p.startswith("record 2: does not follow") for p in problems)


def test_a_deleted_last_record_is_detected_by_both_anchors(store: StateStore) -> None:
    conn = _raw(store)
    _drop_triggers(conn, store)
    conn.execute("DELETE FROM audit WHERE seq = 4")
    problems = audit.verify(store)
    assert any("database says 4 records but the log ends at record 3" in p for p in problems)
    assert any(f"{_anchor_name(store)} says the log has 4 records but it ends at record 3" in p for p in problems)


def test_a_deleted_last_record_with_the_table_head_fixed_is_caught_by_the_sidecar(store: StateStore) -> None:
    records = audit.log(store)
    conn = _raw(store)
    _drop_triggers(conn, store)
    _create_trigger(conn, store, "audit_no_update", "UPDATE")
    conn.execute("DELETE FROM audit WHERE seq = 4")
    _create_trigger(conn, store, "audit_no_delete", "DELETE")
    conn.execute("UPDATE audit_head SET count = 3, hash = ?", (records[2].hash,))
    name = _anchor_name(store)
    assert audit.verify(store) == [
        f"{name} says the log has 4 records but it ends at record 3: the last records were deleted"]
    audit.append(store, "next@x.io", "apply", {})  # a later append must not overwrite the evidence
    assert any(f"{name} does not match record 4" in p for p in audit.verify(store))


def test_a_missing_sidecar_is_reported_and_a_lagging_one_is_not(store: StateStore) -> None:
    records = audit.log(store)
    place = anchor.anchorage(store)
    conn = _raw(store)
    if _postgresql(store):  # a crash before it was updated
        conn.execute("UPDATE audit_anchor SET count = 3, hash = ?, lineage = NULL, serial = NULL", (records[2].hash,))
    else:
        audit.head_path(store).write_text(json.dumps({"count": 3, "hash": records[2].hash}))
    assert audit.verify(store) == []
    audit.append(store, "me", "apply", {})
    assert place.read().count == 5  # type: ignore[union-attr]  # caught up
    if _postgresql(store):
        conn.execute("DELETE FROM audit_anchor")
    else:
        audit.head_path(store).unlink()
    assert audit.verify(store) == [f"{place.name} is missing: the log's head is not anchored"]


def test_an_append_in_a_rolled_back_transaction_leaves_no_trace(store: StateStore) -> None:
    before = anchor.anchorage(store).read()
    with pytest.raises(RuntimeError), store.transaction():
        audit.append(store, "me", "apply", {"x": 1})
        raise RuntimeError
    assert len(audit.log(store)) == 4
    assert anchor.anchorage(store).read() == before
    with store.transaction():
        record = audit.append(store, "me", "apply", {"x": 1})
    assert record.seq == 5 and audit.verify(store) == []


def test_an_empty_log_verifies(state_location: Path | str) -> None:
    with StateStore.open(state_location) as store:
        assert audit.log(store) == [] and audit.verify(store) == []
