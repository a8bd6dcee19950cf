"""One target's WAL in S3: each file zstd-compressed, its SHA-256 in the object's metadata, tagged, locked.

Why metadata for the checksum, not a sidecar object: it is written by the same PUT as the bytes, so no reader ever
sees a segment without its checksum or a checksum without its segment; it cannot be changed without writing a new
version of the object (tags can, and the retention pass rewrites tags); and it costs no second request, which
matters for the open segment uploaded every flush_seconds. The checksum is of the segment as PostgreSQL wrote it
(decompressed): what `wal-fetch` hands to PostgreSQL is what pg_receivewal received. The zstd frame carries its own
content checksum too, so damage to the compressed bytes is caught even before the SHA-256 is compared.

Finished segments and history files are locked (S3 Object Lock, settings.object_lock_mode) for `lock_days`; the
open segment's `.partial` object is not: it is replaced every flush_seconds and deleted once its segment finished.

Substitution: the checksum in the metadata proves only that bytes and metadata were written together, and anyone who
may PutObject can write both. So (README "Point-in-time recovery without an agent", integrity):
- a finished segment or history file is written once (a conditional PUT, If-None-Match: *; a re-upload after a
  crash finds it there and compares the SHA-256: the same bytes are fine, others are refused as SegmentConflict
  and the first kept): `fetch` reads the *first* version of its key (ListObjectVersions),
  never a later one, and logs an error when a later one exists (an overwrite: the original is still served);
- with a signing key (settings.signing_key_id) each object also carries `mac`, a KMS HMAC over {kind, key, sha256,
  size} made at upload (chalicelib.pitr.sealing): an object without a valid one is refused (wal-fetch exits 255),
  unless it was stored before settings.accept_unsigned_before. This is what protects the `.partial` object (rewritten
  by design) and a segment written under a name before the stream reached it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import zstandard

from chalicelib.adapters.s3 import AlreadyWritten, BackupStore, ObjectInfo, PutResult, S3Store
from chalicelib.errors import IntegrityError, StorageError
from chalicelib.observability import logger
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.versions import KeyVersions
from chalicelib.pitr.walnames import PARTIAL, Gap, Kind, Segment, WalLayout, history_timeline, is_segment_name
from chalicelib.scheduling.retention import KIND_TAG, WAL_PARTIAL_KIND

SHA256_META = "sha256"  # x-amz-meta-sha256: of the decompressed file
SIZE_META = "size"  # x-amz-meta-size: bytes of the decompressed file
MAC_META = "mac"  # x-amz-meta-mac: KMS HMAC (base64) of digest_document(key, sha256, size)
ZSTD_LEVEL = 3
MAX_WAL_FILE = 1024 * 1024 * 1024  # PostgreSQL's largest segment size: nothing decompresses beyond it


def compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True).compress(data)


def decompress_verified(blob: bytes, metadata: dict[str, str], where: str) -> bytes:
    """The original bytes, checked against the SHA-256 and size recorded at upload; IntegrityError otherwise."""
    expected = metadata.get(SHA256_META)
    if not expected:
        raise IntegrityError(f"{where} has no sha256 metadata: it was not written by lifeboat wal-stream; refusing it")
    try:
        data = zstandard.ZstdDecompressor().decompress(blob, max_output_size=MAX_WAL_FILE)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{where} is damaged: it does not decompress ({exc}); refusing it") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected or str(len(data)) != metadata.get(SIZE_META, str(len(data))):
        raise IntegrityError(
            f"{where} is damaged: SHA-256 {actual} ({len(data)} bytes) does not match the recorded {expected}"
            f" ({metadata.get(SIZE_META, '?')} bytes); refusing it"
        )
    return data


def digest_document(key: str, sha256: str, size: str) -> dict[str, str]:
    """What a WAL object's MAC is made over: its key binds the digest to the name PostgreSQL asks for."""
    return {"kind": "wal", "key": key, "sha256": sha256, "size": size}


def check_mac(
    sealer: Sealer | None, key: str, metadata: dict[str, str], stored_at: datetime | None, where: str
) -> None:
    """IntegrityError unless the object's MAC verifies (or it is unsigned and older than accept_unsigned_before);
    without a signing key nothing is checked."""
    if sealer is None:
        return
    mac = metadata.get(MAC_META)
    if mac is None:
        sealer.unsigned(where, None, stored_at)
        return
    document = digest_document(key, metadata.get(SHA256_META, ""), metadata.get(SIZE_META, ""))
    if not sealer.verifies(document, mac):
        raise IntegrityError(
            f"{where}: its MAC does not verify: the object was written by someone else than wal-stream (or altered);"
            " refusing it"
        )


