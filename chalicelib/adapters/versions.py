"""Object versions in a versioned bucket, as plain data: what ListObjectVersions says about each key, and what a reader
of write-once objects (manifests, finished WAL segments, drill evidence) makes of it.

In a versioned bucket a PutObject over a key adds a version and a plain DeleteObject adds a delete marker: neither
removes the version written first, so the first version is the original whatever was done to the key later. Only
S3Store (chalicelib.adapters.s3) calls S3; this module turns its pages into these records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

NULL_VERSION = "null"  # an object written while versioning was off (or in an unversioned bucket)


@dataclass(frozen=True)
class VersionInfo:
    key: str
    version_id: str  # NULL_VERSION: written while versioning was off
    last_modified: datetime
    is_latest: bool
    deleted: bool = False  # a delete marker
    size: int = 0


@dataclass(frozen=True)
class KeyHistory:
    """Every version and delete marker of one key, oldest first."""

    versions: tuple[VersionInfo, ...]

    @property
    def first(self) -> VersionInfo | None:
        """The version written first (None: only delete markers)."""
        return next((v for v in self.versions if not v.deleted), None)

    @property
    def hidden(self) -> bool:
        """The current version is a delete marker: a plain listing or GET does not see the key."""
        return any(v.deleted and v.is_latest for v in self.versions)

    @property
    def later(self) -> list[VersionInfo]:
        """What was done to the key after its first version: versions written over it and delete markers."""
        first = self.first
        return [v for v in self.versions if first is not None and v is not first]

    @property
    def current(self) -> VersionInfo | None:
        return next((v for v in self.versions if v.is_latest and not v.deleted), None)

    def has(self, version_id: str) -> bool:
        return any(v.version_id == version_id and not v.deleted for v in self.versions)


def from_pages(pages: Iterable[Mapping[str, Any]], exact_key: str | None = None) -> list[VersionInfo]:
    """The versions and delete markers of ListObjectVersions pages (only `exact_key`'s, when given), each key's oldest
    first. S3 lists a key's versions newest first: reversed, and merged with its delete markers by LastModified (a
    stable sort: versions within one second keep S3's order; at a tie a version sorts before a delete marker)."""
    per_key: dict[str, tuple[list[VersionInfo], list[VersionInfo]]] = {}
    for page in pages:
        for kind, deleted in (("Versions", False), ("DeleteMarkers", True)):
            for item in page.get(kind, []):
                if exact_key is not None and item["Key"] != exact_key:
                    continue
                found = VersionInfo(
                    item["Key"],
                    str(item.get("VersionId") or NULL_VERSION),
                    item["LastModified"],
                    bool(item.get("IsLatest")),
                    deleted,
                    int(item.get("Size", 0)),
                )
                per_key.setdefault(found.key, ([], []))[1 if deleted else 0].append(found)
    ordered: list[VersionInfo] = []
    for key in sorted(per_key):
        live, markers = per_key[key]
        ordered.extend(sorted([*reversed(live), *reversed(markers)], key=lambda v: v.last_modified))
    return ordered


def histories(versions: Iterable[VersionInfo]) -> dict[str, KeyHistory]:
    """key -> its history (the input: each key's versions oldest first, as from_pages orders them)."""
    grouped: dict[str, list[VersionInfo]] = {}
    for v in versions:
        grouped.setdefault(v.key, []).append(v)
    return {key: KeyHistory(tuple(vs)) for key, vs in grouped.items()}
