"""API and identifier security: IAM on every route (each naming its target), bounded bodies, database names that
stay names, and no caller-chosen server."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import restore_logical
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from devstack.sample import BACKUP_PASSWORD
from tests.reliability import flows
from tests.reliability.conftest import ConfigWriter

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
BACKUP_ID = "logical:shop:20261129T030000Z"


def test_every_route_has_an_iam_authorizer() -> None:
    from chalice.app import IAMAuthorizer

    import app as lambda_app

    routes = lambda_app.app.routes
    entries = [(path, method, entry) for path, methods in routes.items() for method, entry in methods.items()]
    assert {(p, m) for p, m, _ in entries} == {
        ("/targets/{target}/backups", "GET"),
        ("/targets/{target}/backups", "POST"),
        ("/targets/{target}/drills", "GET"),
        ("/targets/{target}/restores", "POST"),
        ("/targets/{target}/restores", "GET"),
        ("/targets/{target}/restores/{restore_id}", "GET"),
    }
    # Per-target IAM: a route without the target in its path would let a caller past a policy that names one.
    assert all(p.startswith("/targets/{target}/") for p, _, _ in entries)
    unprotected = [f"{m} {p}" for p, m, e in entries if not isinstance(e.authorizer, IAMAuthorizer)]
    assert unprotected == [], f"routes without an IAM authorizer: {unprotected}"


@pytest.fixture
def api(aws: LocalStack, pg: PostgresServer, write_lifeboat_config: ConfigWriter) -> Iterator[Any]:
    write_lifeboat_config(aws)
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    with flows.lambda_client() as c:
        yield c


def post_routes() -> list[str]:
    import app as lambda_app

    return sorted(p.replace("{target}", "shop") for p, methods in lambda_app.app.routes.items() if "POST" in methods)


@pytest.mark.parametrize("path", post_routes())
def test_bodies_over_16_kib_get_a_4xx(api: Any, path: str) -> None:
    limit = 16 * 1024
    padded = json.dumps({"kind": "logical"}).encode()
    at_limit = padded[:-1] + b" " * (limit - len(padded)) + b"}"
    assert len(at_limit) == limit
    r = flows.post(api, path, at_limit)
    assert not (r.status_code == 400 and b"limit" in r.body), r.body  # the limit itself is allowed
    for size in (limit + 1, 1024 * 1024):
        r = flows.post(api, path, at_limit[:-1] + b" " * (size - limit) + b"}")
        assert 400 <= r.status_code < 500, (size, r.status_code)
        assert "limit is 16384" in json.loads(r.body)["message"]


HOSTILE_NAMES = [
    "x' OR 1=1 --",
    "dbname=evil host=127.0.0.2 port=1",
    "host=127.0.0.2",
    "postgresql://evil@127.0.0.2:1/postgres",
    'shop" WITH TEMPLATE template1 --',
    "x; DROP DATABASE shop",
    "-dpostgres",
    "a" * 64,
    "",
    "名前",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_database_names_are_refused_with_400(api: Any, name: str) -> None:
    for body in (
        {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": name}},
        {
            "backup_id": BACKUP_ID,
            "into": {"target": "shop", "database": "shop"},
            "options": {"clean": True, "confirm": name},
        },
    ):
        r = flows.post(api, "/targets/shop/restores", body)
        assert r.status_code == 400, (name, r.status_code, r.body)
        assert json.loads(r.body)["error"] == "bad_request"


@pytest.mark.parametrize(
    "name", ["dbname=postgres host=127.0.0.2 port=1", "x' OR 1=1 --", "postgresql://evil@127.0.0.2:1/postgres"]
)
def test_library_restore_treats_the_name_as_a_name(
    aws: LocalStack,
    pg: PostgresServer,
    write_lifeboat_config: ConfigWriter,
    stray_databases: Callable[[], set[str]],
    name: str,
) -> None:
    """restore_logical accepts any 1-63 byte name (the API is stricter) and it must stay a database name for
    CREATE DATABASE, pg_restore --dbname and the verification: read as libpq settings it would connect
    to 127.0.0.2:1 and fail."""
    write_lifeboat_config(aws)
    svc = wiring.backup_services()
    assert run_logical_backup(svc, "shop", SLOT).status == "SUCCEEDED"
    login = svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    result = restore_logical(svc.store, svc.catalog, svc.toolbox, BACKUP_ID, login, name)
    assert result.verified and result.database == name
    assert stray_databases() == {name}
    assert pg.psql("SELECT count(*) FROM sales.orders", dbname=as_conninfo(name)) == "4000"


def as_conninfo(name: str) -> str:
    """psql -d expands '=' and URIs too: hand it a conninfo whose dbname is the literal name."""
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


@pytest.fixture
def odd_database(pg: PostgresServer) -> Iterator[str]:
    name = "dbname=postgres host=127.0.0.2 port=1"
    pg.psql(f'CREATE DATABASE "{name}" OWNER lifeboat_backup')
    pg.psql("SET ROLE lifeboat_backup; CREATE TABLE t (x int); INSERT INTO t VALUES (1)", dbname=as_conninfo(name))
    yield name
    pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_backup_with_globals_of_a_database_named_like_a_connection_string(
    aws: LocalStack, odd_database: str, write_lifeboat_config: ConfigWriter
) -> None:
    write_lifeboat_config(aws, database=odd_database, globals=True)
    outcome = run_logical_backup(wiring.backup_services(), "shop", SLOT)
    assert outcome.status == "SUCCEEDED"


class PasswordTrap:
    """A fake PostgreSQL server on 127.0.0.1 that asks for a cleartext password and keeps what it gets."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.passwords: list[str] = []
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError, struct.error):
                    self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        def read(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise OSError("closed")
                data += chunk
            return data

        while True:
            length, code = struct.unpack("!ii", read(8))
            read(length - 8)
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: no
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind = read(1)
        length = struct.unpack("!i", read(4))[0]
        body = read(length - 4)
        if kind == b"p":
            self.passwords.append(body.rstrip(b"\0").decode(errors="replace"))
        fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "/tmp", "/var/run/postgresql", "evil.example.com"])
def test_restore_api_never_sends_a_stored_password_to_a_caller_chosen_host(
    api: Any, aws: LocalStack, host: str
) -> None:
    """No caller-chosen server at all: into.connection (and so a host, a Unix-socket path, a user, a secret or
    a CA) is refused by the schema before anything is read or connected to; nothing is queued."""
    trap = PasswordTrap()
    try:
        connection = {
            "host": host,
            "port": trap.port,
            "user": "anyone",
            "password_secret": aws.secret_arn,
            "sslmode": "disable",
        }
        r = flows.post(
            api,
            "/targets/shop/restores",
            {"backup_id": BACKUP_ID, "into": {"database": "loot", "connection": connection}},
        )
        ran = flows.drain_restores(api)
    finally:
        trap.close()
    assert BACKUP_PASSWORD not in trap.passwords, f"the API sent the password to 127.0.0.1:{trap.port}"
    assert trap.connections == 0 and ran == []
    assert r.status_code == 400, r.body
    assert "into.connection: Extra inputs are not permitted" in json.loads(r.body)["message"]
