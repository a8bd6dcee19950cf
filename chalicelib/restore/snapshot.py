"""Snapshot and point-in-time restores (RDS, Aurora, EBS): start the AWS operation, observe it later.

Every restore creates new resources (RDS never reuses an identifier; EBS gets new volumes), tagged with
the restore id. `check` refuses at request time what would fail (unknown snapshot, identifier in use,
a time outside the restorable window); `start` makes the first call; `advance` looks at the resources
and takes the next step (an Aurora cluster gets its first instance once it is available, EBS volumes
are attached once available), until the job is SUCCEEDED or FAILED.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chalicelib.adapters.aws_errors import error_code
from chalicelib.errors import BadRequestError, ConflictError, NotFoundError, RestoreError
from chalicelib.logical.catalog import BackupId
from chalicelib.physical.catalog import SnapshotEntry, list_snapshots
from chalicelib.physical.model import SnapshotServices, physical_target
from chalicelib.restore.model import JobError, RestoreJob

if TYPE_CHECKING:
    from chalicelib.config import Physical
    from chalicelib.restore.requests import PointInTimeRestoreRequest, SnapshotRestoreRequest

DEFAULT_AURORA_INSTANCE_CLASS = "db.r6g.large"
EBS_DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"]


def _services(svc: Any) -> SnapshotServices:
    if svc.snapshots is None:
        raise BadRequestError("no target has a physical section: snapshot restores are not configured")
    snapshots: SnapshotServices = svc.snapshots
    return snapshots


def _tags(job_or_id: str, target: str) -> list[dict[str, str]]:
    return [{"Key": "lifeboat:restore-id", "Value": job_or_id}, {"Key": "lifeboat:target", "Value": target}]


def find_snapshot(svc: Any, backup_id: str, region: str | None = None) -> SnapshotEntry:
    bid = BackupId.parse(backup_id)
    _, physical = physical_target(svc.config, bid.target)
    snapshots = _services(svc)
    want_region = region or snapshots.source_region(physical)
    for entry in list_snapshots(snapshots, bid.target):
        if entry.backup_id == backup_id and entry.region == want_region:
            if entry.status != "SUCCEEDED":
                raise ConflictError(f"snapshot {backup_id} in {want_region} is {entry.status}: wait until it is"
                                    " complete")
            return entry
    raise NotFoundError(f"no snapshot {backup_id} in {want_region}")


def _exists(client: Any, kind: str, identifier: str) -> bool:
    try:
        if kind == "cluster":
            client.describe_db_clusters(DBClusterIdentifier=identifier)
        else:
            client.describe_db_instances(DBInstanceIdentifier=identifier)
    except Exception as exc:
        if error_code(exc) in ("DBInstanceNotFound", "DBInstanceNotFoundFault", "DBClusterNotFoundFault",
                               "DBClusterNotFound"):
            return False
        raise RestoreError(f"cannot check whether {identifier} exists: {exc}") from exc
    return True


def restorable_window(svc: Any, physical: Physical) -> tuple[datetime | None, datetime | None]:
    """(earliest, latest) restorable time of an RDS instance or Aurora cluster."""
    rds = _services(svc).client_for("rds", _services(svc).source_region(physical))
    if physical.method == "aurora_cluster":
        cluster = rds.describe_db_clusters(DBClusterIdentifier=physical.db_cluster_id)["DBClusters"][0]
        return cluster.get("EarliestRestorableTime"), cluster.get("LatestRestorableTime")
    instance = rds.describe_db_instances(DBInstanceIdentifier=physical.db_instance_id)["DBInstances"][0]
    earliest = None
    try:
        backups = rds.describe_db_instance_automated_backups(DBInstanceIdentifier=physical.db_instance_id)
        windows = [b.get("RestoreWindow", {}).get("EarliestTime")
                   for b in backups.get("DBInstanceAutomatedBackups", [])]
        earliest = min((w for w in windows if w), default=None)
    except Exception:  # noqa: S110 - older APIs/emulators: the latest time still bounds the request
        pass
    return earliest, instance.get("LatestRestorableTime")


def check(svc: Any, req: SnapshotRestoreRequest | PointInTimeRestoreRequest) -> str:
    """Refuse now what would fail later; returns the target name."""
    from chalicelib.restore.requests import SnapshotRestoreRequest

    if isinstance(req, SnapshotRestoreRequest):
        bid = BackupId.parse(req.backup_id)
        _, physical = physical_target(svc.config, bid.target)
        entry = find_snapshot(svc, req.backup_id, req.region)
        if physical.method == "ebs":
            if not req.availability_zone:
                raise BadRequestError("an EBS restore needs availability_zone for the new volumes")
            if len(entry.resource_ids) > len(EBS_DEVICES) and req.attach_to_instance:
                raise BadRequestError("too many volumes to attach automatically")
            return bid.target
        if not req.new_id:
            raise BadRequestError("a snapshot restore needs new_id, the identifier of the new instance or cluster")
        rds = _services(svc).client_for("rds", entry.region)
        kind = "cluster" if physical.method == "aurora_cluster" else "instance"
        if _exists(rds, kind, req.new_id):
            raise ConflictError(f"a DB {kind} {req.new_id!r} already exists in {entry.region}: choose a new_id")
        return bid.target
    _, physical = physical_target(svc.config, req.target)
    snapshots = _services(svc)
    rds = snapshots.client_for("rds", snapshots.source_region(physical))
    kind = "cluster" if physical.method == "aurora_cluster" else "instance"
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


def _common(req: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if req.subnet_group:
        extra["DBSubnetGroupName"] = req.subnet_group
    if req.security_group_ids:
        extra["VpcSecurityGroupIds"] = list(req.security_group_ids)
    return extra


def start(svc: Any, job: RestoreJob) -> RestoreJob:
    """The first AWS call of a snapshot or point-in-time restore; the job stays RUNNING."""
    from chalicelib.restore.requests import PointInTimeRestoreRequest, SnapshotRestoreRequest

    snapshots = _services(svc)
    _, physical = physical_target(svc.config, job.target)
    tags = _tags(job.restore_id, job.target)
    try:
        if job.kind == "snapshot":
            req = SnapshotRestoreRequest.model_validate(job.request)
            entry = find_snapshot(svc, req.backup_id, req.region)
            region = entry.region
            if physical.method == "ebs":
                return _start_ebs(snapshots, job, req, entry, tags)
            rds = snapshots.client_for("rds", region)
            if physical.method == "aurora_cluster":
                source = rds.describe_db_cluster_snapshots(DBClusterSnapshotIdentifier=entry.resource_ids[0])
                engine = source["DBClusterSnapshots"][0]["Engine"]
                extra = _common(req)
                if req.parameter_group:
                    extra["DBClusterParameterGroupName"] = req.parameter_group
                rds.restore_db_cluster_from_snapshot(DBClusterIdentifier=req.new_id,
                                                     SnapshotIdentifier=entry.resource_ids[0], Engine=engine,
                                                     Tags=tags, **extra)
                result = {"region": region, "cluster_id": req.new_id, "engine": engine,
                          "instance_class": req.instance_class or DEFAULT_AURORA_INSTANCE_CLASS}
            else:
                extra = _common(req)
                if req.instance_class:
                    extra["DBInstanceClass"] = req.instance_class
                if req.parameter_group:
                    extra["DBParameterGroupName"] = req.parameter_group
                rds.restore_db_instance_from_db_snapshot(DBInstanceIdentifier=req.new_id,
                                                         DBSnapshotIdentifier=entry.resource_ids[0], Tags=tags,
                                                         **extra)
                result = {"region": region, "instance_id": req.new_id}
        else:
            req_pit = PointInTimeRestoreRequest.model_validate(job.request)
            region = snapshots.source_region(physical)
            rds = snapshots.client_for("rds", region)
            when: dict[str, Any] = ({"UseLatestRestorableTime": True} if req_pit.point_in_time == "latest"
                                    else {})
            extra = _common(req_pit)
            if physical.method == "aurora_cluster":
                if req_pit.point_in_time != "latest":
                    when = {"RestoreToTime": req_pit.point_in_time}
                if req_pit.parameter_group:
                    extra["DBClusterParameterGroupName"] = req_pit.parameter_group
                rds.restore_db_cluster_to_point_in_time(DBClusterIdentifier=req_pit.new_id,
                                                        SourceDBClusterIdentifier=physical.db_cluster_id,
                                                        Tags=tags, **when, **extra)
                cluster = rds.describe_db_clusters(DBClusterIdentifier=physical.db_cluster_id)["DBClusters"][0]
                result = {"region": region, "cluster_id": req_pit.new_id, "engine": cluster["Engine"],
                          "instance_class": req_pit.instance_class or DEFAULT_AURORA_INSTANCE_CLASS}
            else:
                if req_pit.point_in_time != "latest":
                    when = {"RestoreTime": req_pit.point_in_time}
                if req_pit.instance_class:
                    extra["DBInstanceClass"] = req_pit.instance_class
                if req_pit.parameter_group:
                    extra["DBParameterGroupName"] = req_pit.parameter_group
                rds.restore_db_instance_to_point_in_time(SourceDBInstanceIdentifier=physical.db_instance_id,
                                                         TargetDBInstanceIdentifier=req_pit.new_id, Tags=tags,
                                                         **when, **extra)
                result = {"region": region, "instance_id": req_pit.new_id}
    except (BadRequestError, NotFoundError, ConflictError):
        raise
    except Exception as exc:
        code = error_code(exc)
        if code in ("DBInstanceAlreadyExists", "DBInstanceAlreadyExistsFault", "DBClusterAlreadyExistsFault"):
            raise ConflictError(f"the new identifier is already in use: {exc}") from None
        raise RestoreError(f"AWS refused the restore: {code or type(exc).__name__}: {exc}") from None
    return advance(svc, job.model_copy(update={"result": result}))


def _start_ebs(snapshots: SnapshotServices, job: RestoreJob, req: Any, entry: SnapshotEntry,
               tags: list[dict[str, str]]) -> RestoreJob:
    ec2 = snapshots.client_for("ec2", entry.region)
    volumes = []
    for snapshot_id in entry.resource_ids:
        volume = ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone=req.availability_zone,
                                   TagSpecifications=[{"ResourceType": "volume", "Tags": tags}])
        volumes.append({"snapshot_id": snapshot_id, "volume_id": volume["VolumeId"]})
    result = {"region": entry.region, "volumes": volumes, "attach_to_instance": req.attach_to_instance}
    return job.model_copy(update={"result": result})


def advance(svc: Any, job: RestoreJob) -> RestoreJob:
    """Look at the new resources and take the next step; SUCCEEDED when they are usable."""
    if job.status != "RUNNING" or job.kind == "logical":
        return job
    snapshots = _services(svc)
    result = dict(job.result)
    region = result.get("region") or snapshots.region
    try:
        if "volumes" in result:
            return _advance_ebs(snapshots.client_for("ec2", region), job, result)
        rds = snapshots.client_for("rds", region)
        if "cluster_id" in result:
            cluster = rds.describe_db_clusters(DBClusterIdentifier=result["cluster_id"])["DBClusters"][0]
            result["cluster_status"] = cluster["Status"]
            result["endpoint"] = cluster.get("Endpoint")
            if cluster["Status"] in ("failed", "inaccessible-encryption-credentials", "incompatible-restore"):
                return _failed(job, result, f"cluster {result['cluster_id']} is {cluster['Status']}")
            if cluster["Status"] != "available":
                return job.model_copy(update={"result": result})
            instance_id = result.setdefault("instance_id", f"{result['cluster_id']}-1")
            # The restore is not done before the cluster has an instance to connect to.
            if not _exists(rds, "instance", instance_id):
                rds.create_db_instance(DBInstanceIdentifier=instance_id, DBClusterIdentifier=result["cluster_id"],
                                       Engine=result["engine"], DBInstanceClass=result["instance_class"],
                                       Tags=_tags(job.restore_id, job.target))
        instance = rds.describe_db_instances(DBInstanceIdentifier=result["instance_id"])["DBInstances"][0]
        result["instance_status"] = instance["DBInstanceStatus"]
        if "cluster_id" not in result:
            endpoint = instance.get("Endpoint") or {}
            result["endpoint"] = endpoint.get("Address")
            result["port"] = endpoint.get("Port")
        if instance["DBInstanceStatus"] in ("failed", "incompatible-restore", "incompatible-parameters",
                                            "storage-full", "inaccessible-encryption-credentials"):
            return _failed(job, result, f"instance {result['instance_id']} is {instance['DBInstanceStatus']}")
        if instance["DBInstanceStatus"] == "available":
            return job.model_copy(update={"status": "SUCCEEDED", "result": result})
        return job.model_copy(update={"result": result})
    except Exception as exc:
        if isinstance(exc, RestoreError):
            raise
        return job.model_copy(update={"result": result, "progress": {"last_check_error": str(exc)[:300]}})


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
    return job.model_copy(update={"status": "FAILED", "result": result,
                                  "error": JobError(code="restore_failed", message=message)})
