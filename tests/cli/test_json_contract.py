"""One output contract: every command's --json output, on success and on failure, validates against
schemas/cli.json ($defs/<command> on exit 0, $defs/failure on exit 1 and 2), with nothing on stderr; without
--json an error is one line on stderr and nothing on stdout; -v adds the log lines on stderr only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest

from chalicelib import wiring
from chalicelib.cli import build_parser
from chalicelib.logical.catalog import BackupId
from chalicelib.pitr.basebackup import BaseBackup
from chalicelib.restore.requests import parse_restore_request
from chalicelib.restore.service import start_restore
from devstack.local import LocalStack, target, write_config
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer, free_port
from tests.cli.conftest import Lifeboat, Ran

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "schemas" / "cli.json").read_text())
DATABASES = ("contract_restored", "contract_job")
SLOT = "lifeboat_shop"  # the WAL stream's replication slot on the session's server: dropped after the tour


def commands() -> set[str]:
    [action] = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(action.choices)


def problems(command: str, ran: Ran) -> list[str]:
    """What is wrong with one --json run: stderr, stdout that is not one document, or the schema."""
    where = f"{command} (exit {ran.code})"
    found = [f"{where}: stderr {ran.err!r}"] if ran.err else []
    try:
        document = ran.json()
    except ValueError:
        return [*found, f"{where}: stdout is not one JSON document: {ran.out!r}"]
    definition = command if ran.code == 0 else "failure"
    validator = jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{definition}"})
    found += [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    if ran.code == 0 and isinstance(document, dict) and document.get("status") == "FAILED":
        found.append(f"{where}: a FAILED document with exit 0")
    return found


def test_the_schema_covers_every_command() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert commands() <= set(SCHEMA["$defs"]), "a command without a schema in schemas/cli.json"


@pytest.fixture
def contract_config(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """shop: logical, RDS snapshots and a WAL stream; broken: a server that is not there."""
    boto3.client("rds").create_db_instance(
        DBInstanceIdentifier="shop-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
    )
    shop = target("shop", pg.port, aws.secret_arn)
    shop["physical"] = {"method": "rds_instance", "db_instance_id": "shop-db", "schedule": "cron(0 3 * * ? *)"}
    replication = boto3.client("secretsmanager").create_secret(
        Name="lifeboat/contract-replication", SecretString=json.dumps({"password": SUPERUSER_PASSWORD})
    )["ARN"]
    shop["wal"] = {"flush_seconds": 1, "replication_user": SUPERUSER, "replication_password_secret": replication}
    broken = target("broken", free_port(), aws.secret_arn, schedule=None)
    path = write_config(tmp_path / "lifeboat.json", aws.bucket, [shop, broken])
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED")  # the moto fixture's "false": a Fargate task's, not an operator's
    return path


@pytest.fixture
def cleanup(pg: PostgresServer) -> Iterator[None]:
    yield
    for name in DATABASES:
        pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{SLOT}'")


def tamper(aws: LocalStack, backup_id: str) -> None:
    """The manifest's dump checksum no longer matches the dump (the bucket is unsigned here): verify fails."""
    catalog = wiring.catalog(wiring.load_config())
    key = catalog.layout.manifest_key(BackupId.parse(backup_id))
    s3 = boto3.client("s3")
    manifest = json.loads(s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read())
    manifest["objects"][0]["sha256"] = "0" * 64
    s3.put_object(Bucket=aws.bucket, Key=key, Body=json.dumps(manifest).encode())


def queue_restore(backup_id: str, database: str) -> str:
    body: dict[str, Any] = {"backup_id": backup_id, "into": {"database": database}}
    return start_restore(wiring.api_services(), parse_restore_request(body)).restore_id


def wal_stream(spool: Path) -> subprocess.Popen[str]:
    """`lifeboat wal-stream shop --json` in its own process (it runs until SIGTERM, which it handles)."""
    argv = [sys.executable, "-m", "chalicelib.cli", "wal-stream", "shop", "--spool", str(spool), "--json"]
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def recovery_tour(
    run: Callable[..., Ran], runs: list[tuple[str, Ran]], lifeboat: Lifeboat, pg: PostgresServer, tmp_path: Path
) -> None:
    """The point-in-time recovery commands: stream, base backup, window, status, a planned recovery, one fetched
    segment, a dry prune; then each refusing (wal-fetch: 1 for a file not archived, 255 for any error)."""
    stream = wal_stream(tmp_path / "spool")
    try:
        # pg_receivewal streams without the slot (wal-stream advances it after each upload): a streaming walsender
        streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        wait_for(lambda: stream.poll() is None and pg.psql(streaming) == "1", "wal-stream did not start streaming")
        base = run("base-backup", "shop")
        assert base.code == 0, base
        pg.psql("SELECT pg_switch_wal()")
        wait_for(lambda: lifeboat("wal-window", "shop").code == 0, "the base's WAL was not archived")
        assert run("wal-window", "shop").code == 0
        assert run("wal-status", "shop").code == 0
        status = run("status", "shop")  # now the WAL window is there too
        assert status.code == 0 and status.json()["targets"][0]["wal"]["newest_base"], status
        listed = run("list", "shop").json()
        assert [row["kind"] for row in listed if row["kind"] in ("base", "wal_window")] == ["base", "wal_window"]
        plan = run("recover", "shop", "--latest", "--dry-run", "--pgdata", str(tmp_path / "recovered"))
        assert plan.code == 0 and plan.json()["status"] == "PLANNED", plan
        assert not (tmp_path / "recovered").exists()
        first = BaseBackup.model_validate({k: v for k, v in base.json().items() if k != "status"}).start_segment
        fetched = run("wal-fetch", "--target", "shop", first.name, str(tmp_path / "segment"))
        assert fetched.code == 0 and (tmp_path / "segment").stat().st_size == first.segment_size, fetched
        assert run("wal-prune", "shop", "--dry-run").code == 0
    finally:
        stream.send_signal(signal.SIGTERM)
        out, err = stream.communicate(timeout=30)
    streamed = Ran(stream.returncode, out, err)
    assert streamed.code == 0 and streamed.json()["gaps"] == [], streamed
    runs.append(("wal-stream", streamed))
    run("wal-stream", "nosuch")
    run("base-backup", "broken")  # no wal section
    assert run("wal-window", "broken").code == 1  # nothing restorable
    run("wal-status", "nosuch")
    run("recover", "shop", "--time", "yesterday", "--pgdata", str(tmp_path / "never"))
    run("wal-prune", "nosuch")
    assert run("wal-fetch", "--target", "shop", "0000000100000000000000FF", str(tmp_path / "nothing")).code == 1
    assert run("--config", "/nonexistent/lifeboat.json", "wal-fetch", "--target", "shop", first.name, "x").code == 255


