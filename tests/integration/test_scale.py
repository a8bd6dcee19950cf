"""Scale: whole-server targets, per-server concurrency through FIFO message groups, a 1,000-target dispatch."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import restore_logical
from chalicelib.scheduling.dispatch import DueBackup, run_dispatch
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)


@pytest.fixture
def whole_server(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pg.psql("DROP DATABASE IF EXISTS extra1")
    pg.psql("CREATE DATABASE extra1 OWNER lifeboat_backup")
    pg.psql(
        "SET ROLE lifeboat_backup; CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 42)", dbname="extra1"
    )
    spec = target(
        "server",
        pg.port,
        aws.secret_arn,
        database="postgres",
        globals=True,
        all_databases=True,
        exclude_databases=["bigshop", "postgres"],
    )
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [spec])))
    return "server"


def test_whole_server_run_inline(whole_server: str, pg: PostgresServer) -> None:
    svc = wiring.backup_services()
    outcome = run_logical_backup(svc, whole_server, SLOT)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    databases = outcome.manifest.databases or []
    assert "shop" in databases and "extra1" in databases
    assert not {"template0", "template1", "postgres", "bigshop"} & set(databases)
    ids = [str(b) for b in svc.catalog.backup_ids(whole_server)]
    assert "logical:server:20261129T030000Z" in ids
    assert "logical:server/extra1:20261129T030000Z" in ids and "logical:server/shop:20261129T030000Z" in ids
    # The globals are dumped once, by the run; each database has its own dump and counts.
    run = svc.catalog.manifest(
        svc.catalog.layout.parse_manifest_key(svc.catalog.layout.manifest_key(outcome_id(outcome.backup_id)))
    )  # type: ignore[arg-type]
    assert [o.role for o in run.objects] == ["globals"]
    extra = svc.catalog.manifest(outcome_id("logical:server/extra1:20261129T030000Z"))
    assert [o.role for o in extra.objects] == ["dump", "globals"] and extra.row_counts == {"public.t": 42}
    login = svc.credentials.login(svc.config.target(whole_server).connection)  # type: ignore[arg-type]
    result = restore_logical(
        svc.store, svc.catalog, svc.toolbox, "logical:server/extra1:20261129T030000Z", login, "extra1_restored"
    )
    try:
        assert result.verified
    finally:
        pg.psql("DROP DATABASE extra1_restored")
    with pytest.raises(Exception, match="whole-server run"):
        restore_logical(svc.store, svc.catalog, svc.toolbox, "logical:server:20261129T030000Z", login, "nope")


def outcome_id(text: str) -> Any:
    from chalicelib.logical.catalog import BackupId

    return BackupId.parse(text)


def test_failed_fan_out_fails_the_run_and_its_redelivery_fans_out(
    whole_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed SQS send fails the run (no manifest, a FAILED record, BackupFailed, an error for SQS to retry);
    the redelivery queues the databases again instead of finding the run complete."""
    from chalicelib.errors import StorageError
    from chalicelib.logical import dump

    metrics: list[str] = []
    monkeypatch.setattr(dump, "record", lambda name, *a, **k: metrics.append(name))
    sent: list[DueBackup] = []

    def fan_out(due: list[DueBackup]) -> int:
        if not metrics:
            raise StorageError("cannot send messages to backups.fifo: ServiceUnavailable")
        sent.extend(due)
        return len(due)

    svc = wiring.backup_services()
    svc.fan_out = fan_out
    with pytest.raises(StorageError, match="ServiceUnavailable"):
        run_logical_backup(svc, whole_server, SLOT)
    assert metrics == ["BackupFailed"] and svc.catalog.backup_ids(whole_server) == []
    assert [f.status for f in svc.catalog.failures(whole_server)] == ["FAILED"]
    again = run_logical_backup(svc, whole_server, SLOT)
    assert again.status == "SUCCEEDED" and {"shop", "extra1"} <= {d.database for d in sent}
    assert run_logical_backup(svc, whole_server, SLOT).status == "SKIPPED"


