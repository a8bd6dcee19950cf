"""`wal-prune` in moto (an Object Lock bucket, fixed clock) never deletes the full base an incremental that stays
was taken against: neither for an incremental the policy keeps nor for one kept only by its Object Lock."""

from __future__ import annotations

from datetime import timedelta

from chalicelib.adapters.s3 import S3Store
from chalicelib.config import RetentionPolicy
from chalicelib.pitr.basebackup import MANIFEST, BaseBackup, BaseLayout, BaseObject, lineage, list_bases
from chalicelib.pitr.prune import prune_wal
from chalicelib.pitr.walnames import format_lsn
from tests.pitr.test_wal_prune import NOW, T0, seg, store

__all__ = ["store"]  # the fixture

LAYOUT = BaseLayout("", "shop")
ONE_DAY = RetentionPolicy(daily_days=1, weekly_weeks=0, monthly_months=0, yearly_years=0, keep_last=1)


def put_base(s3: S3Store, day: int, parent: BaseBackup | None = None) -> BaseBackup:
    started = T0 + timedelta(days=day)
    bid = started.strftime("%Y%m%dT%H%M%SZ")
    folder = LAYOUT.folder(bid)
    data = s3.put_bytes(folder + "base.tar.zst", b"tar")
    base = BaseBackup(
        target="shop",
        backup_id=bid,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        server_version_num=170011,
        timeline=1,
        start_lsn=format_lsn(seg(2 * day).start_lsn + 40),
        end_lsn=format_lsn(seg(2 * day + 1).start_lsn + 40),
        segment_size=seg(0).segment_size,
        tar_size=3,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key=data.key, size=3, sha256=data.sha256)],
        backup_label="",
        **lineage(parent),
    )
    s3.put_bytes(folder + MANIFEST, base.model_dump_json().encode())
    return base


def test_a_locked_or_kept_incrementals_parent_stays(store: S3Store) -> None:
    full = put_base(store, 0)
    locked = put_base(store, 1, full)  # kept only by its lock
    other = put_base(store, 5)  # a full base the policy drops
    full2 = put_base(store, 14)
    newest = put_base(store, 15, full2)  # kept by the policy (the last day)
    store.lock(locked.objects[0].key, "GOVERNANCE", NOW + timedelta(days=1))

    report = prune_wal(store, "", "shop", ONE_DAY, NOW)
    assert not report.errors
    left = {b.backup_id for b in list_bases(store, LAYOUT)}
    assert left == {full.backup_id, locked.backup_id, full2.backup_id, newest.backup_id}
    assert report.deleted_bases == [other.backup_id]
    assert report.kept_bases[full.backup_id] == f"in the chain of kept incremental base(s) {locked.backup_id}"
    assert report.kept_bases[full2.backup_id] == f"in the chain of kept incremental base(s) {newest.backup_id}"
    assert report.kept_bases[locked.backup_id].startswith("locked until")
