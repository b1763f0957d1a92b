"""Kubernetes and Helm names of a project's cluster, each a valid name within its limit, and its labels."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from compiler.errors import TerraformError
from compiler.resolve import Project
from compiler.terraform.model import MANAGED_BY

K8S_LABEL_MAX = 63
RAY_CLUSTER_NAME_MAX = 53
"""KubeRay refuses longer RayCluster names (63 less ``-serve-svc``)."""
HELM_RELEASE_NAME_MAX = 53
RFC1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"


def k8s_name(text: str, limit: int = 63) -> str:
    """A valid Kubernetes name of at most ``limit`` characters (an RFC 1123 label) from a spec name.

    Lower-cased, anything but ``[a-z0-9-]`` becomes ``-`` (spec names have ``_``), no ``-`` at either
    end. A longer name is cut and ends in ``-`` and 8 hex digits of the SHA-256 of the original text,
    so two long names that share their start stay apart, and the same name always maps the same way.
    """
    cleaned = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-") or "x"
    if len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{cleaned[:limit - len(digest) - 1].rstrip('-')}-{digest}"


def k8s_labels(project: Project) -> dict[str, str]:
    """The labels of every manifest of the project: managed by mlops, part of the project."""
    return {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": k8s_name(project.spec.project)}


@dataclass(frozen=True)
class Names:
    """The Kubernetes and Helm names of a project's cluster, each within its limit (see :func:`k8s_name`)."""

    namespace: str
    ray_cluster: str
    ray_release: str
    monitoring_release: str
    reconciler: str
    """The reconciler's Deployment, ServiceAccount and metrics Service."""
    reconciler_release: str

    @classmethod
    def of(cls, project: Project) -> Names:
        spec = project.spec
        namespace = spec.cluster.namespace
        if namespace is None:
            namespace = k8s_name(f"mlops-{spec.project}", K8S_LABEL_MAX)
        elif not (len(namespace) <= K8S_LABEL_MAX and re.fullmatch(RFC1123_LABEL, namespace)):
            raise TerraformError.one(
                f"cluster.namespace '{namespace}' is not a Kubernetes namespace name: at most {K8S_LABEL_MAX} "
                "lower-case letters, digits and '-', starting and ending with a letter or digit",
                project.position("cluster", "namespace"), "cluster")
        return cls(namespace=namespace,
                   ray_cluster=k8s_name(spec.project, RAY_CLUSTER_NAME_MAX),
                   ray_release=k8s_name(f"{spec.project}-ray-cluster", HELM_RELEASE_NAME_MAX),
                   monitoring_release=k8s_name(f"{spec.project}-monitoring", HELM_RELEASE_NAME_MAX),
                   reconciler=k8s_name(f"{k8s_name(spec.project, RAY_CLUSTER_NAME_MAX)}-reconciler"),
                   reconciler_release=k8s_name(f"{spec.project}-reconciler", HELM_RELEASE_NAME_MAX))
