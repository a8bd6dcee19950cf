"""The IAM statements each capability of stack/policies.py ACCESS grants, scoped to the names the stack
gives (stack/names.py): what the policy files in .chalice/ and the Fargate task's role are made of."""

from __future__ import annotations

from typing import Any

from stack import names

CAPABILITIES = (
    "config",
    "jobs",
    "jobs:list",
    "jobs:api",
    "bucket:read",
    "bucket:write",
    "bucket:prune",
    "database",
    "snapshots:read",
    "snapshots:take",
    "snapshots:sweep",
    "snapshots:prune",
    "snapshots:keys",
    "restores:run",
    "fargate:run",
    *(f"{verb}:{kind}" for verb in ("send", "consume") for kind in names.QUEUE_KINDS),
)
# Read-only calls that IAM cannot scope to a resource: the only actions allowed on Resource "*".
UNSCOPED_ACTIONS = frozenset(
    {
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstances",
        "ec2:DescribeVolumes",
        "rds:DescribeDBSnapshots",
        "rds:DescribeDBClusterSnapshots",
        "rds:DescribeDBInstanceAutomatedBackups",
    }
)

Statement = dict[str, Any]


def _s3_kms(stage: str, actions: list[str]) -> Statement:
    """KMS use only through S3 and only for this stage's buckets: the encryption context S3 sends
    is the object's (or, with S3 Bucket Keys, the bucket's) ARN. Works for the key the stack creates
    and for a given key whose key policy delegates to IAM."""
    return {
        "Sid": "BucketKey",
        "Effect": "Allow",
        "Action": actions,
        "Resource": "arn:aws:kms:*:*:key/*",
        "Condition": {
            "StringLike": {
                "kms:ViaService": "s3.*.amazonaws.com",
                "kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{names.bucket_prefix(stage)}*",
            }
        },
    }


def capability_statements(stage: str, capability: str) -> list[Statement]:
    """The statements one capability of ACCESS grants in a stage."""
    if capability == "config":
        path = names.config_path(stage)
        return [
            {
                "Sid": "ReadConfig",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
                "Resource": [f"arn:aws:ssm:*:*:parameter{path}", f"arn:aws:ssm:*:*:parameter{path}/*"],
            }
        ]
    if capability in ("jobs", "jobs:list", "jobs:api"):
        extra = {"jobs": [], "jobs:list": [], "jobs:api": ["dynamodb:DeleteItem"]}[capability]
        table = f"arn:aws:dynamodb:*:*:table/{names.jobs_table(stage)}"
        statements: list[Statement] = [
            {
                "Sid": "JobsTable",
                "Effect": "Allow",
                "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", *extra],
                "Resource": table,
            }
        ]
        if capability != "jobs":  # restore jobs are listed by a Query on a sparse index, never a Scan
            statements.append(
                {
                    "Sid": "ListRestoreJobs",
                    "Effect": "Allow",
                    "Action": ["dynamodb:Query"],
                    "Resource": f"{table}/index/*",
                }
            )
        return statements
    if capability in ("bucket:read", "bucket:write", "bucket:prune"):
        return _bucket_statements(stage, capability.removeprefix("bucket:"))
    if capability.startswith("snapshots:"):
        return _snapshot_statements(capability.removeprefix("snapshots:"))
    if capability == "restores:run":
        return _restore_statements()
    verb, _, kind = capability.partition(":")
    if verb in ("send", "consume"):
        return _queue_statements(stage, verb, kind)
    raise ValueError(f"unknown capability {capability!r} (known: {', '.join(CAPABILITIES)})")


