"""The bodies of the Lambda handlers: parse the event, call a capability, report the outcome.

app.py decorates these with Chalice; they take plain values so the CLI, tests and benchmarks call the
same code path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from chalicelib import wiring
from chalicelib.adapters.pgtools import Deadline
from chalicelib.api import ApiServices
from chalicelib.config import Config
from chalicelib.drills.build import drill_services
from chalicelib.drills.runner import run_drill
from chalicelib.drills.sweep import sweep_drills
from chalicelib.errors import BadRequestError, LifeboatError, NotFoundError, StorageError
from chalicelib.fargate import route_backup, route_restore
from chalicelib.logical.catalog import is_future
from chalicelib.logical.dump import BackupServices, run_logical_backup
from chalicelib.observability import logger, record, traced
from chalicelib.physical.prune import prune
from chalicelib.physical.start import start_snapshot
from chalicelib.physical.sweep import sweep
from chalicelib.pitr.prune_runs import prune_archives
from chalicelib.restore.service import run_restore_job
from chalicelib.scheduling.dispatch import AGE_GAUGE_EVERY_MINUTES, DueBackup, backup_ages, run_dispatch


def dispatch_tick(event_time: str | None) -> dict[str, Any]:
    tick = datetime.fromisoformat(event_time.replace("Z", "+00:00")) if event_time else datetime.now(UTC)
    cfg = wiring.load_config()
    due = run_dispatch(cfg, tick, wiring.backup_queue(cfg), wiring.dispatch_cursor())
    logger.info("dispatched", extra={"tick": tick.isoformat(), "due": len(due), "targets": len(cfg.targets)})
    record("BackupsDispatched", len(due), "Count")
    overdue = backup_age_gauges(cfg, tick) if tick.minute % AGE_GAUGE_EVERY_MINUTES == 0 else None
    return {"tick": tick.isoformat(), "dispatched": [d.message() for d in due], "overdue": overdue}


def backup_age_gauges(cfg: Config, now: datetime) -> list[str]:
    """The dead-man's gauges (after the dispatch, which they never delay): per target NewestBackupAgeSeconds and
    BackupOverdue (0/1), and TargetsOverdue without a target dimension, which the stack's one alarm watches.
    Returns the overdue targets."""
    catalog = wiring.catalog(cfg)

    def newest(target: str) -> datetime | None:
        return next((bid.stamp for bid in catalog.backup_ids(target) if not is_future(bid.stamp, now)), None)

    ages = backup_ages(cfg, now, newest)
    for age in ages:
        seconds = age.age_seconds(now)
        if seconds is not None:
            record("NewestBackupAgeSeconds", seconds, "Seconds", age.target)
        record("BackupOverdue", int(age.overdue), "Count", age.target)
        if age.error:
            logger.error("cannot list the target's backups", extra={"target": age.target, "error": age.error})
    overdue = [a.target for a in ages if a.overdue]
    record("TargetsOverdue", len(overdue), "Count")
    if overdue:
        logger.warning("targets overdue", extra={"targets": overdue[:50], "count": len(overdue)})
    return overdue


def backup_message(body: str, remaining_ms: Callable[[], int] | None) -> dict[str, Any]:
    """One due backup from the queue. Malformed messages and unknown targets are dropped (retrying
    cannot fix them); every other failure is raised so SQS retries it and, in the end, dead-letters it."""

    try:
        due = DueBackup.from_message(body)
        svc = wiring.backup_services()
        svc.config.target(due.target)
    except (BadRequestError, NotFoundError) as exc:
        logger.error("dropping a message that cannot succeed", extra={"error": str(exc)})
        record("BackupMessageRejected", 1, "Count")
        return {"status": "REJECTED", "error": str(exc)}
    if due.kind == "drill":
        return _drill(svc.config.target(due.target).name, due)
    if due.kind == "physical":
        try:
            started = start_snapshot(wiring.snapshot_services(svc.config), due.target, due.slot, trigger=due.trigger)
        except BadRequestError as exc:  # a target without a physical section: retrying cannot help
            logger.error("dropping a message that cannot succeed", extra={"error": str(exc)})
            return {"status": "REJECTED", "error": str(exc)}
        return started.as_dict()
    delegated = _beyond_lambda_backup(svc, due)
    if delegated is not None:
        return delegated
    deadline = Deadline(remaining_ms, svc.config.settings.deadline_margin_seconds) if remaining_ms else None
    svc.fan_out = wiring.backup_queue(svc.config).send if wiring.has_backup_queue() else None
    with traced("logical_backup", target=due.target):
        outcome = run_logical_backup(
            svc, due.target, due.slot, trigger=due.trigger, deadline=deadline, database=due.database
        )
    return {"status": outcome.status, "backup_id": outcome.backup_id, "reason": outcome.reason}


def error_body(exc: LifeboatError) -> dict[str, str]:
    return {"error": exc.code, "message": str(exc)}


def restore_message(body: str, remaining_ms: Callable[[], int] | None) -> dict[str, Any]:
    """One restore job from the queue; the job record carries its outcome, so nothing is re-raised."""
    import json

    try:
        restore_id = str(json.loads(body)["restore_id"])
    except (ValueError, KeyError, TypeError):
        logger.error("dropping a malformed restore message", extra={"body": body[:200]})
        return {"status": "REJECTED"}
    svc = wiring.api_services()
    delegated = _beyond_lambda_restore(svc, restore_id)
    if delegated is not None:
        return delegated
    with traced("restore", restore_id=restore_id):
        job = run_restore_job(svc, restore_id, remaining_ms)
    return {"restore_id": restore_id, "status": job.status}


# --- beyond Lambda (chalicelib.fargate): a run that will not fit this invocation becomes an ECS task ------


def _beyond_lambda_backup(svc: BackupServices, due: DueBackup) -> dict[str, Any] | None:
    """The worker's result when the backup was handed to a Fargate task; None to run it here."""

    return route_backup(svc, due, wiring.fargate_launcher())


