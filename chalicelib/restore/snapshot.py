"""Snapshot and point-in-time restores (RDS, Aurora, EBS): start the AWS operation, observe it later.

Every restore creates new resources (RDS never reuses an identifier, and new RDS identifiers start with
`lifeboat-`; EBS gets new volumes), tagged with the restore id. `check` refuses at request time what would fail
or what the target's configuration does not allow (unknown snapshot, identifier in use, a source instance that
is gone or not opted in to point-in-time restores, a time outside the restorable window, an instance class or
network setting not in physical.restore); `start` (the worker) makes the first call; `advance` (the restore
sweeper, never a GET) looks at the resources and takes the next step (an Aurora cluster gets its instance once
it is available, EBS volumes are attached once available), until the job is SUCCEEDED or FAILED.

Neither `start` nor `advance` trusts the job's record (chalicelib.restore.plan): both re-derive what to do from
the job's request and the current configuration, a stored result that disagrees fails the job, and nothing is
added to a cluster, attached, or reported as restored unless it carries this restore's tag. A restore that
cannot advance for STUCK_AFTER, or MAX_CHECK_ERRORS sweeps in a row, fails with its last error.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message
from chalicelib.config import Physical
from chalicelib.errors import BadRequestError, ConflictError, LifeboatError, NotFoundError, RestoreError
from chalicelib.logical.catalog import BackupId
from chalicelib.physical.catalog import SnapshotEntry, list_snapshots
from chalicelib.physical.model import SnapshotServices, physical_target
from chalicelib.physical.names import TARGET_TAG, tag_dict
from chalicelib.restore import access
from chalicelib.restore.model import JobError, RestoreJob, RestoreServices
from chalicelib.restore.plan import (
    PITR_SOURCE_TAG,
    RESTORE_TAG,
    Plan,
    disagreement,
    new_id,
    opted_in,
    ours,
    plan,
    services,
    tags,
)
from chalicelib.restore.requests import PointInTimeRestoreRequest, SnapshotRestoreRequest

EBS_DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"]
NOT_FOUND = ("DBInstanceNotFound", "DBInstanceNotFoundFault", "DBClusterNotFoundFault", "DBClusterNotFound")
FAILED_CLUSTER = ("failed", "inaccessible-encryption-credentials", "incompatible-restore")
FAILED_INSTANCE = (
    "failed",
    "incompatible-restore",
    "incompatible-parameters",
    "storage-full",
    "inaccessible-encryption-credentials",
)
# A restore whose sweeps keep failing (an attachment point in use, a resource gone, access denied) fails after
# this long, or after this many failed sweeps in a row (every 2 minutes: 6 hours), instead of holding a quota slot.
STUCK_AFTER = timedelta(hours=6)
MAX_CHECK_ERRORS = 180
CHECK_KEYS = ("last_check_error", "check_errors", "failing_since")


def _aws_failure(exc: Exception, doing: str) -> RestoreError:
    return RestoreError(f"AWS failed {doing}: {error_code(exc) or type(exc).__name__}: {error_message(exc)}")


def find_snapshot(svc: RestoreServices, backup_id: str, region: str | None = None) -> SnapshotEntry:
    bid = BackupId.parse(backup_id)
    _, physical = physical_target(svc.config, bid.target)
    snapshots = services(svc)
    want_region = region or snapshots.source_region(physical)
    for entry in list_snapshots(snapshots, bid.target):
        if entry.backup_id == backup_id and entry.region == want_region:
            if entry.status != "SUCCEEDED":
                raise ConflictError(
                    f"snapshot {backup_id} in {want_region} is {entry.status}: wait until it is complete"
                )
            return entry
    raise NotFoundError(f"no snapshot {backup_id} in {want_region}")


def _describe(client: Any, kind: str, identifier: str) -> dict[str, Any] | None:
    """An RDS instance or cluster as described (with its TagList), or None when there is none."""
    try:
        if kind == "cluster":
            found = client.describe_db_clusters(DBClusterIdentifier=identifier)["DBClusters"]
        else:
            found = client.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
    except AWS_ERRORS as exc:
        if error_code(exc) in NOT_FOUND:
            return None
        raise _aws_failure(exc, f"checking whether {identifier} exists") from None
    return dict(found[0]) if found else None


def restorable_window(svc: RestoreServices, physical: Physical) -> tuple[datetime | None, datetime | None]:
    """(earliest, latest) restorable time of an RDS instance or Aurora cluster."""
    rds = services(svc).client_for("rds", services(svc).source_region(physical))
    try:
        if physical.method == "aurora_cluster":
            cluster = rds.describe_db_clusters(DBClusterIdentifier=physical.db_cluster_id)["DBClusters"][0]
            return cluster.get("EarliestRestorableTime"), cluster.get("LatestRestorableTime")
        instance = rds.describe_db_instances(DBInstanceIdentifier=physical.db_instance_id)["DBInstances"][0]
    except AWS_ERRORS as exc:
        raise _aws_failure(exc, "reading the restorable window") from None
    earliest = None
    try:
        backups = rds.describe_db_instance_automated_backups(DBInstanceIdentifier=physical.db_instance_id)
        windows = [
            b.get("RestoreWindow", {}).get("EarliestTime") for b in backups.get("DBInstanceAutomatedBackups", [])
        ]
        earliest = min((w for w in windows if w), default=None)
    except AWS_ERRORS:  # older APIs/emulators: the latest time still bounds the request
        pass
    return earliest, instance.get("LatestRestorableTime")


def _pit_source(rds: Any, target: str, physical: Physical, region: str) -> tuple[str, str]:
    """(kind, identifier) of the instance or cluster a point-in-time restore copies: it must exist (404) and be
    opted in with the tag lifeboat:pitr-source=true (409)."""
    kind = "cluster" if physical.method == "aurora_cluster" else "instance"
    source = physical.db_cluster_id if kind == "cluster" else physical.db_instance_id
    assert source is not None  # config: rds_instance needs db_instance_id, aurora_cluster db_cluster_id
    described = _describe(rds, kind, source)
    if described is None:
        raise NotFoundError(
            f"target {target!r}: DB {kind} {source!r} does not exist in {region} (deleted or"
            " renamed?): a point-in-time restore needs it; restore one of its snapshots instead"
        )
    if not opted_in(described):
        key, value = PITR_SOURCE_TAG
        raise ConflictError(
            f"target {target!r}: DB {kind} {source!r} is not opted in to point-in-time restores: add the tag"
            f" {key}={value} to it (the restore worker may restore no other instance or cluster to a point in time)"
        )
    return kind, source


def check(svc: RestoreServices, req: SnapshotRestoreRequest | PointInTimeRestoreRequest) -> str:
    """Refuse now what would fail later or what the target does not allow; returns the target name."""
    if isinstance(req, SnapshotRestoreRequest):
        return _check_snapshot(svc, req)
    target, physical = physical_target(svc.config, req.target)
    access.check_physical(physical, req)
    new_id(req)
    snapshots = services(svc)
    region = snapshots.source_region(physical)
    rds = snapshots.client_for("rds", region)
    kind, _ = _pit_source(rds, target.name, physical, region)
    if _describe(rds, kind, req.new_id) is not None:
        raise ConflictError(f"a DB {kind} {req.new_id!r} already exists: choose a new_id")
    if req.point_in_time != "latest":
        earliest, latest = restorable_window(svc, physical)
        when = req.point_in_time if req.point_in_time.tzinfo else req.point_in_time.replace(tzinfo=UTC)
        if (latest and when > latest) or (earliest and when < earliest):
            first = earliest.isoformat() if earliest else "?"
            last = latest.isoformat() if latest else "?"
            raise BadRequestError(f"{when.isoformat()} is outside the restorable window {first} .. {last}")
    return req.target


def _check_snapshot(svc: RestoreServices, req: SnapshotRestoreRequest) -> str:
    bid = BackupId.parse(req.backup_id)
    _, physical = physical_target(svc.config, bid.target)
    access.check_physical(physical, req)
    req = access.with_defaults(physical, req)
    if physical.method == "ebs":
        if not req.availability_zone:
            raise BadRequestError("an EBS restore needs availability_zone for the new volumes")
        entry = find_snapshot(svc, req.backup_id, req.region)
        if len(entry.resource_ids) > len(EBS_DEVICES) and req.attach_to_instance:
            raise BadRequestError("too many volumes to attach automatically")
        return bid.target
    identifier = new_id(req)
    entry = find_snapshot(svc, req.backup_id, req.region)
    rds = services(svc).client_for("rds", entry.region)
    kind = "cluster" if physical.method == "aurora_cluster" else "instance"
    if _describe(rds, kind, identifier) is not None:
        raise ConflictError(f"a DB {kind} {identifier!r} already exists in {entry.region}: choose a new_id")
    return bid.target


def _network(req: SnapshotRestoreRequest | PointInTimeRestoreRequest, cluster: bool) -> dict[str, Any]:
    """The settings of a request (allowed by check, defaults applied), as RDS parameters; absent ones are AWS's
    default. A new instance is never publicly accessible (Aurora: its instance, created by `advance`)."""
    extra: dict[str, Any] = {} if cluster else {"PubliclyAccessible": False}
    if req.subnet_group:
        extra["DBSubnetGroupName"] = req.subnet_group
    if req.security_group_ids:
        extra["VpcSecurityGroupIds"] = list(req.security_group_ids)
    if req.parameter_group:
        extra["DBClusterParameterGroupName" if cluster else "DBParameterGroupName"] = req.parameter_group
    if req.instance_class and not cluster:
        extra["DBInstanceClass"] = req.instance_class
    return extra


def start(svc: RestoreServices, job: RestoreJob) -> RestoreJob:
    """The first AWS call of a snapshot or point-in-time restore (the worker); the job stays RUNNING. What it does
    comes from `plan` (request and configuration, allow-lists checked again), never from the record."""
    snapshots = services(svc)
    planned = plan(svc, job)
    req, physical = planned.req, planned.physical
    restore_tags = tags(job.restore_id, job.target)
    try:
        if isinstance(req, SnapshotRestoreRequest):
            entry = find_snapshot(svc, req.backup_id, planned.region)
            if physical.method == "ebs":
                return _start_ebs(snapshots, job, req, entry, restore_tags)
            rds = snapshots.client_for("rds", entry.region)
            result = _start_from_snapshot(rds, planned, entry, restore_tags)
        else:
            rds = snapshots.client_for("rds", planned.region)
            _pit_source(rds, job.target, physical, planned.region)
            result = _start_point_in_time(rds, planned, restore_tags)
    except AWS_ERRORS as exc:
        if error_code(exc) in (
            "DBInstanceAlreadyExists",
            "DBInstanceAlreadyExistsFault",
            "DBClusterAlreadyExistsFault",
        ):
            raise ConflictError(f"the new identifier is already in use: {error_message(exc)}") from None
        raise _aws_failure(exc, "to start the restore") from None
    return advance(svc, job.model_copy(update={"result": {**planned.expected, **result}}))


def _start_from_snapshot(
    rds: Any, planned: Plan, entry: SnapshotEntry, restore_tags: list[dict[str, str]]
) -> dict[str, Any]:
    req = planned.req
    if planned.physical.method == "aurora_cluster":
        source = rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=entry.resource_ids[0])
        engine = source["DBClusterSnapshots"][0]["Engine"]
        rds.restore_db_cluster_from_snapshot(
            DBClusterIdentifier=planned.expected["cluster_id"],
            SnapshotIdentifier=entry.resource_ids[0],
            Engine=engine,
            Tags=restore_tags,
            **_network(req, cluster=True),
        )
        return {"engine": engine}
    rds.restore_db_instance_from_db_snapshot(
        DBInstanceIdentifier=planned.expected["instance_id"],
        DBSnapshotIdentifier=entry.resource_ids[0],
        Tags=restore_tags,
        **_network(req, cluster=False),
    )
    return {}


def _start_point_in_time(rds: Any, planned: Plan, restore_tags: list[dict[str, str]]) -> dict[str, Any]:
    req, physical = planned.req, planned.physical
    assert isinstance(req, PointInTimeRestoreRequest)
    latest = req.point_in_time == "latest"
    if physical.method == "aurora_cluster":
        when: dict[str, Any] = {"UseLatestRestorableTime": True} if latest else {"RestoreToTime": req.point_in_time}
        rds.restore_db_cluster_to_point_in_time(
            DBClusterIdentifier=planned.expected["cluster_id"],
            SourceDBClusterIdentifier=physical.db_cluster_id,
            Tags=restore_tags,
            **when,
            **_network(req, cluster=True),
        )
        cluster = rds.describe_db_clusters(DBClusterIdentifier=physical.db_cluster_id)["DBClusters"][0]
        return {"engine": cluster["Engine"]}
    when = {"UseLatestRestorableTime": True} if latest else {"RestoreTime": req.point_in_time}
    rds.restore_db_instance_to_point_in_time(
        SourceDBInstanceIdentifier=physical.db_instance_id,
        TargetDBInstanceIdentifier=planned.expected["instance_id"],
        Tags=restore_tags,
        **when,
        **_network(req, cluster=False),
    )
    return {}


def _start_ebs(
    snapshots: SnapshotServices,
    job: RestoreJob,
    req: SnapshotRestoreRequest,
    entry: SnapshotEntry,
    restore_tags: list[dict[str, str]],
) -> RestoreJob:
    if not req.availability_zone:
        raise BadRequestError("an EBS restore needs availability_zone for the new volumes")
    ec2 = snapshots.client_for("ec2", entry.region)
    volumes = []
    for snapshot_id in entry.resource_ids:
        volume = ec2.create_volume(
            SnapshotId=snapshot_id,
            AvailabilityZone=req.availability_zone,
            TagSpecifications=[{"ResourceType": "volume", "Tags": restore_tags}],
        )
        volumes.append({"snapshot_id": snapshot_id, "volume_id": volume["VolumeId"]})
    result = {"region": entry.region, "volumes": volumes, "attach_to_instance": req.attach_to_instance}
    return job.model_copy(update={"result": result})


def advance(svc: RestoreServices, job: RestoreJob) -> RestoreJob:
    """Look at the new resources and take the next step; SUCCEEDED when they are usable. The job is re-planned
    first: a request or configuration that no longer allows it, or a stored result that disagrees with it, fails
    it. A failed look is noted on the job (progress) and tried again on the next sweep, up to STUCK_AFTER."""
    if job.status != "RUNNING" or job.kind == "logical":
        return job
    result = copy.deepcopy(job.result)
    try:
        planned = plan(svc, job)
        wrong = disagreement(planned, result)
        snapshots = services(svc)
    except LifeboatError as exc:
        return _failed(job, result, f"refusing to act on this job: {exc}")
    if wrong:
        return _failed(job, result, f"refusing to act on this job: its stored result disagrees: {wrong}")
    try:
        if planned.physical.method == "ebs":
            advanced = _advance_ebs(snapshots.client_for("ec2", planned.region), job, result, planned)
        else:
            advanced = _advance_rds(snapshots.client_for("rds", planned.region), job, result, planned)
    except (*AWS_ERRORS, RestoreError) as exc:
        return _check_failed(job, result, exc)
    progress = {k: v for k, v in advanced.progress.items() if k not in CHECK_KEYS}
    return advanced.model_copy(update={"progress": progress})


def _check_failed(job: RestoreJob, result: dict[str, Any], exc: Exception) -> RestoreJob:
    """One more failed sweep: noted, and the job fails once it has failed for STUCK_AFTER or MAX_CHECK_ERRORS."""
    now = datetime.now(UTC)
    error = f"{error_code(exc) or type(exc).__name__}: {error_message(exc)}"[:300]
    try:  # the record's own counters, unless they are not what this code writes
        count = int(job.progress.get("check_errors", 0)) + 1
        since = datetime.fromisoformat(str(job.progress.get("failing_since")))
    except (TypeError, ValueError):
        count, since = 1, now
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    progress = {"last_check_error": error, "check_errors": count, "failing_since": since.isoformat()}
    job = job.model_copy(update={"result": result, "progress": progress})
    if count >= MAX_CHECK_ERRORS or now - since >= STUCK_AFTER:
        return _failed(
            job,
            result,
            f"the restore could not advance for {count} sweeps since {since:%Y-%m-%d %H:%M} UTC (the limit is"
            f" {MAX_CHECK_ERRORS} sweeps or {STUCK_AFTER}); last error: {error}",
            code="restore_stuck",
        )
    return job


def _cluster_instance(rds: Any, job: RestoreJob, result: dict[str, Any], planned: Plan) -> dict[str, Any] | None:
    """The restored cluster's instance, created once the cluster is available; None while it is not (yet).
    Nothing is added to a cluster that does not carry this restore's tag."""
    cluster_id, instance_id = planned.expected["cluster_id"], planned.expected["instance_id"]
    cluster = _describe(rds, "cluster", cluster_id)
    if cluster is None:
        raise RestoreError(f"cluster {cluster_id} not found")
    if not ours(cluster, job.restore_id):
        raise _NotOurs(f"cluster {cluster_id} does not carry this restore's tag {RESTORE_TAG}={job.restore_id}")
    result["cluster_status"] = cluster["Status"]
    result["endpoint"] = cluster.get("Endpoint")
    if cluster["Status"] in FAILED_CLUSTER:
        raise _Failed(f"cluster {cluster_id} is {cluster['Status']}")
    if cluster["Status"] != "available":
        return None
    instance = _describe(rds, "instance", instance_id)
    if instance is None:  # the restore is not done before the cluster has an instance to connect to
        rds.create_db_instance(
            DBInstanceIdentifier=instance_id,
            DBClusterIdentifier=cluster_id,
            Engine=cluster["Engine"],
            DBInstanceClass=planned.expected["instance_class"],
            PubliclyAccessible=False,
            Tags=tags(job.restore_id, job.target),
        )
        instance = _describe(rds, "instance", instance_id)
    return instance


