"""Terraform synthesis (compiler/terraform/): each emitted resource, and why it is there.

Specs are written to tmp dirs and loaded through ``compiler.load_project``; the Terraform JSON is the
one ``synthesize`` writes through cdktf (Node starts once per test session).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from compiler import load_project
from compiler.errors import TerraformError
from compiler.resolve import Project
from compiler.terraform import (
    CHECKOV_EXEMPTIONS,
    GPU_LABEL,
    GPU_LABEL_GKE,
    GPU_TYPES,
    KUBERAY_CHART,
    KUBERNETES_CHECKOV_EXEMPTIONS,
    MANIFESTS_CHART,
    MANIFESTS_CHART_FILES,
    MANIFESTS_CHART_PATH,
    PROMETHEUS_CRDS_CHART,
    PROVIDERS,
    RECONCILER_METRICS_PORT,
    RUN_AS,
    SPLICE_BYTES,
    TERRAFORM_FILE,
    WORK_DIR,
    access_log_bucket,
    blueprint,
    k8s_name,
    render,
    synthesize,
)
from compiler.terraform.kuberay import _helm_values

REPO = Path(__file__).resolve().parents[1]

BASE: dict[str, Any] = {
    "apiVersion": "mlops/v1",
    "project": "churn",
    "cluster": {
        "provider": "kuberay",
        "head": {"cpus": 2, "memory": "8Gi"},
        "workers": {
            "gpu": {"gpus": 1, "gpu_type": "nvidia-h100", "cpus": 8, "memory": "64Gi", "min": 0, "max": 4},
            "cpu": {"cpus": 4, "memory": "16Gi", "min": 1, "max": 1},
        },
        "address": "ray://churn-head-svc.mlops-churn.svc.cluster.local:10001",
        "reconciler": {"repo": "https://github.com/acme/churn.git", "branch": "release",
                       "image": "ghcr.io/acme/churn-mlops@sha256:" + "4" * 64, "secret": "churn-reconciler"},
    },
    "storage": {"artifacts": "s3://churn-artifacts/ml", "encryption": "kms"},
    "datasets": {
        "transactions": {"path": "data/transactions.csv", "schema": {"amount": "float", "churned": "int"},
                         "retention_days": 30, "region": "eu-west-1", "access": ["team:fraud", "user:alice"]},
        "features": {"from": ["transactions"], "transform": "pipeline:build_features", "retention_days": 365,
                     "access": ["team:fraud", "dpo@example.com"]},
        "scratch": {"path": "data/transactions.csv"},
    },
    "models": {"churn": {"train": "pipeline:train", "data": {"train": "features"}}},
    "deployments": {"churn-api": {"model": "churn", "auth": {"token_env": "CHURN_API_TOKEN"}}},
    "monitors": {
        "churn-drift": {
            "deployment": "churn-api", "reference": "transactions", "on_breach": ["alert", "rollback"],
            "checks": [
                {"type": "data_drift", "method": "psi", "threshold": 0.2, "columns": ["amount"]},
                {"type": "prediction_drift", "method": "ks", "threshold": 0.05},
                {"type": "accuracy", "metric": "auc", "min": 0.75},
                {"type": "latency", "p95_ms": 200},
            ],
        },
        "churn-latency": {"deployment": "churn-api", "checks": [{"type": "latency", "p95_ms": 50}]},
    },
}


def load_spec(root: Path, changes: dict[str, Any] | None = None) -> Project:
    """Write ``BASE`` updated with ``changes`` (top-level keys; None deletes) plus its files, and load it."""
    spec = copy.deepcopy(BASE)
    for key, value in (changes or {}).items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "transactions.csv").write_text("amount,churned\n1.5,0\n")
    (root / "pipeline.py").write_text("def build_features(ctx): ...\n\n\ndef train(ctx): ...\n")
    (root / "mlops.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_project(root / "mlops.yaml")


def synth(root: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    files = synthesize(load_spec(root, changes), root / "out" / "terraform")
    assert files[0] == root / "out" / "terraform" / TERRAFORM_FILE
    document: dict[str, Any] = json.loads(files[0].read_text())
    return document


def resource(document: dict[str, Any], type_: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["resource"][type_][name]
    return found


def release_manifests(document: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The manifests a ``helm_release`` of the local chart installs: its first values document, as Terraform
    reads the string (``$${`` is a literal ``${``)."""
    release = resource(document, "helm_release", name)
    assert release["chart"] == MANIFESTS_CHART_PATH
    text = release["values"][0].replace("$${", "${").replace("%%{", "%{")
    manifests: list[dict[str, Any]] = json.loads(text)["manifests"]
    return manifests


