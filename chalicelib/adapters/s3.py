"""The backup store: the one place that talks to S3.

Contract (every backend keeps it):
- `put_stream` reads a stream to its end and stores it as one object, computing SHA-256 and size on the
  way: a stream longer than one part is sent in parts, each hashed once and verified by S3 on arrival
  (`PutResult.part_digests`; its `sha256` is then the composite over them, chalicelib.adapters.s3_multipart),
  a shorter one in one PUT with a plain SHA-256. The object becomes visible only if the stream ended *and*
  `before_complete` returned without raising; on any failure the multipart upload is aborted, so no partial
  object and no open upload remain. Memory stays within the budget whatever the stream's length.
- Keys are opaque here: naming belongs to the catalog.
- Errors are StorageError with a message that says what to fix.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message, http_status
from chalicelib.adapters.s3_multipart import (
    S3_MAX_PARTS,
    BufferPool,
    MultipartUpload,
    UploadedPart,
    composite_sha256,
    fill,
)
from chalicelib.adapters.versions import NULL_VERSION, VersionInfo, from_pages
from chalicelib.errors import StorageError

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

MiB = 1024 * 1024
GiB = 1024 * MiB
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
S3_MAX_OBJECT = 5 * 1024 * GiB


@dataclass(frozen=True)
class PartPlan:
    """Part sizes that grow as an upload of unknown length goes on.

    A fixed 8 MiB part caps a stream at 10,000 x 8 MiB (~78 GiB). Doubling the part size every
    `parts_per_step` parts keeps small dumps cheap in memory and still reaches S3's 5 TiB object limit
    within 10,000 parts.
    """

    base: int = 8 * MiB
    parts_per_step: int = 1000

    def size(self, part_number: int) -> int:
        """Size of 1-based part `part_number`."""
        return min(S3_MAX_PART, self.base << ((part_number - 1) // self.parts_per_step))

    def capacity(self) -> int:
        """Largest stream the plan can store within S3's part limit."""
        steps, rest = divmod(S3_MAX_PARTS, self.parts_per_step)
        total = sum(min(S3_MAX_PART, self.base << s) * self.parts_per_step for s in range(steps))
        return total + rest * min(S3_MAX_PART, self.base << steps)


@dataclass(frozen=True)
class PutResult:
    key: str
    size: int
    sha256: str  # hex: of the bytes (one PUT), or composite_sha256 of `part_digests` (a multipart upload)
    parts: int
    version_id: str | None = None  # the stored version (None: an unversioned bucket or a store that does not say)
    part_digests: tuple[UploadedPart, ...] = ()  # a multipart upload's parts, in order (empty: one PUT)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime | None = None
    retain_until: datetime | None = None  # S3 Object Lock (HEAD shows it to a caller with s3:GetObjectRetention)
    version_id: str | None = None  # HEAD: the version it describes


class AlreadyWritten(StorageError):
    """A write-once PUT (put_bytes(if_absent=True)) found the key already there."""


class BackupStore(Protocol):
    bucket: str

    def put_stream(
        self,
        key: str,
        stream: IO[bytes],
        *,
        tags: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        before_complete: Callable[[], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> PutResult: ...

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
    ) -> PutResult: ...

    def get_bytes(self, key: str, version_id: str | None = None) -> bytes: ...

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]] | None: ...

    def open_stream(self, key: str, version_id: str | None = None) -> tuple[BinaryIO, int]: ...

    def get_range(self, key: str, version_id: str | None, start: int, end: int) -> bytes: ...

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def list_versions(self, prefix: str, exact: bool = False) -> list[VersionInfo]: ...

    def read_version(self, key: str, version_id: str) -> tuple[bytes, dict[str, str], datetime | None]: ...

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo | None: ...

    def tags(self, key: str, version_id: str | None = None) -> dict[str, str]: ...

    def put_tags(self, key: str, tags: Mapping[str, str], version_id: str | None = None) -> None: ...

    def lock(self, key: str, mode: str, until: datetime, version_id: str | None = None) -> None: ...

    def delete(self, keys: list[str]) -> None: ...

    def open_uploads(self, prefix: str) -> list[str]: ...


