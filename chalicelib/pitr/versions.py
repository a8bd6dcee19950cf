"""The versions of one S3 key, oldest first, and a version's bytes with its metadata: what a reader of write-once
objects (finished WAL segments, base manifests, drill evidence) needs to read the version that was written first,
whatever was PUT over it later.

The bucket is versioned (the stack creates it so; Object Lock requires it), so a PutObject over a finished segment
adds a version and never replaces the original: the first version is the original. Needs s3:ListBucketVersions on
the bucket and s3:GetObjectVersion on the keys. The S3 calls live here rather than in chalicelib.adapters.s3 only
because that module belongs to the logical backups' owners; it takes the adapter's client and explains errors the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message
from chalicelib.adapters.s3 import BackupStore, S3Store
from chalicelib.errors import StorageError

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

NULL_VERSION = "null"  # an object written while versioning was off: read as the current object


@dataclass(frozen=True)
class Version:
    version_id: str
    last_modified: datetime
    is_latest: bool
    deleted: bool = False  # a delete marker


@dataclass(frozen=True)
class VersionRead:
    data: bytes
    metadata: dict[str, str]
    version_id: str
    last_modified: datetime | None


class KeyVersions:
    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    @classmethod
    def of(cls, store: BackupStore) -> KeyVersions | None:
        """The versions reader of an S3 store (None for any other store: current versions are read)."""
        return cls(store.client, store.bucket) if isinstance(store, S3Store) else None

    def _explain(self, exc: BaseException, key: str, what: str) -> StorageError:
        code = error_code(exc)
        hint = " (the role needs s3:ListBucketVersions and s3:GetObjectVersion)" if "AccessDenied" in code else ""
        return StorageError(f"cannot {what} s3://{self.bucket}/{key}: {code or 'error'}: {error_message(exc)}{hint}")

    def versions(self, key: str) -> list[Version]:
        """Every version and delete marker of exactly `key`, oldest first."""
        found: list[Version] = []
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
            for page in pages:
                for kind, deleted in (("Versions", False), ("DeleteMarkers", True)):
                    for item in page.get(kind, []):  # type: ignore[attr-defined]
                        if item["Key"] == key:
                            found.append(_version(item, deleted))
        except AWS_ERRORS as exc:
            raise self._explain(exc, key, "list the versions of") from exc
        # S3 lists a key's versions newest first: reversed, then a stable sort keeps that order within one second.
        return sorted(reversed(found), key=lambda v: v.last_modified)

    def read(self, key: str, version_id: str) -> VersionRead:
        extra: Any = {} if version_id == NULL_VERSION else {"VersionId": version_id}
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
            with resp["Body"] as body:
                data = body.read()
        except AWS_ERRORS as exc:
            raise self._explain(exc, key, f"read version {version_id} of") from exc
        return VersionRead(data, dict(resp.get("Metadata", {})), version_id, resp.get("LastModified"))

    def first(self, key: str) -> tuple[Version | None, list[Version]]:
        """(the oldest version that is not a delete marker, all versions); (None, ...) when the key's current
        version is a delete marker or there is none: the object is not there."""
        every = self.versions(key)
        live = [v for v in every if not v.deleted]
        if not live or any(v.deleted and v.is_latest for v in every):
            return None, every
        return live[0], every


def _version(item: Any, deleted: bool) -> Version:
    return Version(
        str(item.get("VersionId") or NULL_VERSION), item["LastModified"], bool(item.get("IsLatest")), deleted
    )