def test_on_demand_server_run_fans_out_on_demand_backups(whole_server: str) -> None:
    sent: list[DueBackup] = []
    svc = wiring.backup_services()
    svc.fan_out = lambda due: sent.extend(due) or len(due)
    slot = datetime(2026, 11, 29, 10, tzinfo=UTC)
    run = run_logical_backup(svc, whole_server, slot, trigger="on-demand")
    assert run.manifest is not None and run.manifest.retention_class == "ondemand"
    assert sent and {d.trigger for d in sent} == {"on-demand"}
    assert all(json.loads(d.message())["trigger"] == "on-demand" for d in sent)


def test_each_database_backup_keeps_its_own_copy_of_the_globals(whole_server: str) -> None:
    """The run's globals.sql expires with the run's class; a kept database backup restores its roles from its own
    copy (same retention tag and lock as its dump)."""
    from chalicelib.logical.restore import _globals_sql

    svc = wiring.backup_services()
    run_logical_backup(svc, whole_server, SLOT)
    run_bid = outcome_id("logical:server:20261129T030000Z")
    bid = outcome_id("logical:server/extra1:20261129T030000Z")
    extra = svc.catalog.manifest(bid)
    copy = extra.object("globals")
    assert copy.key == svc.catalog.layout.globals_key(bid)
    run_globals = svc.store.get_bytes(svc.catalog.layout.globals_key(run_bid))
    assert svc.store.get_bytes(copy.key) == run_globals and b"CREATE ROLE" in run_globals
    svc.store.delete([svc.catalog.layout.globals_key(run_bid)])  # the run's copy expired
    assert _globals_sql(svc.store, svc.catalog, bid, extra).encode() == run_globals


def test_whole_server_run_fans_out_through_fifo_groups(whole_server: str, aws: LocalStack, pg: PostgresServer) -> None:
    from chalicelib.entrypoints import backup_message

    result = backup_message(json.dumps({"target": whole_server, "kind": "logical", "slot": SLOT.isoformat()}), None)
    assert result["status"] == "SUCCEEDED"
    sqs = boto3.client("sqs")
    messages = []
    for _ in range(10):
        got = sqs.receive_message(
            QueueUrl=aws.queue_url, MaxNumberOfMessages=10, AttributeNames=["MessageGroupId"]
        ).get("Messages", [])
        if not got:
            break
        messages.extend(got)
        for m in got:
            sqs.delete_message(QueueUrl=aws.queue_url, ReceiptHandle=m["ReceiptHandle"])
    dbs = sorted(json.loads(m["Body"])["database"] for m in messages)
    assert "shop" in dbs and "extra1" in dbs
    groups = {m["Attributes"]["MessageGroupId"] for m in messages}
    assert groups <= {f"127.0.0.1:{pg.port}#0", f"127.0.0.1:{pg.port}#1"}  # per_server_concurrency = 2
    # Each queued database backup runs on its own.
    body = next(m["Body"] for m in messages if json.loads(m["Body"])["database"] == "extra1")
    assert backup_message(body, None)["status"] == "SUCCEEDED"
    assert backup_message(body, None)["status"] == "SKIPPED"


