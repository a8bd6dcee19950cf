"""Snapshot and point-in-time restores (RDS, Aurora, EBS): start the AWS operation, observe it later.

Every restore creates new resources (RDS never reuses an identifier; EBS gets new volumes), tagged with
the restore id. `check` refuses at request time what would fail or what the target's configuration does
not allow (unknown snapshot, identifier in use, a source instance that is gone, a time outside the
restorable window, an instance class or network setting not in physical.restore); `start` (the worker)
makes the first call; `advance` (the restore sweeper, never a GET) looks at the resources and takes the
next step (an Aurora cluster gets its first instance once it is available, EBS volumes are attached once
available), until the job is SUCCEEDED or FAILED.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message
from chalicelib.config import Physical
from chalicelib.errors import BadRequestError, ConflictError, NotFoundError, RestoreError
from chalicelib.logical.catalog import BackupId
from chalicelib.physical.catalog import SnapshotEntry, list_snapshots
from chalicelib.physical.model import SnapshotServices, physical_target
from chalicelib.restore import access
from chalicelib.restore.model import JobError, RestoreJob, RestoreServices
from chalicelib.restore.requests import PointInTimeRestoreRequest, SnapshotRestoreRequest

DEFAULT_AURORA_INSTANCE_CLASS = "db.r6g.large"
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


def _services(svc: RestoreServices) -> SnapshotServices:
    if svc.snapshots is None:
        raise BadRequestError("no target has a physical section: snapshot restores are not configured")
    return svc.snapshots


def _tags(job_or_id: str, target: str) -> list[dict[str, str]]:
    return [{"Key": "lifeboat:restore-id", "Value": job_or_id}, {"Key": "lifeboat:target", "Value": target}]


def _aws_failure(exc: Exception, doing: str) -> RestoreError:
    return RestoreError(f"AWS failed {doing}: {error_code(exc) or type(exc).__name__}: {error_message(exc)}")


def find_snapshot(svc: RestoreServices, backup_id: str, region: str | None = None) -> SnapshotEntry:
    bid = BackupId.parse(backup_id)
    _, physical = physical_target(svc.config, bid.target)
    snapshots = _services(svc)
    want_region = region or snapshots.source_region(physical)
    for entry in list_snapshots(snapshots, bid.target):
        if entry.backup_id == backup_id and entry.region == want_region:
            if entry.status != "SUCCEEDED":
                raise ConflictError(
                    f"snapshot {backup_id} in {want_region} is {entry.status}: wait until it is complete"
                )
            return entry
    raise NotFoundError(f"no snapshot {backup_id} in {want_region}")


def _exists(client: Any, kind: str, identifier: str) -> bool:
    try:
        if kind == "cluster":
            client.describe_db_clusters(DBClusterIdentifier=identifier)
        else:
            client.describe_db_instances(DBInstanceIdentifier=identifier)
    except AWS_ERRORS as exc:
        if error_code(exc) in NOT_FOUND:
            return False
        raise _aws_failure(exc, f"checking whether {identifier} exists") from None
    return True


def restorable_window(svc: RestoreServices, physical: Physical) -> tuple[datetime | None, datetime | None]:
    """(earliest, latest) restorable time of an RDS instance or Aurora cluster."""
    rds = _services(svc).client_for("rds", _services(svc).source_region(physical))
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


def check(svc: RestoreServices, req: SnapshotRestoreRequest | PointInTimeRestoreRequest) -> str:
    """Refuse now what would fail later or what the target does not allow; returns the target name."""
    if isinstance(req, SnapshotRestoreRequest):
        return _check_snapshot(svc, req)
    target, physical = physical_target(svc.config, req.target)
    access.check_physical(physical, req)
    snapshots = _services(svc)
    region = snapshots.source_region(physical)
    rds = snapshots.client_for("rds", region)
    kind = "cluster" if physical.method == "aurora_cluster" else "instance"
    source = physical.db_cluster_id if kind == "cluster" else physical.db_instance_id
    assert source is not None  # config: rds_instance needs db_instance_id, aurora_cluster db_cluster_id
    if not _exists(rds, kind, source):
        raise NotFoundError(
            f"target {target.name!r}: DB {kind} {source!r} does not exist in {region} (deleted or"
            " renamed?): a point-in-time restore needs it; restore one of its snapshots instead"
        )
    if _exists(rds, kind, req.new_id):
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
    if physical.method == "ebs":
        if not req.availability_zone:
            raise BadRequestError("an EBS restore needs availability_zone for the new volumes")
        entry = find_snapshot(svc, req.backup_id, req.region)
        if len(entry.resource_ids) > len(EBS_DEVICES) and req.attach_to_instance:
            raise BadRequestError("too many volumes to attach automatically")
        return bid.target
    if not req.new_id:
        raise BadRequestError("a snapshot restore needs new_id, the identifier of the new instance or cluster")
    entry = find_snapshot(svc, req.backup_id, req.region)
    rds = _services(svc).client_for("rds", entry.region)
    kind = "cluster" if physical.method == "aurora_cluster" else "instance"
    if _exists(rds, kind, req.new_id):
        raise ConflictError(f"a DB {kind} {req.new_id!r} already exists in {entry.region}: choose a new_id")
    return bid.target


def _network(req: SnapshotRestoreRequest | PointInTimeRestoreRequest, cluster: bool) -> dict[str, Any]:
    """The optional settings of a request (allowed by check), as RDS parameters; absent ones are AWS's default."""
    extra: dict[str, Any] = {}
    if req.subnet_group:
        extra["DBSubnetGroupName"] = req.subnet_group
    if req.security_group_ids:
        extra["VpcSecurityGroupIds"] = list(req.security_group_ids)
    if req.parameter_group:
        extra["DBClusterParameterGroupName" if cluster else "DBParameterGroupName"] = req.parameter_group
    if req.instance_class and not cluster:
        extra["DBInstanceClass"] = req.instance_class
    return extra


