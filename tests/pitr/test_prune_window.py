"""The retention window (wal.pitr_days) over ~400 days of daily base backups kept by a GFS policy (daily, monthly,
yearly): outside the window each kept base keeps only its own WAL, the window's WAL is whole, gap records go only
when wholly before the window; the recoverable window then says which older bases are restore points. Pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.adapters.s3 import ObjectInfo
from chalicelib.config import RetentionPolicy
from chalicelib.pitr.basebackup import BaseBackup, BaseObject
from chalicelib.pitr.prune import bases_to_keep, plan_wal, window_base
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, WalLayout, format_lsn
from chalicelib.pitr.window import describe_window, recoverable_window

T0 = datetime(2024, 12, 1, 3, 0, tzinfo=UTC)
DAYS = 400
PER_DAY = 10  # segments a day; base `day` needs day*10+2 .. day*10+3
NOW = T0 + timedelta(days=DAYS - 1, hours=9)
POLICY = RetentionPolicy(daily_days=10, weekly_weeks=0, monthly_months=12, yearly_years=3, keep_last=1)
LAYOUT = WalLayout("", "shop")


def base(day: int) -> BaseBackup:
    started = T0 + timedelta(days=day)
    return BaseBackup(
        target="shop",
        backup_id=started.strftime("%Y%m%dT%H%M%SZ"),
        started_at=started,
        finished_at=started + timedelta(minutes=10),
        server_version_num=150000,
        timeline=1,
        start_lsn=format_lsn(Segment(1, day * PER_DAY + 2).start_lsn + 40),
        end_lsn=format_lsn(Segment(1, day * PER_DAY + 3).start_lsn + 40),
        segment_size=Segment(1, 0).segment_size,
        tar_size=1,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key="k", size=1, sha256="0" * 64)],
        backup_label="",
    )


def uploaded(number: int) -> datetime:
    return T0 + timedelta(days=number / PER_DAY)


def wal(number: int, partial: bool = False) -> WalEntry:
    seg = Segment(1, number)
    key = LAYOUT.partial_key(seg) if partial else LAYOUT.segment_key(seg)
    return WalEntry("partial" if partial else "segment", key, seg, 1, ObjectInfo(key, 1, uploaded(number)))


def gap(after: int, before: int, detected: datetime) -> dict[str, Any]:
    return {
        "after": Segment(1, after).name,
        "before": Segment(1, before).name,
        "reason": "slot dropped",
        "detected_at": detected.isoformat(),
    }


def a_year() -> tuple[list[BaseBackup], list[WalEntry]]:
    bases = [base(day) for day in range(DAYS)]
    newest = DAYS * PER_DAY
    return bases, [*(wal(n) for n in range(newest)), wal(newest, partial=True)]


def kept_bases() -> list[BaseBackup]:
    bases, _ = a_year()
    keep = bases_to_keep(bases, POLICY, NOW)
    return [b for b in bases if b.backup_id in keep]


def test_outside_the_window_each_kept_base_keeps_only_its_own_wal() -> None:
    _, entries = a_year()
    kept = kept_bases()
    assert len(kept) >= 10 + 11 and kept[0].started_at < NOW - timedelta(days=365)  # yearly, monthly, daily
    window_from = NOW - timedelta(days=7)
    plan = plan_wal(kept, entries, {}, [], window_from)
    first = window_base(kept, window_from)
    assert plan.window_base == first.backup_id and plan.cutoff == first.start_segment
    assert window_from - timedelta(days=1) < first.started_at <= window_from  # the window covers pitr_days ...
    assert not [b for b in kept if window_from >= b.started_at > first.started_at]  # ... and not more than needed
    older = [b for b in kept if b.started_at < first.started_at]
    assert (
        plan.restore_points == sorted(b.backup_id for b in older) and len(older) == 1 + 10 + 2
    )  # 2024, 2025-02 .. 11, two dailies
    deleted = {e.segment.number for e in plan.wal if e.segment}
    kept_numbers = {e.segment.number for e in entries if e.segment} - deleted
    own = {n for b in older for n in (b.start_segment.number, b.end_segment.number)}
    assert {n for n in kept_numbers if n < first.start_segment.number} == own  # two segments a restore point
    assert set(range(first.start_segment.number, DAYS * PER_DAY + 1)) <= kept_numbers  # the window's WAL: whole
    assert len(kept_numbers) < 2 * len(older) + 9 * PER_DAY  # not a year of WAL: 8 days and 22 segments
    everything = plan_wal(kept, entries, {}, [])  # without pitr_days: all WAL from the oldest kept base, as before
    assert everything.cutoff == kept[0].start_segment and everything.restore_points == []
    assert {e.segment.number for e in everything.wal if e.segment} == set(range(kept[0].start_segment.number))


def test_gap_records_go_only_when_wholly_before_the_window() -> None:
    _, entries = a_year()
    kept = kept_bases()
    cutoff = window_base(kept, NOW - timedelta(days=7)).start_segment.number
    old = gap(1000, 1003, uploaded(1003))
    across = gap(cutoff - 2, cutoff, uploaded(cutoff))  # reaches the window's first segment
    inside = gap(cutoff + 30, cutoff + 35, uploaded(cutoff + 35))
    plan = plan_wal(kept, entries, {}, [old, across, inside], NOW - timedelta(days=7))
    assert plan.gaps == [f"{old['after']}-{old['before']}"]


def test_the_window_after_pruning_lists_older_bases_as_restore_points() -> None:
    _, entries = a_year()
    kept = kept_bases()
    window_from = NOW - timedelta(days=7)
    plan = plan_wal(kept, entries, {}, [], window_from)
    gone = {e.key for e in plan.wal}
    left = [e for e in entries if e.key not in gone]
    window = recoverable_window("shop", kept, left, [])
    first = next(b for b in kept if b.backup_id == plan.window_base)
    assert window.earliest == first.finished_at and window.latest == uploaded(DAYS * PER_DAY)
    assert not window.broken and window.restorable_until == window.latest
    assert [s.base_id for s in window.spans] == [b.backup_id for b in kept if b.started_at >= first.started_at]
    assert all(s.ended_by is None for s in window.spans)
    assert [p.base_id for p in window.restore_points] == plan.restore_points
    yearly = window.restore_points[0]
    assert yearly.at == kept[0].finished_at and yearly.lsn == kept[0].end_lsn
    document = window.as_dict()
    assert set(document) >= {"target", "earliest", "latest", "broken", "restorable_until", "spans", "gaps"}
    assert document["restore_points"][0] == {"base": kept[0].backup_id, "at": yearly.at.isoformat(), "lsn": yearly.lsn}
    text = describe_window(window)
    assert f"restore point {kept[0].backup_id}" in text and f"recover --lsn {kept[0].end_lsn}" in text
    before = recoverable_window("shop", kept, entries, [])  # nothing pruned: every base opens a span
    assert before.restore_points == [] and before.earliest == kept[0].finished_at


def test_a_hole_no_gap_explains_ends_a_span_like_a_gap() -> None:
    entries = [wal(n) for n in range(2, 9)] + [wal(n) for n in range(12, 15)]  # 9 .. 11 deleted by hand
    window = recoverable_window("shop", [base(0)], entries, [])
    assert window.broken and window.restore_points == []
    assert (
        window.spans[0].end == uploaded(8) and window.spans[0].ended_by == f"{Segment(1, 8).name}-{Segment(1, 12).name}"
    )
    point = recoverable_window("shop", [base(0)], [wal(2), wal(3), wal(20)], [])  # its own WAL, then nothing
    assert point.empty and [p.base_id for p in point.restore_points] == [base(0).backup_id]
    assert "no point-in-time window" in describe_window(point)


def test_a_gap_recorded_before_the_wal_after_it_is_uploaded_breaks_the_window_at_once() -> None:
    entries = [wal(n) for n in range(2, 8)]  # the receiver records the gap before it uploads segment 12
    window = recoverable_window("shop", [base(0)], entries, [gap(7, 12, uploaded(7) + timedelta(minutes=1))])
    assert window.broken and window.restorable_until == uploaded(7) == window.latest
