"""Restore drills' and WAL streams' IAM (stack/recovery_capabilities.py), evaluated with the IAM evaluator of
tests/reliability/test_restore_iam.py: a drill deletes only what is both named lifeboat-drill-* and tagged as a
drill's (a compromised sweeper cannot delete a production database), restores only managed snapshots into drill
names, writes only evidence documents; a WAL stream task writes only its own target's prefixes and deletes nothing
but superseded `.partial` objects."""

from __future__ import annotations

import fnmatch
import random
from datetime import UTC, datetime

import pytest

from chalicelib.drills import model as drill_model
from chalicelib.drills.evidence import EvidenceStore
from chalicelib.pitr.walnames import WalLayout
from stack import policies, recovery_capabilities
from tests.reliability.test_restore_iam import STAGES, Resource, arn, authorized, policy

DRILL_ID = drill_model.new_drill_id(random.Random(7))  # noqa: S311 (a fixed id for the test)
DRILL_RESTORE_TAGS = {"lifeboat:restore-id": drill_model.drill_restore_id(DRILL_ID), "lifeboat:target": "shop"}
DRILL_DB = Resource(
    arn("rds", "db", drill_model.drill_instance_id(DRILL_ID)), {**DRILL_RESTORE_TAGS, drill_model.DRILL_TAG: DRILL_ID}
)
DRILL_CLUSTER = Resource(arn("rds", "cluster", drill_model.drill_instance_id(DRILL_ID)), DRILL_DB.tags)
UNMARKED_DRILL_DB = Resource(DRILL_DB.arn, DRILL_RESTORE_TAGS)  # the lifeboat:drill tag is not on it (yet)
PRODUCTION = [
    Resource(arn("rds", "db", "orders-prod"), {"env": "prod"}),
    Resource(arn("rds", "db", "orders-prod"), {drill_model.DRILL_TAG: DRILL_ID, **DRILL_RESTORE_TAGS}),  # forged tags
    Resource(arn("rds", "cluster", "billing"), {drill_model.DRILL_TAG: DRILL_ID}),
    Resource(arn("rds", "db", "lifeboat-orders-restored"), {**DRILL_RESTORE_TAGS, drill_model.DRILL_TAG: DRILL_ID}),
]
DRILLERS = ("backup_worker", "snapshot_sweeper")
DELETES = ("rds:DeleteDBInstance", "rds:DeleteDBCluster")


def test_the_stack_and_the_drills_agree_on_names_and_tags() -> None:
    assert recovery_capabilities.DRILL_RDS_PREFIX == drill_model.INSTANCE_PREFIX
    assert recovery_capabilities.DRILL_TAG == drill_model.DRILL_TAG
    assert fnmatch.fnmatchcase(DRILL_ID, recovery_capabilities.DRILL_ID_PATTERN)
    evidence = EvidenceStore(None, None, "team/")  # type: ignore[arg-type]
    started = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)
    rec = drill_model.DrillRecord(drill_id=DRILL_ID, target="shop", kind="logical", pick="latest", started_at=started)
    assert fnmatch.fnmatchcase(evidence.key(rec), recovery_capabilities.EVIDENCE_OBJECTS)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("function", DRILLERS)
def test_drills_delete_only_their_own_tagged_resources(stage: str, function: str) -> None:
    doc = policy(stage, function)
    assert authorized(doc, "rds:DeleteDBInstance", [DRILL_DB])
    assert authorized(doc, "rds:DeleteDBCluster", [DRILL_CLUSTER])
    assert not authorized(doc, "rds:DeleteDBInstance", [UNMARKED_DRILL_DB]), "a drill name without lifeboat:drill"
    for other in PRODUCTION:
        for action in DELETES:
            assert not authorized(doc, action, [other]), f"{function} may {action} {other}"
    # nor make a production instance look like a drill's: only lifeboat:drill, only on a drill's restored resource
    for other in PRODUCTION[:3]:
        assert not authorized(doc, "rds:AddTagsToResource", [other], {drill_model.DRILL_TAG: DRILL_ID})
    assert authorized(doc, "rds:AddTagsToResource", [UNMARKED_DRILL_DB], {drill_model.DRILL_TAG: DRILL_ID})
    assert not authorized(doc, "rds:AddTagsToResource", [UNMARKED_DRILL_DB], {"env": "prod"})
    unrestored = Resource(DRILL_DB.arn, {"env": "prod"})
    assert not authorized(doc, "rds:AddTagsToResource", [unrestored], {drill_model.DRILL_TAG: DRILL_ID})


