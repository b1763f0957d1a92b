"""Terraform for a project's Ray cluster and artifact storage, synthesized through CDK for Terraform.

``synthesize(project, out_dir)`` writes ``out_dir/cdk.tf.json`` (``mlops compile --out DIR`` puts it
in ``DIR/terraform/``); run ``terraform init && terraform apply`` there. Two halves:

* :func:`blueprint` turns a :class:`Project` into plain data (providers, variables, locals, blocks,
  outputs). It never starts Node, so ``validate`` and ``plan`` may call it.
* :func:`render` hands the blueprint to cdktf core -- ``TerraformStack``, a ``TerraformProvider``
  subclass, ``TerraformResource``/``TerraformDataSource`` with ``terraform_resource_type``,
  ``TerraformVariable``/``TerraformLocal``/``TerraformOutput``; no prebuilt provider packages -- with
  one construct per block and one ``add_override`` per attribute, so jsii round trips do not grow with
  the number of datasets or monitors. Values over :data:`SPLICE_BYTES` go around jsii. cdktf is
  imported in :mod:`compiler.terraform.stack` only, lazily.

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
  one ``PrometheusRule`` holding a rule per monitor check (see :func:`prometheus_rule`); with
  ``cluster.reconciler``, the reconciler itself (``mlops reconcile --watch --repo ...``): a ``ServiceAccount``,
  a ``Deployment`` whose environment comes from an existing Secret and a ``NetworkPolicy`` (see
  :func:`reconciler_manifests`).
  A GPU group gets an ``nvidia.com/gpu`` limit, a toleration of the ``nvidia.com/gpu`` taint and a
  required node affinity from ``gpu_type`` (see :func:`gpu_node_affinity` and :data:`GPU_TYPES`).
  Names are valid Kubernetes names within their limits (see :class:`Names`). Images are
  ``rayproject/ray:<installed ray>-py<this python>[-gpu]``: the cluster runs what the driver runs.
* ``storage.artifacts`` on ``s3://`` or ``gs://``: the bucket, versioned, with all public access
  blocked, encrypted per ``storage.encryption`` (``kms``: a customer-managed key with rotation;
  ``sse``: provider-managed keys; ``none``: the cloud's default), lifecycle rules from the datasets'
  ``retention_days`` (expiry after that many days, older versions one day later) and read access
  per dataset ``access`` list (principals map to cloud identities as :mod:`compiler.terraform.storage`
  says). A dataset's objects live under :func:`dataset_prefix`. On S3 also: server access logs in a
  bucket of their own (:func:`access_log_bucket`) and object events to EventBridge.
  :data:`CHECKOV_EXEMPTIONS` lists the checkov checks that knowingly fail, and why.
* ``cluster.provider: local`` with local storage: nothing. No file is written (a stale
  ``cdk.tf.json`` is removed) and Node is not started.

State stays local (``terraform.tfstate``); put a ``backend_override.tf.json`` next to the output for a
remote backend. Cloud limits are checked here rather than at apply time (see :mod:`compiler.terraform.s3`).

One module per concern: ``model`` (the blueprint), ``names`` (Kubernetes names and labels), ``gpu``
(GPU node affinity), ``kuberay``, ``monitoring`` and ``reconciler`` (the cluster, what Prometheus scrapes
and the GitOps loop),
``storage``, ``s3`` and ``gcs`` (the artifact bucket), ``stack`` (cdktf) and ``synth`` (the pass
and the files it writes).
"""

from __future__ import annotations

from compiler.terraform.gcs import KMS_ROTATION_SECONDS
from compiler.terraform.gpu import GPU_LABEL, GPU_LABEL_GKE, GPU_TYPES, GpuType, gpu_node_affinity
from compiler.terraform.kuberay import (
    KUBERAY_CHART,
    MANIFESTS_CHART,
    MANIFESTS_CHART_FILES,
    MANIFESTS_CHART_PATH,
    PROMETHEUS_CRDS_CHART,
    ray_cluster,
    ray_image,
)
from compiler.terraform.model import MANAGED_BY, Block, Blueprint, Kind
from compiler.terraform.monitoring import (
    RAY_METRICS_PORT,
    RECONCILER_METRICS_PORT,
    prometheus_rule,
    ray_pod_monitor,
    reconciler_labels,
    reconciler_metrics,
)
from compiler.terraform.names import (
    HELM_RELEASE_NAME_MAX,
    K8S_LABEL_MAX,
    LABEL_VALUE,
    RAY_CLUSTER_NAME_MAX,
    RFC1123_LABEL,
    Names,
    k8s_name,
)
from compiler.terraform.reconciler import (
    KUBERNETES_CHECKOV_EXEMPTIONS,
    RUN_AS,
    WORK_DIR,
    ray_client_address,
    reconciler_args,
    reconciler_manifests,
)
from compiler.terraform.s3 import (
    ACCESS_LOG_PREFIX,
    ACCESS_LOG_RETENTION_DAYS,
    S3_BUCKET_NAME_MAX,
    S3_MAX_LIFECYCLE_RULES,
    S3_MAX_POLICY_BYTES,
    access_log_bucket,
)
from compiler.terraform.stack import PROVIDERS, SPLICE_BYTES, STACK_NAME, TERRAFORM_FILE, render
from compiler.terraform.storage import (
    ABORT_MULTIPART_DAYS,
    CHECKOV_EXEMPTIONS,
    NONCURRENT_DAYS,
    dataset_prefix,
    storage_location,
)
from compiler.terraform.synth import blueprint, synthesize

__all__ = [
    "ABORT_MULTIPART_DAYS", "ACCESS_LOG_PREFIX", "ACCESS_LOG_RETENTION_DAYS", "CHECKOV_EXEMPTIONS", "GPU_LABEL",
    "GPU_LABEL_GKE", "GPU_TYPES", "HELM_RELEASE_NAME_MAX", "K8S_LABEL_MAX", "KMS_ROTATION_SECONDS", "KUBERAY_CHART",
    "KUBERNETES_CHECKOV_EXEMPTIONS", "LABEL_VALUE", "MANAGED_BY", "MANIFESTS_CHART", "MANIFESTS_CHART_FILES",
    "MANIFESTS_CHART_PATH", "NONCURRENT_DAYS", "PROMETHEUS_CRDS_CHART", "PROVIDERS", "RAY_CLUSTER_NAME_MAX",
    "RAY_METRICS_PORT", "RECONCILER_METRICS_PORT", "RFC1123_LABEL", "RUN_AS", "S3_BUCKET_NAME_MAX",
    "S3_MAX_LIFECYCLE_RULES", "S3_MAX_POLICY_BYTES", "SPLICE_BYTES", "STACK_NAME", "TERRAFORM_FILE", "WORK_DIR",
    "Block", "Blueprint", "GpuType", "Kind", "Names", "access_log_bucket", "blueprint", "dataset_prefix",
    "gpu_node_affinity", "k8s_name", "prometheus_rule", "ray_client_address", "ray_cluster", "ray_image",
    "ray_pod_monitor", "reconciler_args", "reconciler_labels", "reconciler_manifests", "reconciler_metrics", "render",
    "storage_location", "synthesize",
]
