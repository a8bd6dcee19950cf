"""What backups exist: ids, the key layout, and manifests.

A logical backup is complete exactly when its manifest exists *and* every object it lists is in the bucket with
its size: the manifest is written last, after every object it lists. Objects without a manifest are never listed
and never restored, and neither is a manifest whose objects are missing (a phantom: it is reported as not
complete, never listed). Ids and keys are formatted and parsed here and nowhere else.

A manifest is believed only for the key it sits at (manifest_problems): its backup_id must be the id that key
encodes, its target that id's target, its status SUCCEEDED, it must list a dump (or a directory dump's files; a
whole-server run's manifest: globals and its list of databases), and every object it lists must lie in the backup's
own folder. Anything else (an empty manifest, one copied from another target or slot) is not a backup: not listed,
not latest, not complete, and a restore of it is refused with the problem named.

A backup whose slot is later than now + FUTURE_SLOT_TOLERANCE (a skewed clock, a typo) is never `latest`.

A manifest PUT whose outcome is unknown (an error after the request may have landed: a lost acknowledgement, a
timeout) is resolved by reading back before the attempt is called complete or failed: see write_manifest.

With a signing key (settings.signing_key_id) every manifest is signed as it is written and checked before a restore
or `lifeboat verify` believes it: chalicelib.logical.signing.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import BadRequestError, NotFoundError, StorageError
from chalicelib.observability import logger

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


class ManifestObject(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["dump", "globals", "dir-file"]  # dir-file: one file of a directory-format dump
    key: str
    size: int
    sha256: str
    version_id: str | None = None  # the S3 version written (None: not recorded, an older manifest): locked by it


class ManifestSignature(BaseModel):
    """A KMS MAC over the manifest's canonical form without this block (chalicelib.logical.signing)."""

    model_config = ConfigDict(extra="ignore")
    key_id: str  # as KMS named the key that signed (informative: a check uses the configured key, never this)
    algorithm: str
    canonicalization: str
    value: str  # base64


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
    signature: ManifestSignature | None = None  # None: written without a signing key (or before signing existed)
    _read_from: BackupId | None = PrivateAttr(default=None)  # the id of the key it was read from (read_manifest)
    _raw: dict[str, Any] | None = PrivateAttr(default=None)  # the JSON as stored (read_manifest): what was signed
    _stored_at: datetime | None = PrivateAttr(default=None)  # the manifest object's LastModified (set by S3)
    _stored_version: str | None = PrivateAttr(default=None)  # and its VersionId (HEAD before the GET)

    @property
    def raw(self) -> dict[str, Any] | None:
        return self._raw

    @property
    def stored_at(self) -> datetime | None:
        return self._stored_at

    @property
    def read_from(self) -> BackupId | None:
        return self._read_from

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
            raise NotFoundError(
                f"{self.backup_id} is a whole-server run (globals and the list of databases):"
                f" restore one of its databases, e.g. {example}"
            )
        raise NotFoundError(f"backup {self.backup_id} has no {role} object")

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class ManifestNotWritten(StorageError):
    """The manifest write failed, and reading back found no manifest left (none landed, or it was removed): the
    attempt's objects may be deleted."""


class ManifestLeftBehind(StorageError):
    """The manifest write failed, the backup is not complete, and its manifest could not be removed: the objects
    must stay with it (never a manifest without its objects). The next delivery finds it incomplete and redoes it."""


class Signing(Protocol):
    """Signs manifests as they are written and checks them before they are believed (signing.ManifestSigning)."""

    def seal(self, manifest: Manifest) -> None: ...
    def check(self, manifest: Manifest) -> dict[str, Any]: ...


