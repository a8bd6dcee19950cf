"""Immutable by default: the generated template, with its default parameters, turns S3 Object Lock on, keeps
noncurrent versions at least 30 days, refuses any write that is not SSE-KMS with the stack's key, hands the functions
that key and the lock mode, and gives no function (nor the Fargate task) a way to delete a version, bypass or
shorten a lock, or change the bucket's lifecycle, policy, versioning, encryption or lock configuration.

moto enforces neither IAM nor bucket policies: what IAM would allow is read from the policies themselves (with
wildcards expanded), and the bucket policy's Deny statements are evaluated here for the requests S3 would see.
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import pytest

from chalicelib.config import Settings
from stack.policies import ACCESS, TASK_ACCESS, function_policy
from tests.stack.conftest import Packaged
from tests.stack.test_template import as_list, policy_files, statements

# Actions with which a function's credentials could erase or shorten the history (issue 13).
FORBIDDEN = (
    "s3:DeleteObjectVersion",
    "s3:BypassGovernanceRetention",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketVersioning",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutEncryptionConfiguration",
    "s3:DeleteBucket",
    "kms:ScheduleKeyDeletion",
    "kms:DisableKey",
    "kms:PutKeyPolicy",
)
STACK_KEY = "arn:aws:kms:eu-west-1:123456789012:key/stack-key"
OTHER_KEY = "arn:aws:kms:eu-west-1:123456789012:key/someone-elses"
SIGNING_KEY = "arn:aws:kms:eu-west-1:123456789012:key/signing-key"


def grants(statement: dict[str, Any], action: str) -> bool:
    if statement.get("Effect") != "Allow":
        return False
    if "NotAction" in statement:  # an Allow with NotAction grants everything else: none may exist
        return True
    return any(fnmatch.fnmatchcase(action.lower(), str(p).lower()) for p in as_list(statement.get("Action", [])))


def role_statements(packaged: Packaged) -> list[tuple[str, dict[str, Any]]]:
    """Every statement of every IAM role and policy the template creates (not the bucket or key policy)."""
    found = []
    for kind in ("AWS::IAM::Role", "AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
        for name, resource in packaged.of_type(kind).items():
            props = dict(resource["Properties"])
            props.pop("AssumeRolePolicyDocument", None)  # who may assume the role, not what it may do
            found += [(name, st) for st in statements(props)]
    return found


@pytest.mark.parametrize("action", FORBIDDEN)
def test_no_role_in_the_template_has_a_forbidden_action(packaged: Packaged, action: str) -> None:
    found = role_statements(packaged)
    assert len(found) > 20, "the template's roles were not found"
    offending = [name for name, st in found if grants(st, action)]
    assert offending == [], f"{action} granted to {offending}"


@pytest.mark.parametrize("action", FORBIDDEN)
def test_no_policy_file_has_a_forbidden_action(action: str) -> None:
    files = policy_files()
    assert files
    for path in files:
        doc = json.loads(path.read_text())
        assert not any(grants(st, action) for st in as_list(doc["Statement"])), f"{path.name} grants {action}"
    for function in ACCESS:  # the source of the files, and of the Fargate task's role
        assert not any(grants(st, action) for st in function_policy("prod", function)["Statement"])
    assert TASK_ACCESS, "the task's capabilities"


def test_the_workers_may_lock_but_not_shorten() -> None:
    doc = function_policy("prod", "backup_worker")
    assert any(grants(st, "s3:PutObjectRetention") for st in doc["Statement"])
    assert not any(grants(st, "s3:BypassGovernanceRetention") for st in doc["Statement"])
    for function in ACCESS:
        statements_ = function_policy("prod", function)["Statement"]
        assert not any(grants(st, "s3:PutObjectLegalHold") for st in statements_), function


# --- the bucket with default parameters -----------------------------------------------------------------------------


def defaults(packaged: Packaged) -> dict[str, Any]:
    return {name: p.get("Default") for name, p in packaged.template["Parameters"].items()}


def condition(packaged: Packaged, name: str) -> bool:
    """A template condition evaluated with the parameters' defaults (the operators the template uses)."""
    params = defaults(packaged)

    def ev(node: Any) -> Any:
        if isinstance(node, dict):
            ((fn, arg),) = node.items()
            if fn == "Ref":
                return params[arg]
            if fn == "Condition":
                return condition(packaged, arg)
            if fn == "Fn::Equals":
                return str(ev(arg[0])) == str(ev(arg[1]))
            if fn == "Fn::Not":
                return not ev(arg[0])
            if fn == "Fn::And":
                return all(ev(a) for a in arg)
            if fn == "Fn::Join":
                return arg[0].join(str(x) for x in ev(arg[1]))
            raise AssertionError(f"condition operator {fn} not evaluated here")
        return node

    return bool(ev(packaged.template["Conditions"][name]))


