"""The jobs table (chalicelib.adapters.dynamo) against moto: key formats, conditional transitions, and restore
jobs listed by index queries that read neither the slot claims nor finished jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from chalicelib import wiring
from chalicelib.adapters import dynamo
from chalicelib.adapters.dynamo import (
    BY_KIND_INDEX,
    RUNNING_INDEX,
    DispatchCursor,
    JobStore,
    RestoreJobTable,
    RestoreRecord,
)
from chalicelib.errors import NotFoundError, StorageError
from chalicelib.restore.model import RestoreJob, RestoreJobStore
from devstack.local import LocalStack
from tests.adapters.conftest import Calls

T0 = datetime(2026, 11, 29, 3, tzinfo=UTC)


def table(aws: LocalStack) -> RestoreJobTable:
    return RestoreJobTable(wiring.client("dynamodb"), aws.jobs_table)


def store(aws: LocalStack) -> RestoreJobStore:
    return RestoreJobStore(table(aws))


def job(n: int, status: str = "PENDING", created_at: datetime | None = None) -> RestoreJob:
    created = created_at or T0 + timedelta(minutes=n)
    return RestoreJob(
        restore_id=f"r-{n:016x}",
        kind="snapshot",
        status=status,
        target="shop",  # type: ignore[arg-type]
        request={"backup_id": "snapshot:shop:20261129T030000Z"},
        created_at=created,
        updated_at=created,
        result={"instance": f"db-{n}"} if status == "RUNNING" else {},
    )


def fill(aws: LocalStack, jobs: list[RestoreJob]) -> None:
    """The jobs, in the given order, among the other records the table holds: claims, a delegation, the
    dispatch cursor and an idempotency record."""
    jobs_store, claims = store(aws), JobStore(wiring.client("dynamodb"), aws.jobs_table)
    for i in range(20):
        claims.claim(dynamo.backup_claim_key(f"logical:db-{i}:20261129T030000Z"), timedelta(hours=1))
    claims.claim(dynamo.snapshot_claim_key("snapshot:shop:20261129T030000Z"), timedelta(hours=1))
    claims.claim(dynamo.delegation_key("backup", "logical:big:20261129T030000Z"), timedelta(hours=1))
    DispatchCursor(wiring.client("dynamodb"), aws.jobs_table).advance(T0)
    boto3.client("dynamodb").put_item(
        TableName=aws.jobs_table,
        Item={"pk": {"S": f"{dynamo.IDEMPOTENCY_KEY_PREFIX}#0123abcd"}, "status": {"S": "COMPLETED"}},
    )
    for j in jobs:
        jobs_store.create(j)


def ids(jobs: list[RestoreJob]) -> list[str]:
    return [j.restore_id for j in jobs]


def test_key_formats() -> None:
    assert dynamo.backup_claim_key("logical:shop:20261129T030000Z") == "backup#logical:shop:20261129T030000Z"
    assert dynamo.snapshot_claim_key("snapshot:shop:20261129T030000Z") == "snapshot#snapshot:shop:20261129T030000Z"
    assert dynamo.delegation_key("backup", "logical:shop:x") == "fargate#backup#logical:shop:x"
    assert dynamo.delegation_key("restore", "r-1") == "fargate#restore#r-1"
    assert dynamo.restore_job_key("r-1") == "restore#r-1"
    assert dynamo.CURSOR_KEY == "dispatcher#cursor"
    assert dynamo.IDEMPOTENCY_KEY_PREFIX == "idempotency#restores"


def test_devstack_creates_the_sparse_indexes(aws: LocalStack) -> None:
    desc = boto3.client("dynamodb").describe_table(TableName=aws.jobs_table)["Table"]
    indexes = {i["IndexName"]: i for i in desc["GlobalSecondaryIndexes"]}
    assert set(indexes) == {BY_KIND_INDEX, RUNNING_INDEX}
    assert indexes[BY_KIND_INDEX]["KeySchema"] == [
        {"AttributeName": "kind", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    assert indexes[RUNNING_INDEX]["KeySchema"][0] == {"AttributeName": "running", "KeyType": "HASH"}


def test_recent_is_one_query_newest_first_with_the_limit(aws: LocalStack, dynamodb_calls: Calls) -> None:
    jobs = [job(n) for n in (3, 0, 5, 1, 4, 2)]  # written out of order
    fill(aws, jobs)
    dynamodb_calls.clear()
    recent = store(aws).recent(limit=4)
    assert ids(recent) == ids([job(n) for n in (5, 4, 3, 2)])
    assert dynamodb_calls.names == ["Query"], "one request, and no Scan of the claims"
    [(_, params)] = dynamodb_calls.calls
    assert params["IndexName"] == BY_KIND_INDEX and params["Limit"] == 4 and params["ScanIndexForward"] is False
    assert ids(store(aws).recent(limit=50)) == ids([job(n) for n in (5, 4, 3, 2, 1, 0)])


def test_recent_sorts_by_time_whatever_the_microseconds(aws: LocalStack) -> None:
    """isoformat() drops a zero microsecond part; the index's sort key keeps it, so text order is time order."""
    whole, half = job(1, created_at=T0), job(2, created_at=T0 + timedelta(microseconds=500_000))
    later = job(3, created_at=(T0 + timedelta(seconds=1)).astimezone(UTC))
    fill(aws, [half, later, whole])
    assert ids(store(aws).recent(limit=3)) == ids([later, half, whole])


