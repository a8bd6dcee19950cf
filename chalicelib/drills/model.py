"""A restore drill as evidence: which backup, where it went, when, how long recovery took, every check and its result,
who configured it, and what was cleaned up. The same document is kept in DynamoDB and, once finished, in the bucket.

A drill moves RUNNING → SUCCEEDED | FAILED. Ids: `d-<16 hex digits>`; a snapshot drill's restore (chalicelib.restore)
is `r-<the same digits>`, its temporary instance `lifeboat-drill-<the same digits>`, a logical drill's scratch
database `lifeboat_drill_<the first 12>`.
"""

from __future__ import annotations

import random
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.restore.plan import DRILL_DATABASE_PREFIX, DRILL_ID_PREFIX

# UNVERIFIED: never stored; how a view shows a finished drill whose signed evidence does not verify (drills.evidence)
DrillStatus = Literal["RUNNING", "SUCCEEDED", "FAILED", "UNVERIFIED"]
DRILL_ID = re.compile(r"^d-[0-9a-f]{16}$")
DRILL_TAG = "lifeboat:drill"  # on a snapshot drill's temporary instance/cluster: the drill's id
INSTANCE_PREFIX = DRILL_ID_PREFIX  # no restore job may take a name under it (restore.service)
DATABASE_PREFIX = DRILL_DATABASE_PREFIX
# The only names a drill's runner or the sweeper ever drops (scratch_database's shape); nothing from a record.
SCRATCH_DATABASE = re.compile(r"^lifeboat_drill_[0-9a-f]{12}$")


def new_drill_id(rng: random.Random) -> str:
    return f"d-{rng.getrandbits(64):016x}"


def digits(drill_id: str) -> str:
    return drill_id.removeprefix("d-")


def scratch_database(drill_id: str) -> str:
    """The scratch database of a logical drill; a ValueError for anything but a drill id (`d-<16 hex digits>`)."""
    if not DRILL_ID.fullmatch(drill_id):
        raise ValueError(f"{drill_id!r} is not a drill id (d-<16 hex digits>)")
    return DATABASE_PREFIX + digits(drill_id)[:12]


def drill_instance_id(drill_id: str) -> str:
    return INSTANCE_PREFIX + digits(drill_id)


def drill_restore_id(drill_id: str) -> str:
    return "r-" + digits(drill_id)


class CheckResult(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built on first use, not at import (cold start)
    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


class DrillError(BaseModel):
    model_config = ConfigDict(defer_build=True)
    code: str
    message: str


class DrillRecord(BaseModel):
    model_config = ConfigDict(defer_build=True)
    drill_id: str
    target: str
    kind: Literal["logical", "snapshot"]
    status: DrillStatus = "RUNNING"
    trigger: str = "schedule"
    slot: datetime | None = Field(default=None, description="the schedule slot that started it")
    pick: str
    backup_id: str | None = None
    backup_time: datetime | None = None
    into: dict[str, Any] = Field(default_factory=dict, description="scratch server and database, or the instance")
    started_at: datetime
    finished_at: datetime | None = None
    restore_seconds: float | None = Field(default=None, description="the restore itself (pg_restore and row counts)")
    recovery_seconds: float | None = Field(
        default=None, description="measured recovery time: from the drill's start until every check had passed"
    )
    rto_seconds: int | None = None
    rto_met: bool | None = None
    checks: list[CheckResult] = Field(default_factory=list)
    cleanup: dict[str, Any] = Field(default_factory=dict)
    error: DrillError | None = None
    configured: dict[str, Any] = Field(default_factory=dict, description="the drill section as run, owner included")
    restore: dict[str, Any] | None = Field(default=None, description="snapshot drills: the restore job advanced")
    evidence_key: str | None = None
    evidence_version: str | None = Field(default=None, description="the S3 VersionId of the evidence document")
    lease_until: datetime | None = Field(default=None, description="a worker is in the drill until then")

    @property
    def finished(self) -> bool:
        return self.status != "RUNNING"

    def failed(self, code: str, message: str) -> DrillRecord:
        return self.model_copy(update={"status": "FAILED", "error": DrillError(code=code, message=message[:2000])})

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"restore", "lease_until"})
