"""Restores do exactly what was asked, on a multi-MiB backup with real PostgreSQL servers.

- a selective restore (schema, `schema.table`, bare table) of a backup far larger than one read brings back
  exactly the tables asked for, verified against the whole object's SHA-256, with the extension its columns
  use (citext), from the library and the CLI; a name that matches nothing is refused before anything exists;
- a replace restore of the target's own database (the login's database) swaps the verified copy in and keeps
  the old one renamed; a failure injected between the two renames leaves the original under its name;
- `--globals` into a fresh server without the dump's roles gives a database equal to its source;
- a snapshot id, an archive newer than the server: refused before anything is created.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.adapters.postgres import Login
from chalicelib.cli import main
from chalicelib.errors import BadRequestError, RestoreError
from chalicelib.logical import databases
from chalicelib.logical import restore as restore_module
from chalicelib.logical.dump import BackupServices, run_logical_backup
from chalicelib.logical.restore import RestoreOptions, restore_logical
from devstack import pgbin
from devstack.local import LocalStack
from devstack.postgres import SUPERUSER_PASSWORD, PostgresServer
from tests.reliability.conftest import ConfigWriter

SOURCE = "lifeboat_scope"
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
ORDERS = 120_000  # two md5s a row: ~10 MB of table, a dump of several MiB

SCHEMA_SQL = f"""
CREATE EXTENSION IF NOT EXISTS citext;
CREATE ROLE scope_app NOLOGIN;
CREATE ROLE scope_reader NOLOGIN;
GRANT scope_app TO lifeboat_backup;
CREATE SCHEMA sales AUTHORIZATION scope_app;
CREATE SCHEMA audit AUTHORIZATION scope_app;
SET ROLE scope_app;
CREATE TABLE sales.customers (id int PRIMARY KEY, email citext NOT NULL UNIQUE);
CREATE TABLE sales.orders (id int PRIMARY KEY, customer_id int REFERENCES sales.customers, note text);
CREATE TABLE audit.events (id bigserial PRIMARY KEY, what text);
INSERT INTO sales.customers SELECT g, 'User' || g || '@Example.com' FROM generate_series(1, 500) g;
INSERT INTO sales.orders SELECT g, 1 + g % 500, md5(g::text || random()::text) || md5(random()::text)
  FROM generate_series(1, {ORDERS}) g;
