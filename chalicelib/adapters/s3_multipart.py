"""The multipart half of S3Store.put_stream: parts read into a fixed pool of buffers, each hashed once, sent by a
bounded pool of threads.

One hash per byte: every part's SHA-256 is computed here, once, and sent as UploadPart's ChecksumSHA256 (the
upload is created with ChecksumAlgorithm=SHA256), so S3 verifies each part on arrival and CompleteMultipartUpload
names each part's checksum. The clients are built with request_checksum_calculation="when_required" and payload
signing off (chalicelib.wiring), so botocore adds no CRC32 and no SHA-256 payload signature of its own: the signed
x-amz-checksum-sha256 header is what binds the body to the request. The object's digest is the SHA-256 of the
concatenated binary part digests (`composite_sha256`), which is also what S3 reports as the object's checksum
(base64, with a "-N" suffix).

Memory: part bytes live only in the pool's buffers, allocated once and reused (at most the store's budget, and
never less than one part). Growing parts (PartPlan) are capped at half the budget (`part_size_within`), so two
parts always fit: the budget holds whatever the stream's length, and it bounds the longest stream. botocore sends
a bytearray body as it is (urllib3 2 writes it to the socket without a copy; a file-like body would cost an
Expect: 100-continue round trip per part, a one-second stall on servers that do not answer it). So the process
holds the budget and little else, whatever the stream's length or the speed of S3 (measured: the process grows
by the budget, +64 MiB; a fresh 8 MiB bytes object per part, as before, grew it by ~75 MiB: glibc's heap
fragments; tests/reliability/test_rss_upload.py).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from chalicelib.adapters.aws_errors import AWS_ERRORS
from chalicelib.errors import StorageError
from chalicelib.observability import logger

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

S3_MAX_PARTS = 10_000
Explain = Callable[[BaseException], StorageError]  # a botocore error as a StorageError naming the object


@dataclass(frozen=True)
class UploadedPart:
    """One part as sent: its number (from 1), first byte, size and SHA-256 (hex; S3 verified it on arrival)."""

    number: int
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadOutcome:
    size: int
    parts: tuple[UploadedPart, ...]
    version_id: str | None


def composite_sha256(part_digests_hex: Sequence[str]) -> str:
    """SHA-256 over the concatenated binary part digests, in part order (S3's COMPOSITE SHA-256 checksum, in hex)."""
    outer = hashlib.sha256()
    for digest in part_digests_hex:
        outer.update(bytes.fromhex(digest))
    return outer.hexdigest()


def fill(stream: IO[bytes], buffer: bytearray) -> int:
    """Read from `stream` until `buffer` is full or the stream ends; the number of bytes read. `readinto` when the
    stream has it (a pipe, a file, a zstd reader): the bytes go straight into the buffer, no copy made on the way."""
    readinto = getattr(stream, "readinto", None)
    got = 0
    with memoryview(buffer) as view:  # released on return: a buffer with a live view cannot be shrunk
        while got < len(view):
            if readinto is not None:
                n = readinto(view[got:])
            else:
                chunk = stream.read(len(view) - got)
                n = len(chunk)
                view[got : got + n] = chunk
            if not n:
                break
            got += n
    return got


class BufferPool:
    """Part buffers whose sizes add up to at most `budget` (one part is always allowed), reused part after part.

    A buffer of exactly the part's size is taken before a part is read and given back once the part is sent: a slow
    S3 makes the reader wait here instead of making memory grow. When parts grow (PartPlan), free buffers of the
    old size are dropped as room is needed. Every buffer is counted at the size it was taken at, whatever its length
    later (the last part's buffer is cut to the bytes read): counting it at its new length left bytes counted that no
    buffer held, and the next part as large as the budget then waited forever.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.allocated = 0
        self.peak = 0  # the most bytes counted at once (tests check the budget held)
        self.free: list[bytearray] = []
        self.taken_at: dict[int, int] = {}  # id(buffer) -> its size when taken; a buffer lives while counted here
        self.cond = threading.Condition()
        self.failure: BaseException | None = None

    def acquire(self, size: int) -> bytearray:
        """A buffer of `size` bytes; waits while the budget is in flight. Raises the upload's failure, also when it
        comes while waiting (`fail` wakes every waiter)."""
        with self.cond:
            while True:
                if self.failure:
                    raise self.failure
                fits = [b for b in self.free if len(b) == size == self.taken_at[id(b)]]
                if fits:
                    self.free.remove(fits[0])
                    return fits[0]
                if self.free and self.allocated + size > self.budget:
                    self.allocated -= self.taken_at.pop(id(self.free.pop()))  # another size (the parts grew)
                    continue
                if not self.allocated or self.allocated + size <= self.budget:
                    buffer = bytearray(size)
                    self.taken_at[id(buffer)] = size
                    self.allocated += size
                    self.peak = max(self.peak, self.allocated)
                    return buffer
                self.cond.wait()

    def release(self, buffer: bytearray) -> None:
        with self.cond:
            self.free.append(buffer)
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """Wake the reader: the upload is over (an error, or an abort)."""
        with self.cond:
            self.failure = self.failure or exc
            self.cond.notify_all()


def part_size_within(planned: int, first: int, budget: int) -> int:
    """The planned size of a later part, capped so that two parts fit the budget (one read while one is sent), but
    never below the first part's size (settings require a budget of two first parts: adapters.upload_memory). The cap
    bounds memory and, with it, the longest stream: 10,000 parts of at most half the budget."""
    return max(first, min(planned, budget // 2))


def completed_checksum_problem(returned: str | None, parts: Sequence[UploadedPart]) -> str | None:
    """Why CompleteMultipartUpload's ChecksumSHA256 (S3's composite, "<base64>-<parts>") is not the composite of
    the part digests sent; None when it is, or when the store returned none (moto)."""
    if not returned:
        return None
    expected = _b64(composite_sha256([p.sha256 for p in parts]))
    digest, _, count = returned.partition("-")
    if digest != expected or (count and count != str(len(parts))):
        return (
            f"S3 reports the object's SHA-256 as {returned}, not {expected}-{len(parts)} composed from the parts sent"
        )
    return None


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class MultipartUpload:
    """One multipart upload of a stream whose first part (a full one) is already in a pool buffer."""

    def __init__(self, client: S3Client, bucket: str, key: str, pool: BufferPool, explain: Explain) -> None:
        self.client, self.bucket, self.key, self.pool, self.explain = client, bucket, key, pool, explain

    def create(self, tags: Mapping[str, str], content_type: str, encryption: Mapping[str, str]) -> str:
        extra: Any = dict(encryption)
        try:
            return self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                ContentType=content_type,
                Tagging=urllib.parse.urlencode(dict(tags)),
                ChecksumAlgorithm="SHA256",
                **extra,
            )["UploadId"]
        except AWS_ERRORS as exc:
            raise self.explain(exc) from exc

    def run(
        self,
        upload_id: str,
        first: list[bytearray],
        stream: IO[bytes],
        part_size: Callable[[int], int],
        concurrency: int,
        before_complete: Callable[[], None] | None,
        on_progress: Callable[[int], None] | None,
    ) -> UploadOutcome:
        """Send the first part and the rest of `stream`, then complete the upload once `before_complete` returned.
        Any failure (an error, a deadline, an interrupt on this thread) aborts the upload: parts still queued are
        dropped, not sent, and the upload's parts are deleted before the failure is re-raised."""
        try:
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="s3-part") as pool:
                try:
                    futures, total = self._send_parts(pool, upload_id, first, stream, part_size, on_progress)
                    sent = [f.result() for f in futures]
                except BaseException:  # stop at once: no queued part is sent after a failure; re-raised
                    self.pool.fail(RuntimeError("the upload was aborted"))
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            if before_complete:
                before_complete()
            listed: Any = [{"PartNumber": p.number, "ETag": etag, "ChecksumSHA256": _b64(p.sha256)} for p, etag in sent]
            try:
                done = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=upload_id, MultipartUpload={"Parts": listed}
                )
            except AWS_ERRORS as exc:
                raise self.explain(exc) from exc
        except BaseException:  # whatever stops the upload (error, deadline, interrupt) aborts it; re-raised
            self.pool.fail(RuntimeError("the upload was aborted"))
            self._abort(upload_id)
            raise
        parts = tuple(p for p, _ in sent)
        if problem := completed_checksum_problem((done or {}).get("ChecksumSHA256"), parts):
            # Complete, so nothing to abort: the caller writes no manifest for it, and an unlisted object is no backup.
            raise StorageError(f"s3://{self.bucket}/{self.key}: {problem}: the stored object is not what was sent")
        return UploadOutcome(total, parts, (done or {}).get("VersionId"))

    def _send_parts(
        self,
        pool: ThreadPoolExecutor,
        upload_id: str,
        first: list[bytearray],
        stream: IO[bytes],
        part_size: Callable[[int], int],
        on_progress: Callable[[int], None] | None,
    ) -> tuple[list[Future[tuple[UploadedPart, str]]], int]:
        """Read the stream part by part into pool buffers and queue each part to `pool`: the queued parts, and the
        bytes read."""
        futures: list[Future[tuple[UploadedPart, str]]] = []
        total = 0
        buffer = first.pop()
        size = first_size = len(buffer)
        while size:
            if len(futures) >= S3_MAX_PARTS:
                self.pool.release(buffer)
                largest = part_size_within(part_size(S3_MAX_PARTS), first_size, self.pool.budget)
                raise StorageError(
                    f"s3://{self.bucket}/{self.key}: the stream does not fit in {S3_MAX_PARTS} parts of at most"
                    f" {largest} bytes (half the upload memory):"
                    " raise settings.upload_memory_mib, or settings.part_size_mib"
                )
            number = len(futures) + 1
            futures.append(pool.submit(self._send, upload_id, number, total, buffer, size))
            total += size
            if on_progress:
                on_progress(total)
            next_size = part_size_within(part_size(number + 1), first_size, self.pool.budget)
            buffer = self.pool.acquire(next_size)  # waits while the budget is in flight
            size = fill(stream, buffer)
            if 0 < size < len(buffer):
                del buffer[size:]  # the last part: the body sent is the whole buffer (the pool counts it as taken)
        self.pool.release(buffer)
        return futures, total

    def _send(self, upload_id: str, number: int, offset: int, buffer: bytearray, size: int) -> tuple[UploadedPart, str]:
        """Hash the part (on this worker thread: hashlib releases the GIL) and send it with its checksum."""
        body: Any = buffer  # botocore takes any bytes-like blob (its stubs say bytes) and sends it without a copy
        try:
            if self.pool.failure:  # queued before the upload failed: not sent
                raise StorageError(f"s3://{self.bucket}/{self.key}: part {number} not sent: the upload failed")
            part = UploadedPart(number, offset, size, hashlib.sha256(buffer).hexdigest())
            checksum = _b64(part.sha256)
            try:
                resp = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ChecksumSHA256=checksum,
                )
            except AWS_ERRORS as exc:
                raise self.explain(exc) from exc
            echoed = resp.get("ChecksumSHA256")
            if echoed is not None and echoed != checksum:  # a store that ignores the checksum echoes none (moto)
                raise StorageError(
                    f"s3://{self.bucket}/{self.key}: S3 stored part {number} with SHA-256 {echoed}, not the {checksum}"
                    " sent: the part was altered on the way; the upload was aborted"
                )
            return part, resp["ETag"]
        except BaseException as exc:  # wakes the reader, which aborts the upload; re-raised
            self.pool.fail(exc)
            raise
        finally:
            self.pool.release(buffer)

    def _abort(self, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except AWS_ERRORS:
            logger.warning(
                "could not abort multipart upload; the lifecycle rule will remove it", extra={"key": self.key}
            )
