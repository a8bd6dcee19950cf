"""The dead-man's gauge: which slot must be backed up by now, and which targets are overdue (fixed clocks)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib.config import Config, parse_config
from chalicelib.errors import StorageError
from chalicelib.scheduling.dispatch import backup_ages, expected_slot
from chalicelib.scheduling.schedules import Schedule


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "now", "expected"),
    [
        # daily at 03:00: a quarter of a day (6 h) of grace, so at 08:59 yesterday's slot is the one due
        ("cron(0 3 * * ? *)", at(10, 8, 59), at(9, 3)),
        ("cron(0 3 * * ? *)", at(10, 9, 0), at(10, 3)),
        # every 6 hours: at least an hour of grace (a quarter would be 90 minutes)
        ("rate(6 hours)", at(10, 7, 29), at(10, 0)),
        ("rate(6 hours)", at(10, 7, 30), at(10, 6)),
        # hourly: the minimum grace of an hour, so the slot before the last
        ("rate(1 hour)", at(10, 12, 30), at(10, 11)),
        # weekly (Sundays; 2026-03-08 is one): found beyond the first lookback
        ("cron(0 2 ? * SUN *)", at(12, 12), at(8, 2)),
        ("cron(0 2 ? * SUN *)", at(8, 3), at(1, 2)),
    ],
)
def test_expected_slot_gives_each_slot_its_grace(expression: str, now: datetime, expected: datetime) -> None:
    assert expected_slot(Schedule.parse(expression), now) == expected


def test_no_slot_is_due_before_a_schedule_begins() -> None:
    # A schedule limited to a later year has no slot yet: nothing can be late.
    assert expected_slot(Schedule.parse("cron(0 3 * * ? 2030)"), at(10, 12)) is None


def _config(*targets: dict[str, Any]) -> Config:
    return parse_config({"settings": {"bucket": "lifeboat-backups"}, "targets": list(targets)})


def _target(name: str, schedule: str | None) -> dict[str, Any]:
    logical = {"schedule": schedule} if schedule else {}
    return {"name": name, "connection": {"host": "db", "database": name, "user": "u"}, "logical": logical}


def test_backup_ages_marks_late_missing_and_unlistable_targets() -> None:
    now = at(10, 12)
    newest = {"fresh": at(10, 3), "late": at(8, 3), "never": None}
    cfg = _config(
        _target("fresh", "cron(0 3 * * ? *)"),
        _target("late", "cron(0 3 * * ? *)"),
        _target("never", "cron(0 3 * * ? *)"),
        _target("denied", "cron(0 3 * * ? *)"),
        _target("on-demand", None),  # no schedule: nothing to be late for, not measured
    )

    def lookup(target: str) -> datetime | None:
        if target == "denied":
            raise StorageError("AccessDenied listing logical/denied/")
        return newest[target]

    ages = {a.target: a for a in backup_ages(cfg, now, lookup)}
    assert set(ages) == {"fresh", "late", "never", "denied"}
    assert {name for name, a in ages.items() if a.overdue} == {"late", "never", "denied"}
    assert ages["fresh"].age_seconds(now) == timedelta(hours=9).total_seconds()
    assert ages["late"].age_seconds(now) == timedelta(days=2, hours=9).total_seconds()
    assert ages["never"].age_seconds(now) is None
    assert "AccessDenied" in ages["denied"].error


def test_the_next_slot_is_late_only_once_its_grace_is_over() -> None:
    # rate(1 day) slots fall at midnight UTC, with 6 hours of grace: until 06:00 yesterday's backup is enough.
    cfg = _config(_target("shop", "rate(1 day)"))
    (age,) = backup_ages(cfg, at(10, 5, 59), lambda _: at(9))
    assert not age.overdue
    (age,) = backup_ages(cfg, at(10, 6), lambda _: at(9))
    assert age.overdue
    (age,) = backup_ages(cfg, at(10, 6), lambda _: at(10))
    assert not age.overdue
