"""The layer's pg_dump 17 against a local PostgreSQL with ssl=on: sslmode=require and verify-full work,
verify-full against the wrong CA fails. Runs the host's architecture natively and the other one under
qemu-user when it is installed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from layer_support import Layer

from devstack import pgbin, postgres

MAJOR = 17


@pytest.fixture(scope="module")
def tls_server() -> Iterator[postgres.PostgresServer]:
    server = postgres.PostgresServer(pgbin.server_bin(15), ssl=True)
    try:
        server.start()
        server.psql(
            "CREATE TABLE lifeboat_tls (id int PRIMARY KEY, note text);INSERT INTO lifeboat_tls VALUES (1, 'over-tls')"
        )
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the server's certificate."""
    d = tmp_path_factory.mktemp("other-ca")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(d / "ca.key"),
            "-out",
            str(d / "ca.crt"),
        ],
        check=True,
        capture_output=True,
    )
    return d / "ca.crt"


def client_env(tmp_path: Path) -> dict[str, str]:
    # HOME points to an empty directory so that no ~/.postgresql/root.crt or .pgpass is picked up.
    return {"PGPASSWORD": postgres.SUPERUSER_PASSWORD, "PGCONNECT_TIMEOUT": "20", "HOME": str(tmp_path)}


def conninfo(server: postgres.PostgresServer, host: str, sslmode: str, rootcert: Path | None = None) -> str:
    info = f"host={host} port={server.port} user={postgres.SUPERUSER} dbname=postgres sslmode={sslmode}"
    return info + (f" sslrootcert={rootcert}" if rootcert else "")


def dump(layer: Layer, dsn: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return layer.run(
        [layer.bin(MAJOR, "pg_dump"), "--dbname", dsn, "--table", "lifeboat_tls", "--no-owner"],
        env=client_env(tmp_path),
        timeout=120,
    )


def test_sslmode_require(layer: Layer, tls_server: postgres.PostgresServer, tmp_path: Path) -> None:
    proc = dump(layer, conninfo(tls_server, "127.0.0.1", "require"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CREATE TABLE public.lifeboat_tls" in proc.stdout
    assert "1\tover-tls" in proc.stdout
    # The session really is encrypted (psql also proves readline/tinfo load).
    query = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    psql = layer.run(
        [layer.bin(MAJOR, "psql"), "-X", "-At", "-c", query, conninfo(tls_server, "127.0.0.1", "require")],
        env=client_env(tmp_path),
        timeout=120,
    )
    assert psql.returncode == 0, psql.stderr
    assert psql.stdout.startswith("t|TLSv1."), psql.stdout


def test_sslmode_verify_full(layer: Layer, tls_server: postgres.PostgresServer, tmp_path: Path) -> None:
    proc = dump(layer, conninfo(tls_server, "localhost", "verify-full", tls_server.ca_file), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1\tover-tls" in proc.stdout


@pytest.mark.parametrize("wrong", ["rds-bundle", "other-ca"])
def test_verify_full_rejects_a_wrong_ca(
    layer: Layer, tls_server: postgres.PostgresServer, tmp_path: Path, other_ca: Path, wrong: str
) -> None:
    ca = layer.opt / "pg" / "certs" / "rds-ca-bundle.pem" if wrong == "rds-bundle" else other_ca
    proc = dump(layer, conninfo(tls_server, "localhost", "verify-full", ca), tmp_path)
    assert proc.returncode != 0
    assert "certificate verify failed" in proc.stderr, proc.stderr
    assert "over-tls" not in proc.stdout


def test_verify_full_rejects_a_wrong_host_name(
    layer: Layer, tls_server: postgres.PostgresServer, tmp_path: Path
) -> None:
    """The server certificate names localhost and 127.0.0.1 only; hostaddr keeps the same socket."""
    dsn = conninfo(tls_server, "db.example.invalid", "verify-full", tls_server.ca_file) + " hostaddr=127.0.0.1"
    proc = dump(layer, dsn, tmp_path)
    assert proc.returncode != 0
    assert "does not match host name" in proc.stderr, proc.stderr
