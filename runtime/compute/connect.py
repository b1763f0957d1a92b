"""Which Ray cluster a project runs on, decided in one place, and joining it.

The spec's ``cluster.address`` wins; else the long-lived local cluster ``mlops up`` started for this
state (started now when the caller must outlive this process: realtime deployments); else an embedded
Ray for this process alone (the same head, stopped with this process). A process already on Ray (tests, the
reconciler) keeps its connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.resolve import Project
from runtime.compute import cluster, ray_backend
from runtime.compute.sizing import local_cluster_cpus
from runtime.workspace import Workspace


@dataclass(frozen=True)
class ClusterChoice:
    """The cluster a project's work and deployments run on."""

    address: str | None
    """The GCS address to join; ``None``: an embedded Ray for this process alone."""
    serve_port: int
    """The HTTP port Ray Serve listens on there."""
    where: str
    """In words, for messages: ``the Ray cluster at ...``, ``the local Ray cluster``, ``an embedded Ray``."""


def choose(project: Project, *, start_local: bool = False) -> ClusterChoice | None:
    """The cluster to join: ``cluster.address``, else the running local cluster, else (``start_local``) the
    local cluster started now, sized to the spec; ``None`` when there is none and none is to be started."""
    if project.spec.cluster.address:
        address = project.spec.cluster.address
        return ClusterChoice(address, cluster.default_serve_port(), f"the Ray cluster at {address}")
    state_path = Workspace.of(project).state_path
    local = cluster.running(state_path)
    if local is None and start_local:
        local = cluster.up(state_path, num_cpus=local_cluster_cpus(project))
    if local is None:
        return None
    return ClusterChoice(local.address, local.serve_port, "the local Ray cluster")


def join(project: Project, *, start_local: bool = False, embedded: bool = True) -> ClusterChoice | None:
    """Join :func:`choose`'s cluster unless this process is on Ray already; with none chosen, start an
    embedded Ray when ``embedded`` (else join nothing and return ``None``)."""
    if ray_backend.connected():
        local = None if project.spec.cluster.address else cluster.running(Workspace.of(project).state_path)
        if local is not None:
            return ClusterChoice(local.address, local.serve_port, "the local Ray cluster")
        return ClusterChoice(project.spec.cluster.address, cluster.default_serve_port(), "the connected Ray cluster")
    choice = choose(project, start_local=start_local)
    if choice is None and not embedded:
        return None
    ray_backend.connect(choice.address if choice else None)
    return choice or ClusterChoice(None, cluster.default_serve_port(), "an embedded Ray")


def total_resources(project: Project) -> dict[str, float]:
    """CPUs and GPUs of ``cluster.address``: from this process's connection when it has one, else read from
    the cluster's control store without joining it as a driver (a Ray Client ``ray://`` address, or
    ``auto``, has no control store to read from here: it is joined)."""
    address = project.spec.cluster.address
    assert address is not None
    if not ray_backend.connected() and not address.startswith("ray://") and address != "auto":
        return ray_backend.resources_at(address)
    ray_backend.connect(address)
    return ray_backend.cluster_resources()
