"""Pruning managed snapshots against moto: the GFS set over a year, and what is never touched."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatch
from typing import Any

from chalicelib.logical.catalog import BackupId, Catalog, Layout
from chalicelib.physical.names import LABEL_NAME, label_key, snapshot_identifier, snapshot_tags
from chalicelib.physical.prune import prune
from chalicelib.physical.start import start_snapshot
from chalicelib.physical.sweep import sweep
from stack import capabilities

from .conftest import BUCKET, DEST, NOW, SOURCE, Env, after_call, tags_of

SHOP = {"name": "shop", "physical": {"method": "rds_instance", "db_instance_id": "shop-db"}}
TIGHT = {"daily_days": 1, "weekly_weeks": 0, "monthly_months": 0, "yearly_years": 0, "keep_last": 1}


def slot(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, 3, tzinfo=UTC)


def expected_gfs() -> set[str]:
    days = [
        "2026-12-25",
        "2026-12-26",
        "2026-12-27",
        "2026-12-28",
        "2026-12-29",
        "2026-12-30",
        "2026-12-31",
        "2026-12-20",
        "2026-12-13",
        "2026-12-06",
        "2026-01-31",
        "2026-02-28",
        "2026-03-31",
        "2026-04-30",
        "2026-05-31",
        "2026-06-30",
        "2026-07-31",
        "2026-08-31",
        "2026-09-30",
        "2026-10-31",
        "2026-11-30",
        "2025-12-31",
    ]
    return {snapshot_identifier("shop", slot(date.fromisoformat(d))) for d in days}


def test_a_year_of_snapshots_keeps_exactly_the_gfs_set(env: Env) -> None:
    env.db_instance(retention_days=1)  # moto also makes an automated snapshot
    cfg = env.config([SHOP])
    target = cfg.target("shop")
    rds = env.rds()
    first, last = date(2025, 11, 15), date(2026, 12, 31)
    made = []
    for n in range((last - first).days + 1):
        s = slot(first + timedelta(n))
        tags = {**snapshot_tags(target, BackupId("shop", s, "snapshot"), "daily"), "lifeboat:observed": "done"}
        if s.date() == date(2025, 11, 20):
            tags["pinned"] = "true"
        ident = snapshot_identifier("shop", s)
        rds.create_db_snapshot(
            DBSnapshotIdentifier=ident,
            DBInstanceIdentifier="shop-db",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )
        made.append(ident)
    # things the pruner must never touch
    rds.create_db_snapshot(DBSnapshotIdentifier="before-upgrade", DBInstanceIdentifier="shop-db")  # no tags
    rds.create_db_snapshot(
        DBSnapshotIdentifier="lifeboat-gone-20240101-030000",
        DBInstanceIdentifier="shop-db",
        Tags=[
            {"Key": "lifeboat:managed", "Value": "true"},
            {"Key": "lifeboat:target", "Value": "gone"},
            {"Key": "lifeboat:slot", "Value": "2024-01-01T03:00:00Z"},
        ],
    )  # unconfigured target
    rds.create_db_snapshot(
        DBSnapshotIdentifier="lifeboat-shop-garbled",
        DBInstanceIdentifier="shop-db",
        Tags=[
            {"Key": "lifeboat:managed", "Value": "true"},
            {"Key": "lifeboat:target", "Value": "shop"},
            {"Key": "lifeboat:slot", "Value": "sometime"},
        ],
    )  # unreadable slot
    automated = [s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots(SnapshotType="automated")["DBSnapshots"]]
    assert len(automated) == 1
    env.clock.now = datetime(2026, 12, 31, 12, tzinfo=UTC)
    svc = env.services(cfg)
    keep = expected_gfs() | {"lifeboat-shop-20251120-030000"}

    dry = prune(svc, dry_run=True)
    assert {d.resource_ids[0] for d in dry.deleted} == set(made) - keep
    assert {d.resource_ids[0] for d in dry.kept} == keep
    reasons = {d.resource_ids[0]: d.reason for d in dry.kept + dry.deleted}
    assert reasons["lifeboat-shop-20251120-030000"] == "pinned"
    assert reasons["lifeboat-shop-20251231-030000"] == "yearly 2025"
    assert reasons["lifeboat-shop-20260115-030000"].startswith("outside every retention window")
    assert len(rds.describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]) == len(made) + 3  # dry run

    report = prune(svc)
    assert not report.errors and len(report.deleted) == len(made) - len(keep)
    left = {s["DBSnapshotIdentifier"] for s in rds.describe_db_snapshots()["DBSnapshots"]}
    assert left == keep | {"before-upgrade", "lifeboat-gone-20240101-030000", "lifeboat-shop-garbled", *automated}
    assert env.metrics.named("SnapshotsPruned") == [("SnapshotsPruned", len(made) - len(keep), "Count", "shop")]
    assert prune(svc).deleted == []  # nothing more to do


def test_newest_success_survives_and_copies_are_pruned_too(env: Env) -> None:
    env.db_instance(kms_key=env.kms_key(SOURCE))
    physical = {**SHOP["physical"], "copy_to_region": DEST, "copy_kms_key_id": env.kms_key(DEST)}
    svc = env.services(env.config([{"name": "shop", "physical": physical}], **TIGHT))
    for days in (0, 30, 60):
        start_snapshot(svc, "shop", NOW + timedelta(days=days))
    sweep(svc)  # marks them done and copies all three to eu-west-1
    assert len(env.rds(DEST).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]) == 3
    env.clock.now = NOW + timedelta(days=400)  # far beyond every window
    report = prune(svc)
    newest = snapshot_identifier("shop", NOW + timedelta(days=60))
    assert {(d.region, d.resource_ids[0], d.reason) for d in report.kept} == {
        (SOURCE, newest, "newest successful, last 1"),
        (DEST, newest, "newest successful, last 1"),
    }
    for region in (SOURCE, DEST):
        snaps = env.rds(region).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
        assert [s["DBSnapshotIdentifier"] for s in snaps] == [newest]


def test_snapshots_in_progress_and_unreported_failures_wait(env: Env) -> None:
    env.db_instance()
    svc = env.services(env.config([SHOP], **TIGHT))
    for days in range(3):
        start_snapshot(svc, "shop", NOW + timedelta(days=days))
    states = {
        snapshot_identifier("shop", NOW): "creating",
        snapshot_identifier("shop", NOW + timedelta(days=1)): "failed",
    }

    def edit(parsed: dict[str, Any]) -> None:
        for snap in parsed.get("DBSnapshots", []):
            snap["Status"] = states.get(snap["DBSnapshotIdentifier"], snap["Status"])

    after_call(env.rds(), "DescribeDBSnapshots", edit)
    env.clock.now = NOW + timedelta(days=30)
    reasons = {d.resource_ids[0]: d.reason for d in prune(svc, dry_run=True).kept}
    assert reasons == {
        snapshot_identifier("shop", NOW): "in progress (creating)",
        snapshot_identifier("shop", NOW + timedelta(days=1)): "failed; kept until the sweep has reported it",
        snapshot_identifier("shop", NOW + timedelta(days=2)): "newest successful, last 1",
    }
    sweep(svc)  # reports the failure (and tags it), after which the failed one may go
    report = prune(svc)
    assert [(d.resource_ids[0], d.reason) for d in report.deleted] == [
        (snapshot_identifier("shop", NOW + timedelta(days=1)), "failed snapshot")
    ]


def test_ebs_sets_are_pruned_whole_with_their_label(env: Env) -> None:
    instance, _, _ = env.ec2_instance()
    svc = env.services(
        env.config([{"name": "vm", "physical": {"method": "ebs", "ec2_instance_id": instance}}], **TIGHT)
    )
    old = start_snapshot(svc, "vm", NOW)
    start_snapshot(svc, "vm", NOW + timedelta(days=2))
    key = "snapshots/vm/20261129T030000Z/backup_label.json"
    env.store.put_bytes(key, b"{}")
    env.ec2().create_tags(
        Resources=list(old.resource_ids), Tags=[{"Key": "lifeboat:backup-label", "Value": f"s3://{BUCKET}/{key}"}]
    )
    env.clock.now = NOW + timedelta(days=10)
    report = prune(svc)
    assert [(d.backup_id, sorted(d.resource_ids)) for d in report.deleted] == [
        ("snapshot:vm:20261129T030000Z", sorted(old.resource_ids))
    ]
    assert report.labels_deleted == [key] and env.store.head(key) is None
    assert {tags_of(s)["lifeboat:slot"] for s in env.managed_ebs()} == {"2026-12-01T03:00:00Z"}


def test_a_label_tag_naming_another_object_is_ignored(env: Env) -> None:
    """The pruner deletes only the set's own label key: a tag naming a logical backup's manifest (or any other
    object) deletes nothing."""
    instance, _, _ = env.ec2_instance()
    svc = env.services(
        env.config([{"name": "vm", "physical": {"method": "ebs", "ec2_instance_id": instance}}], **TIGHT)
    )
    manifest_key = Catalog(env.store, Layout("")).layout.manifest_key(BackupId("orders", NOW))
    env.store.put_bytes(manifest_key, b"{}")
    other_label = "snapshots/vm/20261201T030000Z/backup_label.json"  # another set's label
    env.store.put_bytes(other_label, b"{}")
    old = start_snapshot(svc, "vm", NOW)
    older = start_snapshot(svc, "vm", NOW - timedelta(days=1))
    start_snapshot(svc, "vm", NOW + timedelta(days=2))
    for snap, key in ((old, manifest_key), (older, other_label)):
        env.ec2().create_tags(
            Resources=list(snap.resource_ids), Tags=[{"Key": "lifeboat:backup-label", "Value": f"s3://{BUCKET}/{key}"}]
        )
    env.clock.now = NOW + timedelta(days=10)
    report = prune(svc)
    assert len(report.deleted) == 2 and report.labels_deleted == []
    assert env.store.head(manifest_key) is not None and env.store.head(other_label) is not None


def test_the_pruner_may_delete_only_label_objects() -> None:
    deletes = [
        s for s in capabilities.capability_statements("prod", "bucket:prune") if "s3:DeleteObject" in s["Action"]
    ]
    assert len(deletes) == 1, deletes
    resource = deletes[0]["Resource"]  # the bucket part is the S3 statements' business
    assert resource.startswith("arn:aws:s3:::pg-lifeboat-prod-")
    assert resource.split("/", 1)[1] == f"*snapshots/*/{LABEL_NAME}"
    assert capabilities.LABEL_OBJECT == LABEL_NAME
    assert fnmatch(f"x/{label_key('lb/', 'vm', NOW)}", "x/*snapshots/*/" + LABEL_NAME)


def test_a_snapshot_with_a_forged_slot_tag_cannot_push_out_the_real_one(env: Env) -> None:
    """Leaked worker credentials can create a managed snapshot and choose its slot tag, but not AWS's creation time:
    one tagged as the end of last month, made now, must not become last month's representative (which would make
    the pruner delete the real month-end snapshot), nor be copied to stand for it in the copy region."""
    env.db_instance(kms_key=env.kms_key(SOURCE))
    physical = {**SHOP["physical"], "copy_to_region": DEST, "copy_kms_key_id": env.kms_key(DEST)}
    policy = {**TIGHT, "monthly_months": 3}
    svc = env.services(env.config([{"name": "shop", "physical": physical}], **policy))
    month_end, newest = slot(date(2026, 10, 31)), slot(date(2026, 11, 28))
    for s in (month_end, newest):
        start_snapshot(svc, "shop", s)
    target = svc.config.target("shop")
    forged_slot = datetime(2026, 10, 31, 23, 0, tzinfo=UTC)
    forged = snapshot_identifier("shop", forged_slot)
    tags = snapshot_tags(target, BackupId("shop", forged_slot, "snapshot"), "daily")
    env.rds().create_db_snapshot(
        DBSnapshotIdentifier=forged,
        DBInstanceIdentifier="shop-db",
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
    )
    env.clients.real_created.add(forged)  # made now, weeks after the slot its tag claims
    env.clock.now = NOW
    sweep(svc)
    copied = {s["DBSnapshotIdentifier"] for s in env.rds(DEST).describe_db_snapshots()["DBSnapshots"]}
    assert copied == {snapshot_identifier("shop", month_end), snapshot_identifier("shop", newest)}

    report = prune(svc)
    assert report.deleted == [] and not report.errors
    reasons = {(d.region, d.resource_ids[0]): d.reason for d in report.kept}
    assert reasons[(SOURCE, snapshot_identifier("shop", month_end))] == "monthly 2026-10"
    assert "disagrees with the creation time" in reasons[(SOURCE, forged)]
    assert reasons[(DEST, snapshot_identifier("shop", month_end))] == "monthly 2026-10"


def test_a_snapshot_whose_creation_time_fits_its_slot_is_judged_normally(env: Env) -> None:
    env.db_instance()
    svc = env.services(env.config([SHOP], **TIGHT))
    for days in (0, 1):
        start_snapshot(svc, "shop", NOW + timedelta(days=days))
    sweep(svc)
    env.clock.now = NOW + timedelta(days=10)
    report = prune(svc)
    assert [d.resource_ids[0] for d in report.deleted] == [snapshot_identifier("shop", NOW)]