class SegmentConflict(IntegrityError):
    """A different finished file is already archived under the name: the first is kept, this one is not stored."""

    def __init__(self, key: str, stored_sha256: str, sha256: str) -> None:
        super().__init__(
            f"{key} is already archived with SHA-256 {stored_sha256 or '(none)'}, not {sha256}: the first is kept;"
            " the stream no longer matches the archive (a restored or replaced server?)"
        )
        self.key = key


def put_once(store: S3Store, key: str, body: bytes, tags: dict[str, str], meta: dict[str, str]) -> PutResult:
    """PUT `key` only if it does not exist (the adapter's conditional write); when it does, the stored object's
    version if its SHA-256 is the same (a re-upload after a crash), SegmentConflict otherwise."""
    try:
        return store.put_bytes(key, body, tags=tags, metadata=meta, if_absent=True)
    except AlreadyWritten:
        pass
    found = store.get_with_metadata(key)  # rare (a restart): a whole read rather than a second metadata API
    stored = found[1].get(SHA256_META, "") if found else ""
    if stored != meta[SHA256_META]:
        raise SegmentConflict(key, stored, meta[SHA256_META])
    logger.info("already archived (a re-upload after a restart): the same bytes", extra={"key": key})
    head = store.head(key)
    return PutResult(key, len(body), hashlib.sha256(body).hexdigest(), 1, head.version_id if head else None)


@dataclass(frozen=True)
class WalEntry:
    kind: Kind
    key: str
    segment: Segment | None  # None for a history file
    timeline: int
    info: ObjectInfo


def now_utc() -> datetime:
    return datetime.now(UTC)


