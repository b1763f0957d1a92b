"""The state database's schema as an ordered list of migration steps, tracked by ``PRAGMA user_version``.

Step ``i`` (0-based) takes the schema from version ``i`` to ``i + 1``. A step is a tuple of SQL
statements run in one ``BEGIN IMMEDIATE`` transaction together with the version bump, so a crash
mid-migration leaves the previous version intact. Append new steps; never edit a released one.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> migrate(conn)
3
>>> migrate(conn)   # already current: nothing to do
3
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

Step = tuple[str, ...]

V1: Step = (
    # One row per node outcome; the plan compares the desired graph with the latest succeeded row per node.
    """CREATE TABLE node_results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        node_id TEXT NOT NULL,
        address TEXT NOT NULL,
        kind TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        config TEXT NOT NULL,
        code_hash TEXT,
        data_hash TEXT,
        upstream TEXT NOT NULL,
        status TEXT NOT NULL,
        outputs TEXT NOT NULL,
        run_id TEXT,
        finished_at REAL NOT NULL
    )""",
    "CREATE INDEX node_results_by_node ON node_results (node_id, status, id)",
    "CREATE INDEX node_results_by_status ON node_results (status, node_id, id)",
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        address TEXT NOT NULL,
        kind TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        device TEXT NOT NULL,
        git_commit TEXT,
        git_dirty INTEGER NOT NULL,
        metrics TEXT NOT NULL,
        log_uri TEXT,
        error TEXT
    )""",
    "CREATE INDEX runs_by_address ON runs (address, started_at)",
    "CREATE INDEX runs_by_start ON runs (started_at)",
    """CREATE TABLE metrics (
        run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        step INTEGER NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (run_id, name, step)
    ) WITHOUT ROWID""",
    """CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        address TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        artifact_uri TEXT,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX snapshots_by_address ON snapshots (address, id)",
    # The highest version ever handed out per model: versions are never reused, even after a row is deleted.
    """CREATE TABLE model_counters (
        model TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE model_versions (
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        artifact_uri TEXT NOT NULL,
        run_id TEXT,
        metrics TEXT NOT NULL,
        params TEXT NOT NULL,
        code_hash TEXT,
        git_commit TEXT,
        data TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (model, version)
    ) WITHOUT ROWID""",
    "CREATE INDEX model_versions_by_fingerprint ON model_versions (model, fingerprint)",
    """CREATE TABLE gate_decisions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        gate TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        checks TEXT NOT NULL,
        decided_at REAL NOT NULL,
        FOREIGN KEY (model, version) REFERENCES model_versions (model, version) ON DELETE CASCADE
    )""",
    "CREATE INDEX gate_decisions_by_version ON gate_decisions (gate, model, version, id)",
    """CREATE TABLE approvals (
        gate TEXT NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        approver TEXT NOT NULL,
        approved_at REAL NOT NULL,
        PRIMARY KEY (gate, model, version, approver),
        FOREIGN KEY (model, version) REFERENCES model_versions (model, version) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    """CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        desired_version INTEGER,
        live_version INTEGER,
        status TEXT NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE file_hashes (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        inode INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    ) WITHOUT ROWID""",
    # The audit trail: append-only, hash-chained (see runtime/state/audit.py).
    """CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        git_commit TEXT,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        count INTEGER NOT NULL,
        hash TEXT NOT NULL
    )""",
    "INSERT INTO audit_head (id, count, hash) VALUES (1, 0, '')",
)

V2: Step = (
    # Live operations: monitor results with their history, label feedback, retrain requests from
    # monitor breaches, rollback pins, and the reconciler's last sync.
    """CREATE TABLE monitor_results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        monitor TEXT NOT NULL,
        deployment TEXT NOT NULL,
        version INTEGER,
        at REAL NOT NULL,
        breached INTEGER NOT NULL,
        checks TEXT NOT NULL,
        actions TEXT NOT NULL
    )""",
    "CREATE INDEX monitor_results_by_monitor ON monitor_results (monitor, id)",
    """CREATE TABLE feedback (
        id TEXT PRIMARY KEY,
        label REAL NOT NULL,
        at REAL NOT NULL
    )""",
    """CREATE TABLE retrain_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL,
        consumed_by INTEGER
    )""",
    "CREATE INDEX retrain_requests_open ON retrain_requests (model, consumed_by)",
    "ALTER TABLE deployments ADD COLUMN pinned_version INTEGER",
    "ALTER TABLE deployments ADD COLUMN pin_reason TEXT",
    """CREATE TABLE reconciler (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        commit_id TEXT,
        synced_at REAL,
        tick_at REAL,
        error TEXT,
        errors INTEGER NOT NULL DEFAULT 0
    )""",
)

