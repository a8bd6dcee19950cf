"""What a snapshot or point-in-time restore job does, derived from its original request and the current
configuration, never from what its record says it did.

The jobs table can be written by several functions, so a record is not proof: the worker (`start`) and the
restore sweeper (`advance`) both call `plan` before any AWS write. It validates the job's request again, runs
the target's allow-lists again (chalicelib.restore.access), applies their defaults, and names every resource
the job may touch; the stored result must agree with it (`disagreement`), and a resource is acted on only
when it carries this restore's tag (`ours`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from chalicelib.config import Physical
from chalicelib.errors import BadRequestError, RestoreError
from chalicelib.physical.model import SnapshotServices, physical_target
from chalicelib.physical.names import TARGET_TAG, tag_dict
from chalicelib.restore import access
from chalicelib.restore.model import RestoreJob, RestoreServices
from chalicelib.restore.requests import (
    PointInTimeRestoreRequest,
    SnapshotRestoreRequest,
    describe_validation_error,
    source_target,
)

# New RDS instances and clusters are named `lifeboat-…`: the restore functions' IAM policies create and tag no
# other RDS instance or cluster (stack/capabilities.py RESTORED_RDS_PREFIX), which is what lets them refuse to
# tag, extend or point-in-time restore the operator's own resources.
NEW_ID_PREFIX = "lifeboat-"
# Restore drills' temporary instances (chalicelib.drills): the sweeper may delete what is named so and tagged by a
# drill, so a restore job may not take such a name (its instance could be tagged and deleted as a dead drill's).
DRILL_ID_PREFIX = "lifeboat-drill-"
# Logical drills' scratch databases (chalicelib.drills.model.scratch_database): no restore job may create one.
DRILL_DATABASE_PREFIX = "lifeboat_drill_"
RESTORE_TAG = "lifeboat:restore-id"
# The operator opts an RDS instance or Aurora cluster in to point-in-time restores with this tag; the restore
# worker's IAM policy restores no other source, and the API refuses one without it (409).
PITR_SOURCE_TAG = ("lifeboat:pitr-source", "true")
DEFAULT_AURORA_INSTANCE_CLASS = "db.r6g.large"
RESTORE_ID = re.compile(r"r-[0-9a-f]{16}")


def services(svc: RestoreServices) -> SnapshotServices:
    if svc.snapshots is None:
        raise BadRequestError("no target has a physical section: snapshot restores are not configured")
    return svc.snapshots


def new_id(req: SnapshotRestoreRequest | PointInTimeRestoreRequest) -> str:
    """The request's new RDS identifier, which must start with NEW_ID_PREFIX."""
    if not req.new_id:
        raise BadRequestError("a snapshot restore needs new_id, the identifier of the new instance or cluster")
    if not req.new_id.lower().startswith(NEW_ID_PREFIX):
        raise BadRequestError(
            f"new_id {req.new_id!r} must start with {NEW_ID_PREFIX!r} (e.g. {NEW_ID_PREFIX}{req.new_id.lower()}):"
            " the restore functions may create and tag no other RDS instance or cluster"
        )
    return req.new_id


def refuse_drill_name(req: SnapshotRestoreRequest | PointInTimeRestoreRequest) -> None:
    """A restore job's new_id is never a drill's name (DRILL_ID_PREFIX): only drills create those."""
    if req.new_id and req.new_id.lower().startswith(DRILL_ID_PREFIX):
        raise BadRequestError(
            f"new_id {req.new_id!r}: names starting with {DRILL_ID_PREFIX!r} are reserved for restore drills,"
            " whose leftovers the sweeper deletes; choose another name after 'lifeboat-'"
        )


def refuse_drill_database(database: str) -> None:
    """A restore's database is never named like a drill's scratch database (DRILL_DATABASE_PREFIX): only drills
    create those, and only drills drop them."""
    if database.lower().startswith(DRILL_DATABASE_PREFIX):
        raise BadRequestError(
            f"database {database!r}: names starting with {DRILL_DATABASE_PREFIX!r} are reserved for restore drills'"
            " scratch databases; choose another name"
        )


