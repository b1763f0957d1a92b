"""What data the state holds, what it was made from, and what was trained on data no longer held.

A dataset's data is its source snapshots and its derived outputs (:meth:`StateStore.data_items`). Lineage
between them is what was recorded: a derived output names each upstream node and the fingerprint it had
(``datasets.raw/snapshot`` -> fingerprint), a model version names the content of each dataset it read
(:attr:`~runtime.state.records.ModelVersion.data`). Both are resolved to the newest item that matches and
was made no later than the consumer, so a snapshot taken again with the same content after an expiry is a
new item, and the versions trained on it are not flagged.

Used by the plan (:func:`replacements`: what must run again), the views and the policy views
(:func:`add_state_refs`: ``refs.expired_data``), and by :mod:`~runtime.lifecycle.retention` and
:mod:`~runtime.lifecycle.erasure`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from compiler.graph import Graph
from compiler.resolve import Project
from runtime.artifacts.store import ArtifactError, ArtifactStore, parse_uri
from runtime.state.records import DataItem, DataRemoval, ModelVersion, NodeResult
from runtime.state.store import StateStore

DATA_KINDS = ("snapshot", "transform")
"""The node kinds whose output is a dataset's data."""


def digest(value: str) -> str:
    """The hex digest in a content hash or an artifact URI."""
    return value.rsplit(":", 1)[-1]


@dataclass
class Holdings:
    """Every data item of a state (held or removed), indexed by dataset."""

    items: list[DataItem]
    by_address: dict[str, list[DataItem]] = field(default_factory=dict)

    @classmethod
    def read(cls, store: StateStore) -> Holdings:
        items = store.data_items()
        by_address: dict[str, list[DataItem]] = {}
        for item in items:
            by_address.setdefault(item.address, []).append(item)
        return cls(items, by_address)

    @property
    def held(self) -> list[DataItem]:
        return [item for item in self.items if item.removal is None]

    @property
    def removals(self) -> list[DataRemoval]:
        return [item.removal for item in self.items if item.removal is not None]

    def used(self, address: str, value: str | None, at: float) -> DataItem | None:
        """The item of ``address`` whose content is ``value`` that a consumer made at ``at`` read: the newest
        made no later than ``at`` (else the newest at all)."""
        if not value:
            return None
        matching = [item for item in self.by_address.get(address, []) if item.content_hash == digest(value)]
        before = [item for item in matching if item.created_at <= at]
        chosen = before or matching
        return chosen[-1] if chosen else None

    def inputs(self, item: DataItem) -> list[DataItem]:
        """The items a derived output was made from (those the state still names)."""
        found = []
        for node_id, fingerprint in sorted(item.upstream.items()):
            address = node_id.partition("/")[0]
            if not address.startswith("datasets."):
                continue
            matching = [u for u in self.by_address.get(address, []) if u.fingerprint == fingerprint]
            before = [u for u in matching if u.created_at <= item.created_at]
            if before or matching:
                found.append((before or matching)[-1])
        return found

    def lineage(self, items: Iterable[DataItem]) -> list[DataItem]:
        """``items`` and everything they were made from, each once."""
        seen: dict[tuple[str, int], DataItem] = {}
        todo = list(items)
        while todo:
            item = todo.pop()
            key = (item.item_kind, item.item_id)
            if key not in seen:
                seen[key] = item
                todo.extend(self.inputs(item))
        return list(seen.values())

    def trained_on(self, version: ModelVersion) -> list[DataItem]:
        """The items a model version was trained on, and what they were made from."""
        direct = [self.used(address, value, version.created_at) for address, value in sorted(version.data.items())]
        return self.lineage(item for item in direct if item is not None)

    def removals_under(self, version: ModelVersion) -> list[DataRemoval]:
        """Why a model version was trained on data no longer held: the removals in its lineage, erasures first."""
        found = [item.removal for item in self.trained_on(version) if item.removal is not None]
        return sorted(found, key=lambda r: (r.removal != "erased", r.origin, r.address))

    def of_result(self, result: NodeResult) -> DataItem | None:
        """The data item a dataset node's recorded result names."""
        if result.kind == "transform":
            return next((i for i in self.by_address.get(result.address, []) if i.item_kind == "transform"
                         and i.created_at == result.finished_at and i.fingerprint == result.fingerprint),
                        self.used(result.address, result.outputs.get("artifact"), result.finished_at))
        value = result.outputs.get("content_hash") or result.outputs.get("artifact")
        return self.used(result.address, str(value) if value else None, result.finished_at)


