"""Base backups taken by the WAL receiver itself: at the slots of `wal.base_schedule`, and after a gap.

Decided design (README "Point-in-time recovery without an agent"): the scheduled base is taken by the target's WAL
receiver task (`lifeboat wal-stream`), not by the dispatcher's backup worker, because
- the worker's role is denied writes under wal/ and base/ on purpose: a leaked worker role must not touch PITR
  history;
- a base is only usable with its WAL archived from its start to its end, which is exactly while the receiver runs;
- the dispatcher then needs no iam:PassRole / ecs:RunTask rights for it.

One BaseScheduler per receiver, at most one base at a time, in a thread of its own (the receiver keeps streaming):
- On schedule: `poll()` runs every flush interval (the receiver's on_flush) and asks `due_slot`: the newest slot
  after `after` (the newest base's recorded slot, or its start when it was not scheduled: `newest_mark` of the
  bases listed at start, then the scheduler's own runs) and at or before now. Slots missed while the receiver was
  down collapse into ONE base, for the newest of them; the slot is recorded in the base's manifest. A failed
  scheduled base is tried again after `retry_seconds`, not at every poll.
- After a gap (`wal.base_backup_after_gap`): `request(reason)` is the receiver's on_gap. A gap recorded while a
  base runs asks for one more: that one started before the gap and cannot cross it.
Every base is logged with its trigger and counted: BaseBackupsTaken or BaseBackupFailures (dimension: target). A
failure never stops the stream; the window stays as it was (wal-window and recover say so).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from chalicelib.config import RetentionPolicy
from chalicelib.errors import LifeboatError
from chalicelib.observability import logger, record
from chalicelib.pitr.basebackup import BaseBackup, BaseRun, list_bases
from chalicelib.pitr.protect import protected_base_backup
from chalicelib.pitr.settings import Wal
from chalicelib.pitr.walarchive import now_utc
from chalicelib.scheduling.schedules import Schedule

RETRY_SECONDS = 900.0  # after a failed scheduled base: soon enough for a daily schedule, no loop against a dead server

Take = Callable[[datetime | None], BaseBackup]  # one base backup for a slot (None: not scheduled, after a gap)


def _last(slots: Iterator[datetime]) -> datetime | None:
    return max(slots, default=None)  # they come in order: the newest


def due_slot(
    schedule: Schedule, after: datetime | None, now: datetime, hint: timedelta | None = None
) -> datetime | None:
    """The slot a base is due for at `now`: the newest slot s with after < s <= now, so slots missed while nothing
    ran collapse into one; with no base at all (`after` None) the newest slot of the last interval. None: nothing is
    due. `hint`: schedule.interval_hint, computed once by the caller. Pure."""
    recent = now - (hint if hint is not None else schedule.interval_hint) - timedelta(seconds=1)
    found = _last(schedule.slots(recent if after is None else max(after, recent), now))
    if found is None and after is not None and after < recent:  # a schedule whose slots lie further apart (years)
        found = _last(schedule.slots(after, now))
    return found


def newest_mark(bases: Iterable[BaseBackup]) -> datetime | None:
    """What the newest base covers: its slot when the schedule took it, else its start. Pure."""
    return max((b.slot or b.started_at for b in bases), default=None)


@dataclass
class BaseScheduler:
    """See the module's docstring. `take` runs one base backup (protect.protected_base_backup with the slot)."""

    target: str
    take: Take
    schedule: Schedule | None = None
    after: datetime | None = None  # slots up to this are covered (newest_mark)
    after_gap: bool = True  # request() takes a base (wal.base_backup_after_gap)
    clock: Callable[[], datetime] = now_utc
    retry_seconds: float = RETRY_SECONDS
    taken: int = 0
    failed: int = 0
    retry_at: datetime | None = None
    again: str | None = None  # a gap's reason, recorded while a base ran
    running: bool = False
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _hint: timedelta | None = None

    def __post_init__(self) -> None:
        if self.schedule is not None:
            self._hint = self.schedule.interval_hint

    def poll(self) -> datetime | None:
        """Start the base a due slot asks for, unless one runs or a failed one waits for its retry; the slot."""
        if self.schedule is None:
            return None
        now = self.clock()
        with self.lock:
            if self.running or (self.retry_at is not None and now < self.retry_at):
                return None
            slot = due_slot(self.schedule, self.after, now, self._hint)
            if slot is not None:
                logger.info(
                    "taking a scheduled base backup",
                    extra={"target": self.target, "slot": slot.isoformat(), "schedule": self.schedule.expression},
                )
                self._start(slot, None)
        return slot

    def request(self, reason: str) -> None:
        """A base because the window needs one (a gap, or a window found broken at start)."""
        if not self.after_gap:
            return
        with self.lock:
            if self.running:
                self.again = reason
                return
            logger.warning(
                "taking a base backup: the WAL archive has a gap, times after it need a newer base",
                extra={"target": self.target, "reason": reason},
            )
            self._start(None, reason)

    def __call__(self, reason: str) -> None:  # ReceiverSetup.on_gap
        self.request(reason)

    def _start(self, slot: datetime | None, reason: str | None) -> None:
        self.running = True
        name = f"base-{'schedule' if slot else 'after-gap'}-{self.target}"
        self.thread = threading.Thread(target=self._loop, args=(slot, reason), name=name, daemon=True)
        self.thread.start()

    def _loop(self, slot: datetime | None, reason: str | None) -> None:
        while True:
            self._take_one(slot, reason)
            with self.lock:
                if self.again is None:
                    self.running = False
                    return
                slot, reason, self.again = None, self.again, None

    def _take_one(self, slot: datetime | None, reason: str | None) -> None:
        trigger = "schedule" if slot is not None else "gap"
        detail = {"target": self.target, "trigger": trigger, "slot": slot.isoformat() if slot else None}
        try:
            base = self.take(slot)
        except LifeboatError as exc:
            record("BaseBackupFailures", 1, "Count", self.target)
            with self.lock:
                self.failed += 1
                if slot is not None:
                    self.retry_at = self.clock() + timedelta(seconds=self.retry_seconds)
            logger.error("base backup failed", extra={**detail, "reason": reason, "error": str(exc)})
            return
        record("BaseBackupsTaken", 1, "Count", self.target)
        with self.lock:
            self.taken += 1
            self.retry_at = None
            mark = base.slot or base.started_at
            self.after = mark if self.after is None else max(self.after, mark)
        logger.info("base backup taken", extra={**detail, "backup_id": base.backup_id})

    def wait(self, timeout: float | None = None) -> None:
        """Until the base running now (and any asked for meanwhile) is done."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)


def scheduler_for(wal: Wal, run: BaseRun, policy: RetentionPolicy, lock_mode: str | None) -> BaseScheduler | None:
    """The receiver's scheduler for a target's `wal` section (None: neither a schedule nor bases after gaps), its
    `after` from the bases in the bucket (signed ones only, with a signing key)."""
    if wal.base_schedule is None and not wal.base_backup_after_gap:
        return None

    def take(slot: datetime | None) -> BaseBackup:
        return protected_base_backup(replace(run, slot=slot), policy, lock_mode)

    after = newest_mark(list_bases(run.store, run.layout, run.sealer))
    return BaseScheduler(run.target, take, wal.schedule(), after, after_gap=wal.base_backup_after_gap)
