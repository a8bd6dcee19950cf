"""The pure parts of WAL retention and the recoverable window: which bases a policy keeps, which WAL and history
files they still need, where a gap breaks the window and how a newer base heals it; the wal-partial lifecycle rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.adapters.s3 import ObjectInfo
from chalicelib.config import RetentionPolicy, Settings
from chalicelib.pitr.basebackup import BaseBackup, BaseObject
from chalicelib.pitr.prune import bases_to_keep, history_parents, needed_timelines, plan_wal
from chalicelib.pitr.recover import RecoveryTarget, gap_affects, wal_problems
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, WalLayout, format_lsn
from chalicelib.pitr.window import describe_window, recoverable_window
from chalicelib.scheduling.retention import KIND_TAG, WAL_PARTIAL_KIND, lifecycle_rules

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
LAYOUT = WalLayout("", "shop")


def base(day: int, start: int, timeline: int = 1, length: int = 1) -> BaseBackup:
    """A base started `day` days after T0 at segment `start`, needing WAL up to segment start + length."""
    started = T0 + timedelta(days=day)
    return BaseBackup(
        target="shop",
        backup_id=started.strftime("%Y%m%dT%H%M%SZ"),
        started_at=started,
        finished_at=started + timedelta(minutes=10),
        server_version_num=150000,
        timeline=timeline,
        start_lsn=format_lsn(Segment(timeline, start).start_lsn + 40),
        end_lsn=format_lsn(Segment(timeline, start + length).start_lsn + 40),
        segment_size=Segment(1, 0).segment_size,
        tar_size=1,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key="k", size=1, sha256="0" * 64)],
        backup_label="",
    )


def wal(number: int, at: datetime, timeline: int = 1, kind: str = "segment") -> WalEntry:
    seg = Segment(timeline, number)
    key = LAYOUT.partial_key(seg) if kind == "partial" else LAYOUT.segment_key(seg)
    return WalEntry("partial" if kind == "partial" else "segment", key, seg, timeline, ObjectInfo(key, 1, at))


def history(timeline: int) -> WalEntry:
    key = LAYOUT.history_key(timeline)
    return WalEntry("history", key, None, timeline, ObjectInfo(key, 1, T0))


def gap(after: int, before: int, detected: datetime) -> dict[str, Any]:
    return {
        "after": Segment(1, after).name,
        "before": Segment(1, before).name,
        "reason": "slot dropped",
        "detected_at": detected.isoformat(),
    }


def hours(h: float) -> datetime:
    return T0 + timedelta(hours=h)


# --- the window ---------------------------------------------------------------------------------------------------


def test_window_runs_from_the_oldest_base_to_the_newest_wal_partial_included() -> None:
    bases = [base(0, 2), base(1, 8)]
    entries = [wal(n, hours(n)) for n in range(2, 12)] + [wal(12, hours(30), kind="partial")]
    window = recoverable_window("shop", bases, entries, [])
    assert window.earliest == bases[0].finished_at
    assert window.latest == window.restorable_until == hours(30)
    assert not window.broken and window.newest_wal == Segment(1, 12).name
    assert [s.base_id for s in window.spans] == [b.backup_id for b in bases]


def test_a_gap_breaks_the_window_until_a_newer_base_exists() -> None:
    bases = [base(0, 2)]
    entries = [wal(n, hours(n)) for n in range(2, 8)] + [wal(n, hours(n + 20)) for n in range(12, 15)]
    the_gap = gap(7, 12, hours(32))
    broken = recoverable_window("shop", bases, entries, [the_gap])
    assert broken.broken and broken.latest == hours(34)
    assert broken.restorable_until == hours(7), "the span ends when the archive last had WAL before the gap"
    assert broken.spans[-1].ended_by == f"{the_gap['after']}-{the_gap['before']}"
    assert broken.gaps == [the_gap]

    healed = recoverable_window("shop", [*bases, base(1, 13)], entries, [the_gap])  # started after the detection
    assert not healed.broken
    assert healed.earliest == bases[0].finished_at and healed.restorable_until == hours(34)
    assert [s.end for s in healed.spans] == [hours(7), hours(34)]
    text = describe_window(broken)
    assert "BROKEN" in text and "lifeboat base-backup shop" in text and "slot dropped" in text
    assert "BROKEN" not in describe_window(healed)
    assert (
        describe_window(recoverable_window("shop", [], [], []))
        == "shop: nothing restorable yet (no complete base backup)"
    )


def test_a_base_without_its_wal_opens_no_span_and_does_not_heal() -> None:
    entries = [wal(n, hours(n)) for n in range(2, 8)] + [wal(20, hours(40))]
    the_gap = gap(7, 20, hours(39))
    window = recoverable_window("shop", [base(0, 2), base(2, 15)], entries, [the_gap])  # 15, 16 never archived
    assert window.broken
    assert list(window.unusable_bases) == [base(2, 15).backup_id]
    assert "not in the archive" in window.unusable_bases[base(2, 15).backup_id]


def test_no_base_means_nothing_restorable() -> None:
    window = recoverable_window("shop", [], [wal(1, hours(1))], [])
    assert window.empty and window.earliest is None and not window.broken
    assert recoverable_window("shop", [], [wal(1, hours(1))], [gap(0, 1, hours(2))]).broken


def test_recover_and_the_window_agree_on_gaps() -> None:
    old, new = base(0, 2), base(2, 13)
    forward = gap(7, 12, hours(32))
    assert gap_affects(old, forward) and not gap_affects(new, forward)
    backwards = gap(40, 5, hours(36))  # a restored server streams lower numbers again; new base taken after it
    assert gap_affects(old, backwards) and not gap_affects(base(2, 6), backwards)
    entries = [wal(n, hours(n)) for n in range(2, 16)]
    assert wal_problems(old, entries, [forward], RecoveryTarget())
    assert not wal_problems(new, entries, [forward], RecoveryTarget())


# --- retention ----------------------------------------------------------------------------------------------------


def test_bases_are_kept_by_the_gfs_policy_like_snapshots() -> None:
    bases = [base(day, day * 2) for day in range(31)]  # one a day, 2026-03-01 .. 03-31
    policy = RetentionPolicy(daily_days=7, weekly_weeks=3, monthly_months=0, yearly_years=0, keep_last=1)
    keep = bases_to_keep(bases, policy, datetime(2026, 3, 31, 12, tzinfo=UTC))
    days = sorted(int(bid[6:8]) for bid in keep)
    assert days == [22, 25, 26, 27, 28, 29, 30, 31]  # the week of 03-16 by its Sunday, then the 7 days
    assert "weekly 2026-W12" in keep[base(21, 42).backup_id]


def test_wal_before_the_oldest_kept_base_goes_per_timeline_with_history_by_ancestry() -> None:
    kept = [base(5, 10, timeline=2), base(6, 14, timeline=2)]
    entries = [
        history(2),
        history(3),
        *[wal(n, hours(n)) for n in range(0, 10)],
        wal(4, hours(4), timeline=3),  # an abandoned branch, all before the cutoff
        wal(9, hours(9), timeline=2),
        *[wal(n, hours(n), timeline=2) for n in range(10, 16)],
        wal(16, hours(16), timeline=2, kind="partial"),
    ]
    parents = {2: history_parents("1\t0/9000000\tno recovery target specified\n"), 3: [1]}
    gaps = [gap(2, 4, hours(5)), gap(8, 11, hours(12))]
    plan = plan_wal(kept, entries, parents, gaps)
    assert plan.cutoff == Segment(2, 10)
    assert sorted((e.timeline, e.segment.number) for e in plan.wal if e.segment) == sorted(
        [(1, n) for n in range(10)] + [(3, 4), (2, 9)]
    )
    assert [e.timeline for e in plan.history] == [3]  # timeline 2 is a kept base's; 1 has no history file
    assert plan.gaps == [f"{Segment(1, 2).name}-{Segment(1, 4).name}"]  # the other reaches past the cutoff
    assert needed_timelines({2}, parents) == {1, 2}


def test_no_kept_base_prunes_nothing_and_the_newest_segment_always_stays() -> None:
    entries = [wal(n, hours(n)) for n in range(5)]
    assert plan_wal([], entries, {}, []).wal == []
    plan = plan_wal([base(0, 9)], entries, {}, [])  # a base whose WAL never came: the archive ends before it
    assert [e.segment.number for e in plan.wal if e.segment] == [0, 1, 2, 3]


def test_history_parents_reads_postgresql_history_files() -> None:
    text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2026-03-01 12:00:00+00\n# note\n"
    assert history_parents(text) == [1, 2]


def test_the_wal_partial_rule_is_always_there() -> None:
    settings = Settings(bucket="acme-pg-backups", prefix="pg/")
    rules = lifecycle_rules(settings, "pg/failed/")
    assert [r["ID"] for r in rules][:3] == [
        "lifeboat-abort-incomplete-uploads",
        "lifeboat-failed-records",
        "lifeboat-wal-partial-versions",
    ]
    rule = rules[2]
    assert rule["Filter"] == {"And": {"Prefix": "pg/wal/", "Tags": [{"Key": KIND_TAG, "Value": WAL_PARTIAL_KIND}]}}
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1} and "Expiration" not in rule
