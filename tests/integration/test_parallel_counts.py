"""Row counts beside pg_dump (logical.row_counts_mode: parallel): the same counts as before pg_dump, and a failed
count stops the backup cleanly (no manifest, no pg_dump left running, no open upload, a FAILED record)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from chalicelib.adapters.pgtools import Deadline, child_processes
from chalicelib.adapters.postgres import Login, exported_snapshot
from chalicelib.adapters.snapshot_counts import CountThread, count_error, count_plan, stop_when_failed
from chalicelib.config import Logical
from chalicelib.errors import DeadlineError, PgToolError
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer
from tests.integration.test_backup_failures import assert_failure_reported, assert_nothing_half_done, services

COUNT_DB = "countfail"


def test_count_plan_follows_the_setting_and_needs_a_snapshot() -> None:
    assert Logical().row_counts_mode == "parallel"  # measured faster than serial even on 2 shared cores (BENCHMARKS.md)
    assert count_plan(True, "serial", "00000003-1") == "serial"
    assert count_plan(True, "parallel", "00000003-1") == "parallel"
    assert count_plan(False, "parallel", "00000003-1") == "off"
    assert count_plan(True, "parallel", None) == "off"  # no snapshot (a pre-10 standby): nothing to count in


@pytest.mark.parametrize(
    ("error", "advice"),
    [
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), "lock_wait_timeout_seconds"),
        (psycopg.errors.UndefinedTable('relation "public.t" does not exist'), "a table was dropped"),
        (psycopg.errors.OutOfMemory("out of shared memory"), "raise max_locks_per_transaction"),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "statement_timeout"),
    ],
)
def test_a_failed_count_says_what_to_change(error: psycopg.Error, advice: str) -> None:
    described = count_error(error, "lifeboat_backup's queries on shop", ("s3cret",))
    assert isinstance(described, PgToolError) and advice in str(described) and "no backup was written" in str(described)


def test_a_failed_count_ends_the_dumps_time_and_raises_its_own_error() -> None:
    def fail() -> dict[str, int]:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")

    counting = CountThread(fail, lambda: None, lambda exc: PgToolError(f"count failed: {exc}"))
    watch = stop_when_failed(counting, Deadline(lambda: 600_000, margin_seconds=60))
    assert watch is not None and watch.seconds_left() in (0 - 60, 600 - 60)  # the first look starts the count
    assert counting.failed.wait(5) and watch.seconds_left() <= 0
    with pytest.raises(PgToolError, match="count failed: canceling statement"):
        counting.wait()
    ok = CountThread(lambda: {"public.t": 3}, lambda: None, lambda exc: exc)
    assert stop_when_failed(ok, None) is not None and ok.wait() == {"public.t": 3}
    assert stop_when_failed(None, None) is None


def test_both_modes_record_the_same_counts(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slot = "2026-01-0{}T03:00:00+00:00"
    manifests = []
    for day, mode in ((1, "serial"), (2, "parallel")):
        svc = services(tmp_path, aws, pg, monkeypatch, row_counts_mode=mode)
        outcome = run_logical_backup(svc, "shop", datetime.fromisoformat(slot.format(day)))
        assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
        manifests.append(outcome.manifest)
    serial, parallel = (m.row_counts for m in manifests)
    assert serial and serial == parallel
    assert serial["sales.orders"] == int(pg.psql("SELECT count(*) FROM sales.orders", dbname="shop").strip())


@pytest.fixture
def count_db(pg: PostgresServer) -> Iterator[str]:
    """A database where the backup login's statements time out after 1 s (pg_dump sets its own timeout)."""
    pg.psql(f"DROP DATABASE IF EXISTS {COUNT_DB}")
    pg.psql(f"CREATE DATABASE {COUNT_DB} OWNER lifeboat_backup")
    pg.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2); ALTER TABLE t OWNER TO lifeboat_backup", COUNT_DB)
    pg.psql(f"ALTER ROLE lifeboat_backup IN DATABASE {COUNT_DB} SET statement_timeout = '1s'")
    yield COUNT_DB
    pg.psql(f"ALTER ROLE lifeboat_backup IN DATABASE {COUNT_DB} RESET statement_timeout")
    pg.psql(f"DROP DATABASE IF EXISTS {COUNT_DB} WITH (FORCE)")


