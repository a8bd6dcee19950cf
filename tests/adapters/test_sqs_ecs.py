"""The SQS and ECS adapters against moto: what is sent, and how AWS refusals become LifeboatErrors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from chalicelib import wiring
from chalicelib.adapters.ecs import EcsTasks
from chalicelib.adapters.sqs import Message, Queue
from chalicelib.errors import FargateError, LifeboatError, StorageError
from chalicelib.restore.model import RestoreQueue
from chalicelib.scheduling.dispatch import BackupQueue, DueBackup
from devstack.local import LocalStack, target, write_config

UNREACHABLE = "http://127.0.0.1:9"


def unreachable(service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=UNREACHABLE,  # type: ignore[call-overload]
        config=BotoConfig(retries={"max_attempts": 1}, connect_timeout=1),
    )


def received(url: str) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    out: list[dict[str, Any]] = []
    while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"]).get("Messages"):
        out.extend(batch)  # type: ignore[arg-type]
        for m in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


def test_send_one(aws: LocalStack) -> None:
    RestoreQueue(Queue(wiring.client("sqs"), aws.restore_queue_url)).send("r-1")
    [m] = received(aws.restore_queue_url)
    assert json.loads(m["Body"]) == {"restore_id": "r-1"}


def test_send_one_to_a_fifo_queue(aws: LocalStack) -> None:
    Queue(wiring.client("sqs"), aws.queue_url).send("hello", group_id="g1", dedup_id="d1")
    [m] = received(aws.queue_url)
    assert m["Body"] == "hello" and m["Attributes"]["MessageGroupId"] == "g1"
    assert m["Attributes"]["MessageDeduplicationId"] == "d1"


def test_send_a_batch(aws: LocalStack) -> None:
    queue = Queue(wiring.client("sqs"), aws.queue_url)
    assert queue.fifo
    assert queue.send_batch([Message(f"m{i}", f"g{i % 2}", f"d{i}") for i in range(10)]) == 10
    assert queue.send_batch([]) == 0
    got = received(aws.queue_url)
    assert sorted(m["Body"] for m in got) == sorted(f"m{i}" for i in range(10))
    assert {m["Attributes"]["MessageGroupId"] for m in got} == {"g0", "g1"}
    with pytest.raises(ValueError, match="at most 10"):
        queue.send_batch([Message("x", "g", f"d{i}") for i in range(11)])


def test_a_refused_batch_is_a_storage_error(aws: LocalStack) -> None:
    """A FIFO queue refuses a message without a group: SQS answers 200 with it under Failed, or refuses the
    request; either way the sender learns it."""
    with pytest.raises(StorageError, match=r"pg-lifeboat-backups\.fifo"):
        Queue(wiring.client("sqs"), aws.queue_url).send_batch([Message("no group")])


def test_sqs_failures_are_storage_errors(aws: LocalStack) -> None:
    gone = aws.restore_queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    with pytest.raises(StorageError, match="no-such-queue"):
        Queue(wiring.client("sqs"), gone).send("x")
    with pytest.raises(StorageError, match="no-such-queue"):
        Queue(wiring.client("sqs"), gone).send_batch([Message("x")])
    with pytest.raises(StorageError, match="cannot send"):
        Queue(unreachable("sqs"), aws.restore_queue_url).send("x")


def test_backup_queue_groups_through_the_adapter(aws: LocalStack, tmp_path: Any) -> None:
    from chalicelib import config as config_module

    path = write_config(tmp_path / "c.json", aws.bucket, [target("shop", 5432, aws.secret_arn)])
    cfg = config_module.load(str(path), ssm_client=None)
    slot = datetime(2026, 11, 29, 3, tzinfo=UTC)
    queue = BackupQueue(Queue(wiring.client("sqs"), aws.queue_url), cfg)
    assert queue.fifo and queue.url == aws.queue_url
    assert queue.send([DueBackup("shop", "logical", slot, f"db{i}") for i in range(12)]) == 12
    got = received(aws.queue_url)
    assert len(got) == 12 and all(m["Attributes"]["MessageGroupId"].startswith("127.0.0.1:5432#") for m in got)
    with pytest.raises(StorageError, match="needs the configuration"):
        BackupQueue(Queue(wiring.client("sqs"), aws.queue_url)).send([DueBackup("shop", "logical", slot)])


def test_ecs_refusals_are_fargate_errors(aws: LocalStack) -> None:
    kwargs: dict[str, Any] = {
        "cluster": "no-such-cluster",
        "task_definition": "lifeboat:1",
        "subnets": ["subnet-1"],
        "security_groups": [],
        "assign_public_ip": False,
        "container": "lifeboat",
        "command": ["-v", "run-restore", "r-1"],
        "started_by": "pg-lifeboat",
        "tags": {},
        "what": "run-restore r-1",
    }
    with pytest.raises(FargateError, match=r"no-such-cluster.*ClusterNotFoundException") as info:
        EcsTasks(wiring.client("ecs")).run_fargate_task(**kwargs)
    assert isinstance(info.value, LifeboatError) and info.value.code == "fargate_failed"
    with pytest.raises(FargateError, match="cannot reach ECS to start the run-restore r-1 task"):
        EcsTasks(unreachable("ecs")).run_fargate_task(**kwargs)
