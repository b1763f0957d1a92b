"""Refuse at plan time what the cluster can never run (a GPU request on a CPU-only cluster), never hang."""

from __future__ import annotations

import glob
import os

from compiler.errors import Diagnostic, MlopsError
from compiler.resolve import Project


def local_capacity() -> dict[str, float]:
    """CPUs and GPUs of this machine, without starting Ray or importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    else:
        gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def capacity(project: Project) -> dict[str, float] | None:
    """What the project's cluster offers, or ``None`` when it cannot be known here (KubeRay autoscales)."""
    cluster = project.spec.cluster
    if cluster.provider == "kuberay":
        return None  # checked against the worker groups at compile time
    if cluster.address:
        from runtime import ray_backend

        ray_backend.connect(cluster.address)
        return ray_backend.cluster_resources()
    return local_capacity()


def check(project: Project, available: dict[str, float] | None) -> None:
    """Raise a positioned ``infeasible: ...`` error for each request the cluster cannot satisfy."""
    if available is None:
        return
    problems = []
    for section in ("datasets", "models", "deployments"):
        for name, resource in getattr(project.spec, section).items():
            asked = resource.resources
            workers = asked.workers if section == "models" else 1
            for key, each, field in (("GPU", asked.gpus, "gpus"), ("CPU", asked.cpus, "cpus")):
                have = available.get(key, 0.0)
                amount = each * workers  # Ray Train reserves every worker at once
                if amount > have:
                    what = "GPU(s)" if key == "GPU" else "CPU(s)"
                    split = f" ({workers} workers × {each:g})" if workers > 1 else ""
                    problems.append(Diagnostic(
                        f"infeasible: asks for {amount:g} {what}{split} but the cluster has {have:g}",
                        project.position(f"{section}.{name}", "resources", field), f"{section}.{name}"))
    if problems:
        raise MlopsError(problems)