class _NotOurs(Exception):
    """A resource this job would act on is not the restore's own (wrong tag or cluster): the job fails."""


class _Failed(Exception):
    """AWS reports the restore failed."""


def _advance_rds(rds: Any, job: RestoreJob, result: dict[str, Any], planned: Plan) -> RestoreJob:
    instance_id = planned.expected["instance_id"]
    cluster_id = planned.expected.get("cluster_id")
    try:
        if cluster_id:
            instance = _cluster_instance(rds, job, result, planned)
            if instance is None:
                return job.model_copy(update={"result": result})
        else:
            instance = _describe(rds, "instance", instance_id)
            if instance is None:
                raise RestoreError(f"instance {instance_id} not found")
        if not ours(instance, job.restore_id):
            raise _NotOurs(f"instance {instance_id} does not carry this restore's tag {RESTORE_TAG}={job.restore_id}")
        if cluster_id and str(instance.get("DBClusterIdentifier", "")).lower() != cluster_id.lower():
            raise _NotOurs(f"instance {instance_id} is not a member of cluster {cluster_id}")
    except (_NotOurs, _Failed) as exc:
        reason = f"{exc}: it is not this restore's, nothing was done to it" if isinstance(exc, _NotOurs) else str(exc)
        return _failed(job, result, reason)
    result["instance_status"] = instance["DBInstanceStatus"]
    if not cluster_id:
        endpoint = instance.get("Endpoint") or {}
        result["endpoint"] = endpoint.get("Address")
        result["port"] = endpoint.get("Port")
    if instance["DBInstanceStatus"] in FAILED_INSTANCE:
        return _failed(job, result, f"instance {instance_id} is {instance['DBInstanceStatus']}")
    if instance["DBInstanceStatus"] == "available":
        return job.model_copy(update={"status": "SUCCEEDED", "result": result})
    return job.model_copy(update={"result": result})


