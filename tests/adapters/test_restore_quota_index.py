"""The restore quotas count unfinished jobs with one Query on the sparse `running` index: PENDING and RUNNING
jobs of the last day, never finished ones, never the claims; the sweeper still sees only RUNNING jobs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chalicelib.restore.model import ACTIVE_WINDOW
from devstack.local import LocalStack
from tests.adapters.conftest import Calls
from tests.adapters.test_dynamo import fill, ids, job, store


def test_active_jobs_are_the_unfinished_ones_of_the_last_day(aws: LocalStack, dynamodb_calls: Calls) -> None:
    now = datetime.now(UTC)
    jobs = store(aws)
    made = [job(n, created_at=now - timedelta(minutes=4 - n)) for n in (1, 2, 3)]
    stale = job(4, created_at=now - ACTIVE_WINDOW - timedelta(hours=1))  # its worker died a day ago
    fill(aws, [*made, stale])
    started = jobs.start(made[1], timedelta(minutes=15))
    assert started is not None
    finished = jobs.start(made[2], timedelta(minutes=15))
    assert finished is not None
    jobs.save(finished.model_copy(update={"status": "SUCCEEDED"}))
    dynamodb_calls.clear()
    active = jobs.active()
    assert ids(active) == [job(2).restore_id, job(1).restore_id]  # newest first; the finished and the stale left out
    assert [j.status for j in active] == ["RUNNING", "PENDING"]
    assert dynamodb_calls.names == ["Query"]
    assert ids(jobs.running()) == [job(2).restore_id]  # the sweeper: RUNNING only


def test_recent_of_one_target(aws: LocalStack) -> None:
    jobs = store(aws)
    fill(aws, [job(n) for n in range(6)])
    other = job(9).model_copy(update={"target": "other"})
    jobs.create(other)
    assert ids(jobs.recent(target="other")) == [other.restore_id]
    assert ids(jobs.recent(limit=2, target="shop")) == [job(5).restore_id, job(4).restore_id]
    assert jobs.recent(target="nobody") == []
