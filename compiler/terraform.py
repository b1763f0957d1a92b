"""Terraform for a project's Ray cluster and artifact storage, synthesized through CDK for Terraform.

``synthesize(project, out_dir)`` writes ``out_dir/cdk.tf.json`` (``mlops compile --out DIR`` puts it
in ``DIR/terraform/``); run ``terraform init && terraform apply`` there. Two halves:

* :func:`blueprint` turns a :class:`Project` into plain data (providers, variables, locals, blocks,
  outputs). It never starts Node, so ``validate`` and ``plan`` may call it.
* :func:`render` hands the blueprint to cdktf core -- ``TerraformStack``, a ``TerraformProvider``
  subclass, ``TerraformResource``/``TerraformDataSource`` with ``terraform_resource_type``,
  ``TerraformVariable``/``TerraformLocal``/``TerraformOutput``; no prebuilt provider packages -- with
  one construct per block and one ``add_override`` per attribute, so jsii round trips do not grow with
  the number of datasets or monitors. Values over :data:`SPLICE_BYTES` go around jsii (see
  :class:`_Splicer`). cdktf is imported here only, lazily.

What is emitted:

* ``cluster.provider: kuberay``, in dependency order so that a fresh cluster takes it in one
  ``terraform apply``: a namespace (``cluster.namespace``, default ``mlops-<project>``), the KubeRay
  operator (``helm_release`` of :data:`KUBERAY_CHART`, whose ``crds/`` install the RayCluster CRD),
  prometheus-operator's CRDs (:data:`PROMETHEUS_CRDS_CHART`, unless ``var.install_prometheus_operator_crds``
  is false), then -- as ``helm_release``s of the local chart :data:`MANIFESTS_CHART`, each depending on
  the release of its CRDs, because ``kubernetes_manifest`` needs a CRD at plan time -- a ``RayCluster``
  (``ray.io/v1``) with a head group from ``cluster.head`` and a worker group per ``cluster.workers``
  entry, and a ``PodMonitor`` that scrapes the Ray pods' metrics (Ray and Ray Serve), a ``Service`` and
  ``ServiceMonitor`` for the reconciler's metrics (see :func:`reconciler_metrics`) plus, with monitors,
  one ``PrometheusRule`` holding a rule per monitor check (see :func:`prometheus_rule`).
  A GPU group gets an ``nvidia.com/gpu`` limit, a toleration of the ``nvidia.com/gpu`` taint and a
  required node affinity from ``gpu_type`` (see :func:`gpu_node_affinity` and :data:`GPU_TYPES`).
  Names are valid Kubernetes names within their limits (see :class:`Names`). Images are
  ``rayproject/ray:<installed ray>-py<this python>[-gpu]``: the cluster runs what the driver runs.
* ``storage.artifacts`` on ``s3://`` or ``gs://``: the bucket, versioned, with all public access
  blocked, encrypted per ``storage.encryption`` (``kms``: a customer-managed key with rotation;
  ``sse``: provider-managed keys; ``none``: the cloud's default), lifecycle rules from the datasets'
  ``retention_days`` (expiry after that many days, older versions one day later) and read access
  per dataset ``access`` list. A dataset's objects live under :func:`dataset_prefix`. On S3 also:
  server access logs in a bucket of their own (:func:`access_log_bucket`) and object events to
  EventBridge. :data:`CHECKOV_EXEMPTIONS` lists the checkov checks that knowingly fail, and why.
* ``cluster.provider: local`` with local storage: nothing. No file is written (a stale
  ``cdk.tf.json`` is removed) and Node is not started.

Principals map to cloud identities by this convention; the Terraform variable ``principals`` (spec
principal -> identity) overrides it one principal at a time:

=============  =====================================================  ===================================
spec           AWS principal (bucket policy, KMS grant)               GCP member (managed-folder IAM)
=============  =====================================================  ===================================
``team:X``     ``arn:<partition>:iam::<account>:role/mlops-team-X``   ``group:X@<var.principal_domain>``
``user:X``     ``arn:<partition>:iam::<account>:user/X``              ``user:X@<var.principal_domain>``
``a@b.c``      ``arn:<partition>:iam::<account>:user/a@b.c``          ``user:a@b.c``
=============  =====================================================  ===================================

On AWS, readers get ``s3:GetObject``/``s3:ListBucket`` on their datasets' prefixes in the bucket
policy (a statement pair per distinct set of readers) and, with ``kms``, a KMS grant to decrypt
objects of this bucket. On GCS, each dataset with readers is a managed folder whose IAM grants each
reader ``roles/storage.objectViewer``. State stays local (``terraform.tfstate``); put a
``backend_override.tf.json`` next to the output for a remote backend.

Cloud limits are checked here rather than at apply time: an S3 lifecycle configuration holds at
most 1,000 rules, a bucket policy at most 20 KiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from compiler.errors import TerraformError
from compiler.resolve import Project
from compiler.spec import Monitor, MonitorCheck

TERRAFORM_FILE = "cdk.tf.json"
STACK_NAME = "mlops"

PROVIDERS: dict[str, tuple[str, str]] = {
    "aws": ("hashicorp/aws", "6.50.0"),
    "google": ("hashicorp/google", "7.36.0"),
    "kubernetes": ("hashicorp/kubernetes", "2.38.0"),
    "helm": ("hashicorp/helm", "3.1.1"),
}
"""Provider -> (registry source, exact version); only the providers a stack uses are required."""

KUBERAY_CHART = {"repository": "https://ray-project.github.io/kuberay-helm/", "chart": "kuberay-operator",
                 "version": "1.5.1"}
"""KubeRay's operator; its chart's ``crds/`` install the RayCluster CRD (``ray.io/v1``)."""
PROMETHEUS_CRDS_CHART = {"repository": "https://prometheus-community.github.io/helm-charts",
                         "chart": "prometheus-operator-crds", "version": "31.0.1"}
"""prometheus-operator's CRDs (v0.93.1: PodMonitor, PrometheusRule, ServiceMonitor, ...), nothing else."""

