"""A stored password goes only to a server that proves, by SCRAM with channel binding, that it knows it.

The attack of issue 12: a server asks for an md5 hash or a cleartext password and cracks or replays what it
gets. FakePostgres is such a server, a few lines of asyncio: it speaks the PostgreSQL protocol just far enough
to accept TLS and ask for a password, and it records every PasswordMessage. It even holds a certificate the
target's CA vouches for (the devstack one: a compromised or misconfigured server, not only one in the middle,
which test_tls_mitm.py covers). Configured as an ordinary target (stored password, sslmode verify-full), it
receives nothing: libpq refuses the request client-side (require_auth=scram-sha-256, channel_binding=require),
in the API process and in pg_dump/pg_restore alike. With `weak_auth: true` it receives the hash or the
password: what the opt-out costs.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.adapters.pgtools import minimal_env
from chalicelib.adapters.postgres import database_exists
from chalicelib.config import parse_config
from chalicelib.errors import DatabaseConnectionError
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer, tls_certificates
from devstack.sample import BACKUP_PASSWORD, BACKUP_ROLE
from tests.reliability import flows

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
BACKUP_ID = "logical:shop:20261129T030000Z"
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
CLEARTEXT, MD5 = 3, 5
SALT = b"\x01\x02\x03\x04"


class FakePostgres:
    """asyncio on a thread of its own: TLS if asked (answers 'N' when `tls` is off), then one authentication
    request of kind `auth`; records the startups and every PasswordMessage."""

    def __init__(self, auth: int, tls: bool = True) -> None:
        self.auth, self.tls = auth, tls
        self.startups: list[str] = []
        self.passwords: list[str] = []
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certs = tls_certificates()
        self.context.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self.loop
        ).result(timeout=10)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                body = await reader.readexactly(length - 8)
                if code == SSL_REQUEST and self.tls:
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.context)
                elif code in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")
                    await writer.drain()
                else:
                    break
            params = body.split(b"\0")
            self.startups.append(params[params.index(b"user") + 1].decode() if b"user" in params else "?")
            if self.auth == MD5:
                writer.write(b"R" + struct.pack("!ii", 12, MD5) + SALT)  # AuthenticationMD5Password
            else:
                writer.write(b"R" + struct.pack("!ii", 8, CLEARTEXT))  # AuthenticationCleartextPassword
            await writer.drain()
            kind = await reader.readexactly(1)
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            message = await reader.readexactly(length - 4)
            if kind == b"p":
                self.passwords.append(message.rstrip(b"\0").decode(errors="replace"))
            fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass  # the client gave up: that is the point
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def md5_answer(password: str, user: str) -> str:
    """What libpq sends for AuthenticationMD5Password: a hash anyone with it can log in with, or crack."""
    inner = hashlib.md5((password + user).encode()).hexdigest()  # noqa: S324 - the protocol's own hash
    return "md5" + hashlib.md5(inner.encode() + SALT).hexdigest()  # noqa: S324


@pytest.fixture(params=[MD5, CLEARTEXT], ids=["md5", "cleartext"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakePostgres]:
    server = FakePostgres(request.param)
    yield server
    server.close()


def fake_target(port: int, secret: str, **connection: Any) -> dict[str, Any]:
    """The fake server as an operator would configure a target: a stored password, TLS verified."""
    return {
        "name": "fake",
        "connection": {
            "host": "127.0.0.1",
            "port": port,
            "database": "postgres",
            "user": BACKUP_ROLE,
            "password_secret": secret,
            "sslmode": "verify-full",
            "sslrootcert": str(tls_certificates() / "ca.crt"),
            **connection,
        },
    }


@pytest.fixture
def api_into(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """configure(fake, **connection) -> an API client whose 'shop' may restore into the fake server."""

    def configure(server: FakePostgres, **connection: Any) -> Any:
        shop = target("shop", pg.port, aws.secret_arn)
        shop["restore_into"] = ["fake"]
        path = write_config(
            tmp_path / "lifeboat.json", aws.bucket, [shop, fake_target(server.port, aws.secret_arn, **connection)]
        )
        monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
        assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
        return flows.lambda_client()

    return configure


def test_a_server_asking_for_md5_or_cleartext_gets_nothing(fake: FakePostgres, api_into: Any) -> None:
    with api_into(fake) as c:
        r = flows.post(
            c, "/targets/shop/restores", {"backup_id": BACKUP_ID, "into": {"target": "fake", "database": "loot"}}
        )
    assert r.status_code == 502, r.body
    assert fake.startups == [BACKUP_ROLE], "the API did reach the server and was asked for a password"
    assert fake.passwords == [], "a password (or its md5 hash) was sent"
    assert "scram-sha-256" in r.body.decode() or "channel binding" in r.body.decode(), r.body


def test_with_weak_auth_the_password_is_sent(fake: FakePostgres, api_into: Any) -> None:
    """The opt-out's cost, shown: the fake server gets the md5 hash (enough to log in as the user with md5, and
    crackable) or the password itself."""
    with api_into(fake, weak_auth=True) as c:
        r = flows.post(
            c, "/targets/shop/restores", {"backup_id": BACKUP_ID, "into": {"target": "fake", "database": "loot"}}
        )
    assert r.status_code == 502, r.body
    expected = md5_answer(BACKUP_PASSWORD, BACKUP_ROLE) if fake.auth == MD5 else BACKUP_PASSWORD
    assert fake.passwords == [expected]


def test_the_client_programs_refuse_too(fake: FakePostgres, aws: LocalStack, pg_roots: Path) -> None:
    """pg_dump, pg_restore and psql get the guards in their environment (PGCHANNELBINDING, PGREQUIREAUTH): a
    libpq older than 16 ignores PGREQUIREAUTH, and channel binding alone still refuses."""
    cfg = parse_config({"settings": {"bucket": aws.bucket}, "targets": [fake_target(fake.port, aws.secret_arn)]})
    connection = cfg.target("fake").connection
    assert connection is not None
    login = wiring.credentials().login(connection)
    assert (login.require_auth, login.channel_binding) == ("scram-sha-256", "require")
    majors = sorted(int(p.name) for p in pg_roots.iterdir() if (p / "bin" / "pg_dump").exists())
    assert majors
    for major in majors:
        proc = subprocess.run(
            [str(pg_roots / str(major) / "bin" / "pg_dump"), "--schema-only"],
            env=minimal_env(login.env()),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode != 0, f"pg_dump {major}"
    assert len(fake.startups) == len(majors) and fake.passwords == []


def test_the_login_refuses_before_sending(fake: FakePostgres, aws: LocalStack) -> None:
    cfg = parse_config({"settings": {"bucket": aws.bucket}, "targets": [fake_target(fake.port, aws.secret_arn)]})
    connection = cfg.target("fake").connection
    assert connection is not None
    with pytest.raises(DatabaseConnectionError):
        database_exists(wiring.credentials().login(connection), "x")
    assert fake.startups and fake.passwords == []


def test_without_tls_nothing_starts(aws: LocalStack) -> None:
    """A server that answers 'N' to SSLRequest: refused before the startup message."""
    server = FakePostgres(MD5, tls=False)
    try:
        cfg = parse_config({"settings": {"bucket": aws.bucket}, "targets": [fake_target(server.port, aws.secret_arn)]})
        connection = cfg.target("fake").connection
        assert connection is not None
        with pytest.raises(DatabaseConnectionError, match=r"TLS|SSL"):
            database_exists(wiring.credentials().login(connection), "x")
    finally:
        server.close()
    assert server.startups == [] and server.passwords == []
