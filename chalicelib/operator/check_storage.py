"""`lifeboat check`'s AWS side: the bucket takes a tagged, encrypted object, its policy refuses what it should, its
lifecycle rules are the configuration's, and the jobs table and queues exist.

The test objects go under `<prefix>check/`, a folder no backup uses (chalicelib.logical.catalog.Layout), tagged as
an on-demand backup of the default policy so the lifecycle expires one that could not be deleted.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from typing import TYPE_CHECKING, Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message, http_status
from chalicelib.errors import StorageError
from chalicelib.logical.catalog import Layout
from chalicelib.operator.check_model import CheckResult, CheckServices, failed, passed, skipped
from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG, RetentionClass, class_days, lifecycle_rules

if TYPE_CHECKING:
    from types_boto3_s3.type_defs import LifecycleRuleOutputTypeDef

CHECK_FOLDER = "check/"
CHECK_BODY = b"pg-lifeboat check: a test object, safe to delete\n"
CHECK_POLICY = "default"  # every configuration has it (config.Settings)
CHECK_TAGS = {RETENTION_TAG: RetentionClass.ONDEMAND.value, POLICY_TAG: CHECK_POLICY, "lifeboat": "check"}
REFUSAL_SUFFIX = "-sse-s3.txt"  # the object the bucket policy should refuse
APPLY_LIFECYCLE = "lifeboat lifecycle --apply"


def _denied(exc: BaseException) -> bool:
    cause = exc.__cause__ if isinstance(exc, StorageError) else exc
    return error_code(cause or exc) in ("AccessDenied", "403", "Forbidden") or http_status(cause or exc) == 403


def check_keys(services: CheckServices) -> tuple[str, str]:
    """(the test object's key, the key of the put the policy should refuse), unique per run."""
    stamp = services.clock().strftime("%Y%m%dT%H%M%SZ")
    base = f"{services.config.settings.prefix}{CHECK_FOLDER}{stamp}-{secrets.token_hex(4)}"
    return f"{base}.txt", base + REFUSAL_SUFFIX


def check_bucket(services: CheckServices, key: str) -> CheckResult:
    """The bucket exists and stores a tagged object with the configured encryption; then the object is removed
    (or, where this role may not delete, left to the lifecycle)."""
    settings = services.config.settings
    bucket, name = settings.bucket, "bucket"
    try:
        services.s3.head_bucket(Bucket=bucket)
    except AWS_ERRORS as exc:
        if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return failed(
                name,
                f"bucket {bucket} does not exist (region {services.s3.meta.region_name})",
                "create it (the stack does: its BucketName output), or set settings.bucket to the bucket the"
                " stack made; check --region/AWS_REGION if it lives in another region",
            )
        if _denied(exc):
            return failed(name, f"access denied to bucket {bucket}", f"allow s3:ListBucket on arn:aws:s3:::{bucket}")
        return failed(name, f"cannot reach bucket {bucket}: {error_message(exc)}", "check the endpoint and network")
    wanted = "aws:kms" if settings.kms_key_id else "AES256"
    try:
        services.store.put_bytes(key, CHECK_BODY, tags=CHECK_TAGS, content_type="text/plain")
        head = services.s3.head_object(Bucket=bucket, Key=key)
        tags = services.store.tags(key)
    except StorageError as exc:
        kms = "KMS" in error_code(exc.__cause__ or exc) or "KMS" in str(exc)
        fix = (
            f"check settings.kms_key_id ({settings.kms_key_id}) and that its key policy lets this role use it"
            " (kms:GenerateDataKey, kms:Decrypt)"
            if kms
            else f"allow s3:PutObject, s3:PutObjectTagging and s3:GetObjectTagging on arn:aws:s3:::{bucket}/"
            f"{settings.prefix}* (and kms:GenerateDataKey on settings.kms_key_id)"
        )
        return failed(name, f"a test object was refused: {exc}", fix)
    stored = head.get("ServerSideEncryption")
    if stored != wanted:
        return failed(
            name,
            f"s3://{bucket}/{key} was stored with encryption {stored or 'none'}, not {wanted}",
            "check settings.kms_key_id and the bucket's default encryption",
        )
    if tags != CHECK_TAGS:
        return failed(name, f"s3://{bucket}/{key} kept the tags {tags}, not {CHECK_TAGS}", "allow s3:PutObjectTagging")
    encryption = f"aws:kms, key {head.get('SSEKMSKeyId', '?')}" if settings.kms_key_id else "SSE-S3"
    return passed(name, f"s3://{bucket}/{key}: stored ({encryption}), tagged; {_remove(services, key)}")


def _remove(services: CheckServices, key: str) -> str:
    try:
        services.store.delete([key])
    except StorageError as exc:
        policy = services.config.settings.retention_policies[CHECK_POLICY]
        days = class_days(policy)[RetentionClass.ONDEMAND]
        return f"not deleted ({exc}): the lifecycle rule lifeboat-{CHECK_POLICY}-ondemand expires it after {days} days"
    return "deleted"


def check_bucket_policy(services: CheckServices, key: str) -> CheckResult:
    """Where a bucket policy exists and objects use the KMS key, a put asking for SSE-S3 instead is refused (the
    stack's policy refuses every encryption but aws:kms with its key; a put without encryption headers gets the
    bucket's default, the same key, so that one is not a leak)."""
    settings, name = services.config.settings, "bucket policy"
    try:
        services.s3.get_bucket_policy(Bucket=settings.bucket)
    except AWS_ERRORS as exc:
        if error_code(exc) == "NoSuchBucketPolicy":
            return skipped(name, "the bucket has no policy: nothing to test (the stack's refuses other encryption)")
        return skipped(name, f"cannot read the bucket policy ({error_code(exc) or error_message(exc)})")
    if not settings.kms_key_id:
        return skipped(name, "settings.kms_key_id is unset: objects use SSE-S3, so the policy has nothing to refuse")
    try:
        services.s3.put_object(
            Bucket=settings.bucket,
            Key=key,
            Body=CHECK_BODY,
            ServerSideEncryption="AES256",
            Tagging=urllib.parse.urlencode(CHECK_TAGS),
        )
    except AWS_ERRORS as exc:
        if _denied(exc):
            return passed(name, "refused a put that asked for SSE-S3 instead of the KMS key")
        return failed(
            name,
            f"a put asking for SSE-S3 failed with {error_code(exc)}, not AccessDenied: {error_message(exc)}",
            "check the bucket policy",
        )
    return failed(
        name,
        f"the bucket accepted s3://{settings.bucket}/{key} encrypted with SSE-S3 instead of the KMS key"
        f" ({_remove(services, key)})",
        "deny s3:PutObject unless s3:x-amz-server-side-encryption is aws:kms with the stack's key (the stack's"
        " DenyNonKmsEncryption and DenyOtherKmsKeys statements, stack/template/storage.py)",
    )


# --- one retention truth: the bucket's lifecycle is the configuration's ------------------------------------------


def _normal(rule: Any) -> dict[str, Any]:
    """A lifecycle rule in one form: S3 may return keys in any order, an empty prefix or none, a legacy top-level
    Prefix, and tags in any order."""
    r: dict[str, Any] = json.loads(json.dumps(rule, default=str))
    if "Prefix" in r and "Filter" not in r:
        r["Filter"] = {"Prefix": r.pop("Prefix")}
    r.pop("Prefix", None)
    f: dict[str, Any] = r.get("Filter") or {}
    inner: dict[str, Any] = f["And"] if isinstance(f.get("And"), dict) else f
    if inner.get("Prefix") == "":
        del inner["Prefix"]
    if isinstance(inner.get("Tags"), list):
        inner["Tags"] = sorted(inner["Tags"], key=lambda t: (t.get("Key"), t.get("Value")))
    r["Filter"] = f
    return r


def lifecycle_drift(expected: list[dict[str, Any]], actual: list[Any]) -> list[str]:
    """How the bucket's rules differ from the configuration's, one phrase per difference ([] when equal)."""
    want = {r["ID"]: _normal(r) for r in expected}
    have = {str(r.get("ID", "(no ID)")): _normal(r) for r in actual}
    drift = []
    if missing := sorted(want.keys() - have.keys()):
        drift.append(f"missing on the bucket: {', '.join(missing)}")
    if extra := sorted(have.keys() - want.keys()):
        drift.append(f"on the bucket but not in the configuration: {', '.join(extra)}")
    for rule_id in sorted(want.keys() & have.keys()):
        fields = sorted(
            k for k in want[rule_id].keys() | have[rule_id].keys() if want[rule_id].get(k) != have[rule_id].get(k)
        )
        if fields:
            shown = "; ".join(
                f"{k} {json.dumps(have[rule_id].get(k), sort_keys=True)} on the bucket,"
                f" {json.dumps(want[rule_id].get(k), sort_keys=True)} configured"
                for k in fields
            )
            drift.append(f"{rule_id} differs: {shown}")
    return drift


def check_lifecycle(services: CheckServices) -> CheckResult:
    settings, name = services.config.settings, "lifecycle"
    expected = lifecycle_rules(settings, Layout(settings.prefix).failed_prefix)
    actual: list[LifecycleRuleOutputTypeDef] = []
    try:
        actual = services.s3.get_bucket_lifecycle_configuration(Bucket=settings.bucket)["Rules"]
    except AWS_ERRORS as exc:
        if error_code(exc) != "NoSuchLifecycleConfiguration":
            return failed(
                name,
                f"cannot read the lifecycle of {settings.bucket}: {error_code(exc) or error_message(exc)}",
                f"allow s3:GetLifecycleConfiguration on arn:aws:s3:::{settings.bucket}",
            )
    drift = lifecycle_drift(expected, list(actual))
    if drift:
        return failed(
            name,
            f"the bucket's lifecycle rules are not what the configuration implies: {'; '.join(drift)}",
            f"run `{APPLY_LIFECYCLE}` (needs s3:PutLifecycleConfiguration: the operator's IAM, not the functions')"
            " to make the bucket follow the configuration, or change settings.retention_policies/prefix to match",
        )
    return passed(name, f"the bucket's {len(expected)} lifecycle rules are the configuration's retention policies")


# --- the jobs table and the queues --------------------------------------------------------------------------------


def check_jobs_table(services: CheckServices) -> CheckResult:
    name, table = "jobs table", services.jobs_table
    if not table or services.dynamodb is None:
        return skipped(name, "LIFEBOAT_JOBS_TABLE is unset: runs take no claims, restores through the API need it")
    try:
        status = services.dynamodb.describe_table(TableName=table)["Table"].get("TableStatus", "?")
    except AWS_ERRORS as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return failed(
                name,
                f"table {table} does not exist",
                "set LIFEBOAT_JOBS_TABLE to the stack's JobsTable output (or unset it)",
            )
        return failed(name, f"cannot describe table {table}: {error_message(exc)}", "allow dynamodb:DescribeTable")
    return passed(name, f"{table} ({status})")


def check_queues(services: CheckServices) -> list[CheckResult]:
    results = []
    for name, (variable, url) in services.queues.items():
        if not url or services.sqs is None:
            results.append(skipped(name, f"{variable} is unset"))
            continue
        try:
            services.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        except AWS_ERRORS as exc:
            code = error_code(exc)
            if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
                results.append(
                    failed(name, f"queue {url} does not exist", f"set {variable} to the stack's queue URL output")
                )
            else:
                results.append(
                    failed(name, f"cannot read queue {url}: {error_message(exc)}", "allow sqs:GetQueueAttributes")
                )
            continue
        results.append(passed(name, url))
    return results