def _explain(exc: BaseException, bucket: str, key: str | None = None, version_id: str | None = None) -> StorageError:
    """A botocore error as a StorageError saying what to fix."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    code, status = error_code(exc), http_status(exc)
    if version_id and code in ("NoSuchVersion", "InvalidArgument", "404", "NoSuchKey", "NotFound"):
        return StorageError(
            f"version {version_id} of {where} (the one its manifest recorded) is not in the bucket: it was deleted"
            " (which needs s3:DeleteObjectVersion and, while locked, a bypass of its Object Lock), or the manifest"
            f" was written for another bucket ({code or status})"
        )
    if code == "NoSuchBucket":
        return StorageError(f"bucket {bucket!r} does not exist: create it (the stack does) or fix settings.bucket")
    if code in ("AccessDenied", "403", "Forbidden") or status == 403:
        return StorageError(
            f"access denied to {where}: the role needs s3 access to this bucket"
            " (and kms:GenerateDataKey/Decrypt on its key)"
        )
    if code in ("NoSuchKey", "404", "NotFound"):
        return StorageError(f"{where} does not exist")
    if "KMS" in code:
        return StorageError(f"KMS refused the key for {where} ({code}): check settings.kms_key_id and the key policy")
    if code or status:
        return StorageError(f"S3 error on {where}: {code or status}: {error_message(exc)}")
    return StorageError(f"cannot reach S3 for {where}: {exc}")


def _read_version(version_id: str | None) -> dict[str, str]:
    """The VersionId argument of a call on one version (a read, its tags, its lock). "null" (NULL_VERSION) is the
    version id of an object written while the bucket's versioning was off (moto reports it for every write to an
    unversioned bucket, and refuses a GET that names it): there is one
    such version per key and it is the current one, so it is read as the current object. The stack's bucket is
    versioned from its creation, so its backups always name a real version."""
    return {"VersionId": version_id} if version_id and version_id != NULL_VERSION else {}


class S3Store:
    """BackupStore on Amazon S3 (or anything speaking its API)."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        kms_key_id: str | None = None,
        plan: PartPlan | None = None,
        concurrency: int = 4,
        memory_budget: int = 56 * MiB,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.kms_key_id = kms_key_id
        self.plan = plan or PartPlan()
        self.concurrency = concurrency
        self.memory_budget = memory_budget

    def _encryption(self) -> dict[str, Any]:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        tags: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
    ) -> PutResult:
        """One PUT. `metadata` (x-amz-meta-*) is stored with the object and, like its bytes, never changes.
        `if_absent`: a conditional PUT (If-None-Match: *) that S3 refuses when the key has a current version
        (AlreadyWritten); a key whose current version is a delete marker is written."""
        extra: Any = {"Metadata": dict(metadata)} if metadata else {}
        digest = hashlib.sha256(data).digest()  # the one hash of these bytes: S3 checks it, the caller records it
        if if_absent:
            extra["IfNoneMatch"] = "*"
        try:
            resp = self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Tagging=urllib.parse.urlencode(dict(tags or {})),
                ChecksumSHA256=base64.b64encode(digest).decode(),
                **self._encryption(),
                **extra,
            )
        except AWS_ERRORS as exc:
            if if_absent and (error_code(exc) == "PreconditionFailed" or http_status(exc) == 412):
                raise AlreadyWritten(f"s3://{self.bucket}/{key} is already there: it is written once") from exc
            raise _explain(exc, self.bucket, key) from exc
        return PutResult(key, len(data), digest.hex(), 1, resp.get("VersionId"))

    def put_stream(
        self,
        key: str,
        stream: IO[bytes],
        *,
        tags: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        before_complete: Callable[[], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> PutResult:
        pool = BufferPool(self.memory_budget)
        first = pool.acquire(self.plan.size(1))
        size = fill(stream, first)
        if size < self.plan.size(1):
            # The whole stream fits one part: a single PUT, after the producer said it succeeded.
            data = bytes(memoryview(first)[:size])
            del first
            if before_complete:
                before_complete()
            result = self.put_bytes(key, data, tags=tags, content_type=content_type)
            if on_progress:
                on_progress(size)
            return result
        upload = MultipartUpload(self.client, self.bucket, key, pool, lambda exc: _explain(exc, self.bucket, key))
        upload_id = upload.create(tags or {}, content_type, self._encryption())
        holder = [first]  # handed over, so no frame keeps the first part's buffer out of the pool
        del first
        done = upload.run(upload_id, holder, stream, self.plan.size, self.concurrency, before_complete, on_progress)
        digest = composite_sha256([p.sha256 for p in done.parts])
        return PutResult(key, done.size, digest, len(done.parts), done.version_id, done.parts)

    def get_bytes(self, key: str, version_id: str | None = None) -> bytes:
        body, _ = self.open_stream(key, version_id)
        with body:
            return body.read()

    def open_stream(self, key: str, version_id: str | None = None) -> tuple[BinaryIO, int]:
        """The body of the version `version_id` (None: the current version) and its length. Reading a backup by the
        version its manifest recorded means a later PutObject on the same key (a new current version) changes nothing
        of what a restore or a verify reads."""
        extra: Any = _read_version(version_id)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except AWS_ERRORS as exc:
            raise _explain(exc, self.bucket, key, extra.get("VersionId")) from exc
        return resp["Body"], int(resp["ContentLength"])  # type: ignore[return-value]

    def get_range(self, key: str, version_id: str | None, start: int, end: int) -> bytes:
        """Bytes [start, end) of the version `version_id` (None: the current one): one ranged GET."""
        extra: Any = _read_version(version_id)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}", **extra)
            with resp["Body"] as body:
                return body.read()
        except AWS_ERRORS as exc:
            raise _explain(exc, self.bucket, key, extra.get("VersionId")) from exc

    def get_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """The current version's bytes and user metadata (x-amz-meta-*); None when there is no such object. Any
        other failure is a StorageError: a caller can tell "not there" from "could not look"."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
            with resp["Body"] as body:
                data = body.read()
        except AWS_ERRORS as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _explain(exc, self.bucket, key) from exc
        return data, dict(resp.get("Metadata", {}))

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], int(obj["Size"]), obj.get("LastModified"))
        except AWS_ERRORS as exc:
            raise _explain(exc, self.bucket, prefix) from exc

    def list_versions(self, prefix: str, exact: bool = False) -> list[VersionInfo]:
        """Every version and delete marker under `prefix` (`exact`: of the key `prefix` only), each key's oldest first:
        one paginated ListObjectVersions (s3:ListBucketVersions). An unversioned bucket lists one "null" version."""
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix)
            return from_pages(pages, prefix if exact else None)
        except AWS_ERRORS as exc:
            hint = " (listing versions needs s3:ListBucketVersions)" if http_status(exc) == 403 else ""
            raise StorageError(f"{_explain(exc, self.bucket, prefix)}{hint}") from exc

    def read_version(self, key: str, version_id: str) -> tuple[bytes, dict[str, str], datetime | None]:
        """(bytes, user metadata, LastModified) of the version `version_id` (NULL_VERSION: the current object)."""
        extra: Any = _read_version(version_id)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
            with resp["Body"] as body:
                data = body.read()
        except AWS_ERRORS as exc:
            raise _explain(exc, self.bucket, key, extra.get("VersionId")) from exc
        return data, dict(resp.get("Metadata", {})), resp.get("LastModified")

    def head(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """The object's current version, or the version `version_id` (None: not there)."""
        extra: Any = _read_version(version_id)
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=key, **extra)
        except AWS_ERRORS as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
                return None
            raise _explain(exc, self.bucket, key, extra.get("VersionId")) from exc
        return ObjectInfo(
            key,
            int(resp["ContentLength"]),
            resp.get("LastModified"),
            resp.get("ObjectLockRetainUntilDate"),
            resp.get("VersionId"),
        )

    def tags(self, key: str, version_id: str | None = None) -> dict[str, str]:
        extra: Any = _read_version(version_id)
        try:
            resp = self.client.get_object_tagging(Bucket=self.bucket, Key=key, **extra)
        except AWS_ERRORS as exc:
            raise _explain(exc, self.bucket, key) from exc
        return {t["Key"]: t["Value"] for t in resp["TagSet"]}

    def put_tags(self, key: str, tags: Mapping[str, str], version_id: str | None = None) -> None:
        """Replace the object's tags (its current version's, or those of the version `version_id`)."""
        extra: Any = _read_version(version_id)
        try:
            self.client.put_object_tagging(
                Bucket=self.bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
                **extra,
            )
        except AWS_ERRORS as exc:
            raise _explain(exc, self.bucket, key) from exc

    def lock(self, key: str, mode: str, until: datetime, version_id: str | None = None) -> None:
        """S3 Object Lock on the version `version_id` (None: the object's current version): no one can delete that
        version before `until`, and without s3:BypassGovernanceRetention (GOVERNANCE) or at all (COMPLIANCE) no one
        can shorten the lock. Extending it is always allowed."""
        retention: Any = {"Mode": mode, "RetainUntilDate": until}  # mode: GOVERNANCE | COMPLIANCE (settings)
        extra: Any = _read_version(version_id)
        try:
            self.client.put_object_retention(Bucket=self.bucket, Key=key, Retention=retention, **extra)
        except AWS_ERRORS as exc:
            if error_code(exc) == "InvalidRequest":
                raise StorageError(
                    f"s3://{self.bucket}/{key} cannot be locked: {error_message(exc)} (the bucket needs"
                    " Object Lock enabled, as the stack creates it; or unset"
                    " settings.object_lock_mode)"
                ) from exc
            raise _explain(exc, self.bucket, key) from exc

    def delete(self, keys: list[str]) -> None:
        """Plain deletes: in a versioned bucket each adds a delete marker, the data stays a noncurrent version until
        the lifecycle expires it (and, if locked, until its lock ends). No version is ever deleted here."""
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            except AWS_ERRORS as exc:
                raise _explain(exc, self.bucket, batch[0]) from exc
            if resp.get("Errors"):
                err = resp["Errors"][0]
                raise StorageError(f"could not delete s3://{self.bucket}/{err.get('Key')}: {err.get('Message')}")

    def open_uploads(self, prefix: str) -> list[str]:
        try:
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        except AWS_ERRORS as exc:
            raise _explain(exc, self.bucket, prefix) from exc
        return [u["Key"] for u in resp.get("Uploads", [])]
