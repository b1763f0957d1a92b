"""Data mlops holds for its datasets, and what it no longer holds: expiries and erasures (a store mixin).

A dataset's data is its source snapshots (``snapshots`` rows) and its derived outputs (succeeded
``transform`` rows of ``node_results``); :meth:`RemovalRecords.data_items` lists both as
:class:`~runtime.state.records.DataItem`, each with its :class:`~runtime.state.records.DataRemoval` once it
expired or was erased (``data_removals``, schema 6). The rows themselves stay: lineage still names them.
"""

from __future__ import annotations

import time

from runtime.state.access import StoreAccess
from runtime.state.records import DataItem, DataRemoval, ErasureRequest
from runtime.state.rows import data_removal_of, dump_json, erasure_request_of, load_json


def _digest(value: str) -> str:
    return value.rsplit(":", 1)[-1]


class RemovalRecords(StoreAccess):
    """The ``data_removals`` and ``erasure_requests`` tables, and the data items they are about."""

    def data_items(self) -> list[DataItem]:
        """Every source snapshot and derived output ever recorded, oldest first, with its removal if any."""
        removed = {(r.item_kind, r.item_id): r for r in self.data_removals()}
        items = [DataItem("snapshot", int(row["id"]), row["address"], _digest(row["content_hash"]),
                          row["artifact_uri"], row["fingerprint"], float(row["created_at"]))
                 for row in self._rows("SELECT id, address, fingerprint, content_hash, artifact_uri, created_at"
                                       " FROM snapshots ORDER BY id")]
        for row in self._rows("SELECT id, address, fingerprint, upstream, outputs, finished_at FROM node_results"
                              " WHERE kind = 'transform' AND status = 'succeeded' ORDER BY id"):
            artifact = (load_json(row["outputs"]) or {}).get("artifact")
            if isinstance(artifact, str) and artifact:
                items.append(DataItem("transform", int(row["id"]), row["address"], _digest(artifact), artifact,
                                      row["fingerprint"], float(row["finished_at"]), load_json(row["upstream"]) or {}))
        for item in items:
            item.removal = removed.get((item.item_kind, item.item_id))
        items.sort(key=lambda item: (item.created_at, item.item_kind, item.item_id))
        return items

    def held_snapshot_artifacts(self) -> list[tuple[str, str]]:
        """(dataset address, artifact URI) of every snapshot that stored one and was neither expired nor erased,
        oldest first."""
        rows = self._rows("SELECT s.address, s.artifact_uri FROM snapshots s WHERE s.artifact_uri IS NOT NULL AND"
                          " NOT EXISTS (SELECT 1 FROM data_removals d WHERE d.item_kind = 'snapshot' AND"
                          " d.item_id = s.id) ORDER BY s.id")
        return [(str(row[0]), str(row[1])) for row in rows]

    def record_removal(self, removal: DataRemoval) -> None:
        """Record that a data item expired or was erased (at most once per item)."""
        self._exec(
            "INSERT INTO data_removals (item_kind, item_id, address, content_hash, artifact_uri, created_at, removal,"
            " origin, reason, request_id, removed_at, audit_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (item_kind, item_id) DO NOTHING",
            (removal.item_kind, removal.item_id, removal.address, removal.content_hash, removal.artifact_uri,
             removal.created_at, removal.removal, removal.origin, removal.reason, removal.request_id,
             removal.removed_at or time.time(), removal.audit_seq))

    def data_removals(self, request_id: int | None = None) -> list[DataRemoval]:
        """Every removal, oldest first (only those of one erasure request when ``request_id`` is given)."""
        if request_id is None:
            rows = self._rows("SELECT * FROM data_removals ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM data_removals WHERE request_id = ? ORDER BY id", (request_id,))
        return [data_removal_of(row) for row in rows]

    # --- erasure requests ------------------------------------------------------------------------

    def add_erasure_request(self, dataset: str, reason: str, requested_by: str, models: list[str],
                            at: float | None = None) -> int:
        """Record an erasure request; returns its id."""
        with self.transaction():
            rows = self._conn.execute(
                "INSERT INTO erasure_requests (dataset, reason, requested_by, requested_at, models)"
                " VALUES (?,?,?,?,?) RETURNING id",
                (dataset, reason, requested_by, time.time() if at is None else at, dump_json(models))).fetchall()
            return int(rows[0][0])

    def erasure_requests(self) -> list[ErasureRequest]:
        """Every erasure request, oldest first."""
        return [erasure_request_of(row) for row in self._rows("SELECT * FROM erasure_requests ORDER BY id")]

    def close_erasure_request(self, request_id: int, at: float | None = None) -> None:
        """Mark an erasure request done: no model version in use is trained on its data any more."""
        self._exec("UPDATE erasure_requests SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                   (time.time() if at is None else at, request_id))
