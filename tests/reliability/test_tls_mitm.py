"""A machine in the middle with a certificate of its own gets no credential and no data (security review 12).

Mitm accepts TLS with a certificate for 127.0.0.1 and localhost that no configured CA signed (what an attacker
on the path can present), then asks what a real server may ask: a cleartext password (what RDS asks for an IAM
token), or SCRAM-SHA-256-PLUS with iteration count 1 and a salt of its own, so that the client proof (which libpq
sends before it can check the server's) is a cheap offline oracle for the stored password; channel binding does
not help, it binds to the attacker's own certificate. It records every startup message, password and proof.

With the default sslmode verify-full, psycopg (the API, the workers, the Fargate task) and pg_dump, pg_dumpall and
pg_restore of every bundled major refuse the certificate during the handshake: the machine in the middle sees no
startup message, so no user name, no token, no proof, no data, and the error says what to fix. `iam_auth` cannot
opt out; a stored password can (`weak_tls: true` with sslmode require), and the last test shows what that costs.
Before the fix (default sslmode require) every one of these tests failed: the token and the proofs were sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
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
from chalicelib.adapters import postgres
from chalicelib.adapters.pgtools import explain, minimal_env
from chalicelib.adapters.postgres import Login, database_exists
from chalicelib.config import Connection, parse_config
from chalicelib.errors import DatabaseConnectionError
from chalicelib.logical.dump import run_logical_backup
from devstack import pgbin
from devstack.local import LocalStack, target, write_config
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer, real_clock_env, tls_certificates
from devstack.sample import BACKUP_PASSWORD, BACKUP_ROLE
from tests.reliability import flows

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104
CLEARTEXT, SASL, SASL_CONTINUE = 3, 10, 11
SALT = b"attacker-salt-16"
MAJORS = sorted(int(major) for major in pgbin.pinned_versions())  # the layer's (and the container's) majors
TOOLS = ("pg_dump", "pg_dumpall", "pg_restore")


@pytest.fixture(scope="module")
def attacker_cert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate with the right names (localhost, 127.0.0.1) that no configured CA signed."""
    d = tmp_path_factory.mktemp("attacker")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1000",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
        cwd=d,
        check=True,
        capture_output=True,
        env=real_clock_env(),
    )
    return d


