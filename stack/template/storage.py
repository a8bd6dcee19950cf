"""The backup bucket, its KMS key and lifecycle rules, the manifest signing key, and the jobs table.

Lifecycle rules come from chalicelib.scheduling.retention.lifecycle_rules; only the days of the default policy
(and the noncurrent-version days) become parameters, defaulting to the rules' own days.

Immutable by default: versioning and S3 Object Lock are on (ObjectLockMode, GOVERNANCE unless COMPLIANCE is chosen),
without a default retention: the backup worker locks a backup's objects when its manifest makes it complete, until
its retention class ends (chalicelib.logical.protect), so the objects of an attempt that never completed are not
locked and its clean-up's plain deletes only leave delete markers. No function may delete a version or bypass,
shorten or reconfigure a lock (tests/stack/test_immutable.py). The bucket policy refuses any PutObject that names
another encryption than aws:kms with the stack's key.

The manifest signing key (an HMAC_256 KMS key, GENERATE_VERIFY_MAC) signs every manifest as the backup worker writes
it (kms:GenerateMac) and restores (and the API, before it accepts one) check it (kms:VerifyMac):
chalicelib.logical.signing. Its key policy is the bucket key's (the account administers it through IAM); no function
has any of its administrative actions.

With VaultBucketArn, every backup object is also replicated to a bucket in another account (stack/template/vault.py).

The bucket and the keys are retained when the stack is deleted: deleting a stack never deletes backups,
nor the keys that decrypt and vouch for them.
"""

from __future__ import annotations

from pathlib import Path

from stack import names
from stack.template.app_model import retention_rules
from stack.template.intrinsics import Json, getatt, if_, ref, sub
from stack.template.vault import replication_configuration, vault_resources

RETAIN = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}


def signing_key_arn() -> Json:
    """The KMS HMAC key that signs manifests (settings.signing_key_id)."""
    return getatt("ManifestSigningKey", "Arn")


def key_arn() -> Json:
    """The bucket's KMS key: the stack's own, or the one given as KmsKeyArn."""
    return if_("CreateKmsKey", getatt("BackupKey", "Arn"), ref("KmsKeyArn"))


# A failed attempt's data and the versions a deletion hides must outlive the dead-man's alarm and the time to act on
# it (tests/stack/test_immutable.py): noncurrent versions are kept at least this many days.
MIN_NONCURRENT_DAYS = 30

# The lifecycle days only expire objects; each backup's Object Lock comes from the app's settings.
LOCKS_FROM_SETTINGS = (
    " The Object Lock of each backup comes from settings.retention_policies in the settings (SettingsParameter,"
    " not from SettingsJson, which carries none): keep that policy's days equal to these"
)


def _days_parameter(default: int, description: str, minimum: int = 1) -> Json:
    return {
        "Type": "Number",
        "Default": max(default, minimum),
        "MinValue": minimum,
        "MaxValue": 36500,
        "Description": description,
    }


def lifecycle(settings_file: Path | None) -> tuple[list[Json], dict[str, Json]]:
    """The bucket's lifecycle rules, with the default policy's days and the noncurrent-version days
    turned into parameters whose defaults are the days lifecycle_rules chose."""
    source = retention_rules(settings_file)
    rules = source.rules
    params: dict[str, Json] = {}
    noncurrent_default = 1
    for rule in rules:
        tags = {t["Key"]: t["Value"] for t in rule.get("Filter", {}).get("And", {}).get("Tags", [])}
        cls = tags.get(source.retention_tag)
        if "NoncurrentVersionExpiration" in rule and "Expiration" in rule:  # a retention class's rule (not the
            # .partial WAL versions', whose days are its own)
            noncurrent_default = rule["NoncurrentVersionExpiration"]["NoncurrentDays"]
            rule["NoncurrentVersionExpiration"]["NoncurrentDays"] = ref("NoncurrentVersionDays")
        if cls is None or tags.get(source.policy_tag) != "default":
            continue
        name = f"{cls.capitalize()}RetentionDays"
        params[name] = _days_parameter(
            rule["Expiration"]["Days"],
            f"Days to keep backups tagged {source.retention_tag}={cls} (default policy);"
            " keep longer classes longer than shorter ones." + LOCKS_FROM_SETTINGS,
        )
        rule["Expiration"]["Days"] = ref(name)
        if cls in source.archived_classes:
            rule["Transitions"] = if_(
                "HasGlacierTransition",
                [{"StorageClass": ref("GlacierStorageClass"), "TransitionInDays": ref("GlacierTransitionDays")}],
            )
    # Versioning keeps what is overwritten or deleted (a failed upload's parts, a deleted backup): expire
    # those versions, and the delete markers left behind, after the same number of days.
    rules.append(
        {
            "Id": "lifeboat-noncurrent-versions",
            "Status": "Enabled",
            **({"Prefix": source.prefix} if source.prefix else {}),
            "NoncurrentVersionExpiration": {"NoncurrentDays": ref("NoncurrentVersionDays")},
            "ExpiredObjectDeleteMarker": True,
        }
    )
    params["NoncurrentVersionDays"] = _days_parameter(
        noncurrent_default,
        "Days a deleted or overwritten object version is kept (the window to undo a deletion, and what is left of"
        f" a failed attempt), at least {MIN_NONCURRENT_DAYS}: longer than the dead-man's alarm takes to fire and be"
        " acted on; a locked version stays at least until its lock ends",
        minimum=MIN_NONCURRENT_DAYS,
    )
    return [_cfn_rule(r) for r in rules], params


