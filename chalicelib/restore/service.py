"""Restore jobs from request to outcome: refuse what can be refused at once, record and queue the job,
run it on the worker; the restore sweeper advances snapshot restores until they finish.

Reading a job never changes it or anything in AWS: only the worker and the sweeper write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from chalicelib.adapters.pgtools import Deadline
from chalicelib.adapters.postgres import CredentialResolver, Login
from chalicelib.config import Config
from chalicelib.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    IntegrityError,
    LifeboatError,
    NotFoundError,
    RestoreError,
    UntrustedBackupError,
)
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.databases import database_comment, marker
from chalicelib.logical.restore import RestoreOptions, restore_logical
from chalicelib.observability import logger, record
from chalicelib.restore import access, wal_recovery
from chalicelib.restore import snapshot as snapshot_restores
from chalicelib.restore.model import (
    JobError,
    JobKind,
    RestoreJob,
    RestoreJobStore,
    RestoreServices,
    new_restore_id,
)
from chalicelib.restore.plan import refuse_drill_database, refuse_drill_name
from chalicelib.restore.requests import (
    LogicalRestoreRequest,
    PointInTimeRestoreRequest,
    RestoreRequest,
    SnapshotRestoreRequest,
    WalRecoveryRequest,
    describe_validation_error,
    source_target,
)

REQUEST_MODELS: dict[str, type[RestoreRequest]] = {
    "logical": LogicalRestoreRequest,
    "snapshot": SnapshotRestoreRequest,
    "point_in_time": PointInTimeRestoreRequest,
    "wal": WalRecoveryRequest,
}


@dataclass(frozen=True)
class Destination:
    """Where a restore goes once check_rules allowed it: the configured target and (logical) its restore login."""

    target: str
    login: Login | None = None


def check_rules(
    config: Config, credentials: CredentialResolver, req: RestoreRequest, restore_id: str | None = None
) -> Destination:
    """The rules of where a restore may go, in one place, run by the API before a job exists, by the worker before
    it acts on one (a job record is not proof: any role that writes the jobs table can forge one), and by
    `lifeboat restore`. `restore_id`: the worker's job, whose own finished database is not "already there".

    - snapshot and point-in-time: new_id is never a drill's name (plan.refuse_drill_name, 400);
    - a WAL recovery plan (kind `wal`): the target itself (it creates no server, only, for EBS, tagged volumes);
    - logical: into the backup's own target or one its restore_into lists (access.destination, 403); never a drill's
      scratch database name (400); options.clean (replacing a database) only without a selection (400), only on
      the backup's own target (403), only with options.confirm naming the database (409); without clean the
      database must not exist yet (409)."""
    if isinstance(req, WalRecoveryRequest):
        return Destination(req.target)
    if not isinstance(req, LogicalRestoreRequest):
        refuse_drill_name(req)
        return Destination(source_target(req))
    bid = BackupId.parse(req.backup_id)
    target = access.destination(config, bid.target, req.into.target)
    assert target.connection is not None  # access.destination refuses a target without one
    database, options = req.into.database, req.options
    refuse_drill_database(database)
    if options.clean and (options.schemas or options.tables):
        raise BadRequestError(
            "options.clean replaces the whole database: it cannot be combined with options.schemas or"
            " options.tables (restore the selection into a new database instead)"
        )
    if options.clean and target.name != bid.target:
        raise ForbiddenError(
            f"options.clean replaces a database of target {target.name!r} with a backup of target {bid.target!r}:"
            " replacing is allowed only on the backup's own target; restore into a new database instead"
        )
    if options.clean and options.confirm != database:
        raise ConflictError(f"replacing database {database!r} needs options.confirm set to {database!r} as well")
    login = credentials.restore_login(target.connection)
    if not options.clean:
        existing = database_comment(login, database)
        own = restore_id is not None and existing == marker("restored", restore_id, req.backup_id)
        if existing is not None and not own:
            raise ConflictError(
                f"database {database!r} already exists on target {target.name!r}: choose a new name,"
                " or set options.clean=true and options.confirm to the same name to replace it"
            )
    return Destination(target.name, login)


def check_job(svc: RestoreServices, job: RestoreJob) -> tuple[RestoreRequest, Destination]:
    """The worker's look at a job before it acts: its request read again and check_rules run again with the current
    configuration; a request that restores another target than the job's, or into another, fails the job."""
    try:
        req = REQUEST_MODELS[job.kind].model_validate(job.request)
    except ValidationError as exc:
        raise RestoreError(f"the job's request is not a {job.kind} restore: {describe_validation_error(exc)}") from None
    if source_target(req) != job.target:
        restores = source_target(req)
        raise RestoreError(f"the job is recorded for target {job.target!r} but its request restores {restores!r}")
    destination = check_rules(svc.config, svc.credentials, req, job.restore_id)
    if destination.target != access.into_target(job):
        raise RestoreError(
            f"the job is recorded as restoring into {access.into_target(job)!r} but its request restores into"
            f" {destination.target!r}"
        )
    return req, destination