def _aurora_class(req: SnapshotRestoreRequest | PointInTimeRestoreRequest, physical: Physical) -> str:
    """The Aurora instance's class: the request's, else the first allowed one, else DEFAULT_AURORA_INSTANCE_CLASS."""
    allowed = physical.restore.instance_classes
    return req.instance_class or (allowed[0] if allowed else DEFAULT_AURORA_INSTANCE_CLASS)


def start(svc: RestoreServices, job: RestoreJob) -> RestoreJob:
    """The first AWS call of a snapshot or point-in-time restore (the worker); the job stays RUNNING."""
    snapshots = _services(svc)
    _, physical = physical_target(svc.config, job.target)
    tags = _tags(job.restore_id, job.target)
    try:
        if job.kind == "snapshot":
            req = SnapshotRestoreRequest.model_validate(job.request)
            entry = find_snapshot(svc, req.backup_id, req.region)
            if physical.method == "ebs":
                return _start_ebs(snapshots, job, req, entry, tags)
            result = _start_from_snapshot(snapshots.client_for("rds", entry.region), req, entry, physical, tags)
        else:
            req_pit = PointInTimeRestoreRequest.model_validate(job.request)
            region = snapshots.source_region(physical)
            result = _start_point_in_time(snapshots.client_for("rds", region), req_pit, physical, tags)
            result["region"] = region
    except AWS_ERRORS as exc:
        if error_code(exc) in (
            "DBInstanceAlreadyExists",
            "DBInstanceAlreadyExistsFault",
            "DBClusterAlreadyExistsFault",
        ):
            raise ConflictError(f"the new identifier is already in use: {error_message(exc)}") from None
        raise _aws_failure(exc, "to start the restore") from None
    return advance(svc, job.model_copy(update={"result": result}))


def _start_from_snapshot(
    rds: Any, req: SnapshotRestoreRequest, entry: SnapshotEntry, physical: Physical, tags: list[dict[str, str]]
) -> dict[str, Any]:
    if physical.method == "aurora_cluster":
        source = rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=entry.resource_ids[0])
        engine = source["DBClusterSnapshots"][0]["Engine"]
        rds.restore_db_cluster_from_snapshot(
            DBClusterIdentifier=req.new_id,
            SnapshotIdentifier=entry.resource_ids[0],
            Engine=engine,
            Tags=tags,
            **_network(req, cluster=True),
        )
        return {
            "region": entry.region,
            "cluster_id": req.new_id,
            "engine": engine,
            "instance_class": _aurora_class(req, physical),
        }
    rds.restore_db_instance_from_db_snapshot(
        DBInstanceIdentifier=req.new_id,
        DBSnapshotIdentifier=entry.resource_ids[0],
        Tags=tags,
        **_network(req, cluster=False),
    )
    return {"region": entry.region, "instance_id": req.new_id}


def _start_point_in_time(
    rds: Any, req: PointInTimeRestoreRequest, physical: Physical, tags: list[dict[str, str]]
) -> dict[str, Any]:
    latest = req.point_in_time == "latest"
    if physical.method == "aurora_cluster":
        when: dict[str, Any] = {"UseLatestRestorableTime": True} if latest else {"RestoreToTime": req.point_in_time}
        rds.restore_db_cluster_to_point_in_time(
            DBClusterIdentifier=req.new_id,
            SourceDBClusterIdentifier=physical.db_cluster_id,
            Tags=tags,
            **when,
            **_network(req, cluster=True),
        )
        cluster = rds.describe_db_clusters(DBClusterIdentifier=physical.db_cluster_id)["DBClusters"][0]
        return {"cluster_id": req.new_id, "engine": cluster["Engine"], "instance_class": _aurora_class(req, physical)}
    when = {"UseLatestRestorableTime": True} if latest else {"RestoreTime": req.point_in_time}
    rds.restore_db_instance_to_point_in_time(
        SourceDBInstanceIdentifier=physical.db_instance_id,
        TargetDBInstanceIdentifier=req.new_id,
        Tags=tags,
        **when,
        **_network(req, cluster=False),
    )
    return {"instance_id": req.new_id}


