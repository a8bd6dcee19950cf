"""RDS instance and Aurora cluster snapshots against moto: tags, duplicate deliveries, quota, sweep, copies."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from chalicelib.errors import SnapshotError
from chalicelib.physical.catalog import list_snapshots
from chalicelib.physical.inventory import Inventory
from chalicelib.physical.rds import RDS_INSTANCE
from chalicelib.physical.start import start_snapshot
from chalicelib.physical.sweep import sweep

from .conftest import DEST, NOW, SOURCE, Env, after_call

SHOP_RDS = {
    "name": "shop",
    "tags": {"team": "payments"},
    "physical": {"method": "rds_instance", "db_instance_id": "shop-db", "schedule": "cron(0 3 * * ? *)"},
}


def test_rds_instance_snapshot_is_tagged_and_not_awaited(env: Env) -> None:
    env.db_instance()
    svc = env.services(env.config([SHOP_RDS]))
    outcome = start_snapshot(svc, "shop", NOW)
    assert (outcome.status, outcome.backup_id, outcome.resource_ids) == (
        "STARTED",
        "snapshot:shop:20261129T030000Z",
        ("lifeboat-shop-20261129-030000",),
    )
    assert outcome.retention_class == "yearly"  # the first snapshot of the target
    assert env.rds_tags("lifeboat-shop-20261129-030000") == {
        "team": "payments",
        "Name": "lifeboat-shop-20261129-030000",
        "lifeboat:managed": "true",
        "lifeboat:target": "shop",
        "lifeboat:slot": "2026-11-29T03:00:00Z",
        "lifeboat:set": "snapshot:shop:20261129T030000Z",
        "lifeboat:trigger": "schedule",
        "retention": "yearly",
        "retention-policy": "default",
    }
    # the next day's snapshot is classified against this one
    nxt = start_snapshot(svc, "shop", NOW + timedelta(days=1))
    assert nxt.retention_class == "weekly"  # Monday 30 November starts an ISO week
    assert [m[1] for m in env.metrics.named("ManagedSnapshots")] == [1, 2]
    assert len(env.metrics.named("SnapshotStarted")) == 2


def test_duplicate_delivery_creates_one_snapshot(env: Env) -> None:
    env.db_instance()
    svc = env.services(env.config([SHOP_RDS]))
    first = start_snapshot(svc, "shop", NOW)
    again = start_snapshot(svc, "shop", NOW + timedelta(microseconds=500))  # same slot, redelivered
    assert first.status == "STARTED"
    assert (again.status, again.reason) == ("SKIPPED", "already exists (available)")
    manual = env.rds().describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    assert [s["DBSnapshotIdentifier"] for s in manual] == ["lifeboat-shop-20261129-030000"]


def test_concurrent_delivery_relies_on_the_deterministic_identifier(env: Env) -> None:
    """A second worker that listed before the first one created: RDS's DBSnapshotAlreadyExists is success."""
    env.db_instance()
    svc = env.services(env.config([SHOP_RDS]))
    start_snapshot(svc, "shop", NOW)
    hide = after_call(env.rds(), "DescribeDBSnapshots", lambda parsed: parsed.update(DBSnapshots=[]))
    try:
        again = start_snapshot(svc, "shop", NOW)
    finally:
        hide()
    assert (again.status, again.reason) == ("SKIPPED", "already exists")
    assert len(env.rds().describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]) == 1


def test_aurora_cluster_snapshot(env: Env) -> None:
    env.db_cluster()
    cfg = env.config([{"name": "ledger", "physical": {"method": "aurora_cluster", "db_cluster_id": "shop-cluster"}}])
    svc = env.services(cfg)
    outcome = start_snapshot(svc, "ledger", NOW, trigger="on-demand")
    assert outcome.status == "STARTED"
    again = start_snapshot(svc, "ledger", NOW)
    assert again.status == "SKIPPED"
    snaps = env.rds().describe_db_cluster_snapshots(SnapshotType="manual")["DBClusterSnapshots"]
    assert [s["DBClusterSnapshotIdentifier"] for s in snaps] == ["lifeboat-ledger-20261129-030000"]
    tags = {t["Key"]: t["Value"] for t in snaps[0]["TagList"]}
    assert tags["lifeboat:managed"] == "true" and tags["lifeboat:trigger"] == "on-demand"
    [entry] = list_snapshots(svc, "ledger")
    assert (entry.backup_id, entry.method, entry.status, entry.retention_class) == (
        "snapshot:ledger:20261129T030000Z",
        "aurora_cluster",
        "SUCCEEDED",
        "yearly",
    )