INSERT INTO audit.events (what) SELECT 'event ' || g FROM generate_series(1, 1000) g;
GRANT USAGE ON SCHEMA sales TO scope_reader;
GRANT SELECT ON sales.customers TO scope_reader;
RESET ROLE;
SET ROLE lifeboat_backup;
CREATE TABLE public.orders (id int PRIMARY KEY, total numeric);
INSERT INTO public.orders SELECT g, g * 1.5 FROM generate_series(1, 42) g;
RESET ROLE;
"""


@pytest.fixture(scope="module")
def scope_db(pg: PostgresServer) -> Iterator[str]:
    pg.psql("DROP ROLE IF EXISTS scope_app; DROP ROLE IF EXISTS scope_reader")
    pg.psql(f"CREATE DATABASE {SOURCE} OWNER lifeboat_backup")
    try:
        pg.psql(SCHEMA_SQL, dbname=SOURCE)
        yield SOURCE
    finally:
        pg.psql(f"DROP DATABASE IF EXISTS {SOURCE} WITH (FORCE)")
        for role in ("scope_reader", "scope_app"):
            if pg.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'") == "1":
                for db in ("postgres", "shop"):
                    pg.psql(f"DROP OWNED BY {role} CASCADE", dbname=db)
                pg.psql(f"DROP ROLE {role}")


@pytest.fixture
def backed_up(aws: LocalStack, scope_db: str, write_lifeboat_config: ConfigWriter) -> tuple[BackupServices, str]:
    write_lifeboat_config(aws, database=scope_db, globals=True)
    svc = wiring.backup_services()
    outcome = run_logical_backup(svc, "shop", SLOT)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    assert outcome.manifest.size > 4 * 1024 * 1024, "the fixture must span several reads and parts"
    return svc, outcome.backup_id


def login_of(svc: BackupServices) -> Login:
    return svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]


def counts(pg: PostgresServer, db: str) -> dict[str, int]:
    rows = pg.psql(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid ="
        " c.relnamespace WHERE c.relkind = 'r' AND n.nspname IN ('public', 'sales', 'audit')"
        " ORDER BY 1",
        dbname=db,
    )
    return {t: int(pg.psql(f"SELECT count(*) FROM {t}", dbname=db)) for t in rows.split("\n") if t}


@pytest.mark.parametrize(
    ("schemas", "tables", "expected"),
    [
        (("sales",), (), {"sales.customers": 500, "sales.orders": ORDERS}),
        ((), ("sales.customers",), {"sales.customers": 500}),
        ((), ("orders",), {"sales.orders": ORDERS, "public.orders": 42}),
        (("audit",), ("public.orders",), {"audit.events": 1000, "public.orders": 42}),
    ],
)
def test_selective_restore_brings_back_exactly_what_was_asked(
    pg: PostgresServer,
    backed_up: tuple[BackupServices, str],
    stray_databases: Callable[[], set[str]],
    schemas: tuple[str, ...],
    tables: tuple[str, ...],
    expected: dict[str, int],
) -> None:
    svc, backup_id = backed_up
    for jobs in (1, 2):  # streamed into pg_restore, and downloaded for pg_restore -j
        copy = f"scope_sel_{jobs}"
        result = restore_logical(
            svc.store,
            svc.catalog,
            svc.toolbox,
            backup_id,
            login_of(svc),
            copy,
            RestoreOptions(schemas=schemas, tables=tables, jobs=jobs),
        )
        assert result.verified and result.verification["tables_checked"] == len(expected), result.verification
        assert counts(pg, copy) == expected
        if "sales.customers" in expected:  # the citext column came back with its extension
            assert pg.psql("SELECT count(*) FROM sales.customers WHERE email = 'user7@example.COM'", dbname=copy) == "1"
    assert stray_databases() == {"scope_sel_1", "scope_sel_2"}


def test_selective_restore_from_the_cli(
    pg: PostgresServer, backed_up: tuple[BackupServices, str], stray_databases: Callable[[], set[str]]
) -> None:
    _, backup_id = backed_up
    out = io.StringIO()
    assert main(["restore", backup_id, "--database", "scope_cli", "--table", "sales.customers"], out=out) == 0
    assert counts(pg, "scope_cli") == {"sales.customers": 500}
    assert "1 tables, 500 rows match" in out.getvalue()


@pytest.mark.parametrize(
    ("schemas", "tables", "message"),
    [
        ((), ("sales.nope",), "has no table sales.nope"),
        (("nope",), (), "the backup has no schema nope"),
        ((), ("Sales.Customers",), "has no table Sales.Customers"),
    ],
)
def test_a_selection_that_matches_nothing_is_refused_before_anything_exists(
    backed_up: tuple[BackupServices, str],
    stray_databases: Callable[[], set[str]],
    schemas: tuple[str, ...],
    tables: tuple[str, ...],
    message: str,
) -> None:
    svc, backup_id = backed_up
    with pytest.raises(BadRequestError, match=message):
        restore_logical(
            svc.store,
            svc.catalog,
            svc.toolbox,
            backup_id,
            login_of(svc),
            "scope_none",
            RestoreOptions(schemas=schemas, tables=tables),
        )
    assert stray_databases() == set()


def test_a_snapshot_id_is_not_restored_as_a_dump(
    backed_up: tuple[BackupServices, str], stray_databases: Callable[[], set[str]]
) -> None:
    svc, backup_id = backed_up
    snapshot_id = backup_id.replace("logical:", "snapshot:")
    with pytest.raises(BadRequestError, match="not a logical dump"):
        restore_logical(svc.store, svc.catalog, svc.toolbox, snapshot_id, login_of(svc), "scope_snap")
    assert main(["restore", snapshot_id, "--database", "scope_snap"], out=io.StringIO()) == 2
    assert stray_databases() == set()


def test_an_archive_newer_than_the_server_is_refused_before_anything_exists(
    backed_up: tuple[BackupServices, str], stray_databases: Callable[[], set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, backup_id = backed_up
    monkeypatch.setattr(restore_module, "server_major_of", lambda login: 14)
    with pytest.raises(BadRequestError, match="PostgreSQL 14 cannot load it"):
        restore_logical(svc.store, svc.catalog, svc.toolbox, backup_id, login_of(svc), "scope_down")
    assert stray_databases() == set()


def test_replace_restore_of_the_targets_own_database(
    pg: PostgresServer, backed_up: tuple[BackupServices, str], stray_databases: Callable[[], set[str]]
) -> None:
    svc, backup_id = backed_up
    login = login_of(svc)
    assert login.database == SOURCE  # the login's own database is the one replaced
    pg.psql("INSERT INTO public.orders VALUES (1000, 0)", dbname=SOURCE)  # a change after the backup
    result = restore_logical(
        svc.store, svc.catalog, svc.toolbox, backup_id, login, SOURCE, RestoreOptions(replace=True)
    )
    kept = result.replaced_database_kept_as
    assert result.verified and kept and kept.startswith(f"{SOURCE}_replaced_")
    assert counts(pg, SOURCE)["public.orders"] == 42
    assert counts(pg, kept)["public.orders"] == 43  # the old database, renamed, untouched
    assert stray_databases() == {kept}


def test_a_failure_between_the_renames_puts_the_original_back(
    pg: PostgresServer,
    backed_up: tuple[BackupServices, str],
    stray_databases: Callable[[], set[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svc, backup_id = backed_up
    real_rename = databases.rename_database
    calls: list[tuple[str, str]] = []

    def flaky(conn: Any, old: str, new: str) -> None:
        calls.append((old, new))
        if len(calls) == 2:  # the verified copy into place
            conn.execute("SELECT 1/0")
        real_rename(conn, old, new)

    monkeypatch.setattr(databases, "rename_database", flaky)
    before = counts(pg, SOURCE)
    with pytest.raises(RestoreError, match="was put back under its name, unchanged"):
        restore_logical(
            svc.store, svc.catalog, svc.toolbox, backup_id, login_of(svc), SOURCE, RestoreOptions(replace=True)
        )
    assert [c[1] for c in calls][1] == SOURCE and calls[2] == (calls[0][1], SOURCE)
    assert counts(pg, SOURCE) == before
    assert stray_databases() == set()  # the verified copy was dropped, the original kept its name


@pytest.fixture
def fresh_server() -> Iterator[PostgresServer]:
    server = PostgresServer(pgbin.server_bin(pgbin.debian_majors()[-1] if pgbin.debian_majors() else 17)).start()
    yield server
    server.destroy()


def pg_dump_of(server: PostgresServer, db: str) -> str:
    out = subprocess.run(
        [
            str(server.bin_dir / "pg_dump"),
            "--no-sync",
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            "postgres",
            "-d",
            db,
        ],
        env={"PGPASSWORD": SUPERUSER_PASSWORD, "PATH": os.environ.get("PATH", "/usr/bin")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def test_globals_restore_into_a_fresh_server_equals_the_source(
    pg: PostgresServer, fresh_server: PostgresServer, backed_up: tuple[BackupServices, str]
) -> None:
    svc, backup_id = backed_up
    login = replace(
        login_of(svc), port=fresh_server.port, user="postgres", password=SUPERUSER_PASSWORD, database="postgres"
    )
    without = restore_module.restore_logical
    with pytest.raises(RestoreError, match="role scope_app named in the backup does not exist"):
        without(svc.store, svc.catalog, svc.toolbox, backup_id, login, SOURCE)
    result = restore_logical(
        svc.store, svc.catalog, svc.toolbox, backup_id, login, SOURCE, RestoreOptions(globals=True)
    )
    assert result.verified
    assert result.roles is not None and {"scope_app", "scope_reader", "lifeboat_backup"} <= set(result.roles["created"])
    assert not any(s.startswith("CREATE ROLE postgres") for s in result.roles["failed"])
    assert pg_dump_of(fresh_server, SOURCE) == pg_dump_of(pg, SOURCE)


def test_replacing_with_a_selection_is_refused_before_anything_exists(
    backed_up: tuple[BackupServices, str], stray_databases: Callable[[], set[str]]
) -> None:
    svc, backup_id = backed_up
    with pytest.raises(BadRequestError, match=r"a selection .* goes into a new database"):
        restore_logical(
            svc.store,
            svc.catalog,
            svc.toolbox,
            backup_id,
            login_of(svc),
            SOURCE,
            RestoreOptions(replace=True, tables=("sales.customers",)),
        )
    assert stray_databases() == set()


def test_selective_restore_through_the_api_job(
    pg: PostgresServer, backed_up: tuple[BackupServices, str], stray_databases: Callable[[], set[str]]
) -> None:
    """The API's path: POST body → job → worker, for a multi-MiB backup and one qualified table."""
    from chalicelib.restore.requests import parse_restore_request
    from chalicelib.restore.service import run_restore_job, start_restore

    _, backup_id = backed_up
    svc = wiring.api_services()
    body = {"backup_id": backup_id, "into": {"database": "scope_api"}, "options": {"tables": ["sales.customers"]}}
    job = start_restore(svc, parse_restore_request(body, "shop"))
    done = run_restore_job(svc, job.restore_id)
    assert done.status == "SUCCEEDED", done.error
    assert done.result["verification"]["match"] is True and done.result["verification"]["tables_checked"] == 1
    assert counts(pg, "scope_api") == {"sales.customers": 500}
    assert stray_databases() == {"scope_api"}
