"""pg-lifeboat's table of contents: schedules, queues and routes, each calling into chalicelib.

This is also the one place where errors become HTTP responses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalice.app import Chalice, CloudWatchEvent, Cron, IAMAuthorizer, Rate, Response, SQSEvent

from chalicelib import env

app = Chalice(app_name="pg-lifeboat")
iam = IAMAuthorizer()

# FIFO: message groups bound the concurrent dumps per server; deduplication ids drop repeated slots.
# The queue names come from LIFEBOAT_BACKUP_QUEUE and LIFEBOAT_RESTORE_QUEUE (chalicelib.env) when packaged.
BACKUP_QUEUE = env.current().backup_queue
RESTORE_QUEUE = env.current().restore_queue
JSON = ["application/json"]


# --- schedules and queues -------------------------------------------------------------------------

@app.schedule(Rate(1, unit=Rate.MINUTES), name="dispatcher")
def dispatcher(event: CloudWatchEvent) -> dict[str, Any]:
    """Every minute: queue the backups whose schedule slot has come."""
    from chalicelib.entrypoints import dispatch_tick

    return dispatch_tick(event.to_dict().get("time"))


@app.on_sqs_message(queue=BACKUP_QUEUE, batch_size=1, name="backup_worker")
def backup_worker(event: SQSEvent) -> list[dict[str, Any]]:
    """Run one queued backup: pg_dump streamed to S3, or the start of a snapshot."""
    from chalicelib.entrypoints import backup_message

    context: Any = event.context
    remaining = context.get_remaining_time_in_millis if context is not None else None
    return [backup_message(record.body, remaining) for record in event]


@app.on_sqs_message(queue=RESTORE_QUEUE, batch_size=1, name="restore_worker")
def restore_worker(event: SQSEvent) -> list[dict[str, Any]]:
    """Run one queued restore job."""
    from chalicelib.entrypoints import restore_message

    context: Any = event.context
    remaining = context.get_remaining_time_in_millis if context is not None else None
    return [restore_message(record.body, remaining) for record in event]


@app.schedule(Rate(15, unit=Rate.MINUTES), name="snapshot_sweeper")
def snapshot_sweeper(event: CloudWatchEvent) -> dict[str, Any]:
    """Mark finished snapshots, emit their metrics, start cross-region copies."""
    from chalicelib.entrypoints import sweep_snapshots

    return sweep_snapshots()


@app.schedule(Cron(45, 4, "*", "*", "?", "*"), name="snapshot_pruner")
def snapshot_pruner(event: CloudWatchEvent) -> dict[str, Any]:
    """Daily: delete managed snapshots that the retention policies no longer keep."""
    from chalicelib.entrypoints import prune_snapshots

    return prune_snapshots()


@app.schedule(Rate(2, unit=Rate.MINUTES), name="restore_sweeper")
def restore_sweeper(event: CloudWatchEvent) -> dict[str, Any]:
    """Advance running snapshot and point-in-time restores (e.g. add the Aurora instance)."""
    from chalicelib import wiring
    from chalicelib.restore import service

    return {"advanced": service.advance_running(wiring.api_services())}


# --- the API (every route IAM-authorized) ----------------------------------------------------------

def _status(exc: Exception) -> int:
    from chalicelib import errors

    statuses: list[tuple[type[Exception], int]] = [
        (errors.BadRequestError, 400), (errors.NotFoundError, 404), (errors.ConflictError, 409),
        (errors.ConfigError, 503), (errors.SecretError, 502), (errors.DatabaseConnectionError, 502),
        (errors.StorageError, 502),
    ]
    return next((status for cls, status in statuses if isinstance(exc, cls)), 500)


def _api(operation: Callable[[], tuple[int, Any, dict[str, str]]]) -> Response:
    """Run a route's operation; map every error to a JSON {"error", "message"} response."""
    from chalicelib.errors import LifeboatError
    from chalicelib.observability import logger

    try:
        status, body, headers = operation()
        return Response(body=body, status_code=status, headers={"Content-Type": "application/json", **headers})
    except LifeboatError as exc:
        status = _status(exc)
        if status >= 500:
            logger.error("request failed", extra={"error": str(exc), "error_code": exc.code})
        return Response(body={"error": exc.code, "message": str(exc)}, status_code=status,
                        headers={"Content-Type": "application/json"})
    except Exception:
        logger.exception("unexpected error in a route")
        return Response(body={"error": "internal_error", "message": "an unexpected error; see the function's log"},
                        status_code=500, headers={"Content-Type": "application/json"})


def _body() -> dict[str, Any]:
    from chalicelib.api import parse_json

    request = app.current_request
    assert request is not None
    return parse_json(request.raw_body)


@app.route("/backups", methods=["GET"], authorizer=iam)
def list_backups() -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        from chalicelib import api, wiring

        query = app.current_request.query_params if app.current_request else None
        params: dict[str, str] = dict(query or {})
        return 200, api.list_backups(wiring.api_services(), params.get("target"), params.get("kind")), {}

    return _api(op)


@app.route("/backups", methods=["POST"], authorizer=iam, content_types=JSON)
def request_backup() -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        from chalicelib import api, wiring

        req = api.parse_backup_request(_body())
        return 202, api.request_backup(wiring.api_services(), req), {}

    return _api(op)


@app.route("/restores", methods=["POST"], authorizer=iam, content_types=JSON)
def start_restore() -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        from chalicelib import api, wiring
        from chalicelib.restore.requests import parse_restore_request

        req = parse_restore_request(_body())
        headers = {k.lower(): v for k, v in (app.current_request.headers if app.current_request else {}).items()}
        job = api.start_restore_once(wiring.api_services(), req, headers.get("idempotency-key"),
                                     env.current().jobs_table, app.lambda_context)
        return 202, job, {"Location": f"/restores/{job['restore_id']}"}

    return _api(op)


@app.route("/restores", methods=["GET"], authorizer=iam)
def list_restores() -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        from chalicelib import wiring

        return 200, {"restores": [j.public() for j in wiring.api_services().jobs.recent()]}, {}

    return _api(op)


@app.route("/restores/{restore_id}", methods=["GET"], authorizer=iam)
def get_restore(restore_id: str) -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        from chalicelib import wiring
        from chalicelib.restore import service

        return 200, service.get_restore(wiring.api_services(), restore_id).public(), {}

    return _api(op)