def check_logical(svc: RestoreServices, req: LogicalRestoreRequest) -> tuple[str, str]:
    """Everything that can be refused now is refused now (400, 403, 404, 409), before a job exists.
    Returns (the backup's target, the target restored into)."""
    bid = BackupId.parse(req.backup_id)
    svc.config.target(bid.target)
    destination = check_rules(svc.config, svc.credentials, req)
    check_manifest(svc, bid)
    return bid.target, destination.target


def check_manifest(svc: RestoreServices, bid: BackupId) -> None:
    """The backup is complete (404 otherwise) and its manifest's signature verifies (409 otherwise: a forged or
    altered manifest, or an unsigned one newer than settings.accept_unsigned_before). The worker checks both again
    before it creates anything; checking here answers the caller at once, and no job is made for it."""
    manifest = svc.catalog.manifest(bid)
    try:
        svc.catalog.check_signature(manifest)
    except IntegrityError as exc:
        raise UntrustedBackupError(
            f"backup {bid} cannot be restored: {exc}. Restore another backup (GET /targets/{bid.target}/backups)"
        ) from exc


def start_restore(svc: RestoreServices, req: RestoreRequest) -> RestoreJob:
    """Check the request, count it against the quotas, record the job and queue it (a WAL recovery plan: answer it,
    plan_wal_recovery)."""
    now = datetime.now(UTC)
    kind: JobKind
    if isinstance(req, WalRecoveryRequest):
        return plan_wal_recovery(svc, req)
    if isinstance(req, LogicalRestoreRequest):
        (target, into), kind, backup_id = check_logical(svc, req), "logical", req.backup_id
    elif isinstance(req, SnapshotRestoreRequest):
        check_rules(svc.config, svc.credentials, req)
        target, kind, backup_id = snapshot_restores.check(svc, req), "snapshot", req.backup_id
        into = target
    else:
        target_cfg = svc.config.target(req.target)
        if target_cfg.physical is None or target_cfg.physical.method == "ebs":
            streams = " (it streams its WAL: post time, latest or lsn instead)" if target_cfg.wal else ""
            raise BadRequestError(
                f"target {req.target!r} is not an RDS instance or Aurora cluster: point-in-time restore with new_id"
                f" needs one{streams}"
            )
        check_rules(svc.config, svc.credentials, req)
        target, kind, backup_id = snapshot_restores.check(svc, req), "point_in_time", None
        into = target
    access.check_quota(svc.config, svc.jobs, into)
    job = RestoreJob(
        restore_id=new_restore_id(),
        kind=kind,
        target=target,
        into_target=into,
        backup_id=backup_id,
        request=req.model_dump(mode="json", exclude_none=True),
        created_at=now,
        updated_at=now,
    )
    svc.jobs.create(job)
    svc.restore_queue.send(job.restore_id)
    return job


def plan_wal_recovery(svc: RestoreServices, req: WalRecoveryRequest) -> RestoreJob:
    """A WAL recovery plan (chalicelib.restore.wal_recovery): the same rules and quotas as every restore, answered at
    once and recorded as a job of kind `wal`, SUCCEEDED (never queued: a plan only reads, nothing is left for a
    worker)."""
    check_rules(svc.config, svc.credentials, req)
    target = wal_recovery.check(svc, req)
    access.check_quota(svc.config, svc.jobs, target)
    result = wal_recovery.plan_recovery(svc, req)
    now = datetime.now(UTC)
    job = RestoreJob(
        restore_id=new_restore_id(),
        kind="wal",
        status="SUCCEEDED",
        target=target,
        into_target=target,
        request=req.model_dump(mode="json", exclude_none=True),
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=now,
        result=result,
    )
    svc.jobs.create(job)
    return job


