"""Base backups: `pg_basebackup -Ft -D - -X none` streamed into S3 (zstd), the manifest written last.

The tar goes from pg_basebackup's stdout through a tap that reads its headers on the way (keeping backup_label and
PostgreSQL's backup_manifest, which pg_basebackup puts into the tar when it writes to stdout) and through a zstd
compressor into the store's multipart upload: no temporary file, memory bounded by the store's budget. The WAL
comes from the stream (`wal-stream` must be running: recovery needs every segment from the backup's start to its
end, which `recover` checks). One tablespace only: pg_basebackup cannot write several to stdout.

    base/<target>/<stamp>/base.tar.zst       the data directory (tar, zstd)
    base/<target>/<stamp>/backup_manifest    PostgreSQL's manifest (pg_verifybackup checks the restored files)
    base/<target>/<stamp>/manifest.json      ours, last: LSNs, timeline, times, objects with SHA-256 and VersionId

An incremental base (PostgreSQL 17+, `wal.incremental`: chalicelib.pitr.incremental chooses the parent when the run
starts) has the same layout: pg_basebackup gets `--incremental=<the parent's backup_manifest>` (that small file in a
temporary file, read at the VersionId and checked against the SHA-256 the parent's manifest recorded; the data still
streams), and manifest.json records `parent` and `chain` (the ancestors' ids, the full base first).

Integrity (README "Point-in-time recovery without an agent"): with settings.signing_key_id the manifest is signed
(chalicelib.pitr.sealing, the logical manifests' key and canonical form) and `read_bases` believes only a manifest
whose signature verifies (an unsigned one only when stored before settings.accept_unsigned_before); it reads the
*first* version of each manifest.json (written once: a later PUT is an overwrite and is ignored), and refuses one
whose backup_id, target or object keys are not its folder's. `recover` reads each object by the VersionId the
manifest recorded, so a tar PUT over the original later is never what is unpacked.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import zstandard
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from chalicelib.adapters.pgtools import ChildProcess, PgTool, minimal_env
from chalicelib.adapters.postgres import Login
from chalicelib.adapters.s3 import BackupStore, PutResult
from chalicelib.errors import IntegrityError, LifeboatError, PgToolError
from chalicelib.logical.catalog import ManifestSignature
from chalicelib.logical.digests import part_digests
from chalicelib.logical.dump_tools import dumping
from chalicelib.logical.manifest import PartDigest
from chalicelib.observability import logger
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.versions import KeyVersions
from chalicelib.pitr.walnames import Segment, parse_lsn

BLOCK = 512
CAPTURED = ("backup_label", "backup_manifest", "tablespace_map")
ZSTD_LEVEL = 3
MANIFEST = "manifest.json"


class BaseObject(BaseModel):
    model_config = ConfigDict(frozen=True, defer_build=True)  # built on first use, not at import (cold start)
    role: str  # data | backup_manifest
    key: str
    size: int
    sha256: str
    version_id: str | None = None
    parts: list[PartDigest] = []  # sent in parts: each part's digest, `sha256` the composite (logical.digests)


class BaseBackup(BaseModel):
    """What manifest.json records: everything recovery needs to pick, check and start from this base."""

    model_config = ConfigDict(frozen=True, defer_build=True)
    target: str
    backup_id: str
    started_at: datetime
    finished_at: datetime
    server_version_num: int
    timeline: int
    start_lsn: str
    end_lsn: str
    segment_size: int
    tar_size: int
    tar_sha256: str
    objects: list[BaseObject]
    backup_label: str
    parent: str | None = None  # an incremental base: the backup id it was taken against (None: a full base)
    chain: list[str] = Field(default_factory=list)  # an incremental base's ancestors, the full base first
    slot: datetime | None = None  # the base_schedule slot it was taken for (None: by hand or after a gap)
    kind: str = "base"  # signed with the rest: a base manifest's MAC never stands for another kind of document
    signature: ManifestSignature | None = None  # None: written without a signing key
    _stored_version: str | None = PrivateAttr(default=None)  # the manifest.json version read (or written)

    @property
    def stored_version(self) -> str | None:
        return self._stored_version

    @property
    def major(self) -> int:
        return self.server_version_num // 10000

    @property
    def start_segment(self) -> Segment:
        return Segment.containing(parse_lsn(self.start_lsn), self.timeline, self.segment_size)

    @property
    def end_segment(self) -> Segment:
        return Segment.containing(parse_lsn(self.end_lsn), self.timeline, self.segment_size)

    def object(self, role: str) -> BaseObject:
        return next(o for o in self.objects if o.role == role)


@dataclass(frozen=True)
class BaseLayout:
    prefix: str
    target: str

    @property
    def root(self) -> str:
        return f"{self.prefix}base/{self.target}/"

    def folder(self, backup_id: str) -> str:
        return f"{self.root}{backup_id}/"


def _octal(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # base-256 (GNU) for members of 8 GiB and more
        return int.from_bytes(field_bytes[1:], "big")
    text = field_bytes.rstrip(b"\0 ").decode() or "0"
    return int(text, 8)


@dataclass
class TarTap:
    """A reader over a tar stream that passes every byte on, hashes it, and keeps the members named in CAPTURED."""

    source: IO[bytes]
    captured: dict[str, bytes] = field(default_factory=dict)
    size: int = 0
    _sha: hashlib._Hash = field(default_factory=hashlib.sha256)
    _header: bytearray = field(default_factory=bytearray)
    _left: int = 0  # bytes of the current member (data and padding) still to come
    _data_left: int = 0
    _name: str | None = None
    _ended: bool = False

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.size += len(data)
        self._sha.update(data)
        self._feed(memoryview(data))
        return data

    def _feed(self, view: memoryview) -> None:
        while view and not self._ended:
            if self._left:
                take = min(self._left, len(view))
                if self._name is not None and self._data_left > 0:
                    keep = min(take, self._data_left)
                    self.captured[self._name] += bytes(view[:keep])
                    self._data_left -= keep
                self._left -= take
                view = view[take:]
                continue
            take = min(BLOCK - len(self._header), len(view))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == BLOCK:
                self._start_member(bytes(self._header))
                self._header.clear()

    def _start_member(self, header: bytes) -> None:
        if header == b"\0" * BLOCK:
            self._ended = True
            return
        name = header[:100].rstrip(b"\0").decode("utf-8", "replace").removeprefix("./")
        size = _octal(header[124:136])
        self._left = (size + BLOCK - 1) // BLOCK * BLOCK
        self._data_left = size
        self._name = name if name in CAPTURED and header[156:157] in (b"0", b"\0") else None
        if self._name is not None:
            self.captured[self._name] = b""

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


_LABEL_FIELDS = {
    "start_lsn": re.compile(r"^START WAL LOCATION: (\S+)", re.M),
    "timeline": re.compile(r"^START TIMELINE: (\d+)", re.M),
}


def label_facts(label: str) -> tuple[str, int]:
    """(start LSN, timeline) from a backup_label."""
    lsn = _LABEL_FIELDS["start_lsn"].search(label)
    timeline = _LABEL_FIELDS["timeline"].search(label)
    if not lsn or not timeline:
        raise IntegrityError(f"backup_label lacks START WAL LOCATION or START TIMELINE: {label[:200]!r}")
    return lsn.group(1), int(timeline.group(1))


def manifest_end_lsn(manifest: bytes) -> str:
    """The end of the WAL the backup needs, from PostgreSQL's backup_manifest (WAL-Ranges)."""
    ranges = json.loads(manifest).get("WAL-Ranges") or []
    if not ranges:
        raise IntegrityError("backup_manifest has no WAL-Ranges")
    return max((str(r["End-LSN"]) for r in ranges), key=parse_lsn)