@pytest.mark.parametrize("stage", STAGES)
def test_no_other_function_deletes_a_database(stage: str) -> None:
    for function in sorted(set(policies.ACCESS) - set(DRILLERS)):
        doc = policy(stage, function)
        for action in DELETES:
            assert not authorized(doc, action, [DRILL_DB]), f"{function} may {action}"
    assert not any("rds:Delete" in str(st["Action"]) for st in policies.task_policy(stage)["Statement"])


@pytest.mark.parametrize("stage", STAGES)
def test_snapshot_drills_restore_managed_snapshots_into_drill_names_only(stage: str) -> None:
    worker = policy(stage, "backup_worker")
    managed = Resource(arn("rds", "snapshot", "lifeboat-shop-20261129-030000"), {"lifeboat:managed": "true"})
    unmanaged = Resource(managed.arn)
    new = Resource(DRILL_DB.arn)
    call = "rds:RestoreDBInstanceFromDBSnapshot"
    assert authorized(worker, call, [new, managed], DRILL_RESTORE_TAGS)
    assert not authorized(worker, call, [new, unmanaged], DRILL_RESTORE_TAGS)
    assert not authorized(worker, call, [new, managed]), "a new instance without the restore's tags"
    assert not authorized(worker, call, [Resource(arn("rds", "db", "lifeboat-shop-copy")), managed], DRILL_RESTORE_TAGS)
    assert not authorized(worker, "rds:RestoreDBInstanceToPointInTime", [new], DRILL_RESTORE_TAGS)
    sweeper = policy(stage, "snapshot_sweeper")
    assert not authorized(sweeper, call, [new, managed], DRILL_RESTORE_TAGS), "the sweeper restores nothing"


@pytest.mark.parametrize("stage", STAGES)
def test_the_sweeper_writes_only_drill_evidence(stage: str) -> None:
    sweeper = policy(stage, "snapshot_sweeper")
    bucket = f"arn:aws:s3:::pg-lifeboat-{stage}-123456789012-eu-west-1"
    evidence = Resource(f"{bucket}/drills/shop/2026/20261129T060000Z_{DRILL_ID}.json")
    for action in ("s3:PutObject", "s3:PutObjectTagging", "s3:PutObjectRetention"):
        assert authorized(sweeper, action, [evidence]), action
    for key in ("logical/shop/2026/11/29/20261129T030000Z/database.dump", "logical/shop/x/manifest.json"):
        assert not authorized(sweeper, "s3:PutObject", [Resource(f"{bucket}/{key}")]), key
    assert not authorized(sweeper, "s3:DeleteObject", [evidence])


@pytest.mark.parametrize("stage", STAGES)
def test_a_wal_stream_task_writes_only_its_own_target(stage: str) -> None:
    doc = policies.wal_stream_task_policy(stage, "shop")
    bucket = f"arn:aws:s3:::pg-lifeboat-{stage}-123456789012-eu-west-1"
    layout = WalLayout("", "shop")
    segment = f"{layout.root}00000001/000000010000000000000003"
    for key in (segment, f"{segment}.partial", "base/shop/20261129T030000Z/base.tar.zst"):
        for action in ("s3:PutObject", "s3:GetObject", "s3:PutObjectRetention"):
            assert authorized(doc, action, [Resource(f"{bucket}/{key}")]), (action, key)
    assert authorized(doc, "s3:DeleteObject", [Resource(f"{bucket}/{segment}.partial")])
    for key in (segment, "base/shop/20261129T030000Z/manifest.json", "wal/billing/00000001/x.partial"):
        assert not authorized(doc, "s3:DeleteObject", [Resource(f"{bucket}/{key}")]), key
    other = Resource(f"{bucket}/wal/billing/00000001/000000010000000000000003")
    assert not authorized(doc, "s3:PutObject", [other])
    assert not authorized(doc, "s3:GetObject", [Resource(f"{bucket}/logical/shop/x/database.dump")])
    assert authorized(doc, "s3:ListBucket", [Resource(bucket)], None, **{"s3:prefix": layout.root})
    assert not authorized(doc, "s3:ListBucket", [Resource(bucket)], None, **{"s3:prefix": "wal/billing/"})
    granted = {
        a for st in doc["Statement"] for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    assert not {a for a in granted if a.startswith(("dynamodb:", "sqs:", "rds:", "ec2:"))}
    assert "s3:DeleteObjectVersion" not in granted and "s3:BypassGovernanceRetention" not in granted
