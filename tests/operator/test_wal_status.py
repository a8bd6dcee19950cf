"""`lifeboat status` for a streaming target: its WAL window judged at a fixed `now` (chalicelib.operator.wal_status)
and folded into the target's row (OK, STALE past 2 x flush_seconds + the margin, FAILING when a gap breaks it,
NEVER before a usable base); the JSON and the human line."""

from __future__ import annotations

import io
from datetime import timedelta

from chalicelib.operator.status import TargetFacts, overall_ok, render_table, target_status
from chalicelib.operator.wal_status import STALE_MARGIN, WalFacts, stale_after, wal_verdict
from chalicelib.pitr.walnames import Segment
from chalicelib.pitr.window import recoverable_window
from tests.pitr.test_window_retention import base, gap, hours, wal

FLUSH = 60


def window_facts(newest_wal_at_hours: float, gaps: bool = False, bases: bool = True) -> WalFacts:
    """One base (finished at 0:10) whose WAL runs to segment 6, uploaded at the given time."""
    found = [base(0, 2)] if bases else []
    entries = [wal(n, hours(0.1 * n)) for n in range(2, 6)] + [wal(6, hours(newest_wal_at_hours), kind="partial")]
    recorded = [gap(3, 4, hours(0.5))] if gaps else []
    return WalFacts(recoverable_window("shop", found, entries, recorded).as_dict(), FLUSH)


def test_the_window_is_ok_until_2_flushes_and_the_margin_have_passed() -> None:
    facts = window_facts(2)
    limit = hours(2) + stale_after(FLUSH)
    assert stale_after(FLUSH) == timedelta(seconds=120) + STALE_MARGIN
    status, problems, view = wal_verdict(facts, limit)
    assert (status, problems) == ("OK", [])
    assert view.latest == hours(2) and view.latest_age == stale_after(FLUSH)
    assert view.earliest == view.newest_base_at == base(0, 2).finished_at
    assert view.newest_base == base(0, 2).backup_id and view.newest_base_age == limit - base(0, 2).finished_at
    status, problems, _ = wal_verdict(facts, limit + timedelta(seconds=1))
    assert status == "STALE" and "2026-03-01 05:00" in problems[0] and "wal.flush_seconds 60s" in problems[0]


def test_a_gap_after_the_newest_base_is_failing_and_no_base_is_never() -> None:
    status, problems, view = wal_verdict(window_facts(2, gaps=True), hours(2))
    assert status == "FAILING" and view.broken and view.gaps == 1
    assert f"gap after {Segment(1, 3).name}-{Segment(1, 4).name}" in problems[0]
    assert "lifeboat base-backup shop" in problems[0]
    status, problems, view = wal_verdict(window_facts(2, bases=False), hours(2))
    assert status == "NEVER" and "no base backup" in problems[0] and view.latest is None


def test_the_wal_lane_decides_the_row_and_shows_in_json_and_text() -> None:
    stale = TargetFacts(name="shop", has_logical=False, wal=window_facts(2))
    row = target_status(stale, hours(3))
    assert row.status == "STALE" and not overall_ok([row])
    document = row.as_json()["wal"]
    assert document["latest_restorable"] == hours(2).isoformat() and document["latest_age_seconds"] == 3600
    assert document["broken"] is False and document["newest_base"] == base(0, 2).backup_id
    out = io.StringIO()
    render_table([row], out)
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:2] == ["shop", "STALE"]
    assert (
        lines[-1]
        == "  wal: restorable 2026-03-01 03:10 .. 2026-03-01 05:00 (1h ago); newest base 2026-03-01 03:10 (2h50m ago)"
    )
    fresh = target_status(stale, hours(2) + timedelta(seconds=30))
    assert fresh.status == "OK" and fresh.problems == ()
    assert target_status(TargetFacts(name="db", has_logical=False), hours(2)).as_json()["wal"] is None
