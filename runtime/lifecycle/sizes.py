"""How big the artifact store is, by kind: what ``mlops status``, the report and ``mlops gc`` show.

Each object counts once, under the kind of what names it (:data:`runtime.lifecycle.references.KINDS`), or as
``unreferenced`` (what ``mlops gc`` would free) when nothing does; the inference log (``<root>/inference``, not
content-addressed) is its own kind. Locally an object's bytes are counted once however many trees link it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from compiler.resolve import Project
from runtime.artifacts.store import ArtifactStore, StoredObject
from runtime.lifecycle.references import KINDS, referenced_objects, references
from runtime.state.store import StateStore

UNREFERENCED = "unreferenced"
INFERENCE = "inference logs"
ALL_KINDS = (*KINDS, UNREFERENCED, INFERENCE)


@dataclass(frozen=True)
class StoreSize:
    """The artifact store's bytes and objects, in all and by kind."""

    location: str
    total_bytes: int
    objects: int
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    objects_by_kind: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "total_bytes": self.total_bytes, "objects": self.objects,
                "bytes_by_kind": dict(self.bytes_by_kind), "objects_by_kind": dict(self.objects_by_kind)}

    def summary(self) -> str:
        """``1.2 MB in 40 objects (models 1.0 MB, datasets 200.0 kB, ...)``: the kinds that hold anything."""
        parts = [f"{kind} {human_bytes(size)}" for kind, size in self.bytes_by_kind.items() if size]
        return (f"{human_bytes(self.total_bytes)} in {self.objects} object(s)"
                + (f" ({', '.join(parts)})" if parts else ""))


def store_line(size: StoreSize) -> str:
    """:meth:`StoreSize.summary`, and what ``mlops gc --apply`` would free of it."""
    free = size.bytes_by_kind.get(UNREFERENCED, 0)
    return size.summary() + (f"; `mlops gc --apply` frees about {human_bytes(free)}" if free else "")


def human_bytes(count: float) -> str:
    """Bytes in decimal units: ``512 B``, ``1.5 kB``, ``20.3 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def measure(location: str, listing: Iterable[StoredObject], kinds: dict[str, str], inference_bytes: int) -> StoreSize:
    """The size of a listing whose referenced digests have ``kinds`` (the others are unreferenced)."""
    by_kind = dict.fromkeys(ALL_KINDS, 0)
    counts = dict.fromkeys(ALL_KINDS, 0)
    total = objects = 0
    for item in listing:
        kind = kinds.get(item.digest, UNREFERENCED)
        by_kind[kind] += item.size
        counts[kind] += 1
        total += item.size
        objects += 1
    by_kind[INFERENCE] = inference_bytes
    return StoreSize(location, total + inference_bytes, objects, by_kind, counts)


def store_size(project: Project, store: StateStore, artifacts: ArtifactStore) -> StoreSize:
    """The store's size now, by kind, with the versions each model's ``keep_versions`` keeps as referenced."""
    named = referenced_objects(references(project, store, None), artifacts)
    return measure(artifacts.root, artifacts.objects(), named.kinds, artifacts.usage("inference"))
