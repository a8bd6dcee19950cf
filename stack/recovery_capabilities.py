"""What restore drills (chalicelib.drills) and the WAL stream (chalicelib.pitr) may do: the `drills:*` capabilities of
stack/policies.py ACCESS and the per-target policy of a WAL stream task. Kept apart from stack/capabilities.py, whose
names and conditions it reuses (that module stays the one for backups, snapshots and restores).

Drills (README "Restore drills"):
- `drills:restore` (the backup worker starts a snapshot drill): RestoreDBInstanceFromDBSnapshot /
  RestoreDBClusterFromSnapshot only into new resources named DRILL_RDS_PREFIX (chalicelib.drills.model
  INSTANCE_PREFIX) and tagged by a restore, only from the stack's managed snapshots, only into lifeboat-* groups.
- `drills:instances` (the worker and the snapshot sweeper: advance, tag, delete): describe any instance or cluster
  (the sweeper lists them to find orphans), an Aurora drill cluster's instance, the `lifeboat:drill` tag on a
  drill's own resources, and DeleteDBInstance / DeleteDBCluster on resources that are BOTH named `lifeboat-drill-*`
  AND tagged `lifeboat:drill` and `lifeboat:restore-id` (never any other instance; tests/stack/test_drill_iam.py).
- `drills:evidence` (the sweeper finishes drills): write the evidence documents `<prefix>drills/<target>/<YYYY>/
  <stamp>_<drill id>.json`, tagged and locked (chalicelib.drills.evidence), and nothing else of the bucket; and read
  them (`drills:read`: the overdue check verifies each finished drill's document). The backup worker writes them with
  `bucket:write` and reads none. Signing and checking them (kms:GenerateMac / VerifyMac on the signing key) are
  `manifests:sign` / `manifests:verify`.
- `drills:read` (the API's GET /targets/{t}/drills, the sweeper): GetObject / GetObjectVersion of evidence documents
  (a record names the version written; without one the first version is read, found with ListObjectVersions whose
  Prefix is the document's whole key: s3:ListBucketVersions only for prefixes shaped like an evidence key).
Drill records in the jobs table (`drill#<id>`, `drill-slot#<target>#<slot>`) come with `jobs` / `jobs:list`, as every
other record of the table: those capabilities scope by table, not by key (a `dynamodb:LeadingKeys` prefix condition
needs `ForAllValues:StringLike`, a set operator the IAM evaluator of the tests does not know yet).

`archive:list` (the API's GET /targets/{t}/backups lists a streaming target's bases and window,
chalicelib.pitr.catalog): s3:ListBucketVersions for prefixes under `base/` only (a base manifest is read at its first
version); reading the objects and listing wal/ come with bucket:read.

The WAL stream (`lifeboat wal-stream TARGET`, one ECS service per target, stack/template/fargate.py) gets a role of
its own per target: the configuration, its target's `wal/<target>/` prefix (list, read, write, lock; delete only the
`.partial` object a finished segment supersedes, chalicelib.pitr.walarchive.put_segment) and `base/<target>/`
(`lifeboat base-backup TARGET` with the same task definition), the bucket's key through S3. Integrity
(chalicelib.pitr.sealing, versions, protect): kms:GenerateMac (each segment's MAC, each base manifest) and
kms:VerifyMac (the lock pass after a base backup reads the signed manifests) on the signing key only;
s3:ListBucketVersions with a Prefix (a whole key: chalicelib.pitr.versions) under its own two prefixes, and
s3:GetObjectVersion there (a manifest and each segment are read, HEADed and locked at their first version). Database
secrets come with the template's DatabaseAccessPolicy (the secret's name is in SSM, unknown here). Nothing else: no
DeleteObject of a finished segment, no other target's prefix, no table, no queue.

The operators' `lifeboat recover`, `wal-fetch`, `wal-window` and `wal-prune` (chalicelib.pitr.commands) run on the
operator's machine: `operator_recovery_statements`, the template's OperatorRecoveryPolicy (attached to nothing,
stack/template/operators.py). Reading: the configuration, list (and list versions of) every target's `wal/` and
`base/`, read those objects at any version, kms:VerifyMac (never GenerateMac: an operator's credentials sign
nothing), kms:Decrypt through S3. Pruning: plain deletes of `wal/` and `base/` objects (a delete marker; never
s3:DeleteObjectVersion, never s3:BypassGovernanceRetention), their retention read and extended within MAX_LOCK_DAYS.
"""

from __future__ import annotations

from typing import Any

from stack.capabilities import (
    A_RESTORES,
    MANAGED,
    OWN_RESOURCES,
    RDS_SNAPSHOTS,
    RESTORE_GROUPS,
    TAGGED_BY_A_RESTORE,
    Statement,
    _s3_kms,
    archive_guard,
    bucket_arn,
    capability_statements,
    lock_statement,
)