def resolve(packaged: Packaged, node: Any) -> Any:
    """Intrinsics resolved with the defaults: the stack's key is STACK_KEY, the bucket 'backup-bucket'."""
    if isinstance(node, list):
        return [resolve(packaged, n) for n in node]
    if not isinstance(node, dict):
        return node
    if node == {"Fn::GetAtt": ["BackupKey", "Arn"]}:
        return STACK_KEY
    if node == {"Fn::GetAtt": ["ManifestSigningKey", "Arn"]}:
        return SIGNING_KEY
    if node == {"Ref": "BackupBucket"}:
        return "backup-bucket"
    if node == {"Fn::GetAtt": ["BackupBucket", "Arn"]}:
        return "arn:aws:s3:::backup-bucket"
    if "Ref" in node and node["Ref"] in packaged.template["Parameters"]:
        return defaults(packaged)[node["Ref"]]
    if "Fn::If" in node:
        cond, then, otherwise = node["Fn::If"]
        return resolve(packaged, then if condition(packaged, cond) else otherwise)
    if "Fn::Join" in node:
        sep, items = node["Fn::Join"]
        return sep.join(str(resolve(packaged, i)) for i in items)
    if "Fn::Sub" in node and isinstance(node["Fn::Sub"], list):
        text, variables = node["Fn::Sub"]
        values = {k: str(resolve(packaged, v)) for k, v in variables.items()}
        return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    return {k: resolve(packaged, v) for k, v in node.items()}


def test_object_lock_is_on_with_default_parameters(packaged: Packaged) -> None:
    props = resolve(packaged, packaged.resources["BackupBucket"]["Properties"])
    assert props["ObjectLockEnabled"] is True
    assert props["ObjectLockConfiguration"] == {"ObjectLockEnabled": "Enabled"}  # locks are set per backup
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert defaults(packaged)["ObjectLockMode"] == "GOVERNANCE"
    assert set(packaged.template["Parameters"]["ObjectLockMode"]["AllowedValues"]) == {
        "GOVERNANCE",
        "COMPLIANCE",
        "NONE",
    }


def test_noncurrent_versions_are_kept_at_least_30_days(packaged: Packaged) -> None:
    rules = resolve(packaged, packaged.resources["BackupBucket"]["Properties"]["LifecycleConfiguration"]["Rules"])
    # The open WAL segment's `.partial` is re-uploaded every flush (chalicelib.scheduling.retention
    # wal_partial_rule): its old versions are superseded copies of bytes the receiver still holds and uploads again
    # at the next flush, and then in the finished (locked) segment, so they go after a day; no other rule is shorter.
    noncurrent = [
        r["NoncurrentVersionExpiration"]["NoncurrentDays"]
        for r in rules
        if "NoncurrentVersionExpiration" in r and r["Id"] != "lifeboat-wal-partial-versions"
    ]
    assert noncurrent and min(noncurrent) >= 30
    assert defaults(packaged)["NoncurrentVersionDays"] >= 30
    # No rule expires a target's newest backups (tag keep), and none deletes versions other than noncurrent ones.
    assert not any({"Key": "retention", "Value": "keep"} in r.get("TagFilters", []) for r in rules)


