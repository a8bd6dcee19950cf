"""Object digests as manifests record them: one SHA-256 per uploaded part, and one over those digests.

Every byte of a dump is hashed once, part by part, on its way to S3 (which verifies each part's ChecksumSHA256 on
arrival). The manifest records each part's range and digest, and as the object's `sha256` the SHA-256 of the
concatenated binary part digests, so a reader can verify part by part (in any order, concurrently) and still check
that no part was added, dropped or reordered. Pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from chalicelib.errors import IntegrityError
from chalicelib.logical.manifest import ManifestObject, PartDigest


def composite_sha256(part_digests_hex: Sequence[str]) -> str:
    """SHA-256 over the concatenated binary part digests, in part order."""
    outer = hashlib.sha256()
    for digest in part_digests_hex:
        outer.update(bytes.fromhex(digest))
    return outer.hexdigest()


def check_part_layout(obj: ManifestObject) -> list[PartDigest]:
    """The object's parts, after checking they tile it exactly and match its recorded digest.

    Raises IntegrityError when the parts leave a hole, overlap, miss the end or disagree with `sha256`: a
    manifest like that cannot vouch for the bytes. Empty for objects recorded with a whole-object digest only.
    """
    if not obj.parts:
        return []
    offset = 0
    for number, part in enumerate(obj.parts, start=1):
        if part.number != number or part.offset != offset or part.size <= 0:
            raise IntegrityError(f"{obj.key}: manifest part {part.number} does not follow part {number - 1}")
        offset += part.size
    if offset != obj.size:
        raise IntegrityError(f"{obj.key}: manifest parts cover {offset} bytes, the object has {obj.size}")
    if composite_sha256([p.sha256 for p in obj.parts]) != obj.sha256:
        raise IntegrityError(f"{obj.key}: manifest part digests do not add up to the object's recorded sha256")
    return list(obj.parts)
