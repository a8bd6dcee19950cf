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
    "bucket:list",
    "bucket:read",
    "bucket:write",
    "bucket:prune",
    "archive:prune",
    "database",
    "snapshots:read",
    "snapshots:take",
    "snapshots:sweep",
    "snapshots:prune",
    "snapshots:keys",
    "restores:check",
    "restores:run",
    "restores:advance",
    "restores:plan",
    "fargate:run",
    "manifests:sign",
    "manifests:verify",
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

# The policy files are static JSON without the account id: `${aws:PrincipalAccount}` (a policy variable, always in the
# request context) is the role's own account, so an ARN or condition naming it reaches this account's resources only
# (never a same-named bucket, key or queue of another account, e.g. one an attacker opened to receive copies).
OWN_ACCOUNT = "${aws:PrincipalAccount}"
OWN_RESOURCES = {"aws:ResourceAccount": OWN_ACCOUNT}  # S3 ARNs carry no account: this condition key does
# The longest lock (S3 Object Lock retention, EBS snapshot lock) any function may set, in days from now: the longest
# retention class the configuration accepts (chalicelib.config.RetentionPolicy's limits: monthly_months <= 1200 at 31
# days) plus two days of rounding; tests/stack/test_lock_bounds.py derives it again from chalicelib. A longer lock
# (e.g. a compliance lock for centuries, an undeletable storage bill) is refused by IAM.
MAX_LOCK_DAYS = 1200 * 31 + 2
LOCK_MODES = [
    "GOVERNANCE",
    "COMPLIANCE",
]  # the template's DatabaseAccessPolicy narrows it to the stack's ObjectLockMode


def bucket_arn(stage: str) -> str:
    """The stage's backup buckets, `pg-lifeboat-<stage>-<account>-<region>` (stack/template/storage.py), in the
    role's own account: the account id right after the stage also keeps stage `prod` out of stage `prod-eu`'s."""
    return f"arn:aws:s3:::{names.bucket_prefix(stage)}{OWN_ACCOUNT}-*"


