"""The lineage view behind ``mlops lineage ADDR[@N]``: where a model version or a dataset snapshot came from.

A model version's lineage is what was recorded when it was trained (its run, params, code and the
content of every dataset it read, back to the source snapshots); a dataset's is its snapshots (source
data hashed, or a transform's stored output), numbered 1, 2, ... in the order they were made::

    tree = lineage(project, store, "models.churn@1")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compiler.resolve import Project
from compiler.suggest import did_you_mean
from runtime.errors import ViewError
from runtime.state.records import DataRemoval, ModelVersion, NodeResult, Run, Snapshot
from runtime.state.store import StateStore
from runtime.views.format import digest
from runtime.views.models import model_name, no_version
from runtime.views.runs import run_json


@dataclass
class DataLineage:
    """A dataset as a model version (or another dataset) saw it, and what it was made from."""

    address: str
    content_hash: str | None
    """The content's sha256 (for a derived dataset, the hash of its stored output directory)."""
    artifact_uri: str | None = None
    fingerprint: str | None = None
    created_at: float | None = None
    run_id: str | None = None
    """The transform run that made it (derived datasets)."""
    upstream: list[DataLineage] = field(default_factory=list)
    removal: DataRemoval | None = None
    """Set when mlops no longer holds this content: it expired or was erased (the link stays, marked)."""

    def to_json(self) -> dict[str, Any]:
        removal = self.removal
        return {"address": self.address, "content_hash": self.content_hash, "artifact_uri": self.artifact_uri,
                "fingerprint": self.fingerprint, "created_at": self.created_at, "run_id": self.run_id,
                "removed": None if removal is None else {
                    "removal": removal.removal, "origin": removal.origin, "reason": removal.reason,
                    "erasure": removal.request_id, "removed_at": removal.removed_at},
                "upstream": [u.to_json() for u in self.upstream]}

    def walk(self) -> list[DataLineage]:
        """This node and everything upstream of it."""
        return [self, *(node for parent in self.upstream for node in parent.walk())]


@dataclass
class ModelLineage:
    address: str
    version: ModelVersion
    run: Run | None
    data: list[DataLineage]
    """What the version was trained on, as recorded, back to the source snapshots."""
    upstream_datasets: list[str] = field(default_factory=list)
    """Every dataset the model reads, transitively, per the spec's graph now."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": "model", "address": self.address, "version": self.version.version,
                "status": self.version.status, "reason": self.version.reason, "params": self.version.params,
                "metrics": self.version.metrics, "code_hash": self.version.code_hash,
                "git_commit": self.version.git_commit, "fingerprint": self.version.fingerprint,
                "artifact_uri": self.version.artifact_uri, "created_at": self.version.created_at,
                "run": run_json(self.run) if self.run else None,
                "data": {d.address: d.content_hash for d in self.data},
                "datasets": [d.to_json() for d in self.data], "upstream_datasets": self.upstream_datasets}


@dataclass
class DatasetSnapshot:
    number: int
    """1, 2, ... in the order the snapshots were made (what ``datasets.x@N`` names)."""
    lineage: DataLineage
    used_by: list[str]
    """Model versions (``models.churn@1``) whose lineage includes this snapshot."""

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, **self.lineage.to_json(), "used_by": self.used_by}


@dataclass
class DatasetLineage:
    address: str
    source: str | None
    """The source path, ``None`` for a derived dataset."""
    transform: str | None
    upstream: list[str]
    """Every dataset it derives from, per the spec's graph."""
    consumers: list[str]
    snapshots: list[DatasetSnapshot]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "dataset", "address": self.address, "source": self.source, "transform": self.transform,
                "upstream": self.upstream, "consumers": self.consumers,
                "snapshots": [s.to_json() for s in self.snapshots]}


def parse_target(text: str) -> tuple[str, int | None]:
    """``models.churn@3`` -> ``("models.churn", 3)``; ``datasets.x`` -> ``("datasets.x", None)``."""
    address, at, number = text.partition("@")
    if not at:
        return address, None
    if not number.isdigit() or int(number) < 1:
        raise ViewError.one(f"'{text}': expected ADDRESS@N with N a version number (1, 2, ...)")
    return address, int(number)


def lineage(project: Project, store: StateStore, target: str) -> ModelLineage | DatasetLineage:
    """Where ``models.NAME[@N]`` (the newest version without ``@N``) or ``datasets.NAME[@N]`` came from."""
    address, number = parse_target(target)
    section, _, name = address.partition(".")
    if section == "models" and name:
        return _model_lineage(project, store, model_name(project, store, address), number)
    if section == "datasets" and name:
        if name not in project.spec.datasets and not _dataset_recorded(store, address):
            known = [f"datasets.{n}" for n in project.spec.datasets]
            raise ViewError.one(f"unknown dataset '{address}'{did_you_mean(address, known)}")
        return _dataset_lineage(project, store, address, number)
    candidates = [a for a in project.addresses() if a.startswith(("models.", "datasets."))]
    hint = did_you_mean(address, candidates)
    if not hint:
        named = [a for a in candidates if a.partition(".")[2] == address]
        hint = f" (did you mean '{named[0]}'?)" if named else ""
    if address in project.views:
        raise ViewError.one(f"'{address}': lineage covers models and datasets only")
    raise ViewError.one(f"unknown address '{address}'{hint}")


