"""The product driven the way AWS drives it: the Lambda handlers through Chalice's test client, queues on moto."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def lambda_client() -> Iterator[Any]:
    import app as lambda_app
    from devstack.chalice_local import client

    with client(lambda_app.app, project_dir=str(REPO)) as c:
        yield c


def iso(when: datetime | str) -> str:
    return when if isinstance(when, str) else when.strftime("%Y-%m-%dT%H:%M:%SZ")


def tick(c: Any, when: datetime | str) -> dict[str, Any]:
    """One EventBridge delivery of the dispatcher schedule at `when`."""
    event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
    event["time"] = iso(when)
    payload: dict[str, Any] = c.lambda_.invoke("dispatcher", event).payload
    return payload


def receive_all(queue_url: str) -> list[str]:
    """Every message body on a queue (deleted as read)."""
    sqs = boto3.client("sqs")
    bodies: list[str] = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        for m in messages:
            bodies.append(m["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def backup_worker(c: Any, body: str) -> list[dict[str, Any]]:
    payload: list[dict[str, Any]] = c.lambda_.invoke(
        "backup_worker", c.events.generate_sqs_event(message_bodies=[body], queue_name="pg-lifeboat-backups")
    ).payload
    return payload


def restore_worker(c: Any, body: str) -> list[dict[str, Any]]:
    payload: list[dict[str, Any]] = c.lambda_.invoke(
        "restore_worker", c.events.generate_sqs_event(message_bodies=[body], queue_name="pg-lifeboat-restores")
    ).payload
    return payload


def run_schedule(c: Any, when: datetime | str) -> list[dict[str, Any]]:
    """Dispatcher tick, then the backup worker for every message it queued."""
    tick(c, when)
    results: list[dict[str, Any]] = []
    for body in receive_all(os.environ["LIFEBOAT_BACKUP_QUEUE_URL"]):
        results.extend(backup_worker(c, body))
    return results


def drain_restores(c: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for body in receive_all(os.environ["LIFEBOAT_RESTORE_QUEUE_URL"]):
        results.extend(restore_worker(c, body))
    return results


def post(c: Any, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return c.http.post(path, body=raw, headers={"Content-Type": "application/json", **(headers or {})})


def get(c: Any, path: str) -> tuple[int, Any]:
    r = c.http.get(path)
    return r.status_code, json.loads(r.body)
