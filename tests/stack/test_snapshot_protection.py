"""Snapshots nobody but the pruner can erase (issue 13), read from the generated policies with the IAM evaluator of
tests/reliability/test_restore_iam.py: only the pruner deletes, and only snapshots tagged managed; no role unlocks
a snapshot; only the sweeper locks one, for at least 30 days, without a cooling-off period; only the sweeper shares
one, never publicly (EBS).
"""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.physical.names import LOCKED_UNTIL_TAG, MANAGED_TAG, MANAGED_VALUE, OBSERVED_TAG
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
