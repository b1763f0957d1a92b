"""Refuse at plan time what the cluster can never run, counting what deployments hold; never hang.

Realtime deployments hold their replicas' resources for as long as they serve, and a rollout starts
one more replica of the new version (its staging check, then Serve's rolling update) before an old
one stops. So what training, transforms and evaluations may use is the cluster's capacity minus what
the deployments hold minus the largest replica of one rollout (rollouts run one at a time).

On the embedded default the long-lived local cluster is sized to the spec: its logical CPUs are this
machine's CPUs plus what the deployments hold and one rollout's extra replica
(:func:`runtime.compute.sizing.local_cluster_cpus`).
Serve replicas mostly wait for requests, so training keeps the machine's CPUs and serving is
accounted on top of them, instead of a second apply waiting forever behind its own deployments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler.errors import Diagnostic
from compiler.resolve import Project
from runtime.compute import cluster, ray_backend
from runtime.compute.connect import total_resources
from runtime.compute.sizing import Hold, holds, local_capacity, local_cluster_cpus, serving_need
from runtime.errors import PlanError
from runtime.workspace import Workspace


@dataclass(frozen=True)
class Capacity:
    """What the project's work runs on."""

    total: dict[str, float]
    """``CPU`` and ``GPU``."""
    where: str
    """In words, for messages: ``this machine``, ``the local Ray cluster``, ``the Ray cluster at ...``."""
    hosts_serving: bool
    """Whether the realtime deployments run on these resources too."""


def asks(resources: dict[str, Any]) -> str:
    """What a node asks the cluster for, in words: ``2 CPU``, ``1 CPU and 1 GPU on each of 4 workers``."""
    gpus = float(resources.get("gpus", 0) or 0)
    workers = int(resources.get("workers", 1) or 1)
    return (f"{float(resources.get('cpus', 1)):g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
            + (f" on each of {workers} workers" if workers > 1 else ""))


def capacity(project: Project) -> Capacity | None:
    """What the project's cluster offers, or ``None`` when it cannot be known here (KubeRay autoscales)."""
    cluster_spec = project.spec.cluster
    if cluster_spec.provider == "kuberay":
        return None  # checked against the worker groups at compile time
    if cluster_spec.address:
        try:
            total = total_resources(project)
        except ConnectionError as error:
            raise PlanError.one(str(error), project.position("cluster", "address"), "cluster") from None
        return Capacity(total, f"the Ray cluster at {cluster_spec.address}", True)
    machine = local_capacity()
    if not holds(project):
        return Capacity(machine, "this machine", False)
    local = cluster.running(Workspace.of(project).state_path)
    if local is not None:
        cpus = float(local.num_cpus) if local.num_cpus is not None else machine["CPU"]
        return Capacity({**machine, "CPU": cpus}, "the local Ray cluster", True)
    return Capacity({**machine, "CPU": float(local_cluster_cpus(project))}, "the local Ray cluster", True)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def on_this_machine(address: str) -> bool:
    """Whether a ``cluster.address`` names a cluster on this machine (``auto``, or a loopback host)."""
    host = address.removeprefix("ray://").rsplit(":", 1)[0] if ":" in address else address
    return address == "auto" or host in LOOPBACK_HOSTS


def check_storage(project: Project) -> None:
    """Refuse ``infeasible:`` a cluster on other machines with an artifact store in a folder of this one: its
    tasks could neither read their inputs nor write their outputs there."""
    address = project.spec.cluster.address
    artifacts = project.spec.storage.artifacts
    if not address or on_this_machine(address) or ("://" in artifacts and not artifacts.startswith("file://")):
        return
    raise PlanError.one(f"infeasible: cluster.address {address} is a Ray cluster on other machines, but "
                        f"storage.artifacts {artifacts!r} is a folder on this one, which its nodes cannot read "
                        "or write: use an object store (s3://bucket/prefix)",
                        project.position("storage", "artifacts"), "storage")


def check(project: Project, available: Capacity | None) -> None:
    """Raise a positioned ``infeasible: ...`` error for each request the cluster cannot satisfy."""
    if available is None:
        return
    held = holds(project) if available.hosts_serving else []
    peak = serving_need(project) if held else {"CPU": 0.0, "GPU": 0.0}
    problems = []
    for section in ("datasets", "models"):
        for name, resource in getattr(project.spec, section).items():
            asked = resource.resources
            workers = asked.workers if section == "models" else 1
            for key, each, field in (("GPU", asked.gpus, "gpus"), ("CPU", asked.cpus, "cpus")):
                have = available.total.get(key, 0.0)
                free = have - peak[key]
                amount = each * workers  # Ray Train reserves every worker at once
                if amount <= free:
                    continue
                what = "GPU(s)" if key == "GPU" else "CPU(s)"
                split = f" ({workers} workers × {each:g})" if workers > 1 else ""
                message = f"infeasible: asks for {amount:g} {what}{split} but {available.where} has {have:g}"
                if peak[key]:
                    message += (f", and {_holders(held, key)} leaving {max(free, 0):g}: lower "
                                f"{section}.{name}.resources.{field} or what the deployments hold")
                    if available.where == "the local Ray cluster":
                        message += " (or `mlops down`: the next apply starts the local cluster sized to the spec)"
                problems.append(Diagnostic(message, project.position(f"{section}.{name}", "resources", field),
                                           f"{section}.{name}"))
    for hold in held:
        others = sum(h.replicas * h.cpus for h in held if h is not hold)
        needs = (hold.replicas + 1) * hold.cpus
        have = available.total.get("CPU", 0.0)
        if needs > have - others:
            problems.append(Diagnostic(
                f"infeasible: {hold.replicas} replicas × {hold.cpus:g} CPU and one more for a rollout need "
                f"{needs:g} CPU(s) but {available.where} has {have:g}"
                + (f" and the other deployments hold {others:g}" if others else ""),
                project.position(hold.address, "replicas"), hold.address))
    if problems:
        raise PlanError(problems)


def _holders(held: list[Hold], key: str) -> str:
    parts = [f"{h.address} holds {h.replicas * h.each(key):g} ({h.replicas} replicas × {h.each(key):g})"
             for h in held if h.each(key)]
    extra = max(h.each(key) for h in held)
    return ", ".join(parts) + f" while serving, and a rollout's extra replica needs {extra:g},"


def describe_free(project: Project) -> str:
    """What the connected cluster has free now and what the deployments hold (for a waiting task)."""
    try:
        free = ray_backend.available_resources()
        total = ray_backend.cluster_resources()
    except Exception:  # noqa: BLE001 - not connected: nothing to say about the cluster
        return "the cluster's free resources are unknown"
    text = f"{free.get('CPU', 0.0):g} of {total.get('CPU', 0.0):g} CPU free"
    if total.get("GPU"):
        text += f", {free.get('GPU', 0.0):g} of {total['GPU']:g} GPU"
    held = holds(project)
    if held:
        text += " (" + ", ".join(f"{h.address} holds {h.replicas * h.cpus:g} CPU" for h in held) + ")"
    return text
