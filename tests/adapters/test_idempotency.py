"""POST /restores' Idempotency-Key records in the jobs table: with the handler's Lambda context, a request's
"in progress" record expires with the invocation (a timed-out request does not block its key for a day)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from chalicelib import api, wiring
from chalicelib.adapters import dynamo
from chalicelib.adapters.dynamo import RestoreJobTable
from chalicelib.restore.model import RestoreJob, RestoreJobStore
from chalicelib.restore.requests import parse_restore_request
from devstack.local import LocalStack

REQUEST = {"backup_id": "logical:shop:20261129T030000Z", "into": {"target": "shop", "database": "shop_copy"}}


class Context:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def idempotency_items(aws: LocalStack) -> list[dict[str, Any]]:
    items = boto3.client("dynamodb").scan(TableName=aws.jobs_table)["Items"]
    return [i for i in items if i["pk"]["S"].startswith(dynamo.IDEMPOTENCY_KEY_PREFIX + "#")]


@pytest.fixture
def in_progress(aws: LocalStack, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[dict[str, Any]]]:
    """The API services, with a start_restore that records the idempotency record as it is while it runs."""
    jobs = RestoreJobStore(RestoreJobTable(wiring.client("dynamodb"), aws.jobs_table))
    seen: list[dict[str, Any]] = []

    def start_restore(svc: Any, req: Any) -> RestoreJob:
        [record] = [i for i in idempotency_items(aws) if i["status"]["S"] == "INPROGRESS"]
        seen.append(record)
        now = datetime.now(UTC)
        job = RestoreJob(
            restore_id=f"r-{len(seen):016x}",
            kind="logical",
            target="shop",
            request=REQUEST,
            created_at=now,
            updated_at=now,
        )
        jobs.create(job)
        return job

    monkeypatch.setattr(api, "start_restore", start_restore)
    svc: Any = type("Svc", (), {"jobs": jobs})()
    return svc, seen


def test_the_in_progress_record_expires_with_the_invocation(
    aws: LocalStack, in_progress: tuple[Any, list[dict[str, Any]]]
) -> None:
    svc, seen = in_progress
    before = time.time()
    job = api.start_restore_once(svc, parse_restore_request(REQUEST), "key-1", aws.jobs_table, Context(25_000))
    [record] = seen
    assert record["status"] == {"S": "INPROGRESS"}
    deadline_ms = int(record["in_progress_expiration"]["N"])
    assert before * 1000 + 24_000 <= deadline_ms <= time.time() * 1000 + 25_000
    # The key's answer is kept a day, as before, and a retry gets the same job.
    [done] = idempotency_items(aws)
    assert done["status"] == {"S": "COMPLETED"} and int(done["expires_at"]["N"]) > before + 23 * 3600
    again = api.start_restore_once(svc, parse_restore_request(REQUEST), "key-1", aws.jobs_table, Context(25_000))
    assert again["restore_id"] == job["restore_id"] and len(seen) == 1


def test_without_a_context_nothing_breaks(aws: LocalStack, in_progress: tuple[Any, list[dict[str, Any]]]) -> None:
    svc, seen = in_progress
    for context in (None, object()):  # tests and chalice local may have none, or one without a clock
        with pytest.warns(UserWarning, match="register_lambda_context"):
            api.start_restore_once(svc, parse_restore_request(REQUEST), f"key-{id(context)}", aws.jobs_table, context)
    assert len(seen) == 2 and all("in_progress_expiration" not in r for r in seen)