def test_a_thousand_targets_dispatch_quickly(
    aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dispatcher's cost at fleet size: wall time and AWS calls for 1,000 due targets on 50 servers.

    Sent to a standard queue: moto's FIFO queue checks deduplication against every message it holds, so
    its cost grows with the queue (0.03 s a batch on a standard queue, 0.5 s a batch at 1,000 FIFO
    messages); the FIFO path and its message groups are tested above with fewer messages.
    """
    from chalicelib.adapters.sqs import Queue
    from chalicelib.scheduling.dispatch import BackupQueue

    queue = BackupQueue(
        Queue(wiring.client("sqs"), boto3.client("sqs").create_queue(QueueName="fleet-standard")["QueueUrl"])
    )
    targets = []
    for i in range(1000):
        spec = target(f"db-{i:04d}", 5432, aws.secret_arn, schedule="cron(0 3 * * ? *)")
        spec["connection"]["host"] = f"server-{i % 50}.internal"
        targets.append(spec)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "fleet.json", aws.bucket, targets)))
    calls: Counter[str] = Counter()
    started = time.perf_counter()
    cfg = wiring.load_config()
    loaded = time.perf_counter()
    sqs, ddb = wiring.client("sqs"), wiring.client("dynamodb")

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    for c in (sqs, ddb):
        c.meta.events.register("before-call.*.*", count)
    try:
        due = run_dispatch(cfg, SLOT, queue, wiring.dispatch_cursor())
    finally:
        for c in (sqs, ddb):
            c.meta.events.unregister("before-call.*.*", count)
    finished = time.perf_counter()
    assert len(due) == 1000
    assert calls["SendMessageBatch"] == 100
    assert sum(calls.values()) <= 110
    groups = Counter(f"{d.target}" for d in due)
    assert len(groups) == 1000
    with capsys.disabled():
        print(
            f"\n[fleet] 1,000 targets: config load {loaded - started:.2f} s, dispatch {finished - loaded:.2f} s,"
            f" AWS calls {dict(calls)}"
        )
    assert finished - loaded < 30  # far inside the dispatcher's 120 s timeout even on moto
    # Messages carry the server's group: 50 servers x 2 lanes at most.
    sent = DueBackup("db-0007", "logical", SLOT)
    from chalicelib.scheduling.dispatch import message_group

    assert message_group(cfg, sent).startswith("server-7.internal:5432#")


def test_parallel_directory_dump_and_restore(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump -j into a directory streamed to S3 file by file; pg_restore -j from the verified files."""
    spec = target("shop", pg.port, aws.secret_arn, format="directory", jobs=2)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [spec])))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "ephemeral"))
    (tmp_path / "ephemeral").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # pick up TMPDIR
    svc = wiring.backup_services()
    manifest = run_logical_backup(svc, "shop", SLOT).manifest
    assert manifest is not None and manifest.format == "directory"
    names = [o.key.rsplit("/", 1)[-1] for o in manifest.objects]
    assert "toc.dat" in names and len(names) >= 5  # one file per table with data, plus the TOC
    assert all(o.key.startswith("logical/shop/2026/11/29/20261129T030000Z/database.dir/") for o in manifest.objects)
    assert list((tmp_path / "ephemeral").iterdir()) == []  # nothing left on ephemeral storage
    login = svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    from chalicelib.logical.restore import RestoreOptions

    result = restore_logical(
        svc.store, svc.catalog, svc.toolbox, str(manifest.backup_id), login, "shop_parallel", RestoreOptions(jobs=2)
    )
    try:
        assert result.verified and result.verification["tables_checked"] == 4
    finally:
        pg.psql("DROP DATABASE shop_parallel")


def test_tampered_directory_file_is_refused(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = target("shop", pg.port, aws.secret_arn, format="directory", jobs=2)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [spec])))
    svc = wiring.backup_services()
    manifest = run_logical_backup(svc, "shop", SLOT).manifest
    assert manifest is not None
    victim = next(o for o in manifest.objects if o.key.endswith(".dat.gz") or o.key.endswith(".dat"))
    s3 = boto3.client("s3")
    data = bytearray(s3.get_object(Bucket=aws.bucket, Key=victim.key)["Body"].read())
    data[-1] ^= 0x01
    s3.put_object(Bucket=aws.bucket, Key=victim.key, Body=bytes(data))
    login = svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    from chalicelib.errors import IntegrityError

    with pytest.raises(IntegrityError, match="SHA-256"):
        restore_logical(svc.store, svc.catalog, svc.toolbox, manifest.backup_id, login, "shop_bad")
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'shop_bad'") == "0"
