"""Snapshots nobody but the pruner can erase (issue 13), read from the generated policies with the IAM evaluator of
tests/reliability/test_restore_iam.py: only the pruner deletes, and only snapshots tagged managed; no role unlocks
a snapshot; only the sweeper locks one, for at least 30 days, without a cooling-off period; only the sweeper shares
one, never publicly (EBS).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.config import Physical, Target
from chalicelib.logical.catalog import BackupId
from chalicelib.physical.names import (
    COPY_OF_TAG,
    LOCKED_UNTIL_TAG,
    MANAGED_TAG,
    MANAGED_VALUE,
    OBSERVED_TAG,
    copy_tags,
    snapshot_tags,
)
from chalicelib.scheduling.retention import KEEP_LOCK_DAYS
from stack import capabilities, policies
from tests.reliability.test_restore_iam import STAGES, Resource, arn, authorized, policy
from tests.stack.test_immutable import grants

MANAGED = {MANAGED_TAG: MANAGED_VALUE}
EBS = Resource(arn("ec2", "snapshot", "snap-0managed"), MANAGED)
UNTAGGED_EBS = Resource(arn("ec2", "snapshot", "snap-0someone"))
NOT_TRUE_EBS = Resource(arn("ec2", "snapshot", "snap-0maybe"), {MANAGED_TAG: "yes"})
RDS = Resource(arn("rds", "snapshot", "lifeboat-shop-20261129-030000"), MANAGED)
UNTAGGED_RDS = Resource(arn("rds", "snapshot", "lifeboat-shop-20261129-030000"))
FOREIGN_RDS = Resource(arn("rds", "snapshot", "prod-before-migration"), MANAGED)  # tagged, not named by the stack
CLUSTER = Resource(arn("rds", "cluster-snapshot", "lifeboat-billing-20261129-030000"), MANAGED)
UNTAGGED_CLUSTER = Resource(arn("rds", "cluster-snapshot", "lifeboat-billing-20261129-030000"))
DELETES = {
    "ec2:DeleteSnapshot": (EBS, (UNTAGGED_EBS, NOT_TRUE_EBS)),
    "rds:DeleteDBSnapshot": (RDS, (UNTAGGED_RDS, FOREIGN_RDS)),
    "rds:DeleteDBClusterSnapshot": (CLUSTER, (UNTAGGED_CLUSTER,)),
}
OTHERS = sorted(set(policies.ACCESS) - {"snapshot_pruner"})
LOCK = "ec2:LockSnapshot"
THIRTY_DAYS = {"ec2:SnapshotLockDuration": "30"}
VAULT = "210987654321"


def every_policy(stage: str) -> dict[str, dict[str, Any]]:
    """Each function's generated file, and the Fargate task's role (the template's other grants name no snapshot)."""
    return {**{f: policy(stage, f) for f in policies.ACCESS}, "fargate task": policies.task_policy(stage)}


@pytest.mark.parametrize("stage", STAGES)
def test_only_the_pruner_deletes_and_only_managed_snapshots(stage: str) -> None:
    pruner = policy(stage, "snapshot_pruner")
    for action, (managed, others) in DELETES.items():
        assert authorized(pruner, action, [managed]), action
        for other in others:
            assert not authorized(pruner, action, [other]), f"the pruner may {action} {other}"
    for name, doc in every_policy(stage).items():
        if name == "snapshot_pruner":
            continue
        for action, (managed, _) in DELETES.items():
            assert not authorized(doc, action, [managed]), f"{name} may {action}"
            assert not any(grants(st, action) for st in doc["Statement"]), f"{name} is granted {action}"


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("function", ["backup_worker", "snapshot_sweeper", "restore_worker", "restore_sweeper"])
def test_workers_and_sweepers_cannot_delete_or_unlock(stage: str, function: str) -> None:
    doc = policy(stage, function)
    for snapshot in (EBS, UNTAGGED_EBS, RDS, CLUSTER):
        for action in (*DELETES, "ec2:UnlockSnapshot"):
            assert not authorized(doc, action, [snapshot]), f"{function} may {action} {snapshot.arn}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_role_unlocks_and_only_the_sweeper_locks(stage: str) -> None:
    for name, doc in every_policy(stage).items():
        assert not any(grants(st, "ec2:UnlockSnapshot") for st in doc["Statement"]), name
        if name != "snapshot_sweeper":
            assert not any(grants(st, LOCK) for st in doc["Statement"]), f"{name} may change a snapshot's lock"


@pytest.mark.parametrize("stage", STAGES)
def test_the_sweeper_locks_managed_snapshots_for_at_least_30_days_without_cooling_off(stage: str) -> None:
    sweeper = policy(stage, "snapshot_sweeper")
    assert authorized(sweeper, LOCK, [EBS], **THIRTY_DAYS)
    assert authorized(sweeper, LOCK, [EBS], **{"ec2:SnapshotLockDuration": "1098"})
    assert not authorized(sweeper, LOCK, [EBS], **{"ec2:SnapshotLockDuration": "29"}), "a lock shortened below 30"
    assert not authorized(sweeper, LOCK, [EBS]), "an ExpirationDate (no duration): IAM could not check it"
    assert not authorized(sweeper, LOCK, [EBS], **THIRTY_DAYS, **{"ec2:CoolOffPeriod": "72"}), "a cooling-off"
    assert not authorized(sweeper, LOCK, [UNTAGGED_EBS], **THIRTY_DAYS), "someone else's snapshot"
    assert capabilities.MIN_SNAPSHOT_LOCK_DAYS == KEEP_LOCK_DAYS


@pytest.mark.parametrize("stage", STAGES)
def test_the_sweeper_shares_managed_snapshots_with_an_account_never_publicly(stage: str) -> None:
    sweeper = policy(stage, "snapshot_sweeper")
    share = "ec2:ModifySnapshotAttribute"
    assert authorized(sweeper, share, [EBS], **{"ec2:Add/userId": VAULT})
    assert not authorized(sweeper, share, [EBS], **{"ec2:Add/group": "all"}), "public"
    assert not authorized(sweeper, share, [EBS], **{"ec2:Add/userId": VAULT, "ec2:Add/group": "all"}), "public"
    assert not authorized(sweeper, share, [EBS], **{"ec2:Remove/userId": VAULT}), "only adds"
    assert not authorized(sweeper, share, [UNTAGGED_EBS], **{"ec2:Add/userId": VAULT})
    assert authorized(sweeper, "rds:ModifyDBSnapshotAttribute", [RDS])
    assert authorized(sweeper, "rds:ModifyDBClusterSnapshotAttribute", [CLUSTER])
    assert not authorized(sweeper, "rds:ModifyDBSnapshotAttribute", [UNTAGGED_RDS])
    assert not authorized(sweeper, "rds:ModifyDBSnapshotAttribute", [FOREIGN_RDS])
    for name, doc in every_policy(stage).items():
        if name != "snapshot_sweeper":
            for action in (share, "rds:ModifyDBSnapshotAttribute", "rds:ModifyDBClusterSnapshotAttribute"):
                assert not any(grants(st, action) for st in doc["Statement"]), f"{name} may {action}"


@pytest.mark.parametrize("stage", STAGES)
def test_the_sweeper_records_a_lock_but_cannot_retag_what_pruning_reads(stage: str) -> None:
    sweeper = policy(stage, "snapshot_sweeper")
    marks = {OBSERVED_TAG: "done", LOCKED_UNTIL_TAG: "2027-11-29T03:00:00Z"}
    assert authorized(sweeper, "ec2:CreateTags", [EBS], marks)
    for key, value in (("retention", "yearly"), ("pinned", "false"), ("lifeboat:slot", "2030-01-01T00:00:00Z")):
        assert not authorized(sweeper, "ec2:CreateTags", [EBS], {**marks, key: value}), key
        assert not authorized(sweeper, "rds:AddTagsToResource", [RDS], {key: value}), key


# What the code tags a new snapshot and a copy with (chalicelib.physical.names), a target's own tags included.
TARGET = Target(
    name="shop", tags={"team": "payments"}, physical=Physical(method="rds_instance", db_instance_id="shop-db")
)
NEW_TAGS = snapshot_tags(TARGET, BackupId("shop", datetime(2026, 11, 29, 3, tzinfo=UTC), "snapshot"), "daily")
COPY_TAGS = copy_tags({**NEW_TAGS, OBSERVED_TAG: "done"}, RDS.arn)
NEW_RDS = Resource(arn("rds", "snapshot", "lifeboat-shop-20261129-030000"))  # being created: no tags yet
NEW_EBS = Resource("arn:aws:ec2:eu-west-1::snapshot/*")
SOURCE_DB = Resource(arn("rds", "db", "shop-db"), {"lifeboat:backup-source": "true"})
SOURCE_VOLUME = Resource(arn("ec2", "volume", "vol-0shop"), {"lifeboat:backup-source": "true"})
MARKS = ({COPY_OF_TAG: "x"}, {OBSERVED_TAG: "done"}, {LOCKED_UNTIL_TAG: "2030-01-01T00:00:00Z"})


@pytest.mark.parametrize("stage", STAGES)
def test_the_worker_creates_snapshots_never_tagged_as_copies_or_marked(stage: str) -> None:
    """A snapshot created with lifeboat:copy-of in the source region would pass for a copy (judged by its source);
    one created observed or locked-until would skip the sweep or be taken for locked."""
    worker = policy(stage, "backup_worker")
    calls = (
        ("rds:CreateDBSnapshot", [SOURCE_DB, NEW_RDS], {}),
        ("rds:AddTagsToResource", [NEW_RDS], {}),
        ("ec2:CreateSnapshot", [SOURCE_VOLUME, NEW_EBS], {}),
        ("ec2:CreateTags", [NEW_EBS], {"ec2:CreateAction": "CreateSnapshot"}),
    )
    for action, resources, context in calls:
        assert authorized(worker, action, resources, NEW_TAGS, **context), action
        for mark in MARKS:
            assert not authorized(worker, action, resources, {**NEW_TAGS, **mark}, **context), (action, mark)


@pytest.mark.parametrize("stage", STAGES)
def test_the_sweeper_copies_only_as_copies_and_unmarked(stage: str) -> None:
    sweeper = policy(stage, "snapshot_sweeper")
    copy = Resource(NEW_RDS.arn.replace("eu-west-1", "us-west-2"))
    ebs_source = Resource(EBS.arn, MANAGED)
    calls = (
        ("rds:CopyDBSnapshot", [RDS, copy], {}),
        ("rds:AddTagsToResource", [copy], {}),
        ("ec2:CopySnapshot", [ebs_source, NEW_EBS], {}),
        ("ec2:CreateTags", [NEW_EBS], {"ec2:CreateAction": "CopySnapshot"}),
    )
    assert COPY_OF_TAG in COPY_TAGS and OBSERVED_TAG not in COPY_TAGS
    for action, resources, context in calls:
        assert authorized(sweeper, action, resources, COPY_TAGS, **context), action
        uncopied = {k: v for k, v in COPY_TAGS.items() if k != COPY_OF_TAG}
        assert not authorized(sweeper, action, resources, uncopied, **context), f"{action} without {COPY_OF_TAG}"
        for mark in MARKS[1:]:
            assert not authorized(sweeper, action, resources, {**COPY_TAGS, **mark}, **context), (action, mark)


@pytest.mark.parametrize("stage", STAGES)
def test_the_vault_share_removes_nothing(stage: str) -> None:
    """An Add of any account must not carry a Remove of the vault (or of a group) in the same call."""
    sweeper = policy(stage, "snapshot_sweeper")
    share = "ec2:ModifySnapshotAttribute"
    dummy = "111122223333"
    assert authorized(sweeper, share, [EBS], **{"ec2:Add/userId": VAULT})
    assert not authorized(sweeper, share, [EBS], **{"ec2:Add/userId": dummy, "ec2:Remove/userId": VAULT})
    assert not authorized(sweeper, share, [EBS], **{"ec2:Add/userId": dummy, "ec2:Remove/group": "all"})