def release_manifest(document: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    found = [m for m in release_manifests(document, name) if m["kind"] == kind]
    assert len(found) == 1, [m["kind"] for m in release_manifests(document, name)]
    return found[0]


def worker_groups(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ray = release_manifest(document, "ray_cluster", "RayCluster")
    return {group["groupName"]: group for group in ray["spec"]["workerGroupSpecs"]}


def gpu_values(group: dict[str, Any]) -> tuple[str, list[str]]:
    """(label, values) of a worker group's required GPU node affinity."""
    terms = group["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1 and len(terms[0]["matchExpressions"]) == 1
    expression = terms[0]["matchExpressions"][0]
    assert expression["operator"] == "In"
    return expression["key"], expression["values"]


GS = {"storage": {"artifacts": "gs://churn-artifacts", "encryption": "kms"}}
LOCAL_CLUSTER = {"cluster": {"provider": "local"}}


@pytest.fixture(scope="module")
def s3_kuberay(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return synth(tmp_path_factory.mktemp("s3"))


@pytest.fixture(scope="module")
def gs_local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return synth(tmp_path_factory.mktemp("gs"), {**GS, **LOCAL_CLUSTER})


# --- determinism and the empty case -----------------------------------------------------------------


def test_same_spec_gives_byte_identical_output_without_local_paths(tmp_path: Path) -> None:
    first = load_spec(tmp_path / "a")
    second = load_spec(tmp_path / "b")
    out_a = synthesize(first, tmp_path / "a" / "out")[0].read_bytes()
    out_b = synthesize(second, tmp_path / "b" / "out")[0].read_bytes()
    assert out_a == out_b
    assert str(tmp_path).encode() not in out_a
    assert b"/tmp/" not in out_a and os.getcwd().encode() not in out_a  # the reconciler's pod has a "/tmp"
    assert json.loads(out_a)["terraform"]["backend"] == {"local": {"path": "terraform.tfstate"}}


def test_local_cluster_and_local_storage_write_nothing_and_never_start_node(tmp_path: Path) -> None:
    load_spec(tmp_path, {**LOCAL_CLUSTER, "storage": None})
    out = tmp_path / "out"
    out.mkdir()
    (out / TERRAFORM_FILE).write_text("{}")  # left by an earlier compile of a kuberay spec
    script = (
        "import sys, pathlib\n"
        "import compiler, compiler.terraform as tf\n"
        "assert 'cdktf' not in sys.modules and 'jsii' not in sys.modules\n"
        f"project = compiler.load_project({str(tmp_path / 'mlops.yaml')!r})\n"
        f"assert tf.synthesize(project, pathlib.Path({str(out)!r})) == []\n"
        "assert not tf.blueprint(project).blocks\n"
        "assert 'cdktf' not in sys.modules and 'jsii' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
    assert not (out / TERRAFORM_FILE).exists()


def test_local_cluster_with_cloud_storage_has_no_kubernetes(gs_local: dict[str, Any]) -> None:
    assert not any(t.startswith(("kubernetes", "helm")) for t in gs_local["resource"])
    assert set(gs_local["terraform"]["required_providers"]) == {"google"}


def test_kuberay_with_local_storage_has_no_cloud_storage(tmp_path: Path) -> None:
    document = synth(tmp_path, {"storage": None})
    assert set(document["resource"]) == {"kubernetes_namespace_v1", "helm_release"}
    assert set(document["terraform"]["required_providers"]) == {"kubernetes", "helm"}


def test_required_providers_are_pinned(s3_kuberay: dict[str, Any]) -> None:
    required = s3_kuberay["terraform"]["required_providers"]
    assert required == {name: {"source": PROVIDERS[name][0], "version": PROVIDERS[name][1]}
                        for name in ("aws", "kubernetes", "helm")}
    assert all(version.count(".") == 2 and version[0].isdigit() for _, version in PROVIDERS.values())


# --- KubeRay ------------------------------------------------------------------------------------------


def test_namespace_defaults_to_mlops_project_and_follows_the_spec(s3_kuberay: dict[str, Any], tmp_path: Path) -> None:
    assert resource(s3_kuberay, "kubernetes_namespace_v1", "cluster")["metadata"]["name"] == "mlops-churn"
    cluster = {**BASE["cluster"], "namespace": "ml-churn"}
    document = synth(tmp_path, {"cluster": cluster, "storage": None})
    assert resource(document, "kubernetes_namespace_v1", "cluster")["metadata"]["name"] == "ml-churn"


def test_kuberay_operator_is_a_pinned_helm_chart(s3_kuberay: dict[str, Any]) -> None:
    release = resource(s3_kuberay, "helm_release", "kuberay_operator")
    assert release["repository"] == "https://ray-project.github.io/kuberay-helm/"
    assert release["chart"] == "kuberay-operator"
    assert release["version"] == KUBERAY_CHART["version"] and release["version"][0].isdigit()
    assert release["namespace"] == "${kubernetes_namespace_v1.cluster.metadata[0].name}"


def test_ray_cluster_head_and_worker_groups_come_from_the_spec(s3_kuberay: dict[str, Any]) -> None:
    manifest = release_manifest(s3_kuberay, "ray_cluster", "RayCluster")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    assert manifest["metadata"]["name"] == "churn"
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    groups = worker_groups(s3_kuberay)
    assert set(groups) == {"gpu", "cpu"}

    gpu = groups["gpu"]
    assert (gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == (0, 0, 4)
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1}
    assert pod["containers"][0]["image"].endswith("-gpu")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert gpu_values(gpu)[0] == GPU_LABEL

    cpu = groups["cpu"]
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (1, 1)
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu["template"]["spec"] and "affinity" not in cpu["template"]["spec"]
    assert manifest["spec"]["enableInTreeAutoscaling"] is True  # the gpu group scales 0..4


def test_no_crd_kind_is_a_kubernetes_manifest_and_each_waits_for_the_release_of_its_crd(
        s3_kuberay: dict[str, Any], tmp_path: Path) -> None:
    # kubernetes_manifest needs the CRD at plan time: on a fresh cluster, planned in the same apply as the
    # chart that installs the CRD, it fails ("API did not recognize GroupVersionKind")
    assert "kubernetes_manifest" not in s3_kuberay["resource"]
    releases = s3_kuberay["resource"]["helm_release"]
    crd_release = {"ray.io": "helm_release.kuberay_operator",
                   "monitoring.coreos.com": "helm_release.prometheus_operator_crds"}
    kinds = {}
    for name in ("ray_cluster", "monitoring"):
        groups = {m["apiVersion"].split("/")[0] for m in release_manifests(s3_kuberay, name) if "/" in m["apiVersion"]}
        assert len(groups) == 1  # core kinds (apiVersion v1) need no CRD
        assert releases[name]["depends_on"] == [crd_release[groups.pop()]]
        kinds[name] = sorted(m["kind"] for m in release_manifests(s3_kuberay, name))
    kinds["reconciler"] = sorted(m["kind"] for m in release_manifests(s3_kuberay, "reconciler"))
    assert kinds == {"ray_cluster": ["RayCluster"],
                     "monitoring": ["PodMonitor", "PrometheusRule", "Service", "ServiceMonitor"],
                     "reconciler": ["Deployment", "NetworkPolicy", "ServiceAccount"]}
    assert all(m["apiVersion"] in CORE_API_VERSIONS for m in release_manifests(s3_kuberay, "reconciler"))
    assert "depends_on" not in releases["kuberay_operator"]
    # the local chart is written next to the Terraform, where the releases find it
    chart = tmp_path / "chart"
    files = synthesize(load_spec(tmp_path / "spec"), chart)
    assert files[1:] == [chart / "charts" / MANIFESTS_CHART / name for name in MANIFESTS_CHART_FILES]
    assert yaml.safe_load((chart / "charts" / MANIFESTS_CHART / "Chart.yaml").read_text())["name"] == MANIFESTS_CHART
    assert MANIFESTS_CHART_PATH == "${path.module}/charts/" + MANIFESTS_CHART
    # a project that no longer needs the chart loses it, and nothing else in charts/
    (chart / "charts" / "mine.txt").write_text("kept")
    synthesize(load_spec(tmp_path / "spec", {**LOCAL_CLUSTER}), chart)
    assert not (chart / "charts" / MANIFESTS_CHART).exists() and (chart / "charts" / "mine.txt").exists()


def test_prometheus_operator_crds_are_a_pinned_chart_that_can_be_left_out(s3_kuberay: dict[str, Any]) -> None:
    release = resource(s3_kuberay, "helm_release", "prometheus_operator_crds")
    assert release["repository"] == "https://prometheus-community.github.io/helm-charts"
    assert release["chart"] == "prometheus-operator-crds"
    assert release["version"] == PROMETHEUS_CRDS_CHART["version"] and release["version"][0].isdigit()
    assert release["count"] == "${var.install_prometheus_operator_crds ? 1 : 0}"
    assert s3_kuberay["variable"]["install_prometheus_operator_crds"]["default"] is True
    # the user's Prometheus selects the monitoring manifests by the labels it is given
    monitoring = resource(s3_kuberay, "helm_release", "monitoring")
    assert monitoring["values"][1] == '${jsonencode({"labels" = var.prometheus_labels})}'
    template = MANIFESTS_CHART_FILES["templates/manifests.yaml"]
    assert "$.Values.labels" in template and "range .Values.manifests" in template


def test_ray_pods_metrics_are_scraped_by_a_pod_monitor(s3_kuberay: dict[str, Any]) -> None:
    monitor = release_manifest(s3_kuberay, "monitoring", "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {"ray.io/cluster": "churn"}}
    assert [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    ray = release_manifest(s3_kuberay, "ray_cluster", "RayCluster")
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 8080} in head["ports"]
    for group in ray["spec"]["workerGroupSpecs"]:
        assert {"name": "metrics", "containerPort": 8080} in group["template"]["spec"]["containers"][0]["ports"]


def test_the_reconcilers_metrics_are_scraped_by_a_service_monitor(s3_kuberay: dict[str, Any]) -> None:
    service = release_manifest(s3_kuberay, "monitoring", "Service")
    monitor = release_manifest(s3_kuberay, "monitoring", "ServiceMonitor")
    pods = {"app.kubernetes.io/name": "mlops-reconciler", "app.kubernetes.io/instance": "churn"}
    assert service["spec"]["selector"] == pods
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]
    # what it scrapes is what the alert rules read
    rule = release_manifest(s3_kuberay, "monitoring", "PrometheusRule")
    assert all("mlops_monitor_breach{" in r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])


RFC1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def test_a_60_character_project_gets_kubernetes_names_within_their_limits(tmp_path: Path) -> None:
    long_name = "churn_prediction_for_the_retention_campaigns_of_the_eu_2026"
    long_name += "x" * (60 - len(long_name))
    assert len(long_name) == 60
    cluster = {**BASE["cluster"], "workers": {"gpu_" + "w" * 58: BASE["cluster"]["workers"]["gpu"]}}
    document = synth(tmp_path / "a", {"project": long_name, "cluster": cluster, "storage": None})
    ray = release_manifest(document, "ray_cluster", "RayCluster")
    name = ray["metadata"]["name"]
    assert len(name) <= 53 and DNS1035_LABEL.fullmatch(name), name  # KubeRay's limit and rule
    releases = document["resource"]["helm_release"].values()
    assert all(len(r["name"]) <= 53 and RFC1123_LABEL.fullmatch(r["name"]) for r in releases)
    namespace = resource(document, "kubernetes_namespace_v1", "cluster")["metadata"]["name"]
    assert len(namespace) <= 63 and RFC1123_LABEL.fullmatch(namespace)
    for manifest in [ray, *release_manifests(document, "monitoring")]:
        assert len(manifest["metadata"]["name"]) <= 63 and RFC1123_LABEL.fullmatch(manifest["metadata"]["name"])
        assert all(len(v) <= 63 for v in manifest["metadata"]["labels"].values())
    (group,) = ray["spec"]["workerGroupSpecs"]
    assert len(group["groupName"]) <= 63 and RFC1123_LABEL.fullmatch(group["groupName"])
    # cut with a stable hash: the same name maps the same way, names that share their start stay apart
    assert name == k8s_name(long_name, 53) and name.startswith("churn-prediction-")
    assert k8s_name(long_name[:-1] + "y", 53) != name
    assert k8s_name("churn", 53) == "churn" and k8s_name("a_b") == "a-b"


def test_an_invalid_namespace_is_an_error_at_its_place(tmp_path: Path) -> None:
    with pytest.raises(TerraformError, match="cluster.namespace 'ML_Churn' is not a Kubernetes namespace name"):
        blueprint(load_spec(tmp_path, {"cluster": {**BASE["cluster"], "namespace": "ML_Churn"}}))


def _gpu(tmp_path: Path, gpu_type: str, storage: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    cluster = {**BASE["cluster"], "workers": {"gpu": {**BASE["cluster"]["workers"]["gpu"], "gpu_type": gpu_type}}}
    plan = blueprint(load_spec(tmp_path, {"cluster": cluster, "storage": storage}))
    release = next(b for b in plan.blocks if b.name == "ray_cluster")
    manifests = json.loads(release.body["values"][0])["manifests"]
    return gpu_values(manifests[0]["spec"]["workerGroupSpecs"][0])


def test_gpu_type_matches_the_product_names_gpu_feature_discovery_writes(tmp_path: Path) -> None:
    h100 = (GPU_LABEL, ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"])
    assert _gpu(tmp_path, "nvidia-h100") == h100  # every memory variant, not "nvidia-h100" (no node has it)
    assert _gpu(tmp_path, "H100") == h100
    assert _gpu(tmp_path, "nvidia-tesla-t4") == (GPU_LABEL, ["Tesla-T4"])
    assert _gpu(tmp_path, "a100")[1][:2] == ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-SXM4-80GB"]
    # a label value given verbatim is kept: one variant, or a name the table does not know
    assert _gpu(tmp_path, "NVIDIA-H100-80GB-HBM3") == (GPU_LABEL, ["NVIDIA-H100-80GB-HBM3"])
    assert _gpu(tmp_path, "Tesla-T4-SHARED") == (GPU_LABEL, ["Tesla-T4-SHARED"])
    with pytest.raises(TerraformError, match=r"'nvidia-h900' is no known GPU type \(a10, a100,"):
        _gpu(tmp_path, "nvidia-h900")
    with pytest.raises(TerraformError, match="is not a Kubernetes label value"):
        _gpu(tmp_path, "NVIDIA H100 80GB HBM3")
    # GPU feature discovery: the NVML device name with '-' for spaces, never all lower case
    for gpu in GPU_TYPES.values():
        assert all(re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9.]*", p) and p != p.lower() for p in gpu.products)
        assert all(re.fullmatch(r"nvidia-[a-z0-9-]+", a) for a in gpu.gke)


def test_gpu_type_uses_the_gke_accelerator_names_next_to_gcs(tmp_path: Path) -> None:
    h100 = (GPU_LABEL_GKE, ["nvidia-h100-80gb", "nvidia-h100-mega-80gb"])
    assert _gpu(tmp_path, "nvidia-h100", GS["storage"]) == h100
    assert _gpu(tmp_path, "nvidia-l4", GS["storage"]) == (GPU_LABEL_GKE, ["nvidia-l4"])
    assert _gpu(tmp_path, "nvidia-rtx-pro-6000", GS["storage"]) == (GPU_LABEL_GKE, ["nvidia-rtx-pro-6000"])
    with pytest.raises(TerraformError, match="GKE offers no a10g accelerator"):
        _gpu(tmp_path, "nvidia-a10g", GS["storage"])


def test_prometheus_rule_has_one_rule_per_monitor_check(s3_kuberay: dict[str, Any]) -> None:
    manifest = release_manifest(s3_kuberay, "monitoring", "PrometheusRule")
    assert (manifest["apiVersion"], manifest["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    groups = {group["name"]: group["rules"] for group in manifest["spec"]["groups"]}
    assert {name: len(rules) for name, rules in groups.items()} == {"monitors.churn-drift": 4,
                                                                   "monitors.churn-latency": 1}
    drift = groups["monitors.churn-drift"]
    assert [rule["labels"]["mlops_check"] for rule in drift] == [
        f"monitors.churn-drift.checks[{i}]" for i in range(4)]
    assert {rule["labels"]["mlops_monitor"] for rule in drift} == {"monitors.churn-drift"}
    assert [rule["alert"] for rule in drift] == ["MlopsDataDrift", "MlopsPredictionDrift", "MlopsAccuracy",
                                                 "MlopsLatency"]
    assert drift[0]["expr"] == 'max(mlops_monitor_breach{project="churn",monitor="churn-drift",check="0"}) > 0'
    assert "psi > 0.2 on amount" in drift[0]["annotations"]["summary"]
    assert drift[0]["labels"]["severity"] == "critical"  # on_breach includes rollback
    assert groups["monitors.churn-latency"][0]["labels"]["severity"] == "warning"


def test_no_monitors_no_prometheus_rule(tmp_path: Path) -> None:
    document = synth(tmp_path, {"monitors": None, "storage": None})
    assert [m["kind"] for m in release_manifests(document, "monitoring")] == ["PodMonitor", "Service", "ServiceMonitor"]


def test_helm_values_keep_terraform_template_sequences_literal() -> None:
    # Terraform reads "${" and "%{" in a JSON string as a template; the values must reach Helm as written
    text = _helm_values({"manifests": [{"note": "${var.x} %{ if y }"}]})
    assert text == '{"manifests":[{"note":"$${var.x} %%{ if y }"}]}'


# --- the manifests against the CRDs' schemas --------------------------------------------------------

SCHEMAS = REPO / "tests" / "schemas" / "kubernetes"


def crd_schema(name: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of a CRD, extracted from its release (``tests/schemas/kubernetes/README.md``)."""
    document: dict[str, Any] = json.loads(gzip.decompress((SCHEMAS / f"{name}.json.gz").read_bytes()))
    return document


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would prune in silence: keys a structural schema does not declare."""
    found: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return found
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def validate_against_crd(manifest: dict[str, Any]) -> None:
    crd = crd_schema(manifest["kind"].lower())
    assert manifest["apiVersion"] == f"{crd['group']}/{crd['version']}"
    schema = crd["openAPIV3Schema"]
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(body)]
    assert not errors, "\n".join(errors)
    assert not unknown_fields(body, schema)


def test_manifests_are_valid_against_the_crd_schemas_of_kuberay_and_prometheus_operator(
        s3_kuberay: dict[str, Any], tmp_path: Path) -> None:
    everything = [*release_manifests(s3_kuberay, "ray_cluster"), *release_manifests(s3_kuberay, "monitoring")]
    manifests = [m for m in everything if m["apiVersion"] != "v1"]
    assert sorted(m["kind"] for m in manifests) == ["PodMonitor", "PrometheusRule", "RayCluster", "ServiceMonitor"]
    for manifest in manifests:
        validate_against_crd(manifest)
    # the checks do catch what the API server would refuse or drop
    broken = copy.deepcopy(release_manifest(s3_kuberay, "ray_cluster", "RayCluster"))
    broken["spec"]["workerGroupSpecs"][0]["minReplica"] = 0
    assert unknown_fields({"spec": broken["spec"]}, crd_schema("raycluster")["openAPIV3Schema"]) == [
        ".spec.workerGroupSpecs[0].minReplica"]
    broken["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    with pytest.raises(AssertionError, match="maxReplicas"):
        validate_against_crd(broken)


CORE_API_VERSIONS = {"v1", "apps/v1", "networking.k8s.io/v1"}
"""Kinds built into Kubernetes: no CRD to wait for; schemas of Kubernetes v1.30 in tests/schemas/kubernetes/."""


def core_schema(kind: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(gzip.decompress((SCHEMAS / f"{kind.lower()}.json.gz").read_bytes()))
    return document


def validate_core(manifest: dict[str, Any]) -> None:
    """Against the strict schema of its kind (``additionalProperties: false`` all the way down: an unknown or
    misspelt field is an error, as ``kubectl apply --validate=strict`` makes it)."""
    document = core_schema(manifest["kind"])
    group = f"{document['group']}/" if document["group"] else ""
    assert manifest["apiVersion"] == f"{group}{document['version']}"
    validator = jsonschema.Draft202012Validator(document["jsonSchema"])
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]
    assert not errors, "\n".join(errors)


def all_manifests(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for name in ("ray_cluster", "monitoring", "reconciler") for m in release_manifests(document, name)]


def test_core_manifests_are_valid_against_the_kubernetes_schemas(s3_kuberay: dict[str, Any]) -> None:
    manifests = [m for m in all_manifests(s3_kuberay) if m["apiVersion"] in CORE_API_VERSIONS]
    assert sorted(m["kind"] for m in manifests) == ["Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
    for manifest in manifests:
        validate_core(manifest)
    # the schemas do catch a misspelt field and a wrong type
    broken = copy.deepcopy(release_manifest(s3_kuberay, "reconciler", "Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGet"]["prot"] = "metrics"
    with pytest.raises(AssertionError, match="'prot' was unexpected"):
        validate_core(broken)
    del container["livenessProbe"]["httpGet"]["prot"]
    container["securityContext"]["runAsNonRoot"] = "true"
    with pytest.raises(AssertionError, match="runAsNonRoot"):
        validate_core(broken)


# --- the reconciler --------------------------------------------------------------------------------------


def reconciler_pod(document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, its one container) of the reconciler's Deployment."""
    pod: dict[str, Any] = release_manifest(document, "reconciler", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def parse_mlops(argv: list[str]) -> tuple[list[str], dict[str, Any], str]:
    """``mlops ARGV`` parsed by the real command tree: (command path, the leaf's parameters, ``-f``)."""
    from runtime.cli.app import Application
    from runtime.cli.main import cli

    app = Application()
    ctx = cli.make_context("mlops", list(argv), obj=app)
    command: Any = cli
    path: list[str] = []
    while hasattr(command, "resolve_command"):
        name, sub, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        path.append(name)
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return path, ctx.params, app.spec_file


def test_the_reconciler_runs_mlops_reconcile_watch_on_the_specs_repository(s3_kuberay: dict[str, Any]) -> None:
    deployment = release_manifest(s3_kuberay, "reconciler", "Deployment")
    assert deployment["metadata"]["namespace"] == "mlops-churn"  # the cluster's
    pod, container = reconciler_pod(s3_kuberay)
    assert container["command"] == ["mlops"]
    path, params, spec_file = parse_mlops(container["args"])
    assert path == ["reconcile"] and spec_file == "mlops.yaml"
    assert params["watch"] is True
    assert (params["repo"], params["branch"]) == ("https://github.com/acme/churn.git", "release")
    assert (params["metrics_port"], params["metrics_host"]) == (RECONCILER_METRICS_PORT, "0.0.0.0")
    assert params["checkout"] == f"{WORK_DIR}/checkout"
    assert any(mount["mountPath"] == WORK_DIR for mount in container["volumeMounts"])
    assert container["image"] == BASE["cluster"]["reconciler"]["image"]
    # one loop at a time: never two pods while one is replaced
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    # the Ray cluster it drives is the one next to it (the spec's cluster.address; the output says which)
    assert s3_kuberay["output"]["ray_address"]["value"] == BASE["cluster"]["address"]


def test_the_reconcilers_pods_are_what_the_metrics_service_selects(s3_kuberay: dict[str, Any]) -> None:
    deployment = release_manifest(s3_kuberay, "reconciler", "Deployment")
    service = release_manifest(s3_kuberay, "monitoring", "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert reconciler_labels_of("churn").items() <= labels.items()
    assert deployment["spec"]["selector"] == {"matchLabels": reconciler_labels_of("churn")}
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["metadata"]["name"] == deployment["metadata"]["name"]
    _, container = reconciler_pod(s3_kuberay)
    assert container["ports"] == [{"name": "metrics", "containerPort": RECONCILER_METRICS_PORT, "protocol": "TCP"}]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    # other pods may reach the metrics port, and nothing else
    policy = release_manifest(s3_kuberay, "reconciler", "NetworkPolicy")
    assert policy["spec"]["podSelector"] == deployment["spec"]["selector"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": RECONCILER_METRICS_PORT, "protocol": "TCP"}]}]


def reconciler_labels_of(project: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "mlops-reconciler", "app.kubernetes.io/instance": project}


def test_the_reconcilers_credentials_come_from_an_existing_secret_never_from_terraform(
        s3_kuberay: dict[str, Any]) -> None:
    _, container = reconciler_pod(s3_kuberay)
    assert container["envFrom"] == [{"secretRef": {"name": "churn-reconciler"}}]
    assert all("valueFrom" not in variable for variable in container["env"])
    assert {variable["name"] for variable in container["env"]} == {"HOME", "TMPDIR", "PYTHONUNBUFFERED"}
    # no Secret is created: its values would sit in the Terraform state in clear
    assert not any(t.endswith("secret") or t.endswith("secret_v1") for t in s3_kuberay["resource"])
    assert all(m["kind"] != "Secret" for m in all_manifests(s3_kuberay))
    assert s3_kuberay["output"]["reconciler_secret"]["value"] == "churn-reconciler"
    # the release does not wait for the pod, which starts once the Secret is created; it comes after the cluster
    release = resource(s3_kuberay, "helm_release", "reconciler")
    assert release["wait"] is False and "atomic" not in release
    assert release["depends_on"] == ["helm_release.ray_cluster"]


def test_the_reconciler_needs_no_kubernetes_api_and_runs_hardened(s3_kuberay: dict[str, Any]) -> None:
    account = release_manifest(s3_kuberay, "reconciler", "ServiceAccount")
    pod, container = reconciler_pod(s3_kuberay)
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False
    assert not any(m["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
                   for m in all_manifests(s3_kuberay))
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == RUN_AS >= 10000
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # what it writes goes to emptyDirs: the clone and $HOME, and /tmp
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert {m["mountPath"]: "emptyDir" in volumes[m["name"]] for m in container["volumeMounts"]} == {
        WORK_DIR: True, "/tmp": True}
    assert {"name": "HOME", "value": WORK_DIR} in container["env"]
    assert set(container["resources"]["requests"]) >= {"cpu", "memory"}
    assert set(container["resources"]["limits"]) >= {"cpu", "memory"}


def test_without_cluster_reconciler_there_is_no_deployment(tmp_path: Path) -> None:
    cluster = {key: value for key, value in BASE["cluster"].items() if key != "reconciler"}
    document = synth(tmp_path, {"cluster": cluster, "storage": None})
    assert "reconciler" not in document["resource"]["helm_release"]
    assert "reconciler_secret" not in document["output"]
    assert [m["kind"] for m in release_manifests(document, "monitoring") if m["kind"] == "Service"] == ["Service"]


def test_the_reconcilers_spec_is_its_path_inside_the_git_repository(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()  # the work tree's root (compiler.repository.find_root)
    # a spec with no pipeline code: modules are named from the repository's root
    document = synth(tmp_path / "teams" / "churn", {"datasets": {"scratch": BASE["datasets"]["scratch"]},
                                                    "models": None, "deployments": None, "monitors": None})
    _, container = reconciler_pod(document)
    assert parse_mlops(container["args"])[2] == "teams/churn/mlops.yaml"


RECONCILER_ERRORS = [
    ({"provider": "local"}, "`reconciler` needs `provider: kuberay` and `address`"),
    ({"address": None}, "`reconciler` needs `provider: kuberay` and `address`, ray://<project>-head-svc."),
    ({"reconciler": {"repo": "https://github.com/acme/churn.git", "image": "ghcr.io/acme/mlops"}},
     "image ghcr.io/acme/mlops is not pinned"),
    ({"reconciler": {"repo": "https://github.com/acme/churn.git", "image": "ghcr.io/acme/mlops:latest"}},
     "is not pinned"),
    ({"reconciler": {"repo": "https://x:ghp_secret@github.com/acme/churn.git", "image": "ghcr.io/acme/mlops:1.0"}},
     "the URL holds a password or token"),
    ({"reconciler": {"repo": "/srv/git/churn", "image": "ghcr.io/acme/mlops:1.0"}},
     "/srv/git/churn is not a URL to clone from in Kubernetes"),
]


@pytest.mark.parametrize(("change", "message"), RECONCILER_ERRORS, ids=[m for _, m in RECONCILER_ERRORS])
def test_a_reconciler_that_could_not_work_is_refused_at_validate_time(
        tmp_path: Path, change: dict[str, Any], message: str) -> None:
    from compiler.errors import SpecError

    cluster = {**BASE["cluster"], **change}
    cluster = {key: value for key, value in cluster.items() if value is not None}
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path, {"cluster": cluster})
    assert message in "\n".join(d.message for d in info.value.diagnostics)


def test_the_reconciler_accepts_a_version_tag_and_a_registry_port(tmp_path: Path) -> None:
    image = "registry.internal:5000/ml/churn-mlops:2026.1"
    cluster = {**BASE["cluster"], "reconciler": {"repo": "git@github.com:acme/churn.git", "image": image}}
    _, container = reconciler_pod(synth(tmp_path, {"cluster": cluster, "storage": None}))
    assert container["image"] == image and container["envFrom"] == [{"secretRef": {"name": "mlops-reconciler"}}]
    assert parse_mlops(container["args"])[1]["branch"] == "main"


# --- S3 -------------------------------------------------------------------------------------------------


def test_s3_bucket_is_versioned_private_and_kms_encrypted(s3_kuberay: dict[str, Any]) -> None:
    assert resource(s3_kuberay, "aws_s3_bucket", "artifacts")["bucket"] == "churn-artifacts"
    versioning = resource(s3_kuberay, "aws_s3_bucket_versioning", "artifacts")
    assert versioning["versioning_configuration"] == [{"status": "Enabled"}]
    block = resource(s3_kuberay, "aws_s3_bucket_public_access_block", "artifacts")
    assert all(block[flag] is True for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                               "restrict_public_buckets"))
    sse = resource(s3_kuberay, "aws_s3_bucket_server_side_encryption_configuration", "artifacts")
    assert sse["rule"][0]["apply_server_side_encryption_by_default"] == [
        {"sse_algorithm": "aws:kms", "kms_master_key_id": "${aws_kms_key.artifacts.arn}"}]
    key = resource(s3_kuberay, "aws_kms_key", "artifacts")
    assert key["enable_key_rotation"] is True
    assert json.loads(key["policy"])["Statement"][0]["Principal"]["AWS"].endswith(":root")
    assert s3_kuberay["provider"]["aws"][0]["region"] == "${var.aws_region}"
    assert s3_kuberay["variable"]["aws_region"]["default"] == "eu-west-1"  # the datasets' region


def test_s3_access_logs_go_to_a_private_versioned_expiring_log_bucket(s3_kuberay: dict[str, Any]) -> None:
    logging = resource(s3_kuberay, "aws_s3_bucket_logging", "artifacts")
    assert logging["bucket"] == "${aws_s3_bucket.artifacts.id}"
    assert logging["target_bucket"] == "${aws_s3_bucket.access_logs.id}"
    assert resource(s3_kuberay, "aws_s3_bucket", "access_logs")["bucket"] == "churn-artifacts-access-logs"
    block = resource(s3_kuberay, "aws_s3_bucket_public_access_block", "access_logs")
    assert all(block[flag] is True for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                               "restrict_public_buckets"))
    assert resource(s3_kuberay, "aws_s3_bucket_versioning", "access_logs")["versioning_configuration"] == [
        {"status": "Enabled"}]
    sse = resource(s3_kuberay, "aws_s3_bucket_server_side_encryption_configuration", "access_logs")
    assert sse["rule"][0]["apply_server_side_encryption_by_default"] == [{"sse_algorithm": "AES256"}]
    (rule,) = resource(s3_kuberay, "aws_s3_bucket_lifecycle_configuration", "access_logs")["rule"]
    assert rule["expiration"] == [{"days": "${var.access_log_retention_days}"}]
    assert s3_kuberay["variable"]["access_log_retention_days"]["default"] == 365
    statements = s3_kuberay["data"]["aws_iam_policy_document"]["access_logs"]["statement"]
    writer = next(s for s in statements if s["effect"] == "Allow")
    assert writer["principals"] == [{"type": "Service", "identifiers": ["logging.s3.amazonaws.com"]}]
    assert writer["actions"] == ["s3:PutObject"]
    assert {c["variable"] for c in writer["condition"]} == {"aws:SourceArn", "aws:SourceAccount"}
    assert statements[0]["sid"] == "DenyInsecureTransport"
    # S3 bucket names are at most 63 characters
    assert len(access_log_bucket("b" * 63)) == 63 and access_log_bucket("b" * 63) != access_log_bucket("b" * 62 + "c")


def test_s3_object_events_go_to_eventbridge(s3_kuberay: dict[str, Any]) -> None:
    notification = resource(s3_kuberay, "aws_s3_bucket_notification", "artifacts")
    assert (notification["bucket"], notification["eventbridge"]) == ("${aws_s3_bucket.artifacts.id}", True)


def _terraform_mirror_provider(name: str) -> tuple[str, Path] | None:
    """(version, mirror) of a provider in the offline filesystem mirror, if there is one."""
    mirror = Path(os.environ.get("MLOPS_TF_PLUGIN_MIRROR", "/opt/tf-plugins"))
    versions = sorted((mirror / "registry.terraform.io" / "hashicorp" / name).glob("*/linux_amd64"))
    if shutil.which("terraform") is None or not versions:
        return None
    return versions[-1].parent.name, mirror


def test_s3_stack_passes_terraform_validate(tmp_path: Path) -> None:
    found = _terraform_mirror_provider("aws")
    if found is None:
        pytest.skip("terraform or an offline hashicorp/aws provider (/opt/tf-plugins) is not installed")
    version, mirror = found
    out = tmp_path / "tf"
    synthesize(load_spec(tmp_path / "spec", LOCAL_CLUSTER), out)
    # validate against the provider the mirror has (the stack pins PROVIDERS["aws"])
    (out / "mirror_override.tf.json").write_text(json.dumps(
        {"terraform": {"required_providers": {"aws": {"source": "hashicorp/aws", "version": version}}}}))
    (tmp_path / "cli.tfrc").write_text(f'provider_installation {{\n  filesystem_mirror {{ path = "{mirror}" }}\n}}\n')
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(tmp_path / "cli.tfrc"), "TF_IN_AUTOMATION": "1",
           "CHECKPOINT_DISABLE": "1"}
    init = subprocess.run(["terraform", "init", "-input=false", "-no-color", "-backend=false"], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
    run = subprocess.run(["terraform", "validate", "-json", "-no-color"], cwd=out, env=env,
                         capture_output=True, text=True, timeout=300)
    report = json.loads(run.stdout)
    assert report["valid"] is True and report["warning_count"] == 0, report["diagnostics"]


def test_s3_sse_uses_provider_managed_keys(tmp_path: Path) -> None:
    document = synth(tmp_path, {"storage": {"artifacts": "s3://churn-artifacts", "encryption": "sse"},
                                **LOCAL_CLUSTER})
    sse = resource(document, "aws_s3_bucket_server_side_encryption_configuration", "artifacts")
    assert sse["rule"][0]["apply_server_side_encryption_by_default"] == [{"sse_algorithm": "AES256"}]
    assert "aws_kms_key" not in document["resource"] and "aws_kms_grant" not in document["resource"]


def test_s3_lifecycle_expires_each_dataset_prefix_after_its_retention(s3_kuberay: dict[str, Any]) -> None:
    rules = {rule["id"]: rule for rule in
             resource(s3_kuberay, "aws_s3_bucket_lifecycle_configuration", "artifacts")["rule"]}
    transactions = rules["retention-30d-datasets.transactions"]
    assert transactions["filter"] == [{"prefix": "ml/datasets/transactions/"}]
    assert transactions["expiration"] == [{"days": 30}]
    assert transactions["status"] == "Enabled"
    assert transactions["noncurrent_version_expiration"] == [{"noncurrent_days": 1}]
    assert rules["retention-365d-datasets.features"]["expiration"] == [{"days": 365}]
    assert not any("scratch" in rule_id for rule_id in rules)  # no retention_days, no rule
    assert rules["abort-incomplete-multipart-uploads"]["filter"] == [{"prefix": ""}]


def test_s3_bucket_policy_grants_every_dataset_principal(s3_kuberay: dict[str, Any]) -> None:
    conventions = s3_kuberay["locals"]["principal_conventions"]
    assert conventions["team:fraud"].endswith(":role/mlops-team-fraud")
    assert conventions["user:alice"].endswith(":user/alice")
    assert conventions["dpo@example.com"].endswith(":user/dpo@example.com")
    assert s3_kuberay["locals"]["principals"] == "${merge(local.principal_conventions, var.principals)}"

    statements = s3_kuberay["data"]["aws_iam_policy_document"]["artifacts_bucket"]["statement"]
    arn = "arn:${data.aws_partition.current.partition}:s3:::churn-artifacts"

    def readers(dataset: str) -> set[str]:
        out = set()
        for statement in statements:
            if statement["effect"] == "Allow" and "s3:GetObject" in statement["actions"] \
                    and f"{arn}/ml/datasets/{dataset}/*" in statement["resources"]:
                out |= set(statement["principals"][0]["identifiers"])
        return out

    assert readers("transactions") == {'${local.principals["team:fraud"]}', '${local.principals["user:alice"]}'}
    assert readers("features") == {'${local.principals["team:fraud"]}', '${local.principals["dpo@example.com"]}'}
    assert readers("scratch") == set()
    deny = statements[0]
    assert deny["effect"] == "Deny" and deny["condition"][0]["variable"] == "aws:SecureTransport"
    policy = resource(s3_kuberay, "aws_s3_bucket_policy", "artifacts")
    assert policy["policy"] == "${data.aws_iam_policy_document.artifacts_bucket.json}"
    grants = resource(s3_kuberay, "aws_kms_grant", "dataset_readers")
    assert set(grants["for_each"]) == {"team:fraud", "user:alice", "dpo@example.com"}
    assert grants["operations"] == ["Decrypt", "DescribeKey"]


def test_s3_readers_of_every_dataset_get_one_prefix_for_all(tmp_path: Path) -> None:
    datasets = {f"d{i}": {"path": "data/transactions.csv", "access": ["team:ml"]} for i in range(600)}
    project = load_spec(tmp_path, {"datasets": datasets, "models": None, "gates": None, "deployments": None,
                                   "monitors": None})
    document = render(blueprint(project))
    statements = document["data"]["aws_iam_policy_document"]["artifacts_bucket"]["statement"]
    read = next(s for s in statements if "s3:GetObject" in s["actions"])
    assert read["resources"] == ["arn:${data.aws_partition.current.partition}:s3:::churn-artifacts/ml/datasets/*"]


def test_s3_lifecycle_rule_cap_is_an_error(tmp_path: Path) -> None:
    datasets = {f"d{i}": {"path": "data/transactions.csv", "retention_days": 30} for i in range(1000)}
    project = load_spec(tmp_path, {"datasets": datasets, "models": None, "deployments": None,
                                      "monitors": None})
    with pytest.raises(TerraformError, match="at most 1000 lifecycle rules"):
        blueprint(project)


def test_s3_bucket_policy_size_cap_is_an_error(tmp_path: Path) -> None:
    datasets = {f"d{i}": {"path": "data/transactions.csv", "access": [f"team:t{i}"]} for i in range(200)}
    project = load_spec(tmp_path, {"datasets": datasets, "models": None, "deployments": None,
                                      "monitors": None})
    with pytest.raises(TerraformError, match="over S3's 20 KiB limit"):
        blueprint(project)


# --- GCS ------------------------------------------------------------------------------------------------


def test_gcs_bucket_is_versioned_private_kms_encrypted_with_retention(gs_local: dict[str, Any]) -> None:
    bucket = resource(gs_local, "google_storage_bucket", "artifacts")
    assert bucket["name"] == "churn-artifacts"
    assert bucket["versioning"] == [{"enabled": True}]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["encryption"] == [{"default_kms_key_name": "${google_kms_crypto_key.artifacts.id}"}]
    key = resource(gs_local, "google_kms_crypto_key", "artifacts")
    assert key["rotation_period"] == "7776000s"
    agent = resource(gs_local, "google_kms_crypto_key_iam_member", "gcs_service_agent")
    assert agent["role"] == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
    deletes = [rule["condition"][0] for rule in bucket["lifecycle_rule"] if rule["action"] == [{"type": "Delete"}]]
    assert {"age": 30, "matches_prefix": ["datasets/transactions/"]} in deletes
    assert {"age": 365, "matches_prefix": ["datasets/features/"]} in deletes


def test_gcs_sse_uses_google_managed_keys(tmp_path: Path) -> None:
    document = synth(tmp_path, {"storage": {"artifacts": "gs://churn-artifacts", "encryption": "sse"},
                                **LOCAL_CLUSTER})
    assert "encryption" not in resource(document, "google_storage_bucket", "artifacts")
    assert "google_kms_crypto_key" not in document["resource"]


def test_gcs_grants_each_dataset_principal_on_its_managed_folder(gs_local: dict[str, Any]) -> None:
    folders = resource(gs_local, "google_storage_managed_folder", "datasets")["for_each"]
    assert folders == {"features": "datasets/features/", "transactions": "datasets/transactions/"}
    members = resource(gs_local, "google_storage_managed_folder_iam_member", "dataset_readers")
    assert members["role"] == "roles/storage.objectViewer"
    assert {(m["dataset"], m["principal"]) for m in members["for_each"].values()} == {
        ("transactions", "team:fraud"), ("transactions", "user:alice"),
        ("features", "team:fraud"), ("features", "dpo@example.com")}
    assert gs_local["locals"]["principal_conventions"] == {
        "dpo@example.com": "user:dpo@example.com",
        "team:fraud": "group:fraud@${var.principal_domain}",
        "user:alice": "user:alice@${var.principal_domain}",
    }
    assert "default" not in gs_local["variable"]["principal_domain"]  # required: no guessed domain


# --- cdktf plumbing -------------------------------------------------------------------------------------


def test_spliced_output_equals_cdktf_output(tmp_path: Path) -> None:
    monitors = {f"m{i}": BASE["monitors"]["churn-drift"] for i in range(20)}
    plan = blueprint(load_spec(tmp_path, {"monitors": monitors}))
    alerts = next(b for b in plan.blocks if b.name == "monitoring")
    assert len(json.dumps(alerts.body["values"])) > SPLICE_BYTES  # this value is spliced
    assert render(plan) == render(plan, splice_bytes=None)


# --- checkov --------------------------------------------------------------------------------------------


def _checkov() -> str | None:
    candidate = os.environ.get("CHECKOV") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    return candidate if shutil.which(candidate) else None


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory, s3_kuberay: dict[str, Any],
                   gs_local: dict[str, Any]) -> dict[str, Any]:
    checkov = _checkov()
    if checkov is None:
        message = "checkov not found at $CHECKOV or .venv-checkov/bin/checkov"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("checkov")
    for name, document in (("s3", s3_kuberay), ("gs", gs_local)):
        (root / name).mkdir()
        (root / name / TERRAFORM_FILE).write_text(json.dumps(document, indent=2))
    run = subprocess.run(
        [checkov, "-d", str(root), "--framework", "terraform_json", "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr[-2000:]
    report: dict[str, Any] = json.loads(run.stdout)
    return report


@pytest.mark.parametrize("spec", ["s3", "gs"])
def test_checkov_fails_only_the_listed_exemptions(checkov_report: dict[str, Any], spec: str) -> None:
    results = checkov_report["results"]
    assert checkov_report["summary"]["parsing_errors"] == 0
    path = f"/{spec}/{TERRAFORM_FILE}"
    # checkov names a resource TYPE.NAME, or resource.NAME in some checks of terraform_json: compare names
    failed = {(c["check_id"], c["resource"].split(".")[-1]) for c in results["failed_checks"] if c["file_path"] == path}
    prefix = {"s3": "aws_", "gs": "google_"}[spec]
    assert failed == {(check, address.split(".")[-1]) for check, address in CHECKOV_EXEMPTIONS
                      if address.startswith(prefix)}
    passed = {(c["check_id"], c["resource"]) for c in results["passed_checks"] if c["file_path"] == path}
    # checkov did read the storage resources: versioning, encryption, public access, lifecycle, key rotation,
    # and on S3 access logging (CKV_AWS_18) and event notifications (CKV2_AWS_62) of the artifact bucket
    expected = {"s3": {"CKV_AWS_21", "CKV_AWS_145", "CKV2_AWS_6", "CKV2_AWS_61", "CKV_AWS_7", "CKV_AWS_300",
                       "CKV_AWS_18", "CKV2_AWS_62"},
                "gs": {"CKV_GCP_78", "CKV_GCP_29", "CKV_GCP_114", "CKV_GCP_43", "CKV_GCP_82"}}[spec]
    assert expected <= {check for check, _ in passed}
    if spec == "s3":
        artifacts = {check for check, name in passed if name == "aws_s3_bucket.artifacts"}
        assert {"CKV_AWS_18", "CKV2_AWS_62", "CKV_AWS_145", "CKV_AWS_21"} <= artifacts


def test_every_checkov_exemption_has_a_reason() -> None:
    assert CHECKOV_EXEMPTIONS and all(reason.strip() for reason in CHECKOV_EXEMPTIONS.values())
    assert KUBERNETES_CHECKOV_EXEMPTIONS and all(reason.strip() for reason in KUBERNETES_CHECKOV_EXEMPTIONS.values())


@pytest.fixture(scope="module")
def checkov_kubernetes_report(tmp_path_factory: pytest.TempPathFactory, s3_kuberay: dict[str, Any]) -> dict[str, Any]:
    """checkov's ``kubernetes`` framework on the reconciler's manifests and the Service in front of them, as
    Helm renders them (``terraform_json`` sees a Helm release's values as one string)."""
    checkov = _checkov()
    if checkov is None:
        message = "checkov not found at $CHECKOV or .venv-checkov/bin/checkov"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("checkov-kubernetes")
    manifests = [*release_manifests(s3_kuberay, "reconciler"), release_manifest(s3_kuberay, "monitoring", "Service")]
    for index, manifest in enumerate(manifests):
        (root / f"{index}-{manifest['kind'].lower()}.yaml").write_text(yaml.safe_dump(manifest))
    run = subprocess.run(
        [checkov, "-d", str(root), "--framework", "kubernetes", "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr[-2000:]
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def test_checkov_kubernetes_fails_only_the_listed_exemptions_on_the_reconciler(
        checkov_kubernetes_report: dict[str, Any]) -> None:
    report = checkov_kubernetes_report
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["resource_count"] == 5
    # checkov names a resource KIND.NAMESPACE.NAME
    failed = {(c["check_id"], c["resource"].split(".")[0]) for c in report["results"]["failed_checks"]}
    assert failed == set(KUBERNETES_CHECKOV_EXEMPTIONS)
    passed = {c["check_id"] for c in report["results"]["passed_checks"] if c["resource"].startswith("Deployment.")}
    # it did check: non-root (and a high UID), no privilege escalation, capabilities dropped, seccomp, read-only
    # root filesystem, probes, requests and limits, a pinned image, no service account token, not `default`,
    # and (CKV2_K8S_6) a NetworkPolicy for the pod
    assert {"CKV_K8S_23", "CKV_K8S_40", "CKV_K8S_20", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_31", "CKV_K8S_22",
            "CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13", "CKV_K8S_43",
            "CKV_K8S_38", "CKV_K8S_21"} <= passed
    assert "CKV2_K8S_6" in {c["check_id"] for c in report["results"]["passed_checks"]}