def aurora_instance_id(cluster_id: str, restore_id: str) -> str:
    """An Aurora restore's instance: named after the restore (`<cluster>-<8 hex digits of its id>`), so no other
    restore's, nor anyone else's, instance can be taken for it; at most 63 characters (new_id: at most 54)."""
    return f"{cluster_id}-{restore_id.removeprefix('r-')[:8]}"


def aurora_class(req: SnapshotRestoreRequest | PointInTimeRestoreRequest, physical: Physical) -> str:
    """The Aurora instance's class: the request's, else the first allowed one, else DEFAULT_AURORA_INSTANCE_CLASS."""
    allowed = physical.restore.instance_classes
    return req.instance_class or (allowed[0] if allowed else DEFAULT_AURORA_INSTANCE_CLASS)


def tags(restore_id: str, target: str) -> list[dict[str, str]]:
    return [{"Key": RESTORE_TAG, "Value": restore_id}, {"Key": TARGET_TAG, "Value": target}]


def ours(resource: dict[str, Any], restore_id: str, tag_key: str = "TagList") -> bool:
    """Whether an RDS (TagList) or EC2 (Tags) resource as described carries this restore's tag."""
    return tag_dict(resource.get(tag_key)).get(RESTORE_TAG) == restore_id


def opted_in(resource: dict[str, Any]) -> bool:
    """Whether an RDS instance or cluster as described is opted in to point-in-time restores."""
    return tag_dict(resource.get("TagList")).get(PITR_SOURCE_TAG[0], "").lower() == PITR_SOURCE_TAG[1]


@dataclass(frozen=True)
class Plan:
    """A restore job as its request and the configuration define it. `expected`: the result fields its
    record must agree with (region, new identifiers, the Aurora instance class, where volumes go)."""

    req: SnapshotRestoreRequest | PointInTimeRestoreRequest
    physical: Physical
    region: str
    expected: dict[str, Any] = field(default_factory=dict)


def plan(svc: RestoreServices, job: RestoreJob) -> Plan:
    """What `job` may do now. Raises a LifeboatError (the job then fails) when its request is malformed, restores
    another target than the job's, or asks for something the target's configuration no longer allows."""
    if not RESTORE_ID.fullmatch(job.restore_id):
        raise RestoreError(f"{job.restore_id!r} is not a restore id this stack issues")
    model = SnapshotRestoreRequest if job.kind == "snapshot" else PointInTimeRestoreRequest
    try:
        req: SnapshotRestoreRequest | PointInTimeRestoreRequest = model.model_validate(job.request)
    except ValidationError as exc:
        raise RestoreError(f"the job's request is not a {job.kind} restore: {describe_validation_error(exc)}") from None
    if source_target(req) != job.target:
        restores = source_target(req)
        raise RestoreError(f"the job is recorded for target {job.target!r} but its request restores {restores!r}")
    _, physical = physical_target(svc.config, job.target)
    if physical.method == "ebs" and not isinstance(req, SnapshotRestoreRequest):
        raise RestoreError(f"target {job.target!r} is EBS: it has no point-in-time restore")
    access.check_physical(physical, req)
    req = access.with_defaults(physical, req)
    region = (req.region if isinstance(req, SnapshotRestoreRequest) else None) or services(svc).source_region(physical)
    expected: dict[str, Any] = {"region": region}
    if physical.method == "ebs":
        assert isinstance(req, SnapshotRestoreRequest)  # checked above
        expected["attach_to_instance"] = req.attach_to_instance
    elif physical.method == "aurora_cluster":
        cluster_id = new_id(req)
        expected.update(
            cluster_id=cluster_id,
            instance_id=aurora_instance_id(cluster_id, job.restore_id),
            instance_class=aurora_class(req, physical),
        )
    else:
        expected["instance_id"] = new_id(req)
    return Plan(req, physical, region, expected)


def disagreement(planned: Plan, result: dict[str, Any]) -> str | None:
    """What in a job's stored result differs from its plan (None: nothing). A field the record lacks is taken
    from the plan."""
    wrong = [
        f"{key}={result[key]!r} (its request and the configuration say {value!r})"
        for key, value in planned.expected.items()
        if key in result and result[key] != value
    ]
    for key, value in planned.expected.items():
        result.setdefault(key, value)
    return "; ".join(wrong) or None
