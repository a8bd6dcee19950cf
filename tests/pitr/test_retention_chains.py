"""Retention and incremental chains, pure: the policy keeps (and locks) a kept incremental's whole chain, the window
base and the recoverable window never rest on a broken chain; the WAL upload lock follows wal.pitr_days and the
base schedule, not the longest retention class."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chalicelib.adapters.s3 import ObjectInfo
from chalicelib.config import RetentionPolicy
from chalicelib.pitr.basebackup import BaseBackup, BaseObject, lineage
from chalicelib.pitr.protect import NO_SCHEDULE_MARGIN_DAYS, base_locks, wal_lock_days
from chalicelib.pitr.prune import bases_to_keep, plan_wal, window_base
from chalicelib.pitr.settings import Wal
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, WalLayout, format_lsn
from chalicelib.pitr.window import recoverable_window
from chalicelib.scheduling.retention import KEEP_LOCK_DAYS

T0 = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # a Monday
NOW = T0 + timedelta(days=13, hours=9)
LAYOUT = WalLayout("", "shop")
# Dailies for 2 days, nothing weekly: a full base on day 0 and incrementals after it age out of the policy.
TWO_DAYS = RetentionPolicy(daily_days=2, weekly_weeks=0, monthly_months=0, yearly_years=0, keep_last=1)


def base(backup_id: str, day: int, parent: BaseBackup | None = None) -> BaseBackup:
    """A PostgreSQL 17 base on day `day` needing segments 10*day+2 .. 10*day+3."""
    started = T0 + timedelta(days=day)
    return BaseBackup(
        target="shop",
        backup_id=backup_id,
        started_at=started,
        finished_at=started + timedelta(minutes=10),
        server_version_num=170011,
        timeline=1,
        start_lsn=format_lsn(Segment(1, 10 * day + 2).start_lsn + 40),
        end_lsn=format_lsn(Segment(1, 10 * day + 3).start_lsn + 40),
        segment_size=Segment(1, 0).segment_size,
        tar_size=1,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key="k", size=1, sha256="0" * 64)],
        backup_label="",
        **lineage(parent),
    )


def chain() -> list[BaseBackup]:
    """A full base `f` on day 0, incrementals i1 .. i13 on days 1 .. 13, each against the one before."""
    bases = [base("f", 0)]
    for day in range(1, 14):
        bases.append(base(f"i{day}", day, bases[-1]))
    return bases


def wal(number: int) -> WalEntry:
    seg = Segment(1, number)
    key = LAYOUT.segment_key(seg)
    return WalEntry("segment", key, seg, 1, ObjectInfo(key, 1, T0 + timedelta(days=number / 10)))


def test_a_kept_incremental_keeps_its_whole_chain() -> None:
    bases = chain()
    keep = bases_to_keep(bases, TWO_DAYS, NOW)
    # The policy alone keeps the last two dailies; their chains reach back to the full base of day 0.
    assert set(keep) == {b.backup_id for b in bases}
    assert "daily" in keep["i13"] and "daily" in keep["i12"]
    assert keep["f"] == keep["i11"] == "in the chain of kept incremental base(s) i12, i13"
    full_bases = [base(f"f{day}", day) for day in range(14)]  # without chains: only the policy's choice
    assert set(bases_to_keep(full_bases, TWO_DAYS, NOW)) == {"f12", "f13"}


def test_an_ancestor_is_locked_as_long_as_its_longest_locked_descendant() -> None:
    bases = chain()
    locks = base_locks(bases, TWO_DAYS, NOW)
    newest = locks["i13"]
    assert newest == NOW + timedelta(days=KEEP_LOCK_DAYS)  # the newest keep_last base's rolling lock
    assert all(locks[b.backup_id] == newest for b in bases)  # every ancestor: as long as the newest child
    full_bases = [base(f"f{day}", day) for day in range(14)]
    assert set(base_locks(full_bases, TWO_DAYS, NOW)) == {"f12", "f13"}


def test_the_window_base_is_never_a_broken_incremental() -> None:
    bases = chain()[:4]  # f, i1, i2, i3
    broken = [b for b in bases if b.backup_id != "i1"]  # i2 and i3 lost a link
    entries = [wal(n) for n in range(2, 40)]
    assert window_base(broken, T0 + timedelta(days=3)).backup_id == "f"
    plan = plan_wal(broken, entries, {}, [], T0 + timedelta(days=3))
    assert plan.window_base == "f" and plan.cutoff == broken[0].start_segment and plan.wal == []
    assert window_base(bases, T0 + timedelta(days=3)).backup_id == "i3"  # whole: the newest old enough


def test_the_window_does_not_count_an_incremental_with_a_broken_chain() -> None:
    bases = chain()[:4]
    entries = [wal(n) for n in range(2, 40)]
    whole = recoverable_window("shop", bases, entries, [])
    assert [s.base_id for s in whole.spans] == ["f", "i1", "i2", "i3"]
    broken = recoverable_window("shop", [b for b in bases if b.backup_id != "i1"], entries, [])
    assert [s.base_id for s in broken.spans] == ["f"]
    assert set(broken.unusable_bases) == {"i2", "i3"} and "needs base i1" in broken.unusable_bases["i3"]
    # Without its full base no span at all: the window is empty, not "restorable from i2".
    orphans = recoverable_window("shop", bases[1:], entries, [])
    assert orphans.empty and set(orphans.unusable_bases) == {"i1", "i2", "i3"}


def test_the_wal_upload_lock_follows_the_window_not_the_longest_class() -> None:
    yearly = RetentionPolicy(daily_days=7, weekly_weeks=4, monthly_months=12, yearly_years=3, keep_last=1)
    assert wal_lock_days(yearly) == 3 * 366  # no wal section: the longest class, as before
    assert wal_lock_days(yearly, Wal(pitr_days=7, base_schedule="cron(0 3 * * ? *)")) == 7 + 1
    assert wal_lock_days(yearly, Wal(pitr_days=7, base_schedule="rate(3 days)")) == 7 + 3
    assert wal_lock_days(yearly, Wal(pitr_days=7, base_schedule="rate(36 hours)")) == 7 + 2  # whole days, up
    assert wal_lock_days(yearly, Wal(pitr_days=14)) == 14 + NO_SCHEDULE_MARGIN_DAYS
    short = RetentionPolicy(daily_days=3, weekly_weeks=0, monthly_months=0, yearly_years=0, keep_last=1)
    # Never longer than the longest class (at least KEEP_LOCK_DAYS): the window cannot outlive the bases.
    assert wal_lock_days(short, Wal(pitr_days=90, base_schedule="rate(1 day)")) == KEEP_LOCK_DAYS
