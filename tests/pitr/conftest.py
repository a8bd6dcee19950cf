"""A PostgreSQL server with a replication login, a streaming target in moto, and a way for the recovered server
(which runs as the postgres account) to run `wal-fetch` as this test process's user (see FetchRelay)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socketserver
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from chalicelib.cli import main as lifeboat_main
from devstack import pgbin
from devstack.local import LocalStack, target, write_config
from devstack.postgres import SUPERUSER_PASSWORD, PostgresServer, free_port, real_clock_env

REPO = Path(__file__).resolve().parents[2]
REPL_USER, REPL_PASSWORD = "lifeboat_repl", "repl-Secret-pw!"
MAJOR = 15  # Debian's server on this machine


@pytest.fixture(scope="module")
def source() -> Iterator[PostgresServer]:
    server = PostgresServer(
        pgbin.server_bin(MAJOR), settings={"wal_keep_size": "0", "max_wal_senders": "5", "max_replication_slots": "5"}
    )
    server.start()
    server.psql(f"CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'")
    server.psql("CREATE TABLE stamped (id bigserial PRIMARY KEY, stamp timestamptz NOT NULL DEFAULT clock_timestamp())")
    yield server
    server.destroy()


def shared_dir() -> Path:
    """A directory the postgres account can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="lifeboat-pitr-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def pitr_config(aws: LocalStack, source: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    secret = boto3.client("secretsmanager").create_secret(
        Name="lifeboat/repl", SecretString=json.dumps({"password": REPL_PASSWORD})
    )["ARN"]
    entry = target("shop", source.port, aws.secret_arn, database="postgres")
    entry["wal"] = {"flush_seconds": 1, "replication_user": REPL_USER, "replication_password_secret": secret}
    folder = shared_dir()
    path = write_config(folder / "lifeboat.json", aws.bucket, [entry])
    path.chmod(0o644)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    yield path
    shutil.rmtree(folder, ignore_errors=True)


class FetchRelay(socketserver.ThreadingTCPServer):
    """PostgreSQL runs restore_command as the postgres account, which cannot execute this checkout's Python (it
    lives under /root). The recovered server's restore_command is a bash script that sends its working directory and
    arguments here; the relay runs the real `python -m chalicelib.cli ...` with them and sends its exit
    code back, which the script exits with. Every stderr line is kept for the assertions."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _RelayHandler)
        self.messages: list[str] = []
        self.lock = threading.Lock()
        folder = shared_dir()
        self.script = folder / "wal-fetch-relay"
        self.script.write_text(
            "#!/bin/bash\n"
            f"exec 3<>/dev/tcp/127.0.0.1/{self.server_address[1]}\n"
            "(IFS=$'\\x1f'; printf '%s\\n' \"$PWD\" \"$*\") >&3\n"
            "read -r code <&3\n"
            'exit "${code:-255}"\n'
        )
        self.script.chmod(self.script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IROTH)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _RelayHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        relay: FetchRelay = self.server  # type: ignore[assignment]
        cwd = self.rfile.readline().decode().rstrip("\n")
        args = self.rfile.readline().decode().rstrip("\n").split("\x1f")
        args[-1] = str(Path(cwd, args[-1]))  # %p is relative to the data directory
        errors = io.StringIO()
        with relay.lock, contextlib.redirect_stderr(errors):
            code = lifeboat_main(args, io.StringIO())
        written = Path(args[-1])
        if code == 0 and os.geteuid() == 0:  # PostgreSQL opens the restored file read-write
            shutil.chown(written, "postgres", "postgres")
        relay.messages.append(errors.getvalue().strip())
        self.wfile.write(f"{code}\n".encode())


@pytest.fixture(scope="module")
def relay() -> Iterator[FetchRelay]:
    server = FetchRelay()
    yield server
    server.shutdown()


def start_recovered(pgdata: Path, port: int, bin_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Start a recovered data directory as the postgres account (pg_ctl -w) with the server binaries of `bin_dir`
    (default: MAJOR's); the caller checks the result."""
    sockets = pgdata.parent
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(pgdata.parent)], check=True)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sockets}"
    pg_ctl = str((bin_dir or pgbin.server_bin(MAJOR)) / "pg_ctl")
    command = [pg_ctl, "-D", str(pgdata), "-l", str(sockets / "server.log"), "-o", options, "-w", "-t", "60", "start"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=real_clock_env())


def stop_recovered(pgdata: Path, bin_dir: Path | None = None) -> None:
    pg_ctl = str((bin_dir or pgbin.server_bin(MAJOR)) / "pg_ctl")
    command = [pg_ctl, "-D", str(pgdata), "-m", "immediate", "-w", "stop"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, capture_output=True, check=False)


def query(port: int, sql: str) -> str:
    done = subprocess.run(
        [
            str(pgbin.server_bin(MAJOR) / "psql"),
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ],
        env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()
