"""Forged managed snapshots (leaked backup-worker or snapshot-sweeper credentials) against the pruner and the sweep:
each leaves the real snapshot kept and is itself kept, reported as not believed and never copied (physical.trust).

The setting of every attack: the target keeps 3 months; its real month-end snapshot of October (31st, 03:00) is the
representative of 2026-10, and a newer real one (28 November) is the newest. A forged set that the pruner believed
as a newer snapshot of October would make it delete the real month-end one (RDS has no lock: for good).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib.config import Physical
from chalicelib.logical.catalog import BackupId
from chalicelib.physical.ebs import EBS
from chalicelib.physical.model import SnapshotResource, SnapshotServices, SnapshotSet
from chalicelib.physical.names import COPY_OF_TAG, snapshot_identifier, snapshot_tags, tag_list
from chalicelib.physical.prune import PruneReport, prune
from chalicelib.physical.start import start_snapshot
from chalicelib.physical.sweep import sweep
from chalicelib.physical.trust import Sources, believed_refs, copy_distrust, source_distrust

from .conftest import DEST, NOW, SOURCE, Env

MONTH_END = datetime(2026, 10, 31, 3, tzinfo=UTC)
NEWEST = datetime(2026, 11, 28, 3, tzinfo=UTC)
LATE_OCTOBER = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)  # what a forged set claims: newer than the real month end
POLICY = {"daily_days": 1, "weekly_weeks": 0, "monthly_months": 3, "yearly_years": 0, "keep_last": 1}
REAL = snapshot_identifier("shop", MONTH_END)
SHOP_DB = Sources(frozenset({"shop-db"}), "DB instance shop-db", case_sensitive=False)


# --- pure ------------------------------------------------------------------------------------------------------------


def member(ident: str, created: datetime | None, source: str = "shop-db", **tags: str) -> SnapshotResource:
    return SnapshotResource(
        "db", ident, SOURCE, "available", "available", tags, arn=f"arn:{ident}", created=created, source_id=source
    )


def a_set(slot: datetime, *members: SnapshotResource, region: str = SOURCE) -> SnapshotSet:
    return SnapshotSet("db", "shop", slot, region, members)


@pytest.mark.parametrize(
    ("slot", "created", "believed"),
    [
        (MONTH_END, MONTH_END + timedelta(minutes=1), True),
        (MONTH_END, MONTH_END - timedelta(minutes=5), True),
        (MONTH_END, MONTH_END - timedelta(minutes=6), False),
        (MONTH_END, MONTH_END + timedelta(hours=20, minutes=59), True),  # a queue backlog, still on the 31st
        (datetime(2026, 10, 31, 23, 59, tzinfo=UTC), datetime(2026, 11, 1, 0, 30, tzinfo=UTC), False),  # next month
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), datetime(2027, 1, 1, 0, 1, tzinfo=UTC), False),  # next year
        (datetime(2026, 11, 1, 0, 2, tzinfo=UTC), datetime(2026, 10, 31, 23, 59, tzinfo=UTC), False),  # day before
        (MONTH_END, None, False),
    ],
)
def test_a_slot_is_believed_only_from_a_creation_time_at_it_on_its_day(
    slot: datetime, created: datetime | None, believed: bool
) -> None:
    assert (source_distrust(a_set(slot, member("s", created)), SHOP_DB) == "") is believed


def test_every_member_must_fit_and_be_of_the_targets_source() -> None:
    good = member("a", MONTH_END)
    assert source_distrust(a_set(MONTH_END, good, member("b", NOW)), SHOP_DB).startswith("slot tag")
    reason = source_distrust(a_set(MONTH_END, good, member("b", MONTH_END, source="payroll-db")), SHOP_DB)
    assert "not a snapshot of the target's DB instance shop-db (b of payroll-db)" in reason
    assert source_distrust(a_set(MONTH_END, member("c", MONTH_END, source="Shop-DB")), SHOP_DB) == ""
    assert "in the source region" in source_distrust(
        a_set(MONTH_END, member("d", MONTH_END, **{COPY_OF_TAG: "x"})), SHOP_DB
    )


def test_a_copy_is_believed_only_as_a_copy_of_a_believed_source_of_its_slot() -> None:
    source = a_set(MONTH_END, member("src", MONTH_END))
    refs = believed_refs([source])

    def copy(slot: datetime, ref: str | None, of: str = "shop-db") -> SnapshotSet:
        tags = {COPY_OF_TAG: ref} if ref else {}
        return a_set(slot, member("cp", None, source=of, **tags), region=DEST)

    assert copy_distrust(copy(MONTH_END, "arn:src"), refs, SOURCE) == ""
    assert copy_distrust(copy(MONTH_END, "src"), refs, SOURCE) == ""
    assert "not tagged" in copy_distrust(copy(MONTH_END, None), refs, SOURCE)
    assert "not a believed managed snapshot" in copy_distrust(copy(MONTH_END, "arn:gone"), refs, SOURCE)
    assert "its source src is of 2026-10-31T03:00:00Z" in copy_distrust(copy(LATE_OCTOBER, "arn:src"), refs, SOURCE)
    assert "is a snapshot of payroll-db" in copy_distrust(copy(MONTH_END, "arn:src", of="payroll-db"), refs, SOURCE)


# --- against moto ----------------------------------------------------------------------------------------------------


def shop(copy_to: bool = False) -> dict[str, Any]:
    physical: dict[str, Any] = {"method": "rds_instance", "db_instance_id": "shop-db"}
    return {"name": "shop", "physical": {**physical, **({"copy_to_region": DEST} if copy_to else {})}}


def real_snapshots(env: Env, copy_to: bool = False) -> SnapshotServices:
    env.db_instance()
    svc = env.services(env.config([shop(copy_to)], **POLICY))
    for slot in (MONTH_END, NEWEST):
        start_snapshot(svc, "shop", slot)
    env.clock.now = NOW
    return svc


def forged_tags(svc: SnapshotServices, slot: datetime = LATE_OCTOBER, **extra: str) -> list[dict[str, str]]:
    tags = snapshot_tags(svc.config.target("shop"), BackupId("shop", slot, "snapshot"), "monthly")
    return tag_list({**tags, **extra})


def reasons(report: PruneReport) -> dict[tuple[str, str], str]:
    return {(d.region, rid): d.reason for d in report.kept for rid in d.resource_ids}


def assert_real_kept(report: PruneReport, *regions: str) -> dict[tuple[str, str], str]:
    assert report.deleted == [] and report.errors == []
    why = reasons(report)
    for region in regions:
        assert why[(region, REAL)] == "monthly 2026-10", region
    return why


def test_a_copy_of_tag_in_the_source_region_is_not_believed(env: Env) -> None:
    """(a) The worker creates a snapshot tagged as a copy in the source region, the sweeper copies the real one
    within the source region with forged tags: both at the time they claim, of the target's own DB."""
    svc = real_snapshots(env)
    env.rds().create_db_snapshot(
        DBSnapshotIdentifier="lifeboat-shop-20261031-230000",
        DBInstanceIdentifier="shop-db",
        Tags=forged_tags(svc, **{COPY_OF_TAG: "x"}),
    )
    env.rds().copy_db_snapshot(
        SourceDBSnapshotIdentifier=REAL,
        TargetDBSnapshotIdentifier="lifeboat-shop-20261031-233000",
        Tags=forged_tags(svc, datetime(2026, 10, 31, 23, 30, tzinfo=UTC), **{COPY_OF_TAG: REAL}),
    )
    why = assert_real_kept(prune(svc), SOURCE)
    for forged in ("lifeboat-shop-20261031-230000", "lifeboat-shop-20261031-233000"):
        assert why[(SOURCE, forged)].startswith("tagged lifeboat:copy-of in the source region us-east-1"), forged


