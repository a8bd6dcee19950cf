"""schedules: EventBridge cron/rate expressions evaluated as slots."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chalicelib.scheduling.schedules import Schedule, ScheduleSyntaxError


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def slots(expression: str, after: datetime, until: datetime, limit: int = 10_000) -> list[datetime]:
    return list(Schedule.parse(expression).slots(after, until, limit=limit))


def test_daily_cron_gives_0300_every_day() -> None:
    got = slots("cron(0 3 * * ? *)", at(2026, 3, 1), at(2026, 3, 5))
    assert got == [at(2026, 3, 1, 3), at(2026, 3, 2, 3), at(2026, 3, 3, 3), at(2026, 3, 4, 3)]


def test_weekday_cron_skips_the_weekend() -> None:
    # 2026-03-06 is a Friday.
    got = slots("cron(0 12 ? * MON-FRI *)", at(2026, 3, 6), at(2026, 3, 10, 23))
    assert got == [at(2026, 3, 6, 12), at(2026, 3, 9, 12), at(2026, 3, 10, 12)]
    assert {d.strftime("%a") for d in got} == {"Fri", "Mon", "Tue"}


@pytest.mark.parametrize(("number", "weekday"), [(1, "Sun"), (2, "Mon"), (4, "Wed"), (6, "Fri"), (7, "Sat")])
def test_weekday_numbers_run_from_sunday_1_to_saturday_7(number: int, weekday: str) -> None:
    got = slots(f"cron(0 0 ? * {number} *)", at(2026, 1, 1), at(2026, 2, 1))
    assert len(got) >= 4
    assert {d.strftime("%a") for d in got} == {weekday}


def test_cron_sunday_number_lands_on_sundays() -> None:
    got = slots("cron(0 0 ? * 1 *)", at(2026, 1, 1), at(2026, 1, 31))
    assert got == [at(2026, 1, 4), at(2026, 1, 11), at(2026, 1, 18), at(2026, 1, 25)]


def test_weekday_range_in_numbers() -> None:
    # 2-6 is MON-FRI in EventBridge numbering.
    assert slots("cron(0 12 ? * 2-6 *)", at(2026, 3, 1), at(2026, 3, 15)) == slots(
        "cron(0 12 ? * MON-FRI *)", at(2026, 3, 1), at(2026, 3, 15)
    )


def test_last_friday_of_the_month() -> None:
    got = slots("cron(0 0 ? * 6L *)", at(2026, 1, 1), at(2026, 5, 1))
    assert got == [at(2026, 1, 30), at(2026, 2, 27), at(2026, 3, 27), at(2026, 4, 24)]
    assert {d.strftime("%a") for d in got} == {"Fri"}


def test_first_monday_of_the_month() -> None:
    got = slots("cron(0 0 ? * 2#1 *)", at(2026, 1, 1), at(2026, 4, 1))
    assert got == [at(2026, 1, 5), at(2026, 2, 2), at(2026, 3, 2)]


def test_last_day_of_month() -> None:
    got = slots("cron(30 1 L * ? *)", at(2026, 1, 1), at(2026, 4, 1))
    assert got == [at(2026, 1, 31, 1, 30), at(2026, 2, 28, 1, 30), at(2026, 3, 31, 1, 30)]


def test_year_field_filters() -> None:
    got = slots("cron(0 0 1 1 ? 2027,2029)", at(2026, 1, 1), at(2031, 1, 2))
    assert got == [at(2027, 1, 1), at(2029, 1, 1)]


def test_year_range() -> None:
    got = slots("cron(0 0 1 6 ? 2027-2028)", at(2026, 1, 1), at(2031, 1, 1))
    assert got == [at(2027, 6, 1), at(2028, 6, 1)]


def test_past_years_yield_nothing() -> None:
    assert slots("cron(0 0 * * ? 2020)", at(2026, 1, 1), at(2026, 12, 31)) == []


def test_rate_is_aligned_to_the_epoch() -> None:
    got = slots("rate(15 minutes)", at(2026, 3, 1, 10, 7, 13), at(2026, 3, 1, 11, 0))
    assert got == [at(2026, 3, 1, 10, 15), at(2026, 3, 1, 10, 30), at(2026, 3, 1, 10, 45), at(2026, 3, 1, 11, 0)]


@pytest.mark.parametrize("expression", ["rate(7 minutes)", "rate(2 hours)", "rate(3 days)", "rate(1 minute)"])
def test_rate_slots_are_multiples_of_the_period_since_the_epoch(expression: str) -> None:
    schedule = Schedule.parse(expression)
    period = int(schedule.interval_hint.total_seconds())
    got = list(schedule.slots(at(2026, 3, 1, 0, 0, 1), at(2026, 3, 20)))
    assert got
    epoch = at(1970, 1, 1)
    assert all(int((s - epoch).total_seconds()) % period == 0 for s in got)
    assert all(b - a == timedelta(seconds=period) for a, b in itertools.pairwise(got))


def test_rate_one_day_is_midnight_utc() -> None:
    assert slots("rate(1 day)", at(2026, 3, 1, 5), at(2026, 3, 3, 5)) == [at(2026, 3, 2), at(2026, 3, 3)]


@pytest.mark.parametrize(("expression", "hour"), [("cron(0 3 * * ? *)", 3), ("rate(1 day)", 0)])
def test_slots_exclude_after_and_include_until(expression: str, hour: int) -> None:
    first, second, third = (at(2026, 3, day, hour) for day in (1, 2, 3))
    assert slots(expression, first, third) == [second, third]
    assert slots(expression, first, second - timedelta(seconds=1)) == []
    assert slots(expression, second, second) == []


def test_slots_accept_other_time_zones_and_answer_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    got = slots("cron(0 3 * * ? *)", datetime(2026, 3, 1, 4, 0, 1, tzinfo=cet), datetime(2026, 3, 2, 4, 0, tzinfo=cet))
    assert got == [at(2026, 3, 2, 3)]
    assert got[0].utcoffset() == timedelta(0)


def test_limit() -> None:
    assert len(slots("rate(1 minute)", at(2026, 1, 1), at(2026, 1, 2), limit=5)) == 5
    assert len(slots("cron(* * * * ? *)", at(2026, 1, 1), at(2026, 1, 2), limit=5)) == 5


@pytest.mark.parametrize(
    ("expression", "hint"),
    [
        ("cron(0 3 * * ? *)", timedelta(days=1)),
        ("cron(0 12 ? * MON-FRI *)", timedelta(days=3)),
        ("cron(0 0 ? * 1 *)", timedelta(days=7)),
        ("cron(0 0 1 * ? *)", timedelta(days=31)),
        ("rate(15 minutes)", timedelta(minutes=15)),
        ("rate(1 day)", timedelta(days=1)),
        ("cron(0 0 1 1 ? 2020)", timedelta(days=366)),
    ],
)
def test_interval_hint(expression: str, hint: timedelta) -> None:
    assert Schedule.parse(expression).interval_hint == hint


def test_surrounding_whitespace_is_ignored() -> None:
    assert Schedule.parse("  rate(1 day) ").interval_hint == timedelta(days=1)


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 3 * * *)",
        "cron(0 3 * * ? * *)",
        "cron(0 3 * * MON *)",
        "cron(0 3 ? * ? *)",
        "rate(1 minutes)",
        "rate(5 minute)",
        "rate(0 minutes)",
        "rate(1 week)",
        "rate(-1 minutes)",
        "cron(0 3 ? * 0 *)",
        "cron(0 3 ? * 8 *)",
        "cron(0 3 * * ? 2200)",
        "cron(0 3 * * ? 1969)",
        "cron(61 3 * * ? *)",
        "daily",
        "",
    ],
)
def test_syntax_errors(expression: str) -> None:
    with pytest.raises(ScheduleSyntaxError):
        Schedule.parse(expression)


def test_schedule_syntax_error_is_a_value_error() -> None:
    # pydantic turns ValueError raised in validators into a validation error with the message.
    assert issubclass(ScheduleSyntaxError, ValueError)