MANIFESTS_CHART = "mlops-manifests"
"""A local Helm chart that installs the manifests in its ``manifests`` value, each with the extra
``labels`` value merged into its own labels. :func:`synthesize` writes it to ``charts/`` next to the
Terraform; it carries what ``kubernetes_manifest`` could not (a kind whose CRD is installed in the same apply)."""
MANIFESTS_CHART_PATH = f"${{path.module}}/charts/{MANIFESTS_CHART}"
MANIFESTS_CHART_FILES = {
    "Chart.yaml": f"""apiVersion: v2
name: {MANIFESTS_CHART}
description: Kubernetes manifests generated by mlops compile (the values hold them)
type: application
version: 1.0.0
""",
    "values.yaml": "manifests: []\nlabels: {}\n",
    "templates/manifests.yaml": """{{- range .Values.manifests }}
---
{{- $labels := merge (dict) (.metadata.labels | default (dict)) ($.Values.labels | default (dict)) }}
{{ toYaml (merge (dict "metadata" (dict "labels" $labels)) .) }}
{{- end }}
""",
}

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

K8S_LABEL_MAX = 63
RAY_CLUSTER_NAME_MAX = 53
"""KubeRay refuses longer RayCluster names (63 less ``-serve-svc``)."""
HELM_RELEASE_NAME_MAX = 53
RFC1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
RAY_METRICS_PORT = 8080
RECONCILER_METRICS_PORT = 9464

CHECKOV_EXEMPTIONS: dict[tuple[str, str], str] = {
    ("CKV_AWS_144", "aws_s3_bucket.artifacts"):
        "cross-region replication copies the datasets' personal data out of the region they declare and "
        "doubles what retention and erasure must reach: a disaster-recovery and data-residency decision for "
        "the organisation, not a default",
    ("CKV_AWS_144", "aws_s3_bucket.access_logs"):
        "access logs stay in the region of the bucket they record, for as long as access_log_retention_days",
    ("CKV_AWS_145", "aws_s3_bucket.access_logs"):
        "S3 server access logging delivers only to buckets encrypted with SSE-S3, not SSE-KMS",
    ("CKV2_AWS_62", "aws_s3_bucket.access_logs"):
        "an event per access-log delivery has no consumer; the artifact bucket's events go to EventBridge",
    ("CKV_GCP_62", "google_storage_bucket.artifacts"):
        "GCS usage logs need a second (log) bucket; Cloud Audit Logs record data access",
}
"""Checkov checks an emitted resource knowingly fails, and why. Checkov's ``terraform_json`` framework
reads no skip comments, so these are listed here (and in the README); everything else passes."""

S3_MAX_LIFECYCLE_RULES = 1000
S3_BUCKET_NAME_MAX = 63
ACCESS_LOG_RETENTION_DAYS = 365
ACCESS_LOG_PREFIX = "artifacts/"
S3_MAX_POLICY_BYTES = 20 * 1024
NONCURRENT_DAYS = 1
"""Days an overwritten or deleted object version is kept once it is no longer current."""
ABORT_MULTIPART_DAYS = 7
KMS_ROTATION_SECONDS = 90 * 86400
MANAGED_BY = "mlops"

Kind = Literal["resource", "data"]


@dataclass
class Block:
    """A ``resource`` or ``data`` block ``TYPE.NAME``; ``body`` is in Terraform JSON syntax."""

    kind: Kind
    type: str
    name: str
    body: dict[str, Any]


@dataclass
class Blueprint:
    """The whole stack as plain data; :func:`render` turns it into Terraform JSON through cdktf."""

    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, kind: Kind, type_: str, name: str, body: dict[str, Any]) -> None:
        self.blocks.append(Block(kind, type_, name, body))

    def variable(self, name: str, type_: str, description: str, default: Any = ...) -> str:
        """Declare ``var.NAME`` (no ``default`` = required) and return a reference to it."""
        self.variables[name] = {"type": type_, "description": description}
        if default is not ...:
            self.variables[name]["default"] = default
        return f"${{var.{name}}}"

    def output(self, name: str, value: str, description: str) -> None:
        self.outputs[name] = {"value": value, "description": description}


# --- from the project to a blueprint --------------------------------------------------------------


def blueprint(project: Project) -> Blueprint:
    """The Terraform a project needs, as plain data (no cdktf, no Node)."""
    plan = Blueprint()
    location = storage_location(project)
    if project.spec.cluster.provider == "kuberay":
        _kuberay(project, plan, gke=location is not None and location[0] == "gs")
    if location is not None:
        (_s3 if location[0] == "s3" else _gcs)(project, plan, location[1])
    return plan


def storage_location(project: Project) -> tuple[str, str, str] | None:
    """``s3://bucket/a/b`` -> ``('s3', 'bucket', 'a/b')``; ``None`` when artifacts are stored locally."""
    uri = project.spec.storage.artifacts
    match = re.fullmatch(r"(s3|gs)://([^/]*)/*(.*?)/*", uri)
    if match is None:
        return None
    scheme, bucket, prefix = match.groups()
    if not bucket:
        raise TerraformError.one(f"storage.artifacts '{uri}' names no bucket",
                                 project.position("storage", "artifacts"), "storage")
    return scheme, bucket, prefix


def dataset_prefix(project: Project, name: str) -> str:
    """Where dataset ``name`` lives in the artifact bucket: ``<prefix>/datasets/<name>/``."""
    location = storage_location(project)
    base = location[2] if location else ""
    return f"{base}/datasets/{name}/" if base else f"datasets/{name}/"


def _ray_version() -> str | None:
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:  # pragma: no cover - ray is a dependency
        return None


