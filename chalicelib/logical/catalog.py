"""What backups exist: ids, the key layout, and manifests.

A logical backup is complete exactly when its manifest exists: the manifest is written last, after
every object it lists. Objects without a manifest are never listed and never restored. Ids and keys
are formatted and parsed here and nowhere else.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import BadRequestError, NotFoundError

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_ID = re.compile(r"^(logical|snapshot):([a-z][a-z0-9-]{0,47})(?:/([A-Za-z0-9_.%~-]{1,200}))?:(\d{8}T\d{6}Z)$")
MANIFEST_NAME = "manifest.json"


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
            raise BadRequestError(f"{text!r} is not a backup id"
                                  " (expected logical|snapshot:<target>:<YYYYMMDDTHHMMSSZ>)")
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

    def failed_key(self, bid: BackupId) -> str:
        return f"{self.failed_prefix}{bid.target}/{format_stamp(bid.stamp)}.json"

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


class ManifestObject(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["dump", "globals", "dir-file"]  # dir-file: one file of a directory-format dump
    key: str
    size: int
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    manifest_version: int = 1
    backup_id: str
    kind: Literal["logical"] = "logical"
    status: Literal["SUCCEEDED", "FAILED"] = "SUCCEEDED"
    target: str
    slot: datetime
    trigger: str = "schedule"
    host: str
    database: str
    server_version: str
    server_version_num: int
    pg_dump_version: int
    format: Literal["custom", "directory"]
    compression: str
    objects: list[ManifestObject] = Field(default_factory=list)
    size: int = 0
    started_at: datetime
    finished_at: datetime
    retention_class: str
    retention_policy: str
    snapshot_id: str | None = None
    row_counts: dict[str, int] | None = None
    error: str | None = None
    databases: list[str] | None = None  # a whole-server run: the databases dumped (each its own backup)

    def files(self) -> list[ManifestObject]:
        """The files of a directory-format dump (toc.dat among them)."""
        return [o for o in self.objects if o.role == "dir-file"]

    def object(self, role: str) -> ManifestObject:
        for obj in self.objects:
            if obj.role == role:
                return obj
        if self.databases is not None and role == "dump":
            bid = BackupId.parse(self.backup_id)
            example = bid.for_database(self.databases[0]) if self.databases else bid
            raise NotFoundError(f"{self.backup_id} is a whole-server run (globals and the list of databases):"
                                f" restore one of its databases, e.g. {example}")
        raise NotFoundError(f"backup {self.backup_id} has no {role} object")

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class Catalog:
    """Reads and writes manifests through a BackupStore."""

    def __init__(self, store: BackupStore, layout: Layout) -> None:
        self.store = store
        self.layout = layout

    def write_manifest(self, manifest: Manifest, tags: dict[str, str]) -> None:
        bid = BackupId.parse(manifest.backup_id)
        self.store.put_bytes(self.layout.manifest_key(bid), manifest.model_dump_json(indent=2).encode(),
                             tags=tags, content_type="application/json")

    def write_failure(self, manifest: Manifest) -> None:
        bid = BackupId.parse(manifest.backup_id)
        self.store.put_bytes(self.layout.failed_key(bid), manifest.model_dump_json(indent=2).encode(),
                             content_type="application/json")

    def backup_ids(self, target: str) -> list[BackupId]:
        """Complete backups of a target, newest first (one LIST, no GETs)."""
        ids = [bid for obj in self.store.list_objects(self.layout.target_prefix(target))
               if (bid := self.layout.parse_manifest_key(obj.key)) is not None]
        return sorted(ids, reverse=True)

    def manifest(self, bid: BackupId) -> Manifest:
        if bid.kind != "logical":
            raise BadRequestError(f"{bid} is a {bid.kind}, not a logical dump: restore it through the snapshot form"
                                  " (POST /restores with its backup_id, new_id ...), not as a dump")
        key = self.layout.manifest_key(bid)
        if self.store.head(key) is None:
            raise NotFoundError(f"no complete backup {bid} (no manifest at {key})")
        return Manifest.model_validate(json.loads(self.store.get_bytes(key)))

    def list_backups(self, target: str, limit: int = 50) -> list[Manifest]:
        ids = self.backup_ids(target)[:limit]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self.manifest, ids))

    def latest(self, target: str) -> Manifest | None:
        ids = self.backup_ids(target)
        return self.manifest(ids[0]) if ids else None

    def previous_success(self, target: str, before: datetime, database: str = "") -> datetime | None:
        """Slot of the newest complete backup (of the same database) strictly before `before`."""
        for bid in self.backup_ids(target):
            if bid.stamp < before and bid.database == database:
                return bid.stamp
        return None

    def failures(self, target: str) -> list[Manifest]:
        keys = sorted((o.key for o in self.store.list_objects(f"{self.layout.failed_prefix}{target}/")), reverse=True)
        return [Manifest.model_validate(json.loads(self.store.get_bytes(k))) for k in keys]
