"""`lifeboat check`'s database side, per target: the secret resolves, the server accepts the login over the
configured TLS, a pg_dump that suits the server's major is at hand, and the backup role can read every table the
target's selection dumps. Each later check needs the earlier ones: it is skipped (not failed again) when they failed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from chalicelib.adapters.pgtools import Toolbox, diagnose, effective_compression
from chalicelib.adapters.postgres import (
    VERIFIED_SSLMODES,
    CredentialResolver,
    Login,
    _selected,
    connect,
)
from chalicelib.config import Connection, Logical, Target
from chalicelib.errors import ConfigError, DatabaseConnectionError, PgToolError, SecretError
from chalicelib.logical.dump import list_databases
from chalicelib.operator.check_model import CheckResult, failed, passed, skipped

CONNECT_TIMEOUT = 5  # seconds: a check answers quickly; the night's runs keep connection.connect_timeout
SHOWN = 10  # unreadable tables named in a line; the rest are counted

_FACTS_SQL = (
    "SELECT current_setting('server_version_num')::int, current_setting('server_version'), current_user,"
    " (SELECT CASE WHEN ssl THEN version END FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)
# Every relation pg_dump reads data from (tables, partitioned tables, sequences; not extension members), with what
# stops this role from reading it: no USAGE on its schema, no SELECT on it, or row-level security that applies to
# it (pg_dump runs with row_security off and then fails on such a table; pg_read_all_data does not bypass RLS).
_PRIVILEGES_SQL = r"""
SELECT n.nspname, c.relname, pg_catalog.pg_table_is_visible(c.oid),
       has_schema_privilege(n.oid, 'USAGE'),
       CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT')
            ELSE has_table_privilege(c.oid, 'SELECT') END,
       c.relrowsecurity AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
         AND NOT (SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class ServerFacts:
    version_num: int
    version: str
    user: str
    tls: str | None  # the TLS version of this session; None: not encrypted

    @property
    def major(self) -> int:
        return self.version_num // 10000


def check_target(target: Target, credentials: CredentialResolver, toolbox: Toolbox) -> list[CheckResult]:
    """Every database check of one target, in order."""
    name = target.name
    if target.connection is None:
        return [skipped("database", "no connection: a snapshots-only target has nothing to log in to", name)]
    conn = target.connection
    later = ["login", *([*_tool_names(target.logical), "table privileges"] if target.logical else [])]
    login, result = _credentials(conn, credentials, name)
    results = [result]
    if conn.restore_password_secret:
        results.append(_restore_secret(conn, credentials, name))
    if login is None:
        return results + [skipped(n, "needs the credentials above", name) for n in later]
    login = replace(login, connect_timeout=min(login.connect_timeout, CONNECT_TIMEOUT))
    facts, result = _login(login, conn, name)
    results.append(result)
    if facts is None:
        return results + [skipped(n, "needs the login above", name) for n in later[1:]]
    if target.logical is not None:
        results += _tools(target.logical, facts, toolbox, name)
        results.append(_privileges(target.logical, login, name))
    return results


# --- credentials ---------------------------------------------------------------------------------------------------


def _secret_fix(message: str, secret: str, field: str) -> str:
    if "does not exist" in message:
        return (
            f"create it (aws secretsmanager create-secret --name {secret} --secret-string"
            f' \'{{"password": "..."}}\'), or set connection.{field} to the name or ARN of the secret that exists'
        )
    if "no access" in message:
        return (
            f"allow secretsmanager:GetSecretValue on {secret} (and kms:Decrypt on its key) to the role running lifeboat"
        )
    return f"store the password in {secret}: a plain string, or JSON with a 'password' string (as RDS does)"


def _credentials(conn: Connection, resolver: CredentialResolver, target: str) -> tuple[Login | None, CheckResult]:
    name = "secret" if conn.password_secret else "credentials"
    try:
        login = resolver.login(conn)
    except SecretError as exc:
        if conn.password_secret:
            return None, failed(name, str(exc), _secret_fix(str(exc), conn.password_secret, "password_secret"), target)
        return None, failed(
            name, str(exc), f"allow rds-db:connect for database user {conn.user} to the role running lifeboat", target
        )
    except ConfigError as exc:
        return None, failed(name, str(exc), "fix the connection's sslmode", target)
    if conn.password_secret:
        return login, passed(name, f"{conn.password_secret} holds a password for {conn.user}", target)
    if conn.iam_auth:
        return login, passed(name, f"an RDS IAM token for {conn.user}", target)
    return login, passed(name, "no stored password (trust, a client certificate or .pgpass)", target)


def _restore_secret(conn: Connection, resolver: CredentialResolver, target: str) -> CheckResult:
    secret = conn.restore_password_secret or ""
    try:
        resolver.restore_login(conn)
    except SecretError as exc:
        return failed("restore secret", str(exc), _secret_fix(str(exc), secret, "restore_password_secret"), target)
    return passed("restore secret", f"{secret} holds a password for {conn.restore_user}", target)


# --- the login -----------------------------------------------------------------------------------------------------


def _login(login: Login, conn: Connection, target: str) -> tuple[ServerFacts | None, CheckResult]:
    import psycopg  # heavy (~50 ms): only when a check reaches a database

    try:
        with connect(login) as session:
            row = session.execute(_FACTS_SQL).fetchone()
    except DatabaseConnectionError as exc:
        return None, _login_failure(str(exc), login, conn, target)
    except psycopg.Error as exc:
        return None, failed("login", f"logged in, but reading the server's version failed: {exc}", "", target)
    assert row is not None
    facts = ServerFacts(int(row[0]), str(row[1]), str(row[2]), row[3])
    if facts.tls:
        checked = "certificate checked" if login.sslmode in VERIFIED_SSLMODES else "certificate NOT checked"
        channel = f"over {facts.tls} (sslmode {login.sslmode}, {checked})"
    else:
        channel = f"WITHOUT TLS (sslmode {login.sslmode})"
    where = f"{login.host}:{login.port}/{login.database}"
    return facts, passed("login", f"{facts.user}@{where} {channel}, PostgreSQL {facts.version}", target)


def _login_failure(message: str, login: Login, conn: Connection, target: str) -> CheckResult:
    found = diagnose(message, login.context)
    if found is None:
        return failed(
            "login",
            message,
            "check connection.host, port, database, user and sslmode, and that the server is reachable from here",
            target,
        )
    # The connection error is "<problem>: <fix> (<libpq's reason>)": the problem and libpq's words are the detail.
    detail = f"{found.problem} {message.removeprefix(found.advice).strip()}".strip()
    fixes = {
        "refused": f"check connection.port ({login.port}) and connection.host: no server listens at"
        f" {login.host}:{login.port} (is it running? RDS: the port of the instance's endpoint)",
        "unknown_host": f"check connection.host ({login.host}): the name does not resolve from here (RDS: the"
        " instance's endpoint address; from outside its VPC, through a tunnel or VPN)",
        "no_database": f"set connection.database to a database that exists on {login.host}, or create"
        f" {login.database} (psql -c 'CREATE DATABASE ...')",
        "auth": _auth_fix(conn, login.user),
    }
    return failed("login", detail, fixes.get(found.kind, found.fix), target)


def _auth_fix(conn: Connection, user: str) -> str:
    if conn.password_secret:
        return (
            f"put {user}'s password in {conn.password_secret} (aws secretsmanager put-secret-value --secret-id"
            f" {conn.password_secret} ...), or set the role's password to the secret's (ALTER ROLE {user} PASSWORD"
            " ...); the server must store it as SCRAM-SHA-256 (password_encryption = scram-sha-256)"
        )
    if conn.iam_auth:
        return f"GRANT rds_iam TO {user}, and allow rds-db:connect for database user {user} to this role"
    return f"the server wants a password for {user}: set connection.password_secret (or iam_auth on RDS)"


# --- pg_dump for the server's major ----------------------------------------------------------------------------------


def _tool_names(opts: Logical) -> list[str]:
    return ["pg_dump", *(["pg_dumpall"] if opts.globals or opts.all_databases else [])]


def _tools(opts: Logical, facts: ServerFacts, toolbox: Toolbox, target: str) -> list[CheckResult]:
    results = []
    for tool in _tool_names(opts):
        try:
            found = toolbox.pick(tool, facts.major, purpose=f"a PostgreSQL {facts.version} server")
        except PgToolError as exc:
            results.append(
                failed(
                    tool,
                    str(exc),
                    f"attach a pg-clients layer holding PostgreSQL {facts.major}'s client programs (layers/build.py),"
                    f" set LIFEBOAT_PG_ROOTS to a root holding {facts.major}/bin/{tool}, or put {tool} {facts.major}"
                    " or newer on PATH",
                    target,
                )
            )
            continue
        notes = [] if found.major == facts.major else [f"newer than the server's {facts.major}"]
        if tool == "pg_dump" and (used := effective_compression(opts.compression, found.major)) != opts.compression:
            notes.append(f"writes {used} instead of {opts.compression}: lz4 and zstd need pg_dump 16+")
        extra = f" ({'; '.join(notes)})" if notes else ""
        results.append(passed(tool, f"{tool} {found.major} at {found.path}{extra}", target))
    return results


# --- what the role can read ----------------------------------------------------------------------------------------


def unreadable_tables(rows: list[tuple[Any, ...]], opts: Logical) -> tuple[int, list[str], list[str]]:
    """(tables the selection dumps, those this role cannot read, those row-level security hides) from the rows
    of _PRIVILEGES_SQL."""
    dumped, denied, hidden = 0, [], []
    for schema, table, visible, usage, select, rls in rows:
        if not _selected(schema, table, opts, bool(visible)):
            continue
        dumped += 1
        name = f"{schema}.{table}"
        if not (usage and select):
            denied.append(name if usage else f"{name} (no USAGE on schema {schema})")
        elif rls:
            hidden.append(name)
    return dumped, denied, hidden


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _privileges(opts: Logical, login: Login, target: str) -> CheckResult:
    import psycopg  # heavy (~50 ms): only when a check reaches a database

    name = "table privileges"
    try:
        databases = list_databases(login, opts.exclude_databases) if opts.all_databases else [login.database]
        dumped, denied, hidden = 0, [], []
        for database in databases:
            with connect(login.with_database(database)) as session:
                rows = session.execute(_PRIVILEGES_SQL).fetchall()
            counted, no, rls = unreadable_tables(rows, opts)
            prefix = f"{database}: " if opts.all_databases else ""
            dumped += counted
            denied += [prefix + t for t in no]
            hidden += [prefix + t for t in rls]
    except (DatabaseConnectionError, psycopg.Error) as exc:
        return failed(
            name, f"cannot list the tables: {exc}", "check that the login may connect to every database", target
        )
    problems = []
    if denied:
        problems.append(f"{login.user} cannot read {len(denied)} of {dumped} tables to dump: {_shown(denied)}")
    if hidden:
        problems.append(f"row-level security hides rows of {len(hidden)} from {login.user}: {_shown(hidden)}")
    if problems:
        return failed(
            name,
            "; ".join(problems),
            f"GRANT pg_read_all_data TO {login.user} (PostgreSQL 14+; else GRANT USAGE ON SCHEMA and SELECT ON ALL"
            " TABLES/SEQUENCES IN SCHEMA for each); for row-level security ALTER ROLE ... BYPASSRLS; or leave the"
            " tables out with logical.exclude_tables / exclude_schemas",
            target,
        )
    where = f" in {len(databases)} databases" if opts.all_databases else ""
    return passed(name, f"{login.user} can read all {dumped} tables and sequences the selection dumps{where}", target)
