"""A target's `wal` section: point-in-time recovery from a WAL stream and base backups (chalicelib.pitr).

Kept apart from chalicelib.config (which imports it) so the section and its checks live with the capability.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chalicelib.scheduling.schedules import Schedule, ScheduleSyntaxError

SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


class Wal(BaseModel):
    """`wal: {}` streams the target's WAL into the bucket (`lifeboat wal-stream TARGET`, one long-running task)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # schemas built on first use (cold start)

    flush_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="the open segment is uploaded this often: the recovery point objective",
    )
    slot: str | None = Field(
        default=None, description="physical replication slot name; default lifeboat_<target, '-' as '_'>"
    )
    replication_user: str | None = Field(
        default=None, min_length=1, description="login with the REPLICATION attribute; default connection.user"
    )
    replication_password_secret: str | None = Field(
        default=None, description="replication_user's password secret; default connection.password_secret"
    )
    max_retained_wal_mib: int = Field(
        default=10240, ge=16, description="alarm when the slot makes the server keep more WAL than this"
    )
    base_backup_after_gap: bool = Field(
        default=True,
        description="wal-stream takes a base backup itself when it records a gap (or starts with the window broken):"
        " times after a gap are restorable only from a base taken after it",
    )
    incremental: bool = Field(
        default=False,
        description="PostgreSQL 17+ with summarize_wal = on: `lifeboat base-backup` takes incremental bases"
        " (pg_basebackup --incremental against the previous base; recover combines the chain with pg_combinebackup)",
    )
    full_every: int = Field(
        default=6, ge=1, le=100, description="with incremental: a full base after this many incremental ones"
    )

    base_schedule: str | None = Field(
        default=None,
        description="wal-stream takes a base backup at each slot of this EventBridge expression (as"
        " logical.schedule), e.g. 'cron(0 3 * * ? *)'; slots missed while it was down give one base; None: none",
    )
    pitr_days: int = Field(
        default=7,
        ge=1,
        description="wal-prune keeps all WAL from the newest kept base that started this many days ago (the"
        " window for any time); older kept bases keep only their own WAL (restorable to their end)",
    )

    @field_validator("base_schedule")
    @classmethod
    def _base_schedule(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Schedule.parse(value)
            except ScheduleSyntaxError as exc:
                raise ValueError(f"base_schedule: {exc}") from None
        return value

    @field_validator("slot")
    @classmethod
    def _slot(cls, value: str | None) -> str | None:
        if value is not None and not SLOT_NAME.fullmatch(value):
            raise ValueError(f"slot {value!r}: use 1-63 lowercase letters, digits and underscores")
        return value

    def slot_name(self, target: str) -> str:
        return self.slot or f"lifeboat_{target.replace('-', '_')}"

    def schedule(self) -> Schedule | None:
        """The parsed base_schedule (checked when the section was read)."""
        return Schedule.parse(self.base_schedule) if self.base_schedule else None
