"""Logical drills against moto (bucket, jobs table) and the session's real PostgreSQL: restore, verify, check, drop,
record; every failure mode ends as a FAILED drill with DrillFailed and no scratch database left."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from chalicelib.config import Config
from chalicelib.drills.model import DrillRecord
from chalicelib.drills.runner import run_drill
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from tests.drills.conftest import BACKUP_SLOTS, NOW, Metrics, drill_databases, drill_targets, services

CHECKS = [
    {"name": "orders are recent", "sql": "SELECT max(placed_at) > '2026-01-20' FROM sales.orders"},
    {
        "name": "every order has its customer",
        "sql": "SELECT count(*) = 0 FROM sales.orders o"
        " LEFT JOIN sales.customers c ON c.id = o.customer_id WHERE c.id IS NULL",
    },
]


def stored_evidence(aws: LocalStack, rec: DrillRecord) -> dict[str, Any]:
    s3 = boto3.client("s3")
    assert rec.evidence_key is not None and rec.evidence_key.startswith("drills/shop/2026/")
    doc: dict[str, Any] = json.loads(s3.get_object(Bucket=aws.bucket, Key=rec.evidence_key)["Body"].read())
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=aws.bucket, Key=rec.evidence_key)["TagSet"]}
    assert tags["retention"] == "drill-evidence" and tags["target"] == "shop"
    return doc


def test_a_scheduled_drill_restores_checks_drops_and_records(
    aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]
) -> None:
    cfg = write_drill_config(drill_targets(pg, aws.secret_arn, CHECKS))
    from chalicelib import wiring
    from chalicelib.logical.dump import run_logical_backup

    for slot in BACKUP_SLOTS:
        assert run_logical_backup(wiring.backup_services(cfg), "shop", slot).status == "SUCCEEDED"
    metrics = Metrics()
    svc = services(cfg, metrics)
    rec = run_drill(svc, "shop", NOW, trigger="schedule")
    assert rec is not None and rec.status == "SUCCEEDED", rec.error
    assert rec.backup_id == "logical:shop:20261019T030000Z"  # latest
    assert [c.name for c in rec.checks] == ["row counts match the manifest", *(c["name"] for c in CHECKS)]
    assert all(c.passed for c in rec.checks), rec.checks
    assert "4 tables, 6500 rows" in rec.checks[0].detail
    assert rec.cleanup == {"database": rec.into["database"], "dropped": True}
    assert rec.into["database"].startswith("lifeboat_drill_") and rec.into["target"] == "scratch"
    assert rec.recovery_seconds is not None and rec.recovery_seconds > 0 and rec.rto_met is True
    assert rec.configured["owner"] == "dba-team@example.com"
    assert drill_databases(pg) == []
    assert metrics.names() == ["DrillSucceeded", "RecoverySeconds"]
    assert {c[3] for c in metrics.calls} == {"shop"}
    # Evidence: the table and the bucket agree; a duplicate delivery of the slot runs nothing.
    assert svc.evidence.get(rec.drill_id) == rec
    doc = stored_evidence(aws, rec)
    assert doc["status"] == "SUCCEEDED" and doc["backup_id"] == rec.backup_id and len(doc["checks"]) == 3
    assert run_drill(services(cfg, metrics, seed=8), "shop", NOW, trigger="schedule") is None


def test_a_tampered_backup_fails_the_drill(aws: LocalStack, pg: PostgresServer, backups: Config) -> None:
    s3 = boto3.client("s3")
    key = "logical/shop/2026/10/19/20261019T030000Z/database.dump"
    data = bytearray(s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed after the backup
    s3.put_object(Bucket=aws.bucket, Key=key, Body=bytes(data))
    metrics = Metrics()
    rec = run_drill(services(backups, metrics), "shop")
    assert rec is not None and rec.status == "FAILED" and rec.error is not None
    assert rec.error.code == "integrity_failed" and "SHA-256" in rec.error.message
    assert rec.backup_id == "logical:shop:20261019T030000Z"
    assert metrics.names() == ["DrillFailed"]
    assert drill_databases(pg) == []
    assert stored_evidence(aws, rec)["error"]["code"] == "integrity_failed"


def test_a_failing_sql_check_fails_the_drill_and_a_check_cannot_write(
    aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]
) -> None:
    checks = [
        *CHECKS,
        {"name": "no order after 2027", "sql": "SELECT max(placed_at) < '2026-01-02' FROM sales.orders"},
        {"name": "tries to write", "sql": "DELETE FROM sales.orders WHERE id = 1 RETURNING true"},
        {"name": "two statements", "sql": "COMMIT; DROP TABLE sales.orders; SELECT true"},
        {"name": "two columns", "sql": "SELECT true, true"},
        {"name": "too slow", "sql": "SELECT pg_sleep(5) IS NOT NULL"},
    ]
    targets = drill_targets(pg, aws.secret_arn, checks)
    targets[0]["drill"]["statement_timeout_seconds"] = 1
    cfg = write_drill_config(targets)
    from chalicelib import wiring
    from chalicelib.logical.dump import run_logical_backup

    assert run_logical_backup(wiring.backup_services(cfg), "shop", BACKUP_SLOTS[0]).status == "SUCCEEDED"
    metrics = Metrics()
    rec = run_drill(services(cfg, metrics), "shop")
    assert rec is not None and rec.status == "FAILED" and rec.error is not None
    assert rec.error.code == "check_failed"
    results = {c.name: c for c in rec.checks}
    assert results["row counts match the manifest"].passed and results["orders are recent"].passed
    assert (
        not results["no order after 2027"].passed
        and results["no order after 2027"].detail == "returned False, not true"
    )
    assert "read-only transaction" in results["tries to write"].detail
    assert "cannot insert multiple commands" in results["two statements"].detail, results["two statements"]
    assert "one boolean column" in results["two columns"].detail
    assert "statement timeout" in results["too slow"].detail
    assert "5 of 8 checks failed" in rec.error.message
    assert metrics.names() == ["DrillFailed"]
    assert drill_databases(pg) == []


def test_a_scratch_server_that_refuses_connections_fails_the_drill(
    aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]
) -> None:
    targets = drill_targets(pg, aws.secret_arn)
    targets[0]["drill"]["into"] = {"target": "refused"}
    targets[0]["restore_into"] = ["refused"]
    cfg = write_drill_config(targets)
    from chalicelib import wiring
    from chalicelib.logical.dump import run_logical_backup

    assert run_logical_backup(wiring.backup_services(cfg), "shop", BACKUP_SLOTS[0]).status == "SUCCEEDED"
    metrics = Metrics()
    rec = run_drill(services(cfg, metrics), "shop")
    assert rec is not None and rec.status == "FAILED" and rec.error is not None
    assert rec.error.code == "database_unreachable", rec.error
    assert rec.cleanup["dropped"] is False
    assert metrics.names() == ["DrillFailed"]
    assert drill_databases(pg) == []


def test_no_backup_to_drill_is_a_failed_drill(aws: LocalStack, write_drill_config: Callable[..., Config]) -> None:
    metrics = Metrics()
    rec = run_drill(services(write_drill_config(), metrics), "shop")
    assert rec is not None and rec.status == "FAILED" and rec.error is not None and rec.error.code == "no_backup"
    assert metrics.names() == ["DrillFailed"]


@pytest.mark.parametrize(("pick", "expected"), [("oldest-kept", "20261017T030000Z"), ("random", None)])
def test_pick_chooses_among_the_kept_backups(
    aws: LocalStack, pg: PostgresServer, backups: Config, pick: str, expected: str | None
) -> None:
    cfg = backups.model_copy(deep=True)
    shop = cfg.target("shop")
    assert shop.drill is not None
    object.__setattr__(shop.drill, "pick", pick)
    rec = run_drill(services(cfg, Metrics(), seed=3), "shop")
    assert rec is not None and rec.status == "SUCCEEDED", rec.error
    stamps = {s.strftime("%Y%m%dT%H%M%SZ") for s in BACKUP_SLOTS}
    assert rec.backup_id is not None and rec.backup_id.split(":")[-1] in stamps
    if expected:
        assert rec.backup_id.endswith(expected)
