"""What the state names is what runs: the plan checks the artifacts the recorded state names for what is current.

A recorded output (a snapshot, a transform's dataset, a trained model) and the model versions deployments
serve are checked against their content hash through :meth:`runtime.artifacts.store.ArtifactStore.verified_path`
(cached by each file's inode, size, mtime and ctime, so a no-op plan costs a ``stat`` per file). A bad one
makes the node that produced it a ``replace`` (``artifact corrupt: <uri>`` or ``artifact missing: <uri>``),
so the plan never says ``No changes`` over it, and apply rebuilds it: a snapshot is taken again from the
data, a transform or a training runs again (and everything downstream with it).
"""

from __future__ import annotations

from collections.abc import Callable

from compiler.graph import Graph
from compiler.resolve import Project
from runtime.artifacts.store import ArtifactCorrupt, ArtifactError, ArtifactMissing, ArtifactStore
from runtime.state.records import NodeResult
from runtime.state.store import StateStore

PRODUCERS = ("snapshot", "transform", "trial")
"""Node kinds whose recorded ``artifact`` is their own output (selections and evaluations name a trial's)."""


def problem(artifacts: ArtifactStore, uri: str) -> str | None:
    """``artifact corrupt: <uri>`` / ``artifact missing: <uri>``, or ``None`` when the artifact verifies."""
    try:
        if artifacts.verified_path(uri) is None and not artifacts.exists(uri):  # remote storage: presence only
            return f"artifact missing: {uri}"
    except ArtifactMissing:
        return f"artifact missing: {uri}"
    except (ArtifactCorrupt, ArtifactError):
        return f"artifact corrupt: {uri}"
    except OSError:  # the store cannot be read or laid out here: nothing to say about its content
        return None
    return None


def replacements(project: Project, graph: Graph, store: StateStore, recorded: dict[str, NodeResult],
                 artifact_root: str) -> dict[str, str]:
    """Node id -> why it must run again: an artifact its current recorded result or its deployment names is bad."""
    artifacts = ArtifactStore(artifact_root)
    seen: dict[str, str | None] = {}

    def bad(uri: object) -> str | None:
        if not isinstance(uri, str) or not uri:
            return None
        if uri not in seen:
            seen[uri] = problem(artifacts, uri)
        return seen[uri]

    forced: dict[str, str] = {}
    for node in graph.nodes():
        result = recorded.get(node.id)
        if result is None or result.fingerprint != node.fingerprint:
            continue  # it runs again anyway
        if node.kind in PRODUCERS:
            reason = bad(result.outputs.get("artifact"))
        elif node.kind == "deploy":
            reason = bad(result.outputs.get("predictions")) or _served(project, store, node.address, bad)
        else:
            reason = None
        if reason is not None:
            forced[node.id] = reason
    return forced


def _served(project: Project, store: StateStore, address: str, bad: Callable[[object], str | None]) -> str | None:
    """The problem of the model version deployment ``address`` serves (or should), if any."""
    name = address.split(".", 1)[1]
    deployment = project.spec.deployments.get(name)
    state = store.get_deployment(name)
    if deployment is None or state is None:
        return None
    for version in dict.fromkeys(v for v in (state.live_version, state.desired_version) if v is not None):
        model_version = store.get_model_version(deployment.model, version)
        if model_version is not None:
            reason = bad(model_version.artifact_uri)
            if reason is not None:
                return reason
    return None
