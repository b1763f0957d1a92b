"""``mlops gc``: free every object of the artifact store that the state no longer names.

:func:`collect` is the one entry point. A dry run (the default) says what would go; ``apply=True`` deletes it:

1. Under the state lock (:func:`runtime.state.lock.exclusive`, the one every apply takes), so no apply records a
   new reference, or reuses an object about to go, while gc runs.
2. ``started`` is read from the store's own clock (the filesystem's, the S3 server's); an object written (or
   linked in) at or after it is never deleted, whatever names it: a writer outside the lock (a worker of a
   killed apply still finishing) loses nothing.
3. The references are computed (:mod:`runtime.lifecycle.references`) and expanded to objects (a directory's
   manifest and files); the store is listed; garbage = listed, unreferenced, older than ``started``.
4. Model versions whose files go are marked collected (one ``gc_versions`` audit record) *before* any delete:
   the registry never shows a version as whole while its file is being deleted.
5. Deletion, in an order that keeps the store consistent at every instant: first the manifests of directories
   the state ever named (locally each with its tree of hard links), then every other garbage object. So a
   manifest still present has all its files, and no referenced object is ever touched. A kill -9 anywhere leaves
   only garbage behind, which the next gc finds unreferenced again and frees (deleting what is gone is no error).
6. Temporary files crashed writers left (older than an hour) go too; then one ``gc`` audit record says how many
   objects and bytes were freed, and the bytes before and after.

Before step 3, under the same lock, data past its retention is expired (:mod:`runtime.lifecycle.retention`) and
the erasures no version in use depends on any more are closed; a dry run only lists what would expire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from compiler.resolve import Project
from runtime.artifacts.store import ArtifactError, ArtifactStore, StoredObject, parse_uri
from runtime.lifecycle import erasure, retention
from runtime.lifecycle.references import GC_VERSIONS, referenced_objects, references
from runtime.lifecycle.retention import Expiry
from runtime.lifecycle.sizes import StoreSize, measure
from runtime.provenance import provenance
from runtime.state import audit
from runtime.state.lock import exclusive
from runtime.state.store import StateStore
from runtime.workspace import Workspace

GC = "gc"
"""The action of the audit record of each ``gc --apply``."""
BATCH = 100
"""Objects deleted per request (one S3 ``DeleteObjects``; locally one unlink each)."""
TEMPORARY_AGE_S = 3600.0
"""Temporary files of writers older than this are a crash's leftovers (locally)."""

Progress = Callable[[int, int], None]
"""Called after each batch with (objects freed so far, bytes freed so far)."""