def lock_statement(sid: str, resources: str | list[str]) -> Statement:
    """s3:PutObjectRetention (set or extend a lock; without s3:BypassGovernanceRetention never shorten one), bounded:
    in a lock mode, for at most MAX_LOCK_DAYS, in this account's buckets."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": ["s3:PutObjectRetention"],
        "Resource": resources,
        "Condition": {
            "StringEquals": {"s3:object-lock-mode": LOCK_MODES, **OWN_RESOURCES},
            "NumericLessThanEquals": {"s3:object-lock-remaining-retention-days": str(MAX_LOCK_DAYS)},
        },
    }


def _s3_kms(stage: str, actions: list[str]) -> Statement:
    """KMS use only through S3 and only for this stage's buckets: the encryption context S3 sends
    is the object's (or, with S3 Bucket Keys, the bucket's) ARN; keys of this account only. Works for the key the
    stack creates and for a given key whose key policy delegates to IAM."""
    return {
        "Sid": "BucketKey",
        "Effect": "Allow",
        "Action": actions,
        "Resource": "arn:aws:kms:*:*:key/*",  # cfn-lint refuses a policy variable in an ARN's account field
        "Condition": {
            "StringEquals": OWN_RESOURCES,
            "StringLike": {
                "kms:ViaService": "s3.*.amazonaws.com",
                "kms:EncryptionContext:aws:s3:arn": f"arn:aws:s3:::{names.bucket_prefix(stage)}*",
            },
        },
    }


def _signing_statement(stage: str, what: str) -> Statement:
    """The manifest signing key (chalicelib.logical.signing), named by its alias (kms:ResourceAliases: the key's ARN
    is the stack's, unknown to these files): GenerateMac to sign, VerifyMac to check, and nothing else of it."""
    return {
        "Sid": "SignManifests" if what == "sign" else "VerifyManifests",
        "Effect": "Allow",
        "Action": ["kms:GenerateMac"] if what == "sign" else ["kms:VerifyMac"],
        "Resource": "arn:aws:kms:*:*:key/*",
        # An alias names a key only in its own account: without OWN_RESOURCES a key of another account carrying the
        # same alias name would do (a MAC made with an attacker's key, or an attacker's key answering VerifyMac).
        "Condition": {
            "ForAnyValue:StringEquals": {"kms:ResourceAliases": names.signing_key_alias(stage)},
            "StringEquals": OWN_RESOURCES,
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
    if capability in ("bucket:list", "bucket:read", "bucket:write", "bucket:prune"):
        return _bucket_statements(stage, capability.removeprefix("bucket:"))
    if capability == "archive:prune":
        return _archive_prune_statements(stage)
    if capability in ("manifests:sign", "manifests:verify"):
        return [_signing_statement(stage, capability.removeprefix("manifests:"))]
    if capability.startswith("snapshots:"):
        return _snapshot_statements(capability.removeprefix("snapshots:"))
    if capability.startswith("restores:"):
        return _restore_statements(capability.removeprefix("restores:"), stage)
    verb, _, kind = capability.partition(":")
    if verb in ("send", "consume"):
        return _queue_statements(stage, verb, kind)
    raise ValueError(f"unknown capability {capability!r} (known: {', '.join(CAPABILITIES)})")


LABEL_OBJECT = "backup_label.json"  # chalicelib.physical.names.LABEL_NAME: the only objects the pruner may delete
# The key roots under settings.prefix that the backup worker and the Fargate task write, tag, lock and delete:
# logical backups and failed attempts (chalicelib.logical.catalog.Layout), drill evidence (chalicelib.drills.evidence,
# a drill the worker runs) and backup labels (chalicelib.physical.names.label_key). Never the point-in-time archive
# (ARCHIVE_ROOTS: <prefix>wal/<target>/, <prefix>base/<target>/), which only each target's WAL stream task writes
# (and the operator prunes): with kms:GenerateMac a worker could otherwise plant signed WAL or bases, or hide them.
WORKER_ROOTS = ("logical", "failed", "drills", "snapshots")
ARCHIVE_ROOTS = ("wal", "base")
# Names chalicelib.config refuses for a target and for any path segment of settings.prefix: one root's keys must never
# fall under another's (the WAL of a target named `logical` is <prefix>wal/logical/..., which `*/logical/*` matches).
# `check`: the operator's `lifeboat check` objects (chalicelib.operator.check_storage.CHECK_FOLDER).
RESERVED_NAMES = (*WORKER_ROOTS, *ARCHIVE_ROOTS, "check")
WORKER_WRITES = [
    "s3:PutObject",
    "s3:PutObjectTagging",
    "s3:PutObjectVersionTagging",
    "s3:PutObjectRetention",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
]


def worker_objects(bucket: str) -> list[str]:
    """The worker roots' objects, `{bucket}/logical/*`, with or without a settings.prefix (empty or e.g. `pg/`): IAM's
    `*` spans `/`, and bucket_arn ends in `-*` (the region), so `{bucket}/logical/*` is `{bucket}/*/logical/*` too
    (one ARN, not both: the backup worker's policy is near IAM's 10,240-character limit for a role's inline policy).
    It matches any key with a `logical` path segment; the archive's keys (<prefix>wal/<target>/<timeline>/<segment>,
    <prefix>base/<target>/<backup id>/...) have one only when a segment of the prefix or the target is one of
    RESERVED_NAMES (refused by chalicelib.config), or below a target's folder, where archive_guard denies it (a planted
    wal/<target>/gaps/logical/x.json or base/<target>/logical/manifest.json)."""
    return [f"{bucket}/{root}/*" for root in WORKER_ROOTS]


def archive_guard() -> Statement:
    """Deny the workers' writes to any key with a worker root's name below an archive root (ARCHIVE_ROOTS), whatever
    the prefix: what worker_objects alone would allow inside the archive. No worker key has an archive root segment
    followed by a worker root (a database named `wal` is one segment followed by its file names only)."""
    return {
        "Sid": "NeverThePitrArchive",
        "Effect": "Deny",
        "Action": WORKER_WRITES,
        "Resource": [f"arn:aws:s3:::*/{archive}/*{root}/*" for archive in ARCHIVE_ROOTS for root in WORKER_ROOTS],
    }


def _list_backup_versions(bucket: str) -> Statement:
    """The version listing of logical backups (chalicelib.logical.history: one ListObjectVersions per target, and
    of a manifest's own key: a manifest is read at its first version, a delete marker hides no backup); only under
    a `logical` folder (ListBucketVersions is a bucket action: s3:prefix says what is listed)."""
    return {
        "Sid": "ListBackupVersions",
        "Effect": "Allow",
        "Action": ["s3:ListBucketVersions"],
        "Resource": bucket,
        "Condition": {"StringEquals": OWN_RESOURCES, "StringLike": {"s3:prefix": ["logical/*", "*/logical/*"]}},
    }


def _bucket_statements(stage: str, what: str) -> list[Statement]:
    """Every S3 statement is pinned to this account (OWN_RESOURCES). Versioned calls are their own IAM actions: a
    GET or HEAD with a versionId (a restore, `lifeboat verify` and the keep pass read a backup by the version its
    manifest recorded) needs s3:GetObjectVersion, tagging a version (the keep pass) s3:PutObjectVersionTagging;
    s3:PutObjectRetention covers a version too."""
    bucket = bucket_arn(stage)
    own = {"StringEquals": OWN_RESOURCES}
    if what == "list":  # the keys only (the dispatcher's dead-man's gauge: chalicelib.scheduling.dispatch)
        return [
            {
                "Sid": "ListBackups",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": bucket,
                "Condition": own,
            },
            _list_backup_versions(bucket),
        ]
    if what == "read":
        return [
            *_bucket_statements(stage, "list"),
            {
                "Sid": "ReadBackups",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging", "s3:GetObjectVersionTagging"],
                "Resource": f"{bucket}/*",
                "Condition": own,
            },
            _s3_kms(stage, ["kms:Decrypt"]),
        ]
    if what == "write":  # only under WORKER_ROOTS; reads of anything (bucket:read) stay ReadBackups' `{bucket}/*`
        objects = worker_objects(bucket)
        return [
            {
                "Sid": "ListBackups",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": bucket,
                "Condition": own,
            },
            _list_backup_versions(bucket),
            {
                "Sid": "ReadBackups",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:GetObjectVersion",
                    "s3:GetObjectTagging",
                    "s3:GetObjectVersionTagging",  # the keep pass reads a manifest's tags at its first version
                    "s3:GetObjectRetention",  # HEAD then shows the current lock
                ],
                "Resource": f"{bucket}/*",
                "Condition": own,
            },
            {
                "Sid": "WriteBackups",
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:PutObjectTagging",
                    "s3:PutObjectVersionTagging",  # the keep pass tags the version a manifest recorded
                    # Plain deletes only (a failed attempt's objects): in the versioned bucket each leaves a delete
                    # marker, and no version can be removed without s3:DeleteObjectVersion, which no function has.
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": objects,
                "Condition": own,
            },
            # Locks a complete backup (S3 Object Lock) for its retention class, bounded (lock_statement).
            lock_statement("LockBackups", objects),
            archive_guard(),
            _s3_kms(stage, ["kms:GenerateDataKey", "kms:Decrypt"]),
        ]
    # prune: the pruner deletes the backup labels of the snapshots it deletes, and nothing else: only keys
    # shaped like chalicelib.physical.names.label_key ("<prefix>snapshots/<target>/<stamp>/backup_label.json").
    return [
        {"Sid": "ListBackups", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket, "Condition": own},
        {
            "Sid": "DeleteBackupLabels",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": f"{bucket}/*snapshots/*/{LABEL_OBJECT}",
            "Condition": own,
        },
    ]


# Never deleted by the archive's pruner: the worker roots but `snapshots` (backup labels, bucket:prune's) and the
# operator's `lifeboat check` objects.
NEVER_PRUNED_ROOTS = ("logical", "failed", "drills", "check")


def archive_prune_guard(stage: str) -> Statement:
    """`*/wal/*` also matches another root's key with a `wal` or `base` segment (the logical backup of a database
    named `wal`: <prefix>logical/<target>/.../databases/wal/database.dump): the archive's pruner never deletes those.
    Not `snapshots/`: it holds only backup labels, which the pruner deletes (bucket:prune), none with such a segment."""
    bucket = bucket_arn(stage)
    return {
        "Sid": "PruneNeverTheWorkerRoots",
        "Effect": "Deny",
        "Action": ["s3:DeleteObject"],
        "Resource": [f"{bucket}/{where}{root}/*" for root in NEVER_PRUNED_ROOTS for where in ("", "*/")],
    }


def _archive_prune_statements(stage: str) -> list[Statement]:
    """archive:prune (the snapshot pruner's daily wal-prune of every streaming target, chalicelib.pitr.prune_runs):
    list (and list the versions of: a base manifest is read at its first version) the ARCHIVE_ROOTS only; read their
    objects at any version with their lock (HEAD shows a lock only with s3:GetObjectRetention); plain deletes there
    (a delete marker; never s3:DeleteObjectVersion nor s3:BypassGovernanceRetention, so a locked object and every
    version stay); kms:Decrypt through S3. No write, tag or lock: the lock pass is the WAL task's. Checking the
    manifests' signatures is manifests:verify."""
    bucket = bucket_arn(stage)
    # settings.prefix is "" or ends with "/": `wal/` and `base/` as whole path segments.
    prefixes = [f"{where}{root}/*" for root in ARCHIVE_ROOTS for where in ("", "*/")]
    archive = [f"{bucket}/{p}" for p in prefixes]
    own = {"StringEquals": OWN_RESOURCES}
    return [
        {
            "Sid": "ListArchive",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": prefixes}, **own},
        },
        {
            "Sid": "ReadArchive",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectRetention"],
            "Resource": archive,
            "Condition": own,
        },
        {
            "Sid": "PruneArchive",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": archive,
            "Condition": own,
        },
        archive_prune_guard(stage),
        {**_s3_kms(stage, ["kms:Decrypt"]), "Sid": "ArchiveKey"},
    ]


def _queue_statements(stage: str, verb: str, kind: str) -> list[Statement]:
    if verb == "send":
        return [
            {
                "Sid": f"Send{kind.capitalize()}",
                "Effect": "Allow",
                # GetQueueUrl: a `chalice deploy` stage knows the queue by name only (chalicelib.adapters.sqs)
                "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"],
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
# EC2 authorizes a snapshot that a call creates under an ARN whose id is `*` (it has none yet), and an existing
# one under its id (snap-...). `${*}` is IAM's literal `*` (a special policy variable), so a Resource element
# alone tells a CopySnapshot's new snapshot from its source (AWS Storage Blog, "Enhancing resource-level
# permissions for copying Amazon EBS snapshots").
EXISTING_EBS_SNAPSHOTS = "arn:aws:ec2:*::snapshot/snap-*"
NEW_EBS_SNAPSHOT = "arn:aws:ec2:*::snapshot/${*}"
MANAGED = {"StringEquals": {f"aws:ResourceTag/{names.MANAGED_TAG[0]}": names.MANAGED_TAG[1]}}
NOT_YET_MANAGED = {f"aws:ResourceTag/{names.MANAGED_TAG[0]}": "true"}  # a Null test: the tag is absent
AS_MANAGED = {f"aws:RequestTag/{names.MANAGED_TAG[0]}": names.MANAGED_TAG[1]}
# The operator opts a source in to snapshots: the RDS instance or Aurora cluster, the EC2 instance
# (physical.ec2_instance_id) or each volume (physical.volume_ids without an instance) carries this tag.
BACKUP_SOURCE_TAG = ("lifeboat:backup-source", "true")
BACKUP_SOURCE = {"StringEquals": {f"aws:ResourceTag/{BACKUP_SOURCE_TAG[0]}": BACKUP_SOURCE_TAG[1]}}
# chalicelib.physical.names OBSERVED_TAG and LOCKED_UNTIL_TAG: the only tags the sweeper adds to a managed snapshot.
OBSERVED_ONLY = {"ForAllValues:StringEquals": {"aws:TagKeys": ["lifeboat:observed", "lifeboat:locked-until"]}}
# What a new snapshot may not be tagged with (Null: absent from the request), so that leaked worker or sweeper
# credentials cannot make one the pruner treats as a copy, or as already observed or locked (chalicelib.physical.
# names COPY_OF_TAG, OBSERVED_TAG, LOCKED_UNTIL_TAG). Not a list of allowed keys (ForAllValues:StringEquals on
# aws:TagKeys): a target's own `tags` (any keys, from the configuration) go on its snapshots and their copies too.
COPY_OF_TAG = "lifeboat:copy-of"
NOT_MARKED = {f"aws:RequestTag/{key}": "true" for key in ("lifeboat:observed", "lifeboat:locked-until")}
NOT_A_COPY = {**NOT_MARKED, f"aws:RequestTag/{COPY_OF_TAG}": "true"}  # created: never tagged as a copy
AS_A_COPY = {**NOT_MARKED, f"aws:RequestTag/{COPY_OF_TAG}": "false"}  # copied: always tagged with its source
# chalicelib.scheduling.retention.KEEP_LOCK_DAYS: the shortest lock the sweeper may set on an EBS snapshot.
MIN_SNAPSHOT_LOCK_DAYS = 30


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
    if what == "prune":  # the only deletion of snapshots any function has (none has ec2:UnlockSnapshot)
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


# Snapshots of opted-in sources only (BACKUP_SOURCE_TAG), born managed. From the Service Authorization Reference:
# - rds:CreateDBSnapshot: db* (the source instance: aws:ResourceTag, rds:db-tag), snapshot* (the new snapshot:
#   aws:RequestTag, aws:TagKeys).
# - rds:CreateDBClusterSnapshot: cluster* (the source: aws:ResourceTag, rds:cluster-tag), cluster-snapshot* (new:
#   aws:RequestTag).
# - rds:AddTagsToResource (RDS checks it for the tags a create call sets): the snapshot, aws:ResourceTag and
#   aws:RequestTag. Allowed only on a snapshot that is not managed yet (the one being created; an existing
#   managed snapshot cannot be re-tagged as another target's), and only as managed.
# - ec2:CreateSnapshot: volume* (the source: aws:ResourceTag), snapshot* (new: aws:RequestTag).
# - ec2:CreateSnapshots: instance* (the source: aws:ResourceTag), volume (the instance's volumes, not tag-scoped:
#   the instance is the opted-in source), snapshot* (new: aws:RequestTag).
# - ec2:CreateTags with ec2:CreateAction CreateSnapshot(s): the new snapshots' tags only.
def _take_snapshots() -> list[Statement]:
    creates = ["rds:CreateDBSnapshot", "rds:CreateDBClusterSnapshot"]
    return [
        {
            "Sid": "SnapshotOptedInRdsSources",
            "Effect": "Allow",
            "Action": creates,
            "Resource": ["arn:aws:rds:*:*:db:*", "arn:aws:rds:*:*:cluster:*"],
            "Condition": BACKUP_SOURCE,
        },
        {
            "Sid": "CreateManagedRdsSnapshots",
            "Effect": "Allow",
            "Action": creates,
            "Resource": RDS_SNAPSHOTS,
            "Condition": {"StringEquals": AS_MANAGED, "Null": NOT_A_COPY},
        },
        {
            "Sid": "TagNewRdsSnapshots",
            "Effect": "Allow",
            "Action": ["rds:AddTagsToResource"],
            "Resource": RDS_SNAPSHOTS,
            "Condition": {"Null": {**NOT_YET_MANAGED, **NOT_A_COPY}, "StringEquals": AS_MANAGED},
        },
        {
            "Sid": "SnapshotOptedInVolumes",
            "Effect": "Allow",
            "Action": ["ec2:CreateSnapshot"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": BACKUP_SOURCE,
        },
        {
            "Sid": "SnapshotOptedInInstances",
            "Effect": "Allow",
            "Action": ["ec2:CreateSnapshots"],
            "Resource": "arn:aws:ec2:*:*:instance/*",
            "Condition": BACKUP_SOURCE,
        },
        {
            "Sid": "SnapshotTheirVolumes",
            "Effect": "Allow",
            "Action": ["ec2:CreateSnapshots"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
        },
        {
            "Sid": "CreateManagedEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateSnapshots", "ec2:CreateSnapshot"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": {"StringEquals": AS_MANAGED, "Null": NOT_A_COPY},
        },
        {
            "Sid": "TagNewEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": {
                "StringEquals": {"ec2:CreateAction": ["CreateSnapshots", "CreateSnapshot"], **AS_MANAGED},
                "Null": NOT_A_COPY,
            },
        },
    ]


# The sweeper marks finished snapshots (the tag lifeboat:observed and no other, on managed snapshots only) and
# copies them to copy_to_region, as managed copies of managed snapshots:
# - rds:CopyDBSnapshot / rds:CopyDBClusterSnapshot: the source (aws:ResourceTag: managed) and the new copy
#   (aws:RequestTag; both lifeboat-* names). RDS names the copy, so the two cannot be told apart by ARN: the new
#   copy's statement needs the managed request tag and a snapshot not managed yet, which a lifeboat-* snapshot
#   the stack made never is (it is created managed); what it still allows is copying a lifeboat-* snapshot made
#   outside the stack.
# - ec2:CopySnapshot: snapshot* for the source (snap-..., aws:ResourceTag: managed) and for the new copy (ARN
#   NEW_EBS_SNAPSHOT, aws:RequestTag: managed). ec2:CreateTags with ec2:CreateAction CopySnapshot: its tags.
# It also protects them (chalicelib.physical.protect):
# - ec2:LockSnapshot (the only role with it; none has ec2:UnlockSnapshot): managed snapshots, with a LockDuration
#   (ec2:SnapshotLockDuration, so never an ExpirationDate) of at least MIN_SNAPSHOT_LOCK_DAYS and at most
#   MAX_LOCK_DAYS, and no cooling-off period (ec2:CoolOffPeriod absent: a compliance lock is final at once). A lock
#   can then only be extended, with one limit IAM cannot remove: in governance mode whoever holds ec2:LockSnapshot
#   may lower a lock to that floor (EC2 allows it; IAM sees only the new duration). COMPLIANCE mode closes that: no
#   one can shorten a lock. EC2 documents no condition key for the lock mode (only ec2:SnapshotLockDuration and
#   ec2:CoolOffPeriod): a compromised sweeper may lock a managed snapshot in compliance mode, for MAX_LOCK_DAYS at most.
# - ec2:ModifySnapshotAttribute (the vault share): managed snapshots, to an account (ec2:Add/userId present), never
#   to a group (ec2:Add/group absent: never public), removing nothing (ec2:Remove/userId and /group absent).
#   rds:ModifyDB(Cluster)SnapshotAttribute: managed snapshots; RDS has no condition key on the values, so IAM cannot
#   limit to whom (or forbid "all", public, or a removal of the vault). Which account is in SSM, unknown to these
#   files: a compromised sweeper may share a managed snapshot with any account; an encrypted one is useless there
#   unless its key policy names that account (RDS refuses to make encrypted snapshots public), which is why the
#   code shares only encrypted RDS snapshots (chalicelib.physical.rds share).
# - New snapshots (worker) are never tagged lifeboat:copy-of, copies (sweeper) always are; neither may carry the
#   marks only the sweeper's Mark statements set (NOT_A_COPY, AS_A_COPY).
# The vault share only adds an account (chalicelib.physical.protect never removes one): no group (public), and no
# Remove in the same call (an Add of any account would otherwise carry a Remove of the vault).
ADD_AN_ACCOUNT_ONLY = {
    "ec2:Add/userId": "false",
    "ec2:Add/group": "true",
    "ec2:Remove/userId": "true",
    "ec2:Remove/group": "true",
}


def _sweep_snapshots() -> list[Statement]:
    copies = ["rds:CopyDBSnapshot", "rds:CopyDBClusterSnapshot"]
    return [
        {
            "Sid": "MarkManagedRdsSnapshots",
            "Effect": "Allow",
            "Action": ["rds:AddTagsToResource"],
            "Resource": RDS_SNAPSHOTS,
            "Condition": {**MANAGED, **OBSERVED_ONLY},
        },
        {
            "Sid": "CopyManagedRdsSnapshots",
            "Effect": "Allow",
            "Action": copies,
            "Resource": RDS_SNAPSHOTS,
            "Condition": MANAGED,
        },
        {
            "Sid": "NewManagedRdsCopies",
            "Effect": "Allow",
            "Action": [*copies, "rds:AddTagsToResource"],
            "Resource": RDS_SNAPSHOTS,
            "Condition": {"Null": {**NOT_YET_MANAGED, **AS_A_COPY}, "StringEquals": AS_MANAGED},
        },
        {
            "Sid": "CopyManagedEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CopySnapshot"],
            "Resource": EXISTING_EBS_SNAPSHOTS,
            "Condition": MANAGED,
        },
        {
            "Sid": "NewManagedEbsCopies",
            "Effect": "Allow",
            "Action": ["ec2:CopySnapshot"],
            "Resource": NEW_EBS_SNAPSHOT,
            "Condition": {"StringEquals": AS_MANAGED, "Null": AS_A_COPY},
        },
        {
            "Sid": "TagEbsCopies",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": {"StringEquals": {"ec2:CreateAction": "CopySnapshot", **AS_MANAGED}, "Null": AS_A_COPY},
        },
        {
            "Sid": "MarkManagedEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": {**MANAGED, **OBSERVED_ONLY},
        },
        {
            "Sid": "LockManagedEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:LockSnapshot"],
            "Resource": EXISTING_EBS_SNAPSHOTS,
            "Condition": {
                **MANAGED,
                "NumericGreaterThanEquals": {"ec2:SnapshotLockDuration": str(MIN_SNAPSHOT_LOCK_DAYS)},
                "NumericLessThanEquals": {"ec2:SnapshotLockDuration": str(MAX_LOCK_DAYS)},
                "Null": {"ec2:CoolOffPeriod": "true"},
            },
        },
        {
            "Sid": "ShareManagedEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:ModifySnapshotAttribute"],
            "Resource": EXISTING_EBS_SNAPSHOTS,
            "Condition": {**MANAGED, "Null": ADD_AN_ACCOUNT_ONLY},
        },
        {
            "Sid": "ShareManagedRdsSnapshots",
            "Effect": "Allow",
            "Action": ["rds:ModifyDBSnapshotAttribute", "rds:ModifyDBClusterSnapshotAttribute"],
            "Resource": RDS_SNAPSHOTS,
            "Condition": MANAGED,
        },
    ]


def _snapshot_keys() -> list[Statement]:
    """Encrypted snapshots: copies and restores, through EC2 and RDS only, with keys of this account only
    (OWN_RESOURCES): EC2 and RDS use the caller's permissions on the key a copy names (KmsKeyId), so without it a
    compromised sweeper could copy a managed snapshot under a key of an attacker's account and share the copy there
    (physical.copy_kms_key_id must be a key of this account)."""
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
            "Condition": {
                "StringLike": {"kms:ViaService": ["ec2.*.amazonaws.com", "rds.*.amazonaws.com"]},
                "StringEquals": OWN_RESOURCES,
            },
        },
        {
            "Sid": "SnapshotKeyGrants",
            "Effect": "Allow",
            "Action": ["kms:CreateGrant"],
            "Resource": "arn:aws:kms:*:*:key/*",
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}, "StringEquals": OWN_RESOURCES},
        },
    ]


