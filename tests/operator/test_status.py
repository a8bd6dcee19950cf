"""`lifeboat status` decided from facts and a fixed clock: no AWS, no date of today."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.operator.status import (
    FailedAttempt,
    GoodBackup,
    SnapshotSeen,
    StatusRow,
    TargetFacts,
    due_slot,
    merge_runs,
    overall_ok,
    render_table,
    status_rows,
    target_status,
)
from chalicelib.scheduling.schedules import Schedule

NIGHTLY = "cron(0 3 * * ? *)"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # six hours after the 03:00 slot of 2 March


def dump(day: int, size: int = 1000, seconds: float = 60.0, hour: int = 3, database: str = "") -> GoodBackup:
    slot = datetime(2026, 3, day, hour, 0, tzinfo=UTC)
    db = f"/{database}" if database else ""
    return GoodBackup(
        f"logical:shop{db}:{slot:%Y%m%dT%H%M%SZ}",
        "logical",
        slot,
        started_at=slot + timedelta(seconds=5),
        finished_at=slot + timedelta(seconds=5 + seconds),
        size=size,
    )


def failure(at: datetime, reason: str = 'database "shop" does not exist') -> FailedAttempt:
    return FailedAttempt(f"logical:shop:{at:%Y%m%dT030000Z}", "logical", at, reason)


def facts(*backups: GoodBackup, failures: tuple[FailedAttempt, ...] = (), **kw: object) -> TargetFacts:
    return TargetFacts(
        name="shop",
        logical_schedule=kw.pop("schedule", NIGHTLY),  # type: ignore[arg-type]
        logical=tuple(backups),
        oldest_logical=backups[-1] if backups else None,
        failures=failures,
        **kw,  # type: ignore[arg-type]
    )


def test_fresh_backup_is_ok_with_its_age_and_window() -> None:
    row = target_status(facts(dump(2), dump(1)), NOW)
    assert row.status == "OK" and row.problems == ()
    assert row.last_good is not None and row.last_good.slot == datetime(2026, 3, 2, 3, tzinfo=UTC)
    assert row.age == timedelta(hours=6)
    assert row.restorable == (datetime(2026, 3, 1, 3, tzinfo=UTC), datetime(2026, 3, 2, 3, tzinfo=UTC))
    assert row.last_drill is None and row.last_failure is None
    assert overall_ok([row])


def test_missed_slot_is_stale_once_the_grace_has_passed() -> None:
    yesterday = facts(dump(1))
    # The 2 March 03:00 slot is missing: within the dead-man alarm's grace (a quarter of a day) it may still land.
    assert target_status(yesterday, datetime(2026, 3, 2, 8, 59, tzinfo=UTC)).status == "OK"
    late = target_status(yesterday, NOW)
    assert late.status == "STALE"
    assert "2026-03-02 03:00 slot is missing" in late.problems[0] and "1d6h old" in late.problems[0]
    assert not overall_ok([late])
    # --grace: another allowance, either way.
    assert target_status(yesterday, NOW, grace=timedelta(hours=7)).status == "OK"
    assert target_status(yesterday, datetime(2026, 3, 2, 3, 31, tzinfo=UTC), timedelta(minutes=30)).status == "STALE"


def test_the_default_grace_is_at_least_an_hour() -> None:
    hourly = facts(dump(2, hour=7), schedule="rate(1 hour)")
    assert target_status(hourly, datetime(2026, 3, 2, 8, 59, tzinfo=UTC)).status == "OK"
    assert target_status(hourly, datetime(2026, 3, 2, 9, 0, tzinfo=UTC)).status == "STALE"


def test_weekday_schedule_is_not_stale_over_the_weekend() -> None:
    weekdays = facts(dump(6), schedule="cron(0 3 ? * MON-FRI *)")  # Friday 6 March 2026
    assert target_status(weekdays, datetime(2026, 3, 8, 23, 0, tzinfo=UTC)).status == "OK"  # Sunday night
    assert target_status(weekdays, datetime(2026, 3, 10, 10, 0, tzinfo=UTC)).status == "STALE"  # Tuesday


def test_failure_after_the_last_good_backup_is_failing() -> None:
    failed = failure(datetime(2026, 3, 2, 3, 0, 7, tzinfo=UTC))
    row = target_status(facts(dump(1), failures=(failed,)), NOW)
    assert row.status == "FAILING"
    assert row.last_failure == failed
    assert 'database "shop" does not exist' in row.problems[0]


def test_failure_before_the_last_good_backup_is_only_reported() -> None:
    # The 03:00 attempt failed, its retry succeeded: the row is OK and still names the failure.
    failed = failure(datetime(2026, 3, 2, 3, 0, 2, tzinfo=UTC))
    row = target_status(facts(dump(2), failures=(failed,)), NOW)
    assert row.status == "OK" and row.last_failure == failed
    out = io.StringIO()
    render_table([row], out)
    assert "last failure 2026-03-02 03:00" in out.getvalue() and "does not exist" in out.getvalue()


def test_never_backed_up() -> None:
    assert target_status(facts(), NOW).status == "NEVER"
    on_demand = target_status(facts(schedule=None), NOW)
    assert on_demand.status == "NEVER" and "on demand only" in on_demand.problems[0]
    # Attempts that all failed: the target is failing, not merely new.
    assert target_status(facts(failures=(failure(NOW - timedelta(hours=6)),)), NOW).status == "FAILING"


def test_a_restore_destination_is_never_late() -> None:
    destination = TargetFacts("scratch", has_logical=False, has_snapshots=False)
    assert target_status(destination, NOW).status == "OK"


def test_on_demand_target_is_never_stale() -> None:
    assert target_status(facts(dump(1), schedule=None), NOW + timedelta(days=30)).status == "OK"


def test_size_and_duration_trend_against_the_median_of_the_previous_five() -> None:
    history = [dump(7, 1200, 90), dump(6, 1000, 60), dump(5, 900, 60), dump(4, 1000, 30), dump(3, 1100, 60)]
    history += [dump(2, 1000, 60), dump(1, 99_999, 999)]  # the seventh is beyond the history
    row = target_status(facts(*history), datetime(2026, 3, 7, 9, tzinfo=UTC))
    assert row.size_trend == pytest.approx(0.2)
    assert row.duration_trend == pytest.approx(0.5)
    out = io.StringIO()
    render_table([row], out)
    assert "+20%" in out.getvalue() and "90.0s +50%" in out.getvalue()
    assert target_status(facts(dump(2)), NOW).size_trend is None  # nothing to compare with


def test_a_whole_server_run_counts_as_one_backup() -> None:
    run = [dump(2, 100, 10), dump(2, 500, 30, database="a"), dump(2, 400, 20, database="b")]
    merged = merge_runs(run)
    assert len(merged) == 1
    assert merged[0].backup_id == "logical:shop:20260302T030000Z"
    assert merged[0].size == 1000 and merged[0].duration_seconds == 30
    assert target_status(facts(*run, dump(1)), NOW).status == "OK"


def test_a_backup_from_the_future_is_not_the_last_good_one() -> None:
    row = target_status(facts(dump(9), dump(1)), NOW)
    assert row.status == "STALE" and row.last_good is not None and row.last_good.slot.day == 1


def test_snapshots_judged_by_their_own_schedule() -> None:
    ok = SnapshotSeen("snapshot:shop:20260302T030000Z", datetime(2026, 3, 2, 3, tzinfo=UTC), "SUCCEEDED")
    failed = SnapshotSeen("snapshot:shop:20260302T040000Z", datetime(2026, 3, 2, 4, tzinfo=UTC), "FAILED")
    only_snapshots = TargetFacts("db", has_logical=False, has_snapshots=True, snapshot_schedule=NIGHTLY)
    row = target_status(TargetFacts(**{**only_snapshots.__dict__, "snapshots": (ok,)}), NOW)
    assert row.status == "OK" and row.snapshot == ok and row.last_good is not None
    assert row.restorable == (ok.slot, ok.slot)
    row = target_status(TargetFacts(**{**only_snapshots.__dict__, "snapshots": (failed, ok)}), NOW)
    assert row.status == "FAILING" and row.snapshot == failed and "snapshot failed" in row.problems[0]
    both = facts(dump(2), has_snapshots=True, snapshot_schedule=NIGHTLY, snapshots=(ok,))
    later = target_status(both, NOW + timedelta(days=1))  # both kinds missed 3 March: two problems
    assert later.status == "STALE" and len(later.problems) == 2


def test_due_slot_is_the_newest_at_or_before() -> None:
    nightly = Schedule.parse(NIGHTLY)
    assert due_slot(nightly, NOW) == datetime(2026, 3, 2, 3, tzinfo=UTC)
    assert due_slot(nightly, datetime(2026, 3, 2, 3, tzinfo=UTC)) == datetime(2026, 3, 2, 3, tzinfo=UTC)
    assert due_slot(nightly, datetime(2026, 3, 2, 2, 59, tzinfo=UTC)) == datetime(2026, 3, 1, 3, tzinfo=UTC)
    assert due_slot(Schedule.parse("cron(0 3 1 1 ? 2030)"), NOW) is None


def rows() -> list[StatusRow]:
    return status_rows([facts(dump(2)), TargetFacts("ledger", logical_schedule=NIGHTLY)], NOW)


def test_table_is_red_only_on_a_terminal() -> None:
    plain, colored = io.StringIO(), io.StringIO()
    render_table(rows(), plain, color=False)
    render_table(rows(), colored, color=True)
    assert "\033[" not in plain.getvalue()
    lines = colored.getvalue().splitlines()
    shop = next(line for line in lines if line.startswith("shop"))
    ledger = next(line for line in lines if "ledger" in line)
    assert "\033[31m" not in shop and ledger.startswith("\033[31mledger") and "NEVER" in ledger
    assert plain.getvalue().splitlines()[0].split()[:3] == ["TARGET", "STATUS", "LAST"]


def test_json_row() -> None:
    shop, ledger = (r.as_json() for r in rows())
    json.dumps([shop, ledger])  # serialisable
    assert shop["status"] == "OK" and shop["age_seconds"] == 6 * 3600
    assert shop["last_good"]["backup_id"] == "logical:shop:20260302T030000Z"
    assert shop["last_good"]["size"] == 1000 and shop["last_good"]["duration_seconds"] == 60
    assert shop["restorable"] == {"oldest": "2026-03-02T03:00:00+00:00", "newest": "2026-03-02T03:00:00+00:00"}
    assert shop["last_drill"] is None and shop["schedules"]["logical"] == NIGHTLY
    assert ledger["status"] == "NEVER" and ledger["last_good"] is None and ledger["restorable"] is None