@dataclass(frozen=True)
class BaseRun:
    target: str
    store: BackupStore
    layout: BaseLayout
    pg_basebackup: PgTool
    login: Login  # the replication login
    server_version_num: int
    segment_size: int
    tags: dict[str, str]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    sealer: Sealer | None = None
    # chalicelib.pitr.incremental: called as the run starts, the base to take an incremental one against (None: full)
    parent_for: Callable[[], BaseBackup | None] | None = None
    slot: datetime | None = None  # recorded in the manifest (chalicelib.pitr.basesched)


@dataclass(frozen=True)
class _Streamed:
    """What one pg_basebackup run left: the tar's facts as the tap saw them, and the stored data object."""

    tap: TarTap
    data: PutResult


def run_base_backup(run: BaseRun) -> BaseBackup:
    """Stream one base backup into the store; the manifest last. Raises PgToolError (pg_basebackup failed: nothing
    is listed, the objects written stay unlisted) or StorageError."""
    started = run.clock()
    backup_id = started.strftime("%Y%m%dT%H%M%SZ")
    folder = run.layout.folder(backup_id)
    parent = run.parent_for() if run.parent_for is not None else None
    streamed = _stream_tar(run, backup_id, parent)
    label, pg_manifest = _captured_label_and_manifest(run, streamed.tap)
    stored = run.store.put_bytes(folder + "backup_manifest", pg_manifest, tags=run.tags)
    start_lsn, timeline = label_facts(label)
    manifest = BaseBackup(
        target=run.target,
        backup_id=backup_id,
        started_at=started,
        finished_at=run.clock(),
        server_version_num=run.server_version_num,
        timeline=timeline,
        start_lsn=start_lsn,
        end_lsn=manifest_end_lsn(pg_manifest),
        segment_size=run.segment_size,
        tar_size=streamed.tap.size,
        tar_sha256=streamed.tap.sha256,
        objects=_base_objects(streamed.data, stored),
        backup_label=label,
        slot=run.slot,
        **lineage(parent),
    )
    manifest = write_manifest(run.store, run.layout, manifest, run.tags, run.sealer)
    logger.info(
        "base backup complete",
        extra={"target": run.target, "backup_id": backup_id, "start_lsn": start_lsn, "end_lsn": manifest.end_lsn},
    )
    return manifest


