"""pg-lifeboat's table of contents: schedules, queues and routes, each calling into chalicelib."""

from __future__ import annotations

import os
from typing import Any

from chalice.app import Chalice, CloudWatchEvent, Rate, SQSEvent

app = Chalice(app_name="pg-lifeboat")

BACKUP_QUEUE = os.environ.get("LIFEBOAT_BACKUP_QUEUE", "pg-lifeboat-backups")


@app.schedule(Rate(1, unit=Rate.MINUTES), name="dispatcher")
def dispatcher(event: CloudWatchEvent) -> dict[str, Any]:
    """Every minute: queue the backups whose schedule slot has come."""
    from chalicelib.handlers import dispatch_tick

    return dispatch_tick(event.to_dict().get("time"))


@app.on_sqs_message(queue=BACKUP_QUEUE, batch_size=1, name="backup_worker")
def backup_worker(event: SQSEvent) -> list[dict[str, Any]]:
    """Run one queued logical backup (pg_dump streamed to S3)."""
    from chalicelib.handlers import backup_message

    context: Any = event.context
    remaining = context.get_remaining_time_in_millis if context is not None else None
    return [backup_message(record.body, remaining) for record in event]
