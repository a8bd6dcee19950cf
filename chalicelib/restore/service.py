"""Restore jobs from request to outcome: refuse what can be refused at once, record and queue the job,
run it on the worker, advance snapshot restores until they finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from chalicelib.adapters.pgtools import Deadline
from chalicelib.adapters.postgres import Login, database_exists
from chalicelib.errors import BadRequestError, ConflictError, LifeboatError, NotFoundError
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.restore import RestoreOptions, restore_logical
from chalicelib.observability import logger, record
from chalicelib.restore import snapshot as snapshot_restores
from chalicelib.restore.model import JobError, RestoreJob, RestoreJobStore, RestoreServices, new_restore_id
from chalicelib.restore.requests import (
    Into,
    LogicalRestoreRequest,
    RestoreRequest,
    SnapshotRestoreRequest,
)


def into_login(svc: RestoreServices, into: Into) -> tuple[Login, str]:
    if into.target:
        target = svc.config.target(into.target)
        if target.connection is None:
            raise BadRequestError(f"target {into.target!r} has no connection to restore into")
        return svc.credentials.login(target.connection), into.target
    assert into.connection is not None
    # A caller-chosen server gets a stored password only if it proves who it is (verify-full against
    # the CA bundle) and never in cleartext (require_auth=!password: SCRAM or MD5 only).
    if into.connection.sslmode != "verify-full":
        raise BadRequestError("into.connection needs sslmode 'verify-full' (the server must prove its identity"
                              " before it is sent credentials); or restore into a configured target")
    login = svc.credentials.login(into.connection)
    return replace(login, require_auth="!password"), into.connection.host


def check_logical(svc: RestoreServices, req: LogicalRestoreRequest) -> str:
    """Everything that can be refused now is refused now (404, 409), before a job exists."""
    bid = BackupId.parse(req.backup_id)
    svc.config.target(bid.target)
    svc.catalog.manifest(bid)  # 404 unless complete
    if req.options.clean and req.options.confirm != req.into.database:
        raise ConflictError(f"replacing database {req.into.database!r} needs options.confirm set to"
                            f" {req.into.database!r} as well")
    login, _ = into_login(svc, req.into)
    if not req.options.clean and database_exists(login, req.into.database):
        raise ConflictError(f"database {req.into.database!r} already exists on {login.host}: choose a new name,"
                            " or set options.clean=true and options.confirm to the same name to replace it")
    return bid.target


def start_restore(svc: RestoreServices, req: RestoreRequest) -> RestoreJob:
    now = datetime.now(UTC)
    if isinstance(req, LogicalRestoreRequest):
        kind, target, backup_id = "logical", check_logical(svc, req), req.backup_id
    elif isinstance(req, SnapshotRestoreRequest):
        kind, target, backup_id = "snapshot", snapshot_restores.check(svc, req), req.backup_id
    else:
        target_cfg = svc.config.target(req.target)
        if target_cfg.physical is None or target_cfg.physical.method == "ebs":
            raise BadRequestError(f"target {req.target!r} is not an RDS instance or Aurora cluster:"
                                  " point-in-time restore needs one")
        kind, target, backup_id = "point_in_time", snapshot_restores.check(svc, req), None
    job = RestoreJob(restore_id=new_restore_id(), kind=kind, target=target, backup_id=backup_id,  # type: ignore[arg-type]
                     request=req.model_dump(mode="json", exclude_none=True), created_at=now, updated_at=now)
    svc.jobs.create(job)
    svc.restore_queue.send(job.restore_id)
    return job


def get_restore(svc: RestoreServices, restore_id: str) -> RestoreJob:
    """The job; a running snapshot or point-in-time restore is advanced first (describe calls are cheap)."""
    if not restore_id.startswith("r-") or len(restore_id) > 40:
        raise NotFoundError(f"no restore {restore_id!r}")
    job = svc.jobs.get(restore_id)
    if job.status == "RUNNING" and job.kind != "logical" and job.result:
        advanced = snapshot_restores.advance(svc, job)
        if advanced != job:
            job = svc.jobs.save(advanced)
    return job


def advance_running(svc: RestoreServices) -> list[str]:
    """The restore sweeper: advance every running snapshot or point-in-time restore."""
    changed = []
    for job in svc.jobs.running(limit=500):
        if job.status == "RUNNING" and job.kind != "logical" and job.result:
            advanced = snapshot_restores.advance(svc, job)
            if advanced != job:
                svc.jobs.save(advanced)
                changed.append(job.restore_id)
    return changed


def run_restore_job(svc: RestoreServices, restore_id: str, remaining_ms: Callable[[], int] | None = None,
                    workdir: Path | None = None) -> RestoreJob:
    """The restore worker: take a PENDING job, run it, record the outcome. Safe to deliver twice."""
    jobs: RestoreJobStore = svc.jobs
    job = jobs.get(restore_id)
    lease = timedelta(seconds=(remaining_ms() / 1000 if remaining_ms else 900) + 60)
    running = jobs.start(job, lease)
    if running is None:
        logger.info("restore already taken or finished", extra={"restore_id": restore_id, "status": job.status})
        return job
    job = running
    logger.append_keys(restore_id=restore_id, target=job.target)
    try:
        if job.kind == "logical":
            req = LogicalRestoreRequest.model_validate(job.request)
            login, server = into_login(svc, req.into)
            last = [0.0]

            def progress(done: int) -> None:
                nonlocal job
                now = time.monotonic()
                if now - last[0] >= 5:
                    last[0] = now
                    job = jobs.save(job.model_copy(update={"progress": {"bytes_restored": done}}), lease)

            opts = RestoreOptions(schemas=tuple(req.options.schemas), tables=tuple(req.options.tables),
                                  no_owner=req.options.no_owner, no_acl=req.options.no_acl, jobs=req.options.jobs,
                                  replace=req.options.clean)
            deadline = (Deadline(remaining_ms, svc.config.settings.deadline_margin_seconds)
                        if remaining_ms else None)
            result = restore_logical(svc.catalog.store, svc.catalog, svc.toolbox, req.backup_id, login,
                                     req.into.database, opts, on_progress=progress, restore_id=restore_id,
                                     workdir=workdir, deadline=deadline)
            job = job.model_copy(update={
                "status": "SUCCEEDED",
                "progress": {"bytes_restored": result.bytes_restored},
                "result": {"server": server, "host": login.host, "database": result.database,
                           "pg_restore_version": result.pg_restore_version, "seconds": round(result.seconds, 3),
                           "verification": result.verification,
                           "replaced_database_kept_as": result.replaced_database_kept_as,
                           "recovered": result.recovered},
            })
        else:
                job = snapshot_restores.start(svc, job)
    except LifeboatError as exc:
        job = job.model_copy(update={"status": "FAILED", "error": JobError(code=exc.code, message=str(exc))})
        if not getattr(exc, "lifeboat_recorded", False):
            record("RestoreFailed", 1, "Count", job.target)
        logger.error("restore failed", extra={"error": str(exc), "error_code": exc.code})
    except Exception as exc:
        job = job.model_copy(update={"status": "FAILED", "error": JobError(
            code="internal_error", message=f"unexpected {type(exc).__name__}; see the worker's log")})
        if not getattr(exc, "lifeboat_recorded", False):
            record("RestoreFailed", 1, "Count", job.target)
        logger.exception("restore failed unexpectedly")
    finally:
        logger.remove_keys(["restore_id", "target"])
    return jobs.save(job)