def _model_lineage(project: Project, store: StateStore, name: str, number: int | None) -> ModelLineage:
    versions = store.model_versions(name)
    if number is None:
        if not versions:
            raise ViewError.one(f"models.{name} has no versions yet: run `mlops apply`")
        version = versions[-1]
    else:
        found = store.get_model_version(name, number)
        if found is None:
            raise ViewError.one(no_version(name, number, store))
        version = found
    run = store.get_run(version.run_id) if version.run_id else None
    data = [_data_lineage(project, store, address, value, before=version.created_at)
            for address, value in sorted(version.data.items())]
    _mark_removed(data, _removed_index(store))
    refs = project.views.get(f"models.{name}", {}).get("refs", {})
    return ModelLineage(f"models.{name}", version, run, data, list(refs.get("datasets", [])))


def _dataset_recorded(store: StateStore, address: str) -> bool:
    return bool(store.snapshots(address) or store.succeeded_results(address))


def _data_lineage(project: Project, store: StateStore, address: str, value: str | None,
                  fingerprint: str | None = None, before: float | None = None) -> DataLineage:
    """The recorded lineage of one dataset content (by content hash / artifact URI, or by fingerprint): the
    newest match made no later than ``before`` (its consumer's time), else the newest."""
    def in_time(made: float) -> bool:
        return before is None or made <= before

    for timely in (True, False):
        for snapshot in reversed(store.snapshots(address)):
            if ((value is not None and digest(value) == snapshot.content_hash) or
                    (value is None and fingerprint == snapshot.fingerprint)) and (not timely or
                                                                                   in_time(snapshot.created_at)):
                return _from_snapshot(snapshot)
        for result in reversed(store.succeeded_results(address)):
            artifact = result.outputs.get("artifact")
            if result.kind == "transform" and ((value is not None and artifact == value) or
                                               (value is None and fingerprint == result.fingerprint)) and \
                    (not timely or in_time(result.finished_at)):
                return _from_transform(project, store, address, result)
    upstream = [_data_lineage(project, store, f"datasets.{parent}", None)
                for parent in _spec_parents(project, address)]
    return DataLineage(address, digest(value) if value else None, upstream=upstream)


def _spec_parents(project: Project, address: str) -> list[str]:
    dataset = project.spec.datasets.get(address.partition(".")[2])
    return list(dataset.from_ or []) if dataset else []


def _from_snapshot(snapshot: Snapshot) -> DataLineage:
    return DataLineage(snapshot.address, snapshot.content_hash, snapshot.artifact_uri, snapshot.fingerprint,
                       snapshot.created_at)


def _from_transform(project: Project, store: StateStore, address: str, result: NodeResult) -> DataLineage:
    artifact = result.outputs.get("artifact")
    upstream = [_data_lineage(project, store, node_id.partition("/")[0], None, fingerprint, result.finished_at)
                for node_id, fingerprint in sorted(result.upstream.items())]
    return DataLineage(address, digest(artifact) if artifact else None, artifact, result.fingerprint,
                       result.finished_at, result.run_id, upstream)


def _dataset_lineage(project: Project, store: StateStore, address: str, number: int | None) -> DatasetLineage:
    name = address.partition(".")[2]
    dataset = project.spec.datasets.get(name)
    removed = _removed_index(store)
    snapshots = [_from_snapshot(s) for s in store.snapshots(address)]
    seen: set[tuple[str | None, int | None]] = set()  # an output made again after it was removed is listed again
    for result in store.succeeded_results(address):
        gone = removed.get((address, result.finished_at))
        key = (result.outputs.get("artifact"), gone.item_id if gone else None)
        if result.kind == "transform" and key not in seen:
            seen.add(key)
            snapshots.append(_from_transform(project, store, address, result))
    snapshots.sort(key=lambda s: s.created_at or 0.0)
    _mark_removed(snapshots, removed)
    users = _users(project, store)
    numbered = [DatasetSnapshot(i, s, users.get((address, s.content_hash, s.created_at), []))
                for i, s in enumerate(snapshots, 1)]
    if number is not None:
        if not 1 <= number <= len(numbered):
            have = f"it has {len(numbered)}" if numbered else "it has none yet"
            raise ViewError.one(f"{address} has no snapshot {number} ({have})")
        numbered = [numbered[number - 1]]
    view = project.views.get(address, {})
    refs = view.get("refs", {})
    return DatasetLineage(address, dataset.path if dataset else None, dataset.transform if dataset else None,
                          list(refs.get("upstream", [])), list(refs.get("consumers", [])), numbered)


def _users(project: Project, store: StateStore) -> dict[tuple[str, str | None, float | None], list[str]]:
    """(dataset address, content hash, when it was made) -> the model versions whose lineage includes it."""
    users: dict[tuple[str, str | None, float | None], list[str]] = {}
    for name in store.models():
        for version in store.model_versions(name):
            label = f"models.{name}@{version.version}"
            for address, value in sorted(version.data.items()):
                for node in _data_lineage(project, store, address, value, before=version.created_at).walk():
                    entry = users.setdefault((node.address, node.content_hash, node.created_at), [])
                    if label not in entry:
                        entry.append(label)
    return users


def _removed_index(store: StateStore) -> dict[tuple[str, float], DataRemoval]:
    """(dataset address, when the item was made) -> its removal, for every item that expired or was erased."""
    return {(r.address, r.created_at): r for r in store.data_removals()}


def _mark_removed(nodes: list[DataLineage], removed: dict[tuple[str, float], DataRemoval]) -> None:
    """Mark every node of these trees whose content was expired or erased."""
    if not removed:
        return
    for top in nodes:
        for node in top.walk():
            node.removal = removed.get((node.address, node.created_at)) if node.created_at is not None else None