def test_a_slot_at_the_end_of_a_month_created_the_next_day_is_not_believed(env: Env) -> None:
    """(b) Within a day of the slot, but in the next month: it must not stand for October."""
    svc = real_snapshots(env)
    forged = "lifeboat-shop-20261031-235900"
    env.rds().create_db_snapshot(
        DBSnapshotIdentifier=forged,
        DBInstanceIdentifier="shop-db",
        Tags=forged_tags(svc, datetime(2026, 10, 31, 23, 59, tzinfo=UTC)),
    )
    env.clients.created_at[forged] = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
    why = assert_real_kept(prune(svc), SOURCE)
    assert "disagrees with the creation time of" in why[(SOURCE, forged)]
    assert "not counted by retention and kept" in why[(SOURCE, forged)]


def test_a_forged_copy_without_a_believed_source_is_not_believed(env: Env) -> None:
    """(c) The sweeper copies real snapshots into the copy region with forged tags: naming no existing source, or
    the real newest source under October's slot. The real copies are made and judged by the same run's listing."""
    svc = real_snapshots(env, copy_to=True)
    assert sorted(sweep(svc).copies_started) == [f"{REAL}@{DEST}", f"{snapshot_identifier('shop', NEWEST)}@{DEST}"]
    newest_arn = env.rds().describe_db_snapshots(DBSnapshotIdentifier=snapshot_identifier("shop", NEWEST))
    forgeries = {
        "lifeboat-shop-20261031-230000": f"arn:aws:rds:{SOURCE}:123456789012:snapshot:lifeboat-shop-gone",
        "lifeboat-shop-20261031-233000": newest_arn["DBSnapshots"][0]["DBSnapshotArn"],
    }
    for n, (forged, ref) in enumerate(forgeries.items()):
        env.rds(DEST).copy_db_snapshot(
            SourceDBSnapshotIdentifier=newest_arn["DBSnapshots"][0]["DBSnapshotArn"],
            SourceRegion=SOURCE,
            TargetDBSnapshotIdentifier=forged,
            Tags=forged_tags(svc, LATE_OCTOBER + timedelta(minutes=30 * n), **{COPY_OF_TAG: ref}),
        )
    why = assert_real_kept(prune(svc), SOURCE, DEST)
    assert (
        "is not a believed managed snapshot of the target in us-east-1" in why[(DEST, "lifeboat-shop-20261031-230000")]
    )
    assert "its source lifeboat-shop-20261128-030000 is of" in why[(DEST, "lifeboat-shop-20261031-233000")]