@dataclass
class GcReport:
    """What a collection found and (with ``applied``) did."""

    applied: bool
    keep: int | None
    started_at: float
    """The store's clock when gc started: nothing written at or after it is deleted."""
    before: StoreSize
    garbage_objects: int
    garbage_bytes: int
    """What is (or, in a dry run, would be) freed."""
    freed_objects: int = 0
    freed_bytes: int = 0
    too_new: int = 0
    """Unreferenced objects written after gc started: kept (a writer may be about to record them)."""
    released_versions: dict[str, list[int]] = field(default_factory=dict)
    """Model -> versions whose model files are (or would be) freed; they stay in the registry, marked collected."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """Artifacts the state names whose objects cannot all be read (already broken; reported, never the cause of
    a delete)."""
    temporary_removed: int = 0
    expired: list[Expiry] = field(default_factory=list)
    """Data past its retention, expired first (:func:`~runtime.lifecycle.retention.expire_due`); in a dry run,
    what would expire."""

    @property
    def after_bytes(self) -> int:
        return self.before.total_bytes - self.freed_bytes

    def to_json(self) -> dict[str, Any]:
        return {"applied": self.applied, "keep": self.keep, "started_at": self.started_at,
                "before": self.before.to_json(), "garbage": {"objects": self.garbage_objects,
                                                             "bytes": self.garbage_bytes},
                "freed": {"objects": self.freed_objects, "bytes": self.freed_bytes},
                "bytes_before": self.before.total_bytes, "bytes_after": self.after_bytes,
                "kept_too_new": self.too_new, "released_versions": self.released_versions,
                "unreadable": self.unreadable, "temporary_removed": self.temporary_removed,
                "expired": [e.to_json() for e in self.expired]}


def collect(project: Project, store: StateStore, artifacts: ArtifactStore, *, apply: bool, keep: int | None = None,
            lock_timeout: float = 0.0, progress: Progress | None = None, now: float | None = None) -> GcReport:
    """Find (and with ``apply``, free) the objects the state no longer names; ``keep`` overrides every model's
    ``keep_versions``. Applying takes the state lock, waiting up to ``lock_timeout`` seconds for it. ``now`` is
    the time retention is judged at (default: the current time)."""
    if not apply:
        report = _plan(project, store, artifacts, keep)[0]
        report.expired = retention.due(project, store, now)
        return report
    origin = provenance(project.root)
    with exclusive(Workspace.of(project).state, "gc", origin.actor, timeout=lock_timeout):
        expired = retention.expire_due(project, store, artifacts, now=now, actor=origin.actor)  # retention first
        erasure.settle(store)
        report, garbage, manifests = _plan(project, store, artifacts, keep)
        report.expired = expired
        if report.released_versions:
            audit.append(store, origin.actor, GC_VERSIONS, {"versions": report.released_versions, "keep": keep},
                         origin.commit)
        ordered = [o for o in garbage if o.digest in manifests] + [o for o in garbage if o.digest not in manifests]
        for start in range(0, len(ordered), BATCH):
            batch = ordered[start:start + BATCH]
            artifacts.delete_objects([o.digest for o in batch])
            report.freed_objects += len(batch)
            report.freed_bytes += sum(o.size for o in batch)
            if progress is not None:
                progress(report.freed_objects, report.freed_bytes)
        report.applied = True
        report.temporary_removed = artifacts.cleanup_temp(TEMPORARY_AGE_S)
        audit.append(store, origin.actor, GC, {
            "objects_freed": report.freed_objects, "bytes_freed": report.freed_bytes,
            "bytes_before": report.before.total_bytes, "bytes_after": report.after_bytes, "keep": keep,
            "versions_collected": report.released_versions, "store": artifacts.root}, origin.commit)
    return report


def collect_project(project: Project, *, apply: bool, keep: int | None = None, lock_timeout: float = 0.0,
                    progress: Progress | None = None) -> GcReport:
    """:func:`collect` on the project's own state and artifact store."""
    workspace = Workspace.of(project)
    with StateStore.open(workspace.state) as store:
        return collect(project, store, ArtifactStore(workspace.artifact_root), apply=apply, keep=keep,
                       lock_timeout=lock_timeout, progress=progress)


def _plan(project: Project, store: StateStore, artifacts: ArtifactStore,
          keep: int | None) -> tuple[GcReport, list[StoredObject], set[str]]:
    """The report of a dry run, the garbage (oldest first) and the digests of the directory manifests the state
    ever named (deleted first)."""
    started = artifacts.clock()
    refs = references(project, store, keep)
    named = referenced_objects(refs, artifacts)
    listing = list(artifacts.objects())
    before = measure(artifacts.root, listing, named.kinds, artifacts.usage("inference"))
    unreferenced = [o for o in listing if o.digest not in named.kinds]
    garbage = sorted((o for o in unreferenced if o.written_at < started), key=lambda o: (o.written_at, o.digest))
    kept = {o.digest for o in listing} - {o.digest for o in garbage}
    released: dict[str, list[int]] = {}
    for model, version, uri in refs.released:  # its file goes now (or is gone already): marked collected
        if parse_uri(uri)[1] not in kept:
            released.setdefault(model, []).append(version)
    report = GcReport(False, keep, started, before, len(garbage), sum(o.size for o in garbage),
                      too_new=len(unreferenced) - len(garbage), released_versions=released,
                      unreadable=named.unreadable)
    return report, garbage, _manifests(store)


def _manifests(store: StateStore) -> set[str]:
    """The digests of the directory manifests any row of the state names (current or not)."""
    out = set()
    for uri in store.named_artifacts():
        try:
            is_dir, digest = parse_uri(uri)
        except ArtifactError:
            continue
        if is_dir:
            out.add(digest)
    return out
