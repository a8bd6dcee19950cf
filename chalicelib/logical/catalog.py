"""What backups exist: ids, the key layout, and manifests.

A logical backup is complete exactly when its manifest exists *and* every object it lists is in the bucket with
its size: the manifest is written last, after every object it lists. Objects without a manifest are never listed
and never restored, and neither is a manifest whose objects are missing (a phantom: it is reported as not
complete, never listed). Ids and keys: chalicelib.logical.ids (re-exported here).

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

A manifest is written once (a conditional PUT) and read at its first version: later versions of its key (someone
with the worker's PutObject and GenerateMac swapping in a signed manifest of forged data) and delete markers (hiding
the backup) are logged as errors with the metric ManifestOverwritten and otherwise ignored. Which backups exist is
read from the versions too (chalicelib.logical.history): a backup whose manifest a delete marker hides is still
listed, flagged `hidden`, and still kept and locked by the keep pass.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from chalicelib.adapters.s3 import AlreadyWritten, BackupStore
from chalicelib.adapters.versions import KeyHistory, VersionInfo
from chalicelib.errors import BadRequestError, NotFoundError, StorageError
from chalicelib.logical.history import TargetListing
from chalicelib.logical.ids import (
    ALL_DATABASES,
    FUTURE_SLOT_TOLERANCE,
    MANIFEST_NAME,
    STAMP_FORMAT,
    BackupId,
    Layout,
    format_stamp,
    is_future,
    parse_stamp,
)
from chalicelib.logical.manifest import Manifest, ManifestObject, ManifestSignature, PartDigest
from chalicelib.observability import logger, record

__all__ = [  # ids and keys are chalicelib.logical.ids', re-exported for the modules that import them from here
    "ALL_DATABASES",
    "FUTURE_SLOT_TOLERANCE",
    "MANIFEST_NAME",
    "STAMP_FORMAT",
    "BackupId",
    "Catalog",
    "Layout",
    "Manifest",
    "ManifestConflict",
    "ManifestLeftBehind",
    "ManifestNotWritten",
    "ManifestObject",
    "ManifestSignature",
    "PartDigest",
    "Signing",
    "format_stamp",
    "is_future",
    "parse_stamp",
]


class ManifestNotWritten(StorageError):
    """The manifest write failed, and reading back found no manifest left (none landed, or it was removed): the
    attempt's objects may be deleted."""


class ManifestLeftBehind(StorageError):
    """The manifest write failed, the backup is not complete, and its manifest could not be removed: the objects
    must stay with it (never a manifest without its objects). The next delivery finds it incomplete and redoes it."""