def _device_letter(device: str) -> str:
    """/dev/sdf, /dev/xvdf, xvdf and sdf name the same attachment point."""
    name = device.removeprefix("/dev/")
    return name.removeprefix("xvd") if name.startswith("xvd") else name.removeprefix("sd")


def _attached(ec2: Any, instance_id: str) -> dict[str, str]:
    """{device name: volume id} of what is attached to an instance (DescribeInstances' BlockDeviceMappings)."""
    reservations = ec2.describe_instances(InstanceIds=[instance_id]).get("Reservations", [])
    instances = [i for r in reservations for i in r.get("Instances", [])]
    if not instances:
        raise RestoreError(f"instance {instance_id} not found")
    mappings = instances[0].get("BlockDeviceMappings", [])
    return {m["DeviceName"]: m.get("Ebs", {}).get("VolumeId", "") for m in mappings}


def _attach(ec2: Any, instance_id: str, volumes: list[dict[str, Any]]) -> None:
    """Attach the available volumes not attached yet, each at an attachment point the instance does not use."""
    attached = _attached(ec2, instance_id)
    taken = {_device_letter(d) for d in attached}
    free = [d for d in EBS_DEVICES if _device_letter(d) not in taken]
    for v in volumes:
        if v["state"] != "available" or v["volume_id"] in attached.values():
            continue
        if not free:
            span = f"{EBS_DEVICES[0]}..{EBS_DEVICES[-1]}"
            raise RestoreError(f"instance {instance_id} has no free attachment point in {span}")
        device = free.pop(0)
        ec2.attach_volume(VolumeId=v["volume_id"], InstanceId=instance_id, Device=device)
        v["device"] = device


