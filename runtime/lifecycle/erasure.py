"""Erasure that follows lineage (GDPR Art. 17): ``mlops erase datasets.NAME --reason TEXT``.

An erasure removes every item of the dataset the state still holds (its snapshots, or its derived outputs)
and everything made from them: the items of the datasets downstream of it in the spec, and any item whose
recorded lineage leads to an erased one. Their objects are deleted outright (an erasure is not kept from
deleting bytes that another item happens to share: that item is then rebuilt by the next apply, which sees
its artifact missing). The request is recorded with every model version trained on the erased data, and
the audit trail gets one ``erase`` record per item and one ``erasure`` record for the request. The next plan
takes the dataset again from its source (which is the user's: the subject's rows are removed there, in the
repository) and retrains the models whose newest version was trained on it (``erased data: datasets.NAME``).

An erasure is *open* while a model version in use (the newest, or one a deployment serves) was trained on
its data: :func:`open_erasures`; :func:`settle` closes those that no longer are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import MlopsError
from compiler.resolve import Project
from compiler.suggest import did_you_mean
from runtime.artifacts.store import ArtifactStore
from runtime.lifecycle.holdings import Holdings, delete_data, in_use
from runtime.provenance import actor as default_actor
from runtime.state import audit
from runtime.state.lock import exclusive
from runtime.state.records import DataItem, DataRemoval, ErasureRequest
from runtime.state.store import StateStore
from runtime.workspace import Workspace

ERASE = "erase"
"""The audit action of one erased item: payload ``{request, dataset, kind, item, content_hash, artifact,
created_at, origin}``."""
ERASURE = "erasure"
"""The audit action of an erasure request: payload ``{request, dataset, reason, items, objects, models}``."""


class ErasureError(MlopsError):
    """An erasure was refused: an unknown dataset, no reason given."""


@dataclass
class ErasureReport:
    """What an erasure removed and which model versions were trained on it."""

    request: ErasureRequest
    erased: list[DataRemoval] = field(default_factory=list)
    objects_deleted: int = 0
    in_use: list[str] = field(default_factory=list)
    """Of :attr:`ErasureRequest.models`, the versions in use: the next plan retrains their models."""

    @property
    def models(self) -> list[str]:
        return self.request.models

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {"request": r.id, "dataset": r.dataset, "reason": r.reason, "requested_by": r.requested_by,
                "requested_at": r.requested_at, "objects_deleted": self.objects_deleted,
                "erased": [{"dataset": e.address, "kind": e.item_kind, "content_hash": e.content_hash,
                            "artifact": e.artifact_uri, "created_at": e.created_at} for e in self.erased],
                "models": r.models, "in_use": self.in_use}


def dataset_address(project: Project, store: StateStore, text: str) -> str:
    """``datasets.NAME`` (or ``NAME``) of a dataset the spec or the state knows; else a one-line error."""
    name = text.removeprefix("datasets.")
    address = f"datasets.{name}"
    if name in project.spec.datasets or any(item.address == address for item in store.data_items()):
        return address
    known = [f"datasets.{n}" for n in project.spec.datasets]
    raise ErasureError.one(f"unknown dataset '{text}'{did_you_mean(address, known)}")


def downstream(project: Project, address: str) -> set[str]:
    """The datasets derived from ``address`` in the spec, transitively."""
    return {a for a, view in project.views.items()
            if a.startswith("datasets.") and address in view.get("refs", {}).get("upstream", [])}


def to_erase(project: Project, holdings: Holdings, address: str) -> list[DataItem]:
    """The items held of ``address``, of the datasets downstream of it, and every item made from those."""
    targets = {address, *downstream(project, address)}
    chosen = {(i.item_kind, i.item_id): i for i in holdings.held if i.address in targets}
    for item in holdings.held:  # oldest first: an input is decided before what was made from it
        if any((u.item_kind, u.item_id) in chosen or (u.removal is not None and u.removal.removal == "erased"
                                                      and u.removal.origin == address)
               for u in holdings.inputs(item)):
            chosen[(item.item_kind, item.item_id)] = item
    return sorted(chosen.values(), key=lambda i: (i.created_at, i.item_kind, i.item_id))


def erase(project: Project, store: StateStore, artifacts: ArtifactStore, dataset: str, reason: str, *,
          actor: str | None = None, lock_timeout: float = 0.0) -> ErasureReport:
    """Erase ``dataset`` (``datasets.NAME``) and everything derived from it, under the state lock (waited for
    ``lock_timeout`` seconds).

    The objects go first, then the request, the removals and their audit records in one transaction: a crash
    between leaves nothing recorded and the erasure can be asked again (deleting what is gone is no error).
    """
    if not reason.strip():
        raise ErasureError.one("an erasure needs a reason (--reason TEXT): the audit trail records it")
    address = dataset_address(project, store, dataset)
    who = actor or default_actor(project.root)
    with exclusive(Workspace.of(project).state, "erase", who, timeout=lock_timeout):
        holdings = Holdings.read(store)
        items = to_erase(project, holdings, address)
        keys = {(i.item_kind, i.item_id) for i in items}
        trained = []
        using = []
        for name in store.models():
            current = {v.version for v in in_use(store, name)}
            for version in store.model_versions(name):
                if any((i.item_kind, i.item_id) in keys for i in holdings.trained_on(version)):
                    trained.append(f"models.{name}@{version.version}")
                    if version.version in current:
                        using.append(f"models.{name}@{version.version}")
        deleted = delete_data(artifacts, items)
        erased: list[DataRemoval] = []
        with store.transaction():
            at = time.time()
            request_id = store.add_erasure_request(address, reason, who, trained, at=at)
            for item in items:
                record = audit.append(store, who, ERASE, {
                    "request": request_id, "dataset": item.address, "kind": item.item_kind, "item": item.item_id,
                    "content_hash": item.content_hash, "artifact": item.artifact_uri, "created_at": item.created_at,
                    "origin": address}, at=at)
                removal = DataRemoval(item.item_kind, item.item_id, item.address, item.content_hash,
                                      item.artifact_uri, item.created_at, "erased", address, reason, request_id, at,
                                      record.seq)
                store.record_removal(removal)
                erased.append(removal)
            audit.append(store, who, ERASURE, {"request": request_id, "dataset": address, "reason": reason,
                                               "items": len(items), "objects": deleted, "models": trained}, at=at)
        store.sync()
    request = ErasureRequest(request_id, address, reason, who, at, trained)
    return ErasureReport(request, erased, deleted, using)


def _pending(store: StateStore) -> list[tuple[ErasureRequest, list[str]]]:
    """The erasures not closed, each with the model versions in use still trained on its data."""
    requests = [r for r in store.erasure_requests() if r.closed_at is None]
    if not requests:
        return []
    holdings = Holdings.read(store)
    in_use_now = [(name, version) for name in store.models() for version in in_use(store, name)]
    out = []
    for request in requests:
        still = [f"models.{name}@{version.version}" for name, version in in_use_now
                 if any(r.request_id == request.id for r in holdings.removals_under(version))]
        out.append((request, still))
    return out


def open_erasures(store: StateStore) -> list[tuple[ErasureRequest, list[str]]]:
    """The open erasures: those with a model version in use still trained on their data (listed with it)."""
    return [(request, still) for request, still in _pending(store) if still]


def settle(store: StateStore) -> list[int]:
    """Close the erasures no version in use is trained on any more (the reconciler's tick, ``mlops gc``);
    returns their ids."""
    closed = [request.id for request, still in _pending(store) if not still]
    for request_id in closed:
        store.close_erasure_request(request_id)
    return closed
