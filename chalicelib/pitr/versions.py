"""The versions of one S3 key, oldest first, and a version's bytes with its metadata: what a reader of write-once
objects (finished WAL segments, base manifests, drill evidence) needs to read the version that was written first,
whatever was PUT over it later.

The bucket is versioned (the stack creates it so; Object Lock requires it), so a PutObject over a finished segment
adds a version and never replaces the original: the first version is the original. Needs s3:ListBucketVersions on
the bucket and s3:GetObjectVersion on the keys. The S3 calls are S3Store's (chalicelib.adapters.s3: list_versions,
read_version); this is their per-key view for the PITR readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from chalicelib.adapters.s3 import BackupStore, S3Store
from chalicelib.adapters.versions import NULL_VERSION, KeyHistory, VersionInfo

__all__ = ["NULL_VERSION", "KeyVersions", "Version", "VersionRead"]

Version = VersionInfo


@dataclass(frozen=True)
class VersionRead:
    data: bytes
    metadata: dict[str, str]
    version_id: str
    last_modified: datetime | None


class KeyVersions:
    def __init__(self, store: S3Store) -> None:
        self.store = store

    @classmethod
    def of(cls, store: BackupStore) -> KeyVersions | None:
        """The versions reader of an S3 store (None for any other store: current versions are read)."""
        return cls(store) if isinstance(store, S3Store) else None

    def versions(self, key: str) -> list[Version]:
        """Every version and delete marker of exactly `key`, oldest first."""
        return self.store.list_versions(key, exact=True)

    def read(self, key: str, version_id: str) -> VersionRead:
        data, metadata, last_modified = self.store.read_version(key, version_id)
        return VersionRead(data, metadata, version_id, last_modified)

    def first(self, key: str) -> tuple[Version | None, list[Version]]:
        """(the oldest version that is not a delete marker, all versions); (None, ...) when the key's current
        version is a delete marker or there is none: the object is not there."""
        every = self.versions(key)
        history = KeyHistory(tuple(every))
        if history.first is None or history.hidden:
            return None, every
        return history.first, every
