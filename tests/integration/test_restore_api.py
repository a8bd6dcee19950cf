"""The restore API through Chalice's test client, against moto server and a real PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack
from devstack.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
BACKUP_ID = "logical:shop:20261129T030000Z"
RESTORES = "/targets/shop/restores"


@pytest.fixture
def api(config_path: Path, aws: LocalStack) -> Iterator[Any]:
    from datetime import UTC, datetime

    import app as lambda_app
    from chalicelib.logical.dump import run_logical_backup
    from chalicelib.wiring import backup_services

    assert run_logical_backup(backup_services(), "shop", datetime(2026, 11, 29, 3, tzinfo=UTC)).status == "SUCCEEDED"
    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        yield c


def post(c: Any, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return c.http.post(path, body=raw, headers={"Content-Type": "application/json", **(headers or {})})


def run_restore_worker(c: Any) -> list[Any]:
    sqs = boto3.client("sqs")
    url = os.environ["LIFEBOAT_RESTORE_QUEUE_URL"]
    out = []
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        out.extend(
            c.lambda_.invoke(
                "restore_worker",
                c.events.generate_sqs_event(message_bodies=[message["Body"]], queue_name="pg-lifeboat-restores"),
            ).payload
        )
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return out


def get_json(c: Any, path: str) -> tuple[int, Any]:
    r = c.http.get(path)
    return r.status_code, json.loads(r.body)


@pytest.fixture
def cleanup_dbs(pg: PostgresServer) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    for name in pg.psql("SELECT datname FROM pg_database WHERE datname LIKE 'shop%replaced%'").split():
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_logical_restore_into_new_database(api: Any, pg: PostgresServer, cleanup_dbs: list[str]) -> None:
    cleanup_dbs.append("shop_api")
    r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_api"}})
    assert r.status_code == 202, r.body
    job = json.loads(r.body)
    assert job["status"] == "PENDING" and r.headers["Location"] == f"{RESTORES}/{job['restore_id']}"
    assert run_restore_worker(api) == [{"restore_id": job["restore_id"], "status": "SUCCEEDED"}]
    status, done = get_json(api, f"{RESTORES}/{job['restore_id']}")
    assert status == 200 and done["status"] == "SUCCEEDED", done
    assert done["result"]["verification"]["match"] is True
    assert done["result"]["verification"]["tables_checked"] == 4
    assert done["progress"]["bytes_restored"] > 0
    assert done["started_at"] and done["finished_at"]
    assert pg.psql("SELECT count(*) FROM sales.orders", dbname="shop_api") == "4000"
    status, listing = get_json(api, RESTORES)
    assert [j["restore_id"] for j in listing["restores"]] == [job["restore_id"]]


def test_schema_selection(api: Any, pg: PostgresServer, cleanup_dbs: list[str]) -> None:
    cleanup_dbs.append("shop_sales")
    r = post(
        api,
        RESTORES,
        {
            "backup_id": BACKUP_ID,
            "into": {"target": "shop", "database": "shop_sales"},
            "options": {"schemas": ["sales"], "no_owner": True},
        },
    )
    assert r.status_code == 202, r.body
    run_restore_worker(api)
    _, done = get_json(api, f"{RESTORES}/{json.loads(r.body)['restore_id']}")
    assert done["status"] == "SUCCEEDED", done
    assert done["result"]["verification"]["tables_checked"] == 2
    assert (
        pg.psql(
            "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname IN"
            " ('sales', 'inventory')",
            dbname="shop_sales",
        )
        == "sales"
    )


def test_existing_database_is_409(api: Any) -> None:
    r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop"}})
    assert r.status_code == 409
    assert json.loads(r.body)["error"] == "conflict"


def test_clean_without_confirm_is_409(api: Any) -> None:
    r = post(
        api,
        RESTORES,
        {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop"}, "options": {"clean": True}},
    )
    assert r.status_code == 409
    assert "confirm" in json.loads(r.body)["message"]


def test_clean_with_confirm_replaces_and_keeps_the_old_database(
    api: Any, pg: PostgresServer, cleanup_dbs: list[str]
) -> None:
    cleanup_dbs.append("shop_target")
    pg.psql("CREATE DATABASE shop_target OWNER lifeboat_backup")
    pg.psql("CREATE TABLE marker (x int); INSERT INTO marker VALUES (42)", dbname="shop_target")
    r = post(
        api,
        RESTORES,
        {
            "backup_id": BACKUP_ID,
            "into": {"target": "shop", "database": "shop_target"},
            "options": {"clean": True, "confirm": "shop_target"},
        },
    )
    assert r.status_code == 202, r.body
    run_restore_worker(api)
    _, done = get_json(api, f"{RESTORES}/{json.loads(r.body)['restore_id']}")
    assert done["status"] == "SUCCEEDED", done
    kept = done["result"]["replaced_database_kept_as"]
    assert kept and kept.startswith("shop_target_replaced_")
    assert pg.psql("SELECT x FROM marker", dbname=kept) == "42"  # nothing lost
    assert pg.psql("SELECT count(*) FROM sales.orders", dbname="shop_target") == "4000"


def test_tampered_object_is_refused(api: Any, aws: LocalStack, pg: PostgresServer) -> None:
    s3 = boto3.client("s3")
    key = "logical/shop/2026/11/29/20261129T030000Z/database.dump"
    data = bytearray(s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    s3.put_object(Bucket=aws.bucket, Key=key, Body=bytes(data))
    r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_tampered"}})
    assert r.status_code == 202
    run_restore_worker(api)
    _, done = get_json(api, f"{RESTORES}/{json.loads(r.body)['restore_id']}")
    assert done["status"] == "FAILED"
    assert done["error"]["code"] == "integrity_failed", done
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'shop_tampered'") == "0"


def test_truncated_object_is_refused(api: Any, aws: LocalStack, pg: PostgresServer) -> None:
    s3 = boto3.client("s3")
    key = "logical/shop/2026/11/29/20261129T030000Z/database.dump"
    data = s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=aws.bucket, Key=key, Body=data[: len(data) // 2])
    r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_truncated"}})
    run_restore_worker(api)
    _, done = get_json(api, f"{RESTORES}/{json.loads(r.body)['restore_id']}")
    assert done["status"] == "FAILED" and done["error"]["code"] == "integrity_failed"
    assert "truncated" in done["error"]["message"]
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'shop_truncated'") == "0"


def test_idempotent_retry_returns_the_same_job(api: Any) -> None:
    body = {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_idem"}}
    first = post(api, RESTORES, body, {"Idempotency-Key": "k-123"})
    second = post(api, RESTORES, body, {"Idempotency-Key": "k-123"})
    assert first.status_code == second.status_code == 202
    assert json.loads(first.body)["restore_id"] == json.loads(second.body)["restore_id"]
    other = post(
        api, RESTORES, {**body, "into": {"target": "shop", "database": "shop_other"}}, {"Idempotency-Key": "k-123"}
    )
    assert other.status_code == 409
    sqs = boto3.client("sqs")
    attrs = sqs.get_queue_attributes(
        QueueUrl=os.environ["LIFEBOAT_RESTORE_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "1"


def test_worker_crash_after_restore_is_recovered(api: Any, pg: PostgresServer, cleanup_dbs: list[str]) -> None:
    """pg_restore finished but the worker died before recording success: the redelivery must not
    restore twice, and must not leave the job lost."""
    from datetime import timedelta

    from chalicelib import wiring
    from chalicelib.restore import service as restores

    cleanup_dbs.append("shop_crash")
    r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_crash"}})
    restore_id = json.loads(r.body)["restore_id"]
    svc = wiring.api_services()
    job = svc.jobs.get(restore_id)
    # The first worker: takes the job, restores, then dies (no save). Its lease has run out.
    svc.jobs.start(job, timedelta(seconds=-1))
    login = svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    restores.restore_logical(
        svc.catalog.store, svc.catalog, svc.toolbox, BACKUP_ID, login, "shop_crash", restore_id=restore_id
    )
    pg.psql("CREATE TABLE sales.added_after (x int)", dbname="shop_crash")  # a second restore would fail on this
    assert run_restore_worker(api) == [{"restore_id": restore_id, "status": "SUCCEEDED"}]
    _, done = get_json(api, f"{RESTORES}/{restore_id}")
    assert done["status"] == "SUCCEEDED" and done["result"]["recovered"] is True
    assert done["attempts"] == 2
    assert pg.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'added_after'", dbname="shop_crash") == "1"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "x"}, "surprise": 1}, 400, "surprise"),
        ({"backup_id": BACKUP_ID, "into": {"target": "shop", "database": 5}}, 400, "into.database"),
        ({"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "x; DROP"}}, 400, "into.database"),
        (
            {"backup_id": BACKUP_ID, "into": {"database": "x", "connection": {"host": "127.0.0.1", "user": "u"}}},
            400,
            "into.connection",
        ),
        ({"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "x"}, "options": {"jobs": 99}}, 400, "jobs"),
        (
            {"backup_id": "logical:shop:20200101T000000Z", "into": {"target": "shop", "database": "x"}},
            404,
            "no complete",
        ),
        (
            {"backup_id": "logical:nope:20200101T000000Z", "into": {"target": "shop", "database": "x"}},
            400,
            "post it to /targets/nope/restores",
        ),
        ({"backup_id": "logical:shop:garbage", "into": {"target": "shop", "database": "x"}}, 400, "not a backup id"),
        ({"backup_id": BACKUP_ID, "into": {"target": "nope", "database": "x"}}, 403, "restored into 'shop' only"),
        ({"target": "shop", "point_in_time": "latest", "new_id": "-bad-"}, 400, "new_id"),
        ({}, 400, "give backup_id"),
        (b"{" + b" " * 20000 + b"}", 400, "limit"),
    ],
)
def test_bad_input_gets_a_clear_4xx(api: Any, body: Any, status: int, needle: str) -> None:
    r = post(api, RESTORES, body)
    assert r.status_code == status, r.body
    doc = json.loads(r.body)
    assert set(doc) == {"error", "message"} and needle in doc["message"], doc


def test_list_backups_and_on_demand_backup(api: Any) -> None:
    status, listing = get_json(api, "/targets/shop/backups")
    assert status == 200 and [b["backup_id"] for b in listing["backups"]] == [BACKUP_ID]
    assert get_json(api, "/targets/shop/backups?kind=weird")[0] == 400
    assert get_json(api, "/targets/nope/backups")[0] == 404
    assert post(api, "/targets/shop/backups", {"target": "shop"}).status_code == 400  # the path names the target
    r = post(api, "/targets/shop/backups", {"kind": "logical"})
    assert r.status_code == 202 and json.loads(r.body)["status"] == "QUEUED"
    messages = boto3.client("sqs").receive_message(QueueUrl=os.environ["LIFEBOAT_BACKUP_QUEUE_URL"]).get("Messages")
    assert messages and json.loads(messages[0]["Body"])["target"] == "shop"
    assert get_json(api, f"{RESTORES}/r-doesnotexist")[0] == 404


def test_replace_without_ownership_fails_cleanly(api: Any, pg: PostgresServer, cleanup_dbs: list[str]) -> None:
    cleanup_dbs.append("shop_foreign")
    pg.psql("CREATE DATABASE shop_foreign")  # owned by the superuser, not by the restoring role
    pg.psql("CREATE TABLE keep (x int); INSERT INTO keep VALUES (7)", dbname="shop_foreign")
    r = post(
        api,
        RESTORES,
        {
            "backup_id": BACKUP_ID,
            "into": {"target": "shop", "database": "shop_foreign"},
            "options": {"clean": True, "confirm": "shop_foreign"},
        },
    )
    run_restore_worker(api)
    _, done = get_json(api, f"{RESTORES}/{json.loads(r.body)['restore_id']}")
    assert done["status"] == "FAILED" and "must own it" in done["error"]["message"], done
    assert pg.psql("SELECT x FROM keep", dbname="shop_foreign") == "7"
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'shop_foreign_lifeboat_%'") == "0"


def test_deadline_mid_restore_fails_cleanly(api: Any, pg: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow read from S3 runs into the Lambda limit: pg_restore is stopped with the margin left to drop the
    new database and record the failure."""
    import time

    from chalicelib import wiring
    from chalicelib.restore import service as restores

    r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_late"}})
    restore_id = json.loads(r.body)["restore_id"]
    svc = wiring.api_services()
    real_open = svc.catalog.store.open_stream

    class Slow:
        def __init__(self, body: Any) -> None:
            self.body = body

        def read(self, n: int = -1) -> bytes:
            time.sleep(0.05)
            return self.body.read(2048)  # type: ignore[no-any-return]

        def __enter__(self) -> Slow:
            return self

        def __exit__(self, *exc: object) -> None:
            self.body.close()

    def slow_open(key: str, version_id: str | None = None) -> tuple[Slow, int]:
        body, size = real_open(key, version_id)
        return Slow(body), size

    monkeypatch.setattr(svc.catalog.store, "open_stream", slow_open)
    start = time.monotonic()
    remaining = lambda: int((61.5 - (time.monotonic() - start)) * 1000)  # noqa: E731
    job = restores.run_restore_job(svc, restore_id, remaining_ms=remaining)
    assert job.status == "FAILED" and job.error is not None
    assert job.error.code == "deadline_exceeded", job.error
    assert time.monotonic() - start < 10
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'shop_late'") == "0"