def _stream_tar(run: BaseRun, backup_id: str, parent: BaseBackup | None) -> _Streamed:
    """pg_basebackup's tar through the tap and zstd into base.tar.zst (an incremental against `parent`'s manifest);
    the upload completes only once pg_basebackup exited cleanly."""
    args = ["-D", "-", "-Ft", "-X", "none", "--checkpoint=fast", "--no-password", f"--label=lifeboat {backup_id}"]
    with parent_manifest_file(run.store, parent) as parent_manifest:
        args += [f"--incremental={parent_manifest}"] if parent_manifest is not None else []
        env = minimal_env(run.login.env())
        child = ChildProcess(run.pg_basebackup, args, env, run.login.secrets, run.login.context)
        with dumping(child, None):
            tap = TarTap(child.stdout)
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            compressed = compressor.stream_reader(cast(IO[bytes], tap))
            key = run.layout.folder(backup_id) + "base.tar.zst"
            data = run.store.put_stream(key, compressed, tags=run.tags, before_complete=child.check)
    return _Streamed(tap, data)


def _captured_label_and_manifest(run: BaseRun, tap: TarTap) -> tuple[str, bytes]:
    """(backup_label, PostgreSQL's backup_manifest) from the tar; PgToolError when either is missing or the server
    has tablespaces (one archive cannot hold them)."""
    label = tap.captured.get("backup_label", b"").decode()
    pg_manifest = tap.captured.get("backup_manifest")
    if not label or pg_manifest is None:
        raise PgToolError(
            f"pg_basebackup {run.pg_basebackup.major} wrote no backup_label or backup_manifest into its tar:"
            " PostgreSQL 13 or newer is needed for point-in-time recovery from base backups"
        )
    if "tablespace_map" in tap.captured and tap.captured["tablespace_map"].strip():
        raise PgToolError("the server has tablespaces: pg_basebackup cannot stream several into one archive")
    return label, pg_manifest


def _base_objects(data: PutResult, pg_manifest: PutResult) -> list[BaseObject]:
    """The manifest's object list: the tar (with its part digests) and PostgreSQL's backup_manifest. Pure."""
    return [
        BaseObject(
            role="data",
            key=data.key,
            size=data.size,
            sha256=data.sha256,
            version_id=data.version_id,
            parts=part_digests(data),
        ),
        BaseObject(
            role="backup_manifest",
            key=pg_manifest.key,
            size=pg_manifest.size,
            sha256=pg_manifest.sha256,
            version_id=pg_manifest.version_id,
        ),
    ]


