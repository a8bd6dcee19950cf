"""A dropped slot against PostgreSQL 15 and moto: the restarted receiver records the gap, the window is broken
(wal-window exits 1, recover refuses the latest WAL), a new base backup makes it whole again. Twice: once with the
base backup taken by hand (base_backup_after_gap off), once taken by the receiver itself (the default)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from chalicelib.cli import main as lifeboat_main
from devstack.postgres import PostgresServer
from tests.pitr.conftest import shared_dir
from tests.pitr.test_pitr_flow import BUCKET, _receiver, _rows, _wait_streaming

Conn = psycopg.Connection[tuple[object, ...]]


def _set_wal(config: Path, **options: Any) -> None:
    data = json.loads(config.read_text())
    data["targets"][0]["wal"].update(options)
    config.write_text(json.dumps(data))


def _window(config: Path) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = lifeboat_main(["--config", str(config), "wal-window", "shop", "--json"], out)
    return code, json.loads(out.getvalue())


def _wait(what: str, check: Callable[[], Any], seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _gaps() -> list[dict[str, Any]]:
    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="wal/shop/gaps/").get("Contents", [])
    return [json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()) for o in listed]


def _base_backup(config: Path) -> str:
    out = io.StringIO()
    assert lifeboat_main(["--config", str(config), "base-backup", "shop", "--json"], out) == 0, out.getvalue()
    return str(json.loads(out.getvalue())["backup_id"])


def _stop(receiver: subprocess.Popen[bytes]) -> None:
    receiver.send_signal(signal.SIGTERM)
    assert receiver.wait(timeout=60) == 0, receiver.stderr.read().decode() if receiver.stderr else ""


def _lose_wal(source: PostgresServer, conn: Conn) -> None:
    """What an invalidated or dropped slot does: the server recycles WAL the receiver never read."""
    source.psql("SELECT pg_drop_replication_slot('lifeboat_shop')")
    for _ in range(3):
        _rows(conn, 5)
        conn.execute("SELECT pg_switch_wal()")
    conn.execute("CHECKPOINT")


def _whole_again(config: Path, base_id: str) -> dict[str, Any]:
    def whole() -> dict[str, Any] | None:
        code, window = _window(config)
        return window if code == 0 else None

    window: dict[str, Any] = _wait(f"a whole window from base {base_id}", whole)
    assert window["spans"][-1]["base"] == base_id and window["spans"][-1]["ended_by_gap"] is None
    return window


@pytest.fixture
def conn(source: PostgresServer) -> Any:
    with psycopg.connect(source.conninfo(), autocommit=True) as c:
        yield c


def test_a_dropped_slot_breaks_the_window_until_a_new_base(
    pitr_config: Path, source: PostgresServer, conn: Conn
) -> None:
    # long because it is one story told twice: gap, broken, base by hand, whole; gap, base by the receiver, whole.
    _set_wal(pitr_config, base_backup_after_gap=False)
    receiver = _receiver(pitr_config, shared_dir() / "spool")
    _wait_streaming(source, receiver)
    first = _base_backup(pitr_config)
    _rows(conn, 10)
    conn.execute("SELECT pg_switch_wal()")
    _whole_again(pitr_config, first)
    _stop(receiver)

    _lose_wal(source, conn)
    receiver = _receiver(pitr_config, shared_dir() / "spool-2")
    _wait("the gap record", _gaps)
    code, window = _window(pitr_config)
    assert code == 1 and window["broken"], window
    assert [s["base"] for s in window["spans"]] == [first] and window["spans"][0]["ended_by_gap"]
    assert datetime.fromisoformat(window["restorable_until"]) < datetime.fromisoformat(window["latest"])
    out = io.StringIO()
    latest = ["--config", str(pitr_config), "recover", "shop", "--latest", "--pgdata", str(shared_dir() / "d")]
    assert lifeboat_main([*latest, "--dry-run"], out) == 1  # recover refuses what the window calls broken
    second = _base_backup(pitr_config)
    conn.execute("SELECT pg_switch_wal()")
    window = _whole_again(pitr_config, second)
    assert window["earliest"] == window["spans"][0]["from"] and len(window["gaps"]) == 1
    assert lifeboat_main([*latest, "--dry-run"], io.StringIO()) == 0
    _stop(receiver)

    _set_wal(pitr_config, base_backup_after_gap=True)
    _lose_wal(source, conn)
    receiver = _receiver(pitr_config, shared_dir() / "spool-3")
    gap = _wait("a second gap", lambda: [g for g in _gaps() if g["before"] != window["gaps"][0]["before"]])[0]
    _wait_streaming(source, receiver)
    s3 = boto3.client("s3")

    def base_after_gap() -> str | None:
        listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="base/shop/").get("Contents", [])
        ids = sorted({o["Key"].split("/")[2] for o in listed if o["Key"].endswith("/manifest.json")})
        return ids[-1] if ids and ids[-1] not in (first, second) else None

    third = _wait("the receiver's own base backup", base_after_gap)
    assert third >= gap["detected_at"].replace("-", "").replace(":", "")[:15]
    conn.execute("SELECT pg_switch_wal()")
    window = _whole_again(pitr_config, third)
    assert len(window["gaps"]) == 2
    _stop(receiver)
