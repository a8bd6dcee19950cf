"""Object digests as manifests record them: one SHA-256 per uploaded part, and one over those digests.

Every byte of a dump is hashed once, part by part, on its way to S3 (which verifies each part's ChecksumSHA256 on
arrival). The manifest records each part's range and digest, and as the object's `sha256` the SHA-256 of the
concatenated binary part digests, so a reader can verify part by part (in any order, concurrently) and still check
that no part was added, dropped or reordered. An object sent in one PUT (or recorded by an older manifest) has no
parts and a plain SHA-256 of its bytes. `PartVerifier` (a stream read in order) and `verify_part` (one ranged read)
check either kind. Pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal, Protocol

from chalicelib.adapters.s3 import PutResult
from chalicelib.adapters.s3_multipart import composite_sha256
from chalicelib.errors import IntegrityError
from chalicelib.logical.manifest import ManifestObject, PartDigest

# composite_sha256 is defined where the upload computes it (S3's own COMPOSITE SHA-256 checksum, in hex).
__all__ = ["PartVerifier", "check_part_layout", "composite_sha256", "manifest_object", "part_digests", "verify_part"]

TAMPERED = "the object was tampered with or corrupted"


class RecordedObject(Protocol):
    """What a manifest records of an object (logical ManifestObject, pitr BaseObject)."""

    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def parts(self) -> Sequence[PartDigest]: ...


def part_digests(result: PutResult) -> list[PartDigest]:
    """What a manifest records of an upload's parts (empty for an object sent in one PUT)."""
    return [PartDigest(number=p.number, offset=p.offset, size=p.size, sha256=p.sha256) for p in result.part_digests]


def manifest_object(role: Literal["dump", "globals", "dir-file"], result: PutResult) -> ManifestObject:
    """The manifest's entry for an object just written: its size, digest, parts (if sent in parts) and version."""
    return ManifestObject(
        role=role,
        key=result.key,
        size=result.size,
        sha256=result.sha256,
        parts=part_digests(result),
        version_id=result.version_id,
    )


def check_part_layout(obj: RecordedObject) -> list[PartDigest]:
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


def verify_part(obj: RecordedObject, part: PartDigest, data: bytes | bytearray | memoryview) -> None:
    """One part's bytes (a ranged read of `part.offset`..+`part.size`) against the manifest; IntegrityError names the
    part. The caller checks the layout once (check_part_layout) before trusting any part."""
    if len(data) != part.size:
        raise IntegrityError(
            f"{obj.key} part {part.number}: read {len(data)} bytes at offset {part.offset}, the manifest says"
            f" {part.size}: the object was changed or truncated"
        )
    if hashlib.sha256(data).hexdigest() != part.sha256:
        raise IntegrityError(
            f"{obj.key} does not match its manifest's SHA-256 in part {part.number} (bytes {part.offset} to"
            f" {part.offset + part.size - 1}): {TAMPERED}"
        )


class PartVerifier:
    """Checks an object's bytes as they stream past, in order, against its manifest entry.

    With recorded parts, each part's SHA-256 is compared the moment its last byte passes (a mismatch names the part,
    before the bytes after it are used); otherwise the whole object's SHA-256 is compared in `finish`. The layout is
    checked first (check_part_layout): a manifest whose parts do not add up vouches for nothing. Every byte is
    hashed once either way. `hexdigest` is what was read, in the manifest's terms (composite or plain).
    """

    def __init__(self, obj: RecordedObject) -> None:
        self.obj = obj
        self.parts = check_part_layout(obj)
        self.size = 0
        self._sha = hashlib.sha256()
        self._index = 0  # the part being read
        self._read_digests: list[str] = []
        self.failed_part: PartDigest | None = None  # the part whose digest differed (update raised)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self.size += len(chunk)
        if not self.parts:
            self._sha.update(chunk)
            return
        view = memoryview(chunk)
        while view:
            if self._index >= len(self.parts):
                raise IntegrityError(
                    f"{self.obj.key} is longer than the {self.obj.size} bytes its manifest records: {TAMPERED}"
                )
            part = self.parts[self._index]
            take = min(len(view), part.offset + part.size - (self.size - len(view)))
            self._sha.update(view[:take])
            view = view[take:]
            if self.size - len(view) == part.offset + part.size:
                self._close_part(part)

    def _close_part(self, part: PartDigest) -> None:
        digest = self._sha.hexdigest()
        if digest != part.sha256:
            self.failed_part = part
            raise IntegrityError(
                f"{self.obj.key} does not match its manifest's SHA-256 in part {part.number} (bytes {part.offset}"
                f" to {part.offset + part.size - 1}): {TAMPERED}"
            )
        self._read_digests.append(digest)
        self._sha = hashlib.sha256()
        self._index += 1

    @property
    def hexdigest(self) -> str:
        return composite_sha256(self._read_digests) if self.parts else self._sha.hexdigest()

    def finish(self) -> None:
        """After the last byte: IntegrityError unless every byte was there and matched."""
        if self.size != self.obj.size:
            raise IntegrityError(
                f"{self.obj.key} is {self.size} bytes, its manifest says {self.obj.size}: the object was changed"
                " or truncated"
            )
        if not self.parts and self._sha.hexdigest() != self.obj.sha256:
            raise IntegrityError(f"{self.obj.key} does not match its manifest's SHA-256: {TAMPERED}")
