"""Who may restore what, where, and how many at once: destinations come from the configuration (a target's own
server, or one its restore_into lists), each route's path names its target, restores log in with their own
credentials, and quotas bound the restores that are pending or running."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from tests.reliability import flows

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
BACKUP_ID = "logical:shop:20261129T030000Z"
COPIES = [f"copy{i}" for i in range(1, 6)]
RESTORER, RESTORER_PASSWORD = "lifeboat_restorer", "r3store-Only-pw"


@pytest.fixture(scope="module")
def restorer(pg: PostgresServer) -> Iterator[str]:
    """A login of its own for restores (CREATEDB), apart from the read-mostly backup login."""
    pg.psql(f"CREATE ROLE {RESTORER} LOGIN CREATEDB PASSWORD '{RESTORER_PASSWORD}'")
    yield RESTORER
    for name in pg.psql(f"SELECT datname FROM pg_database WHERE datdba = '{RESTORER}'::regrole").split():
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg.psql(f"DROP ROLE IF EXISTS {RESTORER}")


def configure(aws: LocalStack, pg: PostgresServer, path: Path, monkeypatch: pytest.MonkeyPatch, **shop: Any) -> None:
    """shop (may restore into copy1..copy5), the five copies, and 'other' (not in shop's restore_into); all on
    the test server."""
    spec = target("shop", pg.port, aws.secret_arn)
    spec.update(restore_into=COPIES, **shop)
    copies = [target(name, pg.port, aws.secret_arn, schedule=None) for name in [*COPIES, "other"]]
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(path, aws.bucket, [spec, *copies])))


@pytest.fixture
def api(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    configure(aws, pg, tmp_path / "lifeboat.json", monkeypatch)
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    with flows.lambda_client() as c:
        yield c


def restore(c: Any, into: str | None, database: str, source: str = "shop", **options: Any) -> Any:
    body: dict[str, Any] = {"backup_id": BACKUP_ID, "into": {"database": database}}
    if into is not None:
        body["into"]["target"] = into
    if options:
        body["options"] = options
    return flows.post(c, f"/targets/{source}/restores", body)


def error_of(response: Any) -> dict[str, str]:
    doc: dict[str, str] = json.loads(response.body)
    return doc


def test_into_a_target_not_listed_in_restore_into_is_403(api: Any) -> None:
    for into in ("other", "nope", "prod-like-name"):
        r = restore(api, into, "loot")
        assert r.status_code == 403, r.body
        assert error_of(r)["error"] == "forbidden"
        assert "restore_into" in error_of(r)["message"] and "'copy1'" in error_of(r)["message"]
    # Replacing a database is no back door: clean+confirm is refused the same way, before anything is looked at.
    r = restore(api, "other", "shop", clean=True, confirm="shop")
    assert r.status_code == 403, r.body
    assert (
        boto3.client("sqs").get_queue_attributes(
            QueueUrl=os.environ["LIFEBOAT_RESTORE_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "0"
    )


def test_into_a_listed_target_and_by_default_the_own_one(api: Any, pg: PostgresServer) -> None:
    try:
        own = restore(api, None, "shop_own")
        listed = restore(api, "copy3", "shop_listed")
        assert own.status_code == listed.status_code == 202, (own.body, listed.body)
        assert error_of(listed)["into_target"] == "copy3" and error_of(own)["into_target"] == "shop"
        assert {r["status"] for r in flows.drain_restores(api)} == {"SUCCEEDED"}
        status, job = flows.get(api, listed.headers["Location"])
        assert status == 200 and job["result"]["server"] == "copy3", job
        assert pg.psql("SELECT count(*) FROM sales.orders", dbname="shop_listed") == "4000"
    finally:
        for name in ("shop_own", "shop_listed"):
            pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_restore_is_read_only_under_its_own_target(api: Any) -> None:
    r = restore(api, None, "shop_seen")
    restore_id = error_of(r)["restore_id"]
    assert flows.get(api, f"/targets/shop/restores/{restore_id}")[0] == 200
    assert [j["restore_id"] for j in flows.get(api, "/targets/shop/restores")[1]["restores"]] == [restore_id]
    for other in ("copy1", "other"):  # another target's path: as if it did not exist
        status, body = flows.get(api, f"/targets/{other}/restores/{restore_id}")
        assert status == 404 and body["error"] == "not_found", body
        assert flows.get(api, f"/targets/{other}/restores")[1]["restores"] == []
    assert flows.get(api, f"/targets/nope/restores/{restore_id}")[0] == 404
    assert flows.get(api, "/targets/nope/restores")[0] == 404


def test_the_old_target_less_routes_are_gone(api: Any) -> None:
    import app as lambda_app

    paths = set(lambda_app.app.routes)
    assert paths == {
        "/targets/{target}/backups",
        "/targets/{target}/drills",
        "/targets/{target}/restores",
        "/targets/{target}/restores/{restore_id}",
    }
    for path in ("/restores", "/backups?target=shop"):
        assert api.http.get(path).status_code in (403, 404)


def test_the_eleventh_restore_is_429(api: Any) -> None:
    """Defaults: 10 pending or running restores in all, 2 into one target."""
    accepted = [restore(api, into, f"q_{into}_{n}") for into in ("shop", *COPIES[:4]) for n in (1, 2)]
    assert [r.status_code for r in accepted] == [202] * 10, [r.body for r in accepted]
    eleventh = restore(api, COPIES[4], "q_eleventh")
    assert eleventh.status_code == 429, eleventh.body
    assert error_of(eleventh)["error"] == "too_many_restores"
    assert "settings.max_running_restores" in error_of(eleventh)["message"]


def test_a_third_restore_into_one_target_is_429_until_one_finishes(api: Any, pg: PostgresServer) -> None:
    try:
        first, second = restore(api, "copy1", "q_a"), restore(api, "copy1", "q_b")
        assert first.status_code == second.status_code == 202
        third = restore(api, "copy1", "q_c")
        assert third.status_code == 429 and "'copy1'" in error_of(third)["message"], third.body
        assert restore(api, "copy2", "q_c").status_code == 202  # another target has room
        flows.drain_restores(api)  # they finish: room again
        assert restore(api, "copy1", "q_d").status_code == 202
    finally:
        for name in ("q_a", "q_b", "q_c"):
            pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_quotas_are_configurable(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(aws, pg, tmp_path / "lifeboat.json", monkeypatch, max_running_restores=1)
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    with flows.lambda_client() as c:
        assert restore(c, None, "q_one").status_code == 202
        assert restore(c, None, "q_two").status_code == 429
        assert restore(c, "copy1", "q_two").status_code == 202


def test_restores_log_in_with_their_own_credentials(
    aws: LocalStack, pg: PostgresServer, restorer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = boto3.client("secretsmanager").create_secret(Name="lifeboat/restorer", SecretString=RESTORER_PASSWORD)
    connection = {"restore_user": restorer, "restore_password_secret": secret["ARN"]}
    spec = target("shop", pg.port, aws.secret_arn)
    spec["connection"].update(connection)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "lifeboat.json", aws.bucket, [spec])))
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"  # the backup login
    with flows.lambda_client() as c:
        r = restore(c, None, "shop_by_restorer", no_owner=True)
        assert r.status_code == 202, r.body
        assert [x["status"] for x in flows.drain_restores(c)] == ["SUCCEEDED"]
    owner = pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop_by_restorer'")
    assert owner == restorer
    assert (
        pg.psql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'orders'", dbname="shop_by_restorer")
        == restorer
    )


# --- findings of the review (each failed on the first version of the per-target API) -----------------------


def test_replacing_with_a_selection_is_refused(api: Any) -> None:
    """clean + tables would swap the whole live database for one table, and report it verified."""
    r = restore(api, None, "shop", clean=True, confirm="shop", tables=["sales.customers"])
    assert r.status_code == 400, r.body
    assert "cannot be combined" in error_of(r)["message"]


def test_replacing_a_database_of_another_target_is_forbidden(api: Any) -> None:
    """restore_into lets shop's backups reach copy1 as new databases, never replace copy1's own."""
    r = restore(api, "copy1", "shop", clean=True, confirm="shop")
    assert r.status_code == 403, r.body
    assert "only on the backup's own target" in error_of(r)["message"]


def test_a_job_of_another_target_answers_like_an_unknown_id(api: Any) -> None:
    restore_id = error_of(restore(api, None, "shop_oracle"))["restore_id"]
    known = flows.get(api, f"/targets/copy1/restores/{restore_id}")[1]
    unknown = flows.get(api, "/targets/copy1/restores/r-0000000000000000")[1]
    assert known["message"].replace(restore_id, "ID") == unknown["message"].replace("r-0000000000000000", "ID")


def test_idempotency_keys_are_scoped_to_the_target_and_caller(api: Any) -> None:
    """The same key from another caller (or under another target) neither answers nor blocks its request."""
    from chalicelib import api as api_ops
    from chalicelib.restore.requests import parse_restore_request

    table = os.environ["LIFEBOAT_JOBS_TABLE"]
    mine = parse_restore_request({"backup_id": BACKUP_ID, "into": {"database": "shop_key_a"}}, "shop")
    theirs = parse_restore_request({"backup_id": BACKUP_ID, "into": {"database": "shop_key_b"}}, "shop")
    first = api_ops.start_restore_once(wiring.api_services(), mine, "guessable-1", table, scope="shop|arn:alice")
    again = api_ops.start_restore_once(wiring.api_services(), mine, "guessable-1", table, scope="shop|arn:alice")
    other = api_ops.start_restore_once(wiring.api_services(), theirs, "guessable-1", table, scope="shop|arn:bob")
    assert first["restore_id"] == again["restore_id"] != other["restore_id"]
    # Through the route, a repeat with the same key and body answers with the same job.
    body = json.dumps({"backup_id": BACKUP_ID, "into": {"target": "copy2", "database": "shop_key_c"}})
    headers = {"Content-Type": "application/json", "Idempotency-Key": "k-1"}
    r1 = api.http.post("/targets/shop/restores", body=body, headers=headers)
    r2 = api.http.post("/targets/shop/restores", body=body, headers=headers)
    assert r1.status_code == r2.status_code == 202 and error_of(r1)["restore_id"] == error_of(r2)["restore_id"]


def test_deeply_nested_json_is_a_400_not_a_500(api: Any) -> None:
    depth = 7_000
    r = api.http.post(
        "/targets/shop/restores", body="[" * depth + "]" * depth, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.body
