"""Faults not covered by tests/integration/test_backup_failures.py, on a real S3 server (SeaweedFS).

Each failing case takes a good backup first, then the failing one, and checks both sides:
- what the user sees: the error and its message, the FAILED record, the failure metric (EMF on stdout);
- that nothing is lost or half-made: no object or manifest of the failed slot, no open multipart upload,
  no stray database, the good backup still the latest and still intact, the source database untouched.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.errors import LifeboatError, StorageError
from chalicelib.logical.catalog import ManifestObject
from chalicelib.logical.digests import PartVerifier
from chalicelib.logical.dump import BackupServices, run_logical_backup
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from tests.reliability import flows
from tests.reliability.conftest import ConfigWriter
from tests.reliability.support import FaultProxy, SeaweedFS, bucket_state, delay, emf_metrics, fail_part

GOOD = datetime(2026, 11, 28, 3, tzinfo=UTC)
FAILING = datetime(2026, 11, 29, 3, tzinfo=UTC)
GOOD_ID = "logical:shop:20261128T030000Z"
FAILING_ID = "logical:shop:20261129T030000Z"


def fingerprint(pg: PostgresServer, db: str) -> str:
    """Row count and a hash of every row of the big table: the source must not change."""
    return pg.psql("SELECT count(*) || ':' || md5(string_agg(body, '' ORDER BY id)) FROM blobs", dbname=db)


def good_backup(svc: BackupServices) -> None:
    outcome = run_logical_backup(svc, "shop", GOOD)
    assert outcome.status == "SUCCEEDED" and outcome.backup_id == GOOD_ID


def verified(obj: ManifestObject, body: bytes) -> None:
    """The object's bytes against its manifest entry: per part when it was sent in parts (IntegrityError if not)."""
    verifier = PartVerifier(obj)
    verifier.update(body)
    verifier.finish()


def assert_nothing_half_made(seaweed: SeaweedFS, stack: LocalStack, svc: BackupServices) -> dict[str, Any]:
    """The failed slot left only its FAILED record; the good backup is the latest and verifies."""
    s3 = seaweed.client()
    keys, uploads = bucket_state(s3, stack.bucket)
    assert uploads == [], f"open multipart uploads left: {uploads}"
    assert [k for k in keys if "/20261129T030000Z/" in k] == [], keys
    (failed,) = [k for k in keys if k.startswith("failed/shop/20261129T030000Z_@_")]
    record: dict[str, Any] = json.loads(s3.get_object(Bucket=stack.bucket, Key=failed)["Body"].read())
    assert record["status"] == "FAILED" and record["error"]
    latest = svc.catalog.latest("shop")
    assert latest is not None and latest.backup_id == GOOD_ID
    for obj in latest.objects:
        verified(obj, s3.get_object(Bucket=stack.bucket, Key=obj.key)["Body"].read())
    return record


def failure_metric(capsys: pytest.CaptureFixture[str], name: str = "BackupFailed") -> None:
    assert name in emf_metrics(capsys.readouterr().out), f"no {name} metric on stdout"


