"""A snapshot drill: restore the picked snapshot into a temporary instance (or Aurora cluster) `lifeboat-drill-<id>`
through the one snapshot-restore path (chalicelib.restore.snapshot: allow-lists, tags, never public), observe it
until it is available, check it (connections, databases, SQL assertions), delete it, record.

Like every long AWS operation it is started and then observed: the worker makes the first call and one look; while
the instance is being created the drill stays RUNNING and the sweeper (chalicelib.drills.sweep) advances it. The
temporary resources carry the restore's tag (`lifeboat:restore-id=r-<id digits>`) and `lifeboat:drill=<id>`; a
drill that fails deletes them at once, one whose function died is finished or cleaned up by the sweeper.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message
from chalicelib.config import Target
from chalicelib.drills.checks import probe_databases, run_checks
from chalicelib.drills.model import (
    DRILL_TAG,
    CheckResult,
    DrillRecord,
    drill_instance_id,
    drill_restore_id,
)
from chalicelib.drills.selection import Candidate
from chalicelib.drills.services import DrillHooks, DrillServices
from chalicelib.errors import BadRequestError, LifeboatError
from chalicelib.observability import logger
from chalicelib.physical.catalog import list_snapshots
from chalicelib.restore import snapshot as snapshot_restores
from chalicelib.restore.model import RestoreJob, RestoreServices
from chalicelib.restore.plan import RESTORE_TAG, aurora_instance_id, ours
from chalicelib.restore.requests import SnapshotRestoreRequest

GONE = ("DBInstanceNotFound", "DBInstanceNotFoundFault", "DBClusterNotFoundFault", "DBClusterNotFound")


def restore_services(svc: DrillServices) -> RestoreServices:
    if svc.restore is None or svc.restore.snapshots is None:
        raise BadRequestError("snapshot drills need the snapshot services (a target with a physical section)")
    return svc.restore


def snapshot_candidates(svc: DrillServices, target: Target) -> list[Candidate]:
    snapshots = restore_services(svc).snapshots
    assert snapshots is not None
    entries = list_snapshots(snapshots, target.name, include_copies=False)
    return [Candidate(e.backup_id, e.slot) for e in entries if e.status == "SUCCEEDED" and e.copy_of is None]


def planned_into(target: Target, drill_id: str) -> dict[str, str]:
    """The temporary resources a snapshot drill creates, named before they exist (the RUNNING record names them, so
    the sweeper finds them even when the drill dies right after creating them)."""
    new_id = drill_instance_id(drill_id)
    if target.physical is not None and target.physical.method == "aurora_cluster":
        return {"cluster_id": new_id, "instance_id": aurora_instance_id(new_id, drill_restore_id(drill_id))}
    return {"instance_id": new_id}


def start_snapshot_drill(
    svc: DrillServices, target: Target, rec: DrillRecord, picked: Candidate, hooks: DrillHooks
) -> DrillRecord:
    """Start the restore and take one look. A failure deletes what was created; `hooks.after_create` is where a test
    stops the drill as a dying function would (nothing after it runs, the sweeper must clean up)."""
    assert target.drill is not None and target.physical is not None
    into = target.drill.into
    new_id = drill_instance_id(rec.drill_id)
    req = SnapshotRestoreRequest(
        backup_id=picked.backup_id,
        new_id=new_id,
        instance_class=into.instance_class,
        subnet_group=into.subnet_group,
        security_group_ids=list(into.security_group_ids),
    )
    job = RestoreJob(
        restore_id=drill_restore_id(rec.drill_id),
        kind="snapshot",
        status="RUNNING",
        target=target.name,
        into_target=target.name,
        backup_id=picked.backup_id,
        request=req.model_dump(mode="json", exclude_none=True),
        created_at=rec.started_at,
        updated_at=rec.started_at,
    )
    try:
        job = snapshot_restores.start(restore_services(svc), job)
    except LifeboatError as exc:
        return _failed_and_deleted(svc, rec, exc.code, f"the restore could not be started: {exc}")
    _tag_ours(svc, rec, job)
    if hooks.after_create is not None:
        hooks.after_create(rec)
    return advance_snapshot_drill(svc, target, rec.model_copy(update={"restore": job.model_dump(mode="json")}), job)


def advance_snapshot_drill(
    svc: DrillServices, target: Target, rec: DrillRecord, job: RestoreJob | None = None
) -> DrillRecord:
    """One look at the restore (chalicelib.restore.snapshot.advance): still creating → RUNNING; failed → FAILED
    and deleted; available → checked, deleted, judged."""
    if job is None:
        assert rec.restore is not None
        job = snapshot_restores.advance(restore_services(svc), RestoreJob.model_validate(rec.restore))
    rec = rec.model_copy(update={"restore": job.model_dump(mode="json")})
    _tag_ours(svc, rec, job)
    if job.status == "RUNNING":
        return rec
    if job.status == "FAILED":
        message = job.error.message if job.error else "the restore failed"
        return _failed_and_deleted(svc, rec, "restore_failed", message)
    checks = _checks(svc, target, job)
    recovery = (svc.clock() - rec.started_at).total_seconds()
    rec = rec.model_copy(update={"checks": checks, "recovery_seconds": max(recovery, 0.0)})
    rec = rec.model_copy(update={"cleanup": delete_drill_resources(svc, rec)})
    failing = [c for c in checks if not c.passed]
    if failing:
        names = "; ".join(f"{c.name}: {c.detail}" for c in failing)
        return rec.failed("check_failed", f"{len(failing)} of {len(checks)} checks failed: {names}")
    return rec.model_copy(update={"status": "SUCCEEDED"})


def _checks(svc: DrillServices, target: Target, job: RestoreJob) -> list[CheckResult]:
    assert target.drill is not None
    available = CheckResult(name="restored copy available", passed=True, detail=str(job.result.get("endpoint")))
    if target.connection is None:
        return [available]
    port = int(job.result.get("port") or target.connection.port)
    login = replace(svc.credentials.login(target.connection), host=str(job.result.get("endpoint")), port=port)
    login = svc.resolve_endpoint(login)
    databases = target.drill.databases or [target.connection.database]
    probed = probe_databases(login, databases)
    if not all(c.passed for c in probed) or not target.drill.checks:
        return [available, *probed]
    try:
        sql = run_checks(login.with_database(databases[0]), target.drill.checks, target.drill.statement_timeout_seconds)
    except LifeboatError as exc:
        sql = [CheckResult(name=c.name, passed=False, detail=str(exc)) for c in target.drill.checks]
    return [available, *probed, *sql]


def _rds(svc: DrillServices, rec: DrillRecord) -> Any:
    snapshots = restore_services(svc).snapshots
    assert snapshots is not None
    target = svc.config.target(rec.target)
    assert target.physical is not None
    return snapshots.client_for(
        "rds", (rec.restore or {}).get("result", {}).get("region") or snapshots.source_region(target.physical)
    )


def _described(rds: Any, kind: str, identifier: str) -> dict[str, Any] | None:
    try:
        if kind == "cluster":
            return dict(rds.describe_db_clusters(DBClusterIdentifier=identifier)["DBClusters"][0])
        return dict(rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0])
    except AWS_ERRORS as exc:
        if error_code(exc) in GONE:
            return None
        raise


def _tag_ours(svc: DrillServices, rec: DrillRecord, job: RestoreJob) -> None:
    """Add lifeboat:drill=<id> to the drill's resources that carry its restore tag and lack it (best effort: the
    sweeper also knows them by the restore tag)."""
    rds = _rds(svc, rec)
    for kind, identifier in _resources(rec):
        try:
            found = _described(rds, kind, identifier)
            tags = {t["Key"]: t["Value"] for t in (found or {}).get("TagList", [])}
            if found and ours(found, job.restore_id) and tags.get(DRILL_TAG) != rec.drill_id:
                arn = found["DBClusterArn" if kind == "cluster" else "DBInstanceArn"]
                rds.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": DRILL_TAG, "Value": rec.drill_id}])
        except AWS_ERRORS as exc:
            logger.warning("could not tag a drill resource", extra={"id": identifier, "error": error_message(exc)})


def _resources(rec: DrillRecord) -> list[tuple[str, str]]:
    """(kind, identifier) of what the drill may have created: the instance first, then its cluster."""
    found = [("instance", str(rec.into["instance_id"]))] if rec.into.get("instance_id") else []
    if rec.into.get("cluster_id"):
        found.append(("cluster", str(rec.into["cluster_id"])))
    return found


def delete_drill_resources(svc: DrillServices, rec: DrillRecord) -> dict[str, Any]:
    """Delete the drill's instance (and cluster) if they exist and carry its restore tag; never raises."""
    deleted, errors = [], []
    restore_id = drill_restore_id(rec.drill_id)
    try:
        rds = _rds(svc, rec)
    except LifeboatError as exc:
        return {"deleted": [], "errors": [str(exc)]}
    for kind, identifier in _resources(rec):
        try:
            found = _described(rds, kind, identifier)
            if found is None:
                continue
            if not ours(found, restore_id):
                errors.append(f"{identifier} does not carry {RESTORE_TAG}={restore_id}: left alone")
                continue
            if kind == "cluster":
                rds.delete_db_cluster(DBClusterIdentifier=identifier, SkipFinalSnapshot=True)
            else:
                rds.delete_db_instance(
                    DBInstanceIdentifier=identifier, SkipFinalSnapshot=True, DeleteAutomatedBackups=True
                )
            deleted.append(identifier)
        except AWS_ERRORS as exc:
            errors.append(f"{identifier}: {error_code(exc)}: {error_message(exc)}")
    if errors:
        logger.error(
            "a drill's temporary resources were not all deleted", extra={"drill": rec.drill_id, "errors": errors}
        )
    return {"deleted": deleted, "errors": errors} if errors else {"deleted": deleted}


def _failed_and_deleted(svc: DrillServices, rec: DrillRecord, code: str, message: str) -> DrillRecord:
    return rec.model_copy(update={"cleanup": delete_drill_resources(svc, rec)}).failed(code, message)
