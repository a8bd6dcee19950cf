"""The multipart uploader's buffer pool, scaled down to bytes: a stream ending mid-part, parts as large as the budget
or larger, and growing parts all finish within the budget; a failure stops the sending at once; the composite
checksum S3 returns at completion is compared with the parts sent.

An in-memory S3 (moto refuses parts under 5 MiB, and the accounting is the same at any scale)."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chalicelib.adapters import s3 as s3_module
from chalicelib.adapters.s3 import PartPlan, PutResult, S3Store
from chalicelib.adapters.s3_multipart import BufferPool, completed_checksum_problem, part_size_within
from chalicelib.errors import StorageError


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt or a deadline on the reading thread (not an Exception)."""


class FakeS3:
    """The calls S3Store makes; `part_gate` holds every UploadPart until set; `fail_part` fails one part."""

    def __init__(self, fail_part: int | None = None, completed_checksum: str | None = None) -> None:
        self.fail_part, self.completed_checksum = fail_part, completed_checksum
        self.parts: dict[int, bytes] = {}
        self.part_calls: list[tuple[int, float]] = []  # (part number, when UploadPart began)
        self.objects: dict[str, bytes] = {}
        self.aborted = 0
        self.part_gate = threading.Event()
        self.part_gate.set()
        self.lock = threading.Lock()

    def create_multipart_upload(self, **kw: Any) -> dict[str, str]:
        return {"UploadId": "u1"}

    def upload_part(self, PartNumber: int, Body: bytearray, **kw: Any) -> dict[str, str]:
        with self.lock:
            self.part_calls.append((PartNumber, time.monotonic()))
        self.part_gate.wait(5)
        if PartNumber == self.fail_part:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "UploadPart")
        with self.lock:
            self.parts[PartNumber] = bytes(Body)
        return {"ETag": f'"{PartNumber}"'}

    def complete_multipart_upload(self, Key: str, MultipartUpload: Any, **kw: Any) -> dict[str, str]:
        self.objects[Key] = b"".join(self.parts[p["PartNumber"]] for p in MultipartUpload["Parts"])
        return {"ChecksumSHA256": self.completed_checksum} if self.completed_checksum else {}

    def abort_multipart_upload(self, **kw: Any) -> None:
        self.aborted += 1

    def put_object(self, Key: str, Body: bytes, **kw: Any) -> dict[str, str]:
        self.objects[Key] = bytes(Body)
        return {}


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[BufferPool]:
    """Every BufferPool a put_stream makes, to read its accounting afterwards."""
    made: list[BufferPool] = []

    class Recorded(BufferPool):
        def __init__(self, budget: int) -> None:
            super().__init__(budget)
            made.append(self)

    monkeypatch.setattr(s3_module, "BufferPool", Recorded)
    return made


def finishes(call: Callable[[], PutResult], within: float = 5.0) -> PutResult:
    """`call`'s result; fails the test (instead of hanging it) when it has not returned within `within` seconds."""
    out: list[PutResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still waiting after {within} s: the upload hangs"
    if errors:
        raise errors[0]
    return out[0]


def store(client: FakeS3, budget: int, plan: PartPlan, concurrency: int = 2) -> S3Store:
    return S3Store(client, "b", plan=plan, memory_budget=budget, concurrency=concurrency)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("part", "budget", "length"),
    [
        (16, 16, 40),  # part == budget, the stream ends mid-part (part_size_mib == upload_memory_mib)
        (16, 16, 56),
        (16, 8, 40),  # part > budget: one part at a time
        (8, 16, 44),  # two parts fit, ends mid-part
    ],
)
def test_a_stream_ending_mid_part_finishes_and_the_pool_returns_to_empty(
    part: int, budget: int, length: int, pools: list[BufferPool]
) -> None:
    client = FakeS3()
    data = bytes(range(length))
    result = finishes(lambda: store(client, budget, PartPlan(base=part)).put_stream("k", io.BytesIO(data)))
    assert client.objects["k"] == data and result.size == length
    pool = pools[0]
    held = sum(pool.taken_at[id(b)] for b in pool.free)
    assert pool.allocated == held  # every byte counted is in a free buffer: nothing is lost to the last part's cut
    assert pool.peak <= max(budget, part)


def test_a_cut_buffer_is_given_back_at_the_size_it_was_taken_at() -> None:
    pool = BufferPool(16)
    buffer = pool.acquire(16)
    del buffer[5:]  # the last part, cut to the bytes read
    pool.release(buffer)
    taken: list[bytearray] = []
    thread = threading.Thread(target=lambda: taken.append(pool.acquire(16)), daemon=True)
    thread.start()
    thread.join(2)
    assert taken, "still waiting: the pool counted the cut buffer at 5 bytes and never had room again"
    assert len(taken[0]) == 16 and pool.allocated == 16


def test_growing_parts_are_capped_at_half_the_budget_and_the_stream_finishes(pools: list[BufferPool]) -> None:
    """The defaults' shape scaled down (parts double every 2 parts; the budget is 8x the first part): the planned
    parts reach the budget at part 7 and pass it after; capped, the parts stop at 4 bytes and two always fit."""
    client = FakeS3()
    data = hashlib.sha256(b"seed").digest() * 4  # 128 bytes
    plan = PartPlan(base=1, parts_per_step=2)
    result = finishes(lambda: store(client, 8, plan).put_stream("k", io.BytesIO(data)))
    assert client.objects["k"] == data
    assert [p.size for p in result.part_digests][:8] == [1, 1, 2, 2, 4, 4, 4, 4]
    assert max(p.size for p in result.part_digests) == 4
    assert pools[0].peak <= 8


