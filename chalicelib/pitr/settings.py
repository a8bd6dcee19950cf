"""A target's `wal` section: point-in-time recovery from a WAL stream and base backups (chalicelib.pitr).

Kept apart from chalicelib.config (which imports it) so the section and its checks live with the capability.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("slot")
    @classmethod
    def _slot(cls, value: str | None) -> str | None:
        if value is not None and not SLOT_NAME.fullmatch(value):
            raise ValueError(f"slot {value!r}: use 1-63 lowercase letters, digits and underscores")
        return value

    def slot_name(self, target: str) -> str:
        return self.slot or f"lifeboat_{target.replace('-', '_')}"