def _volume_entry(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("volume_id"), str) and isinstance(v.get("device", ""), str)


def _advance_ebs(ec2: Any, job: RestoreJob, result: dict[str, Any], planned: Plan) -> RestoreJob:
    volumes = result.get("volumes")
    if not isinstance(volumes, list) or not volumes or not all(_volume_entry(v) for v in volumes):
        return _failed(job, result, "refusing to act on this job: it records no volumes, or not as this code does")
    ids = [v["volume_id"] for v in volumes]
    described = {v["VolumeId"]: v for v in ec2.describe_volumes(VolumeIds=ids)["Volumes"]}
    for v in volumes:
        found = described.get(v["volume_id"])
        if found is None:
            raise RestoreError(f"volume {v['volume_id']} not found")
        if not ours(found, job.restore_id, "Tags") or tag_dict(found.get("Tags")).get(TARGET_TAG) != job.target:
            message = f"volume {v['volume_id']} does not carry this restore's tag {RESTORE_TAG}={job.restore_id}"
            return _failed(job, result, f"{message} (target {job.target}): it is not this restore's, nothing attached")
        v["state"] = found["State"]
    if any(v["state"] == "error" for v in volumes):
        return _failed(job, result, "a new volume is in state error")
    instance = planned.expected["attach_to_instance"]
    if not instance:
        done = all(v["state"] == "available" for v in volumes)
        return job.model_copy(update={"status": "SUCCEEDED" if done else "RUNNING", "result": result})
    _attach(ec2, instance, volumes)
    states = {v["VolumeId"]: v["State"] for v in ec2.describe_volumes(VolumeIds=ids)["Volumes"]}
    for v in volumes:
        v["state"] = states.get(v["volume_id"], v["state"])
    done = all(v["state"] == "in-use" for v in volumes)
    return job.model_copy(update={"status": "SUCCEEDED" if done else "RUNNING", "result": result})


def _failed(job: RestoreJob, result: dict[str, Any], message: str, code: str = "restore_failed") -> RestoreJob:
    return job.model_copy(update={"status": "FAILED", "result": result, "error": JobError(code=code, message=message)})
