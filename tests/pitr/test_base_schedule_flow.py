"""The receiver's scheduled base backup against PostgreSQL 15 and moto, in process as cmd_wal_stream builds it
(basesched.scheduler_for over the target's `wal` section), with a fixed wall clock: the newest base in the bucket
covers today's slot until it passes; then the receiver's own flush takes exactly one base, records the slot in its
manifest, and the next iterations take none; the base is usable (its WAL archived by the same receiver)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import boto3
import psycopg
import pytest

from chalicelib import wiring
from chalicelib.pitr.basebackup import BaseLayout, list_bases, run_base_backup
from chalicelib.pitr.basesched import scheduler_for
from chalicelib.pitr.commands import archive_for, base_run, replication_login
from chalicelib.pitr.receiver import ReceiverSetup, WalReceiver
from chalicelib.pitr.slot import server_facts
from chalicelib.pitr.window import gather_window
from devstack.postgres import PostgresServer
from tests.pitr.conftest import shared_dir
from tests.pitr.test_gap_flow import _set_wal, _wait
from tests.pitr.test_pitr_flow import BUCKET, _rows

BY_HAND = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
SLOT = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # of cron(0 3 * * ? *)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _manifests() -> list[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="base/shop/").get("Contents", [])
    return sorted(o["Key"] for o in listed if o["Key"].endswith("/manifest.json"))


@pytest.fixture
def conn(source: PostgresServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(source.conninfo(), autocommit=True) as c:
        yield c


def test_the_receiver_takes_one_base_per_due_slot(
    pitr_config: Path, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    _set_wal(pitr_config, base_schedule="cron(0 3 * * ? *)")
    cfg = wiring.load_config()
    target = cfg.target("shop")
    assert target.wal is not None and target.wal.base_schedule == "cron(0 3 * * ? *)"
    login = replication_login(target)
    facts = server_facts(login)
    clock = Clock(BY_HAND)
    run = replace(base_run(cfg, target, login, facts), clock=clock)
    run_base_backup(run)  # yesterday's, by hand (no slot): 03-01's slot is covered, 03-02's is not yet due
    bases = scheduler_for(target.wal, run, cfg.policy_for(target), None)
    assert bases is not None and bases.after == BY_HAND
    bases.clock = clock
    clock.now = datetime(2026, 3, 2, 2, 59, tzinfo=UTC)
    setup = ReceiverSetup(
        target="shop",
        archive=archive_for(cfg, target),
        pg_receivewal=wiring.toolbox().pick("pg_receivewal", facts.major, "test"),
        login=login,
        slot="lifeboat_shop",
        spool=shared_dir() / "spool",
        segment_size=facts.segment_size,
        server_major=facts.major,
        flush_seconds=0.5,
        poll_seconds=0.1,
        on_gap=bases,
        on_flush=bases.poll,
    )
    receiver = WalReceiver(setup)
    receiver.prepare()
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait("the stream's first upload", lambda: receiver.last_flush > 0)
        assert bases.poll() is None and len(_manifests()) == 1  # 02:59: nothing due

        clock.now = datetime(2026, 3, 2, 3, 0, 20, tzinfo=UTC)  # the slot has passed: the next flush takes it
        _wait("the scheduled base", lambda: bases.taken == 1)
        bases.wait(60)
        flushed = receiver.last_flush
        _wait("two more flushes", lambda: receiver.last_flush >= flushed + 1)
        assert bases.poll() is None  # a second iteration takes none
        assert (bases.taken, bases.failed, bases.after) == (1, 0, SLOT) and len(_manifests()) == 2

        _rows(conn, 5)
        conn.execute("SELECT pg_switch_wal()")
        stored = list_bases(wiring.store(cfg), BaseLayout(cfg.settings.prefix, "shop"))
        assert [b.slot for b in stored] == [None, SLOT]
        scheduled = stored[-1].backup_id

        def usable() -> bool:
            window = gather_window(wiring.store(cfg), cfg.settings.prefix, "shop")
            return scheduled in [s.base_id for s in window.spans]

        _wait("the scheduled base's WAL archived", usable)
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()
