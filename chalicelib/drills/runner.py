"""Running one drill: claim its slot, record it RUNNING, pick the backup, restore and check (chalicelib.drills.logical
or .snapshot), record the outcome with its metrics. A failure is a FAILED drill with a reason, never an exception:
the record and the DrillFailed metric are how it is reported.

Metrics per target: DrillSucceeded, DrillFailed, RecoverySeconds, DrillRtoExceeded (recovery took longer than
drill.rto_seconds); DrillOverdue comes from the sweeper (chalicelib.drills.sweep).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from chalicelib.adapters.dynamo import drill_claim_key
from chalicelib.config import Target
from chalicelib.drills.logical import logical_candidates, run_logical
from chalicelib.drills.model import DrillRecord, new_drill_id, scratch_database
from chalicelib.drills.selection import Candidate, pick_backup
from chalicelib.drills.services import DrillHooks, DrillServices
from chalicelib.drills.settings import drill_kind
from chalicelib.drills.snapshot import planned_into, snapshot_candidates, start_snapshot_drill
from chalicelib.errors import BadRequestError, LifeboatError
from chalicelib.logical.catalog import format_stamp
from chalicelib.observability import logger

# A worker is in a drill at most this long (the Lambda limit is 15 minutes): past it, the sweeper takes over.
LEASE = timedelta(minutes=20)


def drill_target(svc: DrillServices, name: str) -> Target:
    target = svc.config.target(name)
    if target.drill is None:
        raise BadRequestError(f"target {name!r} has no drill section: add one to drill its backups")
    return target


def run_drill(
    svc: DrillServices,
    name: str,
    slot: datetime | None = None,
    trigger: str = "on-demand",
    hooks: DrillHooks | None = None,
) -> DrillRecord | None:
    """Run a drill of target `name` (for a schedule slot: once per slot, None when that slot's drill ran or runs
    elsewhere). Returns the record: finished, or RUNNING while a snapshot restore is still being created."""
    target = drill_target(svc, name)
    assert target.drill is not None
    now = svc.clock()
    claim = drill_claim_key(name, format_stamp(slot)) if slot is not None and svc.claims is not None else None
    if claim is not None and svc.claims is not None and not svc.claims.claim(claim, LEASE, now):
        logger.info("this slot's drill ran already or is running", extra={"target": name, "slot": str(slot)})
        return None
    kind = drill_kind(target)
    rec = DrillRecord(
        drill_id=new_drill_id(svc.rng),
        target=name,
        kind=kind,
        trigger=trigger,
        slot=slot,
        pick=target.drill.pick,
        started_at=now,
        rto_seconds=target.drill.rto_seconds,
        configured=target.drill.model_dump(mode="json"),
        lease_until=now + LEASE,
    )
    into: dict[str, str | None]
    if kind == "logical":
        into = {"target": target.drill.into.target, "database": scratch_database(rec.drill_id)}
    else:
        into = {**planned_into(target, rec.drill_id)}
    rec = rec.model_copy(update={"into": into})
    rec = svc.evidence.save(rec)
    rec = _run(svc, target, rec, hooks or DrillHooks())
    rec = finish(svc, rec) if rec.finished else svc.evidence.save(rec.model_copy(update={"lease_until": None}))
    if claim is not None and svc.claims is not None:
        # DONE whatever the outcome: a failed drill is evidence, not something a redelivery should run again.
        svc.claims.finish(claim, "DONE", {"drill_id": rec.drill_id})
    return rec


def _run(svc: DrillServices, target: Target, rec: DrillRecord, hooks: DrillHooks) -> DrillRecord:
    assert target.drill is not None
    try:
        candidates: list[Candidate] = (
            logical_candidates(svc, target) if rec.kind == "logical" else snapshot_candidates(svc, target)
        )
    except LifeboatError as exc:
        return rec.failed(exc.code, f"cannot list the backups to drill: {exc}")
    picked = pick_backup(candidates, target.drill.pick, rec.started_at, svc.rng)
    if picked is None:
        return rec.failed("no_backup", f"target {target.name!r} has no complete {rec.kind} backup to drill")
    rec = rec.model_copy(update={"backup_id": picked.backup_id, "backup_time": picked.slot})
    if rec.kind == "logical":
        return run_logical(svc, target, rec, picked)
    return start_snapshot_drill(svc, target, rec, picked, hooks)


def finish(svc: DrillServices, rec: DrillRecord) -> DrillRecord:
    """Stamp, judge the RTO, keep the evidence (bucket, then table), emit the metrics."""
    update: dict[str, object] = {"finished_at": svc.clock(), "lease_until": None}
    if rec.rto_seconds is not None and rec.recovery_seconds is not None and rec.status == "SUCCEEDED":
        update["rto_met"] = rec.recovery_seconds <= rec.rto_seconds
    rec = svc.evidence.save(rec.model_copy(update=update))
    if rec.status == "SUCCEEDED":
        svc.metrics("DrillSucceeded", 1, "Count", rec.target)
        svc.metrics("RecoverySeconds", rec.recovery_seconds or 0.0, "Seconds", rec.target)
        if rec.rto_met is False:
            svc.metrics("DrillRtoExceeded", 1, "Count", rec.target)
        logger.info("drill succeeded", extra={"drill": rec.public()})
    else:
        svc.metrics("DrillFailed", 1, "Count", rec.target)
        logger.error("drill failed", extra={"drill": rec.public()})
    return rec