def test_quota_error_says_what_to_do(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.db_instance()
    svc = env.services(env.config([SHOP_RDS]))
    start_snapshot(svc, "shop", NOW)
    monkeypatch.setenv("MOTO_RDS_SNAPSHOT_LIMIT", "1")  # moto runs in this process and reads it per call
    with pytest.raises(SnapshotError) as err:
        start_snapshot(svc, "shop", NOW + timedelta(days=1))
    message = str(err.value)
    assert "quota" in message and "100 manual DB snapshots per region" in message
    assert "1 of them are pg-lifeboat's" in message
    assert "lifeboat prune" in message and "Service Quotas" in message
    assert len(env.metrics.named("SnapshotFailed")) == 1


def test_missing_instance(env: Env) -> None:
    svc = env.services(env.config([SHOP_RDS]))
    with pytest.raises(SnapshotError, match="'shop-db' does not exist in us-east-1"):
        start_snapshot(svc, "shop", NOW)


def test_sweep_observes_creating_then_available_then_failed(env: Env) -> None:
    env.db_instance()
    svc = env.services(env.config([SHOP_RDS]))
    start_snapshot(svc, "shop", NOW)
    start_snapshot(svc, "shop", NOW + timedelta(days=1))
    state = {"lifeboat-shop-20261129-030000": "creating", "lifeboat-shop-20261130-030000": "creating"}

    # moto stamps SnapshotCreateTime with the real clock; the test owns both clocks, so it sets that too.
    created = {
        "lifeboat-shop-20261129-030000": NOW + timedelta(minutes=1),
        "lifeboat-shop-20261130-030000": NOW + timedelta(days=1, minutes=1),
    }

    def edit(parsed: dict[str, Any]) -> None:
        for snap in parsed.get("DBSnapshots", []):
            snap["Status"] = state.get(snap["DBSnapshotIdentifier"], snap["Status"])
            snap["SnapshotCreateTime"] = created.get(snap["DBSnapshotIdentifier"], snap.get("SnapshotCreateTime"))

    after_call(env.rds(), "DescribeDBSnapshots", edit)
    env.metrics.calls.clear()
    report = sweep(svc)
    assert report.pending == ["snapshot:shop:20261130T030000Z@us-east-1", "snapshot:shop:20261129T030000Z@us-east-1"]
    assert report.completed == [] and "lifeboat:observed" not in env.rds_tags("lifeboat-shop-20261129-030000")

    state["lifeboat-shop-20261129-030000"] = "available"
    state["lifeboat-shop-20261130-030000"] = "failed"
    env.clock.now = NOW + timedelta(days=1, hours=1)
    env.metrics.calls.clear()
    report = sweep(svc)
    assert report.completed == ["snapshot:shop:20261129T030000Z@us-east-1"]
    assert report.failed == ["snapshot:shop:20261130T030000Z@us-east-1"]
    assert env.rds_tags("lifeboat-shop-20261129-030000")["lifeboat:observed"] == "done"
    assert env.rds_tags("lifeboat-shop-20261130-030000")["lifeboat:observed"] == "failed"
    names = sorted(c[0] for c in env.metrics.calls)
    assert names == ["ManagedSnapshots", "SnapshotDuration", "SnapshotFailed", "SnapshotSucceeded"]
    assert env.metrics.named("ManagedSnapshots")[0][1:] == (2, "Count", "shop")
    [(_, seconds, unit, target)] = env.metrics.named("SnapshotDuration")
    # from the snapshot's creation (NOW + 1 min) to the sweep that saw it available (NOW + 1 day 1 h)
    expected = (timedelta(days=1, hours=1) - timedelta(minutes=1)).total_seconds()
    assert (unit, target, seconds) == ("Seconds", "shop", expected)

    env.metrics.calls.clear()
    report = sweep(svc)  # nothing new: marked snapshots are not reported twice
    assert (report.completed, report.failed, report.pending) == ([], [], [])
    assert [c[0] for c in env.metrics.calls] == ["ManagedSnapshots"]


def test_sweep_emits_emf(env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With the real recorder: one EMF document per metric, dimensioned by target."""
    monkeypatch.undo()
    env.db_instance()
    svc = env.services(env.config([SHOP_RDS]))
    start_snapshot(svc, "shop", NOW)
    capsys.readouterr()
    sweep(svc)
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emitted = {d["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]: d for d in docs if "_aws" in d}
    assert {"SnapshotSucceeded", "SnapshotDuration", "ManagedSnapshots"} <= set(emitted)
    succeeded = emitted["SnapshotSucceeded"]
    assert succeeded["target"] == "shop" and succeeded["SnapshotSucceeded"] == [1.0]


def copy_config(env: Env, kms: str | None) -> Any:
    physical = {**SHOP_RDS["physical"], "copy_to_region": DEST}  # type: ignore[dict-item]
    if kms:
        physical["copy_kms_key_id"] = kms
    return env.config([{**SHOP_RDS, "physical": physical}])


def test_cross_region_copy_with_kms(env: Env) -> None:
    env.db_instance(kms_key=env.kms_key(SOURCE))
    dest_key = env.kms_key(DEST)
    svc = env.services(copy_config(env, dest_key))
    start_snapshot(svc, "shop", NOW)
    # moto finishes copies at once; a real one takes a while, so the first sweep sees it "copying"
    copying = after_call(
        env.rds(DEST),
        "DescribeDBSnapshots",
        lambda parsed: [s.update(Status="copying") for s in parsed.get("DBSnapshots", [])],
    )
    report = sweep(svc)
    copying()
    assert report.completed == ["snapshot:shop:20261129T030000Z@us-east-1"]
    assert report.copies_started == ["lifeboat-shop-20261129-030000@eu-west-1"]
    assert report.pending == ["snapshot:shop:20261129T030000Z@eu-west-1"]
    [copy] = env.rds(DEST).describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
    assert copy["DBSnapshotIdentifier"] == "lifeboat-shop-20261129-030000"
    assert copy["KmsKeyId"] == dest_key and copy["Encrypted"]
    tags = env.rds_tags("lifeboat-shop-20261129-030000", DEST)
    source_arn = f"arn:aws:rds:{SOURCE}:123456789012:snapshot:lifeboat-shop-20261129-030000"
    assert tags["lifeboat:copy-of"] == source_arn
    assert tags["lifeboat:target"] == "shop" and tags["retention"] == "yearly" and "lifeboat:observed" not in tags

    report = sweep(svc)  # the copy finished (moto: at once); the source is not copied again
    assert report.copies_completed == ["snapshot:shop:20261129T030000Z@eu-west-1"]
    assert report.copies_started == [] and len(env.metrics.named("SnapshotCopied")) == 1
    assert env.rds_tags("lifeboat-shop-20261129-030000", DEST)["lifeboat:observed"] == "done"

    # starting the same copy again (e.g. after a crash between copy and tagging) is success
    [source_set] = [s for s in _sets(svc, SOURCE)]
    assert RDS_INSTANCE.copy(svc, source_set, DEST, dest_key) == []
    entries = list_snapshots(svc, "shop")
    assert [(e.region, e.copy_of is not None) for e in entries] == [(SOURCE, False), (DEST, True)]
    assert entries[0].size_gib == 20 and entries[0].size == 20 * 1024**3


def test_encrypted_copy_needs_a_destination_key(env: Env) -> None:
    env.db_instance(kms_key=env.kms_key(SOURCE))
    svc = env.services(copy_config(env, None))
    start_snapshot(svc, "shop", NOW)
    report = sweep(svc)
    assert report.completed == [] and len(report.errors) == 1
    assert "needs a KMS key in eu-west-1" in report.errors[0] and "copy_kms_key_id" in report.errors[0]
    assert len(env.metrics.named("SnapshotFailed")) == 1
    # the source stays unmarked, so the sweep retries once the key is configured
    assert "lifeboat:observed" not in env.rds_tags("lifeboat-shop-20261129-030000")
    fixed = env.services(copy_config(env, env.kms_key(DEST)))
    assert sweep(fixed).copies_started == ["lifeboat-shop-20261129-030000@eu-west-1"]


def _sets(svc: Any, region: str) -> Any:
    return Inventory(svc).sets(RDS_INSTANCE, region, "shop")
