"""What scoring with a model version needs, wherever it runs: a Serve replica or a batch task.

The model's serving code is the ``load_predictor(model_path, params)`` function of its trainer's module; the
model is the version's artifact, verified against its hash before it is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from runtime.errors import TaskError

Predictor = Callable[[list[dict[str, Any]]], list[Any]]


@dataclass(frozen=True, kw_only=True)
class ScoringSpec:
    """A model version of a deployment and the code that scores with it (picklable)."""

    deployment: str
    version: int
    target: str
    """The trainer ``module:function``; ``load_predictor`` is looked up in that module."""
    code_hash: str | None
    repo_root: str
    artifact_root: str
    model_uri: str
    params: dict[str, Any]
    code_uri: str = ""
    """The shipped package of the project's code (:mod:`runtime.compute.shipping`); empty: the code is imported
    from ``repo_root`` on this machine."""

    def shipped(self, code_uri: str) -> Self:
        """This spec run in the shipped package ``code_uri`` (unchanged when empty: the code runs in place)."""
        return dataclasses.replace(self, repo_root="", code_uri=code_uri) if code_uri else self


def load_predictor(spec: ScoringSpec, scratch: Path) -> Predictor:
    """The version's predictor: its artifact verified against its hash (copied into ``scratch`` when the store
    is not on this machine; a one-line refusal naming the object otherwise), then ``load_predictor``."""
    from runtime.artifacts.store import ArtifactError, ArtifactStore
    from runtime.compute.worker import load_predictor_of

    store = ArtifactStore(spec.artifact_root)
    try:  # exactly what the state names, or a one-line refusal naming the object
        local = store.verified_path(spec.model_uri) or store.get_file(spec.model_uri, scratch / "model.pt")
    except ArtifactError as error:
        raise TaskError("; ".join(d.message for d in error.diagnostics)) from None
    module_loader = load_predictor_of(spec.target, spec.code_hash, spec.repo_root)
    predictor: Predictor = module_loader(Path(local), dict(spec.params))
    return predictor
