"""The slot holds on the server whatever S3 lacks (PostgreSQL 15 and moto): wal-stream advances it only after a
segment's upload, so failed uploads and a receiver that dies before uploading lose nothing; one receiver per slot;
an invalidated slot is recreated, the WAL it lost recorded as a gap and healed by a base backup; a re-upload of a
finished segment is idempotent (one S3 version), a different one under the same name is refused."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.awsrequest import AWSResponse

from chalicelib import wiring
from chalicelib.adapters.s3 import S3Store
from chalicelib.cli import main as lifeboat_main
from chalicelib.pitr import receiver as receiver_module
from chalicelib.pitr.commands import replication_login
from chalicelib.pitr.receiver import ReceiverSetup, WalReceiver
from chalicelib.pitr.slot import server_facts
from chalicelib.pitr.walarchive import SegmentConflict, WalArchive
from chalicelib.pitr.walnames import Segment, WalLayout, parse_lsn
from devstack.postgres import PostgresServer
from tests.pitr.conftest import FetchRelay, shared_dir
from tests.pitr.test_gap_flow import _gaps, _set_wal, _stop, _wait
from tests.pitr.test_pitr_flow import BUCKET, _receiver, _recover, _recovered_rows, _rows, _wait_streaming

Conn = psycopg.Connection[tuple[object, ...]]
SLOT = "lifeboat_shop"


class _Refused:
    def stream(self, **_: object) -> Iterator[bytes]:
        yield b"<Error><Code>AccessDenied</Code><Message>injected</Message></Error>"


@dataclass
class FailingUploads:
    """A hook on one S3 client: every PutObject answers 403 while `failing` (counted), as an S3 outage would."""

    failing: bool = True
    refused: int = 0

    def __call__(self, request: Any, **_: object) -> AWSResponse | None:
        if not self.failing:
            return None
        self.refused += 1
        return AWSResponse(request.url, 403, {}, _Refused())  # type: ignore[arg-type]


@dataclass
class Running:
    receiver: WalReceiver
    stop: threading.Event
    thread: threading.Thread

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


def _in_process(spool: Path, uploads: FailingUploads) -> Running:
    """wal-stream as cmd_wal_stream builds it, over an S3 client of its own that `uploads` can fail."""
    cfg = wiring.load_config()
    target = cfg.target("shop")
    assert target.wal is not None
    login = replication_login(target)
    facts = server_facts(login)
    client = boto3.client("s3")
    client.meta.events.register("before-send.s3.PutObject", uploads)  # type: ignore[arg-type]
    setup = ReceiverSetup(
        target="shop",
        archive=WalArchive(S3Store(client, BUCKET), WalLayout(cfg.settings.prefix, "shop")),
        pg_receivewal=wiring.toolbox().pick("pg_receivewal", facts.major, "test"),
        login=login,
        slot=SLOT,
        spool=spool,
        segment_size=facts.segment_size,
        server_major=facts.major,
        flush_seconds=1,
        poll_seconds=0.2,
    )
    receiver = WalReceiver(setup)
    receiver.prepare()
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(stop,), daemon=True)
    thread.start()
    return Running(receiver, stop, thread)


def _archived() -> list[Segment]:
    listed = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="wal/shop/00000001/").get("Contents", [])
    names = [o["Key"].rsplit("/", 1)[1] for o in listed]
    return sorted((Segment.parse(n) for n in names if len(n) == 24), key=lambda s: s.position)


def _restart_lsn(source: PostgresServer) -> int:
    return parse_lsn(source.psql(f"SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{SLOT}'"))


def _finished_in_spool(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if len(p.name) == 24)


def _segments(conn: Conn, n: int) -> None:
    for _ in range(n):
        _rows(conn, 5)
        conn.execute("SELECT pg_switch_wal()")


@pytest.fixture
def conn(source: PostgresServer) -> Iterator[Conn]:
    with psycopg.connect(source.conninfo(), autocommit=True) as c:
        yield c


def test_failed_uploads_and_a_receiver_dying_before_upload_lose_nothing(
    pitr_config: Path, source: PostgresServer, relay: FetchRelay, conn: Conn
) -> None:
    # long because it is one story: a base, uploads failing then healing, a receiver dying before upload, recovery.
    uploads = FailingUploads(failing=False)
    running = _in_process(shared_dir() / "spool-a", uploads)
    _segments(conn, 2)
    out = io.StringIO()
    assert lifeboat_main(["--config", str(pitr_config), "base-backup", "shop"], out) == 0, out.getvalue()
    _wait("the first segments archived", lambda: len(_archived()) >= 2)

    uploads.failing = True  # (a) S3 refuses: pg_receivewal finishes segments, none reaches S3, the slot stays
    _segments(conn, 3)
    _wait("finished segments waiting in the spool", lambda: len(_finished_in_spool(running.receiver.setup.spool)) >= 3)
    _wait("a refused upload", lambda: uploads.refused > 0)
    last = _archived()[-1]  # an upload under way when S3 began refusing may have landed
    time.sleep(2)  # > flush_seconds: the receiver retried and advanced nothing
    assert _archived()[-1] == last
    assert _restart_lsn(source) <= last.following().start_lsn
    uploads.failing = False
    now = Segment.parse(source.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"))
    _wait("every finished segment archived", lambda: _archived()[-1].number >= now.number - 1)
    _wait("the slot advanced", lambda: _restart_lsn(source) >= now.start_lsn)
    numbers = [s.number for s in _archived()]
    assert numbers == list(range(numbers[0], numbers[-1] + 1))

    uploads.failing = True  # (b) the receiver dies with finished segments it never uploaded; its disk is lost
    refused = uploads.refused
    _segments(conn, 2)
    _wait("finished segments not uploaded", lambda: len(_finished_in_spool(running.receiver.setup.spool)) >= 2)
    _wait("a refused upload", lambda: uploads.refused > refused)
    running.halt()  # its last uploads are refused too: nothing more reaches S3
    shutil.rmtree(running.receiver.setup.spool)
    _rows(conn, 10)  # written while nothing streams
    receiver = _receiver(pitr_config, shared_dir() / "spool-b")  # an empty disk, as a new task has
    _wait_streaming(source, receiver)
    _rows(conn, 10)
    time.sleep(2.5)  # > flush_seconds: the .partial upload catches up
    _stop(receiver)
    assert _gaps() == []
    everything = int(source.psql("SELECT count(*) FROM stamped"))
    assert _recovered_rows(*_recover(pitr_config, relay, source.bin_dir, "--latest"), source.bin_dir) == everything


def test_a_second_receiver_refuses_to_start(
    pitr_config: Path, source: PostgresServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _receiver(pitr_config, shared_dir() / "spool")
    _wait_streaming(source, first)
    monkeypatch.setattr(receiver_module, "LOCK_WAIT_SECONDS", 2.0)  # the default waits out a vanished task
    argv = ["--config", str(pitr_config), "wal-stream", "shop", "--spool", str(shared_dir() / "spool-2")]
    assert lifeboat_main(argv, io.StringIO()) != 0
    assert "another lifeboat wal-stream holds replication slot lifeboat_shop" in capsys.readouterr().err
    assert first.poll() is None  # the first one streams on
    out = io.StringIO()
    lifeboat_main(["--config", str(pitr_config), "wal-status", "shop", "--json"], out)
    slot = json.loads(out.getvalue())["slot"]
    assert slot["active"] and slot["active_pid"] and not slot["streaming"]  # held by wal-stream, not used by it
    _stop(first)


def test_an_invalidated_slot_is_a_gap_then_recreated_then_healed(
    pitr_config: Path, source: PostgresServer, conn: Conn
) -> None:
    _set_wal(pitr_config, base_backup_after_gap=True)
    receiver = _receiver(pitr_config, shared_dir() / "spool")
    _wait_streaming(source, receiver)
    _segments(conn, 1)
    time.sleep(2)
    _stop(receiver)
    source.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'")
    source.psql("SELECT pg_reload_conf()")
    try:
        for _ in range(2):  # > 32 MiB of WAL with nothing streaming, then checkpoints recycle it
            _segments(conn, 4)
            conn.execute("INSERT INTO stamped (stamp) SELECT clock_timestamp() FROM generate_series(1, 100000)")
            conn.execute("CHECKPOINT")
        assert source.psql(f"SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{SLOT}'") == "lost"
        receiver = _receiver(pitr_config, shared_dir() / "spool-2")
        gap = _wait("the gap record", _gaps)[0]
        _wait_streaming(source, receiver)
        status = source.psql(
            f"SELECT wal_status, restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        )
        assert status == "reserved|t"
        s3 = boto3.client("s3")

        def bases() -> list[str]:
            listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="base/shop/").get("Contents", [])
            return sorted({o["Key"].split("/")[2] for o in listed if o["Key"].endswith("/manifest.json")})

        base = _wait("the receiver's base backup after the gap", bases, seconds=120)[-1]
        assert base >= gap["detected_at"].replace("-", "").replace(":", "")[:15]
        _stop(receiver)
    finally:
        source.psql("ALTER SYSTEM RESET max_slot_wal_keep_size")
        source.psql("SELECT pg_reload_conf()")


def test_a_finished_segment_is_written_once(pitr_config: Path) -> None:
    cfg = wiring.load_config()
    archive = WalArchive(S3Store(boto3.client("s3"), BUCKET), WalLayout(cfg.settings.prefix, "shop"))
    segment = Segment(1, 7, 1024 * 1024)
    data = bytes(range(256)) * 4096
    first = archive.put_segment(segment, data)
    again = archive.put_segment(segment, data)  # a re-upload after a crash: the same bytes
    assert again.version_id == first.version_id
    with pytest.raises(SegmentConflict, match="the first is kept"):
        archive.put_segment(segment, b"\x01" * len(data))
    key = WalLayout(cfg.settings.prefix, "shop").segment_key(segment)
    versions = boto3.client("s3").list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])
    assert len(versions) == 1
    fetched = archive.fetch(segment.name)
    assert fetched is not None and fetched[0] == data


def test_the_streams_own_bytes_of_a_conflicting_segment_are_kept_aside(pitr_config: Path) -> None:
    """A replaced server (or a planted object) repeats a name the archive holds: the first stays what recovery
    reads, and the stream's bytes are kept under conflicts/ before the slot may let the server recycle them."""
    cfg = wiring.load_config()
    layout = WalLayout(cfg.settings.prefix, "shop")
    archive = WalArchive(S3Store(boto3.client("s3"), BUCKET), layout)
    segment = Segment(1, 9, 1024 * 1024)
    archive.put_segment(segment, b"\x02" * segment.segment_size)
    ours = b"\x03" * segment.segment_size
    key = archive.put_conflict(segment, ours)
    assert key.startswith(f"{layout.root}conflicts/{segment.name}.")
    assert archive.put_conflict(segment, ours) == key  # again after a crash: the same object
    assert [e.key for e in archive.entries(segment.segment_size)] == [layout.segment_key(segment)]
    fetched = archive.fetch(segment.name)
    assert fetched is not None and fetched[0] == b"\x02" * segment.segment_size
