"""Logging in to PostgreSQL: credentials from Secrets Manager or RDS IAM, and a psycopg session that
exports the snapshot a dump is taken from (and counts rows in that same snapshot)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING, Any

from chalicelib.adapters.aws_errors import AWS_ERRORS
from chalicelib.adapters.pgtools import Deadline, explain, scrub
from chalicelib.adapters.session_liveness import TCP_KEEPALIVES, still_usable
from chalicelib.adapters.snapshot_counts import (
    CountThread,
    count_error,
    count_plan,
    count_rows,
    count_tables,
    counted_tables,
    lock_for_counting,
)
from chalicelib.errors import ConfigError, DatabaseConnectionError, SecretError
from chalicelib.observability import logger

if TYPE_CHECKING:
    import psycopg
    from types_boto3_rds import RDSClient
    from types_boto3_secretsmanager import SecretsManagerClient

    from chalicelib.config import Connection, Logical

DEFAULT_CA_BUNDLE = "/opt/pg/certs/rds-ca-bundle.pem"
VERIFIED_SSLMODES = ("verify-ca", "verify-full")  # the sslmodes that check the server's certificate
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


@dataclass(frozen=True)
class Login:
    """Everything needed to connect; the password never appears in repr or logs."""

    host: str
    port: int
    database: str
    user: str
    sslmode: str
    sslrootcert: str | None = None
    connect_timeout: int = 10
    password: str | None = field(default=None, repr=False)
    application_name: str = "pg-lifeboat"
    credential_source: str = "no password"  # for error messages: which secret, or IAM
    # libpq's guards for a stored password (strong_auth): SCRAM only, bound to the TLS channel. A server that
    # asks for md5 or a cleartext password, or trusts us without proof, is refused before anything is sent.
    require_auth: str | None = None
    channel_binding: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()

    @property
    def context(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "sslmode": self.sslmode,
            "database": self.database,
            "source": self.credential_source,
        }

    def with_database(self, database: str) -> Login:
        return replace(self, database=database)

    def env(self) -> dict[str, str]:
        """libpq environment for a child process (pg_dump, pg_restore, ...)."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.database,
            "PGUSER": self.user,
            "PGSSLMODE": self.sslmode,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": self.application_name,
        }
        if self.sslrootcert:
            env["PGSSLROOTCERT"] = self.sslrootcert
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.require_auth:
            env["PGREQUIREAUTH"] = self.require_auth  # libpq 16+; older ones ignore it (channel binding still holds)
        if self.channel_binding:
            env["PGCHANNELBINDING"] = self.channel_binding
        return env

    def psycopg_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
            "application_name": self.application_name,
        }
        if self.sslrootcert:
            kwargs["sslrootcert"] = self.sslrootcert
        if self.password:
            kwargs["password"] = self.password
        if self.require_auth and libpq_has_require_auth():
            kwargs["require_auth"] = self.require_auth
        if self.channel_binding:
            kwargs["channel_binding"] = self.channel_binding
        return kwargs


def strong_auth(login: Login) -> Login:
    """`login` with its password sent only by SCRAM-SHA-256 with channel binding (needs TLS).

    channel_binding=require alone (libpq 13+) already refuses md5, cleartext and "trust": every method but
    SCRAM-SHA-256-PLUS. require_auth=scram-sha-256 (libpq 16+) says the same again where libpq knows it.
    """
    return replace(login, require_auth="scram-sha-256", channel_binding="require")


@cache
def libpq_has_require_auth() -> bool:
    """Whether the libpq psycopg uses knows require_auth (16+); an older one rejects it as an unknown option."""
    import psycopg  # heavy (~50 ms): only once a connection is made

    return psycopg.pq.version() >= 160000


