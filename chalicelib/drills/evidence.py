"""Where drill evidence is kept: every state in the jobs table (DrillTable), and each finished drill as a JSON document
in the bucket under its own prefix, `<prefix>drills/<target>/<YYYY>/<started>_<drill id>.json`, tagged
`retention=drill-evidence` (no lifecycle rule expires that tag) and, with settings.object_lock_mode, locked for
EVIDENCE_LOCK_DAYS like a backup: an auditor's copy nobody with a function's rights can change or remove.

The table is what the views read (fast, by start time); the bucket is the record of last resort (`from_bucket`).

Integrity (README "Restore drills"): anyone with PutObject on the key can add a version of a document, and any role
with PutItem on the table can write a record. So, with settings.signing_key_id, the document is signed when written
(chalicelib.pitr.sealing, the manifests' key; the writer needs kms:GenerateMac) and its VersionId is recorded in
the table's record; the views read the document at that version (without one: its first version) and believe the
*document*, not the record: a record whose document is missing, does not verify, or belongs to another drill is
shown as UNVERIFIED (never SUCCEEDED). Without a signing key nothing is checked, as for manifests.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from chalicelib.adapters.dynamo import DrillTable
from chalicelib.adapters.s3 import BackupStore
from chalicelib.drills.model import DrillError, DrillRecord
from chalicelib.errors import IntegrityError, LifeboatError, StorageError
from chalicelib.logical.catalog import format_stamp
from chalicelib.observability import logger
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.versions import KeyVersions

EVIDENCE_TAG = {"retention": "drill-evidence"}
EVIDENCE_LOCK_DAYS = 400  # a year and a month: the evidence of one annual audit outlives the next
RECENT_LIMIT = 2000
DOCUMENT = {"document": "drill-evidence"}  # signed with the rest: this MAC never stands for another kind of document
UNVERIFIED_CODE = "evidence_unverified"
READ_CONCURRENCY = 8  # one GET (and one kms:VerifyMac) per record shown


class EvidenceStore:
    def __init__(
        self,
        table: DrillTable | None,
        store: BackupStore,
        prefix: str = "",
        lock_mode: str | None = None,
        lock_days: int = EVIDENCE_LOCK_DAYS,
        sealer: Sealer | None = None,
    ) -> None:
        self.table, self.store, self.prefix = table, store, prefix
        self.lock_mode, self.lock_days = lock_mode, lock_days
        self.sealer = sealer

    def target_prefix(self, target: str) -> str:
        return f"{self.prefix}drills/{target}/"

    def key(self, rec: DrillRecord) -> str:
        return f"{self.target_prefix(rec.target)}{rec.started_at:%Y}/{format_stamp(rec.started_at)}_{rec.drill_id}.json"

    def save(self, rec: DrillRecord) -> DrillRecord:
        """Record the drill's current state; a finished drill also goes to the bucket (tagged, locked) first, so the
        table never shows a finished drill whose evidence document is missing. Returns the record as stored."""
        if rec.finished and rec.evidence_key is None:
            rec = rec.model_copy(update={"evidence_key": self.key(rec)})
            rec = rec.model_copy(update={"evidence_version": self._write_document(rec)})
        if self.table is not None:
            doc = rec.model_dump_json()
            if not self.table.put(rec.drill_id, rec.status, rec.started_at, doc, rec.lease_until):
                raise StorageError(f"drill {rec.drill_id} has finished already: its record is not changed again")
        return rec

    def _write_document(self, rec: DrillRecord) -> str | None:
        """Write (signed, tagged, locked) the finished drill's document; its VersionId."""
        assert rec.evidence_key is not None and rec.finished_at is not None
        document = {**rec.public(), **DOCUMENT}
        if self.sealer is not None:
            document = self.sealer.seal(document)
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        tags = {**EVIDENCE_TAG, "target": rec.target, "drill-status": rec.status}
        put = self.store.put_bytes(rec.evidence_key, body, tags=tags, content_type="application/json")
        if self.lock_mode:
            until = (rec.finished_at + timedelta(days=self.lock_days)).replace(microsecond=0)
            self.store.lock(rec.evidence_key, self.lock_mode, until, version_id=put.version_id)
        return put.version_id

    def get(self, drill_id: str) -> DrillRecord | None:
        doc = self.table.get(drill_id) if self.table is not None else None
        return DrillRecord.model_validate_json(doc) if doc else None

    def recent(self, since: datetime | None = None, target: str | None = None) -> list[DrillRecord]:
        """Drills started at `since` or later (of one target), newest first: the table, else the bucket."""
        if self.table is None:
            return self.from_bucket(target, since)
        records = [DrillRecord.model_validate_json(d) for d in self.table.recent(RECENT_LIMIT, since)]
        return self.verified([r for r in records if target is None or r.target == target])

    def verified(self, records: list[DrillRecord]) -> list[DrillRecord]:
        """Each finished record as its signed evidence document says, or UNVERIFIED (the module's docstring)."""
        if self.sealer is None:
            return records
        with ThreadPoolExecutor(max_workers=READ_CONCURRENCY) as pool:
            return list(pool.map(self._verified, records))

    def _verified(self, rec: DrillRecord) -> DrillRecord:
        if not rec.finished or self.sealer is None:
            return rec
        if rec.evidence_key is None:
            return unverified(rec, "the record names no evidence document")
        try:
            found = self._document(rec.evidence_key, rec.evidence_version, self.sealer)
            if found.drill_id != rec.drill_id or rec.evidence_key != self.key(found):
                raise IntegrityError(f"{rec.evidence_key} is the evidence of drill {found.drill_id}, not of this one")
        except (LifeboatError, ValueError) as exc:  # ValueError: not JSON, or not a drill record (pydantic)
            return unverified(rec, str(exc))
        return found.model_copy(update={"evidence_key": rec.evidence_key, "evidence_version": rec.evidence_version})

    def _document(self, key: str, version_id: str | None, sealer: Sealer) -> DrillRecord:
        """The evidence document at `version_id` (None: its first version, written once), its signature checked."""
        stored_at = None
        if version_id is None and (versions := KeyVersions.of(self.store)) is not None:
            first = versions.first(key)[0]
            if first is None:
                raise StorageError(f"{key} is not in the bucket")
            version_id, stored_at = first.version_id, first.last_modified
        document = json.loads(self.store.get_bytes(key, version_id))
        found = DrillRecord.model_validate(document)
        if document.get("signature") is None and stored_at is None:
            head = self.store.head(key, version_id)
            stored_at = head.last_modified if head else None
        sealer.check(document, f"drill evidence {key}", found.finished_at, stored_at)
        return found

    def running(self) -> list[DrillRecord]:
        if self.table is None:
            return []
        return [r for r in map(DrillRecord.model_validate_json, self.table.running(500)) if r.status == "RUNNING"]

    def from_bucket(self, target: str | None, since: datetime | None = None) -> list[DrillRecord]:
        """The finished drills' documents in the bucket (of one target, or all), newest first."""
        prefix = self.target_prefix(target) if target else f"{self.prefix}drills/"
        records: list[DrillRecord] = []
        for obj in self.store.list_objects(prefix):
            if not obj.key.endswith(".json"):
                continue
            try:
                rec = DrillRecord.model_validate(json.loads(self.store.get_bytes(obj.key)))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                logger.warning("not a drill record", extra={"key": obj.key, "error": str(exc)[:200]})
                continue
            # The current version says which drill it is; what it proves comes from the first (signed) version.
            rec = self._verified(rec.model_copy(update={"evidence_key": obj.key, "evidence_version": None}))
            if since is None or rec.started_at >= since:
                records.append(rec)
        return sorted(records, key=lambda r: r.started_at, reverse=True)


def unverified(rec: DrillRecord, why: str) -> DrillRecord:
    """How a record whose evidence does not verify is shown: never SUCCEEDED, whatever the record says."""
    logger.error("drill evidence does not verify", extra={"drill_id": rec.drill_id, "why": why[:500]})
    message = f"the drill's evidence does not verify: {why}; the record says {rec.status}"
    return rec.model_copy(update={"status": "UNVERIFIED", "error": DrillError(code=UNVERIFIED_CODE, message=message)})