def _start_ebs(
    snapshots: SnapshotServices,
    job: RestoreJob,
    req: SnapshotRestoreRequest,
    entry: SnapshotEntry,
    tags: list[dict[str, str]],
) -> RestoreJob:
    ec2 = snapshots.client_for("ec2", entry.region)
    volumes = []
    for snapshot_id in entry.resource_ids:
        volume = ec2.create_volume(
            SnapshotId=snapshot_id,
            AvailabilityZone=req.availability_zone,
            TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
        )
        volumes.append({"snapshot_id": snapshot_id, "volume_id": volume["VolumeId"]})
    result = {"region": entry.region, "volumes": volumes, "attach_to_instance": req.attach_to_instance}
    return job.model_copy(update={"result": result})


def advance(svc: RestoreServices, job: RestoreJob) -> RestoreJob:
    """Look at the new resources and take the next step; SUCCEEDED when they are usable. A failed look is
    noted on the job (progress.last_check_error) and tried again on the next sweep."""
    if job.status != "RUNNING" or job.kind == "logical":
        return job
    snapshots = _services(svc)
    result = dict(job.result)
    region = result.get("region") or snapshots.region
    try:
        if "volumes" in result:
            return _advance_ebs(snapshots.client_for("ec2", region), job, result)
        return _advance_rds(snapshots.client_for("rds", region), job, result)
    except (*AWS_ERRORS, RestoreError) as exc:
        check_error = f"{error_code(exc) or type(exc).__name__}: {error_message(exc)}"[:300]
        return job.model_copy(update={"result": result, "progress": {"last_check_error": check_error}})


def _advance_rds(rds: Any, job: RestoreJob, result: dict[str, Any]) -> RestoreJob:
    if "cluster_id" in result:
        cluster = rds.describe_db_clusters(DBClusterIdentifier=result["cluster_id"])["DBClusters"][0]
        result["cluster_status"] = cluster["Status"]
        result["endpoint"] = cluster.get("Endpoint")
        if cluster["Status"] in FAILED_CLUSTER:
            return _failed(job, result, f"cluster {result['cluster_id']} is {cluster['Status']}")
        if cluster["Status"] != "available":
            return job.model_copy(update={"result": result})
        instance_id = result.setdefault("instance_id", f"{result['cluster_id']}-1")
        # The restore is not done before the cluster has an instance to connect to.
        if not _exists(rds, "instance", instance_id):
            rds.create_db_instance(
                DBInstanceIdentifier=instance_id,
                DBClusterIdentifier=result["cluster_id"],
                Engine=result["engine"],
                DBInstanceClass=result["instance_class"],
                Tags=_tags(job.restore_id, job.target),
            )
    instance = rds.describe_db_instances(DBInstanceIdentifier=result["instance_id"])["DBInstances"][0]
    result["instance_status"] = instance["DBInstanceStatus"]
    if "cluster_id" not in result:
        endpoint = instance.get("Endpoint") or {}
        result["endpoint"] = endpoint.get("Address")
        result["port"] = endpoint.get("Port")
    if instance["DBInstanceStatus"] in FAILED_INSTANCE:
        return _failed(job, result, f"instance {result['instance_id']} is {instance['DBInstanceStatus']}")
    if instance["DBInstanceStatus"] == "available":
        return job.model_copy(update={"status": "SUCCEEDED", "result": result})
    return job.model_copy(update={"result": result})


def _advance_ebs(ec2: Any, job: RestoreJob, result: dict[str, Any]) -> RestoreJob:
    ids = [v["volume_id"] for v in result["volumes"]]
    states = {v["VolumeId"]: v for v in ec2.describe_volumes(VolumeIds=ids)["Volumes"]}
    for v in result["volumes"]:
        v["state"] = states[v["volume_id"]]["State"]
    if any(v["state"] == "error" for v in result["volumes"]):
        return _failed(job, result, "a new volume is in state error")
    instance = result.get("attach_to_instance")
    if instance:
        for device, v in zip(EBS_DEVICES, result["volumes"], strict=False):
            if v["state"] == "available" and not v.get("device"):
                ec2.attach_volume(VolumeId=v["volume_id"], InstanceId=instance, Device=device)
                v["device"] = device
        states = {v["VolumeId"]: v for v in ec2.describe_volumes(VolumeIds=ids)["Volumes"]}
        for v in result["volumes"]:
            v["state"] = states[v["volume_id"]]["State"]
        done = all(v["state"] == "in-use" for v in result["volumes"])
    else:
        done = all(v["state"] == "available" for v in result["volumes"])
    return job.model_copy(update={"status": "SUCCEEDED" if done else "RUNNING", "result": result})


def _failed(job: RestoreJob, result: dict[str, Any], message: str) -> RestoreJob:
    return job.model_copy(
        update={"status": "FAILED", "result": result, "error": JobError(code="restore_failed", message=message)}
    )