class CredentialResolver:
    """Turns a configured Connection into a Login. Clients are injected (chalicelib.wiring.credentials), each as a
    client or a factory that makes it when first needed; secrets are cached briefly."""

    def __init__(
        self,
        secrets_client: SecretsManagerClient | Callable[[], SecretsManagerClient] | None = None,
        rds_client: RDSClient | Callable[[], RDSClient] | None = None,
        ca_bundle: str | None = None,
        max_age: int = 300,
    ) -> None:
        self.secrets_client = secrets_client
        self.rds_client = rds_client
        self.ca_bundle = ca_bundle or DEFAULT_CA_BUNDLE
        self.max_age = max_age
        self._provider: Any = None

    def login(self, conn: Connection) -> Login:
        """The backup login (connection.user)."""
        return self._login(conn, conn.user, conn.password_secret, conn.iam_auth)

    def restore_login(self, conn: Connection) -> Login:
        """The login restores use: connection.restore_user when set, the backup login otherwise."""
        if conn.restore_user is None:
            return self.login(conn)
        return self._login(conn, conn.restore_user, conn.restore_password_secret, conn.restore_iam_auth)

    def _login(self, conn: Connection, user: str, secret: str | None, iam_auth: bool) -> Login:
        password: str | None = None
        source = "no password (trust, certificate or .pgpass)"
        if secret:
            password = self._secret_password(secret)
            source = f"secret {secret}"
        elif iam_auth:
            if conn.sslmode not in VERIFIED_SSLMODES:  # the config refuses this; no token for an unchecked server
                raise ConfigError(f"{user}@{conn.host}: iam_auth needs sslmode verify-full or verify-ca")
            password = self._iam_token(conn, user)
            source = "an RDS IAM token (the user needs the rds_iam role and the function rds-db:connect)"
        rootcert = conn.sslrootcert
        if rootcert is None and conn.sslmode in VERIFIED_SSLMODES and os.path.exists(self.ca_bundle):
            rootcert = self.ca_bundle
        login = Login(
            conn.host,
            conn.port,
            conn.database,
            user,
            conn.sslmode,
            rootcert,
            conn.connect_timeout,
            password,
            credential_source=source,
        )
        if not secret:
            # An IAM token goes as RDS asks (a cleartext password): only to a server whose certificate the CA
            # vouches for (sslmode verify-ca/verify-full, checked above and by the config).
            return login
        if conn.weak_auth:
            logger.warning(
                "connection.weak_auth: the stored password is sent by whatever method the server asks"
                " (md5, cleartext), without channel binding",
                extra={"host": conn.host, "user": user},
            )
            return login
        if conn.sslmode not in VERIFIED_SSLMODES:  # require, allowed by weak_tls only
            logger.warning(
                "connection.weak_tls: the server's certificate is not checked (sslmode require): a"
                " machine in the middle reads the data and chooses the SCRAM work factor for the"
                " stored password",
                extra={"host": conn.host, "user": user},
            )
        return strong_auth(login)

    def _secret_password(self, secret_id: str) -> str:
        # Powertools Parameters loads only when a password is read from Secrets Manager (not for IAM or trust).
        from aws_lambda_powertools.utilities.parameters import SecretsProvider
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        if self._provider is None:
            # A factory defers building the client (~0.1 s at cold start) until a secret is needed.
            client = self.secrets_client() if callable(self.secrets_client) else self.secrets_client
            self._provider = SecretsProvider(boto3_client=client)
        try:
            raw = self._provider.get(secret_id, max_age=self.max_age)
        except GetParameterError as exc:
            text = str(exc)
            if "ResourceNotFound" in text:
                raise SecretError(f"secret {secret_id!r} does not exist: create it or fix password_secret") from None
            if "AccessDenied" in text:
                raise SecretError(
                    f"no access to secret {secret_id!r}: grant secretsmanager:GetSecretValue"
                    " (and kms:Decrypt on its key) to the function's role"
                ) from None
            raise SecretError(f"cannot read secret {secret_id!r}: {text}") from None
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        if value.lstrip().startswith("{"):
            try:
                doc = json.loads(value)
            except ValueError:
                raise SecretError(f"secret {secret_id!r} looks like JSON but does not parse") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("password"), str):
                raise SecretError(
                    f"secret {secret_id!r} is JSON without a 'password' string (RDS-managed secrets have one)"
                )
            return str(doc["password"])
        if not value:
            raise SecretError(f"secret {secret_id!r} is empty")
        return value

    def _iam_token(self, conn: Connection, user: str) -> str:
        if self.rds_client is None:
            raise SecretError(
                f"{user}@{conn.host} uses IAM authentication but no RDS client was given"
                " (chalicelib.wiring.credentials() passes one)"
            )
        if callable(self.rds_client):
            self.rds_client = self.rds_client()
        try:
            return str(self.rds_client.generate_db_auth_token(DBHostname=conn.host, Port=conn.port, DBUsername=user))
        except AWS_ERRORS as exc:
            raise SecretError(f"cannot create an RDS IAM token for {user}@{conn.host}: {exc}") from None