def test_postgres_restarted_mid_dump(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    s3_proxy: FaultProxy,
    pg: PostgresServer,
    big_db: str,
    write_lifeboat_config: ConfigWriter,
    stray_databases: Callable[[], set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pg_ctl restart -m immediate` as soon as S3 has acknowledged the first part of the dump."""
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:6")
    svc = wiring.backup_services()
    good_backup(svc)
    before = fingerprint(pg, big_db)
    s3_proxy.seen.clear()
    restarted: list[float] = []

    def restart_once_a_part_is_stored() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(s.status == 200 for s in s3_proxy.ops("UploadPart")):
                pg.restart()
                restarted.append(time.monotonic())
                return
            time.sleep(0.01)

    restarter = threading.Thread(target=restart_once_a_part_is_stored, name="pg-restart")
    restarter.start()
    try:
        with pytest.raises(LifeboatError) as info:
            run_logical_backup(svc, "shop", FAILING)
    finally:
        restarter.join(timeout=90)
    assert restarted, "no part of the dump reached S3"
    assert "the server closed the connection during the run" in str(info.value), info.value
    record = assert_nothing_half_made(seaweed, real_s3, svc)
    assert "closed the connection" in record["error"]
    failure_metric(capsys)
    assert fingerprint(pg, big_db) == before
    assert stray_databases() == set()
    # The retry SQS delivers after the restart succeeds: a FAILED claim does not block it.
    assert run_logical_backup(svc, "shop", FAILING).status == "SUCCEEDED"


def test_s3_403_on_upload_part_is_not_retried(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    s3_proxy: FaultProxy,
    pg: PostgresServer,
    big_db: str,
    write_lifeboat_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:1")
    svc = wiring.backup_services()
    good_backup(svc)
    before = fingerprint(pg, big_db)
    s3_proxy.rules = [fail_part(2, 403, "AccessDenied")]
    with pytest.raises(
        StorageError,
        match=rf"access denied to s3://{real_s3.bucket}/logical/shop/.*/database\.dump"
        r": the role needs s3 access",
    ):
        run_logical_backup(svc, "shop", FAILING)
    second = [s for s in s3_proxy.ops("UploadPart") if s.part_number == 2 and s.injected]
    assert len(second) == 1, "a 403 was retried"
    assert len(s3_proxy.ops("AbortMultipartUpload")) == 1
    assert_nothing_half_made(seaweed, real_s3, svc)
    failure_metric(capsys)
    assert fingerprint(pg, big_db) == before


def test_slow_s3_endpoint_still_succeeds_within_the_memory_budget(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    s3_proxy: FaultProxy,
    big_db: str,
    write_lifeboat_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every S3 answer delayed (parts by 1.5 s): slower, still complete, and never more part bytes in flight
    than the 16 MiB budget (upload_memory_mib), so pg_dump waits instead of memory growing."""
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:1")
    svc = wiring.backup_services()
    s3_proxy.rules = [delay(1.5, ("UploadPart",)), delay(0.2)]
    started = time.monotonic()
    outcome = run_logical_backup(svc, "shop", FAILING)
    elapsed = time.monotonic() - started
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    parts = s3_proxy.ops("UploadPart")
    assert len(parts) >= 3
    requests, in_flight = s3_proxy.peak("UploadPart")
    assert requests >= 2 and in_flight <= 16 * 1024 * 1024, (requests, in_flight)
    assert elapsed >= 3.0  # at least two rounds of delayed parts
    dump = outcome.manifest.object("dump")
    body = seaweed.client().get_object(Bucket=real_s3.bucket, Key=dump.key)["Body"].read()
    verified(dump, body)
    assert "BackupFailed" not in emf_metrics(capsys.readouterr().out)


def test_503_on_one_part_is_retried_then_succeeds(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    s3_proxy: FaultProxy,
    big_db: str,
    write_lifeboat_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:1")
    svc = wiring.backup_services()
    s3_proxy.rules = [fail_part(2, 503, "SlowDown", times=1)]
    outcome = run_logical_backup(svc, "shop", FAILING)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    second = [s.status for s in s3_proxy.ops("UploadPart") if s.part_number == 2]
    assert second == [503, 200]
    dump = outcome.manifest.object("dump")
    body = seaweed.client().get_object(Bucket=real_s3.bucket, Key=dump.key)["Body"].read()
    verified(dump, body)
    assert bucket_state(seaweed.client(), real_s3.bucket)[1] == []
    metrics = emf_metrics(capsys.readouterr().out)
    assert "BackupSucceeded" in metrics and "BackupFailed" not in metrics


def test_lambda_deadline_mid_restore_fails_the_job_cleanly(
    real_s3: LocalStack,
    s3_proxy: FaultProxy,
    pg: PostgresServer,
    big_db: str,
    write_lifeboat_config: ConfigWriter,
    stray_databases: Callable[[], set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When the invocation's time runs out, a restore does what a backup does: it stops
    `deadline_margin_seconds` before the limit, drops the partly restored database, and records the job as
    FAILED with code deadline_exceeded and a RestoreFailed metric, instead of being killed mid-restore
    (job left RUNNING, database left half-made, SQS redelivering the same too-long job forever)."""
    from chalicelib.restore.requests import LogicalRestoreRequest
    from chalicelib.restore.service import run_restore_job, start_restore

    write_lifeboat_config(real_s3, database=big_db, compression="gzip:1")
    good_backup(wiring.backup_services())
    svc = wiring.api_services()
    job = start_restore(
        svc,
        LogicalRestoreRequest.model_validate(
            {"backup_id": GOOD_ID, "into": {"target": "shop", "database": "big_deadline"}}
        ),
    )
    s3_proxy.rules = [delay(1.5, ("GetObject",))]  # the restore cannot finish within the second it has
    margin = svc.config.settings.deadline_margin_seconds
    start = time.monotonic()

    def remaining_ms() -> int:  # a Lambda with one second left before the margin
        return int((margin + 1 - (time.monotonic() - start)) * 1000)

    done = run_restore_job(svc, job.restore_id, remaining_ms)
    assert remaining_ms() > 0, "the restore ran past the invocation's time limit"
    assert done.status == "FAILED", done.status
    assert done.error is not None and done.error.code == "deadline_exceeded"
    assert "time limit" in done.error.message
    assert stray_databases() == set()
    failure_metric(capsys, "RestoreFailed")


def test_duplicate_and_out_of_order_schedule_deliveries(
    aws: LocalStack, pg: PostgresServer, write_lifeboat_config: ConfigWriter
) -> None:
    """Dispatcher ticks at T, T again, T-1 min and T+1 min; every queued message delivered twice, newest
    first: exactly one backup per slot."""
    from chalicelib.scheduling.dispatch import run_dispatch

    write_lifeboat_config(aws, schedule="rate(1 minute)")
    cfg = wiring.load_config()
    t = FAILING
    queued = []
    for when in (t, t, t - timedelta(minutes=1), t + timedelta(minutes=1)):
        queued.append([d.slot for d in run_dispatch(cfg, when, wiring.backup_queue(cfg), wiring.dispatch_cursor())])
    assert queued == [[t], [], [], [t + timedelta(minutes=1)]]
    bodies = flows.receive_all(aws.queue_url)
    assert len(bodies) == 2
    results = []
    with flows.lambda_client() as c:
        for body in [*reversed(bodies), *bodies]:  # out of order, then every message again
            results.extend(flows.backup_worker(c, body))
    assert sorted((r["backup_id"], r["status"]) for r in results) == [
        ("logical:shop:20261129T030000Z", "SKIPPED"),
        ("logical:shop:20261129T030000Z", "SUCCEEDED"),
        ("logical:shop:20261129T030100Z", "SKIPPED"),
        ("logical:shop:20261129T030100Z", "SUCCEEDED"),
    ]
    ids = [str(b) for b in wiring.catalog(cfg).backup_ids("shop")]
    assert ids == ["logical:shop:20261129T030100Z", "logical:shop:20261129T030000Z"]


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_damaged_dump_is_refused_by_the_cli(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    pg: PostgresServer,
    write_lifeboat_config: ConfigWriter,
    stray_databases: Callable[[], set[str]],
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    from chalicelib.cli import main

    write_lifeboat_config(real_s3)
    svc = wiring.backup_services()
    good_backup(svc)
    key = "logical/shop/2026/11/28/20261128T030000Z/database.dump"
    s3 = seaweed.client()
    data = bytearray(s3.get_object(Bucket=real_s3.bucket, Key=key)["Body"].read())
    if damage == "tampered":
        data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    else:
        del data[len(data) // 2 :]
    s3.put_object(Bucket=real_s3.bucket, Key=key, Body=bytes(data))
    capsys.readouterr()
    out = io.StringIO()
    code = main(["restore", GOOD_ID, "--database", "shop_damaged"], out=out)
    err = capsys.readouterr().err
    assert code == 1, (out.getvalue(), err)
    assert err.startswith("lifeboat: integrity_failed: logical/shop/"), err
    assert ("tampered with or corrupted" if damage == "tampered" else "changed or truncated") in err
    assert out.getvalue() == ""
    assert stray_databases() == set()


def test_a_failed_restore_outside_the_worker_emits_restore_failed(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    write_lifeboat_config: ConfigWriter,
    stray_databases: Callable[[], set[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from chalicelib.errors import IntegrityError
    from chalicelib.logical.restore import restore_logical

    write_lifeboat_config(real_s3)
    svc = wiring.backup_services()
    good_backup(svc)
    key = "logical/shop/2026/11/28/20261128T030000Z/database.dump"
    s3 = seaweed.client()
    data = bytearray(s3.get_object(Bucket=real_s3.bucket, Key=key)["Body"].read())
    data[100] ^= 0xFF
    s3.put_object(Bucket=real_s3.bucket, Key=key, Body=bytes(data))
    login = svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        restore_logical(svc.store, svc.catalog, svc.toolbox, GOOD_ID, login, "shop_metric")
    assert stray_databases() == set()
    failure_metric(capsys, "RestoreFailed")