# What snapshot and point-in-time restores may touch, and the IAM condition keys that scope it. From the
# Service Authorization Reference (resource types of each action, and the condition keys each supports):
# - rds:RestoreDBInstanceFromDBSnapshot: db* (the new instance: aws:RequestTag), snapshot* (the source:
#   aws:ResourceTag, rds:snapshot-tag), subgrp, pg, og, secgrp.
# - rds:RestoreDBClusterFromSnapshot: cluster* (new: aws:RequestTag), cluster-snapshot (source: aws:ResourceTag,
#   rds:cluster-snapshot-tag), snapshot (aws:ResourceTag), cluster-pg, subgrp, og.
# - rds:RestoreDBInstanceToPointInTime / rds:RestoreDBClusterToPointInTime: db* / cluster* (new: aws:RequestTag),
#   db / cluster (the source: aws:ResourceTag: the operator opts it in with PITR_SOURCE_TAG), pg / cluster-pg,
#   subgrp, og, secgrp.
# - rds:CreateDBInstance (an Aurora cluster's instance): db* (new: aws:RequestTag), cluster (the cluster it joins:
#   aws:ResourceTag: a restore's, tagged lifeboat:restore-id), og, pg, subgrp (not sent: the cluster's apply).
# - rds:AddTagsToResource (checked for the tags a create call sets): db, cluster, aws:RequestTag, aws:TagKeys.
# - ec2:CreateVolume: volume* (aws:RequestTag), snapshot (the source: aws:ResourceTag).
# - ec2:AttachVolume: instance* and volume*, both with aws:ResourceTag.
# A new RDS instance or cluster and an existing one are the same resource type, and a resource being created has
# no resource tags yet: IAM tells them apart only by name. So a restore's new RDS identifiers start with
# RESTORED_RDS_PREFIX (chalicelib.restore.plan.NEW_ID_PREFIX, enforced by the API and the worker); creating and
# tagging is allowed under that prefix only, so an existing instance or cluster of the operator can be neither
# re-tagged (into a "restore") nor extended, and a point-in-time restore reads only an opted-in source (or an
# earlier restore's copy, itself named lifeboat-*).
# aws:RequestTag is a request key: it is in the context of every resource of the call, so a statement that
# tests it must not list the snapshot or source resources (any would pass); they get their own statements on
# aws:ResourceTag. Subnet groups, parameter groups and option groups: named `lifeboat-*` (pg, cluster-pg and og
# also AWS's own `default.*`/`default:*`). What IAM cannot express: physical.restore's allow-lists live in SSM
# and the policies are generated at package time, so IAM allows any lifeboat-* group and the allow-list is the
# API's and the worker's check; VpcSecurityGroupIds are not RDS resources (IAM cannot scope them at all); and a
# request without DBSubnetGroupName names no group (RDS then uses the default VPC's): the worker always sends
# the first allowed subnet group and PubliclyAccessible=False, IAM cannot require either.
RESTORED_RDS_PREFIX = "lifeboat-"
RESTORE_TARGET_TAG = ("lifeboat:restore-target", "true")  # the operator tags the instances volumes may go to
PITR_SOURCE_TAG = ("lifeboat:pitr-source", "true")  # the operator tags the instances/clusters PIT may restore
RESTORED_RDS = [
    f"arn:aws:rds:*:*:db:{RESTORED_RDS_PREFIX}*",
    f"arn:aws:rds:*:*:cluster:{RESTORED_RDS_PREFIX}*",
]
RESTORE_GROUPS = [
    f"arn:aws:rds:*:*:subgrp:{RESTORED_RDS_PREFIX}*",
    f"arn:aws:rds:*:*:pg:{RESTORED_RDS_PREFIX}*",
    f"arn:aws:rds:*:*:cluster-pg:{RESTORED_RDS_PREFIX}*",
    f"arn:aws:rds:*:*:og:{RESTORED_RDS_PREFIX}*",
    "arn:aws:rds:*:*:pg:default.*",
    "arn:aws:rds:*:*:cluster-pg:default.*",
    "arn:aws:rds:*:*:og:default:*",
]
RDS_RESTORE_ACTIONS = [
    "rds:RestoreDBInstanceFromDBSnapshot",
    "rds:RestoreDBClusterFromSnapshot",
    "rds:RestoreDBInstanceToPointInTime",
    "rds:RestoreDBClusterToPointInTime",
]
PIT_ACTIONS = ["rds:RestoreDBInstanceToPointInTime", "rds:RestoreDBClusterToPointInTime"]
RESTORE_TAG_KEYS = [names.RESTORE_TAG, "lifeboat:target"]  # the tags chalicelib.restore.plan.tags sets
TAGGED_BY_A_RESTORE = {
    "StringLike": {f"aws:RequestTag/{names.RESTORE_TAG}": "r-*"},
    "ForAllValues:StringEquals": {"aws:TagKeys": RESTORE_TAG_KEYS},
}
A_RESTORES = {"StringLike": {f"aws:ResourceTag/{names.RESTORE_TAG}": "r-*"}}


