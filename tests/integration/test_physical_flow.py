"""A physical backup through the same path as a logical one: dispatcher → queue → worker → snapshot,
then the catalog (CLI and API) shows it next to the dumps."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest

from chalicelib.cli import main
from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]


def test_scheduled_snapshot_and_combined_catalog(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boto3.client("rds").create_db_instance(
        DBInstanceIdentifier="shop-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
    )
    spec = target("shop", pg.port, aws.secret_arn, schedule="cron(0 3 * * ? *)")
    spec["physical"] = {"method": "rds_instance", "db_instance_id": "shop-db", "schedule": "cron(0 3 * * ? *)"}
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [spec])))
    import app as lambda_app

    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
        event["time"] = "2026-11-29T03:00:00Z"
        queued = c.lambda_.invoke("dispatcher", event).payload["dispatched"]
        assert sorted(json.loads(m)["kind"] for m in queued) == ["logical", "physical"]
        sqs = boto3.client("sqs")
        results = []
        for message in sqs.receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10)["Messages"]:
            results.extend(
                c.lambda_.invoke("backup_worker", c.events.generate_sqs_event(message_bodies=[message["Body"]])).payload
            )
        assert sorted(r["status"] for r in results) == ["STARTED", "SUCCEEDED"], results
        snaps = boto3.client("rds").describe_db_snapshots(SnapshotType="manual")["DBSnapshots"]
        assert [s["DBSnapshotIdentifier"] for s in snaps] == ["lifeboat-shop-20261129-030000"]

        out = io.StringIO()
        assert main(["list", "shop"], out=out) == 0
        listing = out.getvalue()
        assert "logical:shop:20261129T030000Z" in listing and "snapshot:shop:20261129T030000Z" in listing

        response = c.http.get("/targets/shop/backups?kind=snapshot")
        body = json.loads(response.body)
        assert response.status_code == 200
        assert [b["backup_id"] for b in body["backups"]] == ["snapshot:shop:20261129T030000Z"]
        assert body["backups"][0]["resource_ids"] == ["lifeboat-shop-20261129-030000"]