class Catalog:
    """Reads and writes manifests through a BackupStore; with `signing`, signs and checks them."""

    def __init__(self, store: BackupStore, layout: Layout, signing: Signing | None = None) -> None:
        self.store = store
        self.layout = layout
        self.signing = signing

    def check_signature(self, manifest: Manifest) -> dict[str, Any]:
        """What the signature check found (IntegrityError: refused); without a signing key, nothing is checked."""
        if self.signing is None:
            return {"status": "NOT_CHECKED", "reason": "settings.signing_key_id is not set"}
        if manifest.signature is None and manifest.read_from is not None:
            # An unsigned one is judged by when S3 stored it: the body read must be the version HEAD dated (a new
            # version PUT between the HEAD and the GET would borrow the old one's LastModified).
            now = self.store.head(self.layout.manifest_key(manifest.read_from))
            if now is None or (now.last_modified, now.version_id) != (manifest.stored_at, manifest._stored_version):
                manifest._stored_at = None  # not known: refused as unsigned
        return self.signing.check(manifest)

    def write_manifest(self, manifest: Manifest, tags: dict[str, str]) -> None:
        """Write the manifest, the last write of a backup. When the PUT raises, its outcome is unknown (the request
        may have landed and only its answer been lost), so it is read back: the manifest and every object it lists
        are HEADed; all there with their sizes: the backup is complete and this returns. Otherwise the manifest is
        removed first (its objects only after that, by the caller) and ManifestNotWritten is raised, or, when the
        manifest cannot be removed, ManifestLeftBehind (the caller then keeps the objects)."""
        bid = BackupId.parse(manifest.backup_id)
        key = self.layout.manifest_key(bid)
        if self.signing is not None:
            self.signing.seal(manifest)
        body = manifest.model_dump_json(indent=2).encode()
        try:
            self.store.put_bytes(key, body, tags=tags, content_type="application/json")
        except StorageError as exc:
            self._resolve_unknown_write(bid, manifest, key, len(body), exc)

    def _resolve_unknown_write(self, bid: BackupId, manifest: Manifest, key: str, size: int, exc: StorageError) -> None:
        try:
            stored = self.store.head(key)
            problems = (
                ["the manifest"]
                if stored is None
                else [f"{key} ({stored.size} bytes, not {size})"]
                if stored.size != size
                else self._missing_by_head(manifest)
            )
        except StorageError as read_exc:
            stored, problems = None, [f"cannot read back: {read_exc}"]
        if not problems:
            logger.warning(
                "the manifest write reported an error, but the manifest and every object it lists are"
                " in the bucket: the backup is complete",
                extra={"backup_id": str(bid), "error": str(exc)},
            )
            return
        if problems == ["the manifest"]:
            raise ManifestNotWritten(
                f"writing the manifest of {bid} failed and it is not in the bucket: the backup is not complete ({exc})"
            ) from exc
        try:
            self.store.delete([key])
        except StorageError as delete_exc:
            raise ManifestLeftBehind(
                f"writing the manifest of {bid} failed ({exc}); reading back found it incomplete"
                f" ({'; '.join(problems)}), and removing the manifest failed too ({delete_exc}): its objects are kept;"
                " the next delivery finds the backup incomplete and backs the slot up again"
            ) from exc
        raise ManifestNotWritten(
            f"writing the manifest of {bid} failed ({exc}); reading back found the backup not"
            f" complete ({'; '.join(problems)}): the manifest was removed"
        ) from exc

    def _missing_by_head(self, manifest: Manifest) -> list[str]:
        problems = []
        for obj in manifest.objects:
            head = self.store.head(obj.key)
            if head is None or head.size != obj.size:
                problems.append(_problem(obj, head.size if head else None))
        return problems

    def missing_objects(self, manifest: Manifest, sizes: dict[str, int] | None = None) -> list[str]:
        """Why the manifest is not a complete backup (empty: it is): what manifest_problems finds (checked against
        the key it was read from), else the objects it lists that are not in the bucket. `sizes`: a listing already
        made (key -> size); without one, one LIST of the backup's folder. An object that is there with another size
        is not missing: the restore refuses it by its size and SHA-256 (IntegrityError)."""
        invalid = self.manifest_problems(manifest)
        if invalid:
            return invalid
        if sizes is None:
            prefix = self.layout.backup_prefix(BackupId.parse(manifest.backup_id))
            sizes = {o.key: o.size for o in self.store.list_objects(prefix)}
        return [_problem(o, None) for o in manifest.objects if o.key not in sizes]

    def manifest_problems(self, manifest: Manifest, bid: BackupId | None = None) -> list[str]:
        """Why the manifest does not describe the backup `bid` (default: the id of the key it was read from, else
        its own): see the module's docstring. Empty: it does."""
        bid = bid or manifest.read_from
        if bid is None:
            try:
                bid = BackupId.parse(manifest.backup_id)
            except BadRequestError as exc:
                return [f"invalid manifest: {exc}"]
        problems = []
        if manifest.backup_id != str(bid):
            problems.append(f"its backup_id is {manifest.backup_id!r}, not {str(bid)!r}")
        if manifest.target != bid.target:
            problems.append(f"its target is {manifest.target!r}, not {bid.target!r}")
        if manifest.status != "SUCCEEDED":
            problems.append(f"its status is {manifest.status}")
        roles = {o.role for o in manifest.objects}
        if manifest.databases is not None:
            if bid.database or "globals" not in roles:
                problems.append("a whole-server run's manifest must sit at the run's key and list its globals")
        elif not roles & {"dump", "dir-file"}:
            problems.append("it lists no dump")
        prefix = self.layout.backup_prefix(bid)
        outside = [o.key for o in manifest.objects if not o.key.startswith(prefix) or "/../" in f"/{o.key}/"]
        if outside:
            problems.append(f"it lists objects outside {prefix}: {', '.join(outside[:3])}")
        return [f"invalid manifest at {self.layout.manifest_key(bid)}: {p}" for p in problems]

    def read_manifest(self, bid: BackupId) -> Manifest | None:
        """The manifest as it is in the bucket, complete or not (None: there is none)."""
        key = self.layout.manifest_key(bid)
        stored = self.store.head(key)
        if stored is None:
            return None
        raw = json.loads(self.store.get_bytes(key))
        found = Manifest.model_validate(raw)
        found._read_from, found._raw, found._stored_at = bid, raw, stored.last_modified
        found._stored_version = stored.version_id
        return found

    def remove_manifest(self, bid: BackupId) -> None:
        """Take an incomplete backup out of the catalog (a plain delete: a delete marker in a versioned bucket)."""
        self.store.delete([self.layout.manifest_key(bid)])

    def write_failure(self, manifest: Manifest) -> None:
        """A FAILED record, one per database and attempt (Layout.failed_key; the attempt: its started_at)."""
        bid = BackupId.parse(manifest.backup_id)
        key = self.layout.failed_key(bid, manifest.started_at)
        self.store.put_bytes(key, manifest.model_dump_json(indent=2).encode(), content_type="application/json")

    def listing(self, target: str) -> dict[str, int]:
        """Every object of a target's backups: key -> size (one LIST)."""
        return {o.key: o.size for o in self.store.list_objects(self.layout.target_prefix(target))}

    def backup_ids(self, target: str, listing: dict[str, int] | None = None) -> list[BackupId]:
        """Backups of a target that have a manifest, newest first (one LIST, no GETs). Whether every object a
        manifest lists is there is checked when the manifest is read (manifest, list_backups)."""
        keys = self.listing(target) if listing is None else listing
        return sorted((bid for key in keys if (bid := self.layout.parse_manifest_key(key)) is not None), reverse=True)

    def manifest(self, bid: BackupId) -> Manifest:
        """The manifest of a complete backup; NotFoundError when there is none, or when objects it lists are not
        in the bucket (the backup is not complete, and says which)."""
        if bid.kind != "logical":
            raise BadRequestError(
                f"{bid} is a {bid.kind}, not a logical dump: restore it through the snapshot form"
                " (POST /restores with its backup_id, new_id ...), not as a dump"
            )
        found = self.read_manifest(bid)
        if found is None:
            raise NotFoundError(f"no complete backup {bid} (no manifest at {self.layout.manifest_key(bid)})")
        invalid = self.manifest_problems(found, bid)
        if invalid:
            raise NotFoundError(f"{bid} is not a backup: {'; '.join(invalid)}")
        missing = self.missing_objects(found)
        if missing:
            raise NotFoundError(
                f"backup {bid} is not complete: its manifest lists objects that are not in the bucket:"
                f" {'; '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        return found

    def list_backups(self, target: str, limit: int = 50) -> list[Manifest]:
        """Complete backups of a target, newest first: one LIST, one GET per manifest; a manifest whose objects
        are not all in that listing is left out (and logged)."""
        listing = self.listing(target)
        ids = self.backup_ids(target, listing)
        complete: list[Manifest] = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            while ids and len(complete) < limit:
                batch, ids = ids[: limit - len(complete)], ids[limit - len(complete) :]
                for manifest in pool.map(self.read_manifest, batch):
                    if manifest is None:
                        continue
                    missing = self.missing_objects(manifest, listing)
                    if missing:
                        logger.warning(
                            "not listed: its manifest is invalid or lists objects that are not in the bucket",
                            extra={"backup_id": manifest.backup_id, "missing": missing[:5]},
                        )
                    else:
                        complete.append(manifest)
        return complete

    def latest(self, target: str, now: datetime | None = None) -> Manifest | None:
        """The newest complete backup whose slot is not in the future (is_future; `now`: the clock, default UTC
        now). A future one is passed over and logged."""
        now = now or datetime.now(UTC)
        limit = 1
        while True:
            found = self.list_backups(target, limit=limit)
            for manifest in found:
                if not is_future(manifest.slot, now):
                    return manifest
                logger.warning(
                    "a backup's slot is in the future: not the latest",
                    extra={"backup_id": manifest.backup_id, "slot": manifest.slot.isoformat(), "now": now.isoformat()},
                )
            if len(found) < limit:
                return None
            limit *= 4

    def previous_success(self, target: str, before: datetime, database: str = "") -> datetime | None:
        """Slot of the newest complete backup (of the same database) strictly before `before`."""
        for bid in self.backup_ids(target):
            if bid.stamp < before and bid.database == database:
                return bid.stamp
        return None

    def failures(self, target: str) -> list[Manifest]:
        """The target's FAILED records, newest slot first (records of older versions, failed/<target>/<slot>.json,
        among them)."""
        keys = sorted((o.key for o in self.store.list_objects(f"{self.layout.failed_prefix}{target}/")), reverse=True)
        return [Manifest.model_validate(json.loads(self.store.get_bytes(k))) for k in keys]

    def list_failures(self, target: str, limit: int = 50) -> list[Manifest]:
        """The target's newest `limit` FAILED records, newest slot first and, within a slot, latest attempt first
        (one LIST, one GET per record returned)."""

        def newest(key: str) -> tuple[str, str]:  # <slot>_<database>_<attempt>.json, or <slot>.json (older)
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            return name.split("_", 1)[0], name.rsplit("_", 1)[-1] if "_" in name else ""

        keys = sorted((o.key for o in self.store.list_objects(f"{self.layout.failed_prefix}{target}/")), key=newest)
        chosen = keys[::-1][: max(limit, 0)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda k: Manifest.model_validate(json.loads(self.store.get_bytes(k))), chosen))


def _problem(obj: ManifestObject, size: int | None) -> str:
    return f"{obj.key} ({'missing' if size is None else f'{size} bytes, not {obj.size}'})"