def ray_image(gpu: bool) -> str:
    """``rayproject/ray:<installed ray>-py<this python>``, ``-gpu`` for GPU groups."""
    version = _ray_version() or "latest"
    return f"rayproject/ray:{version}-py{sys.version_info.major}{sys.version_info.minor}{'-gpu' if gpu else ''}"


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


def _k8s_labels(project: Project) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": k8s_name(project.spec.project)}


@dataclass(frozen=True)
class Names:
    """The Kubernetes and Helm names of a project's cluster, each within its limit (see :func:`k8s_name`)."""

    namespace: str
    ray_cluster: str
    ray_release: str
    monitoring_release: str

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
                   monitoring_release=k8s_name(f"{spec.project}-monitoring", HELM_RELEASE_NAME_MAX))


def _cpu(cpus: float) -> str:
    """``2.0`` -> ``'2'``, ``0.5`` -> ``'500m'``."""
    return f"{cpus:g}" if float(cpus).is_integer() else f"{round(cpus * 1000)}m"


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


def _kuberay(project: Project, plan: Blueprint, gke: bool) -> None:
    """Everything in dependency order, so that a fresh cluster takes it in one ``terraform apply``.

    ``kubernetes_manifest`` needs its CRD at plan time, so nothing of a CRD-defined kind is one: the
    RayCluster, the PodMonitor and the PrometheusRule are installed by ``helm_release``s of the local
    chart :data:`MANIFESTS_CHART` (written next to the Terraform), which ``depends_on`` the release that
    installs their CRDs (the KubeRay operator's chart; ``prometheus-operator-crds``).
    """
    names = Names.of(project)
    kube = {"config_path": plan.variable("kubeconfig_path", "string", "Kubeconfig of the Kubernetes cluster",
                                         "~/.kube/config"),
            "config_context": '${var.kube_context == "" ? null : var.kube_context}'}
    plan.variable("kube_context", "string", "Kubeconfig context; empty: the current one", "")
    plan.providers["kubernetes"] = dict(kube)
    plan.providers["helm"] = {"kubernetes": dict(kube)}
    plan.variable("install_prometheus_operator_crds", "bool",
                  "Install prometheus-operator's CRDs (PodMonitor, PrometheusRule, ...) with the pinned "
                  "prometheus-operator-crds chart; false where the cluster has them (kube-prometheus-stack)", True)
    plan.variable("prometheus_labels", "map(string)",
                  "Labels that make your Prometheus select the PodMonitor and the PrometheusRule (kube-prometheus-"
                  'stack selects release = "<its release name>")', {})

    plan.add("resource", "kubernetes_namespace_v1", "cluster",
             {"metadata": {"name": names.namespace, "labels": _k8s_labels(project)}})
    namespace = "${kubernetes_namespace_v1.cluster.metadata[0].name}"
    plan.add("resource", "helm_release", "kuberay_operator",
             {"name": "kuberay-operator", "namespace": namespace, **KUBERAY_CHART, "atomic": True, "wait": True})
    plan.add("resource", "helm_release", "ray_cluster", {
        "name": names.ray_release, "namespace": namespace, "chart": MANIFESTS_CHART_PATH,
        "values": [_helm_values({"manifests": [ray_cluster(project, names.ray_cluster, gke)]})],
        "atomic": True, "wait": True, "depends_on": ["helm_release.kuberay_operator"]})
    plan.add("resource", "helm_release", "prometheus_operator_crds", {
        "count": "${var.install_prometheus_operator_crds ? 1 : 0}", "name": "prometheus-operator-crds",
        "namespace": namespace, **PROMETHEUS_CRDS_CHART, "atomic": True, "wait": True})
    manifests = [ray_pod_monitor(project, names.ray_cluster), *reconciler_metrics(project, names.ray_cluster)]
    if any(monitor.checks for monitor in project.spec.monitors.values()):
        manifests.append(prometheus_rule(project, f"{names.ray_cluster}-monitors"))
    plan.add("resource", "helm_release", "monitoring", {
        "name": names.monitoring_release, "namespace": namespace, "chart": MANIFESTS_CHART_PATH,
        "values": [_helm_values({"manifests": manifests}), '${jsonencode({"labels" = var.prometheus_labels})}'],
        "atomic": True, "wait": True, "depends_on": ["helm_release.prometheus_operator_crds"]})
    plan.output("namespace", namespace, "Namespace of the Ray cluster")
    plan.output("ray_cluster", names.ray_cluster, "Name of the RayCluster")