def _beyond_lambda_restore(svc: ApiServices, restore_id: str) -> dict[str, Any] | None:
    """The worker's result when the restore was handed to a Fargate task; None to run it here."""

    return route_restore(svc, restore_id, wiring.fargate_launcher(), wiring.jobs())


def _drill(target: str, due: DueBackup) -> dict[str, Any]:
    """A scheduled restore drill (chalicelib.drills): its outcome is its record; nothing is raised for SQS to retry."""
    with traced("drill", target=target):
        rec = run_drill(drill_services(), target, due.slot, trigger=due.trigger)
    if rec is None:
        return {"status": "SKIPPED", "target": target, "reason": "this slot's drill ran already or is running"}
    return {"status": rec.status, "drill_id": rec.drill_id, "target": target}


def sweep_snapshots() -> dict[str, Any]:
    """The snapshot sweeper; with drills configured it also sweeps them (chalicelib.drills.sweep)."""
    cfg = wiring.load_config()
    report = sweep(wiring.snapshot_services(cfg)).as_dict()
    if any(t.drill is not None for t in cfg.targets):
        report["drills"] = sweep_drills(drill_services(cfg))
    return report


def prune_snapshots(dry_run: bool = False, event_time: str | None = None) -> dict[str, Any]:
    """The daily pruner: managed snapshots, then the point-in-time archive (bases and WAL) of every target with a
    `wal` section, judged at the event's time (chalicelib.pitr.prune_runs). Each target's archive is pruned on its
    own; when any failed, the run raises after all were tried, so the function's Errors alarm fires."""
    cfg = wiring.load_config()
    result = prune(wiring.snapshot_services(cfg), dry_run=dry_run).as_dict()
    if not any(t.wal is not None for t in cfg.targets):
        return result
    now = datetime.fromisoformat(event_time.replace("Z", "+00:00")) if event_time else datetime.now(UTC)
    archives = prune_archives(cfg, now, dry_run)
    result["archives"] = archives.as_dict()
    if archives.failures:
        summary = {"snapshots_deleted": len(result["deleted"]), "archives_pruned": sorted(archives.reports)}
        logger.error("pruned with failures", extra={**summary, "archives_failed": archives.failures})
        failed = ", ".join(sorted(archives.failures))
        first = next(iter(archives.failures.values()))
        raise StorageError(f"pruning the WAL archive failed for {failed} (the other targets were pruned): {first}")
    return result
