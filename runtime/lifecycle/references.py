"""What the state still names in the artifact store: the objects ``mlops gc`` must keep.

An artifact is referenced (kept) when any of these names it:

* a recorded dataset **snapshot** (:func:`snapshot_references`; every snapshot row, until retention expires it);
* the **newest succeeded result of each node**, the one the plan compares with and reuses while its fingerprint
  matches (:func:`reusable_result_references`), for a node still in the spec or not (adding it back reuses it):
  a transform's dataset, a trial's model, a batch deployment's predictions;
* a **model version to keep** (:func:`kept_versions`): the versions deployments serve, want or pin (the state's
  live, desired and rollback-pinned versions, and the spec's ``version:`` pins), and the newest ``keep`` of each
  model; with no ``keep`` (neither ``models.<name>.keep_versions`` nor ``mlops gc --keep``), every version;
* a **run's log** (:func:`run_log_references`).

Each reference has a kind, for the store's size by kind (:mod:`runtime.lifecycle.sizes`); an object named under
several kinds counts under the first of :data:`KINDS`. A directory artifact references its manifest and every
file the manifest lists (:func:`referenced_objects`). Older node results, older versions past ``keep`` and what
no row names (a killed apply's outputs, half-deleted garbage of a killed gc) are unreferenced.

A version whose model file ``gc`` freed stays in the registry, marked collected by a ``gc_versions`` audit record
written *before* anything is deleted (:func:`collected_versions`): ``models show`` says so, and ``rollback``
refuses it, instead of pointing at a file that is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from compiler.resolve import Project
from runtime.artifacts.store import ArtifactError, ArtifactStore, parse_uri
from runtime.state import audit
from runtime.state.store import StateStore

KINDS = ("models", "datasets", "predictions", "logs")
"""Kinds of referenced objects, in the order that decides the kind of an object named under several."""
RESULT_KINDS = {"snapshot": "datasets", "transform": "datasets", "trial": "models", "select": "models",
                "evaluate": "models", "deploy": "predictions"}
"""The kind of what a node's recorded outputs name, by node kind."""
GC_VERSIONS = "gc_versions"
"""The action of the audit record that marks model versions whose files gc frees (written before it deletes)."""


@dataclass
class References:
    """The artifacts the state names, each with its kind; and the model versions whose files are not kept."""

    uris: dict[str, str] = field(default_factory=dict)
    """Artifact URI -> kind (one of :data:`KINDS`)."""
    released: list[tuple[str, int, str]] = field(default_factory=list)
    """(model, version, artifact URI) of each version not yet marked collected that no rule keeps, and whose file
    nothing else names."""

    def add(self, uri: object, kind: str) -> None:
        if isinstance(uri, str) and _is_uri(uri):
            known = self.uris.get(uri)
            if known is None or KINDS.index(kind) < KINDS.index(known):
                self.uris[uri] = kind


def _is_uri(text: str) -> bool:
    try:
        parse_uri(text)
    except ArtifactError:
        return False
    return True


def _uris_in(value: Any) -> Iterator[str]:
    """Every artifact URI anywhere in a node's recorded outputs."""
    if isinstance(value, str):
        if _is_uri(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _uris_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _uris_in(item)


def snapshot_references(store: StateStore) -> list[str]:
    """The artifact of every recorded snapshot (the one place that decides which snapshots still count); one
    expired or erased (:mod:`runtime.lifecycle.retention`, :mod:`runtime.lifecycle.erasure`) counts no more."""
    return [uri for _, uri in store.held_snapshot_artifacts()]


def reusable_result_references(store: StateStore) -> list[tuple[str, str]]:
    """(URI, kind) of what each node's newest succeeded result names: what the plan can still reuse."""
    return [(uri, RESULT_KINDS.get(result.kind, "datasets"))
            for result in store.latest_results().values() for uri in _uris_in(result.outputs)]


def run_log_references(store: StateStore) -> list[str]:
    """The log of every recorded run."""
    return [uri for _, uri in store.run_logs()]


def kept_versions(project: Project, store: StateStore, keep: int | None) -> dict[str, set[int]]:
    """Model -> the versions whose files are kept: served, wanted or pinned anywhere, and the newest ``keep``
    (``keep`` from the caller, else the spec's ``models.<name>.keep_versions``; neither: every version)."""
    held: dict[str, set[int]] = {}
    for deployment in store.deployments():
        versions = (deployment.live_version, deployment.desired_version, deployment.pinned_version)
        held.setdefault(deployment.model, set()).update(v for v in versions if v is not None)
    for spec in project.spec.deployments.values():
        if spec.version is not None:
            held.setdefault(spec.model, set()).add(spec.version)
    kept: dict[str, set[int]] = {}
    for model in store.models():
        numbers = sorted(v.version for v in store.model_versions(model))
        model_spec = project.spec.models.get(model)
        limit = keep if keep is not None else model_spec.keep_versions if model_spec is not None else None
        newest = numbers if limit is None else numbers[-limit:]
        kept[model] = set(newest) | held.get(model, set())
    return kept


def collected_versions(store: StateStore) -> dict[str, set[int]]:
    """Model -> the versions whose files gc collected (from the ``gc_versions`` audit records)."""
    out: dict[str, set[int]] = {}
    for record in audit.of_actions(store, [GC_VERSIONS]):
        for model, versions in (record.payload.get("versions") or {}).items():
            out.setdefault(str(model), set()).update(int(v) for v in versions)
    return out


def references(project: Project, store: StateStore, keep: int | None) -> References:
    """Every artifact the state names and gc keeps, and the versions whose files it would release."""
    found = References()
    kept = kept_versions(project, store, keep)
    collected = collected_versions(store)
    released: list[tuple[str, int, str]] = []
    for model in store.models():
        for version in store.model_versions(model):
            if version.version in kept.get(model, set()):
                found.add(version.artifact_uri, "models")
            elif version.version not in collected.get(model, set()):
                released.append((model, version.version, version.artifact_uri))
    for uri, kind in reusable_result_references(store):
        found.add(uri, kind)
    for uri in snapshot_references(store):
        found.add(uri, "datasets")
    for uri in run_log_references(store):
        found.add(uri, "logs")
    found.released = [(model, number, uri) for model, number, uri in released if uri not in found.uris]
    return found


@dataclass
class ReferencedObjects:
    """The objects the references are made of, each with its kind; and the artifacts that could not be read."""

    kinds: dict[str, str] = field(default_factory=dict)
    """Digest -> kind."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """URI -> why its objects cannot all be named (a directory whose manifest is missing or corrupt)."""


def referenced_objects(refs: References, artifacts: ArtifactStore) -> ReferencedObjects:
    """The digests of every object the references are made of (a directory: its manifest and its files).

    A directory whose manifest is gone or damaged is already broken (its files cannot be found through it, and
    the plan rebuilds it when it is current); it is reported, and its manifest's digest still counts as kept.
    """
    out = ReferencedObjects()
    for uri, kind in sorted(refs.uris.items(), key=lambda item: KINDS.index(item[1])):
        try:
            members = artifacts.members(uri)
        except ArtifactError as error:
            members = [parse_uri(uri)[1]]
            out.unreadable[uri] = "; ".join(d.message for d in error.diagnostics)
        for digest in members:
            out.kinds.setdefault(digest, kind)
    return out