def _bucket_statements(stage: str, what: str) -> list[Statement]:
    bucket = f"arn:aws:s3:::{names.bucket_prefix(stage)}*"
    if what == "read":
        return [
            {"Sid": "ListBackups", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket},
            {
                "Sid": "ReadBackups",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectTagging"],
                "Resource": f"{bucket}/*",
            },
            _s3_kms(stage, ["kms:Decrypt"]),
        ]
    if what == "write":
        return [
            {
                "Sid": "ListBackups",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": bucket,
            },
            {
                "Sid": "WriteBackups",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:GetObjectTagging",
                    "s3:PutObject",
                    "s3:PutObjectTagging",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": f"{bucket}/*",
            },
            _s3_kms(stage, ["kms:GenerateDataKey", "kms:Decrypt"]),
        ]
    # prune: the pruner deletes the backup labels of the snapshots it deletes
    return [
        {"Sid": "ListBackups", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket},
        {"Sid": "DeleteBackupLabels", "Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": f"{bucket}/*"},
    ]


def _queue_statements(stage: str, verb: str, kind: str) -> list[Statement]:
    if verb == "send":
        return [
            {
                "Sid": f"Send{kind.capitalize()}",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": f"arn:aws:sqs:*:*:{names.queue(stage, kind)}",
            }
        ]
    # consume: what Lambda's SQS event source mapping needs from the function's role.
    return [
        {
            "Sid": f"Consume{kind.capitalize()}",
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
            "Resource": f"arn:aws:sqs:*:*:{names.queue(stage, kind)}",
        }
    ]


# RDS and EBS snapshots: created under the lifeboat- name (RDS) and tagged lifeboat:managed=true; only
# snapshots carrying that tag are retagged or deleted.
RDS_SNAPSHOTS = [
    f"arn:aws:rds:*:*:snapshot:{names.SNAPSHOT_ID_PREFIX}*",
    f"arn:aws:rds:*:*:cluster-snapshot:{names.SNAPSHOT_ID_PREFIX}*",
]
EBS_SNAPSHOTS = "arn:aws:ec2:*::snapshot/*"
MANAGED = {"StringEquals": {f"aws:ResourceTag/{names.MANAGED_TAG[0]}": names.MANAGED_TAG[1]}}


def _snapshot_statements(what: str) -> list[Statement]:
    """snapshots:read, take, sweep, keys, prune."""
    if what == "read":
        return [{"Sid": "DescribeSnapshots", "Effect": "Allow", "Resource": "*", "Action": sorted(UNSCOPED_ACTIONS)}]
    if what == "take":
        return _take_snapshots()
    if what == "sweep":
        return _sweep_snapshots()
    if what == "keys":
        return _snapshot_keys()
    if what == "prune":
        return [
            {
                "Sid": "DeleteManagedRdsSnapshots",
                "Effect": "Allow",
                "Action": ["rds:DeleteDBSnapshot", "rds:DeleteDBClusterSnapshot"],
                "Resource": RDS_SNAPSHOTS,
                "Condition": MANAGED,
            },
            {
                "Sid": "DeleteManagedEbsSnapshots",
                "Effect": "Allow",
                "Action": ["ec2:DeleteSnapshot"],
                "Resource": EBS_SNAPSHOTS,
                "Condition": MANAGED,
            },
        ]
    raise ValueError(f"unknown capability snapshots:{what}")


def _take_snapshots() -> list[Statement]:
    return [
        {
            "Sid": "CreateRdsSnapshots",
            "Effect": "Allow",
            "Action": ["rds:CreateDBSnapshot", "rds:CreateDBClusterSnapshot", "rds:AddTagsToResource"],
            "Resource": ["arn:aws:rds:*:*:db:*", "arn:aws:rds:*:*:cluster:*", *RDS_SNAPSHOTS],
        },
        {
            "Sid": "CreateEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateSnapshots", "ec2:CreateSnapshot"],
            "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*", EBS_SNAPSHOTS],
        },
        {
            "Sid": "TagNewEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": {"StringEquals": {"ec2:CreateAction": ["CreateSnapshots", "CreateSnapshot"]}},
        },
    ]


def _sweep_snapshots() -> list[Statement]:
    """Mark finished snapshots, copy them to the copy region (encrypted ones: snapshots:keys)."""
    return [
        {
            "Sid": "TagAndCopyRdsSnapshots",
            "Effect": "Allow",
            "Action": ["rds:AddTagsToResource", "rds:CopyDBSnapshot", "rds:CopyDBClusterSnapshot"],
            "Resource": RDS_SNAPSHOTS,
        },
        {"Sid": "CopyEbsSnapshots", "Effect": "Allow", "Action": ["ec2:CopySnapshot"], "Resource": EBS_SNAPSHOTS},
        {
            "Sid": "TagEbsCopies",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": {"StringEquals": {"ec2:CreateAction": "CopySnapshot"}},
        },
        {
            "Sid": "TagManagedEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": MANAGED,
        },
    ]


def _snapshot_keys() -> list[Statement]:
    """Encrypted snapshots: copies and restores, through EC2 and RDS only."""
    return [
        {
            "Sid": "SnapshotKeys",
            "Effect": "Allow",
            "Action": [
                "kms:DescribeKey",
                "kms:Decrypt",
                "kms:GenerateDataKeyWithoutPlaintext",
                "kms:ReEncryptFrom",
                "kms:ReEncryptTo",
            ],
            "Resource": "arn:aws:kms:*:*:key/*",
            "Condition": {"StringLike": {"kms:ViaService": ["ec2.*.amazonaws.com", "rds.*.amazonaws.com"]}},
        },
        {
            "Sid": "SnapshotKeyGrants",
            "Effect": "Allow",
            "Action": ["kms:CreateGrant"],
            "Resource": "arn:aws:kms:*:*:key/*",
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
        },
    ]


def _restore_statements() -> list[Statement]:
    """Snapshot and point-in-time restores create new RDS instances/clusters and EBS volumes, always tagged
    lifeboat:restore-id (chalicelib.restore.snapshot): RDS creation is allowed only with that tag in the
    request, and only volumes carrying it are attached."""
    restore_tag = f"{names.RESTORE_TAG}"
    return [
        {
            "Sid": "DescribeRestoreResources",
            "Effect": "Allow",
            "Action": ["rds:DescribeDBInstances", "rds:DescribeDBClusters"],
            "Resource": ["arn:aws:rds:*:*:db:*", "arn:aws:rds:*:*:cluster:*"],
        },
        {
            "Sid": "RestoreRds",
            "Effect": "Allow",
            "Action": [
                "rds:RestoreDBInstanceFromDBSnapshot",
                "rds:RestoreDBClusterFromSnapshot",
                "rds:RestoreDBInstanceToPointInTime",
                "rds:RestoreDBClusterToPointInTime",
                "rds:CreateDBInstance",
                "rds:AddTagsToResource",
            ],
            "Resource": "arn:aws:rds:*:*:*",
            "Condition": {"StringLike": {f"aws:RequestTag/{restore_tag}": "*"}},
        },
        {
            "Sid": "CreateRestoreVolumes",
            "Effect": "Allow",
            "Action": ["ec2:CreateVolume"],
            "Resource": ["arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*::snapshot/*"],
        },
        {
            "Sid": "TagRestoreVolumes",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"StringEquals": {"ec2:CreateAction": "CreateVolume"}},
        },
        {
            "Sid": "AttachRestoredVolumes",
            "Effect": "Allow",
            "Action": ["ec2:AttachVolume"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"StringLike": {f"aws:ResourceTag/{restore_tag}": "*"}},
        },
        {
            "Sid": "AttachToInstances",
            "Effect": "Allow",
            "Action": ["ec2:AttachVolume"],
            "Resource": "arn:aws:ec2:*:*:instance/*",
        },
    ]


def logs_statement(log_group_pattern: str) -> Statement:
    return {
        "Sid": "Logs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": [
            f"arn:aws:logs:*:*:log-group:{log_group_pattern}",
            f"arn:aws:logs:*:*:log-group:{log_group_pattern}:*",
        ],
    }