_S3_RULE_FIELDS = {
    "ID",
    "Status",
    "Filter",
    "AbortIncompleteMultipartUpload",
    "Expiration",
    "NoncurrentVersionExpiration",
    "Transitions",
}


def _cfn_rule(rule: Json) -> Json:
    """S3 API lifecycle rule (as lifecycle_rules returns it) -> AWS::S3::Bucket Rule."""
    if "Id" in rule:  # already in CloudFormation form
        return rule
    out: Json = {"Id": rule["ID"], "Status": rule["Status"]}
    flt = rule.get("Filter", {})
    both = flt.get("And", flt)
    if both.get("Prefix"):
        out["Prefix"] = both["Prefix"]
    if both.get("Tags"):
        out["TagFilters"] = both["Tags"]
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = rule["AbortIncompleteMultipartUpload"]
    if "Expiration" in rule:
        out["ExpirationInDays"] = rule["Expiration"]["Days"]
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = rule["NoncurrentVersionExpiration"]
    if "Transitions" in rule:
        out["Transitions"] = rule["Transitions"]
    unknown = set(rule) - _S3_RULE_FIELDS
    if unknown:
        raise SystemExit(
            f"build_template: lifecycle rule {rule['ID']} has fields this generator does not map: {sorted(unknown)}"
        )
    return out


def storage_resources(rules: list[Json], settings_file: Path | None = None) -> Json:
    """`rules`: lifecycle()'s; `settings_file`: the settings whose key prefix the vault replicates (default: none)."""
    return {
        **_key(),
        **_signing_key(),
        "BackupBucket": _bucket(rules, retention_rules(settings_file).prefix),
        "BackupBucketPolicy": _bucket_policy(),
        **vault_resources(key_arn()),
        "JobsTable": _jobs_table(),
    }


def _key() -> Json:
    """The bucket's KMS key and its alias, unless the stack is given a key (KmsKeyArn)."""
    return {
        "BackupKey": {
            "Type": "AWS::KMS::Key",
            "Condition": "CreateKmsKey",
            **RETAIN,
            "Properties": {
                "Description": sub("pg-lifeboat ${Stage}: encrypts the backup bucket"),
                "EnableKeyRotation": True,
                # The functions' policies allow it only through S3, for this stage's buckets.
                "KeyPolicy": _account_key_policy(),
            },
        },
        "BackupKeyAlias": {
            "Type": "AWS::KMS::Alias",
            "Condition": "CreateKmsKey",
            "Properties": {"AliasName": sub("alias/pg-lifeboat-${Stage}"), "TargetKeyId": ref("BackupKey")},
        },
    }