def _helm_values(values: dict[str, Any]) -> str:
    """A Helm values document (JSON is YAML) as a Terraform string: ``${`` and ``%{`` escaped."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return text.replace("${", "$${").replace("%{", "%%{")


def ray_cluster(project: Project, name: str, gke: bool) -> dict[str, Any]:
    """The ``RayCluster`` manifest: a head group from ``cluster.head``, a worker group per ``cluster.workers``.

    No ``metadata.namespace``: Helm puts it in the release's namespace.
    """
    cluster = project.spec.cluster
    head = {"cpu": _cpu(cluster.head.cpus), "memory": cluster.head.memory}
    ports = [{"name": port, "containerPort": number} for port, number in
             (("gcs", 6379), ("dashboard", 8265), ("client", 10001), ("serve", 8000), ("metrics", RAY_METRICS_PORT))]
    groups = []
    for group_name, group in cluster.workers.items():
        requests = {"cpu": _cpu(group.cpus), "memory": group.memory}
        limits: dict[str, Any] = dict(requests)
        pod: dict[str, Any] = {}
        if group.gpus:
            limits["nvidia.com/gpu"] = group.gpus
            pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        if group.gpu_type:
            pod["affinity"] = gpu_node_affinity(project, group_name, group.gpu_type, gke)
        container = {"name": "ray-worker", "image": ray_image(gpu=group.gpus > 0),
                     "ports": [{"name": "metrics", "containerPort": RAY_METRICS_PORT}],
                     "resources": {"requests": requests, "limits": limits}}
        groups.append({
            "groupName": k8s_name(group_name), "replicas": group.min, "minReplicas": group.min,
            "maxReplicas": group.max, "rayStartParams": {},
            "template": {"metadata": {"labels": {"mlops/worker-group": k8s_name(group_name)}},
                         "spec": {"containers": [container], **pod}},
        })
    spec: dict[str, Any] = {
        "enableInTreeAutoscaling": any(group.min != group.max for group in cluster.workers.values()),
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {"spec": {"containers": [{
                "name": "ray-head", "image": ray_image(gpu=False), "ports": ports,
                "resources": {"requests": head, "limits": head}}]}},
        },
        "workerGroupSpecs": groups,
    }
    version = _ray_version()
    if version is not None:
        spec["rayVersion"] = version
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": name, "labels": _k8s_labels(project)}, "spec": spec}


def reconciler_metrics(project: Project, cluster: str) -> list[dict[str, Any]]:
    """A ``Service`` for the reconciler's metrics port and the ``ServiceMonitor`` that scrapes it.

    They select the pods labelled :func:`reconciler_labels` with a container port named ``metrics``
    (``mlops reconcile --watch --metrics-port`` :data:`RECONCILER_METRICS_PORT`), which is where the
    alert rules' ``mlops_monitor_breach`` comes from. The reconciler's Deployment itself is not emitted
    yet: until one runs with those labels, the Service has no endpoints and nothing is scraped.
    """
    name = k8s_name(f"{cluster}-reconciler")
    selector = reconciler_labels(project)
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "labels": {**_k8s_labels(project), **selector}},
         "spec": {"type": "ClusterIP", "selector": selector, "ports": [
             {"name": "metrics", "port": RECONCILER_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": {"name": name, "labels": _k8s_labels(project)},
         "spec": {"selector": {"matchLabels": selector},
                  "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}]}},
    ]


def reconciler_labels(project: Project) -> dict[str, str]:
    """The labels of the reconciler's pods (and of the Service in front of their metrics)."""
    return {"app.kubernetes.io/name": "mlops-reconciler", "app.kubernetes.io/instance": k8s_name(project.spec.project)}