def test_cli_lists_restore_jobs(api: Any, cleanup_dbs: list[str]) -> None:
    import io

    from chalicelib.cli import main

    cleanup_dbs.append("shop_cli_list")
    r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_cli_list"}})
    restore_id = json.loads(r.body)["restore_id"]
    run_restore_worker(api)
    out = io.StringIO()
    assert main(["restores"], out=out) == 0
    assert restore_id in out.getvalue() and "SUCCEEDED" in out.getvalue() and "shop_cli_list" in out.getvalue()
    out = io.StringIO()
    assert main(["restores", restore_id, "--json"], out=out) == 0
    assert json.loads(out.getvalue())[0]["status"] == "SUCCEEDED"
    assert main(["restores", "r-missing"], out=io.StringIO()) == 2


def test_options_globals_applies_the_roles_first(api: Any, pg: PostgresServer, cleanup_dbs: list[str]) -> None:
    """options.globals: the backup's roles that the server lacks are created (here: none is missing)."""
    cleanup_dbs.append("shop_globals")
    r = post(
        api, RESTORES, {"backup_id": BACKUP_ID, "into": {"database": "shop_globals"}, "options": {"globals": True}}
    )
    assert r.status_code == 202, r.body
    run_restore_worker(api)
    _, done = get_json(api, f"{RESTORES}/{json.loads(r.body)['restore_id']}")
    assert done["status"] == "SUCCEEDED", done
    assert done["request"]["options"]["globals"] is True
    assert done["result"]["roles"]["created"] == [] and "lifeboat_backup" in str(done["result"]["roles"]["skipped"])
