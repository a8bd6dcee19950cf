"""Scheduled base backups without PostgreSQL: which slot is due (fixed clocks), and the receiver's one scheduler
taking one base at a time, on schedule and after gaps, retrying a failed slot later, counted in metrics."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from chalicelib.errors import PgToolError
from chalicelib.pitr.basebackup import BaseBackup, BaseObject
from chalicelib.pitr.basesched import BaseScheduler, due_slot, newest_mark
from chalicelib.pitr.settings import Wal
from chalicelib.scheduling.schedules import Schedule

DAILY = Schedule.parse("cron(0 3 * * ? *)")
T = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)  # a slot of DAILY


def at(days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    return T + timedelta(days=days, hours=hours, minutes=minutes)


def base(started: datetime, slot: datetime | None = None) -> BaseBackup:
    return BaseBackup(
        target="shop",
        backup_id=started.strftime("%Y%m%dT%H%M%SZ"),
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        server_version_num=150000,
        timeline=1,
        start_lsn="0/2000028",
        end_lsn="0/3000028",
        segment_size=16 * 1024 * 1024,
        tar_size=1,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key="k", size=1, sha256="0" * 64)],
        backup_label="",
        slot=slot,
    )


# --- which slot is due (pure) -------------------------------------------------------------------------------------


def test_a_slot_is_due_once_it_has_passed_and_not_again() -> None:
    assert due_slot(DAILY, T, at(hours=9)) is None  # the base of T's slot exists
    assert due_slot(DAILY, T, at(days=1, minutes=-1)) is None
    assert due_slot(DAILY, T, at(days=1)) == at(days=1)  # the slot itself is due (after < s <= now)
    assert due_slot(DAILY, at(days=1), at(days=1, hours=2)) is None


def test_slots_missed_while_down_collapse_into_the_newest() -> None:
    assert due_slot(DAILY, T, at(days=4, hours=7)) == at(days=4)  # 03-02 .. 03-05 missed: one base, for 03-05
    hint = DAILY.interval_hint
    assert due_slot(DAILY, T, at(days=400), hint) == at(days=400)


def test_a_base_by_hand_after_a_slot_covers_it() -> None:
    by_hand = at(minutes=5)  # started 03:05, after the 03:00 slot
    assert due_slot(DAILY, newest_mark([base(by_hand)]), at(hours=20)) is None
    earlier = at(minutes=-5)  # 02:55: the 03:00 slot still wants its own
    assert due_slot(DAILY, newest_mark([base(earlier)]), at(hours=1)) == T


def test_without_any_base_the_last_slot_is_due_at_once() -> None:
    assert due_slot(DAILY, None, at(days=1, hours=-1)) == T
    assert due_slot(Schedule.parse("rate(6 hours)"), None, at(hours=4)) == datetime(2026, 3, 1, 6, tzinfo=UTC)


def test_a_schedule_with_years_between_slots_is_still_found() -> None:
    sparse = Schedule.parse("cron(0 3 1 1 ? 2026,2030)")
    first = datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert due_slot(sparse, first, datetime(2029, 6, 1, tzinfo=UTC)) is None
    assert due_slot(sparse, first, datetime(2031, 2, 1, tzinfo=UTC)) == datetime(2030, 1, 1, 3, tzinfo=UTC)


def test_newest_mark_prefers_the_recorded_slot() -> None:
    assert newest_mark([]) is None
    assert newest_mark([base(at(days=1, minutes=2), slot=at(days=1)), base(at(minutes=30))]) == at(days=1)


def test_the_wal_section_checks_base_schedule_and_pitr_days() -> None:
    wal = Wal.model_validate({"base_schedule": "cron(0 3 * * ? *)"})
    assert wal.schedule() == DAILY and wal.pitr_days == 7 and Wal().schedule() is None
    with pytest.raises(ValidationError, match="base_schedule: 'cron\\(0 3 \\* \\* \\*\\)': EventBridge cron has 6"):
        Wal.model_validate({"base_schedule": "cron(0 3 * * *)"})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Wal.model_validate({"pitr_days": 0})


# --- the scheduler ------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Taker:
    """One base backup per call, each waiting for `gate` (so a test can act while one runs); `fail` makes the
    next calls raise what pg_basebackup's failure raises."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.slots: list[datetime | None] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.fail = False

    def __call__(self, slot: datetime | None) -> BaseBackup:
        self.slots.append(slot)
        self.started.release()
        assert self.gate.wait(10)
        if self.fail:
            raise PgToolError("pg_basebackup: could not connect to server")
        return base(self.clock() + timedelta(seconds=len(self.slots)), slot)


def scheduler(clock: Clock, after: datetime | None = T, **options: Any) -> tuple[BaseScheduler, Taker]:
    taker = Taker(clock)
    return BaseScheduler("shop", taker, DAILY, after, clock=clock, **options), taker


def test_one_scheduled_base_per_due_slot(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    clock = Clock(at(days=3, hours=5))  # three slots missed
    bases, taker = scheduler(clock)
    assert bases.poll() == at(days=3)
    bases.wait(10)
    assert bases.poll() is None and taker.slots == [at(days=3)] and bases.after == at(days=3)
    clock.now = at(days=4, minutes=1)
    assert bases.poll() == at(days=4)
    bases.wait(10)
    assert (bases.taken, bases.failed, taker.slots) == (2, 0, [at(days=3), at(days=4)])
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [m.get("BaseBackupsTaken") for m in emitted] == [[1.0], [1.0]] and emitted[0]["target"] == "shop"


def test_one_base_at_a_time_and_a_gap_meanwhile_asks_for_one_more() -> None:
    clock = Clock(at(days=1, hours=1))
    bases, taker = scheduler(clock)
    taker.gate.clear()
    assert bases.poll() == at(days=1)
    assert taker.started.acquire(timeout=10)
    bases.request("gap 000000010000000000000007-00000001000000000000000C")
    bases("another gap")  # on_gap: a second request while one runs still means one more, not two
    assert bases.poll() is None  # one at a time
    taker.gate.set()
    bases.wait(10)
    assert taker.slots == [at(days=1), None] and bases.taken == 2 and not bases.running
    assert bases.poll() is None  # the gap's base (started after the slot) changes nothing for the schedule


def test_a_failed_scheduled_base_is_retried_later_not_at_every_poll(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    clock = Clock(at(days=1, minutes=1))
    bases, taker = scheduler(clock, retry_seconds=900)
    taker.fail = True
    assert bases.poll() == at(days=1)
    bases.wait(10)
    assert bases.failed == 1 and bases.after == T and bases.retry_at == at(days=1, minutes=16)
    clock.now = at(days=1, minutes=10)
    assert bases.poll() is None
    taker.fail = False
    clock.now = at(days=1, minutes=16)
    assert bases.poll() == at(days=1)
    bases.wait(10)
    assert bases.taken == 1 and bases.retry_at is None and bases.after == at(days=1)
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [next(k for k in m if k.startswith("BaseBackup")) for m in emitted] == [
        "BaseBackupFailures",
        "BaseBackupsTaken",
    ]


def test_no_schedule_only_gaps_and_no_gaps_when_switched_off() -> None:
    clock = Clock(at(days=9))
    only_gaps = BaseScheduler("shop", Taker(clock), None, T, clock=clock)
    assert only_gaps.poll() is None
    only_gaps.request("gap")
    only_gaps.wait(10)
    assert only_gaps.taken == 1
    bases, taker = scheduler(clock, after_gap=False)
    bases.request("gap")
    assert bases.thread is None and taker.slots == []
