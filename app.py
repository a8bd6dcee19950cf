"""pg-lifeboat's table of contents: schedules, queues and routes, each calling into chalicelib.

This is also the one place where errors become HTTP responses. Every route is IAM-authorized and names
its target in the path (/targets/{target}/...): an IAM policy on execute-api:Invoke can grant one target's
restores and nothing else (README, "Who may restore what").
"""

from __future__ import annotations

import gc

gc.disable()  # cold start: no collections while the imports below build what lives as long as the function (the end)

from collections.abc import Callable
from typing import Any

from chalice.app import Chalice, CloudWatchEvent, Cron, IAMAuthorizer, Rate, Response, SQSEvent

from chalicelib import api, entrypoints, env, errors, wiring
from chalicelib.drills import views as drills
from chalicelib.drills.build import evidence_store
from chalicelib.observability import logger
from chalicelib.restore import service
from chalicelib.restore.requests import parse_restore_request

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
    return entrypoints.dispatch_tick(event.to_dict().get("time"))


@app.on_sqs_message(queue=BACKUP_QUEUE, batch_size=1, name="backup_worker")
def backup_worker(event: SQSEvent) -> list[dict[str, Any]]:
    """Run one queued backup: pg_dump streamed to S3, or the start of a snapshot."""
    context: Any = event.context
    remaining = context.get_remaining_time_in_millis if context is not None else None
    return [entrypoints.backup_message(record.body, remaining) for record in event]


@app.on_sqs_message(queue=RESTORE_QUEUE, batch_size=1, name="restore_worker")
def restore_worker(event: SQSEvent) -> list[dict[str, Any]]:
    """Run one queued restore job."""
    context: Any = event.context
    remaining = context.get_remaining_time_in_millis if context is not None else None
    return [entrypoints.restore_message(record.body, remaining) for record in event]


@app.schedule(Rate(15, unit=Rate.MINUTES), name="snapshot_sweeper")
def snapshot_sweeper(event: CloudWatchEvent) -> dict[str, Any]:
    """Mark finished snapshots, emit their metrics, start cross-region copies."""
    return entrypoints.sweep_snapshots()


@app.schedule(Cron(45, 4, "*", "*", "?", "*"), name="snapshot_pruner")
def snapshot_pruner(event: CloudWatchEvent) -> dict[str, Any]:
    """Daily: delete managed snapshots, and the base backups and WAL, that the retention policies no longer keep."""
    return entrypoints.prune_snapshots(event_time=event.to_dict().get("time"))


@app.schedule(Rate(2, unit=Rate.MINUTES), name="restore_sweeper")
def restore_sweeper(event: CloudWatchEvent) -> dict[str, Any]:
    """Advance running snapshot and point-in-time restores (add the Aurora instance, attach EBS volumes).
    The only writer besides the restore worker: reading a restore through the API changes nothing."""
    return {"advanced": service.advance_running(wiring.api_services())}


# --- the API (every route IAM-authorized, every path names its target) ---------------------------------

STATUSES: list[tuple[type[Exception], int]] = [
    (errors.BadRequestError, 400),
    (errors.ForbiddenError, 403),
    (errors.NotFoundError, 404),
    (errors.ConflictError, 409),
    (errors.TooManyRestoresError, 429),
    (errors.ConfigError, 503),
    (errors.SecretError, 502),
    (errors.DatabaseConnectionError, 502),
    (errors.StorageError, 502),
    (errors.SnapshotError, 502),  # AWS failed a call the API made (describe snapshots, instances)
    (errors.RestoreError, 502),
]


def _status(exc: Exception) -> int:
    return next((status for cls, status in STATUSES if isinstance(exc, cls)), 500)


def _api(operation: Callable[[], tuple[int, Any, dict[str, str]]]) -> Response:
    """Run a route's operation; map every error to a JSON {"error", "message"} response."""
    try:
        status, body, headers = operation()
        return Response(body=body, status_code=status, headers={"Content-Type": "application/json", **headers})
    except errors.LifeboatError as exc:
        status = _status(exc)
        if status >= 500:
            logger.error("request failed", extra={"error": str(exc), "error_code": exc.code})
        return Response(
            body={"error": exc.code, "message": str(exc)},
            status_code=status,
            headers={"Content-Type": "application/json"},
        )
    except Exception:  # the one place a bug becomes a 500 with a generic message (the traceback goes to the log)
        logger.exception("unexpected error in a route")
        return Response(
            body={"error": "internal_error", "message": "an unexpected error; see the function's log"},
            status_code=500,
            headers={"Content-Type": "application/json"},
        )


def _body() -> dict[str, Any]:
    request = app.current_request
    assert request is not None
    return api.parse_json(request.raw_body)


def _query() -> dict[str, str]:
    request = app.current_request
    return dict((request.query_params if request else None) or {})


def _caller() -> str:
    """The IAM identity API Gateway authorized ("" locally): idempotency keys are scoped to it."""
    request = app.current_request
    identity = (request.context or {}).get("identity") or {} if request is not None else {}
    return str(identity.get("userArn") or identity.get("caller") or "")


def _headers() -> dict[str, str]:
    request = app.current_request
    return {k.lower(): v for k, v in (request.headers if request else {}).items()}


@app.route("/targets/{target}/backups", methods=["GET"], authorizer=iam)
def list_backups(target: str) -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        svc = wiring.api_services()
        return 200, api.list_backups(svc, target, _query().get("kind"), evidence=evidence_store(svc.config)), {}

    return _api(op)


@app.route("/targets/{target}/backups", methods=["POST"], authorizer=iam, content_types=JSON)
def request_backup(target: str) -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        req = api.parse_backup_request(_body())
        return 202, api.request_backup(wiring.api_services(), target, req), {}

    return _api(op)


@app.route("/targets/{target}/restores", methods=["POST"], authorizer=iam, content_types=JSON)
def start_restore(target: str) -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        req = parse_restore_request(_body(), target)
        job = api.start_restore_once(
            wiring.api_services(),
            req,
            _headers().get("idempotency-key"),
            env.current().jobs_table,
            app.lambda_context,
            scope=f"{target}|{_caller()}",
        )
        status = 201 if job["kind"] == "wal" else 202  # a WAL recovery plan is answered at once (restore.wal_recovery)
        return status, job, {"Location": f"/targets/{target}/restores/{job['restore_id']}"}

    return _api(op)


@app.route("/targets/{target}/restores", methods=["GET"], authorizer=iam)
def list_restores(target: str) -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        jobs = service.list_restores(wiring.api_services(), target)
        return 200, {"restores": [j.public() for j in jobs]}, {}

    return _api(op)


@app.route("/targets/{target}/drills", methods=["GET"], authorizer=iam)
def list_drills(target: str) -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        cfg = wiring.load_config()
        return 200, drills.list_drills(cfg, evidence_store(cfg), target), {}

    return _api(op)


@app.route("/targets/{target}/restores/{restore_id}", methods=["GET"], authorizer=iam)
def get_restore(target: str, restore_id: str) -> Response:
    def op() -> tuple[int, Any, dict[str, str]]:
        return 200, service.get_restore(wiring.api_services(), restore_id, target).public(), {}

    return _api(op)


# --- cold start ------------------------------------------------------------------------------------------
# What the imports above built lives as long as the function: collecting while they ran was wasted work (~15 ms of
# `import app`), and frozen, it is not rescanned in every full collection while the first event imports boto3 and
# builds its clients (~40 ms of a ~450 ms first call; BENCHMARKS.md, section 7). Later garbage is collected as before.
gc.freeze()
gc.enable()
