"""``storage.artifacts`` on ``s3://``: the artifact bucket, its access-log bucket, encryption, lifecycle
and bucket policy. S3's limits are checked here rather than at apply time: a lifecycle configuration
holds at most 1,000 rules, a bucket policy at most 20 KiB."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from compiler.errors import TerraformError
from compiler.resolve import Project
from compiler.terraform.model import MANAGED_BY, Blueprint
from compiler.terraform.storage import (
    ABORT_MULTIPART_DAYS,
    NONCURRENT_DAYS,
    dataset_prefix,
    dataset_readers,
    declare_principals,
    default_region,
    principal_ref,
    retention_groups,
)

S3_MAX_LIFECYCLE_RULES = 1000
S3_BUCKET_NAME_MAX = 63
ACCESS_LOG_RETENTION_DAYS = 365
ACCESS_LOG_PREFIX = "artifacts/"
S3_MAX_POLICY_BYTES = 20 * 1024


def _aws_identity(principal: str, partition: str, account: str) -> str:
    iam = f"arn:{partition}:iam::{account}"
    kind, _, name = principal.partition(":")
    if kind == "team":
        return f"{iam}:role/mlops-team-{name}"
    return f"{iam}:user/{name if kind == 'user' else principal}"


def add_s3_bucket(project: Project, plan: Blueprint, bucket: str) -> None:
    """The artifact bucket ``bucket`` on S3: private, versioned, encrypted per ``storage.encryption``, logged,
    expiring per dataset retention and readable per dataset ``access``."""
    spec = project.spec
    region = plan.variable("aws_region", "string", "AWS region of the artifact bucket",
                           default_region(project, "us-east-1"))
    plan.providers["aws"] = {"region": region, "default_tags": [
        {"tags": {"managed-by": MANAGED_BY, "mlops-project": spec.project}}]}
    partition, account = "${data.aws_partition.current.partition}", "${data.aws_caller_identity.current.account_id}"
    plan.add("data", "aws_partition", "current", {})
    plan.add("data", "aws_caller_identity", "current", {})
    bucket_id, bucket_arn = "${aws_s3_bucket.artifacts.id}", f"arn:{partition}:s3:::{bucket}"
    readers = dataset_readers(project)
    principals = sorted({p for names in readers.values() for p in names})
    if principals:
        declare_principals(plan, {p: _aws_identity(p, partition, account) for p in principals})

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
    } for days, names in retention_groups(project).items() for name in names)
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
        who = [{"type": "AWS", "identifiers": [principal_ref(p) for p in group]}]
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
