"""The inference log: a sample of what a deployment was asked and answered, kept for its monitors.

Each serving replica appends JSON lines to its own file under
``<artifact root>/inference/<deployment>/<replica>.jsonl`` (one writer per file, so no locking). When the
artifact root is an object store (``s3://...``: replicas on other machines), a replica writes each flush as an
object of its own, ``<replica>-<time in ns>.jsonl`` (objects cannot be appended to), and readers list them.
A record::

    {"id": "3f2a...", "at": 1764150000.1, "version": 3, "inputs": {"amount": 12.5, ...},
     "prediction": 0.83, "latency_ms": 4.2, "request_id": "9c1e...", "rows": 1}

``inputs`` holds only the input signature's columns, less the PII columns the training data declares, and
is left empty for a row over the deployment's ``limits.max_logged_row_bytes``; ``latency_ms`` is the whole
request's, and ``request_id`` and ``rows`` say which request a row came in and how many rows it had, so
monitors count requests, not rows.

A replica's failures (the model's code raising) go to ``<deployment>/errors/<replica>.jsonl``, one JSON line
each with the request id and the traceback (``mlops logs deployments.NAME``).

Labels arrive later through ``mlops monitor feedback FILE`` (rows of ``id,label``) and are kept in
the state store; monitors join them to records by ``id``.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class InferenceRecord:
    id: str
    at: float
    version: int
    inputs: dict[str, Any]
    prediction: Any
    latency_ms: float
    request_id: str = ""
    rows: int = 1


@dataclass(frozen=True)
class ErrorRecord:
    """A request the model's own code failed on."""

    request_id: str
    at: float
    version: int
    error: str
    traceback: str


Location = Path | str
"""A local folder, or the URL of a prefix in an object store."""


def remote(location: Location) -> bool:
    """Whether ``location`` is in an object store rather than a local folder."""
    return "://" in str(location) and not str(location).startswith("file://")


def log_dir(artifact_root: str, deployment: str) -> Location:
    """Where a deployment's replicas write: a folder under a local artifact root, else a prefix of the store."""
    if remote(artifact_root):
        return f"{artifact_root.rstrip('/')}/inference/{deployment}"
    return Path(artifact_root.removeprefix("file://")) / "inference" / deployment


def error_dir(artifact_root: str, deployment: str) -> Location:
    """Where a deployment's replicas write the failures of the model's code."""
    where = log_dir(artifact_root, deployment)
    return f"{where}/errors" if isinstance(where, str) else where / "errors"


def _filesystem(location: str) -> tuple[Any, str]:
    """The fsspec filesystem of an object-store location (S3 configured as the artifact store is), and the
    path in it."""
    if location.startswith(("s3://", "s3a://")):
        from runtime.artifacts.s3 import S3Backend

        return S3Backend(location, {}).fs, location.partition("://")[2].rstrip("/")
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return fs, str(path).rstrip("/")


def _put_object(location: str, replica: str, text: str) -> None:
    """One flush as an object of its own: ``<replica>-<time in ns>.jsonl``."""
    fs, path = _filesystem(location)
    fs.pipe(f"{path}/{replica}-{time.time_ns()}.jsonl", text.encode())


def _texts(location: Location) -> Iterator[str]:
    """The text of every ``*.jsonl`` directly in ``location`` (a replica's file, or its flushes), by name."""
    if remote(location):
        fs, path = _filesystem(str(location))
        try:
            names = sorted(name for name in fs.ls(path, detail=False) if str(name).endswith(".jsonl"))
        except FileNotFoundError:
            return
        for name in names:
            yield fs.cat(name).decode("utf-8", errors="replace")
        return
    directory = Path(location)
    for file in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        yield file.read_text(encoding="utf-8", errors="replace")


def write_error(directory: Location, replica: str, record: ErrorRecord) -> None:
    """Append one failure (flushed and synced at once: there are few, and each is looked for)."""
    if remote(directory):
        _put_object(str(directory), replica, json.dumps(record.__dict__, separators=(",", ":")) + "\n")
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{replica}.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record.__dict__, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_errors(directory: Location, request_id: str | None = None) -> list[ErrorRecord]:
    """The failures of every replica, oldest first; only ``request_id``'s when given."""
    found = []
    for text in _texts(directory):
        for line in text.splitlines():
            try:
                raw = json.loads(line)
                record = ErrorRecord(str(raw["request_id"]), float(raw["at"]), int(raw["version"]),
                                     str(raw["error"]), str(raw["traceback"]))
            except (ValueError, KeyError, TypeError):
                continue
            if request_id is None or record.request_id == request_id:
                found.append(record)
    return sorted(found, key=lambda r: r.at)


class InferenceWriter:
    """Appends records for one replica; flushes every ``flush_every`` records, and a background thread
    flushes what is pending every ``flush_seconds`` so quiet traffic still reaches the monitors. In an object
    store, each flush is an object of its own."""

    def __init__(self, directory: Location, replica: str, flush_every: int = 64, flush_seconds: float = 1.0) -> None:
        self.replica = replica
        self.remote = str(directory) if remote(directory) else None
        self._buffer = io.StringIO()
        if self.remote is None:
            local = Path(directory)
            local.mkdir(parents=True, exist_ok=True)
            self.path = local / f"{replica}.jsonl"
            self._handle: TextIO = self.path.open("a", encoding="utf-8")
        else:
            self._handle = self._buffer
        self._pending = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        threading.Thread(target=self._flush_periodically, name="inference-log-flush", daemon=True).start()

    def write(self, record: InferenceRecord) -> None:
        line = json.dumps(record.__dict__, separators=(",", ":"), default=float) + "\n"
        with self._lock:
            self._handle.write(line)
            self._pending += 1
            if self._pending >= self.flush_every:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending or self._handle.closed:
            return
        if self.remote is not None:
            _put_object(self.remote, self.replica, self._buffer.getvalue())
            self._buffer.seek(0)
            self._buffer.truncate()
        else:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        self._pending = 0

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.flush_seconds):
            self.flush()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._flush_locked()
            self._handle.close()


def read(directory: Location, since: float = 0.0, limit: int | None = None) -> list[InferenceRecord]:
    """Records of every replica newer than ``since``, oldest first; the newest ``limit`` when given.

    A torn last line (a replica killed mid-write) is skipped, not an error.
    """
    records = list(_records(directory, since))
    records.sort(key=lambda r: r.at)
    return records[-limit:] if limit else records


def _records(directory: Location, since: float) -> Iterator[InferenceRecord]:
    for text in _texts(directory):
        for line in text.splitlines():
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue
            if raw.get("at", 0) > since:
                yield InferenceRecord(raw["id"], raw["at"], raw["version"], raw["inputs"], raw["prediction"],
                                      raw.get("latency_ms", 0.0), raw.get("request_id") or raw["id"],
                                      raw.get("rows", 1))