def get_restore(svc: RestoreServices, restore_id: str, target: str | None = None) -> RestoreJob:
    """The job as recorded (read only). With `target` (the API path's), a job of another target is a 404."""
    if not restore_id.startswith("r-") or len(restore_id) > 40:
        raise NotFoundError(f"no restore {restore_id!r}")
    job = svc.jobs.get(restore_id)
    if target is not None and job.target != target:
        raise NotFoundError(f"no restore {restore_id!r}")  # the same answer as for an unknown id: no oracle
    return job


def list_restores(svc: RestoreServices, target: str, limit: int = 50) -> list[RestoreJob]:
    """The newest restores of one target's backups."""
    svc.config.target(target)
    return svc.jobs.recent(limit, target=target)


def advance_running(svc: RestoreServices) -> list[str]:
    """The restore sweeper: advance every running snapshot or point-in-time restore."""
    changed = []
    for job in svc.jobs.running(limit=500):
        if job.status == "RUNNING" and job.kind in ("snapshot", "point_in_time") and job.result:
            advanced = snapshot_restores.advance(svc, job)
            if advanced != job:
                svc.jobs.save(advanced)
                changed.append(job.restore_id)
    return changed


def run_restore_job(
    svc: RestoreServices, restore_id: str, remaining_ms: Callable[[], int] | None = None, workdir: Path | None = None
) -> RestoreJob:
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
        req, destination = check_job(svc, job)  # before anything is created
        if isinstance(req, WalRecoveryRequest):
            raise RestoreError("a WAL recovery is planned by the API and run by the caller: no worker runs one")
        if isinstance(req, LogicalRestoreRequest):
            job = _run_logical(svc, job, req, destination, lease, remaining_ms, workdir)
        else:
            job = snapshot_restores.start(svc, job)
    except LifeboatError as exc:
        job = job.model_copy(update={"status": "FAILED", "error": JobError(code=exc.code, message=str(exc))})
        if not getattr(exc, "lifeboat_recorded", False):
            record("RestoreFailed", 1, "Count", job.target)
        logger.error("restore failed", extra={"error": str(exc), "error_code": exc.code})
    except Exception as exc:  # any other failure still ends the job FAILED (and is logged with its traceback)
        job = job.model_copy(
            update={
                "status": "FAILED",
                "error": JobError(
                    code="internal_error", message=f"unexpected {type(exc).__name__}; see the worker's log"
                ),
            }
        )
        if not getattr(exc, "lifeboat_recorded", False):
            record("RestoreFailed", 1, "Count", job.target)
        logger.exception("restore failed unexpectedly")
    finally:
        logger.remove_keys(["restore_id", "target"])
    return jobs.save(job)


def restore_options(req: LogicalRestoreRequest) -> RestoreOptions:
    o = req.options
    return RestoreOptions(
        schemas=tuple(o.schemas),
        tables=tuple(o.tables),
        no_owner=o.no_owner,
        no_acl=o.no_acl,
        jobs=o.jobs,
        replace=o.clean,
        globals=o.globals,
    )


def _run_logical(
    svc: RestoreServices,
    job: RestoreJob,
    req: LogicalRestoreRequest,
    destination: Destination,
    lease: timedelta,
    remaining_ms: Callable[[], int] | None,
    workdir: Path | None,
) -> RestoreJob:
    login, into = destination.login, destination.target
    assert login is not None  # check_rules gives a logical restore its login
    last = [0.0]

    def progress(done: int) -> None:
        nonlocal job
        now = time.monotonic()
        if now - last[0] >= 5:
            last[0] = now
            job = svc.jobs.save(job.model_copy(update={"progress": {"bytes_restored": done}}), lease)

    opts = restore_options(req)
    deadline = Deadline(remaining_ms, svc.config.settings.deadline_margin_seconds) if remaining_ms else None
    result = restore_logical(
        svc.catalog.store,
        svc.catalog,
        svc.toolbox,
        req.backup_id,
        login,
        req.into.database,
        opts,
        on_progress=progress,
        restore_id=job.restore_id,
        workdir=workdir,
        deadline=deadline,
    )
    return job.model_copy(
        update={
            "status": "SUCCEEDED",
            "progress": {"bytes_restored": result.bytes_restored},
            "result": {
                "server": into,
                "host": login.host,
                "database": result.database,
                "pg_restore_version": result.pg_restore_version,
                "seconds": round(result.seconds, 3),
                "verification": result.verification,
                "replaced_database_kept_as": result.replaced_database_kept_as,
                "recovered": result.recovered,
                "roles": result.roles,
            },
        }
    )