def _describe_restore_resources() -> Statement:
    return {
        "Sid": "DescribeRestoreResources",
        "Effect": "Allow",
        "Action": ["rds:DescribeDBInstances", "rds:DescribeDBClusters"],
        "Resource": ["arn:aws:rds:*:*:db:*", "arn:aws:rds:*:*:cluster:*"],
    }


def _restored_cluster_instances() -> list[Statement]:
    """rds:CreateDBInstance: a new lifeboat-* instance, only into a restore's cluster."""
    return [
        {
            "Sid": "CreateRestoredClusterInstances",
            "Effect": "Allow",
            "Action": ["rds:CreateDBInstance", "rds:AddTagsToResource"],
            "Resource": f"arn:aws:rds:*:*:db:{RESTORED_RDS_PREFIX}*",
            "Condition": TAGGED_BY_A_RESTORE,
        },
        {
            "Sid": "IntoRestoredClustersOnly",
            "Effect": "Allow",
            "Action": ["rds:CreateDBInstance"],
            "Resource": f"arn:aws:rds:*:*:cluster:{RESTORED_RDS_PREFIX}*",
            "Condition": A_RESTORES,
        },
    ]


def _restore_statements(what: str, stage: str = "") -> list[Statement]:
    """restores:check (the API: look only), restores:run (the worker: start restores from managed snapshots
    and point-in-time), restores:advance (the sweeper: an Aurora cluster's instance, attaching EBS volumes),
    restores:plan (the API: WAL recovery plans; reads only, the volumes of a snapshot set are a snapshot restore's)."""
    if what == "check":
        return [_describe_restore_resources()]
    if what == "plan":
        return _plan_wal_recoveries(stage)
    if what == "advance":
        return [
            _describe_restore_resources(),
            *_restored_cluster_instances(),
            {
                "Sid": "AttachRestoredVolumes",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume"],
                "Resource": "arn:aws:ec2:*:*:volume/*",
                "Condition": {"StringLike": {f"aws:ResourceTag/{names.RESTORE_TAG}": "*"}},
            },
            {
                "Sid": "AttachToRestoreTargets",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume"],
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": {"StringEquals": {f"aws:ResourceTag/{RESTORE_TARGET_TAG[0]}": RESTORE_TARGET_TAG[1]}},
            },
        ]
    if what != "run":
        raise ValueError(f"unknown capability restores:{what}")
    return [
        _describe_restore_resources(),
        {
            "Sid": "RestoreRdsIntoNewResources",
            "Effect": "Allow",
            "Action": [*RDS_RESTORE_ACTIONS, "rds:AddTagsToResource"],
            "Resource": RESTORED_RDS,
            "Condition": TAGGED_BY_A_RESTORE,
        },
        {
            "Sid": "PointInTimeFromOptedInSources",
            "Effect": "Allow",
            "Action": PIT_ACTIONS,
            "Resource": ["arn:aws:rds:*:*:db:*", "arn:aws:rds:*:*:cluster:*"],
            "Condition": {"StringEquals": {f"aws:ResourceTag/{PITR_SOURCE_TAG[0]}": PITR_SOURCE_TAG[1]}},
        },
        {
            "Sid": "RestoreIntoLifeboatGroups",
            "Effect": "Allow",
            "Action": RDS_RESTORE_ACTIONS,
            "Resource": RESTORE_GROUPS,
        },
        *_restored_cluster_instances(),
        {
            "Sid": "RestoreFromManagedRdsSnapshots",
            "Effect": "Allow",
            "Action": ["rds:RestoreDBInstanceFromDBSnapshot", "rds:RestoreDBClusterFromSnapshot"],
            "Resource": RDS_SNAPSHOTS,
            "Condition": MANAGED,
        },
        *_restore_volumes(),
    ]