V3: Step = (
    # The state's identity (Terraform's lineage and serial): ``lineage`` is fixed when the state is created,
    # ``serial`` grows with every write transaction; both are anchored in the audit-head sidecar.
    """CREATE TABLE state_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        lineage TEXT NOT NULL,
        serial INTEGER NOT NULL,
        created_at REAL NOT NULL
    )""",
    "INSERT INTO state_meta (id, lineage, serial, created_at) VALUES (1, lower(hex(randomblob(16))),"
    " (SELECT count FROM audit_head WHERE id = 1), (julianday('now') - 2440587.5) * 86400.0)",
    # An approval takes effect only with its record in the hash chain: the record's seq and hash.
    "ALTER TABLE approvals ADD COLUMN audit_seq INTEGER",
    "ALTER TABLE approvals ADD COLUMN audit_hash TEXT",
    # Approvals recorded before this step: linked to their `approve` record when it exists (one written
    # behind mlops' back has none and stays unlinked, so it counts for nothing).
    """UPDATE approvals SET (audit_seq, audit_hash) = (
        SELECT a.seq, a.hash FROM audit a WHERE a.action = 'approve' AND a.actor = approvals.approver
        AND json_extract(a.payload, '$.gate') = 'gates.' || approvals.gate
        AND json_extract(a.payload, '$.model') = approvals.model
        AND json_extract(a.payload, '$.version') = approvals.version ORDER BY a.seq LIMIT 1)""",
)

V4: Step = (
    # A gate decision takes effect only with its ``decide`` record in the hash chain: the record's seq and hash.
    # Decisions made before this step are adopted into the chain by :func:`adopt_decisions` when it runs.
    "ALTER TABLE gate_decisions ADD COLUMN audit_seq INTEGER",
    "ALTER TABLE gate_decisions ADD COLUMN audit_hash TEXT",
)

V5: Step = (
    # A model version's input signature (runtime/endpoint/signature.py): {"columns": {name: type}, "source": ...}.
    "ALTER TABLE model_versions ADD COLUMN signature TEXT",
)

V6: Step = (
    # Data mlops no longer holds (runtime/lifecycle/): a source snapshot or a derived dataset's output that
    # expired (past its retention_days) or was erased (an erasure request), one row per record removed.
    # ``item_kind`` and ``item_id`` name the ``snapshots`` or ``node_results`` row; the rest copies what it
    # held, so the history outlives that row. ``origin`` is the dataset whose retention or erasure caused it.
    """CREATE TABLE data_removals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        item_kind TEXT NOT NULL,
        item_id INTEGER NOT NULL,
        address TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        artifact_uri TEXT,
        created_at REAL NOT NULL,
        removal TEXT NOT NULL,
        origin TEXT NOT NULL,
        reason TEXT NOT NULL,
        request_id INTEGER,
        removed_at REAL NOT NULL,
        audit_seq INTEGER
    )""",
    "CREATE UNIQUE INDEX data_removals_by_item ON data_removals (item_kind, item_id)",
    "CREATE INDEX data_removals_by_address ON data_removals (address, id)",
    # An erasure request (``mlops erase``): the dataset, why, who asked, and the model versions trained on it.
    """CREATE TABLE erasure_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset TEXT NOT NULL,
        reason TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at REAL NOT NULL,
        models TEXT NOT NULL,
        closed_at REAL
    )""",
)

MIGRATIONS: tuple[Step, ...] = (V1, V2, V3, V4, V5, V6)
"""Every step in order; ``len(MIGRATIONS)`` is the current schema version."""


class SchemaTooNew(Exception):
    """The database was written by a newer mlops (its schema version is above the latest known)."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's ``PRAGMA user_version``."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, steps: Sequence[Step] = MIGRATIONS) -> int:
    """Apply the steps the database lacks, each atomically; return the resulting version.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so the explicit transactions hold.
    """
    current = schema_version(conn)
    if current > len(steps):
        raise SchemaTooNew(f"the state database has schema version {current}, newer than this mlops "
                           f"understands ({len(steps)}); upgrade mlops")
    for version in range(current, len(steps)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) != version:  # another process migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            for statement in steps[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return schema_version(conn)