class WalArchive:
    """Reads and writes one target's WAL through the BackupStore (chalicelib.adapters.s3)."""

    def __init__(
        self,
        store: BackupStore,
        layout: WalLayout,
        *,
        lock_mode: str | None = None,
        lock_days: int = 0,
        clock: Callable[[], datetime] = now_utc,
        sealer: Sealer | None = None,
    ) -> None:
        self.store, self.layout = store, layout
        self.lock_mode, self.lock_days, self.clock = lock_mode, lock_days, clock
        self.sealer = sealer
        self.versions = KeyVersions.of(store)

    def _put(self, key: str, data: bytes, kind: str, lock: bool) -> PutResult:
        """Locked files are written once (put_once); the `.partial` object is replaced."""
        meta = {SHA256_META: hashlib.sha256(data).hexdigest(), SIZE_META: str(len(data))}
        if self.sealer is not None:
            meta[MAC_META] = self.sealer.mac(digest_document(key, meta[SHA256_META], meta[SIZE_META]))
        tags = {KIND_TAG: kind, "target": self.layout.target}
        if lock and isinstance(self.store, S3Store):
            result = put_once(self.store, key, compress(data), tags, meta)
        else:
            result = self.store.put_bytes(key, compress(data), tags=tags, metadata=meta)
        if lock and self.lock_mode and self.lock_days > 0:
            until = (self.clock() + timedelta(days=self.lock_days)).replace(microsecond=0)
            self.store.lock(key, self.lock_mode, until, version_id=result.version_id)
        return result

    def put_segment(self, segment: Segment, data: bytes) -> PutResult:
        """A finished segment (locked), then its `.partial` object removed: the finished one supersedes it."""
        if len(data) != segment.segment_size:
            raise IntegrityError(
                f"{segment.name} holds {len(data)} bytes, not {segment.segment_size}: not uploaded as finished"
            )
        result = self._put(self.layout.segment_key(segment), data, "wal", lock=True)
        if self.store.head(self.layout.partial_key(segment)) is not None:
            self.store.delete([self.layout.partial_key(segment)])
        return result

    def put_conflict(self, segment: Segment, data: bytes) -> str:
        """The stream's own bytes of a segment whose name the archive already holds with other bytes (a replaced
        server, or a planted object): kept, locked, under `conflicts/` (which listings and recovery ignore) before
        the slot lets the server recycle them; an operator decides which is right. Its key."""
        key = f"{self.layout.root}conflicts/{segment.name}.{hashlib.sha256(data).hexdigest()}"
        self._put(key, data, "wal-conflict", lock=True)
        return key

    def put_partial(self, segment: Segment, data: bytes) -> PutResult:
        return self._put(self.layout.partial_key(segment), data, WAL_PARTIAL_KIND, lock=False)

    def put_history(self, timeline: int, data: bytes) -> PutResult:
        return self._put(self.layout.history_key(timeline), data, "wal-history", lock=True)

    def fetch(self, name: str, finished_only: bool = False) -> tuple[bytes, str] | None:
        """What PostgreSQL asks for by name (a segment or a history file), verified and decompressed, with the key
        it came from: a segment's finished object, else its `.partial` (the end of the stream; never with
        `finished_only`: a prefetch must not keep an open segment that is still growing). None: not in the
        archive. IntegrityError: there, but damaged. StorageError: S3 could not say."""
        keys: list[str]
        timeline = history_timeline(name)
        if timeline is not None:
            keys = [self.layout.history_key(timeline)]
        elif is_segment_name(name):  # the key needs no segment size: the timeline folder is the name's first 8
            keys = [f"{self.layout.root}{name[:8]}/{name}", f"{self.layout.root}{name[:8]}/{name}{PARTIAL}"]
            keys = keys[:1] if finished_only else keys
        else:
            return None  # e.g. a .backup or .partial file PostgreSQL probes for: never archived here
        for key in keys:
            found = self._read(key, written_once=not key.endswith(PARTIAL))
            if found is not None:
                blob, metadata, stored_at = found
                where = f"s3://{self.store.bucket}/{key}"
                check_mac(self.sealer, key, metadata, stored_at, where)
                return decompress_verified(blob, metadata, where), key
        return None

    def _read(self, key: str, written_once: bool) -> tuple[bytes, dict[str, str], datetime | None] | None:
        """(bytes, metadata, LastModified) of the object PostgreSQL gets: a write-once key's first version, the
        `.partial` object's current one (or any key's current one in a store without versions)."""
        if written_once and self.versions is not None:
            first, every = self.versions.first(key)
            if first is None:
                return None
            later = [v.version_id for v in every if not v.deleted and v.version_id != first.version_id]
            if later:
                logger.error(
                    "a finished WAL object was written over: the first version is served, the later ones ignored",
                    extra={"key": key, "served": first.version_id, "ignored": later},
                )
            got = self.versions.read(key, first.version_id)
            return got.data, got.metadata, got.last_modified
        found = self.store.get_with_metadata(key)
        if found is None:
            return None
        head = self.store.head(key) if self.sealer is not None else None  # LastModified: unsigned-before-cutoff
        return found[0], found[1], head.last_modified if head else None

    def entries(self, segment_size: int) -> list[WalEntry]:
        """Every WAL file of the target, oldest first (history files before the segments of their timeline)."""
        found: list[WalEntry] = []
        for info in self.store.list_objects(self.layout.root):
            parsed = self.layout.parse_key(info.key, segment_size)
            if parsed is None:
                continue
            kind, what = parsed
            if isinstance(what, Segment):
                found.append(WalEntry(kind, info.key, what, what.timeline, info))
            else:
                found.append(WalEntry(kind, info.key, None, what, info))

        def order(e: WalEntry) -> tuple[int, int, int]:
            if e.segment is None:
                return (-1, e.timeline, 0)
            return (e.segment.number, e.segment.timeline, 1 if e.kind == "segment" else 0)

        return sorted(found, key=order)

    def newest(self, segment_size: int) -> WalEntry | None:
        """The latest segment archived (finished or partial), None when the archive is empty."""
        segments = [e for e in self.entries(segment_size) if e.segment is not None]
        return segments[-1] if segments else None

    def download_to(self, entry: WalEntry, directory: Path) -> str:
        """Write an archived segment into `directory` under the name pg_receivewal gives it; its file name."""
        assert entry.segment is not None
        got = self.store.get_with_metadata(entry.key)
        if got is None:
            raise StorageError(f"s3://{self.store.bucket}/{entry.key} vanished while it was being read")
        data = decompress_verified(got[0], got[1], f"s3://{self.store.bucket}/{entry.key}")
        name = entry.segment.name + (PARTIAL if entry.kind == "partial" else "")
        (directory / name).write_bytes(data)
        return name

    def record_gap(self, gap: Gap) -> str:
        """Store the gap (read by `recover` and the window), log it as an error; its key."""
        key = self.layout.gap_key(gap)
        body = {"after": gap.after, "before": gap.before, "reason": gap.reason, "detected_at": self.clock().isoformat()}
        self.store.put_bytes(key, json.dumps(body).encode(), tags={KIND_TAG: "wal-gap"})
        logger.error(
            "WAL gap: the archive cannot replay past it; take a new base backup",
            extra={"target": self.layout.target, **body},
        )
        return key

    def gaps(self) -> list[dict[str, Any]]:
        records = []
        for info in self.store.list_objects(self.layout.gaps_prefix):
            if info.key.endswith(".json"):
                records.append(json.loads(self.store.get_bytes(info.key)))
        return sorted(records, key=lambda r: str(r.get("detected_at")))
