"""Schema 6 (issue 18): the state records which snapshots and derived outputs expired or were erased, and the
erasure requests. On a SQLite file and a real PostgreSQL database (``state_location``); the upgrade of a schema-5
SQLite file keeps what it holds."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from runtime.state.migrations import MIGRATIONS, migrate
from runtime.state.records import DataRemoval, NodeResult, Snapshot
from runtime.state.store import StateStore

RAW = "sha256:" + "aa" * 32
FEATURES = "dir:sha256:" + "bb" * 32


def _fill(store: StateStore) -> None:
    store.add_snapshot(Snapshot("datasets.raw", "fp-raw", "aa" * 32, RAW, 100.0))
    store.record_result(NodeResult("datasets.features/transform", "datasets.features", "transform", "fp-f", {},
                                   upstream={"datasets.raw/snapshot": "fp-raw"}, outputs={"artifact": FEATURES},
                                   finished_at=110.0))
    store.record_result(NodeResult("models.m/trial", "models.m", "trial", "fp-m", {}, outputs={"artifact": RAW},
                                   finished_at=120.0))


def test_data_items_and_their_removals_round_trip(state_location: Path | str) -> None:
    with StateStore.open(state_location) as store:
        assert store.schema_version() == len(MIGRATIONS) == 6
        _fill(store)
        raw, features = store.data_items()
        assert (raw.item_kind, raw.address, raw.content_hash, raw.artifact_uri, raw.created_at) == (
            "snapshot", "datasets.raw", "aa" * 32, RAW, 100.0)
        assert (features.item_kind, features.content_hash, features.upstream) == (
            "transform", "bb" * 32, {"datasets.raw/snapshot": "fp-raw"})
        assert raw.removal is None and features.removal is None
        assert store.held_snapshot_artifacts() == [("datasets.raw", RAW)]

        request = store.add_erasure_request("datasets.raw", "asked", "dpo@example.com", ["models.m@1"], at=200.0)
        removal = DataRemoval("snapshot", raw.item_id, "datasets.raw", raw.content_hash, RAW, 100.0, "erased",
                              "datasets.raw", "asked", request, 201.0, 7)
        store.record_removal(removal)
        store.record_removal(DataRemoval("snapshot", raw.item_id, "datasets.raw", raw.content_hash, RAW, 100.0,
                                         "expired", "datasets.raw", "again", None, 202.0))  # once per item
        assert store.data_removals() == [removal] and store.data_removals(request) == [removal]
        assert store.data_removals(request + 1) == []
        assert [i.removal for i in store.data_items()] == [removal, None]
        assert store.held_snapshot_artifacts() == []
        store.add_snapshot(Snapshot("datasets.raw", "fp-raw", "aa" * 32, RAW, 300.0))  # taken again: held
        assert store.held_snapshot_artifacts() == [("datasets.raw", RAW)]

        (asked,) = store.erasure_requests()
        assert (asked.id, asked.dataset, asked.reason, asked.requested_by, asked.models, asked.closed_at) == (
            request, "datasets.raw", "asked", "dpo@example.com", ["models.m@1"], None)
        store.close_erasure_request(request, at=400.0)
        store.close_erasure_request(request, at=500.0)  # closed once
        assert store.erasure_requests()[0].closed_at == 400.0


def test_a_schema_5_state_is_upgraded_with_its_snapshots_held(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:5]) == 5
    conn.execute("INSERT INTO snapshots (address, fingerprint, content_hash, artifact_uri, created_at)"
                 " VALUES ('datasets.raw', 'fp', ?, ?, 1.0)", ("aa" * 32, RAW))
    conn.close()
    with StateStore.open(path, check=False) as store:
        assert store.schema_version() == 6
        assert [(i.address, i.removal) for i in store.data_items()] == [("datasets.raw", None)]
        assert store.held_snapshot_artifacts() == [("datasets.raw", RAW)] and store.erasure_requests() == []
