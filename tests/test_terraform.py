"""Terraform synthesis (compiler/terraform.py): each emitted resource, and why it is there.

Specs are written to tmp dirs and loaded through ``compiler.load_project``; the Terraform JSON is the
one ``synthesize`` writes through cdktf (Node starts once per test session).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import load_project
from compiler.errors import TerraformError
from compiler.resolve import Project
from compiler.terraform import (
    CHECKOV_SKIPS,
    GPU_LABEL,
    GPU_LABEL_GKE,
    KUBERAY_CHART,
    PROVIDERS,
    SPLICE_BYTES,
    TERRAFORM_FILE,
    blueprint,
    render,
    synthesize,
)

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
    "deployments": {"churn-api": {"model": "churn"}},
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
    assert files == [root / "out" / "terraform" / TERRAFORM_FILE]
    document: dict[str, Any] = json.loads(files[0].read_text())
    return document


def resource(document: dict[str, Any], type_: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["resource"][type_][name]
    return found


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
    assert b"/tmp" not in out_a and os.getcwd().encode() not in out_a
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
    assert set(document["resource"]) == {"kubernetes_namespace_v1", "helm_release", "kubernetes_manifest"}
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
    ray = resource(s3_kuberay, "kubernetes_manifest", "ray_cluster")
    assert ray["depends_on"] == ["helm_release.kuberay_operator"]
    manifest = ray["manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    head = manifest["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    groups = {group["groupName"]: group for group in manifest["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}

    gpu = groups["gpu"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 4)
    pod = gpu["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1}
    assert pod["containers"][0]["image"].endswith("-gpu")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {GPU_LABEL: "nvidia-h100"}

    cpu = groups["cpu"]
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (1, 1)
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "tolerations" not in cpu["template"]["spec"] and "nodeSelector" not in cpu["template"]["spec"]
    # the autoscaler, not Terraform, owns the replica counts of a running cluster
    assert "spec.workerGroupSpecs[0].replicas" in ray["computed_fields"]


def test_gpu_node_selector_uses_the_gke_label_next_to_gcs(tmp_path: Path) -> None:
    document = synth(tmp_path, GS)
    groups = resource(document, "kubernetes_manifest", "ray_cluster")["manifest"]["spec"]["workerGroupSpecs"]
    assert groups[0]["template"]["spec"]["nodeSelector"] == {GPU_LABEL_GKE: "nvidia-h100"}


def test_prometheus_rule_has_one_rule_per_monitor_check(s3_kuberay: dict[str, Any]) -> None:
    manifest = resource(s3_kuberay, "kubernetes_manifest", "monitor_alerts")["manifest"]
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
    assert set(document["resource"]["kubernetes_manifest"]) == {"ray_cluster"}


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
    alerts = next(b for b in plan.blocks if b.name == "monitor_alerts")
    assert len(json.dumps(alerts.body["manifest"])) > SPLICE_BYTES  # this value is spliced
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
        [checkov, "-d", str(root), "--framework", "terraform_json", "--skip-download", "--output", "json",
         "--skip-check", ",".join(CHECKOV_SKIPS)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode in (0, 1), run.stderr[-2000:]
    report: dict[str, Any] = json.loads(run.stdout)
    return report


@pytest.mark.parametrize("spec", ["s3", "gs"])
def test_checkov_passes_with_the_listed_skips(checkov_report: dict[str, Any], spec: str) -> None:
    results = checkov_report["results"]
    assert checkov_report["summary"]["parsing_errors"] == 0
    path = f"/{spec}/{TERRAFORM_FILE}"
    assert [(c["check_id"], c["resource"]) for c in results["failed_checks"] if c["file_path"] == path] == []
    passed = {c["check_id"] for c in results["passed_checks"] if c["file_path"] == path}
    # checkov did read the storage resources: versioning, encryption, public access, lifecycle, key rotation
    expected = {"s3": {"CKV_AWS_21", "CKV_AWS_145", "CKV2_AWS_6", "CKV2_AWS_61", "CKV_AWS_7", "CKV_AWS_300"},
                "gs": {"CKV_GCP_78", "CKV_GCP_29", "CKV_GCP_114", "CKV_GCP_43", "CKV_GCP_82"}}[spec]
    assert expected <= passed


def test_every_skipped_check_has_a_reason() -> None:
    assert CHECKOV_SKIPS and all(reason.strip() for reason in CHECKOV_SKIPS.values())
