"""The workers' hand-off to Fargate: backup_message / restore_message against moto (S3, DynamoDB, ECS) and
a real PostgreSQL; the launched command then runs as the container would, as a local `lifeboat` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.entrypoints import backup_message, restore_message
from chalicelib.logical.catalog import BackupId, Manifest
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from tests.fargate.conftest import Ecs, tasks

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
BID = "logical:shop:20261129T030000Z"
MESSAGE = json.dumps({"target": "shop", "kind": "logical", "slot": SLOT.isoformat()})
LIFEBOAT = Path(sys.executable).parent / "lifeboat"


@pytest.fixture
def configure(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write the configuration: one target `shop` with these logical options, and these settings."""

    def write(settings: dict[str, Any] | None = None, **logical: Any) -> Path:
        path = write_config(
            tmp_path / "lifeboat.json",
            aws.bucket,
            [target("shop", pg.port, aws.secret_arn, **logical)],
            **(settings or {}),
        )
        monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
        return path

    return write


def claim(key: str) -> dict[str, str] | None:
    store = wiring.jobs()
    assert store is not None
    return store.get(key)


def objects(aws: LocalStack, prefix: str = "logical/") -> list[str]:
    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix=prefix).get("Contents", [])]


def run_as_the_task(command: list[str]) -> subprocess.CompletedProcess[str]:
    """The container's ENTRYPOINT is `lifeboat`; ECS appends the override. Same environment as the task:
    the configuration, the jobs table, AWS (moto here), LIFEBOAT_PG_ROOTS, metrics on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEBOAT_FARGATE_")}
    env["POWERTOOLS_METRICS_DISABLED"] = "false"
    return subprocess.run([str(LIFEBOAT), *command], env=env, capture_output=True, text=True, timeout=120, check=False)


def launched_command(ecs: Ecs) -> list[str]:
    [task] = tasks(ecs)
    command: list[str] = task["overrides"]["containerOverrides"][0]["command"]
    return command


# --- backups --------------------------------------------------------------------------------------


def test_marked_large_is_delegated_without_dumping_or_claiming(
    configure: Any, fargate_env: Ecs, aws: LocalStack
) -> None:
    configure(runner="fargate")
    result = backup_message(MESSAGE, lambda: 900_000)
    assert result["status"] == "DELEGATED" and result["backup_id"] == BID
    assert result["task_arn"].startswith("arn:aws:ecs:") and "marked large" in result["reason"]
    assert objects(aws) == [], "the worker dumped nothing"
    assert claim(f"backup#{BID}") is None, "the slot is left for the task to claim"
    assert claim(f"fargate#backup#{BID}")["status"] == "RUNNING"  # type: ignore[index]
    # A redelivered message launches nothing more.
    again = backup_message(MESSAGE, lambda: 900_000)
    assert again["status"] == "SKIPPED" and "already delegated" in again["reason"]
    assert len(tasks(fargate_env)) == 1


def test_the_task_takes_the_slot_and_the_backup_exists(configure: Any, fargate_env: Ecs, aws: LocalStack) -> None:
    configure(runner="fargate")
    assert backup_message(MESSAGE, lambda: 900_000)["status"] == "DELEGATED"
    proc = run_as_the_task(launched_command(fargate_env))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    outcome = next(line for line in lines if "status" in line and "manifest" in line)
    assert outcome["status"] == "SUCCEEDED" and outcome["backup_id"] == BID
    assert outcome["manifest"]["trigger"] == "schedule"
    # The EMF line the stack's metric filter counts for the dead-man's switch ({ $.BackupSucceeded[0] >= 1 }).
    emf = next(line for line in lines if "BackupSucceeded" in line)
    assert emf["BackupSucceeded"][0] >= 1 and emf["target"] == "shop"
    manifest = wiring.backup_services().catalog.manifest(BackupId.parse(BID))
    assert manifest.slot == SLOT and manifest.objects
    assert claim(f"backup#{BID}")["status"] == "SUCCEEDED"  # type: ignore[index]
    # The worker sees the complete backup and neither dumps nor delegates again.
    assert backup_message(MESSAGE, lambda: 900_000)["status"] == "SKIPPED"
    assert len(tasks(fargate_env)) == 1


def test_size_predicts_a_long_run(configure: Any, fargate_env: Ecs, aws: LocalStack) -> None:
    # A 60 s Lambda at half share is a 30 s budget; at 100 kB/s the sample database (several MB) predicts more.
    configure({"lambda_timeout_seconds": 60, "fargate_bytes_per_second": 100_000})
    result = backup_message(MESSAGE, lambda: 60_000)
    assert result["status"] == "DELEGATED" and "pg_database_size" in result["reason"], result
    assert objects(aws) == []


def test_a_long_previous_run_sends_the_next_one(configure: Any, fargate_env: Ecs, aws: LocalStack) -> None:
    configure()
    first = backup_message(MESSAGE, lambda: 900_000)
    assert first["status"] == "SUCCEEDED", first  # small and fast: Lambda
    assert tasks(fargate_env) == []
    # The same target with a budget below what that run took.
    configure({"fargate_share": 0.0001, "lambda_timeout_seconds": 60})
    later = json.dumps({"target": "shop", "kind": "logical", "slot": (SLOT + timedelta(days=1)).isoformat()})
    result = backup_message(later, lambda: 60_000)
    assert result["status"] == "DELEGATED" and "previous run took" in result["reason"], result


def test_an_attempt_stopped_at_the_deadline_counts(configure: Any, fargate_env: Ecs, aws: LocalStack) -> None:
    """No complete backup yet, but the last attempt ran 850 s before the deadline stopped it."""
    configure()
    svc = wiring.backup_services()
    started = SLOT - timedelta(days=1)
    svc.catalog.write_failure(
        Manifest(
            backup_id="logical:shop:20261128T030000Z",
            status="FAILED",
            target="shop",
            slot=started,
            host="db",
            database="shop",
            server_version="",
            server_version_num=0,
            pg_dump_version=0,
            format="custom",
            compression="zstd:3",
            started_at=started,
            finished_at=started + timedelta(seconds=850),
            retention_class="",
            retention_policy="default",
            error="stopped 60 s before the time limit",
        )
    )
    result = backup_message(MESSAGE, lambda: 900_000)
    assert result["status"] == "DELEGATED" and "previous run took 850 s" in result["reason"], result


def test_small_target_runs_on_lambda(configure: Any, fargate_env: Ecs, aws: LocalStack) -> None:
    configure()
    assert backup_message(MESSAGE, lambda: 900_000)["status"] == "SUCCEEDED"
    assert tasks(fargate_env) == [] and claim(f"fargate#backup#{BID}") is None


def test_without_fargate_configured_everything_stays_on_lambda(
    configure: Any, aws: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("LIFEBOAT_FARGATE_")]:
        monkeypatch.delenv(key)
    configure(runner="fargate")
    assert backup_message(MESSAGE, lambda: 900_000)["status"] == "SUCCEEDED"


def test_a_refused_launch_is_retried(
    configure: Any, fargate_env: Ecs, aws: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.errors import FargateError

    configure(runner="fargate")
    monkeypatch.setenv("LIFEBOAT_FARGATE_CLUSTER", "no-such-cluster")
    with pytest.raises(FargateError, match="no-such-cluster"):  # raised: SQS redelivers the message
        backup_message(MESSAGE, lambda: 900_000)
    assert claim(f"fargate#backup#{BID}")["status"] == "FAILED"  # type: ignore[index]
    monkeypatch.setenv("LIFEBOAT_FARGATE_CLUSTER", fargate_env.cluster)
    assert backup_message(MESSAGE, lambda: 900_000)["status"] == "DELEGATED"


def test_whole_server_run_stays_on_lambda_and_its_databases_go(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, fargate_env: Ecs, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = target(
        "server",
        pg.port,
        aws.secret_arn,
        database="postgres",
        all_databases=True,
        runner="fargate",
        exclude_databases=["postgres", "bigshop", "extra1"],
    )
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "c.json", aws.bucket, [spec])))
    body = json.dumps({"target": "server", "kind": "logical", "slot": SLOT.isoformat()})
    run = backup_message(body, lambda: 900_000)
    assert run["status"] == "SUCCEEDED", run  # globals and the list of databases, on Lambda
    queued = boto3.client("sqs").receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10)["Messages"]
    shop = next(m["Body"] for m in queued if json.loads(m["Body"]).get("database") == "shop")
    result = backup_message(shop, lambda: 900_000)
    assert result["status"] == "DELEGATED" and result["backup_id"] == "logical:server/shop:20261129T030000Z"
    assert launched_command(fargate_env)[-2:] == ["--database", "shop"]


# --- restores -------------------------------------------------------------------------------------


@pytest.fixture
def restored_db(pg: PostgresServer) -> Iterator[str]:
    name = "shop_from_fargate"
    yield name
    pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_large_restore_is_delegated_and_the_task_restores(
    configure: Any, fargate_env: Ecs, aws: LocalStack, restored_db: str
) -> None:
    from chalicelib.logical.dump import run_logical_backup
    from chalicelib.restore.requests import LogicalRestoreRequest
    from chalicelib.restore.service import start_restore

    configure(runner="fargate")
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    svc = wiring.api_services()
    job = start_restore(
        svc,
        LogicalRestoreRequest.model_validate({"backup_id": BID, "into": {"target": "shop", "database": restored_db}}),
    )
    result = restore_message(json.dumps({"restore_id": job.restore_id}), lambda: 900_000)
    assert result["status"] == "DELEGATED" and result["restore_id"] == job.restore_id, result
    pending = svc.jobs.get(job.restore_id)
    assert pending.status == "PENDING", "the task starts the job, not the worker"
    assert pending.progress == {"runner": "fargate", "reason": result["reason"]}
    assert restore_message(json.dumps({"restore_id": job.restore_id}), None)["status"] == "SKIPPED"
    command = launched_command(fargate_env)
    assert command == ["-v", "run-restore", job.restore_id]
    proc = run_as_the_task(command)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = svc.jobs.get(job.restore_id)
    assert done.status == "SUCCEEDED", done.error
    assert done.result["verification"]["match"] is True
