"""Snapshot drills against moto: the picked snapshot is restored into a temporary `lifeboat-drill-…` instance through
the restore code, checked on a real PostgreSQL (the instance's endpoint resolved to the session's server), and
deleted; a drill killed right after creating its instance is cleaned up by the sweeper."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.adapters.postgres import Login
from chalicelib.config import Config
from chalicelib.drills.model import DRILL_TAG, drill_instance_id
from chalicelib.drills.runner import run_drill
from chalicelib.drills.services import DrillHooks
from chalicelib.drills.sweep import sweep_drills
from chalicelib.physical.start import start_snapshot
from devstack.local import LocalStack, target
from devstack.postgres import PostgresServer
from tests.drills.conftest import BACKUP_SLOTS, NOW, Metrics, services


class Killed(BaseException):
    """The function dies: nothing after this point runs (not an error the drill could handle)."""


def drill_instances(tags: bool = False) -> list[dict[str, Any]]:
    rds = boto3.client("rds")
    found = [
        dict(i)
        for i in rds.describe_db_instances()["DBInstances"]
        if i["DBInstanceIdentifier"].startswith("lifeboat-drill-")
    ]
    for i in found if tags else []:
        listed = rds.list_tags_for_resource(ResourceName=i["DBInstanceArn"])["TagList"]
        i["tags"] = {t["Key"]: t["Value"] for t in listed}
    return found


@pytest.fixture
def snapshot_config(aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]) -> Config:
    boto3.client("rds").create_db_instance(
        DBInstanceIdentifier="orders-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
        Tags=[{"Key": "lifeboat:backup-source", "Value": "true"}],
    )
    orders = target("orders", pg.port, aws.secret_arn, schedule=None)
    del orders["logical"]
    orders["physical"] = {
        "method": "rds_instance",
        "db_instance_id": "orders-db",
        "schedule": "cron(0 2 * * ? *)",
        "restore": {"instance_classes": ["db.t3.small"]},
    }
    orders["drill"] = {
        "schedule": "rate(7 days)",
        "into": {"instance_class": "db.t3.small"},
        "databases": ["shop"],
        "checks": [{"name": "customers are there", "sql": "SELECT count(*) = 1500 FROM sales.customers"}],
    }
    cfg = write_drill_config([orders])
    for slot in BACKUP_SLOTS[:2]:
        assert start_snapshot(wiring.snapshot_services(cfg), "orders", slot).status == "STARTED"
    return cfg


def to_session_server(pg: PostgresServer) -> Callable[[Login], Login]:
    def resolve(login: Login) -> Login:
        assert login.host.startswith("lifeboat-drill-"), login.host  # the restored instance's endpoint
        return dataclasses.replace(login, host="127.0.0.1", port=pg.port)

    return resolve


def test_a_snapshot_drill_creates_checks_and_deletes_its_instance(
    aws: LocalStack, pg: PostgresServer, snapshot_config: Config
) -> None:
    metrics = Metrics()
    svc = services(snapshot_config, metrics, resolve_endpoint=to_session_server(pg))
    created: list[list[dict[str, Any]]] = []
    rec = run_drill(svc, "orders", hooks=DrillHooks(after_create=lambda r: created.append(drill_instances(tags=True))))
    assert rec is not None and rec.status == "SUCCEEDED", rec.error
    assert rec.backup_id is not None and rec.backup_id.startswith("snapshot:orders:20261018")
    (instance,) = created[0]  # it existed, with the allowed class, tagged with the drill and its restore
    assert instance["DBInstanceIdentifier"] == drill_instance_id(rec.drill_id)
    assert instance["DBInstanceClass"] == "db.t3.small"
    assert instance["tags"][DRILL_TAG] == rec.drill_id and instance["tags"]["lifeboat:target"] == "orders"
    assert [c.name for c in rec.checks] == [
        "restored copy available",
        "accepts connections",
        "database shop exists",
        "customers are there",
    ]
    assert all(c.passed for c in rec.checks), rec.checks
    assert rec.cleanup == {"deleted": [drill_instance_id(rec.drill_id)]}
    assert drill_instances() == []
    assert metrics.names() == ["DrillSucceeded", "RecoverySeconds"]


def test_a_killed_snapshot_drill_is_cleaned_up_by_the_sweeper(
    aws: LocalStack, pg: PostgresServer, snapshot_config: Config
) -> None:
    metrics = Metrics()
    svc = services(snapshot_config, metrics, resolve_endpoint=to_session_server(pg))
    seen: list[str] = []

    def die(rec: Any) -> None:
        seen.append(rec.drill_id)
        raise Killed

    with pytest.raises(Killed):
        run_drill(svc, "orders", hooks=DrillHooks(after_create=die))
    (instance,) = drill_instances()
    rds = boto3.client("rds")
    tags = {t["Key"]: t["Value"] for t in rds.list_tags_for_resource(ResourceName=instance["DBInstanceArn"])["TagList"]}
    assert tags[DRILL_TAG] == seen[0] and tags["lifeboat:restore-id"] == "r-" + seen[0][2:]
    # While its worker may still be in it (the lease), the sweeper leaves it alone.
    early = sweep_drills(svc, NOW + timedelta(minutes=5))
    assert early["abandoned"] == [] and len(drill_instances()) == 1
    report = sweep_drills(svc, NOW + timedelta(hours=1))
    assert report["abandoned"] == seen
    assert drill_instances() == []
    rec = svc.evidence.get(seen[0])
    assert rec is not None and rec.status == "FAILED" and rec.error is not None
    assert rec.error.code == "drill_abandoned" and rec.cleanup["deleted"] == [instance["DBInstanceIdentifier"]]
    assert metrics.names()[-1:] == ["DrillOverdue"] and "DrillFailed" in metrics.names()


def test_an_instance_whose_drill_left_no_record_is_deleted(
    aws: LocalStack, pg: PostgresServer, snapshot_config: Config
) -> None:
    svc = services(snapshot_config, Metrics(), resolve_endpoint=to_session_server(pg))
    seen: list[str] = []

    def die(rec: Any) -> None:
        seen.append(rec.drill_id)
        raise Killed

    with pytest.raises(Killed):
        run_drill(svc, "orders", hooks=DrillHooks(after_create=die))
    boto3.client("dynamodb").delete_item(TableName=aws.jobs_table, Key={"pk": {"S": f"drill#{seen[0]}"}})
    report = sweep_drills(svc, NOW + timedelta(hours=1))
    assert report["orphans_deleted"] == [drill_instance_id(seen[0])]
    assert drill_instances() == []
