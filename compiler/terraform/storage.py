"""What the S3 and GCS artifact buckets share: where a dataset lives, its retention and its readers.

Principals map to cloud identities by this convention; the Terraform variable ``principals`` (spec
principal -> identity) overrides it one principal at a time (see :func:`declare_principals`):

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
reader ``roles/storage.objectViewer``.
"""

from __future__ import annotations

import re
from collections import Counter

from compiler.errors import TerraformError
from compiler.resolve import Project
from compiler.terraform.model import Blueprint

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

NONCURRENT_DAYS = 1
"""Days an overwritten or deleted object version is kept once it is no longer current."""
ABORT_MULTIPART_DAYS = 7


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


def retention_groups(project: Project) -> dict[int, list[str]]:
    """``retention_days`` -> the datasets declaring it; both sorted."""
    groups: dict[int, list[str]] = {}
    for name, dataset in sorted(project.spec.datasets.items()):
        if dataset.retention_days is not None:
            groups.setdefault(dataset.retention_days, []).append(name)
    return dict(sorted(groups.items()))


def dataset_readers(project: Project) -> dict[str, list[str]]:
    """Dataset -> its ``access`` principals, sorted, for the datasets that have any."""
    return {name: sorted(set(dataset.access)) for name, dataset in sorted(project.spec.datasets.items())
            if dataset.access}


def default_region(project: Project, fallback: str) -> str:
    """The region most datasets declare (ties: the first by name), else ``fallback``."""
    counts = Counter(dataset.region for dataset in project.spec.datasets.values() if dataset.region)
    return min(counts, key=lambda region: (-counts[region], region)) if counts else fallback


def declare_principals(plan: Blueprint, identities: dict[str, str]) -> None:
    """``local.principals``: the conventional identities, overridden by ``var.principals``."""
    plan.variable("principals", "map(string)",
                  "Cloud identity per spec principal (e.g. team:fraud), overriding the naming convention", {})
    plan.locals["principal_conventions"] = dict(sorted(identities.items()))
    plan.locals["principals"] = "${merge(local.principal_conventions, var.principals)}"


def principal_ref(principal: str) -> str:
    """A reference to ``principal``'s identity in ``local.principals`` (see :func:`declare_principals`)."""
    return f'${{local.principals["{principal}"]}}'
