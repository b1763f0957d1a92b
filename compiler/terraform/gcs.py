"""``storage.artifacts`` on ``gs://``: the artifact bucket, its KMS key, lifecycle rules and a managed
folder per dataset with readers."""

from __future__ import annotations

from typing import Any

from compiler.resolve import Project
from compiler.terraform.model import MANAGED_BY, Blueprint
from compiler.terraform.storage import (
    ABORT_MULTIPART_DAYS,
    NONCURRENT_DAYS,
    dataset_prefix,
    dataset_readers,
    declare_principals,
    default_region,
    retention_groups,
)

KMS_ROTATION_SECONDS = 90 * 86400


def _gcp_identity(principal: str, domain: str) -> str:
    kind, _, name = principal.partition(":")
    if kind == "team":
        return f"group:{name}@{domain}"
    return f"user:{name}@{domain}" if kind == "user" else f"user:{principal}"


def add_gcs_bucket(project: Project, plan: Blueprint, bucket: str) -> None:
    """The artifact bucket ``bucket`` on GCS: private, versioned, encrypted per ``storage.encryption``,
    expiring per dataset retention and readable per dataset ``access``."""
    spec = project.spec
    gcp_project = plan.variable("gcp_project", "string", "Google Cloud project of the artifact bucket")
    location = plan.variable("gcp_location", "string", "Location of the artifact bucket and its key ring",
                             default_region(project, "US"))
    plan.providers["google"] = {"project": gcp_project,
                                "default_labels": {"managed-by": MANAGED_BY, "mlops-project": spec.project}}
    readers = dataset_readers(project)
    principals = sorted({p for names in readers.values() for p in names})
    if principals:
        domain = plan.variable("principal_domain", "string", "Google Workspace/Cloud Identity domain of "
                               "the groups and users that team:X and user:X map to") \
            if any(p.startswith(("team:", "user:")) for p in principals) else ""
        declare_principals(plan, {p: _gcp_identity(p, domain) for p in principals})

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
    for days, names in retention_groups(project).items():
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
