"""What Prometheus scrapes and alerts on: the Ray pods' ``PodMonitor``, the reconciler's metrics
``Service`` and ``ServiceMonitor``, and a ``PrometheusRule`` with a rule per monitor check."""

from __future__ import annotations

from typing import Any

from compiler.resolve import Project
from compiler.spec import Monitor, MonitorCheck
from compiler.terraform.names import k8s_labels, k8s_name

RAY_METRICS_PORT = 8080
RECONCILER_METRICS_PORT = 9464


def reconciler_metrics(project: Project, cluster: str, namespace: str) -> list[dict[str, Any]]:
    """A ``Service`` for the reconciler's metrics port and the ``ServiceMonitor`` that scrapes it.

    They select the pods labelled :func:`reconciler_labels` with a container port named ``metrics``
    (``mlops reconcile --watch --metrics-port`` :data:`RECONCILER_METRICS_PORT`), which is where the
    alert rules' ``mlops_monitor_breach`` comes from. With ``cluster.reconciler`` that is the Deployment of
    :func:`compiler.terraform.reconciler.reconciler_manifests` (same name, these labels); without it, the
    Service has no endpoints until a reconciler of your own runs with those labels and that port.
    """
    name = k8s_name(f"{cluster}-reconciler")
    selector = reconciler_labels(project)
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": namespace, "labels": {**k8s_labels(project), **selector}},
         "spec": {"type": "ClusterIP", "selector": selector, "ports": [
             {"name": "metrics", "port": RECONCILER_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": {"name": name, "namespace": namespace, "labels": k8s_labels(project)},
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
            "metadata": {"name": f"{cluster}-ray", "labels": k8s_labels(project)},
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
            "metadata": {"name": name, "labels": k8s_labels(project)}, "spec": {"groups": groups}}
