"""Restore jobs: the model, its store (records in the jobs table, chalicelib.adapters.dynamo) and its queue.

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

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.adapters.dynamo import RestoreJobTable, RestoreRecord
from chalicelib.adapters.pgtools import Toolbox
from chalicelib.adapters.postgres import CredentialResolver
from chalicelib.adapters.sqs import Queue
from chalicelib.config import Config
from chalicelib.errors import NotFoundError
from chalicelib.logical.catalog import Catalog
from chalicelib.physical.model import SnapshotServices

Status = Literal["PENDING", "RUNNING", "SUCCEEDED", "FAILED"]
JobKind = Literal["logical", "snapshot", "point_in_time", "wal"]  # wal: a WAL recovery plan (restore.wal_recovery)
RECENT_SCAN = 1000
# A job unfinished for longer (its worker and every redelivery died) no longer counts against the quotas.
ACTIVE_WINDOW = timedelta(hours=24)


def new_restore_id() -> str:
    return "r-" + secrets.token_hex(8)


class JobError(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built on first use, not at import (cold start)
    code: str
    message: str


class RestoreJob(BaseModel):
    model_config = ConfigDict(defer_build=True)
    restore_id: str
    kind: JobKind
    status: Status = "PENDING"
    target: str
    into_target: str | None = Field(
        default=None,
        description="the configured target restored into (what the"
        " quotas count; snapshot and point-in-time restores: the target itself)",
    )
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
    """Restore jobs as RestoreJob models; chalicelib.adapters.dynamo stores them (as JSON) and lists them."""

    def __init__(self, records: RestoreJobTable) -> None:
        self.records = records

    @staticmethod
    def _record(job: RestoreJob) -> RestoreRecord:
        return RestoreRecord(job.restore_id, job.status, job.created_at, job.model_dump_json())

    @staticmethod
    def _jobs(docs: list[str]) -> list[RestoreJob]:
        return [RestoreJob.model_validate_json(doc) for doc in docs]

    def create(self, job: RestoreJob) -> None:
        self.records.create(self._record(job))

    def get(self, restore_id: str) -> RestoreJob:
        doc = self.records.get(restore_id)
        if doc is None:
            raise NotFoundError(f"no restore {restore_id!r}")
        return RestoreJob.model_validate_json(doc)

    def start(self, job: RestoreJob, lease: timedelta) -> RestoreJob | None:
        """PENDING (or RUNNING with an expired lease) → RUNNING; None if another worker has it or it ended."""
        now = datetime.now(UTC)
        started = job.model_copy(
            update={
                "status": "RUNNING",
                "started_at": job.started_at or now,
                "updated_at": now,
                "attempts": job.attempts + 1,
            }
        )
        return started if self.records.start(self._record(started), now + lease, now) else None

    def save(self, job: RestoreJob, lease: timedelta | None = None) -> RestoreJob:
        """Write progress or the final state of a running job (never over a finished one)."""
        now = datetime.now(UTC)
        job = job.model_copy(update={"updated_at": now})
        if job.status in ("SUCCEEDED", "FAILED") and job.finished_at is None:
            job = job.model_copy(update={"finished_at": now})
        if not self.records.update(self._record(job), now + lease if lease else None):
            return self.get(job.restore_id)
        return job

    def recent(self, limit: int = 50, target: str | None = None) -> list[RestoreJob]:
        """The newest jobs (of one target's backups), newest first (index queries: claims are not read).
        For one target, up to RECENT_SCAN of all targets' newest jobs are looked through."""
        if target is None:
            return self._jobs(self.records.recent(limit))
        mine = [j for j in self._jobs(self.records.recent(RECENT_SCAN, pages=None)) if j.target == target]
        return mine[:limit]

    def active(self, within: timedelta = ACTIVE_WINDOW, limit: int = 1000) -> list[RestoreJob]:
        """Unfinished (PENDING or RUNNING) jobs created within `within`: what the restore quotas count."""
        return self._jobs(self.records.active(limit, datetime.now(UTC) - within))

    def running(self, limit: int = 500) -> list[RestoreJob]:
        """Jobs that are RUNNING, newest first (their own index: neither claims nor finished jobs are read)."""
        return self._jobs(self.records.running(limit))


class RestoreQueue:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def send(self, restore_id: str) -> None:
        self.queue.send(json.dumps({"restore_id": restore_id}))


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
