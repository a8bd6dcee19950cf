"""Incremental base backups end to end against PostgreSQL 17 (summarize_wal = on) and S3 (moto): a full base, rows,
an incremental base against it, more rows; `recover --time` after the incremental starts from the incremental (its
chain combined with pg_combinebackup) and gives exactly the rows committed by then; without the parent's objects
recover refuses before writing anything. A PostgreSQL 16 server, or summarize_wal = off, is refused clearly."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
MAJOR = 17


def _server(major: int, **settings: str) -> PostgresServer:
    server = PostgresServer(
        pgbin.server_bin(major),
        settings={"wal_keep_size": "0", "max_wal_senders": "5", "max_replication_slots": "5", **settings},
    )
    server.start()
    server.psql(f"CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'")
    return server


@pytest.fixture(scope="module")
def source(pg_roots: Path) -> Iterator[PostgresServer]:
    """PostgreSQL 17 with WAL summaries (what pg_basebackup --incremental needs), its tools among the roots."""
    if not (pg_roots / str(MAJOR)).exists():
        (pg_roots / str(MAJOR)).symlink_to(pgbin.unpacked(MAJOR))
    server = _server(MAJOR, summarize_wal="on")
    server.psql("CREATE TABLE stamped (id bigserial PRIMARY KEY, stamp timestamptz NOT NULL DEFAULT clock_timestamp())")
    yield server
    server.destroy()


@pytest.fixture
def config(pitr_config: Path) -> Path:
    """pitr_config (a streaming target `shop` on `source`) with `wal.incremental: true`."""
    document = json.loads(pitr_config.read_text())
    document["targets"][0]["wal"]["incremental"] = True
    pitr_config.write_text(json.dumps(document))
    return pitr_config


def _lifeboat(config: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = lifeboat_main(["--config", str(config), "--json", *argv], out)
    return code, json.loads(out.getvalue())


def _receiver(config: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "chalicelib.cli", "--config", str(config), "wal-stream", "shop"]
    return subprocess.Popen(
        [*argv, "--spool", str(shared_dir() / "spool")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_streaming(source: PostgresServer, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while source.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") != "1":
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "pg_receivewal did not start streaming"
        time.sleep(0.2)


def _rows(conn: psycopg.Connection[tuple[object, ...]], n: int) -> None:
    for _ in range(n):
        conn.execute("INSERT INTO stamped DEFAULT VALUES")
        time.sleep(0.005)


def _now(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    time.sleep(0.01)
    row = conn.execute("SELECT clock_timestamp()::text").fetchone()
    time.sleep(0.01)
    assert row is not None
    return str(row[0]).replace(" ", "T")


def _remove(prefix: str) -> None:
    """Every version of every object under `prefix`: gone for good, as an expired or forced deletion leaves it."""
    s3 = boto3.client("s3")
    listing = s3.list_object_versions(Bucket=BUCKET, Prefix=prefix)
    doomed = listing.get("Versions", [])
    assert doomed, prefix
    for version in doomed:
        s3.delete_object(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"])


def test_recovery_from_an_incremental_base_combines_its_chain(
    config: Path, source: PostgresServer, relay: FetchRelay
) -> None:
    # long because it is one story: full base, incremental base, recovery from it, then its parent taken away.
    receiver = _receiver(config)
    try:
        _wait_streaming(source, receiver)
        with psycopg.connect(source.conninfo(), autocommit=True) as conn:
            code, full = _lifeboat(config, "base-backup", "shop")
            assert code == 0 and full["parent"] is None, full
            _rows(conn, 30)
            time.sleep(1.1)  # backup ids are to the second
            code, incremental = _lifeboat(config, "base-backup", "shop")
            assert code == 0, incremental
            assert (incremental["parent"], incremental["chain"]) == (full["backup_id"], [full["backup_id"]])
            assert incremental["tar_size"] < full["tar_size"] / 2  # only what changed since the full base
            _rows(conn, 30)
            moment = _now(conn)
            _rows(conn, 20)
            conn.execute("SELECT pg_switch_wal()")
        time.sleep(2.5)  # > flush_seconds: every segment uploaded
    finally:
        receiver.send_signal(signal.SIGTERM)
        assert receiver.wait(timeout=30) == 0
    expected = int(source.psql(f"SELECT count(*) FROM stamped WHERE stamp <= '{moment}'"))
    assert 30 < expected < int(source.psql("SELECT count(*) FROM stamped"))

    pgdata = shared_dir() / "data"
    goal = ["--time", moment, "--pgdata", str(pgdata), "--fetch-command", str(relay.script)]
    goal += ["--postgres", str(source.bin_dir)]
    code, plan = _lifeboat(config, "recover", "shop", *goal)
    assert code == 0 and plan["base"] == incremental["backup_id"], plan
    assert not [p for p in pgdata.parent.iterdir() if "lifeboat-chain" in p.name]  # the chain's scratch space went
    port = free_port()
    started = start_recovered(pgdata, port, source.bin_dir)
    assert started.returncode == 0, started.stderr + (pgdata.parent / "server.log").read_text()
    deadline = time.monotonic() + 30
    while query(port, "SELECT pg_is_in_recovery()") != "f":
        assert time.monotonic() < deadline, (pgdata.parent / "server.log").read_text()
        time.sleep(0.2)
    assert int(query(port, "SELECT count(*) FROM stamped")) == expected
    stop_recovered(pgdata, source.bin_dir)

    # The parent's data gone (its manifest still listed): refused before anything is written.
    parent_folder = f"base/shop/{full['backup_id']}/"
    _remove(parent_folder + "base.tar.zst")
    elsewhere = shared_dir() / "data"
    code, refused = _lifeboat(config, "recover", "shop", *goal[:2], "--pgdata", str(elsewhere), *goal[4:])
    message = refused["error"]["message"]
    assert code != 0 and f"incremental base {incremental['backup_id']} needs its whole chain" in message, refused
    assert f"base {full['backup_id']} lacks s3://{BUCKET}/{parent_folder}base.tar.zst" in message
    assert not elsewhere.exists() or not any(elsewhere.iterdir())
    # The parent's manifest gone too: the incremental is not a base recovery can start from, and none is left.
    _remove(parent_folder)
    code, refused = _lifeboat(config, "recover", "shop", *goal[:2], "--pgdata", str(elsewhere), *goal[4:])
    message = refused["error"]["message"]
    assert code != 0 and f"incremental base {incremental['backup_id']} needs base {full['backup_id']}" in message


def test_summarize_wal_off_is_refused_saying_what_to_set(config: Path, source: PostgresServer) -> None:
    source.psql("ALTER SYSTEM SET summarize_wal = off")
    source.psql("SELECT pg_reload_conf()")
    try:
        time.sleep(0.2)
        code, refused = _lifeboat(config, "base-backup", "shop")
    finally:
        source.psql("ALTER SYSTEM SET summarize_wal = on")
        source.psql("SELECT pg_reload_conf()")
    assert code != 0 and "ALTER SYSTEM SET summarize_wal = on" in refused["error"]["message"], refused
    assert not boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="base/").get("KeyCount")


def test_postgresql_16_with_incremental_is_refused(config: Path, pg_roots: Path) -> None:
    if not (pg_roots / "16").exists():
        (pg_roots / "16").symlink_to(pgbin.unpacked(16))
    older = _server(16)
    try:
        document = json.loads(config.read_text())
        document["targets"][0]["connection"]["port"] = older.port
        config.write_text(json.dumps(document))
        code, refused = _lifeboat(config, "base-backup", "shop")
    finally:
        older.destroy()
    message = refused["error"]["message"]
    assert code != 0 and "wal.incremental needs PostgreSQL 17 or newer" in message, refused
    assert "the server is PostgreSQL 16: set wal.incremental to false" in message