def lineage(parent: BaseBackup | None) -> dict[str, Any]:
    """The manifest fields of a base taken against `parent` (None: a full base: none). Pure."""
    return {} if parent is None else {"parent": parent.backup_id, "chain": [*parent.chain, parent.backup_id]}


@contextmanager
def parent_manifest_file(store: BackupStore, parent: BaseBackup | None) -> Iterator[Path | None]:
    """The parent's backup_manifest in a temporary file (removed on exit), read at the VersionId and checked against
    the SHA-256 and size its manifest.json recorded; None without a parent. The file is small (a line per file)."""
    if parent is None:
        yield None
        return
    stored = parent.object("backup_manifest")
    body = store.get_bytes(stored.key, stored.version_id)
    if hashlib.sha256(body).hexdigest() != stored.sha256 or len(body) != stored.size:
        raise IntegrityError(
            f"base {parent.backup_id}: s3://{store.bucket}/{stored.key} does not match the SHA-256 its manifest"
            " recorded: no incremental base can be taken against it; set wal.incremental to false for a full base"
        )
    with tempfile.TemporaryDirectory(prefix="lifeboat-parent-") as folder:
        path = Path(folder) / "backup_manifest"
        path.write_bytes(body)
        yield path


def write_manifest(
    store: BackupStore, layout: BaseLayout, manifest: BaseBackup, tags: dict[str, str], sealer: Sealer | None
) -> BaseBackup:
    """Write manifest.json, the base's last object, signed with `sealer`; the manifest as written."""
    document = manifest.model_dump(mode="json", exclude={"signature"})
    if sealer is not None:
        document = sealer.seal(document)
        manifest = BaseBackup.model_validate(document)
    put = store.put_bytes(
        layout.folder(manifest.backup_id) + MANIFEST, json.dumps(document, indent=2).encode(), tags=tags
    )
    manifest._stored_version = put.version_id
    return manifest


def list_bases(store: BackupStore, layout: BaseLayout, sealer: Sealer | None = None) -> list[BaseBackup]:
    """Complete base backups (those with a manifest that is believed), oldest first."""
    return read_bases(store, layout, sealer)[0]


def read_bases(
    store: BackupStore, layout: BaseLayout, sealer: Sealer | None = None
) -> tuple[list[BaseBackup], dict[str, str]]:
    """(complete base backups, oldest first; the manifests refused: key -> why, each logged as an error). A
    manifest is read at its first version; with `sealer` its signature is checked (the module's docstring)."""
    versions = KeyVersions.of(store)
    found, refused = [], {}
    for info in store.list_objects(layout.root):
        if not info.key.endswith("/" + MANIFEST):
            continue
        try:
            base = _read_manifest(store, versions, layout, info.key, sealer)
        except (LifeboatError, ValueError) as exc:  # pydantic's ValidationError and JSON errors are ValueErrors
            refused[info.key] = str(exc)[:500]
            logger.error("base backup manifest refused", extra={"key": info.key, "why": refused[info.key]})
            continue
        if base is not None:
            found.append(base)
    return sorted(found, key=lambda b: b.started_at), refused


def _read_manifest(
    store: BackupStore, versions: KeyVersions | None, layout: BaseLayout, key: str, sealer: Sealer | None
) -> BaseBackup | None:
    stored_at, version_id = None, None
    if versions is not None:
        first, every = versions.first(key)
        if first is None:
            return None
        if len([v for v in every if not v.deleted]) > 1:
            logger.error("a base manifest was written over: its first version is read", extra={"key": key})
        got = versions.read(key, first.version_id)
        raw, stored_at, version_id = json.loads(got.data), got.last_modified, first.version_id
    else:
        raw = json.loads(store.get_bytes(key))
    base = BaseBackup.model_validate(raw)
    folder = key.removesuffix(MANIFEST)
    if folder != layout.folder(base.backup_id) or base.target != layout.target:
        raise IntegrityError(f"{key} describes base {base.target}/{base.backup_id}, not this folder's")
    outside = [o.key for o in base.objects if not o.key.startswith(folder) or "/../" in f"/{o.key}/"]
    if outside:
        raise IntegrityError(f"{key} lists objects outside {folder}: {', '.join(outside[:3])}")
    if sealer is not None:
        sealer.check(raw, f"base manifest {key}", base.finished_at, stored_at)
    base._stored_version = version_id
    return base