def test_noncurrent_version_days_cannot_be_set_below_30(packaged: Packaged) -> None:
    """A failed attempt's data and the versions a deletion hides must outlive the dead-man's alarm."""
    params = packaged.template["Parameters"]
    assert params["NoncurrentVersionDays"]["MinValue"] >= 30
    for name, param in params.items():  # the lifecycle days say where the locks come from
        if name.endswith("RetentionDays") and name != "LogRetentionDays":
            assert "settings.retention_policies" in param["Description"], name


def test_the_settings_output_carries_the_key_and_the_lock_mode(packaged: Packaged) -> None:
    text = resolve(packaged, packaged.template["Outputs"]["SettingsJson"]["Value"])
    settings = Settings.model_validate(json.loads(text))
    assert settings.bucket == "backup-bucket"
    assert settings.kms_key_id == STACK_KEY
    assert settings.signing_key_id == SIGNING_KEY
    assert settings.object_lock_mode == "GOVERNANCE"


# --- the bucket policy refuses writes that are not SSE-KMS with the stack's key -----------------------------------


def _holds(operator: str, key: str, wanted: Any, context: dict[str, str]) -> bool:
    present = key in context
    if operator == "Null":
        return (not present) == (str(wanted).lower() == "true")
    if not present:
        return operator.startswith("StringNot")  # IAM: a negated operator on a missing key holds
    actual = context[key]
    if operator == "StringEquals":
        return actual in as_list(wanted)
    if operator == "StringNotEquals":
        return actual not in as_list(wanted)
    if operator == "Bool":
        return actual.lower() == str(wanted).lower()
    if operator == "NumericLessThan":
        return float(actual) < float(wanted)
    raise AssertionError(f"operator {operator} not evaluated here")


def denied(packaged: Packaged, action: str, headers: dict[str, str]) -> list[str]:
    """The Sids of the bucket policy's Deny statements that refuse the request (TLS 1.3, an object key)."""
    doc = resolve(packaged, packaged.resources["BackupBucketPolicy"]["Properties"]["PolicyDocument"])
    context = {"aws:SecureTransport": "true", "s3:TlsVersion": "1.3", **headers}
    refused = []
    for st in doc["Statement"]:
        if st["Effect"] != "Deny" or not any(fnmatch.fnmatchcase(action, a) for a in as_list(st["Action"])):
            continue
        if not any(fnmatch.fnmatchcase("arn:aws:s3:::backup-bucket/logical/x", r) for r in as_list(st["Resource"])):
            continue
        if all(_holds(op, k, v, context) for op, keys in st.get("Condition", {}).items() for k, v in keys.items()):
            refused.append(st["Sid"])
    return refused


SSE, SSE_KEY, SSE_C = (
    "s3:x-amz-server-side-encryption",
    "s3:x-amz-server-side-encryption-aws-kms-key-id",
    "s3:x-amz-server-side-encryption-customer-algorithm",
)


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({SSE: "aws:kms", SSE_KEY: STACK_KEY}, False),  # what S3Store sends (PutObject, CreateMultipartUpload)
        ({}, False),  # UploadPart, CompleteMultipartUpload; a PutObject without headers gets the default: the key
        ({SSE: "AES256"}, True),
        ({SSE: "aws:kms", SSE_KEY: OTHER_KEY}, True),
        ({SSE: "aws:kms"}, True),  # S3 would use the aws/s3 managed key
        ({SSE_C: "AES256"}, True),
        ({SSE: "aws:kms:dsse", SSE_KEY: STACK_KEY}, True),
    ],
)
def test_bucket_policy_refuses_puts_without_the_stacks_key(
    packaged: Packaged, headers: dict[str, str], refused: bool
) -> None:
    assert bool(denied(packaged, "s3:PutObject", headers)) is refused, denied(packaged, "s3:PutObject", headers)


def test_the_bucket_default_is_the_stacks_key(packaged: Packaged) -> None:
    props = resolve(packaged, packaged.resources["BackupBucket"]["Properties"])
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": STACK_KEY}
