"""`lifeboat wal-fetch NAME PATH`: PostgreSQL's restore_command. Its exit code is what recovery acts on.

PostgreSQL asks restore_command for files that may not exist (the next segment past the end of the archive, the
history file of a timeline nobody created) and treats a plain non-zero exit as "not in the archive": recovery then
ends there and, with recovery_target_action=promote, the server opens. A damaged segment reported that way would
end recovery silently early. PostgreSQL aborts recovery (FATAL, the server does not start) when the command exits
with a status above 125 (what a shell reports for "command not found" or a signal). So:

    0    fetched, verified (SHA-256 of the segment, zstd frame checksum), written to PATH
    1    not in the archive: the end of the WAL
    255  damaged, or S3 could not be asked: recovery must stop, not end early (the message goes to the server log)

Prefetch (`--prefetch N`, default 8): each call also fetches the next N finished segments of the same timeline into
a spool (chalicelib.pitr.spool) with a few threads of the same process, for at most `Prefetch.seconds`, so the next
calls are served from local disk without starting S3. The `lifeboat` console script serves such a hit before
importing any of this (chalicelib.pitr.fastfetch: the standard library and the spool only) and never refills: a
refill costs the same start-up (boto3, the configuration, an S3 client) as a miss, so the spool is refilled by the
miss that follows its last segment, N at a time. A hit that does come here (`-v`, `python -m chalicelib.cli`)
refills only when fewer than a quarter of the next N are left. Only
finished segments are prefetched, never the open segment's `.partial` (it still grows). A spooled file whose size or
SHA-256 no longer matches is refused and read from S3. The spool (a folder of its own; a `--prefetch-dir` that is or
holds a data directory, or is pg_wal, is refused: exit 255) keeps only the next N segments and deletes only files it
wrote; it is emptied when PostgreSQL asks for a history file the archive does not have (at the start of recovery and
at its end, when it looks for a free timeline to promote onto).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chalicelib.errors import LifeboatError
from chalicelib.observability import logger
from chalicelib.pitr.spool import Spool, deliver, following_names
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import PARTIAL, history_timeline, is_segment_name

FETCHED = 0
MISSING = 1
FATAL = 255  # > 125: PostgreSQL aborts recovery instead of treating it as the end of the archive
DEFAULT_PREFETCH = 8
PREFETCH_SECONDS = 20.0  # recovery waits for this process: a slow S3 must not hold it longer
PREFETCH_THREADS = 4

ArchiveSource = WalArchive | Callable[[], WalArchive]


@dataclass(frozen=True)
class Prefetch:
    """How many segments ahead to fetch, where to keep them, and for how long at most."""

    spool: Spool
    count: int = DEFAULT_PREFETCH
    seconds: float = PREFETCH_SECONDS
    threads: int = PREFETCH_THREADS


class _Archive:
    """The archive made on first use: a call served from the spool builds no S3 client."""

    def __init__(self, source: ArchiveSource) -> None:
        self._source, self._made = source, source if isinstance(source, WalArchive) else None
        self._lock = threading.Lock()

    def __call__(self) -> WalArchive:
        with self._lock:
            if self._made is None:
                assert not isinstance(self._source, WalArchive)
                self._made = self._source()
            return self._made


def wal_fetch(archive: ArchiveSource, name: str, path: Path, prefetch: Prefetch | None = None) -> tuple[int, str]:
    """(exit code, message) for PostgreSQL's request of `name` into `path` (see the module's docstring)."""
    get = _Archive(archive)
    data, key, note = None, "", ""
    if prefetch is not None and is_segment_name(name):
        taken = prefetch.spool.take(name)
        data, key = taken.data, "the prefetch spool"
        if taken.refused:
            note = f" (the prefetched copy was refused, {taken.refused}: read from S3)"
    if data is None:
        try:
            found = get().fetch(name)
        except LifeboatError as exc:
            return FATAL, f"wal-fetch {name}: {exc}; recovery is stopped rather than ended early"
        if found is None:
            if prefetch is not None and history_timeline(name) is not None:
                _empty(prefetch.spool)  # the start or the end of recovery: nothing spooled is needed
            return MISSING, f"wal-fetch {name}: not in the archive"
        data, key = found
    try:
        deliver(path, data)
    except OSError as exc:
        return FATAL, f"wal-fetch {name}: cannot write {path}: {exc.strerror}"
    logger.info("wal-fetch", extra={"wal_file": name, "key": key, "bytes": len(data)})
    message = f"wal-fetch {name}: {len(data)} bytes from {key}{note}"
    if prefetch is not None and is_segment_name(name) and not key.endswith(PARTIAL):
        message += _prefetch_after(get, name, len(data), prefetch, from_spool=key == "the prefetch spool")
    return FETCHED, message


def _empty(spool: Spool) -> None:
    """A spool that cannot be emptied changes nothing about the answer (it is emptied by a later call)."""
    try:
        spool.keep_only(set())
    except OSError as exc:
        logger.warning(
            "the prefetch spool could not be emptied", extra={"spool": str(spool.directory), "why": str(exc)}
        )


def _prefetch_after(get: Callable[[], WalArchive], name: str, size: int, prefetch: Prefetch, from_spool: bool) -> str:
    """Keep the spool to the next `count` segments and fill it (see the module's docstring); a note for the
    message."""
    ahead = following_names(name, size, prefetch.count)
    try:
        prefetch.spool.keep_only(set(ahead))
        ready = prefetch.spool.ready() & set(ahead)
    except OSError as exc:
        return f"; prefetch skipped: {exc}"
    wanted = [n for n in ahead if n not in ready]
    if not wanted or (from_spool and len(ready) >= max(1, prefetch.count // 4)):
        return f"; {len(ready)} of the next {prefetch.count} already prefetched"
    run = _PrefetchRun(get, prefetch, wanted)
    fetched = run.run()
    total = len(ready) + len(fetched)
    return f"; prefetched {len(fetched)} more in {run.elapsed:.1f}s ({total} of the next {prefetch.count})"


@dataclass
class _PrefetchRun:
    """Fetch `wanted` (in order) with a few daemon threads until done, the archive ends, or the deadline: a thread
    still waiting on S3 then is abandoned (it is a daemon: the process exits without it, leaving at most a
    temporary file, which the next call removes)."""

    get: Callable[[], WalArchive]
    prefetch: Prefetch
    wanted: list[str]
    fetched: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    _end: int | None = None  # the index of the first name the archive does not have
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> list[str]:
        started = time.monotonic()
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(self.wanted)):
            todo.put(index)
        workers = [
            threading.Thread(target=self._work, args=(todo,), daemon=True, name=f"wal-prefetch-{i}")
            for i in range(max(1, min(self.prefetch.threads, len(self.wanted))))
        ]
        for worker in workers:
            worker.start()
        deadline = started + self.prefetch.seconds
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self.elapsed = time.monotonic() - started
        with self._lock:
            return list(self.fetched)

    def _work(self, todo: queue.SimpleQueue[int]) -> None:
        while not self._stop.is_set():
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                if self._end is not None and index > self._end:
                    continue
            name = self.wanted[index]
            try:
                found = self.get().fetch(name, finished_only=True)
                if found is not None and not self._stop.is_set():
                    self.prefetch.spool.put(name, found[0], found[1])
            except (LifeboatError, OSError) as exc:  # the request of this name reads S3 again and reports it
                logger.warning("prefetch failed", extra={"wal_file": name, "why": str(exc)[:300]})
                continue
            with self._lock:
                if found is None:
                    self._end = index if self._end is None else min(self._end, index)
                else:
                    self.fetched.append(name)