@dataclass
class _HeldSession:
    login: Login
    conn: psycopg.Connection[Any] | None = None
    handed_out: float = 0.0  # time.monotonic() when `connect` last handed the session out


_held_session: ContextVar[_HeldSession | None] = ContextVar("lifeboat_held_session", default=None)


@cache
def _kept_session_class() -> type[psycopg.Connection[Any]]:
    import psycopg

    class KeptSession(psycopg.Connection[Any]):
        """An autocommit session that `with` leaves open: `held_session` closes it at the end of its block."""

        def __exit__(self, *exc: object) -> None:
            pass  # autocommit: nothing to commit or roll back, and the session is reused

    return KeptSession


@contextmanager
def held_session(login: Login) -> Iterator[None]:
    """Within the block, every autocommit `connect(login)` with this very login (in this thread) gets one session,
    opened on first use (again if it broke) and closed at the end, instead of a connection of its own each: a
    restore's maintenance steps (exists, create, comment, rename, drop) then cost one connection, not six."""
    held = _HeldSession(login)
    token = _held_session.set(held)
    try:
        yield
    finally:
        _held_session.reset(token)
        if held.conn is not None:
            held.conn.close()


def connect(login: Login, autocommit: bool = True) -> psycopg.Connection[Any]:
    import psycopg

    held = _held_session.get()
    shared = held is not None and autocommit and held.login == login
    if held is not None and shared and held.conn is not None and still_usable(held.conn, held.handed_out):
        held.handed_out = time.monotonic()
        return held.conn
    try:
        conn = (_kept_session_class() if shared else psycopg.Connection).connect(
            **login.psycopg_kwargs(), **TCP_KEEPALIVES, autocommit=autocommit
        )
    except psycopg.Error as exc:
        raise connection_error(exc, login) from None
    if held is not None and shared:
        held.conn, held.handed_out = conn, time.monotonic()
    return conn


def server_version(login: Login) -> tuple[int, str]:
    """(server_version_num, server_version) of the server `login` reaches."""
    with connect(login) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def database_exists(login: Login, name: str) -> bool:
    with connect(login) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def connection_error(exc: Exception, login: Login) -> DatabaseConnectionError:
    text = scrub(str(exc).strip(), login.secrets)
    advice, _ = explain(text, login.context)
    # libpq's own reason ("... failed: root certificate file ... does not exist"), not its hint after it (which
    # for TLS suggests turning certificate verification off).
    reasons = [line for line in text.splitlines() if "failed:" in line] or text.splitlines()
    first = reasons[-1] if reasons else type(exc).__name__
    return DatabaseConnectionError(
        f"{advice} ({first})"
        if advice
        else f"cannot connect to {login.host}:{login.port}/{login.database} as {login.user}: {first}"
    )


@dataclass(frozen=True)
class SourceFacts:
    server_version_num: int
    server_version: str
    database_size: int
    snapshot_id: str | None
    row_counts: dict[str, int] | None
    # row_counts_mode parallel: the counts, taken on a thread in the exporting session while pg_dump runs
    counting: CountThread | None = None

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


def _name_patterns(pattern: str) -> tuple[re.Pattern[str] | None, re.Pattern[str]]:
    """A pg_dump -n/-t pattern as (schema regex or None, name regex), by psql's rules.

    Unquoted text is case-folded, `*` and `?` are wildcards and `.` separates schema from name; text in
    double quotes is literal (`""` is a quote). `"Sales"."Ledger"`, `public."Orders"`, `sal*.*` all work.
    """
    parts: list[str] = [""]
    quoted = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == '"':
            if quoted and i + 1 < len(pattern) and pattern[i + 1] == '"':
                parts[-1] += re.escape('"')
                i += 1
            else:
                quoted = not quoted
        elif quoted:
            parts[-1] += re.escape(c)
        elif c == ".":
            parts.append("")
        elif c == "*":
            parts[-1] += ".*"
        elif c == "?":
            parts[-1] += "."
        else:
            parts[-1] += re.escape(c.lower())
        i += 1
    name = re.compile(parts[-1] + r"\Z", re.DOTALL)
    schema = re.compile(parts[-2] + r"\Z", re.DOTALL) if len(parts) >= 2 else None
    return schema, name


