"""Restore jobs: their record in DynamoDB and their queue.

A job moves PENDING → RUNNING → SUCCEEDED | FAILED. Transitions are conditional writes, so a second
worker (an SQS redelivery) cannot start a job another worker is running, and a finished job never
changes again.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from chalicelib.adapters.pgtools import Toolbox
from chalicelib.adapters.postgres import CredentialResolver
from chalicelib.config import Config
from chalicelib.errors import NotFoundError, StorageError
from chalicelib.logical.catalog import Catalog
from chalicelib.physical.snapshots import SnapshotServices

Status = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED"]
KEY_PREFIX = "restore#"


def new_restore_id() -> str:
    return "r-" + secrets.token_hex(8)


class JobError(BaseModel):
    code: str
    message: str


class RestoreJob(BaseModel):
    restore_id: str
    kind: Literal["logical", "snapshot", "point_in_time"]
    status: Status = "PENDING"
    target: str
    backup_id: str | None = None
    request: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] = Field(default_factory=dict)
    error: JobError | None = None
    attempts: int = 0

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class RestoreJobStore:
    def __init__(self, client: Any, table: str) -> None:
        self.client, self.table = client, table

    def _item(self, job: RestoreJob, lease_until: datetime | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "pk": {"S": KEY_PREFIX + job.restore_id},
            "status": {"S": job.status},
            "created_at": {"S": job.created_at.isoformat()},
            "doc": {"S": job.model_dump_json()},
            "expires_at": {"N": str(int((job.created_at + timedelta(days=90)).timestamp()))},
        }
        if lease_until:
            item["lease_until"] = {"N": str(int(lease_until.timestamp()))}
        return item

    def create(self, job: RestoreJob) -> None:
        try:
            self.client.put_item(TableName=self.table, Item=self._item(job),
                                 ConditionExpression="attribute_not_exists(pk)")
        except Exception as exc:
            raise StorageError(f"cannot record restore {job.restore_id} in {self.table!r}: {exc}") from exc

    def get(self, restore_id: str) -> RestoreJob:
        resp = self.client.get_item(TableName=self.table, Key={"pk": {"S": KEY_PREFIX + restore_id}},
                                    ConsistentRead=True)
        item = resp.get("Item")
        if not item:
            raise NotFoundError(f"no restore {restore_id!r}")
        return RestoreJob.model_validate_json(item["doc"]["S"])

    def start(self, job: RestoreJob, lease: timedelta) -> RestoreJob | None:
        """PENDING (or RUNNING with an expired lease) → RUNNING; None if another worker has it or it ended."""
        from botocore.exceptions import ClientError

        now = datetime.now(UTC)
        started = job.model_copy(update={"status": "RUNNING", "started_at": job.started_at or now,
                                         "updated_at": now, "attempts": job.attempts + 1})
        try:
            self.client.put_item(
                TableName=self.table, Item=self._item(started, now + lease),
                ConditionExpression="#s = :pending OR (#s = :running AND lease_until < :now)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":pending": {"S": "PENDING"}, ":running": {"S": "RUNNING"},
                                           ":now": {"N": str(int(now.timestamp()))}})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise StorageError(f"cannot start restore {job.restore_id}: {exc}") from exc
        return started

    def save(self, job: RestoreJob, lease: timedelta | None = None) -> RestoreJob:
        """Write progress or the final state of a running job (never over a finished one)."""
        from botocore.exceptions import ClientError

        now = datetime.now(UTC)
        job = job.model_copy(update={"updated_at": now})
        if job.status in ("SUCCEEDED", "FAILED") and job.finished_at is None:
            job = job.model_copy(update={"finished_at": now})
        try:
            self.client.put_item(TableName=self.table, Item=self._item(job, now + lease if lease else None),
                                 ConditionExpression="#s = :running OR #s = :pending",
                                 ExpressionAttributeNames={"#s": "status"},
                                 ExpressionAttributeValues={":running": {"S": "RUNNING"},
                                                            ":pending": {"S": "PENDING"}})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return self.get(job.restore_id)
            raise StorageError(f"cannot update restore {job.restore_id}: {exc}") from exc
        return job

    def recent(self, limit: int = 50) -> list[RestoreJob]:
        jobs: list[RestoreJob] = []
        paginator = self.client.get_paginator("scan")
        for page in paginator.paginate(TableName=self.table, FilterExpression="begins_with(pk, :p)",
                                       ExpressionAttributeValues={":p": {"S": KEY_PREFIX}}):
            jobs.extend(RestoreJob.model_validate_json(i["doc"]["S"]) for i in page.get("Items", []))
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        return jobs[:limit]


class RestoreQueue:
    def __init__(self, client: Any, url: str) -> None:
        self.client, self.url = client, url

    def send(self, restore_id: str) -> None:
        try:
            self.client.send_message(QueueUrl=self.url, MessageBody=json.dumps({"restore_id": restore_id}))
        except Exception as exc:
            raise StorageError(f"cannot queue restore {restore_id} on {self.url}: {exc}") from exc


@dataclass
class RestoreServices:
    """What a restore needs: the API, the worker and the sweeper share it."""

    config: Config
    catalog: Catalog
    jobs: RestoreJobStore
    restore_queue: RestoreQueue
    credentials: CredentialResolver
    toolbox: Toolbox
    snapshots: SnapshotServices | None = None  # built only when a target has a physical section