class ManifestConflict(ManifestLeftBehind):
    """Another manifest is at the key (a manifest is written once): nothing of the slot is removed."""


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
        # An unsigned one is judged by when S3 stored it: stored_at is the LastModified of the GET of the very version
        # read (read_manifest), so a version PUT later cannot lend it an older date.
        return self.signing.check(manifest)

    def write_manifest(self, manifest: Manifest, tags: dict[str, str]) -> None:
        """Write the manifest, the last write of a backup. When the PUT raises, its outcome is unknown (the request
        may have landed and only its answer been lost), so it is read back: the manifest and every object it lists
        are HEADed; all there with their sizes: the backup is complete and this returns. Otherwise the manifest is
        removed first (its objects only after that, by the caller) and ManifestNotWritten is raised, or, when the
        manifest cannot be removed, ManifestLeftBehind (the caller then keeps the objects).

        Written once: the PUT is conditional (If-None-Match: *); when the key is already there and its first version
        is not this body (another writer's), ManifestConflict: nothing is removed. A manifest removed here is always
        this attempt's own: the worker starts an attempt only when no manifest version is there (dump._existing)."""
        bid = BackupId.parse(manifest.backup_id)
        key = self.layout.manifest_key(bid)
        if self.signing is not None:
            self.signing.seal(manifest)
        body = manifest.model_dump_json(indent=2).encode()
        try:
            put = self.store.put_bytes(key, body, tags=tags, content_type="application/json", if_absent=True)
            manifest._stored_version = put.version_id
        except AlreadyWritten as exc:
            if not self._first_version_is(key, body):
                raise ManifestConflict(
                    f"the manifest of {bid} is already in the bucket, written by another attempt: a manifest is written"
                    " once, so this attempt's is not written and nothing is removed"
                ) from exc
            logger.warning("the manifest PUT was retried after it had landed: the backup is complete")
        except StorageError as exc:
            self._resolve_unknown_write(bid, manifest, key, body, exc)

    def _first_version_is(self, key: str, body: bytes) -> bool:
        first = KeyHistory(tuple(self.store.list_versions(key, exact=True))).first
        return first is not None and self.store.read_version(key, first.version_id)[0] == body

    def _resolve_unknown_write(
        self, bid: BackupId, manifest: Manifest, key: str, body: bytes, exc: StorageError
    ) -> None:
        size = len(body)
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
            if not self._first_version_is(key, body):
                raise ManifestConflict(f"the manifest at {key} is not the one this attempt wrote: it is not removed")
            self.store.delete([key])
        except ManifestConflict:
            raise
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

    def missing_objects(self, manifest: Manifest, listing: TargetListing | None = None) -> list[str]:
        """Why the manifest is not a complete backup (empty: it is): what manifest_problems finds (checked against
        the key it was read from), else the objects it lists that are not in the bucket: the version it recorded
        (TargetListing.present; a delete marker over it does not make it missing). `listing`: one already made;
        without one, one ListObjectVersions of the backup's folder. An object that is there with another size is
        not missing: the restore refuses it by its size and SHA-256 (IntegrityError)."""
        invalid = self.manifest_problems(manifest)
        if invalid:
            return invalid
        if listing is None:
            prefix = self.layout.backup_prefix(BackupId.parse(manifest.backup_id))
            listing = TargetListing.of(self.store.list_versions(prefix))
        return [_problem(o, None) for o in manifest.objects if not listing.present(o.key, o.version_id)]

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

    def read_manifest(self, bid: BackupId, history: KeyHistory | None = None) -> Manifest | None:
        """The manifest's first version, complete or not, hidden by a delete marker or not (None: there is none).
        `history`: its key's versions from a listing already made; without one, one ListObjectVersions of the key."""
        key = self.layout.manifest_key(bid)
        if history is None:
            history = KeyHistory(tuple(self.store.list_versions(key, exact=True)))
        first = history.first
        if first is None:
            return None
        if history.later:
            first = self._first_complete(bid, history) or first
            logger.error(
                "a manifest was written over or deleted after its first version: the first version is read",
                extra={
                    "key": key,
                    "read": first.version_id,
                    "ignored": [f"{v.version_id}{' (delete marker)' if v.deleted else ''}" for v in history.later],
                },
            )
            record("ManifestOverwritten", 1, "Count", bid.target)
        data, _, stored_at = self.store.read_version(key, first.version_id)
        raw = json.loads(data)
        found = Manifest.model_validate(raw)
        found._read_from, found._raw, found._stored_at = bid, raw, stored_at or first.last_modified
        found._stored_version, found.hidden = first.version_id, history.hidden
        return found

    def _first_complete(self, bid: BackupId, history: KeyHistory) -> VersionInfo | None:
        """The oldest version of a manifest key whose objects are all there, when its first version's are not: a
        backup from before manifests were written once, whose phantom first manifest (objects never completed) the
        old cleanup hid with a delete marker before the slot was redone. No one can make a complete first version
        incomplete (no role deletes a version), so a later version is read only where the first never was a backup."""
        listing = TargetListing.of(self.store.list_versions(self.layout.backup_prefix(bid)))
        key = self.layout.manifest_key(bid)
        for version in (v for v in history.versions if not v.deleted):
            manifest = Manifest.model_validate(json.loads(self.store.read_version(key, version.version_id)[0]))
            if all(listing.present(o.key, o.version_id) for o in manifest.objects):
                return version
        return None

    def remove_manifest(self, bid: BackupId) -> None:
        """Take an incomplete backup out of the catalog (a plain delete: a delete marker in a versioned bucket). Only
        for an unversioned bucket's: in a versioned one a manifest is never removed once written (dump._existing)."""
        self.store.delete([self.layout.manifest_key(bid)])

    def write_failure(self, manifest: Manifest) -> None:
        """A FAILED record, one per database and attempt (Layout.failed_key; the attempt: its started_at)."""
        bid = BackupId.parse(manifest.backup_id)
        key = self.layout.failed_key(bid, manifest.started_at)
        self.store.put_bytes(key, manifest.model_dump_json(indent=2).encode(), content_type="application/json")

    def listing(self, target: str) -> TargetListing:
        """Every version of every object of a target's backups (one paginated ListObjectVersions)."""
        return TargetListing.of(self.store.list_versions(self.layout.target_prefix(target)))

    def backup_ids(self, target: str, listing: TargetListing | None = None) -> list[BackupId]:
        """Backups of a target that have a manifest version, hidden by a delete marker or not, newest first (one
        ListObjectVersions, no GETs). Whether every object a manifest lists is there is checked when the manifest is
        read (manifest, list_backups)."""
        found = self.listing(target) if listing is None else listing
        return sorted(
            (
                bid
                for key, history in found.keys.items()
                if history.first is not None and (bid := self.layout.parse_manifest_key(key)) is not None
            ),
            reverse=True,
        )

    def manifest(self, bid: BackupId) -> Manifest:
        """The manifest of a complete backup; NotFoundError when there is none, or when objects it lists are not
        in the bucket (the backup is not complete, and says which). One ListObjectVersions of the backup's folder
        serves both: the manifest key's versions and the objects it lists."""
        if bid.kind != "logical":
            raise BadRequestError(
                f"{bid} is a {bid.kind}, not a logical dump: restore it through the snapshot form"
                " (POST /restores with its backup_id, new_id ...), not as a dump"
            )
        listing = TargetListing.of(self.store.list_versions(self.layout.backup_prefix(bid)))
        found = self.read_manifest(bid, listing.history(self.layout.manifest_key(bid)))
        if found is None:
            raise NotFoundError(f"no complete backup {bid} (no manifest at {self.layout.manifest_key(bid)})")
        invalid = self.manifest_problems(found, bid)
        if invalid:
            raise NotFoundError(f"{bid} is not a backup: {'; '.join(invalid)}")
        missing = self.missing_objects(found, listing)
        if missing:
            raise NotFoundError(
                f"backup {bid} is not complete: its manifest lists objects that are not in the bucket:"
                f" {'; '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        return found

    def list_backups(self, target: str, limit: int = 50) -> list[Manifest]:
        """Complete backups of a target, newest first (a `hidden` one among them): one ListObjectVersions, one GET
        per manifest (its first version); a manifest whose objects are not all in that listing is left out (and
        logged)."""
        listing = self.listing(target)
        ids = self.backup_ids(target, listing)
        complete: list[Manifest] = []

        def read(bid: BackupId) -> Manifest | None:
            return self.read_manifest(bid, listing.history(self.layout.manifest_key(bid)))

        with ThreadPoolExecutor(max_workers=8) as pool:
            while ids and len(complete) < limit:
                batch, ids = ids[: limit - len(complete)], ids[limit - len(complete) :]
                for manifest in pool.map(read, batch):
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
