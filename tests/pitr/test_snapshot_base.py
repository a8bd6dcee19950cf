"""An app-consistent EBS snapshot set as the base of a point-in-time recovery, against PostgreSQL 16 and moto.

The product's own bracket (physical.start.start_snapshot with app_consistent) runs pg_backup_start, calls EC2's
CreateSnapshots and pg_backup_stop, and stores the label; the EBS snapshot itself is stood in for by `cp -a` of the
running server's data directory, made from a botocore hook on that CreateSnapshots call (in backup mode), with rows
committed before and after the copy. wal-stream archives the WAL meanwhile. `lifeboat recover --snapshot-set` on
the copy, then starting it, must give exactly the rows committed at or before T. The refusals (another target's
set, a set without a label, a time before the backup ended, a server running or started on the directory) leave
the directory as it was."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest

from chalicelib import wiring
from chalicelib.adapters.postgres import CredentialResolver
from chalicelib.cli import main as lifeboat_main
from chalicelib.config import load_file
from chalicelib.physical.model import SnapshotServices
from chalicelib.physical.start import start_snapshot
from devstack import pgbin
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer, free_port
from devstack.sample import BACKUP_PASSWORD, BACKUP_ROLE
from tests.pitr.conftest import REPL_PASSWORD, REPL_USER, FetchRelay, shared_dir, start_recovered
from tests.pitr.test_pitr_flow import _mark, _receiver, _recovered_rows, _rows, _wait_streaming

MAJOR = 16


@pytest.fixture(scope="module")
def source(pg_roots: Path) -> Iterator[PostgresServer]:
    if not (pg_roots / str(MAJOR)).exists():
        (pg_roots / str(MAJOR)).symlink_to(pgbin.unpacked(MAJOR))
    server = PostgresServer(
        pgbin.server_bin(MAJOR),
        settings={"wal_keep_size": "0", "max_wal_senders": "5", "max_replication_slots": "5"},
    )
    server.start()
    server.psql(f"CREATE ROLE {REPL_USER} LOGIN REPLICATION PASSWORD '{REPL_PASSWORD}'")
    server.psql(f"CREATE ROLE {BACKUP_ROLE} LOGIN PASSWORD '{BACKUP_PASSWORD}'")
    server.psql(f"GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO {BACKUP_ROLE}")
    server.psql("CREATE TABLE stamped (id bigserial PRIMARY KEY, stamp timestamptz NOT NULL DEFAULT clock_timestamp())")
    yield server
    server.destroy()


def _instance() -> str:
    ec2 = boto3.client("ec2")
    ami = ec2.register_image(Name="postgres-on-ec2")["ImageId"]
    devices: list[Any] = [
        {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}},
        {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 50}},
    ]
    made = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", BlockDeviceMappings=devices)
    return str(made["Instances"][0]["InstanceId"])


@pytest.fixture
def set_config(aws: LocalStack, source: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`shop`: streamed, app-consistent EBS sets; `plain`: crash-consistent sets of the same instance (no label)."""
    secret = boto3.client("secretsmanager").create_secret(
        Name="lifeboat/repl", SecretString=json.dumps({"password": REPL_PASSWORD})
    )["ARN"]
    instance = _instance()
    shop = target("shop", source.port, aws.secret_arn, database="postgres")
    shop["wal"] = {"flush_seconds": 1, "replication_user": REPL_USER, "replication_password_secret": secret}
    shop["physical"] = {"method": "ebs", "ec2_instance_id": instance, "app_consistent": True}
    plain = target("plain", source.port, aws.secret_arn, database="postgres")
    plain["physical"] = {"method": "ebs", "ec2_instance_id": instance}
    folder = shared_dir()
    path = write_config(folder / "lifeboat.json", aws.bucket, [shop, plain])
    path.chmod(0o644)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    yield path
    shutil.rmtree(folder, ignore_errors=True)


class SnapshotStandIn:
    """The EBS snapshot, stood in for: on CreateSnapshots (called in backup mode) rows are committed, the running
    server's data directory is copied with `cp -a` to each of `copies`, and more rows are committed."""

    def __init__(self, source: PostgresServer, conn: psycopg.Connection[tuple[object, ...]], copies: list[Path]):
        self.source, self.conn, self.pending = source, conn, copies
        self.rows_in_copy = -1

    def __call__(self, **_: Any) -> None:
        if not self.pending:
            return
        _rows(self.conn, 10)
        self.rows_in_copy = int(self.source.psql("SELECT count(*) FROM stamped"))
        for copy in self.pending:
            subprocess.run(["cp", "-a", str(self.source.data_dir), str(copy)], check=True)
        self.pending = []
        _rows(self.conn, 10)  # in backup mode, after the copy: only the WAL has them

    def db_clock(self) -> datetime:
        """The server's clock (the rows' stamps and the recovery target are on it)."""
        return datetime.fromtimestamp(float(self.source.psql("SELECT extract(epoch FROM clock_timestamp())")), UTC)


def _client(service: str, region: str) -> Any:
    return boto3.client(service, region_name=region)  # type: ignore[call-overload]


def _services(config: Path, stand_in: SnapshotStandIn) -> SnapshotServices:
    region = boto3.session.Session().region_name
    ec2 = boto3.client("ec2", region_name=region)
    ec2.meta.events.register("before-call.ec2.CreateSnapshots", stand_in)
    clients = {"ec2": ec2}
    cfg = load_file(config)
    return SnapshotServices(
        config=cfg,
        client_for=lambda service, name: clients.get(service) or _client(service, name),
        region=region,
        store=wiring.store(cfg),
        credentials=CredentialResolver(secrets_client=boto3.client("secretsmanager")),
        clock=stand_in.db_clock,
    )


