"""The logical backup's manifest: what it records (objects, their digests, the signature), as stored in S3.

Models only; how manifests are written, read and believed is chalicelib.logical.catalog (which re-exports these).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from chalicelib.errors import NotFoundError
from chalicelib.logical.ids import BackupId


class PartDigest(BaseModel):
    """One uploaded part of an object: its byte range and SHA-256 (sent to S3 as the part's ChecksumSHA256)."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)
    number: int  # S3 part number, from 1
    offset: int  # first byte of the part in the object
    size: int
    sha256: str  # hex


class ManifestObject(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)  # built on first use, not at import (cold start)
    role: Literal["dump", "globals", "dir-file"]  # dir-file: one file of a directory-format dump
    key: str
    size: int
    sha256: str
    # Per-part digests in part order (empty: an older manifest, or an object sent in one PUT). When present,
    # `sha256` is the SHA-256 of the concatenated binary part digests, so every byte is hashed once.
    parts: list[PartDigest] = []
    version_id: str | None = None  # the S3 version written (None: not recorded, an older manifest): locked by it


class ManifestSignature(BaseModel):
    """A KMS MAC over the manifest's canonical form without this block (chalicelib.logical.signing)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    key_id: str  # as KMS named the key that signed (informative: a check uses the configured key, never this)
    algorithm: str
    canonicalization: str
    value: str  # base64


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)
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
    # Set when read (never written, never signed): a delete marker hides the manifest from a plain listing.
    hidden: bool = Field(default=False, exclude=True)
    _read_from: BackupId | None = PrivateAttr(default=None)  # the id of the key it was read from (read_manifest)
    _raw: dict[str, Any] | None = PrivateAttr(default=None)  # the JSON as stored (read_manifest): what was signed
    _stored_at: datetime | None = PrivateAttr(default=None)  # the manifest object's LastModified (set by S3)
    _stored_version: str | None = PrivateAttr(default=None)  # and its VersionId: the first version (read_manifest)

    @property
    def raw(self) -> dict[str, Any] | None:
        return self._raw

    @property
    def stored_at(self) -> datetime | None:
        return self._stored_at

    @property
    def read_from(self) -> BackupId | None:
        return self._read_from

    @property
    def stored_version(self) -> str | None:
        return self._stored_version

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
