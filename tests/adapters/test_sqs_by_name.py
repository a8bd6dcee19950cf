"""A `chalice deploy` stage knows its queues by name only (.chalice/config.json): the environment takes a name where
no URL is given, and the SQS adapter asks SQS for the URL once (moto)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import env, wiring
from chalicelib.adapters.sqs import Queue
from chalicelib.errors import StorageError
from devstack.local import LocalStack

CONFIG = json.loads((Path(__file__).resolve().parents[2] / ".chalice" / "config.json").read_text())


def test_a_queue_given_by_name_is_found_once_and_sent_to(aws: LocalStack) -> None:
    name = aws.queue_url.rsplit("/", 1)[1]
    queue = Queue(wiring.client("sqs"), name)
    asked: list[str] = []

    def count(**_: Any) -> None:
        asked.append("GetQueueUrl")

    events = wiring.client("sqs").meta.events
    events.register("before-call.sqs.GetQueueUrl", count)
    try:
        assert queue.fifo == name.endswith(".fifo")
        for dedup in ("first", "second"):
            if queue.fifo:
                queue.send("{}", group_id="g", dedup_id=dedup)
            else:
                queue.send("{}")
    finally:
        events.unregister("before-call.sqs.GetQueueUrl", count)
    assert queue.url == aws.queue_url
    assert len(asked) == 1
    got = boto3.client("sqs").receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10)
    assert len(got.get("Messages", [])) == 2


def test_an_unknown_queue_name_says_which(aws: LocalStack) -> None:
    with pytest.raises(StorageError, match="'no-such-queue'"):
        Queue(wiring.client("sqs"), "no-such-queue").send("{}")


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_chalice_deploy_stages_reach_their_queues_without_urls(stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    variables = CONFIG["stages"][stage]["environment_variables"]
    for name in ("LIFEBOAT_BACKUP_QUEUE_URL", "LIFEBOAT_RESTORE_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
        assert name not in variables
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = env.current()
    assert settings.backup_queue_url == f"pg-lifeboat-{stage}-backups.fifo"
    assert settings.restore_queue_url == f"pg-lifeboat-{stage}-restores"
    monkeypatch.setenv("LIFEBOAT_BACKUP_QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/111122223333/q.fifo")
    assert env.current().backup_queue_url == "https://sqs.eu-west-1.amazonaws.com/111122223333/q.fifo"