def test_sweeper_reads_only_running_jobs(aws: LocalStack, dynamodb_calls: Calls) -> None:
    fill(aws, [job(1), job(2), job(3), job(4), job(5)])
    jobs = store(aws)
    for n in (2, 3, 5):
        assert jobs.start(job(n), timedelta(minutes=15)) is not None
    done = jobs.get(job(3).restore_id).model_copy(update={"status": "SUCCEEDED"})
    jobs.save(done)  # leaves the running index
    dynamodb_calls.clear()
    running = jobs.running()
    assert ids(running) == ids([job(5), job(2)]) and {j.status for j in running} == {"RUNNING"}
    assert dynamodb_calls.names == ["Query"]
    assert dynamodb_calls.calls[0][1]["IndexName"] == RUNNING_INDEX
    assert jobs.get(job(3).restore_id).status == "SUCCEEDED"


def test_running_pages_up_to_the_limit(aws: LocalStack, dynamodb_calls: Calls) -> None:
    records = table(aws)
    fill(aws, [job(n) for n in range(7)])
    for n in range(7):
        assert store(aws).start(job(n), timedelta(minutes=15)) is not None
    dynamodb_calls.clear()
    assert len(records.running(limit=5)) == 5
    assert set(dynamodb_calls.names) == {"Query"}
    assert len(records.running(limit=500)) == 7
    assert records.running(limit=0) == [] and records.recent(limit=0) == []


