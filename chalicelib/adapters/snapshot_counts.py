"""Row counts taken on a thread in the snapshot-exporting transaction while pg_dump streams from that snapshot
(`logical.row_counts_mode: parallel`), and the choice between that and counting before pg_dump starts.

Why this is safe: an exported snapshot stays importable for as long as the transaction that exported it is open,
and PostgreSQL lets that transaction run other queries after pg_export_snapshot(); the counts only read, so they
neither end the transaction nor change what pg_dump sees, and they equal the counts taken before pg_dump. The
transaction ends (commit or rollback) only after the thread is done (`stop`), so pg_dump can always import it.

A psycopg connection has one user at a time: from `start` until `wait` or `stop` returns, the thread is the only
user of the exporting session; the main thread only asks the server to cancel (libpq allows that from any thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Literal

from chalicelib.adapters.pgtools import Deadline, scrub
from chalicelib.errors import PgToolError
from chalicelib.observability import logger

CountPlan = Literal["off", "serial", "parallel"]
CANCEL_EVERY = 0.2  # seconds between cancel requests while stopping: one may land between two tables' queries
NO_DEADLINE_MS = 10**12  # "no time limit" for a watchdog that only waits for the count to fail


def count_plan(row_counts: bool, mode: str, snapshot_id: str | None) -> CountPlan:
    """Whether and how a backup counts rows: never without a snapshot (a hot standby cannot export one: counts
    taken elsewhere would not describe the dump), else as configured."""
    if not row_counts or not snapshot_id:
        return "off"
    return "parallel" if mode == "parallel" else "serial"


def count_error(exc: Exception, whose: str, secrets: tuple[str, ...]) -> BaseException:
    """A failed count as the backup's error, saying what to change (a programming error stays itself)."""
    import psycopg  # not at import: the API's cold start does not load libpq

    if not isinstance(exc, psycopg.Error):
        return exc
    text = scrub(str(exc).strip(), secrets)
    reason = text.splitlines()[0] if text else type(exc).__name__
    return PgToolError(
        f"counting rows in the dump's snapshot failed ({reason}), so no backup was written:"
        f" allow {whose} to run long enough (statement_timeout; pg_dump sets its own), or set"
        " logical.row_counts: false"
    )


class CountThread:
    """`count` run once on a thread (started by `start`, or by `wait` if nobody started it); a failure is signalled
    on `failed` (so the dump can be stopped early) and raised by `check`/`wait` as `describe` makes it."""

    def __init__(
        self,
        count: Callable[[], dict[str, int]],
        cancel: Callable[[], None],
        describe: Callable[[Exception], BaseException],
    ) -> None:
        self._count = count
        self._cancel = cancel
        self._describe = describe
        self._lock = threading.Lock()
        self._future: Future[dict[str, int]] | None = None
        self._stopping = False  # set by stop(): a count cancelled then is not the backup's failure
        self.failed = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self._future is None:
                pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="row-counts")
                self._future = pool.submit(self._count)
                self._future.add_done_callback(self._done)
                pool.shutdown(wait=False)

    def _done(self, future: Future[dict[str, int]]) -> None:
        if future.exception() is not None and not self._stopping:
            self.failed.set()

    def _error(self) -> BaseException | None:
        future = self._future
        if future is None or not future.done() or (self._stopping and not self.failed.is_set()):
            return None
        exc = future.exception()
        return self._describe(exc) if isinstance(exc, Exception) else exc

    def check(self) -> None:
        """Raise the count's error if it failed (the cause, when the dump was stopped because of it)."""
        error = self._error()
        if error is not None:
            raise error

    def wait(self) -> dict[str, int]:
        """The counts, once the thread is done; its error if it failed."""
        self.start()
        assert self._future is not None
        exc = self._future.exception()  # waits for the count
        if exc is not None:
            raise self._describe(exc) if isinstance(exc, Exception) else exc
        return self._future.result()

    def stop(self) -> None:
        """Cancel a count still running and wait for its end: afterwards the session has one user again."""
        import psycopg  # not at import: the API's cold start does not load libpq

        with self._lock:
            future = self._future
            self._stopping = True
        while future is not None and not future.done():
            try:
                self._cancel()
            except psycopg.Error as exc:  # the wait below lasts until the count ends either way
                logger.warning("could not cancel the row count", extra={"error": type(exc).__name__})
            wait([future], timeout=CANCEL_EVERY)


def stop_when_failed(counting: CountThread | None, deadline: Deadline | None) -> Deadline | None:
    """The deadline handed to the dump's watchdog, which also starts the count and stops pg_dump if it fails.

    The watchdog first looks at its deadline right after pg_dump was started (chalicelib.logical.dump_tools.dumping),
    so the count starts beside a running pg_dump; when the count fails, the time is up: pg_dump is killed and its
    upload aborted, and the caller raises `counting.check()`'s error instead of the deadline's."""
    if counting is None:
        return deadline

    def remaining_ms() -> int:
        counting.start()
        if counting.failed.is_set():
            return 0
        return deadline.remaining_ms() if deadline else NO_DEADLINE_MS

    return Deadline(remaining_ms, deadline.margin_seconds if deadline else 0)