def test_a_failed_parallel_count_stops_pg_dump_and_writes_nothing(
    aws: LocalStack,
    pg: PostgresServer,
    count_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reader holds t, and an ACCESS EXCLUSIVE request waits behind it: pg_dump waits for its lock on t (up to
    60 s), and so does the count, which its 1 s statement_timeout ends: the backup must stop at once."""
    svc = services(tmp_path, aws, pg, monkeypatch, row_counts_mode="parallel", lock_wait_timeout_seconds=60)
    target = svc.config.targets[0]
    assert target.connection is not None
    connection = target.connection.model_copy(update={"database": count_db})
    svc.config = svc.config.model_copy(update={"targets": [target.model_copy(update={"connection": connection})]})
    reader = psycopg.connect(pg.conninfo(count_db))
    reader.execute("SELECT count(*) FROM t")  # holds ACCESS SHARE until rollback
    waiter = psycopg.connect(pg.conninfo(count_db))
    locking = threading.Thread(target=lambda: waiter.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"), daemon=True)
    locking.start()
    try:
        _wait_for_lock_request(pg, count_db)
        started = time.monotonic()
        with pytest.raises(PgToolError, match=r"counting rows in the dump's snapshot failed \(.*statement timeout"):
            run_logical_backup(svc, "shop")
        assert time.monotonic() - started < 30  # stopped by the count, not by pg_dump's 60 s lock wait
        assert [comm for comm in child_processes(os.getpid()).values() if comm == "pg_dump"] == []
        assert_nothing_half_done(aws)
        assert_failure_reported(capsys)
    finally:
        reader.rollback()
        locking.join(10)
        waiter.rollback()
        reader.close()
        waiter.close()


def _wait_for_lock_request(pg: PostgresServer, dbname: str) -> None:
    for _ in range(100):
        if (
            pg.psql("SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'", dbname).strip()
            != "0"
        ):
            return
        time.sleep(0.05)
    raise AssertionError("the ACCESS EXCLUSIVE request never queued")


LOCKDB = "countlock"


@pytest.fixture
def lock_db(pg: PostgresServer) -> Iterator[str]:
    """Two tables of 3 and 5 rows, owned by the superuser the tests connect as."""
    pg.psql(f"DROP DATABASE IF EXISTS {LOCKDB} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {LOCKDB}")
    pg.psql("CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 3);", LOCKDB)
    pg.psql("CREATE TABLE z (id int); INSERT INTO z SELECT generate_series(1, 5);", LOCKDB)
    yield LOCKDB
    pg.psql(f"DROP DATABASE IF EXISTS {LOCKDB} WITH (FORCE)")


def _login(pg: PostgresServer, dbname: str) -> Login:
    return Login("127.0.0.1", pg.port, dbname, SUPERUSER, "disable", password=SUPERUSER_PASSWORD)


def test_parallel_counts_hold_every_table_before_pg_dump_starts(pg: PostgresServer, lock_db: str) -> None:
    """A TRUNCATE is not MVCC-safe: one committed after pg_dump released a table but before the count read it would
    show the count an empty table in the dump's snapshot. The exporting session holds every table first, so a
    TRUNCATE waits for the end of the backup's transaction, and the counts are the dump's."""
    opts = Logical(row_counts_mode="parallel", lock_wait_timeout_seconds=5)
    other = psycopg.connect(pg.conninfo(lock_db), autocommit=True)
    try:
        with exported_snapshot(_login(pg, lock_db), opts) as facts:
            assert facts.counting is not None and facts.snapshot_id
            # the count has not started (pg_dump would be starting here), yet the tables are held:
            other.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute("TRUNCATE z")
            assert facts.counting.wait() == {"public.a": 3, "public.z": 5}
        other.execute("TRUNCATE z")  # the transaction is over: granted at once
    finally:
        other.close()


def test_a_table_held_exclusively_fails_the_backup_before_pg_dump_with_what_to_do(
    pg: PostgresServer, lock_db: str
) -> None:
    holder = psycopg.connect(pg.conninfo(lock_db))
    holder.execute("LOCK TABLE z IN ACCESS EXCLUSIVE MODE")  # held until rollback, as a long ALTER TABLE would
    try:
        opts = Logical(row_counts_mode="parallel", lock_wait_timeout_seconds=1)
        started = time.monotonic()
        with (
            pytest.raises(PgToolError, match=r"share lock on every dumped table.*lock_wait_timeout_seconds"),
            exported_snapshot(_login(pg, lock_db), opts),
        ):
            pass
        assert time.monotonic() - started < 15
    finally:
        holder.rollback()
        holder.close()


def test_waiting_for_the_counts_stops_at_the_deadline_and_cancels_them() -> None:
    """pg_dump may finish long before the last table is counted: the wait ends with the Lambda's margin, the
    count cancelled, so the backup's failure is still recorded (and its upload removed) by the caller."""
    cancelled = threading.Event()

    def slow_count() -> dict[str, int]:
        if not cancelled.wait(30):
            return {"public.t": 1}
        raise psycopg.errors.QueryCanceled("canceling statement due to user request")

    counting = CountThread(slow_count, cancelled.set, lambda exc: PgToolError(str(exc)))
    counting.start()
    with pytest.raises(DeadlineError, match="while counting rows"):
        counting.wait(Deadline(lambda: 59_000, margin_seconds=60))  # the margin is already reached
    assert cancelled.is_set()
    counting.check()  # a count cancelled by stop() is not the backup's failure


def test_a_count_is_never_started_once_stopped() -> None:
    """The dump's watchdog may look at its deadline (and so start the count) after the dump failed and stop() ran:
    the session is being ended then, and must keep one user."""
    calls: list[str] = []
    counting = CountThread(lambda: calls.append("count") or {}, lambda: None, lambda exc: exc)
    counting.stop()
    counting.start()
    counting.stop()  # would wait for a count that had been started, so it would have run
    assert calls == []


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_a_hot_standby_counts_what_pg_dump_dumps_there(pg: PostgresServer, lock_db: str, mode: str) -> None:
    """A standby (PostgreSQL 10+) exports snapshots, but its unlogged tables have no data to read (a count fails:
    "cannot access temporary or unlogged relations during recovery") and pg_dump skips their data: they are not
    counted, and the backup of a read replica with an unlogged table works."""
    pg.psql("CREATE UNLOGGED TABLE scratch (id int); INSERT INTO scratch VALUES (1);", lock_db)
    standby = PostgresServer(pg.bin_dir, ssl=False)
    standby.base_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(standby.base_dir, 0o755)  # noqa: S103  # the server runs as postgres and must enter it
    if os.geteuid() == 0:
        shutil.chown(standby.base_dir, "postgres", "postgres")
    source = f"host=127.0.0.1 port={pg.port} user={SUPERUSER} password={SUPERUSER_PASSWORD} sslmode=disable"
    pg_basebackup = str(pg.bin_dir / "pg_basebackup")
    standby._as_owner([pg_basebackup, "-d", source, "-D", str(standby.data_dir), "-R", "-X", "stream", "-c", "fast"])
    with open(standby.data_dir / "postgresql.auto.conf", "a") as conf:
        conf.write(f"port = {standby.port}\nunix_socket_directories = '{standby.base_dir}'\nssl = off\n")
    try:
        standby.pg_ctl_start()
        assert standby.psql("SELECT pg_is_in_recovery()").strip() == "t"
        opts = Logical(row_counts_mode=mode)
        with exported_snapshot(_login(standby, lock_db), opts) as facts:
            assert facts.snapshot_id
            counts = facts.counting.wait() if facts.counting is not None else facts.row_counts
        assert counts == {"public.a": 3, "public.z": 5}
    finally:
        standby.destroy()
