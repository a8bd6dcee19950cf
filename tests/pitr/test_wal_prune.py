"""`lifeboat wal-prune` over two weeks of daily base backups in moto (server mode, an Object Lock bucket), with a
fixed clock: the bases the policy drops go (their manifest first), a base with a lock stays with the WAL it needs,
WAL before the oldest kept base goes unless locked, history files by ancestry, old gap records; --dry-run deletes
nothing and says the same. Objects are written the way wal-stream and base-backup write them (WalArchive), without
PostgreSQL: 1 MiB segments keep it fast."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.adapters.s3 import S3Store
from chalicelib.cli import main as lifeboat_main
from chalicelib.config import RetentionPolicy, Settings
from chalicelib.pitr import commands
from chalicelib.pitr.basebackup import MANIFEST, BaseBackup, BaseLayout, BaseObject, list_bases
from chalicelib.pitr.prune import prune_wal
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import Gap, Segment, WalLayout, format_lsn
from chalicelib.scheduling.retention import KIND_TAG, WAL_PARTIAL_KIND, lifecycle_rules
from devstack.aws import MotoServer
from devstack.local import target, write_config

BUCKET = "lifeboat-pitr-prune"
MiB = 1024 * 1024
SIZE = 1 * MiB
T0 = datetime(2026, 3, 16, 3, 0, tzinfo=UTC)  # a Monday
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
POLICY = {"daily_days": 3, "weekly_weeks": 3, "monthly_months": 0, "yearly_years": 0, "keep_last": 1}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(moto_server: MotoServer) -> Iterator[S3Store]:
    moto_server.reset()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    yield S3Store(s3, BUCKET)


def seg(number: int, timeline: int = 1) -> Segment:
    return Segment(timeline, number, SIZE)


def put_base(store: S3Store, day: int) -> BaseBackup:
    """A base started on day `day` at segment 2*day (needs 2*day .. 2*day+1), written as run_base_backup does."""
    started = T0 + timedelta(days=day)
    bid = started.strftime("%Y%m%dT%H%M%SZ")
    folder = BaseLayout("", "shop").folder(bid)
    tags = {"kind": "base", "target": "shop"}
    data = store.put_bytes(folder + "base.tar.zst", b"tar", tags=tags)
    store.put_bytes(folder + "backup_manifest", b"{}", tags=tags)
    base = BaseBackup(
        target="shop",
        backup_id=bid,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        server_version_num=150000,
        timeline=1,
        start_lsn=format_lsn(seg(2 * day).start_lsn + 40),
        end_lsn=format_lsn(seg(2 * day + 1).start_lsn + 40),
        segment_size=SIZE,
        tar_size=3,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key=data.key, size=3, sha256=data.sha256)],
        backup_label="",
    )
    store.put_bytes(folder + MANIFEST, base.model_dump_json().encode(), tags=tags)
    return base


def segments(store: S3Store) -> dict[str, Any]:
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="wal/shop/").get("Contents", [])
    return {o["Key"].removeprefix("wal/shop/"): o for o in listed}


def build(store: S3Store, clock: Clock) -> list[BaseBackup]:
    archive = WalArchive(store, WalLayout("", "shop"), lock_mode="GOVERNANCE", lock_days=0, clock=clock)
    bases = [put_base(store, day) for day in range(16)]  # 03-16 .. 03-31
    for number in range(0, 32):
        archive.put_segment(seg(number), bytes(SIZE))
    archive.put_partial(seg(32), bytes(SIZE))
    archive.put_partial(seg(3), bytes(SIZE))  # left behind by an old restart: stale
    archive.put_history(2, b"1\t0/200000\tno recovery target specified\n")  # a branch that died long ago
    archive.put_segment(seg(2, timeline=2), bytes(SIZE))
    clock.now = T0 + timedelta(days=1)
    archive.record_gap(Gap(seg(1).name, seg(3).name, "slot dropped"))
    clock.now = NOW
    store.lock(bases[2].objects[0].key, "GOVERNANCE", NOW + timedelta(days=1))  # keeps base 03-18 and its WAL
    store.lock(WalLayout("", "shop").segment_key(seg(1)), "GOVERNANCE", NOW + timedelta(days=3))
    store.lock(WalLayout("", "shop").segment_key(seg(2)), "GOVERNANCE", NOW - timedelta(days=1))  # expired
    return bases


def policy() -> RetentionPolicy:
    return RetentionPolicy.model_validate(POLICY)


def test_prune_keeps_what_the_kept_bases_need(store: S3Store) -> None:
    bases = build(store, Clock(T0))
    before = segments(store)

    dry = prune_wal(store, "", "shop", policy(), NOW, dry_run=True)
    assert segments(store) == before and len(list_bases(store, BaseLayout("", "shop"))) == 16
    report = prune_wal(store, "", "shop", policy(), NOW)
    assert (dry.deleted_bases, dry.deleted_wal, dry.deleted_gaps, dry.locked) == (
        report.deleted_bases,
        report.deleted_wal,
        report.deleted_gaps,
        report.locked,
    )
    assert not report.errors

    kept_days = sorted(b.started_at.day for b in list_bases(store, BaseLayout("", "shop")))
    assert kept_days == [18, 22, 29, 30, 31]  # the locked one, week 12's newest, the last 3 days
    assert report.kept_bases[bases[2].backup_id] == "locked until 2026-04-01T12:00:00+00:00"
    assert report.kept_bases[bases[6].backup_id] == "weekly 2026-W12"
    assert report.cutoff == seg(4).name  # the locked base starts at segment 4
    gone = sorted(set(before) - set(segments(store)))
    assert gone == sorted(
        [f"00000001/{seg(n).name}" for n in (0, 2, 3)]  # 1 is locked; 2's lock has expired
        + [f"00000001/{seg(3).name}.partial", f"00000002/{seg(2, 2).name}", "00000002/00000002.history"]
        + [f"gaps/{seg(1).name}-{seg(3).name}.json"]
    )
    assert report.locked == {
        f"wal/shop/00000001/{seg(1).name}": "locked until 2026-04-03T12:00:00+00:00",
        bases[2].objects[0].key: "locked until 2026-04-01T12:00:00+00:00",
    }
    # A dropped base left nothing behind, its manifest included.
    folder = BaseLayout("", "shop").folder(bases[3].backup_id)
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=folder)
    # Once the policy keeps nothing older, a second pass finds nothing more to do.
    again = prune_wal(store, "", "shop", policy(), NOW)
    assert (again.deleted_bases, again.deleted_wal, again.deleted_gaps) == ([], [], [])


def test_the_partial_objects_carry_the_tag_the_lifecycle_rule_expires(store: S3Store) -> None:
    archive = WalArchive(store, WalLayout("pg/", "shop"))
    archive.put_partial(seg(7), bytes(SIZE))
    settings = Settings(bucket=BUCKET, prefix="pg/")
    rule = next(r for r in lifecycle_rules(settings, "pg/failed/") if "wal" in r["ID"])
    key = WalLayout("pg/", "shop").partial_key(seg(7))
    tags = {t["Key"]: t["Value"] for t in boto3.client("s3").get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}
    wanted = {t["Key"]: t["Value"] for t in rule["Filter"]["And"]["Tags"]}
    assert key.startswith(rule["Filter"]["And"]["Prefix"])
    assert tags.items() >= wanted.items() == {KIND_TAG: WAL_PARTIAL_KIND}.items()
    finished = WalLayout("pg/", "shop").segment_key(seg(6))
    archive.put_segment(seg(6), bytes(SIZE))
    other = boto3.client("s3").get_object_tagging(Bucket=BUCKET, Key=finished)["TagSet"]
    assert {"Key": KIND_TAG, "Value": WAL_PARTIAL_KIND} not in other, "finished segments must not expire with it"


def test_wal_prune_command_dry_run(store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(store, Clock(T0))
    entry = target("shop", 5432, "arn:aws:secretsmanager:us-east-1:123456789012:secret:lifeboat/shop-AbCdEf")
    entry["wal"] = {"pitr_days": 30}  # no kept base is that old: all WAL from the oldest (test_prune_window_s3: less)
    config = write_config(tmp_path / "c.json", BUCKET, [entry], retention_policies={"default": POLICY})
    monkeypatch.setattr(commands, "now_utc", lambda: NOW)
    out = io.StringIO()
    assert lifeboat_main(["--config", str(config), "wal-prune", "shop", "--dry-run"], out) == 0, out.getvalue()
    assert out.getvalue().startswith(f"shop: would delete 11 base backup(s), 6 WAL file(s) (before {seg(4).name})")
    assert f"kept wal/shop/00000001/{seg(1).name}: locked until 2026-04-03" in out.getvalue()
    assert len(list_bases(store, BaseLayout("", "shop"))) == 16