DRILL_CAPABILITIES = ("drills:restore", "drills:instances", "drills:evidence", "drills:read")
# The catalog's view of the point-in-time archive (chalicelib.pitr.catalog, GET /targets/{t}/backups): base manifests
# are read at their first version, found by ListObjectVersions with the manifest's key as Prefix. The WAL listing
# and the gap records need only bucket:read's ListBucket and GetObject.
ARCHIVE_CAPABILITIES = ("archive:list",)
BASE_PREFIXES = ["base/*", "*/base/*"]  # settings.prefix is "" or ends with "/"
DRILL_RDS_PREFIX = "lifeboat-drill-"  # chalicelib.drills.model.INSTANCE_PREFIX
DRILL_TAG = "lifeboat:drill"  # chalicelib.drills.model.DRILL_TAG: the drill's id, d-<16 hex digits>
DRILL_ID_PATTERN = "d-*"
DRILL_RDS = [f"arn:aws:rds:*:*:db:{DRILL_RDS_PREFIX}*", f"arn:aws:rds:*:*:cluster:{DRILL_RDS_PREFIX}*"]
DRILL_SNAPSHOT_RESTORES = ["rds:RestoreDBInstanceFromDBSnapshot", "rds:RestoreDBClusterFromSnapshot"]
A_DRILLS = {"StringLike": {**A_RESTORES["StringLike"], f"aws:ResourceTag/{DRILL_TAG}": DRILL_ID_PATTERN}}
EVIDENCE_OBJECTS = "*drills/*_d-*.json"  # chalicelib.drills.evidence.EvidenceStore.key, under any settings.prefix


def statements(stage: str, capability: str) -> list[Statement]:
    """The statements of any capability of ACCESS: drills here, the rest from stack.capabilities."""
    if capability == "drills:restore":
        return _drill_restore()
    if capability == "drills:instances":
        return _drill_instances()
    if capability == "drills:evidence":
        return _drill_evidence(stage)
    if capability == "drills:read":
        return _drill_read(stage)
    if capability == "archive:list":
        return [_list_base_versions(stage)]
    return capability_statements(stage, capability)


def _list_base_versions(stage: str) -> Statement:
    """ListBucketVersions for prefixes under a `base/` folder only (not wal/, logical/ or drills/)."""
    return {
        "Sid": "ListBaseManifestVersions",
        "Effect": "Allow",
        "Action": ["s3:ListBucketVersions"],
        "Resource": bucket_arn(stage),
        "Condition": {"StringLike": {"s3:prefix": BASE_PREFIXES}, "StringEquals": OWN_RESOURCES},
    }


def _drill_restore() -> list[Statement]:
    return [
        {
            "Sid": "DrillRestoresIntoNewResources",
            "Effect": "Allow",
            "Action": [*DRILL_SNAPSHOT_RESTORES, "rds:AddTagsToResource"],
            "Resource": DRILL_RDS,
            "Condition": TAGGED_BY_A_RESTORE,
        },
        {
            "Sid": "DrillRestoresIntoLifeboatGroups",
            "Effect": "Allow",
            "Action": DRILL_SNAPSHOT_RESTORES,
            "Resource": RESTORE_GROUPS,
        },
        {
            "Sid": "DrillRestoresFromManagedSnapshots",
            "Effect": "Allow",
            "Action": DRILL_SNAPSHOT_RESTORES,
            "Resource": RDS_SNAPSHOTS,
            "Condition": MANAGED,
        },
    ]


def _drill_instances() -> list[Statement]:
    return [
        {
            "Sid": "DescribeDrillResources",  # also every instance and cluster: the sweeper finds orphans by name
            "Effect": "Allow",
            "Action": ["rds:DescribeDBInstances", "rds:DescribeDBClusters"],
            "Resource": ["arn:aws:rds:*:*:db:*", "arn:aws:rds:*:*:cluster:*"],
        },
        {
            "Sid": "CreateDrillClusterInstances",
            "Effect": "Allow",
            "Action": ["rds:CreateDBInstance", "rds:AddTagsToResource"],
            "Resource": f"arn:aws:rds:*:*:db:{DRILL_RDS_PREFIX}*",
            "Condition": TAGGED_BY_A_RESTORE,
        },
        {
            "Sid": "IntoDrillClustersOnly",
            "Effect": "Allow",
            "Action": ["rds:CreateDBInstance"],
            "Resource": f"arn:aws:rds:*:*:cluster:{DRILL_RDS_PREFIX}*",
            "Condition": A_RESTORES,
        },
        {
            "Sid": "MarkDrillResources",  # lifeboat:drill=<id> and no other tag, on a drill's restored resources
            "Effect": "Allow",
            "Action": ["rds:AddTagsToResource"],
            "Resource": DRILL_RDS,
            "Condition": {
                "StringLike": {**A_RESTORES["StringLike"], f"aws:RequestTag/{DRILL_TAG}": DRILL_ID_PATTERN},
                "ForAllValues:StringEquals": {"aws:TagKeys": [DRILL_TAG]},
            },
        },
        {
            "Sid": "DeleteDrillResources",  # named lifeboat-drill-* AND tagged as a drill's: nothing else, ever
            "Effect": "Allow",
            "Action": ["rds:DeleteDBInstance", "rds:DeleteDBCluster"],
            "Resource": DRILL_RDS,
            "Condition": A_DRILLS,
        },
    ]


