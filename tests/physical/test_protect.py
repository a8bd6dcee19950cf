"""Protecting finished snapshots: the EBS lock's mode and duration, the pruner leaving locked sets alone, and the
share with the vault account (against moto).

moto 5.2.5 has no EBS snapshot lock (`LockSnapshot` and `DescribeLockedSnapshots` answer 500 "not implemented"):
what is tested against it is that a sweep which cannot lock leaves the set unmarked and says so, and that the
pruner keeps a set whose recorded lock has not ended. The lock call itself is exercised only by real EC2.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError

from chalicelib.config import Physical, RetentionPolicy, Settings, parse_config
from chalicelib.errors import ConfigError
from chalicelib.physical.driver import share_failure
from chalicelib.physical.model import SnapshotResource, SnapshotSet
from chalicelib.physical.names import LOCKED_UNTIL_TAG, OBSERVED_TAG, TRIGGER_TAG, copy_tags
from chalicelib.physical.protect import lock_mode, snapshot_lock_days
from chalicelib.physical.prune import prune
from chalicelib.physical.start import start_snapshot
from chalicelib.physical.sweep import sweep
from chalicelib.scheduling.retention import KEEP_LOCK_DAYS, RETENTION_TAG

from .conftest import BUCKET, DEST, NOW, SOURCE, Env, tags_of

DAILY = "cron(0 3 * * ? *)"
VAULT = "210987654321"
TIGHT = {"daily_days": 1, "weekly_weeks": 0, "monthly_months": 0, "yearly_years": 0, "keep_last": 1}


def a_set(slot: datetime, **tags: str) -> SnapshotSet:
    member = SnapshotResource("ebs", "snap-0a", SOURCE, "available", "completed", tags)
    return SnapshotSet("ebs", "vm", slot, SOURCE, (member,))


def _physical(schedule: str | None) -> Physical:
    return Physical(method="ebs", ec2_instance_id="i-0db", schedule=schedule)


@pytest.mark.parametrize(
    ("slot", "days"),
    [
        (datetime(2026, 11, 18, 3, tzinfo=UTC), KEEP_LOCK_DAYS),  # a Wednesday: daily (7 days), raised to 30
        (datetime(2026, 11, 29, 3, tzinfo=UTC), 5 * 7),  # a Sunday: the newest of its ISO week
        (datetime(2026, 11, 30, 3, tzinfo=UTC), 12 * 31),  # the newest of November
        (datetime(2026, 12, 31, 3, tzinfo=UTC), 3 * 366),  # the newest of 2026
    ],
)
def test_a_scheduled_set_is_locked_for_the_class_it_earns_as_the_newest(slot: datetime, days: int) -> None:
    assert snapshot_lock_days(a_set(slot), _physical(DAILY), RetentionPolicy()) == days


def test_on_demand_and_unscheduled_sets() -> None:
    slot = datetime(2026, 12, 31, 3, tzinfo=UTC)
    on_demand = a_set(slot, **{TRIGGER_TAG: "api"})
    assert snapshot_lock_days(on_demand, _physical(DAILY), RetentionPolicy()) == KEEP_LOCK_DAYS
    assert snapshot_lock_days(on_demand, _physical(DAILY), RetentionPolicy(ondemand_days=90)) == 90
    tagged = a_set(slot, **{RETENTION_TAG: "monthly"})  # scheduled once, the target's schedule since removed
    assert snapshot_lock_days(tagged, _physical(None), RetentionPolicy()) == 12 * 31
    assert snapshot_lock_days(a_set(slot), _physical(None), RetentionPolicy()) == KEEP_LOCK_DAYS
    century = RetentionPolicy(yearly_years=100)  # 36,600 days: EC2 locks for at most 36,500
    assert snapshot_lock_days(a_set(slot), _physical(DAILY), century) == 36_500


def test_lock_mode_follows_object_lock_unless_set() -> None:
    assert lock_mode(Settings(bucket=BUCKET)) is None
    assert lock_mode(Settings(bucket=BUCKET, object_lock_mode="GOVERNANCE")) == "governance"
    assert lock_mode(Settings(bucket=BUCKET, object_lock_mode="GOVERNANCE", snapshot_lock_mode="COMPLIANCE")) == (
        "compliance"
    )
    assert lock_mode(Settings(bucket=BUCKET, object_lock_mode="COMPLIANCE", snapshot_lock_mode="NONE")) is None


@pytest.mark.parametrize("bad", ["12345", "1234567890123", "12345678901a", " 123456789012"])
def test_the_vault_account_is_twelve_digits(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"vault_account_id .* exactly 12 digits"):
        parse_config({"settings": {"bucket": BUCKET, "vault_account_id": bad}})
    assert parse_config({"settings": {"bucket": BUCKET, "vault_account_id": VAULT}}).settings.vault_account_id == VAULT


def test_a_copy_does_not_inherit_its_sources_lock() -> None:
    tags = copy_tags({OBSERVED_TAG: "done", LOCKED_UNTIL_TAG: "2027-01-01T00:00:00Z", "retention": "daily"}, "snap-0")
    assert tags == {"retention": "daily", "lifeboat:copy-of": "snap-0"}


def test_a_refused_share_of_an_encrypted_snapshot_names_the_key_to_use() -> None:
    refused = ClientError({"Error": {"Code": "InvalidParameter", "Message": "default key"}}, "ModifySnapshotAttribute")
    member = SnapshotResource("ebs", "snap-0enc", SOURCE, "available", "completed", encrypted=True)
    message = str(share_failure(refused, member, VAULT, "ec2:ModifySnapshotAttribute"))
    assert "customer managed key" in message and VAULT in message and "kms:CreateGrant" in message


# --- against moto ---------------------------------------------------------------------------------------------------


def ebs(instance: str, **extra: Any) -> dict[str, Any]:
    return {"name": "vm", "physical": {"method": "ebs", "ec2_instance_id": instance, "schedule": DAILY, **extra}}


def test_a_sweep_that_cannot_lock_leaves_the_set_unmarked_and_uncopied(env: Env) -> None:
    """moto has no LockSnapshot: it answers 500 with an HTML page, which botocore cannot parse (not an AWS error, so
    the sweep does not catch it: it fails, as on any unreadable answer). The lock comes first: the set is neither
    marked observed nor copied, and the next sweep (here: without the lock) picks it up."""
    instance, _, _ = env.ec2_instance()
    locked = {"object_lock_mode": "GOVERNANCE"}  # the snapshot lock follows it
    svc = env.services(env.config([ebs(instance, copy_to_region=DEST)], extra_settings=locked))
    start_snapshot(svc, "vm", NOW)
    with pytest.raises(ResponseParserError, match="invalid XML"):
        sweep(svc)
    assert all(OBSERVED_TAG not in tags_of(s) for s in env.managed_ebs())
    assert env.managed_ebs(DEST) == []
    unlocked = env.services(env.config([ebs(instance)], extra_settings={**locked, "snapshot_lock_mode": "NONE"}))
    report = sweep(unlocked)
    assert report.completed == ["snapshot:vm:20261129T030000Z@us-east-1"] and report.locked == []
    assert all(LOCKED_UNTIL_TAG not in tags_of(s) for s in env.managed_ebs())


def test_rds_snapshots_have_no_lock_to_set(env: Env) -> None:
    env.db_instance()
    target = {"name": "shop", "physical": {"method": "rds_instance", "db_instance_id": "shop-db", "schedule": DAILY}}
    svc = env.services(env.config([target], extra_settings={"snapshot_lock_mode": "COMPLIANCE"}))
    start_snapshot(svc, "shop", NOW)
    report = sweep(svc)
    assert report.completed == ["snapshot:shop:20261129T030000Z@us-east-1"] and report.locked == []
    assert LOCKED_UNTIL_TAG not in env.rds_tags("lifeboat-shop-20261129-030000")


def test_the_pruner_keeps_a_locked_set_until_its_lock_ends(env: Env) -> None:
    instance, _, _ = env.ec2_instance()
    svc = env.services(env.config([ebs(instance)], **TIGHT))
    old = start_snapshot(svc, "vm", NOW)
    start_snapshot(svc, "vm", NOW + timedelta(days=2))
    until = "2026-12-29T03:00:00Z"
    env.ec2().create_tags(Resources=[old.resource_ids[0]], Tags=[{"Key": LOCKED_UNTIL_TAG, "Value": until}])
    env.clock.now = NOW + timedelta(days=10)
    report = prune(svc)
    assert report.deleted == [] and report.errors == []
    assert {d.backup_id: d.reason for d in report.kept}[old.backup_id] == f"locked until {until}"
    env.clock.now = datetime(2026, 12, 29, 3, 0, 1, tzinfo=UTC)
    report = prune(svc)
    assert [(d.backup_id, d.reason) for d in report.deleted] == [
        (old.backup_id, "outside every retention window (slot 2026-11-29 03:00, tagged daily)")
    ]
    assert {tags_of(s)["lifeboat:slot"] for s in env.managed_ebs()} == {"2026-12-01T03:00:00Z"}


def attribute_accounts(env: Env, kind: str, snapshot: str, region: str) -> list[str]:
    if kind == "ebs":
        perms = env.ec2(region).describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
        return [p["UserId"] for p in perms["CreateVolumePermissions"]]
    rds = env.rds(region)
    if kind == "db":
        result = rds.describe_db_snapshot_attributes(DBSnapshotIdentifier=snapshot)["DBSnapshotAttributesResult"]
        attributes = result["DBSnapshotAttributes"]
    else:
        result = rds.describe_db_cluster_snapshot_attributes(DBClusterSnapshotIdentifier=snapshot)
        attributes = result["DBClusterSnapshotAttributesResult"]["DBClusterSnapshotAttributes"]
    return [v for a in attributes if a["AttributeName"] == "restore" for v in a["AttributeValues"]]


def test_ebs_sets_and_their_copies_are_shared_with_the_vault(env: Env) -> None:
    instance, _, _ = env.ec2_instance()
    svc = env.services(env.config([ebs(instance, copy_to_region=DEST)], extra_settings={"vault_account_id": VAULT}))
    start_snapshot(svc, "vm", NOW)
    sources = [s["SnapshotId"] for s in env.managed_ebs()]
    assert len(sources) == 2 and all(attribute_accounts(env, "ebs", s, SOURCE) == [] for s in sources)
    report = sweep(svc)  # moto finishes the copies at once: the same sweep sees them available and shares them too
    assert report.shared == [
        f"snapshot:vm:20261129T030000Z@{SOURCE} with {VAULT}",
        f"snapshot:vm:20261129T030000Z@{DEST} with {VAULT}",
    ]
    assert all(attribute_accounts(env, "ebs", s, SOURCE) == [VAULT] for s in sources)
    copies = [s["SnapshotId"] for s in env.managed_ebs(DEST)]
    assert len(copies) == 2 and all(attribute_accounts(env, "ebs", c, DEST) == [VAULT] for c in copies)


def test_rds_and_aurora_snapshots_are_shared_with_the_vault(env: Env) -> None:
    key = env.kms_key(SOURCE)  # only encrypted RDS snapshots are shared (see the next test)
    env.db_instance(kms_key=key)
    env.db_cluster(kms_key=key)
    targets = [
        {"name": "shop", "physical": {"method": "rds_instance", "db_instance_id": "shop-db"}},
        {"name": "ledger", "physical": {"method": "aurora_cluster", "db_cluster_id": "shop-cluster"}},
    ]
    svc = env.services(env.config(targets, extra_settings={"vault_account_id": VAULT}))
    start_snapshot(svc, "shop", NOW)
    start_snapshot(svc, "ledger", NOW)
    assert attribute_accounts(env, "db", "lifeboat-shop-20261129-030000", SOURCE) == []
    report = sweep(svc)
    assert sorted(report.shared) == [
        f"snapshot:ledger:20261129T030000Z@{SOURCE} with {VAULT}",
        f"snapshot:shop:20261129T030000Z@{SOURCE} with {VAULT}",
    ]
    assert attribute_accounts(env, "db", "lifeboat-shop-20261129-030000", SOURCE) == [VAULT]
    assert attribute_accounts(env, "cluster", "lifeboat-ledger-20261129-030000", SOURCE) == [VAULT]


def test_an_unencrypted_rds_snapshot_is_not_shared(env: Env) -> None:
    """IAM cannot limit the values of an RDS share (even "all", public): only an encrypted snapshot, usable only by
    the accounts its key names, is shared; an unencrypted one stays unmarked with an error saying what to do."""
    env.db_instance()
    target = {"name": "shop", "physical": {"method": "rds_instance", "db_instance_id": "shop-db"}}
    svc = env.services(env.config([target], extra_settings={"vault_account_id": VAULT}))
    start_snapshot(svc, "shop", NOW)
    report = sweep(svc)
    assert report.shared == [] and report.completed == []
    assert len(report.errors) == 1 and "is not encrypted" in report.errors[0]
    assert "settings.vault_account_id" in report.errors[0]
    assert attribute_accounts(env, "db", "lifeboat-shop-20261129-030000", SOURCE) == []
    assert OBSERVED_TAG not in env.rds_tags("lifeboat-shop-20261129-030000")
