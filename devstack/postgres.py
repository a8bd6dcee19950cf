"""A throwaway PostgreSQL server on 127.0.0.1, for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "lifeboat-dev-superuser"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_owner() -> list[str]:
    # initdb and postgres refuse to run as root; drop to the postgres account when we are root.
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise RuntimeError("running as root needs a 'postgres' account (apt-get install postgresql)") from exc
    return ["runuser", "-u", "postgres", "--"]


def real_clock_env() -> dict[str, str]:
    """The environment without libfaketime: the suite may run with its clock shifted (README, "Tests on
    another date"), but PostgreSQL's timers (statement_timeout, lock_timeout) never fire under libfaketime.
    The server keeps the real clock, which also proves no test compares the shifted clock with now()."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}


@cache
def tls_certificates() -> Path:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1, made once per process: every devstack
    server presents it, and targets verify it (sslmode verify-full, sslrootcert ca.crt: devstack.local.target)."""
    d = Path(tempfile.mkdtemp(prefix="lifeboat-certs-"))

    # Verified by clients on the real clock (pg_dump children) and a year ahead (make test-shifted: psycopg in the
    # test process): made on the real clock, valid for 1000 days.
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, env=real_clock_env())

    ssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1000",
        "-subj",
        "/CN=lifeboat-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    # IP:127.0.0.1 for libpq 15+; libpq 14 (the layer's oldest pg_dump) compares a host given as an address only
    # with DNS names, hence DNS:127.0.0.1 too.
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:127.0.0.1\n")
    ssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1000",
        "-out",
        "server.crt",
        "-extfile",
        "san.ext",
    )
    return d


@dataclass
class PostgresServer:
    bin_dir: Path
    port: int = field(default_factory=free_port)
    # TLS on by default, with a certificate clients verify (ca_file): the product's default sslmode is
    # verify-full, and stored passwords are sent only with SCRAM channel binding, which needs TLS.
    ssl: bool = True
    settings: dict[str, str] = field(default_factory=dict)
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lifeboat-pg-")))
    major: int = 0

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def ca_file(self) -> Path:
        return self.base_dir / "ca.crt"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def _as_owner(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = subprocess.run(
            [*_run_as_owner(), *args], check=True, text=True, capture_output=True, env=real_clock_env(), **kw
        )  # type: ignore[call-overload]
        return done

    def start(self) -> PostgresServer:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        pwfile = self.base_dir / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.base_dir, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        version = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        self.major = int(version.split()[-1].split(".")[0])
        self._as_owner(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base_dir}'",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "off",
            "max_connections": "60",
            "wal_level": "replica",
            **self.settings,
        }
        if self.ssl:
            self._make_certs()
            conf.update({"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'"})
        with open(self.data_dir / "postgresql.auto.conf", "a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        self.pg_ctl_start()
        return self

    def pg_ctl_start(self) -> None:
        """Start the configured data directory with pg_ctl (as its owner) and wait until it accepts connections."""
        self._as_owner(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self._wait_ready()

    def _make_certs(self) -> None:
        d = self.base_dir
        certs = tls_certificates()
        shutil.copy(certs / "ca.crt", d / "ca.crt")
        for name in ("server.crt", "server.key"):
            target = self.data_dir / name
            shutil.copy(certs / name, target)
            os.chmod(target, 0o600)
            if os.geteuid() == 0:
                shutil.chown(target, "postgres", "postgres")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start; see {self.log_file}")

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                [*_run_as_owner(), str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"],
                capture_output=True,
                check=False,
            )

    def restart(self) -> None:
        self._as_owner(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-m",
                "immediate",
                "-w",
                "restart",
            ]
        )
        self._wait_ready()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def conninfo(self, dbname: str = "postgres", user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user} password={password} sslmode=disable"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD}
        out = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()
