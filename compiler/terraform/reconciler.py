"""``cluster.reconciler``: the GitOps loop (``mlops reconcile --watch``) as a Deployment next to the RayCluster.

The manifests -- a ``ServiceAccount``, a ``Deployment`` and a ``NetworkPolicy`` that admits only connections to
its metrics port -- go into their own release of the local chart
(:func:`compiler.terraform.kuberay.add_cluster`); the ``Service`` and ``ServiceMonitor`` in front of the
Deployment's ``metrics`` port are in the monitoring release (:func:`compiler.terraform.monitoring.reconciler_metrics`).

What the pod gets, and from where:

* the command ``mlops -f <spec path in the repository> reconcile --watch --repo R --branch B`` with its
  clone in an ``emptyDir`` (a restart clones again: the branch is the desired state, the state store the
  rest) and Prometheus metrics on every interface, port :data:`RECONCILER_METRICS_PORT`;
* its environment from the **existing** Secret ``cluster.reconciler.secret`` (``envFrom``): whatever the
  spec's storage needs -- ``PGPASSWORD`` (or ``MLOPS_STATE_URL``, which overrides ``storage.state``),
  ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL`` for ``s3://`` artifacts,
  ``MLOPS_GIT_TOKEN`` for an ``https://`` repository, a realtime deployment's ``auth.token_env``. The
  Secret's values never pass through Terraform (they would sit in its state in clear): create it with
  ``kubectl create secret generic``. The release does not wait for the pod, so ``terraform apply`` does not
  hang on a Secret created afterwards; the kubelet starts the pod once the Secret exists;
* no Kubernetes API access: the loop talks to Ray (``cluster.address``), the state store, the artifact store
  and git, so its ``ServiceAccount`` has no role and mounts no token;
* hardening that checkov's Kubernetes checks ask for (``tests/test_terraform.py`` runs them): a non-root
  user, no privilege escalation, every capability dropped, the runtime's default seccomp profile, a
  read-only root filesystem (the clone, ``$HOME`` and ``/tmp`` are ``emptyDir``), requests and limits, and
  liveness and readiness probes on the metrics port.

One replica, replaced with ``Recreate``: two loops would only take turns on the state lock.
"""

from __future__ import annotations

from typing import Any

from compiler.resolve import Project
from compiler.spec import Reconciler
from compiler.terraform.monitoring import RECONCILER_METRICS_PORT, reconciler_labels
from compiler.terraform.names import Names, k8s_labels

WORK_DIR = "/var/lib/mlops"
"""The pod's working directory and ``$HOME`` (an ``emptyDir``): the clone is in ``checkout/`` under it."""
RUN_AS = 10001
"""The user and group the container runs as: not root, and above the UIDs an image's own users take."""
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"},
             "limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "6Gi"}}
"""The loop compiles, hashes the data it reads and drives Ray; the work runs on the cluster."""
WORK_SIZE = "4Gi"
"""The clone's ``emptyDir`` (``mlops reconcile --max-repo-size`` is 1 GiB: objects plus the files at the tip)."""
TMP_SIZE = "1Gi"
GRACE_SECONDS = 600
"""SIGTERM stops the loop after the step in progress (an apply finishes first); after this, Kubernetes kills it."""

KUBERNETES_CHECKOV_EXEMPTIONS: dict[tuple[str, str], str] = {
    ("CKV_K8S_35", "Deployment"):
        "the state and artifact clients read their credentials from the environment (libpq's PGPASSWORD, the AWS "
        "SDK's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, as SPEC section 4 says) and a Secret's keys are "
        "any the spec needs (a deployment's auth.token_env), so the Secret is the pod's environment, not files",
}
"""The checks of checkov's ``kubernetes`` framework that the reconciler's manifests knowingly fail, and why."""


def reconciler_args(project: Project, settings: Reconciler) -> list[str]:
    """The container's arguments after ``mlops``: ``-f`` is the spec's path inside the repository."""
    spec_in_repository = project.spec_path.relative_to(project.root).as_posix()
    return ["-f", spec_in_repository, "reconcile", "--watch", "--repo", settings.repo, "--branch", settings.branch,
            "--checkout", f"{WORK_DIR}/checkout", "--metrics-port", str(RECONCILER_METRICS_PORT),
            "--metrics-host", "0.0.0.0"]


def reconciler_manifests(project: Project, names: Names) -> list[dict[str, Any]]:
    """The reconciler's ``ServiceAccount``, ``Deployment`` and ``NetworkPolicy`` (with ``cluster.reconciler``)."""
    settings = project.spec.cluster.reconciler
    assert settings is not None
    selector = reconciler_labels(project)
    labels = {**k8s_labels(project), **selector}
    metadata = {"name": names.reconciler, "namespace": names.namespace, "labels": labels}
    probe = {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 30, "timeoutSeconds": 5}
    container = {
        "name": "reconciler", "image": settings.image, "imagePullPolicy": "Always",
        "command": ["mlops"], "args": reconciler_args(project, settings), "workingDir": WORK_DIR,
        "env": [{"name": "HOME", "value": WORK_DIR}, {"name": "TMPDIR", "value": "/tmp"},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "envFrom": [{"secretRef": {"name": settings.secret}}],
        "ports": [{"name": "metrics", "containerPort": RECONCILER_METRICS_PORT, "protocol": "TCP"}],
        "resources": RESOURCES,
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 4},
        "readinessProbe": {**probe, "initialDelaySeconds": 5, "failureThreshold": 2},
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                            "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "serviceAccountName": names.reconciler, "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "work", "emptyDir": {"sizeLimit": WORK_SIZE}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata, "automountServiceAccountToken": False},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": {
            "replicas": 1, "revisionHistoryLimit": 5, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": pod}}},
        # nothing but the metrics port is open to other pods; its own connections (Ray, state, git) are not limited
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata, "spec": {
            "podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": RECONCILER_METRICS_PORT, "protocol": "TCP"}]}]}},
    ]


def ray_client_address(names: Names) -> str:
    """The Ray Client address of the RayCluster from inside Kubernetes (KubeRay's head Service ``<name>-head-svc``)."""
    return f"ray://{names.ray_cluster}-head-svc.{names.namespace}.svc.cluster.local:10001"