class Mitm:
    """asyncio on a thread of its own: TLS with `cert`, then a cleartext-password or a SCRAM (i=1) request."""

    def __init__(self, cert: Path, auth: int) -> None:
        self.auth = auth
        self.startups: list[bytes] = []
        self.passwords: list[str] = []
        self.proofs: list[tuple[str, bytes]] = []  # (AuthMessage, ClientProof)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert / "cert.pem", cert / "key.pem")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self.loop
        ).result(timeout=10)
        self.port = int(self.server.sockets[0].getsockname()[1])

    @staticmethod
    async def _message(reader: asyncio.StreamReader) -> bytes:
        await reader.readexactly(1)
        (length,) = struct.unpack("!i", await reader.readexactly(4))
        return await reader.readexactly(length - 4)

    @staticmethod
    def _auth(writer: asyncio.StreamWriter, code: int, data: bytes = b"") -> None:
        writer.write(b"R" + struct.pack("!ii", 8 + len(data), code) + data)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                body = await reader.readexactly(length - 8)
                if code == SSL_REQUEST:
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.context)
                elif code == GSSENC_REQUEST:
                    writer.write(b"N")
                    await writer.drain()
                else:
                    break
            self.startups.append(body)
            if self.auth == CLEARTEXT:
                self._auth(writer, CLEARTEXT)
                await writer.drain()
                self.passwords.append((await self._message(reader)).rstrip(b"\0").decode())
            else:
                await self._scram(reader, writer)
            fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, ValueError):
            pass  # the client gave up: the point of these tests
        finally:
            writer.close()

    async def _scram(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._auth(writer, SASL, b"SCRAM-SHA-256-PLUS\0\0")
        await writer.drain()
        client_first = (await self._message(reader)).split(b"\0", 1)[1][4:].decode()
        bare = client_first.split(",", 2)[2]
        nonce = dict(part.split("=", 1) for part in bare.split(","))["r"]
        server_first = f"r={nonce}mitm,s={base64.b64encode(SALT).decode()},i=1"
        self._auth(writer, SASL_CONTINUE, server_first.encode())
        await writer.drain()
        without_proof, proof = (await self._message(reader)).decode().rsplit(",p=", 1)
        self.proofs.append((f"{bare},{server_first},{without_proof}", base64.b64decode(proof)))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def mitm(attacker_cert: Path, request: pytest.FixtureRequest) -> Iterator[Mitm]:
    server = Mitm(attacker_cert, getattr(request, "param", CLEARTEXT))
    yield server
    server.close()


@pytest.fixture
def layer_bundle(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CA bundle used when sslrootcert is unset (the layer's RDS bundle): here, the devstack CA."""
    ca = tls_certificates() / "ca.crt"
    monkeypatch.setenv("LIFEBOAT_CA_BUNDLE", str(ca))
    return ca


@pytest.fixture(scope="module")
def archive(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Something for pg_restore to restore (it reads the archive before it connects)."""
    path = tmp_path_factory.mktemp("archive") / "shop.dump"
    subprocess.run(
        [
            str(pg.bin_dir / "pg_dump"),
            "-Fc",
            "--schema-only",
            "-h",
            "127.0.0.1",
            "-p",
            str(pg.port),
            "-U",
            SUPERUSER,
            "-d",
            "shop",
            "-f",
            str(path),
        ],
        check=True,
        capture_output=True,
        env={**real_clock_env(), "PGPASSWORD": SUPERUSER_PASSWORD},
    )
    return path


def connection(port: int, **fields: Any) -> Connection:
    cfg = parse_config(
        {
            "settings": {"bucket": "lifeboat-test-backups"},
            "targets": [
                {"name": "far", "connection": {"host": "127.0.0.1", "port": port, "database": "postgres", **fields}}
            ],
        }
    )
    found = cfg.target("far").connection
    assert found is not None
    return found


def log_in_everywhere(login: Login, archive: Path) -> dict[str, str]:
    """Log in with psycopg and each bundled major's pg_dump, pg_dumpall and pg_restore: {who: advice}. All fail."""
    advice: dict[str, str] = {}
    with pytest.raises(DatabaseConnectionError) as info:
        database_exists(login, "x")
    advice["psycopg"] = str(info.value)
    for major in MAJORS:
        for tool in TOOLS:
            args = {
                "pg_dump": ["--schema-only"],
                "pg_dumpall": ["--globals-only"],
                "pg_restore": ["--dbname=postgres", str(archive)],
            }[tool]
            proc = subprocess.run(
                [str(pgbin.unpacked(major) / "bin" / tool), *args],
                env=minimal_env(login.env()),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert proc.returncode != 0, f"{tool} {major}"
            advice[f"{tool} {major}"] = explain(proc.stderr, login.context)[0] or proc.stderr
    return advice


def assert_tls_refusals(advice: dict[str, str]) -> None:
    """Each failure says what to fix: the CA (sslrootcert) or the name."""
    for who, text in advice.items():
        assert "TLS verification of 127.0.0.1 failed" in text and "sslrootcert" in text, (who, text)


@pytest.mark.parametrize("ca", ["another CA", "no CA file"])
def test_an_iam_token_goes_to_no_machine_in_the_middle(
    mitm: Mitm,
    aws: LocalStack,
    layer_bundle: Path,
    archive: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ca: str,
) -> None:
    if ca == "no CA file":  # a function without the layer's bundle, no ~/.postgresql/root.crt
        monkeypatch.setenv("LIFEBOAT_CA_BUNDLE", str(tmp_path / "missing.pem"))
        monkeypatch.setenv("HOME", str(tmp_path))
    login = wiring.credentials().login(connection(mitm.port, user="iam_restorer", iam_auth=True))
    assert login.password and "X-Amz-Signature=" in login.password
    advice = log_in_everywhere(login, archive)
    assert mitm.passwords == [], "the IAM token went to the machine in the middle"
    assert mitm.startups == []
    assert login.sslmode == "verify-full"
    assert_tls_refusals(advice)


def test_a_restore_into_an_iam_target_reaches_no_machine_in_the_middle(
    mitm: Mitm, aws: LocalStack, pg: PostgresServer, layer_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding's path: the API checks the destination with the restore login before queueing the job."""
    shop = target("shop", pg.port, aws.secret_arn)
    shop["restore_into"] = ["reporting"]
    reporting = {
        "name": "reporting",
        "connection": {
            "host": "127.0.0.1",
            "port": mitm.port,
            "database": "postgres",
            "user": "iam_restorer",
            "iam_auth": True,
        },
    }
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [shop, reporting])))
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    with flows.lambda_client() as c:
        r = flows.post(
            c,
            "/targets/shop/restores",
            {"backup_id": "logical:shop:20261129T030000Z", "into": {"target": "reporting", "database": "loot"}},
        )
    assert mitm.passwords == [], "the IAM token went to the machine in the middle"
    assert mitm.startups == []
    assert r.status_code == 502, r.body
    assert "TLS verification of 127.0.0.1 failed" in r.body.decode(), r.body


@pytest.mark.parametrize("mitm", [SASL], indirect=True)
def test_a_stored_password_gives_no_machine_in_the_middle_a_scram_proof(
    mitm: Mitm, aws: LocalStack, layer_bundle: Path, archive: Path
) -> None:
    login = wiring.credentials().login(connection(mitm.port, user=BACKUP_ROLE, password_secret=aws.secret_arn))
    advice = log_in_everywhere(login, archive)
    assert mitm.proofs == [], "SCRAM proofs (an offline oracle for the password) went to the machine in the middle"
    assert mitm.startups == []
    assert (login.sslmode, login.channel_binding) == ("verify-full", "require")
    assert_tls_refusals(advice)


def crack(auth_message: str, proof: bytes, words: list[str]) -> str | None:
    """The offline attack on a SCRAM proof made with the attacker's salt and i=1: ~4 HMACs per guess."""
    for word in words:
        client_key = hmac.new(hashlib.pbkdf2_hmac("sha256", word.encode(), SALT, 1), b"Client Key", "sha256").digest()
        signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message.encode(), "sha256").digest()
        if bytes(a ^ b for a, b in zip(client_key, signature, strict=True)) == proof:
            return word
    return None


@pytest.mark.parametrize("mitm", [SASL], indirect=True)
def test_weak_tls_lets_a_machine_in_the_middle_choose_the_work_factor(
    mitm: Mitm, aws: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the opt-out costs: with sslmode require the proof goes to anyone, and a guessable password falls to a
    dictionary at a few microseconds a guess. Every such login says so in the log."""
    warnings: list[str] = []
    monkeypatch.setattr(postgres.logger, "warning", lambda message, **_: warnings.append(message))
    conn = connection(mitm.port, user=BACKUP_ROLE, password_secret=aws.secret_arn, sslmode="require", weak_tls=True)
    login = wiring.credentials().login(conn)
    assert (login.require_auth, login.channel_binding) == ("scram-sha-256", "require")
    with pytest.raises(DatabaseConnectionError):
        database_exists(login, "x")
    assert len(warnings) == 1 and "weak_tls" in warnings[0] and "SCRAM work factor" in warnings[0]
    [(auth_message, proof)] = mitm.proofs
    assert crack(auth_message, proof, [f"guess{i}" for i in range(1000)] + [BACKUP_PASSWORD]) == BACKUP_PASSWORD