def ray_pod_monitor(project: Project, cluster: str) -> dict[str, Any]:
    """The ``PodMonitor`` that scrapes the Ray head and workers (Ray's and Ray Serve's metrics).

    Every Ray pod exports on the port named ``metrics`` (8080; KubeRay adds it when a pod lacks it);
    KubeRay labels them ``ray.io/cluster: <name>``, which this keeps as the series label ``ray_io_cluster``.
    """
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": f"{cluster}-ray", "labels": _k8s_labels(project)},
            "spec": {"jobLabel": "ray.io/node-type", "selector": {"matchLabels": {"ray.io/cluster": cluster}},
                     "podMetricsEndpoints": [{"port": "metrics", "relabelings": [{
                         "action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                         "targetLabel": "ray_io_cluster"}]}]}}


def _describe(check: MonitorCheck) -> str:
    if check.type == "accuracy":
        return f"accuracy {check.metric} < {check.min:g} over {check.window} predictions"
    if check.type == "latency":
        return f"latency p95 > {check.p95_ms:g} ms"
    limit = f" > {check.threshold:g}" if check.threshold is not None else ""
    columns = f" on {', '.join(check.columns)}" if check.type == "data_drift" and check.columns else ""
    return f"{check.type} {check.method}{limit}{columns}"


def _alert_rules(project: Project, name: str, monitor: Monitor) -> list[dict[str, Any]]:
    project_name = project.spec.project
    severity = "critical" if "rollback" in monitor.on_breach else "warning"
    return [{
        "alert": "Mlops" + check.type.title().replace("_", ""),
        "expr": f'max(mlops_monitor_breach{{project="{project_name}",monitor="{name}",check="{index}"}}) > 0',
        "labels": {"severity": severity, "mlops_project": project_name, "mlops_monitor": f"monitors.{name}",
                   "mlops_check": f"monitors.{name}.checks[{index}]",
                   "mlops_deployment": f"deployments.{monitor.deployment}"},
        "annotations": {"summary": f"monitors.{name} check {index} breached: {_describe(check)}"},
    } for index, check in enumerate(monitor.checks)]


def prometheus_rule(project: Project, name: str) -> dict[str, Any]:
    """The ``PrometheusRule`` manifest: a group ``monitors.NAME`` per monitor, a rule per check.

    A rule fires while the runtime's gauge ``mlops_monitor_breach{project, monitor, check}`` -- 1
    when the last evaluation of check number ``check`` of the monitor breached, else 0 -- is above 0.
    Its labels ``mlops_monitor`` and ``mlops_check`` (``monitors.NAME.checks[I]``) trace it back.
    """
    groups = [{"name": f"monitors.{monitor_name}", "rules": _alert_rules(project, monitor_name, monitor)}
              for monitor_name, monitor in project.spec.monitors.items() if monitor.checks]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": name, "labels": _k8s_labels(project)}, "spec": {"groups": groups}}


def _retention(project: Project) -> dict[int, list[str]]:
    """``retention_days`` -> the datasets declaring it; both sorted."""
    groups: dict[int, list[str]] = {}
    for name, dataset in sorted(project.spec.datasets.items()):
        if dataset.retention_days is not None:
            groups.setdefault(dataset.retention_days, []).append(name)
    return dict(sorted(groups.items()))


def _readers(project: Project) -> dict[str, list[str]]:
    """Dataset -> its ``access`` principals, sorted, for the datasets that have any."""
    return {name: sorted(set(dataset.access)) for name, dataset in sorted(project.spec.datasets.items())
            if dataset.access}


def _default_region(project: Project, fallback: str) -> str:
    """The region most datasets declare (ties: the first by name), else ``fallback``."""
    counts = Counter(dataset.region for dataset in project.spec.datasets.values() if dataset.region)
    return min(counts, key=lambda region: (-counts[region], region)) if counts else fallback


def _principals(plan: Blueprint, identities: dict[str, str]) -> None:
    """``local.principals``: the conventional identities, overridden by ``var.principals``."""
    plan.variable("principals", "map(string)",
                  "Cloud identity per spec principal (e.g. team:fraud), overriding the naming convention", {})
    plan.locals["principal_conventions"] = dict(sorted(identities.items()))
    plan.locals["principals"] = "${merge(local.principal_conventions, var.principals)}"


def _principal(principal: str) -> str:
    return f'${{local.principals["{principal}"]}}'


def _aws_identity(principal: str, partition: str, account: str) -> str:
    iam = f"arn:{partition}:iam::{account}"
    kind, _, name = principal.partition(":")
    if kind == "team":
        return f"{iam}:role/mlops-team-{name}"
    return f"{iam}:user/{name if kind == 'user' else principal}"


def _gcp_identity(principal: str, domain: str) -> str:
    kind, _, name = principal.partition(":")
    if kind == "team":
        return f"group:{name}@{domain}"
    return f"user:{name}@{domain}" if kind == "user" else f"user:{principal}"


def _s3(project: Project, plan: Blueprint, bucket: str) -> None:
    spec = project.spec
    region = plan.variable("aws_region", "string", "AWS region of the artifact bucket",
                           _default_region(project, "us-east-1"))
    plan.providers["aws"] = {"region": region, "default_tags": [
        {"tags": {"managed-by": MANAGED_BY, "mlops-project": spec.project}}]}
    partition, account = "${data.aws_partition.current.partition}", "${data.aws_caller_identity.current.account_id}"
    plan.add("data", "aws_partition", "current", {})
    plan.add("data", "aws_caller_identity", "current", {})
    bucket_id, bucket_arn = "${aws_s3_bucket.artifacts.id}", f"arn:{partition}:s3:::{bucket}"
    readers = _readers(project)
    principals = sorted({p for names in readers.values() for p in names})
    if principals:
        _principals(plan, {p: _aws_identity(p, partition, account) for p in principals})

    plan.add("resource", "aws_s3_bucket", "artifacts", {"bucket": bucket, "force_destroy": False})
    plan.add("resource", "aws_s3_bucket_ownership_controls", "artifacts",
             {"bucket": bucket_id, "rule": [{"object_ownership": "BucketOwnerEnforced"}]})
    plan.add("resource", "aws_s3_bucket_public_access_block", "artifacts", {
        "bucket": bucket_id, "block_public_acls": True, "block_public_policy": True,
        "ignore_public_acls": True, "restrict_public_buckets": True})
    plan.add("resource", "aws_s3_bucket_versioning", "artifacts",
             {"bucket": bucket_id, "versioning_configuration": [{"status": "Enabled"}]})
    plan.add("resource", "aws_s3_bucket_notification", "artifacts", {"bucket": bucket_id, "eventbridge": True})
    _s3_access_logs(project, plan, bucket, bucket_arn, partition, account)
    if spec.storage.encryption == "kms":
        key_policy = {"Version": "2012-10-17", "Statement": [{
            "Sid": "AccountAdministersKey", "Effect": "Allow", "Action": "kms:*", "Resource": "*",
            "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"}}]}
        plan.add("resource", "aws_kms_key", "artifacts", {
            "description": f"mlops {spec.project}: artifact bucket {bucket}", "enable_key_rotation": True,
            "deletion_window_in_days": 30, "is_enabled": True, "policy": json.dumps(key_policy, sort_keys=True)})
        plan.add("resource", "aws_kms_alias", "artifacts",
                 {"name": f"alias/mlops-{spec.project}-artifacts", "target_key_id": "${aws_kms_key.artifacts.key_id}"})
        if principals:
            plan.add("resource", "aws_kms_grant", "dataset_readers", {
                "for_each": {p: p for p in principals}, "name": "mlops-dataset-reader",
                "key_id": "${aws_kms_key.artifacts.key_id}", "grantee_principal": "${local.principals[each.key]}",
                "operations": ["Decrypt", "DescribeKey"],
                # S3 bucket keys use the bucket's ARN as encryption context
                "constraints": [{"encryption_context_subset": {"aws:s3:arn": bucket_arn}}]})
        plan.output("kms_key_arn", "${aws_kms_key.artifacts.arn}", "KMS key of the artifact bucket")
        default = {"sse_algorithm": "aws:kms", "kms_master_key_id": "${aws_kms_key.artifacts.arn}"}
    else:
        default = {"sse_algorithm": "AES256"}
    if spec.storage.encryption != "none":
        plan.add("resource", "aws_s3_bucket_server_side_encryption_configuration", "artifacts", {
            "bucket": bucket_id,
            "rule": [{"apply_server_side_encryption_by_default": [default], "bucket_key_enabled": True}]})
    plan.add("resource", "aws_s3_bucket_lifecycle_configuration", "artifacts", {
        "bucket": bucket_id, "rule": _s3_lifecycle(project), "depends_on": ["aws_s3_bucket_versioning.artifacts"]})
    statements = _s3_statements(project, readers, bucket_arn)
    _check_policy_size(project, statements, bucket)
    plan.add("data", "aws_iam_policy_document", "artifacts_bucket", {"statement": statements})
    plan.add("resource", "aws_s3_bucket_policy", "artifacts", {
        "bucket": bucket_id, "policy": "${data.aws_iam_policy_document.artifacts_bucket.json}",
        "depends_on": ["aws_s3_bucket_public_access_block.artifacts"]})
    plan.output("artifact_bucket", "${aws_s3_bucket.artifacts.bucket}", "The artifact bucket")


def access_log_bucket(bucket: str) -> str:
    """The access-log bucket's name: ``<bucket>-access-logs``, cut to S3's 63 characters with a hash."""
    name = f"{bucket}-access-logs"
    if len(name) <= S3_BUCKET_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:S3_BUCKET_NAME_MAX - 9].rstrip('-.')}-{digest}"


def _s3_access_logs(project: Project, plan: Blueprint, bucket: str, bucket_arn: str, partition: str,
                    account: str) -> None:
    """Server access logs of the artifact bucket, in a bucket of their own: private, versioned, SSE-S3
    (the only encryption log delivery supports), expiring after ``var.access_log_retention_days``, and
    writable only by S3's logging service on behalf of the artifact bucket."""
    days = plan.variable("access_log_retention_days", "number", "Days S3 access logs of the artifact bucket are kept",
                         ACCESS_LOG_RETENTION_DAYS)
    logs = access_log_bucket(bucket)
    logs_id, logs_arn = "${aws_s3_bucket.access_logs.id}", f"arn:{partition}:s3:::{logs}"
    plan.add("resource", "aws_s3_bucket", "access_logs", {"bucket": logs, "force_destroy": False})
    plan.add("resource", "aws_s3_bucket_ownership_controls", "access_logs",
             {"bucket": logs_id, "rule": [{"object_ownership": "BucketOwnerEnforced"}]})
    plan.add("resource", "aws_s3_bucket_public_access_block", "access_logs", {
        "bucket": logs_id, "block_public_acls": True, "block_public_policy": True,
        "ignore_public_acls": True, "restrict_public_buckets": True})
    plan.add("resource", "aws_s3_bucket_versioning", "access_logs",
             {"bucket": logs_id, "versioning_configuration": [{"status": "Enabled"}]})
    plan.add("resource", "aws_s3_bucket_server_side_encryption_configuration", "access_logs", {
        "bucket": logs_id, "rule": [{"apply_server_side_encryption_by_default": [{"sse_algorithm": "AES256"}]}]})
    plan.add("resource", "aws_s3_bucket_lifecycle_configuration", "access_logs", {
        "bucket": logs_id, "depends_on": ["aws_s3_bucket_versioning.access_logs"], "rule": [{
            "id": "expire-access-logs", "status": "Enabled", "filter": [{"prefix": ""}],
            "expiration": [{"days": days}],
            "noncurrent_version_expiration": [{"noncurrent_days": NONCURRENT_DAYS}],
            "abort_incomplete_multipart_upload": [{"days_after_initiation": ABORT_MULTIPART_DAYS}]}]})
    plan.add("data", "aws_iam_policy_document", "access_logs", {"statement": [
        {"sid": "DenyInsecureTransport", "effect": "Deny", "actions": ["s3:*"],
         "resources": [logs_arn, f"{logs_arn}/*"], "principals": [{"type": "*", "identifiers": ["*"]}],
         "condition": [{"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]}]},
        {"sid": "S3ServerAccessLogsFromTheArtifactBucket", "effect": "Allow", "actions": ["s3:PutObject"],
         "resources": [f"{logs_arn}/{ACCESS_LOG_PREFIX}*"],
         "principals": [{"type": "Service", "identifiers": ["logging.s3.amazonaws.com"]}],
         "condition": [{"test": "ArnLike", "variable": "aws:SourceArn", "values": [bucket_arn]},
                       {"test": "StringEquals", "variable": "aws:SourceAccount", "values": [account]}]}]})
    plan.add("resource", "aws_s3_bucket_policy", "access_logs", {
        "bucket": logs_id, "policy": "${data.aws_iam_policy_document.access_logs.json}",
        "depends_on": ["aws_s3_bucket_public_access_block.access_logs"]})
    plan.add("resource", "aws_s3_bucket_logging", "artifacts", {
        "bucket": "${aws_s3_bucket.artifacts.id}", "target_bucket": logs_id, "target_prefix": ACCESS_LOG_PREFIX,
        "depends_on": ["aws_s3_bucket_policy.access_logs"]})
    plan.output("access_log_bucket", "${aws_s3_bucket.access_logs.bucket}", "S3 access logs of the artifact bucket")


def _s3_lifecycle(project: Project) -> list[dict[str, Any]]:
    """Abort stale multipart uploads bucket-wide; expire each dataset's prefix after its retention."""
    rules: list[dict[str, Any]] = [{
        "id": "abort-incomplete-multipart-uploads", "status": "Enabled", "filter": [{"prefix": ""}],
        "abort_incomplete_multipart_upload": [{"days_after_initiation": ABORT_MULTIPART_DAYS}]}]
    rules.extend({
        "id": f"retention-{days}d-datasets.{name}", "status": "Enabled",
        "filter": [{"prefix": dataset_prefix(project, name)}], "expiration": [{"days": days}],
        "noncurrent_version_expiration": [{"noncurrent_days": NONCURRENT_DAYS}],
    } for days, names in _retention(project).items() for name in names)
    if len(rules) > S3_MAX_LIFECYCLE_RULES:
        raise TerraformError.one(
            f"{len(rules) - 1} datasets declare retention_days but an S3 bucket holds at most "
            f"{S3_MAX_LIFECYCLE_RULES} lifecycle rules (one per dataset, plus one); store some of them in "
            "another bucket", project.position("storage", "artifacts"), "storage")
    return rules


def _s3_statements(project: Project, readers: dict[str, list[str]], bucket_arn: str) -> list[dict[str, Any]]:
    """Deny plain HTTP; let each distinct set of readers get and list its datasets' prefixes."""
    statements: list[dict[str, Any]] = [{
        "sid": "DenyInsecureTransport", "effect": "Deny", "actions": ["s3:*"],
        "resources": [bucket_arn, f"{bucket_arn}/*"], "principals": [{"type": "*", "identifiers": ["*"]}],
        "condition": [{"test": "Bool", "variable": "aws:SecureTransport", "values": ["false"]}]}]
    datasets_of: dict[tuple[str, ...], list[str]] = {}
    for name, principals in readers.items():
        datasets_of.setdefault(tuple(principals), []).append(name)
    for index, (group, names) in enumerate(datasets_of.items(), 1):
        who = [{"type": "AWS", "identifiers": [_principal(p) for p in group]}]
        if len(names) == len(project.spec.datasets):  # readers of every dataset: one prefix covers them
            prefixes = [dataset_prefix(project, names[0]).rsplit("/", 2)[0] + "/"]
        else:
            prefixes = [dataset_prefix(project, name) for name in names]
        statements.append({"sid": f"ReadDatasets{index}", "effect": "Allow", "principals": who,
                           "actions": ["s3:GetObject", "s3:GetObjectVersion"],
                           "resources": [f"{bucket_arn}/{prefix}*" for prefix in prefixes]})
        statements.append({"sid": f"ListDatasets{index}", "effect": "Allow", "principals": who,
                           "actions": ["s3:ListBucket"], "resources": [bucket_arn],
                           "condition": [{"test": "StringLike", "variable": "s3:prefix",
                                          "values": [f"{prefix}*" for prefix in prefixes]}]})
    return statements


def _check_policy_size(project: Project, statements: list[dict[str, Any]], bucket: str) -> None:
    """Raise when the bucket policy, rendered for a 12-digit account, would pass S3's 20 KiB cap."""
    text = json.dumps([{
        "Sid": s["sid"], "Effect": s["effect"], "Action": s["actions"], "Resource": s["resources"],
        "Principal": {s["principals"][0]["type"]: s["principals"][0]["identifiers"]},
        "Condition": {c["test"]: {c["variable"]: c["values"]} for c in s.get("condition", [])},
    } for s in statements], separators=(",", ":"))
    text = re.sub(r'\$\{local\.principals\[\\"(.*?)\\"\]\}',
                  lambda match: _aws_identity(match.group(1), "aws", "123456789012"), text)
    text = text.replace("${data.aws_partition.current.partition}", "aws")
    if len(text) > S3_MAX_POLICY_BYTES:
        raise TerraformError.one(
            f"the bucket policy for the datasets' `access` lists would be about {len(text) // 1024} KiB, over "
            f"S3's {S3_MAX_POLICY_BYTES // 1024} KiB limit for bucket {bucket}; give datasets common readers "
            "or store some of them in another bucket", project.position("storage", "artifacts"), "storage")


def _gcs(project: Project, plan: Blueprint, bucket: str) -> None:
    spec = project.spec
    gcp_project = plan.variable("gcp_project", "string", "Google Cloud project of the artifact bucket")
    location = plan.variable("gcp_location", "string", "Location of the artifact bucket and its key ring",
                             _default_region(project, "US"))
    plan.providers["google"] = {"project": gcp_project,
                                "default_labels": {"managed-by": MANAGED_BY, "mlops-project": spec.project}}
    readers = _readers(project)
    principals = sorted({p for names in readers.values() for p in names})
    if principals:
        domain = plan.variable("principal_domain", "string", "Google Workspace/Cloud Identity domain of "
                               "the groups and users that team:X and user:X map to") \
            if any(p.startswith(("team:", "user:")) for p in principals) else ""
        _principals(plan, {p: _gcp_identity(p, domain) for p in principals})

    body: dict[str, Any] = {
        "name": bucket, "location": location, "force_destroy": False, "uniform_bucket_level_access": True,
        "public_access_prevention": "enforced", "versioning": [{"enabled": True}],
    }
    if spec.storage.encryption == "kms":
        plan.add("resource", "google_kms_key_ring", "artifacts",
                 {"name": f"mlops-{spec.project}", "location": "${lower(var.gcp_location)}"})
        plan.add("resource", "google_kms_crypto_key", "artifacts", {
            "name": "artifacts", "key_ring": "${google_kms_key_ring.artifacts.id}", "purpose": "ENCRYPT_DECRYPT",
            "rotation_period": f"{KMS_ROTATION_SECONDS}s", "lifecycle": [{"prevent_destroy": True}]})
        plan.add("data", "google_storage_project_service_account", "gcs", {})
        plan.add("resource", "google_kms_crypto_key_iam_member", "gcs_service_agent", {
            "crypto_key_id": "${google_kms_crypto_key.artifacts.id}",
            "role": "roles/cloudkms.cryptoKeyEncrypterDecrypter",
            "member": "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"})
        body["encryption"] = [{"default_kms_key_name": "${google_kms_crypto_key.artifacts.id}"}]
        body["depends_on"] = ["google_kms_crypto_key_iam_member.gcs_service_agent"]
        plan.output("kms_key", "${google_kms_crypto_key.artifacts.id}", "KMS key of the artifact bucket")
    body["lifecycle_rule"] = [{"action": [{"type": "AbortIncompleteMultipartUpload"}],
                               "condition": [{"age": ABORT_MULTIPART_DAYS}]}]
    for days, names in _retention(project).items():
        prefixes = [dataset_prefix(project, name) for name in names]
        body["lifecycle_rule"] += [
            {"action": [{"type": "Delete"}], "condition": [{"age": days, "matches_prefix": prefixes}]},
            {"action": [{"type": "Delete"}], "condition": [{"days_since_noncurrent_time": NONCURRENT_DAYS,
                                                            "with_state": "ARCHIVED", "matches_prefix": prefixes}]}]
    plan.add("resource", "google_storage_bucket", "artifacts", body)
    if readers:
        plan.add("resource", "google_storage_managed_folder", "datasets", {
            "for_each": {name: dataset_prefix(project, name) for name in readers},
            "bucket": "${google_storage_bucket.artifacts.name}", "name": "${each.value}"})
        plan.add("resource", "google_storage_managed_folder_iam_member", "dataset_readers", {
            "for_each": {f"datasets.{name} {p}": {"dataset": name, "principal": p}
                         for name, names in readers.items() for p in names},
            "bucket": "${google_storage_bucket.artifacts.name}",
            "managed_folder": "${google_storage_managed_folder.datasets[each.value.dataset].name}",
            "role": "roles/storage.objectViewer", "member": "${local.principals[each.value.principal]}"})
    plan.output("artifact_bucket", "${google_storage_bucket.artifacts.name}", "The artifact bucket")


# --- from a blueprint to Terraform JSON, through cdktf --------------------------------------------


def synthesize(project: Project, out_dir: Path) -> list[Path]:
    """Write ``out_dir/cdk.tf.json`` and, for KubeRay, the chart :data:`MANIFESTS_CHART` in
    ``out_dir/charts/``; returns the files written, ``cdk.tf.json`` first (none for a local-only project).
    Each file is replaced atomically; files of an earlier compile that this one does not write are removed."""
    plan = blueprint(project)
    target = out_dir / TERRAFORM_FILE
    chart = out_dir / "charts" / MANIFESTS_CHART
    uses_chart = any(block.body.get("chart") == MANIFESTS_CHART_PATH for block in plan.blocks)
    if not plan.blocks:
        target.unlink(missing_ok=True)
        _remove_chart(chart)
        return []
    text = json.dumps(render(plan), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    written = [target]
    if uses_chart:
        for name, content in MANIFESTS_CHART_FILES.items():
            _write_file(chart / name, content)
            written.append(chart / name)
    else:
        _remove_chart(chart)
    _write_file(target, text)
    return written


def _write_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically (mode from the umask, as any new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _remove_chart(chart: Path) -> None:
    """Remove the files of :data:`MANIFESTS_CHART` and then the folders they leave empty (nothing else)."""
    for name in MANIFESTS_CHART_FILES:
        (chart / name).unlink(missing_ok=True)
    for folder in (chart / "templates", chart, chart.parent):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: someone else's files
            break


def _import_cdktf() -> None:
    """Import cdktf, keeping jsii's banner about the Node version off the user's terminal."""
    majors = ",".join(str(major) for major in range(14, 40))
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", majors)
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", majors)
    import cdktf  # noqa: F401


SPLICE_BYTES = 4096
"""Attribute values whose JSON is longer than this go around jsii (see :class:`_Splicer`)."""


class _Splicer:
    """Keeps large attribute values out of jsii and puts them back into cdktf's output.

    jsii marshals a nested value node by node on both sides of its pipe, and cdktf walks it again
    when it synthesizes: about 40 µs a JSON node, 2.5 s for 4,000 alert rules. Blueprint values hold
    no cdktf tokens (references are ``${...}`` strings, which cdktf copies as they are), so a large
    value goes to cdktf as a placeholder and is put back in its place after synthesis; the result
    is the document cdktf itself writes (``tests/test_terraform.py`` checks that).
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.values: dict[tuple[str, ...], tuple[str, Any]] = {}

    def __call__(self, path: tuple[str, ...], value: Any) -> Any:
        if self.limit is None or len(json.dumps(value)) <= self.limit:
            return value
        placeholder = f"mlops-splice-{len(self.values)}"
        self.values[path] = (placeholder, value)
        return placeholder

    def apply(self, document: dict[str, Any]) -> None:
        for (*parents, key), (placeholder, value) in self.values.items():
            node = document
            for part in parents:
                node = node[part]
            if node.get(key) != placeholder:
                raise TerraformError.one(f"cdktf wrote no {'.'.join(parents)}.{key} where expected")
            node[key] = value


def render(plan: Blueprint, splice_bytes: int | None = SPLICE_BYTES) -> dict[str, Any]:
    """The Terraform JSON of a blueprint, synthesized by cdktf; ``splice_bytes=None``: all through jsii."""
    _import_cdktf()
    import cdktf

    class Provider(cdktf.TerraformProvider):
        """Any provider by name; cdktf core writes its ``required_providers`` entry."""

    splice = _Splicer(splice_bytes)
    with tempfile.TemporaryDirectory(prefix="mlops-cdktf-") as outdir:
        app = cdktf.App(outdir=outdir, skip_validation=True)
        stack = cdktf.TerraformStack(app, STACK_NAME)
        cdktf.LocalBackend(stack, path="terraform.tfstate")  # relative: no absolute path in the output
        for name, config in sorted(plan.providers.items()):
            source, version = PROVIDERS[name]
            provider = Provider(stack, f"provider_{name}", terraform_resource_type=name,
                                terraform_provider_source=source,
                                terraform_generator_metadata=cdktf.TerraformProviderGeneratorMetadata(
                                    provider_name=name, provider_version=version))
            for key, value in config.items():
                provider.add_override(key, value)
        for name, spec in plan.variables.items():
            variable = cdktf.TerraformVariable(stack, f"var_{name}", type=spec["type"],
                                               description=spec["description"])
            variable.override_logical_id(name)
            if "default" in spec:
                variable.add_override("default", spec["default"])
        for name, value in plan.locals.items():
            cdktf.TerraformLocal(stack, f"local_{name}", splice(("locals", name), value)).override_logical_id(name)
        for block in plan.blocks:
            kind = cdktf.TerraformResource if block.kind == "resource" else cdktf.TerraformDataSource
            element = kind(stack, f"{block.kind}_{block.type}_{block.name}", terraform_resource_type=block.type)
            element.override_logical_id(block.name)
            for key, value in block.body.items():
                element.add_override(key, splice((block.kind, block.type, block.name, key), value))
        for name, output in plan.outputs.items():
            cdktf.TerraformOutput(stack, f"output_{name}", value=output["value"],
                                  description=output["description"]).override_logical_id(name)
        app.synth()
        document: dict[str, Any] = json.loads(
            (Path(outdir) / "stacks" / STACK_NAME / TERRAFORM_FILE).read_text(encoding="utf-8"))
    splice.apply(document)
    return document