@pytest.mark.usefixtures("contract_config", "cleanup")
def test_every_command_keeps_the_contract(
    aws: LocalStack, lifeboat: Lifeboat, pg: PostgresServer, tmp_path: Path
) -> None:
    # long because it is one tour of every command, each run once as it succeeds and once as it fails.
    runs: list[tuple[str, Ran]] = []

    def run(*argv: str) -> Ran:
        ran = lifeboat(*argv, "--json")
        command = next(word for word in argv if not word.startswith("-") and word in commands())
        runs.append((command, ran))
        return ran

    backup = run("backup", "shop")
    assert backup.code == 0, backup
    backup_id = backup.json()["backup_id"]
    run("backup", "nosuch")
    assert run("backup", "broken").code == 1
    run("validate")
    run("--config", "/nonexistent/lifeboat.json", "validate")
    listed = run("list", "--failed")
    rows = [row for row in listed.json() if row["kind"] != "wal_window"]  # shop streams: its window comes last
    assert {row["status"] for row in rows} == {"SUCCEEDED", "FAILED"} and listed.json()[-1]["target"] == "shop", listed
    run("list", "nosuch")
    assert run("verify", backup_id).code == 0
    run("verify", "not-an-id")
    assert run("restore", backup_id, "--database", "contract_restored").code == 0
    assert run("restore", backup_id, "--database", "contract_restored").code == 2
    restore_id = queue_restore(backup_id, "contract_job")
    assert run("restores").code == 0
    run("restores", "r-missing")
    assert run("run-restore", restore_id).code == 0
    run("run-restore", "r-missing")
    assert run("snapshot", "shop").code == 0
    run("snapshot", "nosuch")
    assert run("prune", "--dry-run").code == 0
    run("prune", "nosuch")
    assert run("lifecycle").code == 0 and run("lifecycle", "--apply").code == 0
    run("--config", "/nonexistent/lifeboat.json", "lifecycle")
    dispatched = run("dispatch", "--at", "2026-11-29T03:00:00Z")
    assert sorted(d["kind"] for d in dispatched.json()["dispatched"]) == ["logical", "physical"], dispatched
    run("dispatch", "--at", "yesterday")
    run("completion", "bash")
    run("completion", "fish")
    assert run("check", "shop").code == 0  # after lifecycle --apply: the rules match
    assert run("check", "broken").code == 1
    run("check", "nosuch")
    assert run("status", "shop").code == 1  # backed up and snapshotted just now, but no base backup: NEVER (wal)
    assert run("status", "broken").code == 1  # never backed up
    run("status", "--grace", "-5")
    assert run("drills").code == 0 and run("drills", "shop").code == 0
    assert run("drills", "--report", "--since", "2026-01-01").code == 0
    run("drills", "--report")  # no --since
    recovery_tour(run, runs, lifeboat, pg, tmp_path)
    tamper(aws, backup_id)
    assert run("verify", backup_id).code == 1

    assert [p for command, ran in runs for p in problems(command, ran)] == []
    outcomes = {(command, ran.code == 0) for command, ran in runs}
    assert outcomes == {(command, ok) for command in commands() for ok in (True, False)}
    assert {ran.code for _, ran in runs} == {0, 1, 2, 255}


@pytest.mark.usefixtures("contract_config")
def test_an_error_is_printed_once(lifeboat: Lifeboat) -> None:
    human = lifeboat("backup", "broken")
    assert human.code == 1 and human.out == ""
    assert human.err.startswith("lifeboat: database_unreachable: ") and human.err.count("\n") == 1, human.err
    verbose = lifeboat("backup", "broken", "-v")
    assert verbose.code == 1 and verbose.out == ""
    lines = verbose.err.splitlines()
    assert lines[-1] == human.err.strip()
    logged = [json.loads(line) for line in lines[:-1]]
    assert any(entry["message"] == "backup failed" and entry["level"] == "ERROR" for entry in logged), lines
    document = lifeboat("-v", "--json", "backup", "broken")
    assert document.code == 1 and document.json()["error"]["code"] == "database_unreachable"
    assert "backup failed" in document.err  # the log lines: on stderr, never in the document
