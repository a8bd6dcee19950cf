"""Row counts beside pg_dump (logical.row_counts_mode: parallel): the same counts as before pg_dump, and a failed
count stops the backup cleanly (no manifest, no pg_dump left running, no open upload, a FAILED record)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from chalicelib.adapters.pgtools import Deadline, child_processes
from chalicelib.adapters.snapshot_counts import CountThread, count_plan, stop_when_failed
from chalicelib.config import Logical
from chalicelib.errors import PgToolError
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from tests.integration.test_backup_failures import assert_failure_reported, assert_nothing_half_done, services

COUNT_DB = "countfail"


def test_count_plan_follows_the_setting_and_needs_a_snapshot() -> None:
    assert Logical().row_counts_mode == "parallel"  # measured faster than serial even on 2 shared cores (BENCHMARKS.md)
    assert count_plan(True, "serial", "00000003-1") == "serial"
    assert count_plan(True, "parallel", "00000003-1") == "parallel"
    assert count_plan(False, "parallel", "00000003-1") == "off"
    assert count_plan(True, "parallel", None) == "off"  # a hot standby exports no snapshot: nothing to count in


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