def test_a_snapshot_of_another_database_is_not_believed_nor_copied(env: Env) -> None:
    """(d) Another opted-in DB instance, snapshotted at the claimed time with the target's tags."""
    svc = real_snapshots(env, copy_to=True)
    env.db_instance("payroll-db")
    forged = "lifeboat-shop-20261031-230000"
    env.rds().create_db_snapshot(DBSnapshotIdentifier=forged, DBInstanceIdentifier="payroll-db", Tags=forged_tags(svc))
    report = sweep(svc)
    assert f"{forged}@{DEST}" not in report.copies_started and len(report.copies_started) == 2
    assert forged not in {s["DBSnapshotIdentifier"] for s in env.rds(DEST).describe_db_snapshots()["DBSnapshots"]}
    why = assert_real_kept(prune(svc), SOURCE, DEST)
    assert "not a snapshot of the target's DB instance shop-db" in why[(SOURCE, forged)]
    assert f"{forged} of payroll-db" in why[(SOURCE, forged)]


def test_an_ebs_snapshot_of_a_volume_not_the_instances_is_not_believed(env: Env) -> None:
    """(d, EBS) The instance's attached volumes are what its snapshots may be of."""
    instance, _, data = env.ec2_instance()
    svc = env.services(
        env.config([{"name": "vm", "physical": {"method": "ebs", "ec2_instance_id": instance}}], **POLICY)
    )
    for slot in (MONTH_END, NEWEST):
        start_snapshot(svc, "vm", slot)
    stranger = env.ec2().create_volume(Size=10, AvailabilityZone=f"{SOURCE}a")["VolumeId"]
    tags = snapshot_tags(svc.config.target("vm"), BackupId("vm", LATE_OCTOBER, "snapshot"), "monthly")
    env.ec2().create_snapshot(
        VolumeId=stranger, TagSpecifications=[{"ResourceType": "snapshot", "Tags": tag_list(tags)}]
    )
    env.clock.now = NOW
    report = prune(svc)
    assert report.deleted == [] and report.errors == []
    why = {d.backup_id: d.reason for d in report.kept}
    assert why["snapshot:vm:20261031T030000Z"] == "monthly 2026-10"
    assert f"not a snapshot of the target's volumes of {instance}" in why["snapshot:vm:20261031T230000Z"]
    assert stranger in why["snapshot:vm:20261031T230000Z"]
    sources = EBS.sources(svc, Physical(method="ebs", ec2_instance_id=instance, volume_ids=data[:1]), SOURCE)
    assert sources.ids == frozenset(data[:1])  # listed volumes: those, without asking EC2


def test_when_the_instances_volumes_cannot_be_told_nothing_is_pruned(env: Env) -> None:
    svc = env.services(env.config([{"name": "vm", "physical": {"method": "ebs", "ec2_instance_id": "i-0gone"}}]))
    report = prune(svc)
    assert report.deleted == [] and len(report.errors) == 1
    assert "listing the volumes of i-0gone" in report.errors[0] and "nothing of the target pruned" in report.errors[0]
