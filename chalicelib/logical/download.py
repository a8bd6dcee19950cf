"""Backup objects downloaded to local files by concurrent ranged GETs, every part verified as it lands.

`pg_restore -j` (and every directory-format dump) needs files, not a pipe. A bounded pool of workers reads the
objects' parts with ranged GETs of the exact S3 version the manifest recorded and writes them with os.pwrite into
preallocated files. A part recorded in the manifest (ManifestObject.parts) is hashed while its ranges arrive and
compared with its own SHA-256 when complete, so a corrupted part is named and everything stops; the parts' layout
and their digest over them are checked (digests.check_part_layout) before the first byte is read. Memory holds at
most `workers` ranges of `range_size` bytes whatever the part sizes: a large part is read range by range.

`restore_strategy` decides when downloading pays at all: measured, not guessed (its docstring has the numbers).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import IntegrityError
from chalicelib.logical.catalog import ManifestObject, PartDigest
from chalicelib.logical.digests import TAMPERED, check_part_layout

MiB = 1024 * 1024
RANGE_SIZE = 16 * MiB  # one ranged GET; a worker holds one at a time
WORKERS = 4  # concurrent GETs: enough to hide S3's per-request latency, few enough to bound memory (64 MiB)
HASH_CHUNK = 4 * MiB
# Below this size parallel jobs cannot win back the download they wait for (restore_strategy's numbers).
PARALLEL_MIN_BYTES = 64 * MiB

Strategy = Literal["stream", "download"]


def restore_strategy(size: int, jobs: int, cores: int) -> tuple[Strategy, int]:
    """(how to feed pg_restore, with how many jobs) for a custom-format archive of `size` bytes on `cores` cores.

    `pg_restore -j` cannot read a pipe: parallel jobs wait for a complete local file, one job starts on the first
    bytes streamed. Measured on 2 cores with the server on the same machine (median of 3, interleaved): a 204 MB
    archive took 10.6 s by `pg_restore` from a file, 11.6 s by `pg_restore -j 2` from a file (no gain: the cores are
    taken), 11.0 s streamed with 1 job and 15.3 s downloaded (1.6 s of it) then restored with -j 2; a 40 MB one
    2.1 s streamed, 2.3 s downloaded with -j 2. So parallel jobs only when there are more cores than jobs, and not
    below PARALLEL_MIN_BYTES, where the download and the extra sessions cost more than they can save.
    """
    if jobs <= 1 or jobs >= cores or size < PARALLEL_MIN_BYTES:
        return "stream", 1
    return "download", jobs


@dataclass(frozen=True)
class Piece:
    """A span of one object that one worker fetches in order; `part` set: verified against that part's digest."""

    file: int  # index into the download's targets
    offset: int
    size: int
    part: PartDigest | None


def plan_pieces(obj: ManifestObject, file: int, range_size: int = RANGE_SIZE) -> list[Piece]:
    """One piece per recorded part; for an object without parts, pieces of `range_size` (the legacy path)."""
    parts = check_part_layout(obj)  # refuses a layout with holes, overlaps or a digest that does not add up
    if parts:
        return [Piece(file, p.offset, p.size, p) for p in parts]
    # Legacy path (a manifest from before per-part digests, or a single-PUT object): the ranges are ours and only
    # the whole-object SHA-256 exists, checked by hashing the finished file once (download_objects).
    return [Piece(file, start, min(range_size, obj.size - start), None) for start in range(0, obj.size, range_size)]


class _Download:
    """One download: open files, the pool's shared progress, and the first failure (which stops every worker)."""

    def __init__(
        self,
        store: BackupStore,
        targets: Sequence[tuple[ManifestObject, Path]],
        range_size: int,
        on_progress: Callable[[int], None] | None,
        check_time: Callable[[], None] | None,
    ) -> None:
        self.store, self.targets, self.range_size = store, targets, range_size
        self.on_progress, self.check_time = on_progress, check_time
        self.fds: list[int] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0

    def open(self) -> None:
        for obj, path in self.targets:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self.fds.append(fd)
            if obj.size:
                os.posix_fallocate(fd, 0, obj.size)  # the space is taken now: a full disk fails before any GET

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def fetch(self, piece: Piece) -> None:
        obj = self.targets[piece.file][0]
        sha = hashlib.sha256() if piece.part else None
        position, end = piece.offset, piece.offset + piece.size
        while position < end and not self.stop.is_set():
            if self.check_time:
                self.check_time()
            upto = min(position + self.range_size, end)
            data = self.store.get_range(obj.key, obj.version_id, position, upto)
            if len(data) != upto - position:
                raise IntegrityError(
                    f"{obj.key}: bytes {position}-{upto - 1} came back as {len(data)} bytes: the object is not the"
                    f" {obj.size} bytes its manifest recorded; nothing was restored"
                )
            if sha:
                sha.update(data)
            written = 0
            while written < len(data):
                written += os.pwrite(self.fds[piece.file], memoryview(data)[written:], position + written)
            position = upto
            self._advance(len(data))
        if sha and piece.part and not self.stop.is_set() and sha.hexdigest() != piece.part.sha256:
            raise IntegrityError(  # worded as digests.verify_part words it, which needs the whole part in memory
                f"{obj.key} does not match its manifest's SHA-256 in part {piece.part.number} (bytes {piece.offset}"
                f" to {end - 1}): {TAMPERED}"
            )

    def _advance(self, size: int) -> None:
        with self.lock:
            self.done += size
            if self.on_progress:
                self.on_progress(self.done)


def download_objects(
    store: BackupStore,
    targets: Sequence[tuple[ManifestObject, Path]],
    *,
    workers: int = WORKERS,
    range_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    check_time: Callable[[], None] | None = None,
) -> int:
    """Download each (object, path) and verify it; returns the bytes written.

    Raises IntegrityError naming the object (and the part) whose bytes are not the manifest's, or whatever a GET or
    `check_time` raised; the first failure stops every worker. The files are left for the caller to delete (a
    temporary directory). Parts are fetched in file order, so the start of the archive is complete first.
    """
    size = range_size or RANGE_SIZE
    job = _Download(store, targets, size, on_progress, check_time)
    pieces = [piece for i, (obj, _) in enumerate(targets) for piece in plan_pieces(obj, i, size)]
    try:
        job.open()
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="s3-range") as pool:
            try:
                futures: list[Future[None]] = [pool.submit(job.fetch, piece) for piece in pieces]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failure = next((e for f in futures if f in finished and (e := f.exception()) is not None), None)
                if failure is not None:
                    raise failure
            except BaseException:  # a worker's failure, an interrupt or a deadline here: stop now, then re-raised
                job.stop.set()  # pieces under way end at their next range
                pool.shutdown(wait=True, cancel_futures=True)  # queued pieces never start
                raise
    finally:
        job.close()
    for obj, path in targets:
        if not obj.parts:  # the legacy path: one pass over the finished file against the whole-object digest
            _check_whole_file(obj, path)
    return job.done


def _check_whole_file(obj: ManifestObject, path: Path) -> None:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            sha.update(chunk)
    if sha.hexdigest() != obj.sha256:
        raise IntegrityError(
            f"{obj.key} does not match its manifest's SHA-256: the object was tampered with or corrupted;"
            " nothing was restored"
        )
