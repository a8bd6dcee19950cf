"""dispatch: the (after, until] window of a tick, and the backups due in it."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from chalicelib.config import Config, parse_config
from chalicelib.errors import BadRequestError
from chalicelib.scheduling.dispatch import DueBackup, due_backups, run_dispatch, window

FIVE_MINUTES = timedelta(minutes=5)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


# --- window -------------------------------------------------------------------------------------------------------


def test_no_cursor_covers_the_last_minute() -> None:
    assert window(at(2026, 3, 1, 10, 5, 42, 123456), None, FIVE_MINUTES) == (
        at(2026, 3, 1, 10, 4),
        at(2026, 3, 1, 10, 5),
    )


def test_tick_in_another_zone_is_converted_to_utc() -> None:
    cet = timezone(timedelta(hours=1))
    after, until = window(datetime(2026, 3, 1, 11, 5, 42, tzinfo=cet), None, FIVE_MINUTES)
    assert (after, until) == (at(2026, 3, 1, 10, 4), at(2026, 3, 1, 10, 5))
    assert until.utcoffset() == timedelta(0)


def test_cursor_behind_catches_up() -> None:
    assert window(at(2026, 3, 1, 10, 5, 3), at(2026, 3, 1, 10, 2), FIVE_MINUTES) == (
        at(2026, 3, 1, 10, 2),
        at(2026, 3, 1, 10, 5),
    )


def test_cursor_far_behind_catches_up_at_most_lookback() -> None:
    assert window(at(2026, 3, 1, 10, 5), at(2026, 2, 27, 8, 0), FIVE_MINUTES) == (
        at(2026, 3, 1, 10, 0),
        at(2026, 3, 1, 10, 5),
    )


def test_cursor_at_the_tick_gives_an_empty_window() -> None:
    after, until = window(at(2026, 3, 1, 10, 5, 10), at(2026, 3, 1, 10, 5), FIVE_MINUTES)
    assert after == until == at(2026, 3, 1, 10, 5)


def test_cursor_ahead_gives_an_empty_window() -> None:
    # A late duplicate of an older tick: everything up to the cursor has been dispatched already.
    after, until = window(at(2026, 3, 1, 10, 5), at(2026, 3, 1, 10, 9), FIVE_MINUTES)
    assert after == until == at(2026, 3, 1, 10, 5)


# --- due_backups --------------------------------------------------------------------------------------------------


def fleet() -> Config:
    conn = {"host": "h", "user": "u"}
    return parse_config(
        {
            "settings": {"bucket": "acme-pg-backups", "dispatch_lookback_minutes": 5},
            "targets": [
                {"name": "beta", "connection": conn, "logical": {"schedule": "cron(30 * * * ? *)"}},
                {"name": "alpha", "connection": conn, "logical": {"schedule": "rate(15 minutes)"}},
                {"name": "gamma", "connection": conn, "logical": {}},  # no schedule: on demand only
            ],
        }
    )


def test_due_backups_over_an_hour() -> None:
    due = due_backups(fleet(), at(2026, 3, 1, 10), at(2026, 3, 1, 11))
    assert due == [
        DueBackup("alpha", "logical", at(2026, 3, 1, 10, 15)),
        DueBackup("alpha", "logical", at(2026, 3, 1, 10, 30)),
        DueBackup("beta", "logical", at(2026, 3, 1, 10, 30)),
        DueBackup("alpha", "logical", at(2026, 3, 1, 10, 45)),
        DueBackup("alpha", "logical", at(2026, 3, 1, 11, 0)),
    ]


def test_due_backups_in_an_empty_window() -> None:
    assert due_backups(fleet(), at(2026, 3, 1, 10, 30), at(2026, 3, 1, 10, 30)) == []


def test_consecutive_windows_neither_miss_nor_repeat_a_slot() -> None:
    cfg = fleet()
    ticks = [at(2026, 3, 1, 10) + timedelta(minutes=m) for m in range(61)]
    per_tick = [d for a, b in itertools.pairwise(ticks) for d in due_backups(cfg, a, b)]
    assert per_tick == due_backups(cfg, ticks[0], ticks[-1])


def test_targets_without_a_schedule_are_never_due_and_physical_schedules_are() -> None:
    cfg = parse_config(
        {
            "settings": {"bucket": "acme-pg-backups"},
            "targets": [
                {
                    "name": "snap",
                    "physical": {"method": "rds_instance", "db_instance_id": "db1", "schedule": "rate(1 hour)"},
                },
                {"name": "manual", "connection": {"host": "h", "user": "u"}},
            ],
        }
    )
    assert due_backups(cfg, at(2026, 3, 1, 10), at(2026, 3, 1, 12)) == [
        DueBackup("snap", "physical", at(2026, 3, 1, 11)),
        DueBackup("snap", "physical", at(2026, 3, 1, 12)),
    ]


# --- messages and one tick end to end, with in-memory stand-ins ---------------------------------------------------


def test_message_round_trip() -> None:
    due = DueBackup("alpha", "logical", at(2026, 3, 1, 10, 15))
    assert due.message() == '{"target": "alpha", "kind": "logical", "slot": "2026-03-01T10:15:00+00:00"}'
    assert DueBackup.from_message(due.message()) == due


@pytest.mark.parametrize("body", ["not json", "{}", '{"target": "a"}', '{"target": "a", "slot": "yesterday"}', "[]"])
def test_bad_messages(body: str) -> None:
    with pytest.raises(BadRequestError, match="not a backup message"):
        DueBackup.from_message(body)


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[DueBackup] = []

    def send(self, items: Any) -> int:
        items = list(items)
        self.sent.extend(items)
        return len(items)


class FakeCursor:
    def __init__(self, value: datetime | None) -> None:
        self.value = value

    def get(self) -> datetime | None:
        return self.value

    def advance(self, tick: datetime) -> bool:
        if self.value is not None and tick <= self.value:
            return False
        self.value = tick
        return True


def test_run_dispatch_catches_up_and_ignores_a_duplicate_tick() -> None:
    cfg, queue, cursor = fleet(), FakeQueue(), FakeCursor(at(2026, 3, 1, 10, 25))
    due = run_dispatch(cfg, at(2026, 3, 1, 10, 31, 2), queue, cursor)  # type: ignore[arg-type]
    assert (
        due
        == queue.sent
        == [DueBackup("alpha", "logical", at(2026, 3, 1, 10, 30)), DueBackup("beta", "logical", at(2026, 3, 1, 10, 30))]
    )
    assert cursor.value == at(2026, 3, 1, 10, 31)
    assert run_dispatch(cfg, at(2026, 3, 1, 10, 30, 59), queue, cursor) == []  # type: ignore[arg-type]
    assert len(queue.sent) == 2
    assert cursor.value == at(2026, 3, 1, 10, 31)