def test_part_size_within_caps_growth_but_never_below_the_first_part() -> None:
    assert part_size_within(planned=64, first=8, budget=64) == 32
    assert part_size_within(planned=16, first=8, budget=64) == 16
    assert part_size_within(planned=16, first=16, budget=8) == 16  # a first part above the budget: one at a time


def test_a_failure_wakes_a_reader_waiting_for_a_buffer() -> None:
    pool = BufferPool(8)
    pool.acquire(8)
    raised: list[BaseException] = []

    def reader() -> None:
        try:
            pool.acquire(8)
        except BaseException as exc:  # what the reader sees
            raised.append(exc)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.05)
    assert thread.is_alive()  # waiting: the budget is in flight
    pool.fail(RuntimeError("part 1 failed"))
    thread.join(2)
    assert not thread.is_alive() and str(raised[0]) == "part 1 failed"


def test_no_queued_part_is_sent_after_a_part_fails(pools: list[BufferPool]) -> None:
    """Part 1 fails while parts 2.. are queued (a budget of 10 parts, one sender): none of them is sent."""
    client = FakeS3(fail_part=1)
    client.part_gate.clear()
    upload = store(client, 10, PartPlan(base=1), concurrency=1)
    # The gate opens once the reader has read the budget's worth of parts (not on a timer: timed waits do not
    # survive libfaketime in `make test-shifted`).
    stream = GateAfterReads(b"x" * 40, reads=10, gate=client.part_gate)
    with pytest.raises(StorageError):
        finishes(lambda: upload.put_stream("k", stream))  # type: ignore[arg-type]
    assert [n for n, _ in client.part_calls] == [1]  # before: parts 2-10 were sent after the failure
    assert client.aborted == 1


class GateAfterReads:
    """`data` read part by part; `gate` is set by the read that takes the `reads`-th part."""

    def __init__(self, data: bytes, reads: int, gate: threading.Event) -> None:
        self.stream, self.reads, self.gate = io.BytesIO(data), reads, gate

    def readinto(self, buffer: bytearray) -> int:
        got = self.stream.readinto(buffer)
        self.reads -= 1
        if self.reads == 0:
            self.gate.set()
        return got

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.reads -= 1
        if self.reads == 0:
            self.gate.set()
        return data


class InterruptedStream:
    """Gives `parts` bytes, then raises Interrupted from the reading thread and opens `gate`."""

    def __init__(self, parts: int, gate: threading.Event) -> None:
        self.left, self.gate = parts, gate
        self.interrupted_at = 0.0

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            self.interrupted_at = time.monotonic()
            self.gate.set()
            raise Interrupted()
        self.left -= 1
        return b"y"


def test_an_interrupt_on_the_reading_thread_sends_at_most_the_parts_in_flight(pools: list[BufferPool]) -> None:
    concurrency = 2
    client = FakeS3()
    client.part_gate.clear()  # parts 1-2 in flight, 3-6 queued when the interrupt comes
    stream = InterruptedStream(6, client.part_gate)
    upload = store(client, 10, PartPlan(base=1), concurrency=concurrency)
    with pytest.raises(Interrupted):
        finishes(lambda: upload.put_stream("k", stream))  # type: ignore[arg-type]
    after = [n for n, began in client.part_calls if began >= stream.interrupted_at]
    assert len(after) <= concurrency, after  # before: all 6 parts were sent
    assert client.aborted == 1 and "k" not in client.objects


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_the_checksum_returned_at_completion_is_compared_with_the_parts_sent(pools: list[BufferPool]) -> None:
    data = b"abcdefghij"  # parts of 4: abcd, efgh, ij
    digests = [hashlib.sha256(data[i : i + 4]).digest() for i in range(0, 10, 4)]
    composite = _b64(hashlib.sha256(b"".join(digests)).digest())
    ok = FakeS3(completed_checksum=f"{composite}-3")
    result = finishes(lambda: store(ok, 16, PartPlan(base=4)).put_stream("k", io.BytesIO(data)))
    assert base64.b64decode(composite).hex() == result.sha256

    wrong = FakeS3(completed_checksum=f"{_b64(hashlib.sha256(b'other').digest())}-3")
    with pytest.raises(StorageError, match="not what was sent"):
        finishes(lambda: store(wrong, 16, PartPlan(base=4)).put_stream("k", io.BytesIO(data)))
    assert wrong.aborted == 0  # complete: nothing to abort; no PutResult, so no manifest names it


def test_completed_checksum_problem_reads_s3s_composite_form() -> None:
    upload = store(FakeS3(), 16, PartPlan(base=4))
    parts = finishes(lambda: upload.put_stream("k", io.BytesIO(b"abcdefghij"))).part_digests
    composite = _b64(hashlib.sha256(b"".join(bytes.fromhex(p.sha256) for p in parts)).digest())
    assert completed_checksum_problem(None, parts) is None  # moto returns none
    assert completed_checksum_problem(f"{composite}-3", parts) is None
    assert completed_checksum_problem(composite, parts) is None
    assert completed_checksum_problem(f"{composite}-4", parts) is not None  # a part count that is not ours
