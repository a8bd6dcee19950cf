"""The dispatcher: one schedule for the whole fleet, fanning due backups out to workers through SQS.

Each tick covers the window (cursor, tick], where the cursor is the last tick dispatched (kept in the
jobs table), so a missed tick is caught up and a duplicate or late delivery sends nothing twice. The
workers deduplicate again by slot, so at-least-once delivery never yields two backups for one slot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.config import Config
from chalicelib.errors import BadRequestError, StorageError
from chalicelib.schedules import Schedule

CURSOR_KEY = "dispatcher#cursor"


@dataclass(frozen=True)
class DueBackup:
    target: str
    kind: str
    slot: datetime

    def message(self) -> str:
        return json.dumps({"target": self.target, "kind": self.kind, "slot": self.slot.isoformat()})

    @classmethod
    def from_message(cls, body: str) -> DueBackup:
        try:
            doc = json.loads(body)
            slot = datetime.fromisoformat(doc["slot"]).astimezone(UTC)
            return cls(str(doc["target"]), str(doc.get("kind", "logical")), slot)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequestError(f"not a backup message: {body[:200]!r} ({exc})") from None


def due_backups(config: Config, after: datetime, until: datetime) -> list[DueBackup]:
    due: list[DueBackup] = []
    for target in config.targets:
        if target.logical and target.logical.schedule:
            schedule = Schedule.parse(target.logical.schedule)
            due.extend(DueBackup(target.name, "logical", slot) for slot in schedule.slots(after, until))
        if target.physical and target.physical.schedule:
            schedule = Schedule.parse(target.physical.schedule)
            due.extend(DueBackup(target.name, "physical", slot) for slot in schedule.slots(after, until))
    return sorted(due, key=lambda d: (d.slot, d.target))


def window(tick: datetime, cursor: datetime | None, max_lookback: timedelta) -> tuple[datetime, datetime]:
    """The (after, until] window a tick covers."""
    until = tick.astimezone(UTC).replace(second=0, microsecond=0)
    earliest = until - max_lookback
    after = max(cursor, earliest) if cursor else until - timedelta(minutes=1)
    return min(after, until), until


class DispatchCursor:
    """The last tick dispatched, advanced only forwards (DynamoDB conditional write)."""

    def __init__(self, client: Any, table: str) -> None:
        self.client, self.table = client, table

    def get(self) -> datetime | None:
        key = {"pk": {"S": CURSOR_KEY}}
        item = self.client.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        return datetime.fromisoformat(item["tick"]["S"]) if item else None

    def advance(self, tick: datetime) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_item(TableName=self.table, Item={"pk": {"S": CURSOR_KEY}, "tick": {"S": tick.isoformat()}},
                                 ConditionExpression="attribute_not_exists(pk) OR tick < :t",
                                 ExpressionAttributeValues={":t": {"S": tick.isoformat()}})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise StorageError(f"cannot advance the dispatch cursor in {self.table!r}: {exc}") from exc
        return True


class BackupQueue:
    """SQS queue of due backups, sent ten to a request."""

    def __init__(self, client: Any, url: str) -> None:
        self.client, self.url = client, url

    def send(self, items: Iterable[DueBackup]) -> int:
        batch: list[DueBackup] = []
        sent = 0
        for item in items:
            batch.append(item)
            if len(batch) == 10:
                sent += self._send(batch)
                batch = []
        if batch:
            sent += self._send(batch)
        return sent

    def _send(self, batch: list[DueBackup]) -> int:
        entries = [{"Id": str(i), "MessageBody": d.message()} for i, d in enumerate(batch)]
        try:
            resp = self.client.send_message_batch(QueueUrl=self.url, Entries=entries)
        except Exception as exc:
            raise StorageError(f"cannot queue backups on {self.url}: {exc}") from exc
        if resp.get("Failed"):
            failed = resp["Failed"][0]
            raise StorageError(f"SQS refused {len(resp['Failed'])} backup message(s): {failed.get('Message')}")
        return len(resp.get("Successful", []))


def run_dispatch(config: Config, tick: datetime, queue: BackupQueue, cursor: DispatchCursor | None) -> list[DueBackup]:
    lookback = timedelta(minutes=config.settings.dispatch_lookback_minutes)
    after, until = window(tick, cursor.get() if cursor else None, lookback)
    due = due_backups(config, after, until)
    if due:
        queue.send(due)
    if cursor:
        cursor.advance(until)
    return due
