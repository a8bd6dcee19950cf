"""The foundation's promise, end to end with real parts: schedule → pg_dump → S3 → pg_restore."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack
from devstack.postgres import SUPERUSER_PASSWORD, PostgresServer

SLOT = "2026-11-29T03:00:00Z"
REPO = Path(__file__).resolve().parents[2]


def schema_dump(pg: PostgresServer, pg_roots: Path, db: str) -> str:
    out = subprocess.run(
        [
            str(pg_roots / "17" / "bin" / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            db,
        ],
        env={"PGPASSWORD": SUPERUSER_PASSWORD, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # \restrict tokens (PostgreSQL 17.6+) are random per run
    return "\n".join(line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def counts(pg: PostgresServer, db: str) -> str:
    return pg.psql(
        "SELECT string_agg(t || '=' || n, ',' ORDER BY t) FROM ("
        "SELECT 'customers' t, count(*) n FROM sales.customers UNION ALL "
        "SELECT 'orders', count(*) FROM sales.orders UNION ALL "
        "SELECT 'items', count(*) FROM inventory.items UNION ALL "
        'SELECT \'events\', count(*) FROM "Audit Log"."Événements") x',
        dbname=db,
    )


def run_schedule(slot: str = SLOT) -> list[dict[str, object]]:
    """Dispatcher tick → SQS (moto) → worker handler, through Chalice's test client."""
    import app as lambda_app

    results = []
    with chalice_client(lambda_app.app, project_dir=str(REPO)) as client:
        event = client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
        )
        event["time"] = slot
        client.lambda_.invoke("dispatcher", event)
        sqs = boto3.client("sqs")
        url = os.environ["LIFEBOAT_BACKUP_QUEUE_URL"]
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            response = client.lambda_.invoke(
                "backup_worker",
                client.events.generate_sqs_event(message_bodies=[message["Body"]], queue_name="pg-lifeboat-backups"),
            )
            results.extend(response.payload)
    return results


def test_scheduled_backup_round_trip(
    config_path: Path, pg: PostgresServer, pg_roots: Path, aws: LocalStack, tmp_path: Path
) -> None:
    results = run_schedule()
    assert [r["status"] for r in results] == ["SUCCEEDED"], results
    backup_id = results[0]["backup_id"]
    assert backup_id == "logical:shop:20261129T030000Z"

    s3 = boto3.client("s3")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=aws.bucket)["Contents"])
    prefix = "logical/shop/2026/11/29/20261129T030000Z/"
    assert keys == [prefix + "database.dump", prefix + "globals.sql", prefix + "manifest.json"]
    manifest = json.loads(s3.get_object(Bucket=aws.bucket, Key=prefix + "manifest.json")["Body"].read())
    assert manifest["status"] == "SUCCEEDED"
    assert manifest["pg_dump_version"] == pg.major  # the server's own major
    assert manifest["compression"] == ("gzip:6" if pg.major < 16 else "zstd:1")
    assert manifest["server_version_num"] // 10000 == pg.major
    assert manifest["row_counts"]["sales.orders"] == 4000
    # Sunday 29 November: the next slot (Monday) starts another ISO week, so this one is the newest of its week.
    assert manifest["retention_class"] == "weekly"
    for key in keys:  # the target's newest backup: kept whatever its class (keep_last)
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=aws.bucket, Key=key)["TagSet"]}
        assert tags["retention"] == "keep" and tags["retention-policy"] == "default"
    head = s3.head_object(Bucket=aws.bucket, Key=prefix + "database.dump")
    assert head["ServerSideEncryption"] == "AES256"

    # Download the object as a user would and restore it with pg_restore into a fresh database.
    dump_file = tmp_path / "shop.dump"
    s3.download_file(aws.bucket, prefix + "database.dump", str(dump_file))
    import hashlib

    assert hashlib.sha256(dump_file.read_bytes()).hexdigest() == manifest["objects"][0]["sha256"]
    pg.psql("CREATE DATABASE shop_copy")
    subprocess.run(
        [
            str(pg_roots / str(pg.major) / "bin" / "pg_restore"),
            "--exit-on-error",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            "postgres",
            "-d",
            "shop_copy",
            str(dump_file),
        ],
        env={"PGPASSWORD": SUPERUSER_PASSWORD, "PATH": os.environ["PATH"]},
        check=True,
    )
    try:
        assert schema_dump(pg, pg_roots, "shop_copy") == schema_dump(pg, pg_roots, "shop")
        assert counts(pg, "shop_copy") == counts(pg, "shop")
        assert pg.psql("SELECT last_value FROM sales.invoice_no", dbname="shop_copy") == "5000"
    finally:
        pg.psql("DROP DATABASE shop_copy")


def test_duplicate_delivery_makes_one_backup(config_path: Path, aws: LocalStack) -> None:
    first = run_schedule()
    import app as lambda_app

    # The same slot delivered again (EventBridge and SQS are at-least-once), both to the dispatcher
    # and straight to the worker.
    again = run_schedule()
    assert again == []  # the dispatch cursor already covers this tick
    with chalice_client(lambda_app.app, project_dir=str(REPO)) as client:
        body = json.dumps({"target": "shop", "kind": "logical", "slot": "2026-11-29T03:00:00+00:00"})
        response = client.lambda_.invoke("backup_worker", client.events.generate_sqs_event(message_bodies=[body]))
    assert first[0]["status"] == "SUCCEEDED"
    assert response.payload[0]["status"] == "SKIPPED"
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=aws.bucket)["Contents"]]
    manifests = [k for k in keys if k.endswith("manifest.json")]
    assert len(manifests) == 1


def test_restore_command_round_trip(config_path: Path, pg: PostgresServer, aws: LocalStack) -> None:
    from chalicelib.cli import main

    assert run_schedule()[0]["status"] == "SUCCEEDED"
    import io

    out = io.StringIO()
    code = main(["restore", "logical:shop:20261129T030000Z", "--database", "shop_restored"], out=out)
    try:
        assert code == 0, out.getvalue()
        assert "verified: 4 tables" in out.getvalue()
        assert counts(pg, "shop_restored") == counts(pg, "shop")
        # Never overwrite: the same restore again is refused, as bad input (exit 2).
        assert main(["restore", "logical:shop:20261129T030000Z", "--database", "shop_restored"], out=io.StringIO()) == 2
    finally:
        pg.psql("DROP DATABASE IF EXISTS shop_restored")


@pytest.mark.parametrize("when", [datetime(2026, 11, 29, 3, tzinfo=UTC)])
def test_list_shows_complete_backups(config_path: Path, aws: LocalStack, when: datetime) -> None:
    from chalicelib.cli import main

    run_schedule()
    import io

    out = io.StringIO()
    assert main(["list", "shop"], out=out) == 0
    assert "logical:shop:20261129T030000Z" in out.getvalue()