def label(removal: DataRemoval) -> str:
    """``erased data: datasets.raw`` / ``expired data: datasets.raw``: a plan reason, a flag."""
    return f"{removal.removal} data: {removal.origin}"


def in_use(store: StateStore, model: str) -> list[ModelVersion]:
    """A model's versions in use: its newest, and those deployments serve or are to serve."""
    versions = {v.version: v for v in store.model_versions(model)}
    numbers = [max(versions)] if versions else []
    for deployment in store.deployments():
        if deployment.model == model:
            numbers += [n for n in (deployment.live_version, deployment.desired_version) if n is not None]
    return [versions[n] for n in sorted(set(numbers)) if n in versions]


def replacements(project: Project, graph: Graph, store: StateStore, recorded: dict[str, NodeResult]) -> dict[str, str]:
    """Node id -> why it must run again because data it recorded or trained on expired or was erased.

    A dataset node whose recorded output was removed is taken again (a snapshot re-reads the source, which is
    the user's; a transform runs again); every trial of a model whose newest version was trained on removed
    data retrains (``erased data: datasets.raw``). Nothing removed: nothing to read beyond one query.
    """
    if not store.data_removals():
        return {}
    holdings = Holdings.read(store)
    forced: dict[str, str] = {}
    for node in graph.nodes():
        result = recorded.get(node.id)
        if node.kind in DATA_KINDS and result is not None:
            item = holdings.of_result(result)
            if item is not None and item.removal is not None:
                forced[node.id] = label(item.removal)
    for name in project.spec.models:
        versions = store.model_versions(name)
        removals = holdings.removals_under(versions[-1]) if versions else []
        if removals:
            for node in graph.by_address(f"models.{name}"):
                if node.kind == "trial":
                    forced[node.id] = label(removals[0])
    return forced


def add_state_refs(project: Project, store: StateStore) -> None:
    """Add what the state knows to the models' policy views: ``refs.expired_data`` (the datasets whose expired
    or erased data a version in use was trained on) and ``refs.erased_data`` (erased only), sorted."""
    holdings = Holdings.read(store) if store.data_removals() else None
    for name in project.spec.models:
        view = project.views.get(f"models.{name}")
        if view is None:
            continue
        removals = [r for v in in_use(store, name) for r in holdings.removals_under(v)] if holdings else []
        view["refs"]["expired_data"] = sorted({r.origin for r in removals})
        view["refs"]["erased_data"] = sorted({r.origin for r in removals if r.removal == "erased"})


def objects_of(artifacts: ArtifactStore, uri: str | None) -> set[str]:
    """The digests of the objects an artifact is made of: a file's, or a directory's manifest and files (the
    manifest alone when it cannot be read)."""
    if not uri:
        return set()
    try:
        return set(artifacts.members(uri))
    except (ArtifactError, OSError):
        return {parse_uri(uri)[1]}


def delete_data(artifacts: ArtifactStore, items: Iterable[DataItem], keep: Iterable[DataItem] = ()) -> int:
    """Delete the objects of ``items`` but those ``keep`` still needs; returns how many objects were deleted."""
    kept: set[str] = set()
    for item in keep:
        kept |= objects_of(artifacts, item.artifact_uri)
    doomed: set[str] = set()
    for item in items:
        doomed |= objects_of(artifacts, item.artifact_uri)
    gone = sorted(doomed - kept)
    artifacts.delete_objects(gone)
    return len(gone)
