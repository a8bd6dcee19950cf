"""What the configuration allows a restore: where it may go, how many may run at once, which AWS settings it
may ask for. The caller names things; the operator's configuration decides.

Refusals are ForbiddenError (403), saying what is allowed, and TooManyRestoresError (429).
"""

from __future__ import annotations

from typing import cast

from chalicelib.config import Config, Physical, Target
from chalicelib.errors import BadRequestError, ForbiddenError, TooManyRestoresError
from chalicelib.restore.model import RestoreJob, RestoreJobStore
from chalicelib.restore.requests import PointInTimeRestoreRequest, SnapshotRestoreRequest


def destination(config: Config, source: str, into: str | None) -> Target:
    """The target a backup of `source` is restored into: `into` (default: `source` itself), which must be
    `source` or listed in its `restore_into`. An unknown name is refused like a forbidden one."""
    name = into or source
    origin = config.target(source)
    if name != source and name not in origin.restore_into:
        allowed = ", ".join(repr(t) for t in [source, *origin.restore_into])
        raise ForbiddenError(
            f"a backup of {source!r} may be restored into {allowed} only (the target's restore_into), not {name!r};"
            f" to allow it, the operator adds {name!r} to target {source!r}'s restore_into in the configuration"
        )
    target = config.target(name)
    if target.connection is None:
        raise BadRequestError(f"target {name!r} has no connection to restore into")
    return target


def into_target(job: RestoreJob) -> str:
    """The target a job restores into (older jobs did not record it: their own target)."""
    return job.into_target or job.target


def check_quota(config: Config, jobs: RestoreJobStore, into: str) -> None:
    """At most settings.max_running_restores unfinished (PENDING or RUNNING) restores in all, and the
    target's max_running_restores into one target. Counted when a restore is requested: requests that
    arrive at the same moment may together pass the limit by their number."""
    active = jobs.active()
    limit = config.settings.max_running_restores
    if len(active) >= limit:
        raise TooManyRestoresError(
            f"{len(active)} restores are pending or running, the limit"
            f" (settings.max_running_restores) is {limit}: retry when one has finished"
        )
    mine = [j.restore_id for j in active if into_target(j) == into]
    per_target = config.target(into).max_running_restores
    if len(mine) >= per_target:
        raise TooManyRestoresError(
            f"{len(mine)} restores into target {into!r} are pending or running"
            f" ({', '.join(mine[:5])}), its limit (max_running_restores) is {per_target}:"
            " retry when one has finished"
        )


def check_physical(physical: Physical, req: SnapshotRestoreRequest | PointInTimeRestoreRequest) -> None:
    """Every AWS setting a snapshot or point-in-time restore asks for must be in physical.restore's lists."""
    allow = physical.restore
    _allowed("instance_class", req.instance_class, allow.instance_classes, "instance_classes")
    _allowed("subnet_group", req.subnet_group, allow.subnet_groups, "subnet_groups")
    for group in req.security_group_ids:
        _allowed("security_group_ids", group, allow.security_group_ids, "security_group_ids")
    _allowed("parameter_group", req.parameter_group, allow.parameter_groups, "parameter_groups")
    if isinstance(req, SnapshotRestoreRequest):
        _allowed("attach_to_instance", req.attach_to_instance, allow.attach_to_instances, "attach_to_instances")
        if allow.availability_zones:  # empty: any zone (an EBS restore must name one)
            _allowed("availability_zone", req.availability_zone, allow.availability_zones, "availability_zones")


def with_defaults[R: SnapshotRestoreRequest | PointInTimeRestoreRequest](physical: Physical, req: R) -> R:
    """The request as it is carried out: a subnet group, security groups or (EBS) availability zone left out
    is the first one physical.restore lists, so a non-empty allow-list is never bypassed by omission (AWS's
    default VPC may be public). Nothing listed: the field stays out and AWS's default applies."""
    allow = physical.restore
    update: dict[str, object] = {}
    if req.subnet_group is None and allow.subnet_groups:
        update["subnet_group"] = allow.subnet_groups[0]
    if not req.security_group_ids and allow.security_group_ids:
        update["security_group_ids"] = [allow.security_group_ids[0]]
    if _needs_zone(req) and allow.availability_zones:
        update["availability_zone"] = allow.availability_zones[0]
    return cast(R, req.model_copy(update=update)) if update else req


def _needs_zone(req: SnapshotRestoreRequest | PointInTimeRestoreRequest) -> bool:
    return isinstance(req, SnapshotRestoreRequest) and req.availability_zone is None


def _allowed(field: str, value: str | None, allowed: list[str], listed_in: str) -> None:
    if value is None or value in allowed:
        return
    what = ", ".join(allowed) if allowed else "none (leave it out: the AWS default applies)"
    raise ForbiddenError(
        f"{field} {value!r} is not allowed for this target; allowed (physical.restore.{listed_in}): {what}"
    )