def _matches_schema(pattern: str, schema: str) -> bool:
    _, name = _name_patterns(pattern)  # a schema pattern is a single name
    return bool(name.match(schema))


def _matches_table(pattern: str, schema: str, table: str, visible: bool) -> bool:
    schema_re, name_re = _name_patterns(pattern)
    if not name_re.match(table):
        return False
    # An unqualified table pattern means the tables visible on the search path, as in pg_dump.
    return bool(schema_re.match(schema)) if schema_re else visible


def _selected(schema: str, table: str, opts: Logical, visible: bool | None = None) -> bool:
    """Whether pg_dump with these options dumps this table's data.

    Mirrors pg_dump: -n/-N have no effect when -t is given; -T always applies. `visible` is
    pg_table_is_visible() in a session like pg_dump's (default: the table is in public).
    """
    seen = (schema == "public") if visible is None else visible
    if opts.tables:
        if not any(_matches_table(p, schema, table, seen) for p in opts.tables):
            return False
    else:
        if opts.schemas and not any(_matches_schema(p, schema) for p in opts.schemas):
            return False
        if any(_matches_schema(p, schema) for p in opts.exclude_schemas):
            return False
    return not any(_matches_table(p, schema, table, seen) for p in opts.exclude_tables)


@contextmanager
def exported_snapshot(login: Login, opts: Logical | None, deadline: Deadline | None = None) -> Iterator[SourceFacts]:
    """Open a repeatable-read transaction, export its snapshot and, if asked, count rows in it.

    The transaction stays open for the duration of the block so pg_dump can attach with --snapshot:
    the counts then describe exactly the data in the dump. With row_counts_mode parallel they are not taken
    here but by `facts.counting`, in this same transaction, while the block runs pg_dump (its thread is
    stopped before the transaction ends).
    """
    import psycopg

    conn = connect(login, autocommit=False)
    try:
        with conn:
            try:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                row = conn.execute(
                    "SELECT current_setting('server_version_num')::int, current_setting("
                    "'server_version'), pg_database_size(current_database())"
                ).fetchone()
                assert row is not None
                try:
                    snap = conn.execute("SELECT pg_export_snapshot()").fetchone()
                    snapshot_id = str(snap[0]) if snap else None
                except psycopg.Error as exc:  # e.g. a standby before PostgreSQL 10: dump without --snapshot
                    conn.rollback()
                    snapshot_id = None
                    reason = scrub(str(exc).strip(), login.secrets).splitlines()
                    logger.warning(
                        "no snapshot exported: pg_dump runs without --snapshot and no rows are counted",
                        extra={"reason": reason[0] if reason else type(exc).__name__, "database": login.database},
                    )
                counts, counting = None, None
                whose = f"{login.user}'s queries on {login.database}"
                plan = count_plan(opts.row_counts, opts.row_counts_mode, snapshot_id) if opts else "off"
                if opts is not None and plan == "serial":
                    try:
                        counts = count_rows(conn, lambda s, t, v: _selected(s, t, opts, v))
                    except psycopg.Error as exc:
                        raise count_error(exc, whose, login.secrets) from None
                elif opts is not None and plan == "parallel":
                    try:  # the tables are locked now, before pg_dump starts: see lock_for_counting
                        tables = counted_tables(conn, lambda s, t, v: _selected(s, t, opts, v))
                        wait = opts.lock_wait_timeout_seconds  # and no later than the deadline's margin
                        lock_for_counting(conn, tables, min(wait, deadline.seconds_left()) if deadline else wait)
                    except psycopg.Error as exc:
                        raise count_error(exc, whose, login.secrets) from None
                    counting = CountThread(
                        lambda: count_tables(conn, tables),
                        lambda: conn.cancel_safe(timeout=5),  # a few tries fit in the deadline's margin
                        lambda exc: count_error(exc, whose, login.secrets),
                    )
            except psycopg.Error as exc:
                raise connection_error(exc, login) from None
            try:
                yield SourceFacts(int(row[0]), str(row[1]), int(row[2]), snapshot_id, counts, counting)
            finally:
                if counting is not None:
                    counting.stop()  # the thread's count is cancelled, so the session has one user to end it
    finally:
        conn.close()
