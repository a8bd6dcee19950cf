"""The multipart uploader against an in-memory S3: bytes held stay within the budget, whatever S3's speed."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.adapters.s3 import MiB, PartPlan, S3Store
from chalicelib.adapters.s3_multipart import BufferPool, composite_sha256
from chalicelib.errors import StorageError


class FakeS3:
    """Just the calls S3Store makes, with a slow UploadPart and the uploader's budget watched."""

    def __init__(self, delay: float = 0.0, fail_part: int | None = None) -> None:
        self.delay, self.fail_part = delay, fail_part
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.aborted: list[str] = []
        self.lock = threading.Lock()
        self.part_error: Exception | None = None

    def create_multipart_upload(self, **kw: Any) -> dict[str, str]:
        upload_id = f"u{len(self.uploads)}"
        self.uploads[upload_id] = {}
        return {"UploadId": upload_id}

    def upload_part(self, UploadId: str, PartNumber: int, Body: bytes, **kw: Any) -> dict[str, str]:
        time.sleep(self.delay)
        if PartNumber == self.fail_part:
            injected = ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "UploadPart")
            raise self.part_error or injected
        with self.lock:
            self.uploads[UploadId][PartNumber] = bytes(Body)
        return {"ETag": f'"{PartNumber}"'}

    def complete_multipart_upload(self, Key: str, UploadId: str, MultipartUpload: Any, **kw: Any) -> None:
        parts = self.uploads.pop(UploadId)
        self.objects[Key] = b"".join(parts[p["PartNumber"]] for p in MultipartUpload["Parts"])

    def abort_multipart_upload(self, UploadId: str, **kw: Any) -> None:
        self.uploads.pop(UploadId, None)
        self.aborted.append(UploadId)

    def put_object(self, Key: str, Body: bytes, **kw: Any) -> None:
        self.objects[Key] = bytes(Body)


def watched_store(client: FakeS3, budget: int, part: int) -> tuple[S3Store, list[int]]:
    """A store, and the part-buffer bytes its pools hold after every buffer taken (watch_pool)."""
    store = S3Store(
        client,  # type: ignore[arg-type]
        "b",
        plan=PartPlan(base=part, parts_per_step=1000),
        concurrency=4,
        memory_budget=budget,
    )
    return store, WATCHED


@pytest.fixture(autouse=True)
def watch_pool(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every BufferPool.acquire records the bytes the pool holds afterwards (in the list watched_store returns)."""
    original = BufferPool.acquire

    def acquire(self: BufferPool, size: int) -> bytearray:
        buffer = original(self, size)
        WATCHED.append(self.allocated)
        return buffer

    WATCHED.clear()
    monkeypatch.setattr(BufferPool, "acquire", acquire)
    return WATCHED


WATCHED: list[int] = []


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_held_bytes_stay_within_the_budget(delay: float) -> None:
    client = FakeS3(delay=delay)
    part = 6 * MiB
    store, held = watched_store(client, budget=3 * part, part=part)
    data = bytes(range(256)) * (25 * MiB // 256)
    result = store.put_stream("k", io.BytesIO(data))
    assert client.objects["k"] == data
    digests = [hashlib.sha256(data[i : i + part]).hexdigest() for i in range(0, len(data), part)]
    assert [p.sha256 for p in result.part_digests] == digests and result.size == len(data)
    assert result.sha256 == composite_sha256(digests) and result.parts == 5
    assert held and max(held) <= 3 * part


def test_a_failed_part_aborts_and_raises() -> None:
    client = FakeS3(fail_part=2)
    store, _ = watched_store(client, budget=12 * MiB, part=6 * MiB)
    with pytest.raises(StorageError, match="InternalError: injected"):
        store.put_stream("k", io.BytesIO(b"x" * (20 * MiB)))
    assert client.aborted and "k" not in client.objects


def test_a_programming_error_in_a_part_surfaces_as_itself_and_still_aborts() -> None:
    client = FakeS3(fail_part=2)
    client.part_error = RuntimeError("a bug, not S3")
    store, _ = watched_store(client, budget=12 * MiB, part=6 * MiB)
    with pytest.raises(RuntimeError, match="a bug, not S3"):
        store.put_stream("k", io.BytesIO(b"x" * (20 * MiB)))
    assert client.aborted and "k" not in client.objects


def test_producer_failure_before_complete_aborts() -> None:
    client = FakeS3()
    store, _ = watched_store(client, budget=12 * MiB, part=6 * MiB)

    def producer_failed() -> None:
        raise StorageError("pg_dump exited with 1")

    with pytest.raises(StorageError, match="pg_dump exited"):
        store.put_stream("k", io.BytesIO(b"x" * (13 * MiB)), before_complete=producer_failed)
    assert client.aborted and "k" not in client.objects