def _drill_evidence(stage: str) -> list[Statement]:
    evidence = f"{bucket_arn(stage)}/{EVIDENCE_OBJECTS}"
    return [
        {
            "Sid": "WriteDrillEvidence",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:PutObjectTagging"],
            "Resource": evidence,
            "Condition": {"StringEquals": OWN_RESOURCES},
        },
        lock_statement("LockDrillEvidence", evidence),  # by the version it wrote: s3:PutObjectRetention all the same
        archive_guard(),  # `*drills/*_d-*.json` would match a key planted below a target's wal/ or base/ folder
        *_drill_read(stage),
        {**_s3_kms(stage, ["kms:GenerateDataKey", "kms:Decrypt"]), "Sid": "DrillEvidenceKey"},
    ]


def _drill_read(stage: str) -> list[Statement]:
    """Read evidence documents at a version, and list the versions of one (Prefix: the document's key)."""
    bucket = bucket_arn(stage)
    return [
        {
            "Sid": "ReadDrillEvidence",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"{bucket}/{EVIDENCE_OBJECTS}",
            "Condition": {"StringEquals": OWN_RESOURCES},
        },
        {
            "Sid": "ListDrillEvidenceVersions",
            "Effect": "Allow",
            "Action": ["s3:ListBucketVersions"],
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": EVIDENCE_OBJECTS}, "StringEquals": OWN_RESOURCES},
        },
    ]


# --- the WAL stream's task role (one per streaming target) ------------------------------------------------------


def wal_stream_statements(stage: str, target: str) -> list[Statement]:
    """The task role's own statements for `lifeboat wal-stream TARGET` (and `base-backup TARGET`)."""
    bucket = bucket_arn(stage)
    own = [f"{bucket}/*wal/{target}/*", f"{bucket}/*base/{target}/*"]
    return [
        *capability_statements(stage, "config"),
        *capability_statements(stage, "manifests:sign"),  # segment MACs and base manifests
        *capability_statements(stage, "manifests:verify"),  # the lock pass reads the signed base manifests
        {
            "Sid": "ListOwnWal",  # ListBucketVersions: chalicelib.pitr.versions passes a whole key as Prefix
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": bucket,
            "Condition": {
                "StringLike": {"s3:prefix": [f"*wal/{target}/*", f"*base/{target}/*"]},
                "StringEquals": OWN_RESOURCES,
            },
        },
        {
            "Sid": "WriteOwnWal",
            "Effect": "Allow",
            "Action": [
                "s3:GetObject",
                "s3:GetObjectVersion",  # a manifest or segment read, HEADed or locked at its first version
                "s3:GetObjectTagging",
                "s3:PutObject",
                "s3:PutObjectTagging",
                "s3:GetObjectRetention",
                "s3:AbortMultipartUpload",  # a failed base backup's upload; no object is deleted by it
            ],
            "Resource": own,
            "Condition": {"StringEquals": OWN_RESOURCES},
        },
        lock_statement("LockOwnWal", own),  # finished segments and history files, by the version written
        {
            "Sid": "DropSupersededPartials",  # a plain delete (a delete marker) of the open segment's last upload
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": f"{bucket}/*wal/{target}/*.partial",
            "Condition": {"StringEquals": OWN_RESOURCES},
        },
        _s3_kms(stage, ["kms:GenerateDataKey", "kms:Decrypt"]),
    ]


def wal_stream_policy(stage: str, target: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": wal_stream_statements(stage, target)}


# --- the operators' recovery commands (the template's OperatorRecoveryPolicy) -----------------------------------


def operator_recovery_statements(stage: str) -> list[Statement]:
    """`lifeboat recover`, `wal-fetch`, `wal-window` and `wal-prune` for every target (the module's docstring)."""
    bucket = bucket_arn(stage)
    # settings.prefix is "" or ends with "/" (chalicelib.config): `wal/` and `base/` as whole path segments, so that no
    # logical backup, snapshot label or drill evidence matches (unless a target is named "wal" or "base").
    prefixes = [f"{where}{folder}/*" for folder in ("wal", "base") for where in ("", "*/")]
    archive = [f"{bucket}/{p}" for p in prefixes]
    own = {"StringEquals": OWN_RESOURCES}
    return [
        *capability_statements(stage, "config"),
        *capability_statements(stage, "manifests:verify"),
        {
            "Sid": "ListWalAndBases",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": prefixes}, **own},
        },
        {
            "Sid": "ReadWalAndBases",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectRetention"],
            "Resource": archive,
            "Condition": own,
        },
        {
            "Sid": "PruneWalAndBases",  # wal-prune: plain deletes (a delete marker), never a version
            "Effect": "Allow",
            "Action": ["s3:DeleteObject"],
            "Resource": archive,
            "Condition": own,
        },
        lock_statement("LockWalAndBases", archive),  # wal-prune's lock pass extends the kept bases' locks
        _s3_kms(stage, ["kms:Decrypt"]),
    ]
