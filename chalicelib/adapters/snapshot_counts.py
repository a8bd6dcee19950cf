"""Row counts in the dump's snapshot: taken before pg_dump starts (`logical.row_counts_mode: serial`), or on a thread
in the snapshot-exporting transaction while pg_dump streams from that snapshot (`parallel`, the default).

Why this is safe: an exported snapshot stays importable for as long as the transaction that exported it is open,
and PostgreSQL lets that transaction run other queries after pg_export_snapshot(); the counts only read, so they
neither end the transaction nor change what pg_dump sees, and they equal the counts taken before pg_dump. The
transaction ends (commit or rollback) only after the thread is done (`stop`), so pg_dump can always import it.

Both modes hold a share lock on every counted table from before pg_dump starts until the counts are done: serial by
counting, parallel by `lock_for_counting`. Without it a TRUNCATE (or a table-rewriting ALTER TABLE, which are not
MVCC-safe) queued behind pg_dump could commit once pg_dump released the table and before the count read it: the
count would see the table empty in the dump's snapshot, and every restore of that good dump would fail its check.

A psycopg connection has one user at a time: from `start` until `wait` or `stop` returns, the thread is the only
user of the exporting session; the main thread only asks the server to cancel (libpq allows that from any thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Literal

from chalicelib.adapters.pgtools import Deadline, scrub
from chalicelib.errors import DeadlineError, PgToolError
from chalicelib.observability import logger

if TYPE_CHECKING:
    import psycopg

CountPlan = Literal["off", "serial", "parallel"]
TableName = tuple[str, str]  # (schema, table)
KeepTable = Callable[[str, str, bool], bool]  # (schema, table, visible on the search path): does pg_dump dump it?
WAIT_STEP = 1.0  # seconds between looks at the deadline while waiting for the counts

# Ordinary tables outside the system schemas and extensions, listed for a backup's counts and a restore's check.
# On a hot standby unlogged tables have no data to read (a count fails) and pg_dump skips their data: not counted.
TABLES_SQL = (
    "SELECT n.nspname, c.relname, pg_catalog.pg_table_is_visible(c.oid)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND (c.relpersistence <> 'u' OR NOT pg_catalog.pg_is_in_recovery())"
    " AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
    " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')"
    " ORDER BY 1, 2"
)


def counted_tables(conn: psycopg.Connection[Any], keep: KeepTable | None = None) -> list[TableName]:
    """The tables a backup counts (those `keep` says pg_dump dumps the data of), in name order."""
    rows = conn.execute(TABLES_SQL).fetchall()
    return [(str(s), str(t)) for s, t, visible in rows if keep is None or keep(s, t, bool(visible))]


def count_tables(conn: psycopg.Connection[Any], tables: list[TableName]) -> dict[str, int]:
    """Exact row counts, keyed "schema.table"."""
    from psycopg import sql

    counts: dict[str, int] = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def count_rows(conn: psycopg.Connection[Any], keep: KeepTable | None = None) -> dict[str, int]:
    """Exact row counts of every ordinary table (that `keep` keeps), keyed "schema.table"."""
    return count_tables(conn, counted_tables(conn, keep))


def lock_for_counting(conn: psycopg.Connection[Any], tables: list[TableName], timeout_seconds: float) -> None:
    """ACCESS SHARE on every table to count, in the exporting transaction (held until it ends), waiting at most
    `timeout_seconds` for each (logical.lock_wait_timeout_seconds, pg_dump's own wait, within the deadline): see the
    module's docstring."""
    from psycopg import sql

    if not tables:
        return
    names = sql.SQL(", ").join(
        sql.SQL("ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table)) for schema, table in tables
    )
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, int(timeout_seconds * 1000))}ms",))
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(names))
    conn.execute("SELECT set_config('lock_timeout', '0', true)")


CANCEL_EVERY = 0.2  # seconds between cancel requests while stopping: one may land between two tables' queries
NO_DEADLINE_MS = 10**12  # "no time limit" for a watchdog that only waits for the count to fail


def count_plan(row_counts: bool, mode: str, snapshot_id: str | None) -> CountPlan:
    """Whether and how a backup counts rows: never without a snapshot (a standby before PostgreSQL 10 exports none:
    counts taken elsewhere would not describe the dump), else as configured."""
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
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return PgToolError(
            f"a table was dropped while the backup was starting ({reason}), so no backup was written: retry (the next"
            " slot does)"
        )
    if isinstance(exc, psycopg.errors.OutOfMemory):
        return PgToolError(
            f"counting rows ran out of the server's lock table ({reason}), so no backup was written: the counts hold a"
            " share lock on every dumped table and its indexes until pg_dump ends; raise max_locks_per_transaction"
            " on the server, or set logical.row_counts: false"
        )
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return PgToolError(
            f"counting rows needs a share lock on every dumped table, and one was not granted within"
            f" logical.lock_wait_timeout_seconds ({reason}), so no backup was written: a transaction holds or waits"
            " for an exclusive lock (ALTER TABLE, TRUNCATE, VACUUM FULL, ...); retry once it is done, or raise the"
            " timeout"
        )
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
            if self._future is None and not self._stopping:  # stopped: the session is being ended
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

    def wait(self, deadline: Deadline | None = None) -> dict[str, int]:
        """The counts, once the thread is done; its error if it failed. pg_dump may finish long before the last
        table is counted: when `deadline` runs out first, the count is cancelled and DeadlineError raised, so the
        backup's failure is recorded and its upload removed before the function is killed."""
        self.start()
        future = self._future
        assert future is not None, "wait() after stop()"
        while deadline is not None and not future.done():
            if deadline.seconds_left() <= 0:
                self.stop()
                raise DeadlineError(
                    f"stopped {deadline.margin_seconds:.0f} s before the time limit while counting rows (pg_dump had"
                    " finished; its upload was discarded): back up this database on the long-running worker"
                    " (logical.runner), or set logical.row_counts: false"
                )
            wait([future], timeout=WAIT_STEP)
        exc = future.exception()  # waits for the count
        if exc is not None:
            raise self._describe(exc) if isinstance(exc, Exception) else exc
        return future.result()

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