def test_the_restore_sweeper_uses_the_running_index(
    aws: LocalStack, dynamodb_calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.restore import service
    from chalicelib.restore import snapshot as snapshot_restores

    fill(aws, [job(1), job(2)])
    jobs = store(aws)
    started = jobs.start(job(2), timedelta(minutes=15))
    assert started is not None
    jobs.save(started.model_copy(update={"result": {"instance": "db-2"}}))
    seen: list[str] = []

    def advance(svc: Any, j: RestoreJob) -> RestoreJob:
        seen.append(j.restore_id)
        return j

    monkeypatch.setattr(snapshot_restores, "advance", advance)
    dynamodb_calls.clear()
    svc: Any = type("Svc", (), {"jobs": jobs})()
    assert service.advance_running(svc) == []
    assert seen == [job(2).restore_id]
    assert "Scan" not in dynamodb_calls.names and dynamodb_calls.names == ["Query"]


def test_transitions_are_conditional(aws: LocalStack) -> None:
    jobs = store(aws)
    fill(aws, [job(1), job(2)])
    with pytest.raises(StorageError, match="already exists"):
        jobs.create(job(1))
    leased = jobs.start(job(2), timedelta(minutes=15))
    assert leased is not None and leased.status == "RUNNING" and leased.attempts == 1
    assert jobs.start(leased, timedelta(minutes=15)) is None, "a second worker does not take a leased job"
    running = jobs.start(job(1), timedelta(seconds=-120))  # its worker died: the lease has run out
    assert running is not None
    expired = jobs.start(running, timedelta(minutes=15))
    assert expired is not None and expired.attempts == 2, "a job whose lease ran out is taken over"
    failed = jobs.save(expired.model_copy(update={"status": "FAILED"}))
    assert failed.finished_at is not None
    again = jobs.save(failed.model_copy(update={"status": "RUNNING", "progress": {"late": 1}}))
    assert again.status == "FAILED" and again.progress == {}, "a finished job never changes"
    with pytest.raises(NotFoundError):
        jobs.get("r-nope")


def test_claims(aws: LocalStack) -> None:
    claims = JobStore(wiring.client("dynamodb"), aws.jobs_table)
    key = dynamo.backup_claim_key("logical:shop:20261129T030000Z")
    assert claims.claim(key, timedelta(hours=1), detail={"trigger": "schedule"})
    assert not claims.claim(key, timedelta(hours=1)), "held by a running attempt"
    claims.finish(key, "FAILED", {"error": "boom"})
    assert claims.claim(key, timedelta(hours=1)), "a failed attempt may be retried"
    claims.finish(key, "SUCCEEDED", {"size": "42"})
    assert not claims.claim(key, timedelta(hours=1), now=datetime.now(UTC) + timedelta(days=2))
    record = claims.get(key)
    assert record is not None and record["status"] == "SUCCEEDED" and record["size"] == "42"
    assert claims.get("backup#nothing") is None
    with pytest.raises(ValueError, match="kind"):
        claims.claim(dynamo.backup_claim_key("x"), timedelta(hours=1), detail={"kind": "restore"})


def test_cursor_only_moves_forwards(aws: LocalStack) -> None:
    cursor = DispatchCursor(wiring.client("dynamodb"), aws.jobs_table)
    assert cursor.get() is None
    assert cursor.advance(T0) and cursor.get() == T0
    assert not cursor.advance(T0 - timedelta(minutes=1)) and not cursor.advance(T0)
    assert cursor.advance(T0 + timedelta(minutes=1)) and cursor.get() == T0 + timedelta(minutes=1)


def test_aws_failures_are_storage_errors(aws: LocalStack) -> None:
    missing = RestoreJobTable(wiring.client("dynamodb"), "no-such-table")
    with pytest.raises(StorageError, match="no-such-table"):
        missing.recent(10)
    with pytest.raises(StorageError, match="ResourceNotFoundException"):
        JobStore(wiring.client("dynamodb"), "no-such-table").claim("backup#x", timedelta(hours=1))
    unreachable: Any = boto3.client(
        "dynamodb", endpoint_url="http://127.0.0.1:9", config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=1)
    )
    with pytest.raises(StorageError, match="cannot reach DynamoDB"):
        DispatchCursor(unreachable, aws.jobs_table).advance(T0)
    with pytest.raises(StorageError, match="cannot read restore"):
        RestoreJobTable(unreachable, aws.jobs_table).get("r-1")


def test_a_record_keeps_its_document(aws: LocalStack) -> None:
    records = table(aws)
    created = T0 + timedelta(microseconds=7)
    records.create(RestoreRecord("r-1", "PENDING", created, '{"x": 1}'))
    assert records.get("r-1") == '{"x": 1}' and records.get("r-2") is None
    item = boto3.client("dynamodb").get_item(TableName=aws.jobs_table, Key={"pk": {"S": "restore#r-1"}})["Item"]
    assert item["kind"] == {"S": "restore"} and item["running"] == {"S": "restore"}  # unfinished: counted by quotas
    assert item["created_at"] == {"S": "2026-11-29T03:00:00.000007+00:00"}
    assert int(item["expires_at"]["N"]) == int((created + timedelta(days=90)).timestamp())
