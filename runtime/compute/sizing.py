"""How big a cluster a spec needs, and what this machine offers: pure arithmetic, no Ray.

Realtime deployments hold their replicas' resources for as long as they serve, and a rollout starts one
more replica of the new version before an old one stops. The long-lived local cluster is sized to the
spec: this machine's CPUs plus serving's peak (:func:`local_cluster_cpus`), so training keeps the
machine's CPUs and serving is accounted on top of them.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass

from compiler.resolve import Project


@dataclass(frozen=True)
class Hold:
    """What one realtime deployment holds while it serves."""

    address: str
    replicas: int
    cpus: float
    gpus: float

    def each(self, key: str) -> float:
        """What one replica reserves of ``CPU`` or ``GPU``."""
        return self.cpus if key == "CPU" else self.gpus


def local_capacity() -> dict[str, float]:
    """CPUs and GPUs of this machine, without starting Ray or importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    else:
        gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def holds(project: Project) -> list[Hold]:
    """What each realtime deployment of the spec holds while it serves."""
    return [Hold(f"deployments.{name}", max(1, d.replicas), d.resources.cpus, d.resources.gpus)
            for name, d in project.spec.deployments.items() if d.mode == "realtime"]


def serving_need(project: Project) -> dict[str, float]:
    """What serving needs at its peak: every deployment's replicas plus one rollout's extra replica."""
    held = holds(project)
    if not held:
        return {"CPU": 0.0, "GPU": 0.0}
    return {"CPU": sum(h.replicas * h.cpus for h in held) + max(h.cpus for h in held),
            "GPU": sum(h.replicas * h.gpus for h in held) + max(h.gpus for h in held)}


def local_cluster_cpus(project: Project) -> int:
    """The logical CPUs of the local cluster for this spec: the machine's, plus serving's peak."""
    return math.ceil(local_capacity()["CPU"] + serving_need(project)["CPU"])


