"""One streamed restore costs a fixed, counted number of S3, KMS and PostgreSQL round trips, whatever the number of
tables (issue 17: the fixed costs around pg_restore). Counted on the real clients against moto and the session's
PostgreSQL, with a signed manifest: if a step grows back (a HEAD before the GET of the same version, a count per
table, an existence check before CREATE DATABASE, a second read of the manifest), a count here changes.
Every check is still made: the signature (one VerifyMac), the object's size (the GET's Content-Length) and digest,
the exact version, the row counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from chalicelib import wiring
from chalicelib.adapters.postgres import Login, connect
from chalicelib.adapters.snapshot_counts import count_rows
from chalicelib.errors import ConflictError
from chalicelib.logical import restored_counts
from chalicelib.logical.catalog import Manifest
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import RestoreOptions, restore_logical
from chalicelib.logical.restore_steps import create_database
from devstack.local import LocalStack, target, write_config
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
ALIAS = "alias/lifeboat-round-trips"
# The whole budget of one streamed restore into a new database, outside pg_restore itself.
S3_CALLS = {"ListObjectVersions": 1, "GetObject": 2}  # the backup's folder (manifest versions, objects); 2 GETs
KMS_CALLS = {"VerifyMac": 1}  # one per manifest, not per object
PG_CONNECTIONS = 2  # the maintenance session, and one into the restored database for the counts
# comment lookup, CREATE DATABASE, COMMENT (restoring), list the tables, count them all, COMMENT (restored)
PG_STATEMENTS = 6


class Calls:
    """AWS calls by service and operation, and PostgreSQL connections and statements made by this process (pg_restore
    is a child process: its own session is not counted)."""

    def __init__(self) -> None:
        self.aws: Counter[str] = Counter()
        self.pg: Counter[str] = Counter()

    def on_call(self, event_name: str, **_: Any) -> None:
        service, operation = event_name.split(".", 2)[1:]
        self.aws[f"{service}.{operation}"] += 1

    def of(self, service: str) -> dict[str, int]:
        return {k.split(".", 1)[1]: n for k, n in self.aws.items() if k.startswith(f"{service}.")}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    counted = Calls()
    clients = (wiring.client("s3"), wiring.client.get("kms"))  # the cached clients the restore uses
    for client in clients:
        client.meta.events.register("before-call.*.*", counted.on_call)
    real_connect, real_execute = psycopg.Connection.connect.__func__, psycopg.Connection.execute  # type: ignore[attr-defined]

    def connect_counted(cls: type[psycopg.Connection[Any]], *args: Any, **kwargs: Any) -> psycopg.Connection[Any]:
        counted.pg["connections"] += 1
        return real_connect(cls, *args, **kwargs)  # type: ignore[no-any-return]

    def execute_counted(self: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
        counted.pg["statements"] += 1
        return real_execute(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(connect_counted))
    monkeypatch.setattr(psycopg.Connection, "execute", execute_counted)
    yield counted
    for client in clients:
        client.meta.events.unregister("before-call.*.*", counted.on_call)


@pytest.fixture
def signed_backup(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Manifest:
    kms = boto3.client("kms")
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=ALIAS, TargetKeyId=key)
    config = write_config(
        tmp_path / "c.json", aws.bucket, [target("shop", pg.port, aws.secret_arn)], signing_key_id=ALIAS
    )
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(config))
    outcome = run_logical_backup(wiring.backup_services(), "shop", SLOT)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    assert outcome.manifest.signature is not None
    return outcome.manifest


def _restore_login() -> tuple[Any, Login]:
    cfg = wiring.load_config()
    login = wiring.credentials().restore_login(cfg.target("shop").connection)  # type: ignore[arg-type]
    return cfg, login


def test_a_streamed_restore_costs_a_fixed_number_of_round_trips(
    signed_backup: Manifest, pg: PostgresServer, calls: Calls, tmp_path: Path
) -> None:
    cfg, login = _restore_login()  # Secrets Manager and the like before counting: the restore's own calls only
    store, catalog, toolbox = wiring.store(cfg), wiring.catalog(cfg), wiring.toolbox()
    assert signed_backup.row_counts is not None and len(signed_backup.row_counts) >= 3, "counts must be per table"
    calls.aws.clear()
    calls.pg.clear()
    try:
        result = restore_logical(
            store, catalog, toolbox, signed_backup.backup_id, login, "shop_counted", RestoreOptions(), workdir=tmp_path
        )
        assert result.verified and result.verification["tables_checked"] == len(signed_backup.row_counts)
        assert calls.of("s3") == S3_CALLS, calls.aws
        assert calls.of("kms") == KMS_CALLS, calls.aws
        assert calls.pg == {"connections": PG_CONNECTIONS, "statements": PG_STATEMENTS}, calls.pg
    finally:
        pg.psql('DROP DATABASE IF EXISTS "shop_counted" WITH (FORCE)')


def test_counts_are_one_statement_per_batch_and_agree_with_the_backup_side(
    pg: PostgresServer, monkeypatch: pytest.MonkeyPatch, calls: Calls
) -> None:
    """The restore's counting (one UNION ALL per COUNT_BATCH tables) gives what the backup's count_rows gives, for
    names that need quoting too."""
    pg.psql('DROP DATABASE IF EXISTS "counted" WITH (FORCE)')
    pg.psql('CREATE DATABASE "counted"')
    try:
        pg.psql(
            'CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema"."T""1"(x int); CREATE TABLE a(x int);'
            " CREATE TABLE b(x int); CREATE TABLE c(x int); CREATE TABLE d(x int);"
            ' INSERT INTO "Odd Schema"."T""1" SELECT generate_series(1, 7); INSERT INTO a SELECT generate_series(1, 3);'
            " INSERT INTO d SELECT generate_series(1, 11)",
            dbname="counted",
        )
        login = Login("127.0.0.1", pg.port, "counted", SUPERUSER, "disable", None, password=SUPERUSER_PASSWORD)
        monkeypatch.setattr(restored_counts, "COUNT_BATCH", 2)
        with connect(login) as conn:
            expected = count_rows(conn)
            calls.pg.clear()
            counted = restored_counts.count_restored_rows(conn)
        assert counted == expected == {'Odd Schema.T"1': 7, "public.a": 3, "public.b": 0, "public.c": 0, "public.d": 11}
        assert calls.pg["statements"] == 1 + 3  # the list, then ceil(5 / 2) counting statements
    finally:
        pg.psql('DROP DATABASE IF EXISTS "counted" WITH (FORCE)')


def test_create_database_refuses_a_name_taken_since_the_look_up(pg: PostgresServer) -> None:
    """No existence check before CREATE DATABASE: a database created in between makes CREATE itself refuse, as a
    conflict that says what to do."""
    login = Login("127.0.0.1", pg.port, "postgres", SUPERUSER, "disable", None, password=SUPERUSER_PASSWORD)
    with pytest.raises(ConflictError, match=r"'shop' already exists .* restore into a new name"):
        create_database(login, "shop")