def _account_key_policy() -> Json:
    """The stack's keys' policy: the account administers the key and IAM policies decide who uses it."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersKeyThroughIam",
                "Effect": "Allow",
                "Principal": {"AWS": sub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }


def _signing_key() -> Json:
    """The manifest signing key and its alias (the functions' policies name the alias: stack/capabilities.py)."""
    return {
        "ManifestSigningKey": {
            "Type": "AWS::KMS::Key",
            **RETAIN,
            "Properties": {
                "Description": sub("pg-lifeboat ${Stage}: signs backup manifests (HMAC)"),
                "KeySpec": "HMAC_256",
                "KeyUsage": "GENERATE_VERIFY_MAC",
                # The backup worker and the Fargate task GenerateMac, restores VerifyMac, nobody else.
                "KeyPolicy": _account_key_policy(),
            },
        },
        "ManifestSigningKeyAlias": {
            "Type": "AWS::KMS::Alias",
            "Properties": {
                "AliasName": sub(names.signing_key_alias("${Stage}")),
                "TargetKeyId": ref("ManifestSigningKey"),
            },
        },
    }


def _bucket(rules: list[Json], prefix: str) -> Json:
    return {
        "Type": "AWS::S3::Bucket",
        **RETAIN,
        "Properties": {
            "BucketName": sub("pg-lifeboat-${Stage}-${AWS::AccountId}-${AWS::Region}"),
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {
                        "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn()},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
            "VersioningConfiguration": {"Status": "Enabled"},
            # No default retention: a backup's objects are locked when it is complete (in ObjectLockMode, passed to
            # the functions as settings.object_lock_mode by the SettingsJson output), not while it is written.
            "ObjectLockEnabled": if_("HasObjectLock", True),
            "ObjectLockConfiguration": if_("HasObjectLock", {"ObjectLockEnabled": "Enabled"}),
            "LifecycleConfiguration": {
                "Rules": rules,
                "TransitionDefaultMinimumObjectSize": "all_storage_classes_128K",
            },
            "ReplicationConfiguration": replication_configuration(prefix),  # HasVault: a copy in another account
            "Tags": [{"Key": "pg-lifeboat:stage", "Value": ref("Stage")}],
        },
    }


def _bucket_policy() -> Json:
    """TLS 1.2 or later only, and every object written with the stack's KMS key."""
    bucket_arn = getatt("BackupBucket", "Arn")
    objects = {"Fn::Join": ["", [bucket_arn, "/*"]]}
    everything = [bucket_arn, objects]
    return {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": ref("BackupBucket"),
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": everything,
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    },
                    {
                        "Sid": "DenyOldTls",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": everything,
                        "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
                    },
                    *_kms_only(objects),
                ],
            },
        },
    }


SSE = "s3:x-amz-server-side-encryption"
SSE_KEY = "s3:x-amz-server-side-encryption-aws-kms-key-id"
SSE_C = "s3:x-amz-server-side-encryption-customer-algorithm"


def _kms_only(objects: Json) -> list[Json]:
    """Refuse every PutObject that asks for an encryption other than aws:kms with the stack's key.

    The conditions test the headers where a request has them: CreateMultipartUpload and PutObject carry them (the
    app's S3Store always sends aws:kms and the key when settings.kms_key_id is set, as the SettingsJson output
    sets it), UploadPart and CompleteMultipartUpload never do (their parts inherit the upload's encryption), and a
    PutObject without them gets the bucket's default encryption, which is aws:kms with the same key. So: no
    AES256, no aws:kms with another key or without one (S3 would use the aws/s3 managed key), no SSE-C."""
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": objects}
    return [
        {
            "Sid": "DenyNonKmsEncryption",
            **deny,
            "Condition": {"StringNotEquals": {SSE: "aws:kms"}, "Null": {SSE: "false"}},
        },
        {
            "Sid": "DenyOtherKmsKeys",
            **deny,
            "Condition": {"StringNotEquals": {SSE_KEY: key_arn()}, "Null": {SSE_KEY: "false"}},
        },
        {
            "Sid": "DenyKmsWithoutTheKey",
            **deny,
            "Condition": {"StringEquals": {SSE: "aws:kms"}, "Null": {SSE_KEY: "true"}},
        },
        {"Sid": "DenyCustomerKeys", **deny, "Condition": {"Null": {SSE_C: "false"}}},
    ]


def _jobs_table() -> Json:
    """Restore jobs are listed through sparse indexes (chalicelib/adapters/dynamo.py owns their definition)."""
    from chalicelib.adapters.dynamo import GLOBAL_SECONDARY_INDEXES, INDEX_ATTRIBUTE_DEFINITIONS

    return {
        "Type": "AWS::DynamoDB::Table",
        "Properties": {
            "TableName": sub("pg-lifeboat-${Stage}-jobs"),
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}, *INDEX_ATTRIBUTE_DEFINITIONS],
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": GLOBAL_SECONDARY_INDEXES,
            "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "SSESpecification": {"SSEEnabled": True},
        },
    }
