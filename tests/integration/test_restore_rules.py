"""The restore rules are one function (chalicelib.restore.service.check_rules) and every path runs it (security
review): `lifeboat restore --into-target` obeys restore_into and --clean's own-target rule like the API, and the
restore worker refuses a job record forged with what the API would have refused (a drill's new_id, a clean into
another target, a database that exists) with FAILED and nothing created. Against moto and the session's PostgreSQL.
Target names the stack's IAM key patterns could match (`*wal/<t>/*`, `*drills/*`) are refused at configuration."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.cli import main
from chalicelib.config import parse_config
from chalicelib.errors import ConfigError
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import restore_logical
from chalicelib.physical.start import start_snapshot
from chalicelib.restore.model import RestoreJob
from chalicelib.restore.service import run_restore_job
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
BACKUP_ID = "logical:shop:20261129T030000Z"
ORDERS_SNAPSHOT = "snapshot:orders:20261129T030000Z"


def databases(pg: PostgresServer) -> set[str]:
    return set(pg.psql("SELECT datname FROM pg_database").split())


@pytest.fixture
def backed_up(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """shop (may restore into copy1 only), copy1 and other, all on the test server; one backup of shop; an RDS
    target `orders` for the snapshot form."""
    shop = {**target("shop", pg.port, aws.secret_arn), "restore_into": ["copy1"]}
    copies = [target(name, pg.port, aws.secret_arn, schedule=None) for name in ("copy1", "other")]
    orders = {"name": "orders", "physical": {"method": "rds_instance", "db_instance_id": "orders-db"}}
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [shop, *copies, orders])))
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    before = databases(pg)
    yield
    for name in databases(pg) - before:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli(*argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main(["--json", "restore", BACKUP_ID, *argv], out=out)
    return code, json.loads(out.getvalue() or "{}")


def test_cli_into_a_target_not_in_restore_into_is_refused_with_the_fix(backed_up: None, pg: PostgresServer) -> None:
    before = databases(pg)
    code, doc = cli("--database", "loot", "--into-target", "other")
    assert code == 2, doc
    assert doc["error"]["code"] == "forbidden", doc
    assert "adds 'other' to target 'shop''s restore_into" in doc["error"]["message"], doc
    # --clean over another target's database is refused as the API refuses it, even into a listed target
    code, doc = cli("--database", "shop", "--into-target", "copy1", "--clean", "--confirm", "shop")
    assert code == 2 and "only on the backup's own target" in doc["error"]["message"], doc
    # a database that exists, without --clean
    code, doc = cli("--database", "shop")
    assert code == 2 and doc["error"]["code"] == "conflict", doc
    assert "already exists on target 'shop'" in doc["error"]["message"], doc
    assert databases(pg) == before
    # the listed target is allowed
    code, doc = cli("--database", "copied", "--into-target", "copy1")
    assert code == 0 and doc["status"] == "SUCCEEDED", doc


def forged_job(kind: str, target_name: str, request: dict[str, Any], into: str | None = None) -> str:
    """A PENDING job written straight into the jobs table (as any role with PutItem on it could) and queued."""
    now = datetime.now(UTC)  # the worker's lease is on the real clock (moto's DynamoDB has no other)
    job = RestoreJob(
        restore_id="r-" + secrets.token_hex(8),
        kind=kind,  # type: ignore[arg-type]
        target=target_name,
        into_target=into or target_name,
        backup_id=request.get("backup_id"),
        request=request,
        created_at=now,
        updated_at=now,
    )
    wiring.api_services().jobs.create(job)
    return job.restore_id


@pytest.mark.parametrize(
    ("kind", "target_name", "request_body", "into", "code", "message"),
    [
        (  # replace copy1's database with shop's backup: the API answers 403
            "logical",
            "shop",
            {"backup_id": BACKUP_ID, "into": {"target": "copy1", "database": "shop"}, "options": {"clean": True}},
            "copy1",
            "forbidden",
            "only on the backup's own target",
        ),
        (  # a target shop may not restore into at all
            "logical",
            "shop",
            {"backup_id": BACKUP_ID, "into": {"target": "other", "database": "loot"}},
            "other",
            "forbidden",
            "restore_into",
        ),
        (  # over an existing database without clean
            "logical",
            "shop",
            {"backup_id": BACKUP_ID, "into": {"database": "shop"}},
            None,
            "conflict",
            "already exists",
        ),
        (  # a drill's scratch database name
            "logical",
            "shop",
            {"backup_id": BACKUP_ID, "into": {"database": "lifeboat_drill_0123456789ab"}},
            None,
            "bad_request",
            "reserved for restore drills",
        ),
        (  # a drill's instance name: the drills' sweeper would delete it as a dead drill's
            "snapshot",
            "orders",
            {"backup_id": ORDERS_SNAPSHOT, "new_id": "lifeboat-drill-0123456789abcdef"},
            None,
            "bad_request",
            "reserved for restore drills",
        ),
    ],
)
def test_the_worker_refuses_a_forged_job_and_creates_nothing(
    backed_up: None,
    pg: PostgresServer,
    kind: str,
    target_name: str,
    request_body: dict[str, Any],
    into: str | None,
    code: str,
    message: str,
) -> None:
    if kind == "snapshot":  # a real snapshot to restore: without the check the worker would create the instance
        boto3.client("rds").create_db_instance(
            DBInstanceIdentifier="orders-db",
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            AllocatedStorage=20,
            MasterUsername="admin",
            MasterUserPassword="not-used-here-1",
            Tags=[{"Key": "lifeboat:backup-source", "Value": "true"}],
        )
        start_snapshot(wiring.snapshot_services(), "orders", SLOT)
    before = databases(pg)
    shop_tables = pg.psql("SELECT count(*) FROM pg_class", dbname="shop")
    rid = forged_job(kind, target_name, request_body, into)
    done = run_restore_job(wiring.api_services(), rid)
    assert done.status == "FAILED" and done.error is not None, done
    assert done.error.code == code and message in done.error.message, done.error
    assert databases(pg) == before
    assert pg.psql("SELECT count(*) FROM pg_class", dbname="shop") == shop_tables
    instances = boto3.client("rds").describe_db_instances()["DBInstances"]
    assert [i["DBInstanceIdentifier"] for i in instances] in ([], ["orders-db"])


def test_a_redelivered_job_still_recognises_its_own_finished_database(backed_up: None, pg: PostgresServer) -> None:
    """The worker's "already exists" check spares the job's own finished work (its restore marker): a redelivery
    after the worker died at the very end recovers instead of failing."""
    rid = forged_job("logical", "shop", {"backup_id": BACKUP_ID, "into": {"database": "mine"}})
    svc = wiring.api_services()
    login = svc.credentials.restore_login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    # The first delivery's restore finished, and its worker died before recording it:
    restore_logical(svc.catalog.store, svc.catalog, svc.toolbox, BACKUP_ID, login, "mine", restore_id=rid)
    again = run_restore_job(svc, rid)
    assert again.status == "SUCCEEDED" and again.result["recovered"] is True, again


@pytest.mark.parametrize("name", ["wal", "base", "drills", "logical", "check", "mydrills", "shop-drills"])
def test_target_names_the_iam_key_patterns_could_match_are_refused(name: str) -> None:
    conn = {"host": "db.internal", "user": "lifeboat", "sslmode": "verify-full"}
    doc = {"settings": {"bucket": "lifeboat-test"}, "targets": [{"name": name, "connection": conn}]}
    with pytest.raises(ConfigError, match="a target may not be named"):
        parse_config(doc, "test configuration")
    for fine in ("walrus", "baseline", "drill", "shop", "database", "renewal", "orders-database"):
        parse_config({**doc, "targets": [{"name": fine, "connection": conn}]}, "test configuration")
