"""Every failure of a logical backup leaves nothing half-done and says what to fix.

After each failure: no manifest, no open multipart upload, no stray object, a FAILED record, a failure
metric, and no password anywhere in what was printed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from chalicelib import wiring
from chalicelib.adapters.pgtools import Deadline, child_processes
from chalicelib.errors import DatabaseConnectionError, DeadlineError, PgToolError, SecretError, StorageError
from chalicelib.logical.dump import BackupServices, run_logical_backup
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from devstack.sample import BACKUP_PASSWORD

BIG_DB = "bigshop"


@pytest.fixture(scope="module")
def big_db(pg: PostgresServer) -> str:
    """~25 MB of hex text: its dump spans several 6 MiB parts."""
    pg.psql(f"CREATE DATABASE {BIG_DB} OWNER lifeboat_backup")
    pg.psql(
        "CREATE TABLE blobs (id int PRIMARY KEY, body text);"
        "INSERT INTO blobs SELECT g, md5(g::text || random()::text) || md5(random()::text) || md5(random()::text)"
        " || md5(random()::text) FROM generate_series(1, 200000) g;"
        "ALTER TABLE blobs OWNER TO lifeboat_backup",
        dbname=BIG_DB,
    )
    return BIG_DB


def services(
    tmp_path: Path, aws: LocalStack, pg: PostgresServer, monkeypatch: pytest.MonkeyPatch, **overrides: object
) -> BackupServices:
    settings = {"part_size_mib": 6, "upload_memory_mib": 16}
    spec = target("shop", pg.port, aws.secret_arn, globals=False)
    for key, value in overrides.items():
        if key in ("host", "port", "password_secret"):
            spec["connection"][key] = value
        elif key in ("bucket",):
            settings["bucket_override"] = value
        else:
            spec["logical"][key] = value
    bucket = str(settings.pop("bucket_override", aws.bucket))
    path = write_config(tmp_path / "lifeboat.json", bucket, [spec], **settings)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    return wiring.backup_services()


def assert_nothing_half_done(aws: LocalStack, expect_failure_record: bool = True) -> None:
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=aws.bucket).get("Contents", [])]
    assert [k for k in keys if k.startswith("logical/")] == [], keys
    assert s3.list_multipart_uploads(Bucket=aws.bucket).get("Uploads", []) == []
    failed = [k for k in keys if k.startswith("failed/")]
    if expect_failure_record:
        assert len(failed) == 1, keys
        record = json.loads(s3.get_object(Bucket=aws.bucket, Key=failed[0])["Body"].read())
        assert record["status"] == "FAILED" and record["error"]
        assert BACKUP_PASSWORD not in json.dumps(record)


def assert_failure_reported(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr().out
    assert '"BackupFailed"' in out  # the EMF failure metric
    assert BACKUP_PASSWORD not in out
    return out


def test_wrong_password(
    aws: LocalStack,
    pg: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    boto3.client("secretsmanager").create_secret(Name="wrong", SecretString="not-the-password")
    svc = services(tmp_path, aws, pg, monkeypatch, password_secret="wrong")
    with pytest.raises(
        DatabaseConnectionError, match=r"refused the credentials for user lifeboat_backup \(secret wrong\)"
    ):
        run_logical_backup(svc, "shop")
    assert_nothing_half_done(aws)
    assert_failure_reported(capsys)


def test_unknown_host(
    aws: LocalStack,
    pg: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    svc = services(tmp_path, aws, pg, monkeypatch, host="db.invalid")
    with pytest.raises(DatabaseConnectionError, match=r"unknown host db\.invalid: check connection\.host"):
        run_logical_backup(svc, "shop")
    assert_nothing_half_done(aws)


def test_connection_refused(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devstack.postgres import free_port

    port = free_port()
    svc = services(tmp_path, aws, pg, monkeypatch, port=port)
    with pytest.raises(DatabaseConnectionError, match=f"nothing accepts connections at 127\\.0\\.0\\.1:{port}"):
        run_logical_backup(svc, "shop")
    assert_nothing_half_done(aws)


def test_missing_secret(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services(tmp_path, aws, pg, monkeypatch, password_secret="lifeboat/nope")
    with pytest.raises(SecretError, match="secret 'lifeboat/nope' does not exist"):
        run_logical_backup(svc, "shop")
    assert_nothing_half_done(aws)


def test_missing_bucket(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    svc = services(tmp_path, aws, pg, monkeypatch, bucket="lifeboat-no-such-bucket")
    with pytest.raises(StorageError, match="bucket 'lifeboat-no-such-bucket' does not exist"):
        run_logical_backup(svc, "shop")
    assert_nothing_half_done(aws, expect_failure_record=False)  # nowhere to write one: the log says it


def _children_named(name: str) -> list[int]:
    return [pid for pid, comm in child_processes(os.getpid()).items() if comm == name]


def test_pg_dump_killed_mid_stream(
    aws: LocalStack,
    pg: PostgresServer,
    big_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    svc = services(tmp_path, aws, pg, monkeypatch)
    svc.config = svc.config.model_copy(
        update={
            "targets": [
                svc.config.targets[0].model_copy(
                    update={"connection": svc.config.targets[0].connection.model_copy(update={"database": big_db})}
                )
            ]
        }
    )  # type: ignore[union-attr]
    parts_seen: list[int] = []

    def kill_after_first_part(done: int) -> None:
        parts_seen.append(done)
        if len(parts_seen) == 1:
            for pid in _children_named("pg_dump"):
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(PgToolError, match=r"pg_dump 1[0-9] exited with signal 9"):
        run_logical_backup(svc, "shop", on_progress=kill_after_first_part)
    assert parts_seen, "the dump never reached a second part: the test database is too small"
    assert_nothing_half_done(aws)
    assert_failure_reported(capsys)


def _inject_upload_part_errors(svc: BackupServices, fail: set[int], status: int = 500) -> list[int]:
    from botocore.awsrequest import AWSResponse

    calls: list[int] = []

    class _Raw:
        def stream(self, **_: object) -> Iterator[bytes]:
            yield b""

    def handler(request: object, **_: object) -> AWSResponse | None:
        url = getattr(request, "url", "")
        number = int(url.split("partNumber=")[1].split("&")[0])
        calls.append(number)
        if number in fail:
            fail.discard(number) if status == 503 else None
            return AWSResponse(url, status, {}, _Raw())  # type: ignore[arg-type]
        return None

    svc.store.client.meta.events.register("before-send.s3.UploadPart", handler)  # type: ignore[attr-defined]
    return calls


def test_s3_5xx_on_a_part_is_retried(
    aws: LocalStack, pg: PostgresServer, big_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wiring.client.cache_clear()
    svc = services(tmp_path, aws, pg, monkeypatch)
    svc.config = svc.config.model_copy(
        update={
            "targets": [
                svc.config.targets[0].model_copy(
                    update={"connection": svc.config.targets[0].connection.model_copy(update={"database": big_db})}
                )
            ]
        }
    )  # type: ignore[union-attr]
    calls = _inject_upload_part_errors(svc, {2}, status=503)
    try:
        outcome = run_logical_backup(svc, "shop")
    finally:
        wiring.client.cache_clear()
    assert outcome.status == "SUCCEEDED"
    assert calls.count(2) == 2  # failed once, retried once


def test_s3_persistent_5xx_aborts_the_upload(
    aws: LocalStack,
    pg: PostgresServer,
    big_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wiring.client.cache_clear()
    svc = services(tmp_path, aws, pg, monkeypatch)
    svc.config = svc.config.model_copy(
        update={
            "targets": [
                svc.config.targets[0].model_copy(
                    update={"connection": svc.config.targets[0].connection.model_copy(update={"database": big_db})}
                )
            ]
        }
    )  # type: ignore[union-attr]
    calls = _inject_upload_part_errors(svc, {2}, status=500)
    try:
        with pytest.raises(StorageError, match="S3 error"):
            run_logical_backup(svc, "shop")
    finally:
        wiring.client.cache_clear()
    assert calls.count(2) == 4  # standard retry mode, max_attempts=3: the first try and three retries
    assert_nothing_half_done(aws)
    assert list(_children_named("pg_dump")) == []  # pg_dump was stopped, not left running
    assert_failure_reported(capsys)


@pytest.fixture
def locked_table(pg: PostgresServer) -> Iterator[None]:
    """A session holding ACCESS EXCLUSIVE on a table the dump needs."""
    import psycopg

    conn = psycopg.connect(pg.conninfo("shop"))
    conn.execute("BEGIN")
    conn.execute("LOCK TABLE sales.orders IN ACCESS EXCLUSIVE MODE")
    yield
    conn.rollback()
    conn.close()


def test_lock_wait_timeout(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locked_table: None
) -> None:
    svc = services(tmp_path, aws, pg, monkeypatch, lock_wait_timeout_seconds=1, row_counts=False)
    started = time.monotonic()
    with pytest.raises(PgToolError, match="stayed locked longer than lock_wait_timeout_seconds"):
        run_logical_backup(svc, "shop")
    assert time.monotonic() - started < 20
    assert_nothing_half_done(aws)


def test_deadline_stops_the_dump_with_time_to_clean_up(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locked_table: None
) -> None:
    svc = services(tmp_path, aws, pg, monkeypatch, row_counts=False)
    start = time.monotonic()
    # A Lambda with 62 s left and a 60 s margin: the watchdog stops pg_dump after ~2 s.
    deadline = Deadline(lambda: int((62 - (time.monotonic() - start)) * 1000), margin_seconds=60)
    with pytest.raises(DeadlineError, match="before the time limit"):
        run_logical_backup(svc, "shop", deadline=deadline)
    assert time.monotonic() - start < 15
    assert_nothing_half_done(aws)


def test_failed_attempt_can_be_retried(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FAILED claim does not block the retry that SQS delivers next."""
    from datetime import UTC, datetime

    slot = datetime(2026, 11, 29, 3, tzinfo=UTC)
    svc = services(tmp_path, aws, pg, monkeypatch, password_secret="lifeboat/nope")
    with pytest.raises(SecretError):
        run_logical_backup(svc, "shop", slot)
    svc = services(tmp_path, aws, pg, monkeypatch)
    assert run_logical_backup(svc, "shop", slot).status == "SUCCEEDED"
    assert run_logical_backup(svc, "shop", slot).status == "SKIPPED"


def test_concurrent_duplicate_deliveries(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    slot = datetime(2026, 11, 29, 4, tzinfo=UTC)
    svc = services(tmp_path, aws, pg, monkeypatch)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(run_logical_backup(svc, "shop", slot).status)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["SKIPPED", "SKIPPED", "SUCCEEDED"]
