"""Round-trip fidelity: what real schemas contain survives run_logical_backup → S3 → restore_logical.

The source (tests/reliability/fidelity_schema.py) has several schemas, quoted and non-ASCII identifiers,
an enum with values added later, domains, composite and range types, an ICU nondeterministic collation,
arrays, jsonb, hstore, citext, bytea, large objects (with a comment and a grant), a partitioned table with
a default partition, inheritance, an unlogged table, generated and identity columns, sequences at
non-default positions (one with is_called = false), views (security_barrier, check option), materialized
views (one never refreshed), SQL and PL/pgSQL functions (overloaded, SECURITY DEFINER), triggers, a rule,
row-level security policies, extended statistics, comments everywhere, grants (table, column, sequence,
type, function, large object), default privileges, objects owned by another role, and contrib extensions
(citext, hstore, pg_trgm, btree_gist). It is backed up and restored by a non-superuser, the database's
owner, as on RDS.

`pg_dump` of the source and of the restored database compare equal, after removing only the
`\\restrict` lines (a random key per run, PostgreSQL 17.6+/15.14+).

What does NOT survive a per-database logical backup, by design, and is asserted exactly:
- role passwords: globals.sql is `pg_dumpall --globals-only --no-role-passwords` (RDS does not let anyone
  read pg_authid); it equals the superuser's `pg_dumpall --globals-only` once the PASSWORD clauses are
  removed, and nothing else differs;
- database-level properties, which a pg_dump without --create does not contain: `ALTER DATABASE ... SET`
  settings, per-database role settings (`ALTER ROLE ... IN DATABASE ... SET`), the database's ACL
  (`GRANT/REVOKE CONNECT ON DATABASE`) and its comment (the restore writes its own marker there). The
  restored database gets the defaults and is owned by the restoring user.
- roles themselves are not restored by restore_logical: they must exist on the server (globals.sql is
  in the backup for a new cluster).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from chalicelib import wiring
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import restore_logical
from devstack.local import LocalStack
from devstack.postgres import SUPERUSER_PASSWORD, PostgresServer
from tests.reliability import fidelity_schema as schema
from tests.reliability.conftest import ConfigWriter

SOURCE = "lifeboat_rel_fidelity"
COPY = "lifeboat_rel_fidelity_copy"
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)


def run_chunks(pg: PostgresServer, sql: str, dbname: str, role: str | None = None) -> None:
    for chunk in re.split(r"^-- split.*$", sql, flags=re.M):
        if chunk.strip():
            pg.psql((f"SET ROLE {role};\n" if role else "") + chunk, dbname=dbname)


@pytest.fixture(scope="module")
def fidelity_db(pg: PostgresServer) -> Iterator[str]:
    pg.psql(schema.ROLES_SQL)
    pg.psql(f"CREATE DATABASE {SOURCE} OWNER lifeboat_backup")
    try:
        pg.psql(schema.database_sql(SOURCE))
        run_chunks(pg, schema.OWNER_SQL, SOURCE, "lifeboat_backup")
        run_chunks(pg, schema.APP_SQL, SOURCE, "rel_app")
        yield SOURCE
    finally:
        for db in (COPY, SOURCE):
            pg.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        pg.psql(schema.DROP_ROLES_SQL)


def superuser_tool(pg: PostgresServer, tool: str, *args: str) -> str:
    out = subprocess.run(
        [str(pg.bin_dir / tool), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", *args],
        env={"PGPASSWORD": SUPERUSER_PASSWORD, "PATH": os.environ.get("PATH", "/usr/bin")},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def normalise(dump: str) -> str:
    return "\n".join(line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def without_passwords(globals_sql: str) -> str:
    return re.sub(r" PASSWORD '[^']*'", "", normalise(globals_sql))


def test_round_trip_fidelity(
    real_s3: LocalStack,
    pg: PostgresServer,
    fidelity_db: str,
    write_lifeboat_config: ConfigWriter,
    stray_databases: Callable[[], set[str]],
) -> None:
    write_lifeboat_config(real_s3, database=fidelity_db, globals=True)
    svc = wiring.backup_services()
    outcome = run_logical_backup(svc, "shop", SLOT)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    login = svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    result = restore_logical(svc.store, svc.catalog, svc.toolbox, outcome.backup_id, login, COPY)
    assert result.verified, result.verification
    assert result.verification["tables_checked"] == len(outcome.manifest.row_counts or {}) == 13

    source_dump = normalise(superuser_tool(pg, "pg_dump", "--no-sync", "-d", fidelity_db))
    copy_dump = normalise(superuser_tool(pg, "pg_dump", "--no-sync", "-d", COPY))
    assert copy_dump == source_dump
    for needle in (
        "CREATE EXTENSION IF NOT EXISTS citext",
        "ATTACH PARTITION ledger.measurements_other DEFAULT",
        'CREATE TABLE "Données"."Ünïcødé Tåble"',
        "SELECT pg_catalog.setval('ledger.voucher_no', 424242, true)",
        "SELECT pg_catalog.setval('ledger.never_used', 77, false)",
        "CREATE POLICY own_rows",
        "ALTER DEFAULT PRIVILEGES FOR ROLE rel_app",
        "SELECT pg_catalog.lo_create('424001')",
        "GRANT SELECT ON LARGE OBJECT 424002 TO rel_reader",
        "ALTER TABLE app.orders OWNER TO rel_app",
        "CREATE MATERIALIZED VIEW ledger.never_refreshed",
        "REFRESH MATERIALIZED VIEW ledger.totals",
    ):
        assert needle in source_dump, f"the source lacks {needle!r}: the fixture is not what the test thinks"
    assert "REFRESH MATERIALIZED VIEW ledger.never_refreshed" not in copy_dump  # still unpopulated

    # Roles: the backup's globals equal the superuser's view, minus the passwords and nothing else.
    globals_sql = svc.store.get_bytes(outcome.manifest.object("globals").key).decode()
    full = superuser_tool(pg, "pg_dumpall", "--globals-only")
    assert "PASSWORD 'SCRAM-SHA-256$" in full and "PASSWORD" not in globals_sql
    assert normalise(globals_sql) == without_passwords(full)
    assert "CREATE ROLE rel_login;" in globals_sql and "CONNECTION LIMIT 5" in globals_sql
    assert "ALTER ROLE rel_reader SET statement_timeout TO '30s';" in globals_sql

    # Database-level properties: on the source, not on the copy (pg_dump without --create).
    def db_facts(db: str) -> str:
        return pg.psql(
            "SELECT coalesce(datacl::text, 'default') || ' | ' || coalesce((SELECT string_agg(coalesce(r.rolname,"
            " 'all') || ':' || array_to_string(s.setconfig, ','), ';' ORDER BY coalesce(r.rolname, 'all'))"
            " FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = d.oid),"
            " 'none') || ' | ' ||"
            f" coalesce(shobj_description(d.oid, 'pg_database'), '') FROM pg_database d WHERE datname = '{db}'"
        )

    acl, settings, comment = db_facts(fidelity_db).split(" | ")
    assert "rel_reader=c/" in acl and "=Tc/" not in acl
    assert settings == "all:work_mem=7MB;rel_reader:search_path=app, public"
    assert comment == "fidelity source"
    acl, settings, comment = db_facts(COPY).split(" | ")
    assert (acl, settings) == ("default", "none")
    assert comment.startswith("pg-lifeboat restored ") and outcome.backup_id in comment
    assert stray_databases() == {COPY}
