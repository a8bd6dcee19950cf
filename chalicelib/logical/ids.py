"""Backup ids and the key layout of logical backups: formatted and parsed here and nowhere else
(chalicelib.logical.catalog re-exports them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from chalicelib.errors import BadRequestError

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_ID = re.compile(r"^(logical|snapshot):([a-z][a-z0-9-]{0,47})(?:/([A-Za-z0-9_.%~-]{1,200}))?:(\d{8}T\d{6}Z)$")
MANIFEST_NAME = "manifest.json"
FUTURE_SLOT_TOLERANCE = timedelta(minutes=5)  # a slot later than now + this is not believed (see is_future)
ALL_DATABASES = "@"  # the database part of a failed record's key for the target (never made by quote: '@' -> %40)


def is_future(slot: datetime, now: datetime) -> bool:
    """Whether a backup's slot lies later than `now` allows: it is not the newest, whatever it says."""
    return slot > now + FUTURE_SLOT_TOLERANCE


def format_stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(STAMP_FORMAT)


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True, order=True)
class BackupId:
    """`<kind>:<target>[/<database>]:<YYYYMMDDTHHMMSSZ>`: kind (logical, snapshot), target, slot, and for a
    whole-server target the database (percent-encoded) of one of the run's dumps."""

    target: str
    stamp: datetime
    kind: str = "logical"
    database: str = ""

    def __str__(self) -> str:
        db = f"/{quote(self.database, safe='')}" if self.database else ""
        return f"{self.kind}:{self.target}{db}:{format_stamp(self.stamp)}"

    def for_database(self, database: str) -> BackupId:
        return BackupId(self.target, self.stamp, self.kind, database)

    @classmethod
    def parse(cls, text: str) -> BackupId:
        m = _ID.match(text or "")
        if not m:
            raise BadRequestError(
                f"{text!r} is not a backup id (expected logical|snapshot:<target>:<YYYYMMDDTHHMMSSZ>)"
            )
        try:
            stamp = parse_stamp(m.group(4))
        except ValueError:
            raise BadRequestError(f"{text!r} has an impossible date") from None
        return cls(m.group(2), stamp, m.group(1), unquote(m.group(3)) if m.group(3) else "")


@dataclass(frozen=True)
class Layout:
    """Keys sort by target and then time: logical/<target>/<YYYY>/<MM>/<DD>/<stamp>/<object>."""

    prefix: str = ""

    def target_prefix(self, target: str) -> str:
        return f"{self.prefix}logical/{target}/"

    def backup_prefix(self, bid: BackupId) -> str:
        """A run's folder; each database of a whole-server run has its own folder inside it."""
        s = bid.stamp
        run = f"{self.target_prefix(bid.target)}{s:%Y}/{s:%m}/{s:%d}/{format_stamp(s)}/"
        return f"{run}databases/{quote(bid.database, safe='')}/" if bid.database else run

    def dump_key(self, bid: BackupId, fmt: str = "custom") -> str:
        return self.backup_prefix(bid) + ("database.dump" if fmt == "custom" else "database.dir/")

    def globals_key(self, bid: BackupId) -> str:
        return self.backup_prefix(bid) + "globals.sql"

    def manifest_key(self, bid: BackupId) -> str:
        return self.backup_prefix(bid) + MANIFEST_NAME

    @property
    def failed_prefix(self) -> str:
        return f"{self.prefix}failed/"

    def failed_key(self, bid: BackupId, attempt: datetime) -> str:
        """failed/<target>/<slot>_<database, percent-encoded; @: the target's>_<attempt's start, microseconds>.json:
        one record per database and attempt (a retry of the slot, another database of the run, never overwrite)."""
        db = quote(bid.database, safe="") if bid.database else ALL_DATABASES
        started = attempt.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{self.failed_prefix}{bid.target}/{format_stamp(bid.stamp)}_{db}_{started}.json"

    def parse_manifest_key(self, key: str) -> BackupId | None:
        rest = key.removeprefix(self.prefix)
        parts = rest.split("/")
        if parts[0] != "logical" or parts[-1] != MANIFEST_NAME:
            return None
        if len(parts) == 7:
            text = f"logical:{parts[1]}:{parts[5]}"
        elif len(parts) == 9 and parts[6] == "databases":
            text = f"logical:{parts[1]}/{parts[7]}:{parts[5]}"
        else:
            return None
        try:
            bid = BackupId.parse(text)
        except BadRequestError:
            return None
        return bid if self.manifest_key(bid) == key else None
