"""`lifeboat status` and restore drills, decided from facts and a fixed clock: a target with a drill section whose
last verified success is older than drill.max_age_days is DRILL_OVERDUE when its backups are fine, and keeps its
backup status (with the drill's problem line too) when they are not; the row shows the newest drill."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from chalicelib.operator.status import DrillSeen, GoodBackup, TargetFacts, overall_ok, render_table, target_status

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FRESH = GoodBackup("logical:shop:20260302T030000Z", "logical", datetime(2026, 3, 2, 3, tzinfo=UTC))
DRILL = DrillSeen("d-00000000000000aa", "SUCCEEDED", NOW - timedelta(days=2), NOW - timedelta(days=2), 95.4)


def facts(*backups: GoodBackup, max_age: int | None = 8, success: datetime | None = None, **kw: object) -> TargetFacts:
    return TargetFacts(
        name="shop",
        logical_schedule="cron(0 3 * * ? *)",
        logical=backups,
        drill_max_age_days=max_age,
        last_drill_success=success,
        **kw,  # type: ignore[arg-type]
    )


def test_a_recent_success_is_ok_and_shown() -> None:
    row = target_status(facts(FRESH, last_drill=DRILL, success=DRILL.finished_at), NOW)
    assert (row.status, row.problems) == ("OK", ())
    assert row.as_json()["last_drill"] == {
        "drill_id": DRILL.drill_id,
        "status": "SUCCEEDED",
        "started_at": "2026-02-28T09:00:00+00:00",
        "finished_at": "2026-02-28T09:00:00+00:00",
        "recovery_seconds": 95.4,
        "last_success_at": "2026-02-28T09:00:00+00:00",
    }
    out = io.StringIO()
    render_table([row], out)
    assert out.getvalue().splitlines()[1].endswith("SUCCEEDED 2026-02-28 09:00 95s")


def test_an_old_or_missing_success_is_drill_overdue() -> None:
    exactly = target_status(facts(FRESH, success=NOW - timedelta(days=8)), NOW)
    assert exactly.status == "OK"  # within max_age_days, to the second
    late = target_status(facts(FRESH, success=NOW - timedelta(days=8, seconds=1)), NOW)
    assert late.status == "DRILL_OVERDUE" and not overall_ok([late])
    assert late.problems == (
        "the last successful restore drill finished 2026-02-22 08:59, 8d ago (drill.max_age_days is 8)",
    )
    never = target_status(facts(FRESH), NOW)
    assert (never.status, never.problems) == (
        "DRILL_OVERDUE",
        ("no successful restore drill yet (drill.max_age_days is 8)",),
    )
    assert target_status(facts(FRESH, max_age=None), NOW).status == "OK"  # no drill section: nothing to prove


def test_a_backup_problem_outranks_an_overdue_drill_and_both_are_shown() -> None:
    old = GoodBackup("logical:shop:20260228T030000Z", "logical", datetime(2026, 2, 28, 3, tzinfo=UTC))
    row = target_status(facts(old), NOW)
    assert row.status == "STALE"
    assert [p.split(" ")[1] for p in row.problems] == ["logical", "successful"]
    assert target_status(facts(), NOW).status == "NEVER"


def test_a_failed_latest_drill_is_noted_under_the_row() -> None:
    failed = DrillSeen("d-00000000000000bb", "FAILED", NOW - timedelta(hours=3), NOW - timedelta(hours=2), None, "boom")
    row = target_status(facts(FRESH, last_drill=failed, success=DRILL.finished_at), NOW)
    assert row.status == "OK"
    out = io.StringIO()
    render_table([row], out)
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("FAILED 2026-03-02 07:00")
    assert lines[2] == "  last drill FAILED 2026-03-02 06:00 (d-00000000000000bb): boom"
