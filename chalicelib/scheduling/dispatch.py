"""The dispatcher: one schedule for the whole fleet, fanning due backups out to workers through SQS.

Each tick covers the window (cursor, tick], where the cursor is the last tick dispatched (kept in the
jobs table), so a missed tick is caught up and a duplicate or late delivery sends nothing twice. The
workers deduplicate again by slot, so at-least-once delivery never yields two backups for one slot.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from chalicelib.adapters.dynamo import DispatchCursor
from chalicelib.adapters.sqs import MAX_BATCH, Message, Queue
from chalicelib.config import Config
from chalicelib.errors import BadRequestError, StorageError
from chalicelib.scheduling.schedules import Schedule


@dataclass(frozen=True)
class DueBackup:
    target: str
    kind: str
    slot: datetime
    database: str = ""  # one database of a whole-server target
    trigger: str = "schedule"  # "on-demand" from the API: such backups have their own retention class

    def message(self) -> str:
        doc = {"target": self.target, "kind": self.kind, "slot": self.slot.isoformat()}
        if self.database:
            doc["database"] = self.database
        if self.trigger != "schedule":
            doc["trigger"] = self.trigger
        return json.dumps(doc)

    @property
    def dedup_id(self) -> str:
        return hashlib.sha256(self.message().encode()).hexdigest()

    @classmethod
    def from_message(cls, body: str) -> DueBackup:
        try:
            doc = json.loads(body)
            slot = datetime.fromisoformat(doc["slot"]).astimezone(UTC)
            return cls(
                str(doc["target"]),
                str(doc.get("kind", "logical")),
                slot,
                str(doc.get("database", "")),
                str(doc.get("trigger", "schedule")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequestError(f"not a backup message: {body[:200]!r} ({exc})") from None


def message_group(config: Config, due: DueBackup) -> str:
    """FIFO message group: at most `per_server_concurrency` groups per server, so at most that many dumps
    run against one server at a time (SQS FIFO delivers one message of a group at a time)."""
    target = config.target(due.target)
    if due.kind == "drill":  # a drill restores elsewhere (a scratch server, a temporary instance): its own lane
        return f"drills#{due.target}"
    if due.kind != "logical" or target.connection is None:
        return f"snapshots#{due.target}"
    server = f"{target.connection.host}:{target.connection.port}"
    lane = int(hashlib.sha256(f"{due.target}/{due.database}".encode()).hexdigest(), 16)
    return f"{server}#{lane % config.settings.per_server_concurrency}"


def due_backups(config: Config, after: datetime, until: datetime) -> list[DueBackup]:
    due: list[DueBackup] = []
    for target in config.targets:
        if target.logical and target.logical.schedule:
            schedule = Schedule.parse(target.logical.schedule)
            due.extend(DueBackup(target.name, "logical", slot) for slot in schedule.slots(after, until))
        if target.physical and target.physical.schedule:
            schedule = Schedule.parse(target.physical.schedule)
            due.extend(DueBackup(target.name, "physical", slot) for slot in schedule.slots(after, until))
        if target.drill is not None:  # restore drills (chalicelib.drills): the same queue, the worker runs them
            schedule = Schedule.parse(target.drill.schedule)
            due.extend(DueBackup(target.name, "drill", slot) for slot in schedule.slots(after, until))
    return sorted(due, key=lambda d: (d.slot, d.target))


def window(tick: datetime, cursor: datetime | None, max_lookback: timedelta) -> tuple[datetime, datetime]:
    """The (after, until] window a tick covers."""
    until = tick.astimezone(UTC).replace(second=0, microsecond=0)
    earliest = until - max_lookback
    after = max(cursor, earliest) if cursor else until - timedelta(minutes=1)
    return min(after, until), until


class BackupQueue:
    """SQS queue of due backups, sent ten to a request. On a FIFO queue each message gets its server's
    message group (bounding concurrent dumps per server) and a deduplication id (same slot, same id)."""

    def __init__(self, queue: Queue, config: Config | None = None) -> None:
        self.queue, self.config = queue, config

    @property
    def url(self) -> str:
        return self.queue.url

    @property
    def fifo(self) -> bool:
        return self.queue.fifo

    def send(self, items: Iterable[DueBackup]) -> int:
        """Send in batches of ten, eight requests at a time: 1,000 due targets cost 100 requests."""
        from concurrent.futures import ThreadPoolExecutor

        pending = list(items)
        batches = [pending[i : i + MAX_BATCH] for i in range(0, len(pending), MAX_BATCH)]
        if len(batches) <= 1:
            return sum(self._send(b) for b in batches)
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="sqs-send") as pool:
            return sum(pool.map(self._send, batches))

    def _message(self, due: DueBackup) -> Message:
        if not self.fifo:
            return Message(due.message())
        if self.config is None:
            raise StorageError("a FIFO backup queue needs the configuration to assign message groups")
        return Message(due.message(), message_group(self.config, due), due.dedup_id)

    def _send(self, batch: list[DueBackup]) -> int:
        return self.queue.send_batch([self._message(d) for d in batch])


def run_dispatch(config: Config, tick: datetime, queue: BackupQueue, cursor: DispatchCursor | None) -> list[DueBackup]:
    lookback = timedelta(minutes=config.settings.dispatch_lookback_minutes)
    after, until = window(tick, cursor.get() if cursor else None, lookback)
    due = due_backups(config, after, until)
    if due:
        queue.send(due)
    if cursor:
        cursor.advance(until)
    return due


# --- the dead-man's gauge: every target's newest backup against its schedule (chalicelib.entrypoints measures it,
# stack/template/monitoring.py alarms on it). The dispatcher is the one function that knows every target in SSM,
# so the alarm follows the targets without a redeploy.
AGE_GAUGE_EVERY_MINUTES = 15  # ticks whose minute is a multiple of this measure (one S3 LIST per target)
MIN_GRACE = timedelta(hours=1)  # a slot's backup may be this late (queueing, the dump), or a quarter of the interval
_LOOKBACKS = (timedelta(days=2), timedelta(days=16), timedelta(days=64), timedelta(days=800))


@dataclass(frozen=True)
class BackupAge:
    target: str
    newest: datetime | None  # slot of the newest complete logical backup; None: none (or the listing failed)
    overdue: bool  # the latest slot past its grace has no complete backup (or the listing failed)
    error: str = ""

    def age_seconds(self, now: datetime) -> float | None:
        return None if self.newest is None else max(0.0, (now - self.newest).total_seconds())


def expected_slot(schedule: Schedule, now: datetime) -> datetime | None:
    """The latest slot whose backup should be complete by `now`: a slot is given the grace of a quarter of the
    interval before it (at least MIN_GRACE), as the per-target alarms of the stack always did. None: no slot yet."""
    for lookback in _LOOKBACKS:
        recent = deque(schedule.slots(now - lookback, now), maxlen=2)
        if len(recent) == 2 or (recent and lookback == _LOOKBACKS[-1]):
            break
    if not recent:
        return None
    last = recent[-1]
    grace = max(MIN_GRACE, (last - recent[0]) / 4) if len(recent) == 2 else MIN_GRACE
    if now - last >= grace:
        return last
    return recent[0] if len(recent) == 2 else None


def backup_ages(
    config: Config, now: datetime, newest: Callable[[str], datetime | None], workers: int = 8
) -> list[BackupAge]:
    """Each target with a logical schedule: its newest complete backup (`newest`, which may raise StorageError:
    that target counts as overdue, since nothing shows it is not) and whether it is overdue."""

    def measure(name: str, expression: str) -> BackupAge:
        due = expected_slot(Schedule.parse(expression), now)
        try:
            slot = newest(name)
        except StorageError as exc:
            return BackupAge(name, None, True, str(exc))
        return BackupAge(name, slot, due is not None and (slot is None or slot < due))

    scheduled = [(t.name, t.logical.schedule) for t in config.targets if t.logical and t.logical.schedule]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backup-age") as pool:
        return list(pool.map(lambda item: measure(*item), scheduled))
