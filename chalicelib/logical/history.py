"""A target's backups as the version listing shows them (one paginated ListObjectVersions under the target's prefix).

A plain listing shows current versions only, so a delete marker would hide a complete backup and a PutObject over a
manifest would swap it. Read from the versions instead, a backup is there while its manifest's first version is
(whatever later versions or delete markers say), and an object it lists is there while the version it recorded is.
A manifest that records no versions (written before they were recorded, or in an unversioned bucket) is judged by
the current objects, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from chalicelib.adapters.versions import NULL_VERSION, KeyHistory, VersionInfo, histories


@dataclass(frozen=True)
class TargetListing:
    """key -> its versions and delete markers, for every key under one prefix."""

    keys: dict[str, KeyHistory]

    @classmethod
    def of(cls, versions: Iterable[VersionInfo]) -> TargetListing:
        return cls(histories(versions))

    def history(self, key: str) -> KeyHistory:
        return self.keys.get(key, KeyHistory(()))

    def present(self, key: str, version_id: str | None) -> bool:
        """Whether the object a manifest lists is there: the version it recorded (a delete marker over it or a version
        written after it changes nothing), or, when it recorded none, a current version of the key."""
        history = self.history(key)
        if version_id and version_id != NULL_VERSION:
            return history.has(version_id)
        return history.current is not None