def _restore_volumes() -> list[Statement]:
    """ec2:CreateVolume from a managed EBS snapshot, the new volume tagged by a restore (plan.tags) and nothing else."""
    return [
        {
            "Sid": "CreateRestoreVolumes",
            "Effect": "Allow",
            "Action": ["ec2:CreateVolume"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": TAGGED_BY_A_RESTORE,
        },
        {
            "Sid": "FromManagedEbsSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateVolume"],
            "Resource": EBS_SNAPSHOTS,
            "Condition": MANAGED,
        },
        {
            "Sid": "TagRestoreVolumes",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags"],
            "Resource": "arn:aws:ec2:*:*:volume/*",
            "Condition": {"StringEquals": {"ec2:CreateAction": "CreateVolume"}},
        },
    ]


def _plan_wal_recoveries(stage: str) -> list[Statement]:
    """restores:plan (the API's WAL recovery plans, chalicelib.restore.wal_recovery): the first version of each base
    manifest and backup label (ListObjectVersions with the key as Prefix; the reads are bucket:read's). No write: the
    volumes of a snapshot set chosen as the base are made by a snapshot restore, in the worker."""
    prefixes = [f"{where}{folder}/*" for folder in ("base", "snapshots") for where in ("", "*/")]
    return [
        {
            "Sid": "ListBaseAndLabelVersions",
            "Effect": "Allow",
            "Action": ["s3:ListBucketVersions"],
            "Resource": bucket_arn(stage),
            "Condition": {"StringEquals": OWN_RESOURCES, "StringLike": {"s3:prefix": prefixes}},
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
