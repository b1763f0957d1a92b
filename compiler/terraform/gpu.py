"""A worker group's ``gpu_type`` -> the node affinity that puts its pods on that GPU (:data:`GPU_TYPES`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from compiler.errors import TerraformError
from compiler.resolve import Project
from compiler.terraform.names import K8S_LABEL_MAX, LABEL_VALUE

GPU_LABEL = "nvidia.com/gpu.product"
GPU_LABEL_GKE = "cloud.google.com/gke-accelerator"


@dataclass(frozen=True)
class GpuType:
    """The node label values of one GPU type: ``products`` on :data:`GPU_LABEL`, ``gke`` on :data:`GPU_LABEL_GKE`."""

    products: tuple[str, ...]
    gke: tuple[str, ...] = ()


GPU_TYPES: dict[str, GpuType] = {
    # GPU feature discovery labels a node with the NVML device name, spaces replaced by "-"
    # ("NVIDIA H100 80GB HBM3" -> NVIDIA-H100-80GB-HBM3); older drivers name some boards without "NVIDIA".
    "h100": GpuType(("NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"),
                    ("nvidia-h100-80gb", "nvidia-h100-mega-80gb")),
    "h200": GpuType(("NVIDIA-H200", "NVIDIA-H200-NVL"), ("nvidia-h200-141gb",)),
    "gh200": GpuType(("NVIDIA-GH200-480GB",)),
    "b200": GpuType(("NVIDIA-B200",), ("nvidia-b200",)),
    "a100": GpuType(("NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-PCIE-40GB", "NVIDIA-A100-80GB-PCIe",
                     "A100-SXM4-40GB", "A100-SXM4-80GB", "A100-PCIE-40GB"),
                    ("nvidia-tesla-a100", "nvidia-a100-80gb")),
    "a10g": GpuType(("NVIDIA-A10G",)),
    "a10": GpuType(("NVIDIA-A10",)),
    "a40": GpuType(("NVIDIA-A40",)),
    "l40s": GpuType(("NVIDIA-L40S",)),
    "l40": GpuType(("NVIDIA-L40",)),
    "l4": GpuType(("NVIDIA-L4",), ("nvidia-l4",)),
    "t4": GpuType(("Tesla-T4",), ("nvidia-tesla-t4",)),
    "v100": GpuType(("Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB", "Tesla-V100-PCIE-16GB", "Tesla-V100-PCIE-32GB"),
                    ("nvidia-tesla-v100",)),
}
"""Spec ``gpu_type`` (lower case, without ``nvidia-``/``tesla-``) -> the node label values of that GPU."""


def gpu_node_affinity(project: Project, group_name: str, gpu_type: str, gke: bool) -> dict[str, Any]:
    """The required node affinity for a worker group's ``gpu_type``: its label ``In`` the values of the type.

    A type of :data:`GPU_TYPES` (``nvidia-h100``, ``h100``, ``H100``, ``nvidia-tesla-t4``: case and the
    ``nvidia-``/``tesla-`` prefixes do not matter) matches every product name of that type on
    :data:`GPU_LABEL` (GPU feature discovery), or its accelerator names on :data:`GPU_LABEL_GKE` next to
    ``gs://`` storage. Any other value is the node label value itself, taken verbatim: a product name
    (``NVIDIA-H100-80GB-HBM3``, ``Tesla-T4-SHARED`` for a time-sliced GPU) or, on GKE, an accelerator
    name (``nvidia-rtx-pro-6000``). A value that is neither -- lower case and unknown, without GKE -- is
    an error: no GPU feature discovery label is all lower case.
    """
    label = GPU_LABEL_GKE if gke else GPU_LABEL
    where = project.position("cluster", "workers", group_name, "gpu_type")
    known = {value for gpu in GPU_TYPES.values() for value in (gpu.gke if gke else gpu.products)}
    key = re.sub(r"^(nvidia-)?(tesla-)?", "", gpu_type.lower())
    if gpu_type in known:
        values = [gpu_type]
    elif key in GPU_TYPES:
        values = list(GPU_TYPES[key].gke if gke else GPU_TYPES[key].products)
        if not values:
            raise TerraformError.one(
                f"cluster.workers.{group_name}.gpu_type '{gpu_type}': GKE offers no {key} accelerator; give the "
                f"{GPU_LABEL_GKE} value of your node pool verbatim", where, "cluster")
    elif not re.fullmatch(LABEL_VALUE, gpu_type) or len(gpu_type) > K8S_LABEL_MAX:
        raise TerraformError.one(
            f"cluster.workers.{group_name}.gpu_type '{gpu_type}' is not a Kubernetes label value", where, "cluster")
    elif gke or gpu_type != gpu_type.lower():
        values = [gpu_type]
    else:
        raise TerraformError.one(
            f"cluster.workers.{group_name}.gpu_type '{gpu_type}' is no known GPU type ({', '.join(sorted(GPU_TYPES))}, "
            f"with or without 'nvidia-') and no {GPU_LABEL} value (GPU feature discovery writes names like "
            "NVIDIA-H100-80GB-HBM3: the device name with '-' for spaces)", where, "cluster")
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": label, "operator": "In", "values": values}]}]}}}