def _files(pgdata: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(pgdata)), p.stat().st_mtime_ns, p.stat().st_size) for p in pgdata.rglob("*"))


def _refused(config: Path, pgdata: Path, *argv: str) -> str:
    """Run recover, expect a refusal, check nothing in `pgdata` changed; the error message."""
    before = _files(pgdata) if pgdata.is_dir() else []
    out = io.StringIO()
    code = lifeboat_main(["--json", "--config", str(config), "recover", *argv, "--pgdata", str(pgdata)], out)
    assert code != 0, out.getvalue()
    assert (_files(pgdata) if pgdata.is_dir() else []) == before
    return str(json.loads(out.getvalue())["error"]["message"])


def test_recovery_from_an_app_consistent_snapshot_set(
    set_config: Path, source: PostgresServer, relay: FetchRelay
) -> None:
    # long because it is one story: stream, bracket and copy, write, recover and start, then every refusal.
    folder = shared_dir()
    good, started, spare = folder / "good" / "data", folder / "started" / "data", folder / "spare" / "data"
    for copy in (good, started, spare):
        copy.parent.mkdir()
    receiver = _receiver(set_config, folder / "spool")
    _wait_streaming(source, receiver)
    with psycopg.connect(source.conninfo(), autocommit=True) as conn:
        _rows(conn, 20)
        before_stop = _mark(conn)
        stand_in = SnapshotStandIn(source, conn, [good, started, spare])
        svc = _services(set_config, stand_in)
        outcome = start_snapshot(svc, "shop", trigger="test")
        set_id = outcome.backup_id
        assert outcome.status == "STARTED" and outcome.label_uri and stand_in.rows_in_copy == 30
        plain = start_snapshot(svc, "plain")
        assert plain.label_uri is None
        _rows(conn, 30)
        t1 = _mark(conn)
        _rows(conn, 20)
        conn.execute("SELECT pg_switch_wal()")
        _rows(conn, 20)
    expected = int(source.psql(f"SELECT count(*) FROM stamped WHERE stamp <= '{t1}'"))
    assert stand_in.rows_in_copy + 10 + 30 == expected  # the 10 after the copy come from the WAL only
    subprocess.run(["sleep", "2.5"], check=True)  # > flush_seconds: the .partial upload catches up
    receiver.send_signal(signal.SIGTERM)
    assert receiver.wait(timeout=30) == 0

    # the refusals, each before anything is written
    common = ["--postgres", str(source.bin_dir), "--fetch-command", str(relay.script)]
    assert "belongs to target 'shop', not 'plain'" in _refused(
        set_config, spare, "plain", "--snapshot-set", set_id, "--time", t1, *common
    )
    assert "has no backup label" in _refused(
        set_config, spare, "plain", "--snapshot-set", plain.backup_id, "--time", t1, *common
    )
    assert "is before snapshot set" in _refused(
        set_config, spare, "shop", "--snapshot-set", set_id, "--time", before_stop, *common
    )
    assert "not a PostgreSQL data directory" in _refused(
        set_config, spare.parent, "shop", "--snapshot-set", set_id, "--time", t1, *common
    )
    (started / "postmaster.pid").unlink()  # the source runs on this host, not on the snapshot's: PostgreSQL would stop
    port = free_port()
    run = start_recovered(started, port, source.bin_dir)  # an operator starts the copy without the label
    assert run.returncode == 0, run.stderr
    try:
        message = _refused(set_config, started, "shop", "--snapshot-set", set_id, "--time", t1, *common)
        assert "a server runs on it (pid" in message, message
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(source.bin_dir / "pg_ctl"), "-D", str(started), "-w", "stop"],
            check=True,
            capture_output=True,
        )
    message = _refused(set_config, started, "shop", "--snapshot-set", set_id, "--time", t1, *common)
    assert "pg_control says shut down" in message, message

    # the recovery
    out = io.StringIO()
    argv = ["--json", "--config", str(set_config), "recover", "shop", "--snapshot-set", set_id, "--time", t1]
    assert lifeboat_main([*argv, "--pgdata", str(good), *common], out) == 0, out.getvalue()
    document = json.loads(out.getvalue())
    assert document["status"] == "READY" and document["snapshot_set"] == set_id
    assert set(document["snapshot_ids"]) == set(outcome.resource_ids)
    assert (good / "backup_label").read_text() == json.loads(
        boto3.client("s3")
        .get_object(Bucket="lifeboat-test-backups", Key=outcome.label_uri.split("/", 3)[3])["Body"]
        .read()
    )["labelfile"]
    assert not (good / "postmaster.pid").exists() and not [p for p in (good / "pg_wal").iterdir() if p.is_file()]
    assert not list((good / "pg_replslot").iterdir())  # wal-stream's slot, copied with the directory
    port = free_port()
    assert _recovered_rows(good, port, start_recovered(good, port, source.bin_dir), source.bin_dir) == expected

    # once started, the directory is refused (backup_label.old is the set's label; pg_control is newer)
    message = _refused(set_config, good, "shop", "--snapshot-set", set_id, "--latest", *common)
    assert "backup_label.old is this set's label" in message and "timeline 2" in message, message
    shutil.rmtree(folder, ignore_errors=True)
