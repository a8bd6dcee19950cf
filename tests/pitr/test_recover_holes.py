"""`recover` refuses a target beyond WAL that is missing without a gap record (a restore point's WAL after its end,
pruned by wal.pitr_days; segments deleted by hand), naming what is restorable, instead of letting PostgreSQL start
and die ("recovery ended before configured recovery target was reached") or promote early under --latest. Over
test_prune_window's year of daily bases after a prune; pure. The window and recover agree."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chalicelib.errors import RestoreError
from chalicelib.pitr.basebackup import BaseBackup
from chalicelib.pitr.prune import plan_wal
from chalicelib.pitr.recover import RecoveryPlan, RecoveryTarget, hole_problem, plan
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, format_lsn
from chalicelib.pitr.window import recoverable_window
from tests.pitr.test_prune_window import DAYS, NOW, PER_DAY, a_year, gap, kept_bases, uploaded


def pruned() -> tuple[list[BaseBackup], list[WalEntry]]:
    """The kept bases and the WAL left once wal-prune kept 7 days of window and the older bases' own WAL."""
    _, entries = a_year()
    kept = kept_bases()
    gone = {e.key for e in plan_wal(kept, entries, {}, [], NOW - timedelta(days=7)).wal}
    return kept, [e for e in entries if e.key not in gone]


def recover(bases: list[BaseBackup], entries: list[WalEntry], target: RecoveryTarget) -> RecoveryPlan:
    return plan(bases, entries, [], target, "lifeboat wal-fetch %f %p", lambda major: major)


def test_a_time_after_a_restore_points_end_is_refused_naming_its_lsn() -> None:
    kept, entries = pruned()
    yearly, following = kept[0], kept[1]
    between = yearly.finished_at + (following.started_at - yearly.finished_at) / 2
    with pytest.raises(RestoreError, match=rf"restore point.*--lsn {yearly.end_lsn}.*wal-window") as refused:
        recover(kept, entries, RecoveryTarget(time=between))
    assert yearly.backup_id in str(refused.value)
    assert recover(kept, entries, RecoveryTarget(lsn=yearly.end_lsn)).base == yearly  # its end: restorable
    beyond = format_lsn(Segment(1, yearly.end_segment.number + 1).start_lsn + 8)
    with pytest.raises(RestoreError, match="restore point"):
        recover([yearly], entries, RecoveryTarget(lsn=beyond))


def test_latest_from_a_restore_point_is_refused_not_stopped_early() -> None:
    kept, entries = pruned()
    with pytest.raises(RestoreError, match=rf"restore point.*--lsn {kept[0].end_lsn}"):
        recover([kept[0]], entries, RecoveryTarget())
    assert recover(kept, entries, RecoveryTarget()).base == kept[-1]  # the newest base: its WAL is whole


def test_a_hole_inside_the_window_limits_recovery_to_before_it() -> None:
    kept, entries = pruned()
    newest = kept[-1]
    first = newest.end_segment.number + 2
    holed = [e for e in entries if e.segment is None or not first <= e.segment.number < first + 3]
    before_hole = uploaded(first - 1)
    assert recover(kept, holed, RecoveryTarget(time=before_hole)).base == newest
    with pytest.raises(RestoreError, match=rf"{Segment(1, first).name} is not in the archive.*reaches") as refused:
        recover(kept, holed, RecoveryTarget(time=before_hole + timedelta(minutes=1)))
    assert before_hole.isoformat() in str(refused.value) and newest.backup_id in str(refused.value)
    with pytest.raises(RestoreError, match="no gap was recorded"):
        recover(kept, holed, RecoveryTarget())
    # A recorded gap there already says why: one refusal, the gap's, not twice.
    recorded = gap(first - 1, first + 3, uploaded(first + 3))
    assert hole_problem(newest, holed, [recorded], RecoveryTarget()) is None


def test_recover_accepts_what_the_window_promises_and_refuses_past_it() -> None:
    kept, entries = pruned()
    window = recoverable_window("shop", kept, entries, [])
    assert window.restore_points and window.spans
    for point in window.restore_points:
        base = next(b for b in kept if b.backup_id == point.base_id)
        assert recover(kept, entries, RecoveryTarget(lsn=point.lsn)).base == base
        assert hole_problem(base, entries, [], RecoveryTarget(time=point.at + timedelta(hours=1)))
    for span in window.spans:
        assert recover(kept, entries, RecoveryTarget(time=span.end)).base.backup_id == window.spans[-1].base_id
    assert window.restorable_until == uploaded(DAYS * PER_DAY)
