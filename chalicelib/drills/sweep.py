"""The drills' sweeper: finish what running drills left, clean up after dead ones, say which targets are overdue.

- A RUNNING snapshot drill no worker is in (its lease ended) is advanced (chalicelib.drills.snapshot): checked and
  deleted once available; one that has not finished within STUCK_AFTER fails and is deleted.
- A RUNNING drill whose worker died before its restore was recorded (logical, or a snapshot drill killed right
  after creating its instance) is FAILED as `drill_abandoned`, and what it may have created is removed: the scratch
  database, the temporary instance/cluster. The scratch database is the drill id's (chalicelib.drills.logical
  drop_scratch: its shape and marker checked), never a name the record gives: a record naming another database, or
  with an id that is not a drill's, is reported under `refused` and that database left alone.
- Any `lifeboat-drill-*` RDS instance or cluster carrying a drill's restore tag whose drill is not running any more
  (or has no record) is deleted: nothing a dead drill made outlives the next sweep.
- DrillOverdue (per target, 1 or 0): no successful drill within the target's drill.max_age_days; DrillsOverdue (no
  target dimension): how many, for the stack's alarm.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_message
from chalicelib.drills.logical import drop_scratch, scratch_login
from chalicelib.drills.model import DRILL_ID, DRILL_TAG, INSTANCE_PREFIX, DrillRecord, scratch_database
from chalicelib.drills.runner import finish
from chalicelib.drills.selection import overdue
from chalicelib.drills.services import DrillServices
from chalicelib.drills.settings import drill_kind
from chalicelib.drills.snapshot import advance_snapshot_drill, delete_drill_resources, restore_services
from chalicelib.errors import LifeboatError
from chalicelib.observability import logger
from chalicelib.physical.names import TARGET_TAG, tag_dict
from chalicelib.restore.plan import RESTORE_TAG

STUCK_AFTER = timedelta(hours=6)


def sweep_drills(svc: DrillServices, now: datetime | None = None) -> dict[str, Any]:
    now = now or svc.clock()
    report: dict[str, Any] = {
        "advanced": [],
        "finished": [],
        "abandoned": [],
        "orphans_deleted": [],
        "refused": [],
        "errors": [],
    }
    for rec in svc.evidence.running():
        if rec.lease_until is not None and rec.lease_until > now:
            continue  # a worker is in it
        if not DRILL_ID.fullmatch(rec.drill_id):
            _refuse(report, f"{rec.drill_id!r} is not a drill id (d-<16 hex digits>): a forged record, left alone")
            continue
        try:
            _sweep_one(svc, rec, now, report)
        except (LifeboatError, *AWS_ERRORS) as exc:
            report["errors"].append(f"{rec.drill_id}: {error_message(exc) if isinstance(exc, AWS_ERRORS) else exc}")
    if any(t.drill is not None and drill_kind(t) == "snapshot" for t in svc.config.targets):
        _delete_orphans(svc, report)
    report["overdue"] = _overdue(svc, now)
    return report


def _sweep_one(svc: DrillServices, rec: DrillRecord, now: datetime, report: dict[str, Any]) -> None:
    target = svc.config.target(rec.target)
    if rec.kind == "snapshot" and rec.restore is not None:
        if now - rec.started_at > STUCK_AFTER:
            cleanup = delete_drill_resources(svc, rec)
            message = f"the restored copy was not available within {STUCK_AFTER}; deleted"
            finish(svc, rec.model_copy(update={"cleanup": cleanup}).failed("drill_stuck", message))
            report["finished"].append(rec.drill_id)
            return
        advanced = advance_snapshot_drill(svc, target, rec)
        if advanced.finished:
            finish(svc, advanced)
            report["finished"].append(rec.drill_id)
        else:
            svc.evidence.save(advanced)
            report["advanced"].append(rec.drill_id)
        return
    if rec.kind == "snapshot":
        cleanup = delete_drill_resources(svc, rec)
    else:
        login = scratch_login(svc, target) if target.drill is not None and target.drill.into.target else None
        cleanup = drop_scratch(login, rec.drill_id)
        named = rec.into.get("database")
        if named is not None and named != scratch_database(rec.drill_id):
            why = (
                f"its record names database {named!r}, not its scratch database {scratch_database(rec.drill_id)!r}:"
                " a forged or damaged record; that database was left alone"
            )
            _refuse(report, f"{rec.drill_id}: {why}")
            finish(svc, rec.model_copy(update={"cleanup": cleanup}).failed("drill_record_forged", why))
            return
    message = "the drill's worker stopped (time limit or crash) before it finished; what it created was removed"
    finish(svc, rec.model_copy(update={"cleanup": cleanup}).failed("drill_abandoned", message))
    report["abandoned"].append(rec.drill_id)


def _refuse(report: dict[str, Any], why: str) -> None:
    logger.error("the drills' sweeper refused a record", extra={"why": why[:500]})
    report["refused"].append(why)


def _delete_orphans(svc: DrillServices, report: dict[str, Any]) -> None:
    snapshots = restore_services(svc).snapshots
    assert snapshots is not None
    regions = {
        snapshots.source_region(t.physical)
        for t in svc.config.targets
        if t.drill is not None and t.physical is not None and drill_kind(t) == "snapshot"
    }
    for region in sorted(regions):
        rds = snapshots.client_for("rds", region)
        for kind, resource in _drill_resources(rds):
            tags = tag_dict(resource.get("TagList"))
            digits = tags.get(RESTORE_TAG, "").removeprefix("r-")
            drill_id = tags.get(DRILL_TAG) or (f"d-{digits}" if digits else "")
            if not drill_id:
                continue
            rec = svc.evidence.get(drill_id)
            if rec is not None and not rec.finished:
                continue  # running: the pass above finishes it
            identifier = resource["DBClusterIdentifier" if kind == "cluster" else "DBInstanceIdentifier"]
            orphan = (rec or _stub(drill_id, tags)).model_copy(update={"into": {f"{kind}_id": identifier}})
            cleanup = delete_drill_resources(svc, orphan)
            report["orphans_deleted"].extend(cleanup.get("deleted", []))
            report["errors"].extend(cleanup.get("errors", []))


def _stub(drill_id: str, tags: dict[str, str]) -> DrillRecord:
    """A stand-in record for a resource whose drill left none (its record expired or was never written)."""
    return DrillRecord(
        drill_id=drill_id,
        target=tags.get(TARGET_TAG, ""),
        kind="snapshot",
        pick="",
        started_at=datetime.min,
        status="FAILED",
    )


def _drill_resources(rds: Any) -> list[tuple[str, dict[str, Any]]]:
    """Instances first (a cluster is deleted after its instance), then clusters, named lifeboat-drill-*."""
    found: list[tuple[str, dict[str, Any]]] = []
    for page in rds.get_paginator("describe_db_instances").paginate():
        found += [("instance", i) for i in page["DBInstances"] if i["DBInstanceIdentifier"].startswith(INSTANCE_PREFIX)]
    for page in rds.get_paginator("describe_db_clusters").paginate():
        found += [("cluster", c) for c in page["DBClusters"] if c["DBClusterIdentifier"].startswith(INSTANCE_PREFIX)]
    return found


def _overdue(svc: DrillServices, now: datetime) -> dict[str, str]:
    drilled = [t for t in svc.config.targets if t.drill is not None]
    if not drilled:
        return {}
    oldest = max(t.drill.max_age_days for t in drilled if t.drill is not None)
    late = overdue(svc.config, svc.evidence.recent(since=now - timedelta(days=oldest + 1)), now)
    # The count without a target dimension: the stack's alarm (one, whatever targets SSM holds) watches it.
    svc.metrics("DrillsOverdue", len(late), "Count", None)
    for target in drilled:
        svc.metrics("DrillOverdue", 1 if target.name in late else 0, "Count", target.name)
    if late:
        logger.error("targets without a recent successful drill", extra={"overdue": late})
    return late
