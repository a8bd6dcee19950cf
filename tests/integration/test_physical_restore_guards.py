"""Physical restores do what the request and the configuration say, to the restore's own resources only
(security review 12, against moto through the API, the restore worker and the restore sweeper):

- a subnet group, security groups or availability zone left out is the first one the target allows, and a new
  instance is never publicly accessible (an allow-list is not bypassed by leaving the field out);
- a point-in-time restore needs a source the operator opted in (tag lifeboat:pitr-source=true): 409 otherwise;
- an Aurora restore's instance is named after the restore and must be a tagged member of the restored cluster:
  an instance that merely has the expected name fails the job, it is never reported as the restore's;
- the worker and the sweeper act on the job's request and the current configuration, not on its record: a
  forged or inconsistent job fails without any AWS write, a cluster or volume that does not carry the
  restore's tag is left alone, and a request the configuration no longer allows fails at the worker;
- a second EBS restore attached to the same instance gets free device names; a restore that cannot advance
  fails after a bounded time instead of holding a quota slot for ever.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib import wiring
from chalicelib.physical.start import start_snapshot
from chalicelib.restore import snapshot as snapshot_restores
from chalicelib.restore.model import RestoreJob
from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack, write_config
from tests.integration.test_physical_restores import ec2_instance, post, status, sweep, work

REPO = Path(__file__).resolve().parents[2]
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
OPTED_IN = [{"Key": "lifeboat:pitr-source", "Value": "true"}, {"Key": "lifeboat:backup-source", "Value": "true"}]
ORDERS_SNAPSHOT = "snapshot:orders:20261129T030000Z"
BILLING_SNAPSHOT = "snapshot:billing:20261129T030000Z"
DISKS_SNAPSHOT = "snapshot:disks:20261129T030000Z"


def targets(volumes: list[str], instance: str, orders_classes: list[str]) -> list[dict[str, Any]]:
    private = {"subnet_groups": ["lifeboat-private"], "security_group_ids": ["sg-0private"]}
    return [
        {
            "name": "orders",
            "physical": {
                "method": "rds_instance",
                "db_instance_id": "orders-db",
                "restore": {**private, "instance_classes": orders_classes},
            },
        },
        {"name": "billing", "physical": {"method": "aurora_cluster", "db_cluster_id": "billing"}},
        {"name": "ledger", "physical": {"method": "rds_instance", "db_instance_id": "ledger-db"}},
        {
            "name": "disks",
            "physical": {
                "method": "ebs",
                "volume_ids": volumes,
                "restore": {"attach_to_instances": [instance], "availability_zones": ["us-east-1a", "us-east-1b"]},
            },
        },
    ]


@pytest.fixture
def api(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    rds, ec2 = boto3.client("rds"), boto3.client("ec2")
    for name, tags in (("orders-db", OPTED_IN), ("ledger-db", [])):  # ledger-db: never opted in
        rds.create_db_instance(
            DBInstanceIdentifier=name,
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            AllocatedStorage=20,
            MasterUsername="admin",
            MasterUserPassword="not-used-here-1",
            BackupRetentionPeriod=7,
            Tags=tags,
        )
    rds.create_db_cluster(
        DBClusterIdentifier="billing",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
        Tags=OPTED_IN,
    )
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"us-east-1{z}")["Subnet"]["SubnetId"]
        for i, z in enumerate("ab")
    ]
    rds.create_db_subnet_group(
        DBSubnetGroupName="lifeboat-private", DBSubnetGroupDescription="restores", SubnetIds=subnets
    )
    volumes = [ec2.create_volume(AvailabilityZone="us-east-1a", Size=10)["VolumeId"]]
    instance = ec2_instance()
    ec2.create_tags(Resources=[instance], Tags=[{"Key": "lifeboat:restore-target", "Value": "true"}])

    def configure(orders_classes: list[str]) -> None:
        path = write_config(
            tmp_path / f"c{len(orders_classes)}.json", aws.bucket, targets(volumes, instance, orders_classes)
        )
        monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))

    configure(["db.t3.small"])
    import app as lambda_app

    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        c.instance, c.configure = instance, configure
        yield c


def captured(service: str, operations: list[str]) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """Record the parameters of the worker's and the sweeper's calls (their cached us-east-1 client)."""
    client = wiring.regional_client(service, "us-east-1")
    seen: list[tuple[str, dict[str, Any]]] = []

    def capture(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((model.name, dict(params)))

    for op in operations:
        client.meta.events.register(f"provide-client-params.{service}.{op}", capture)

    def stop() -> None:
        for op in operations:
            client.meta.events.unregister(f"provide-client-params.{service}.{op}", capture)

    return seen, stop


def restore_id(response: Any) -> str:
    assert response.status_code == 202, response.body
    return str(json.loads(response.body)["restore_id"])


# --- D (and A: PubliclyAccessible) ---------------------------------------------------------------------------
def test_left_out_network_settings_are_the_first_allowed_and_nothing_is_public(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "orders", SLOT)
    start_snapshot(wiring.snapshot_services(), "billing", SLOT)
    ops = ["RestoreDBInstanceFromDBSnapshot", "RestoreDBInstanceToPointInTime", "CreateDBInstance"]
    seen, stop = captured("rds", ops)
    try:
        ids = [
            restore_id(post(api, {"backup_id": ORDERS_SNAPSHOT, "new_id": "lifeboat-orders-copy"})),
            restore_id(post(api, {"point_in_time": "latest", "new_id": "lifeboat-orders-pit"}, target="orders")),
            restore_id(post(api, {"backup_id": BILLING_SNAPSHOT, "new_id": "lifeboat-billing-copy"})),
        ]
        work(api)
    finally:
        stop()
    assert [status(api, rid, t)["status"] for rid, t in zip(ids, ["orders", "orders", "billing"], strict=True)] == [
        "SUCCEEDED"
    ] * 3
    calls = dict(seen)
    assert set(calls) == set(ops), seen
    for name in ("RestoreDBInstanceFromDBSnapshot", "RestoreDBInstanceToPointInTime"):
        assert calls[name]["DBSubnetGroupName"] == "lifeboat-private", calls[name]
        assert calls[name]["VpcSecurityGroupIds"] == ["sg-0private"], calls[name]
    for name in ops:
        assert calls[name]["PubliclyAccessible"] is False, calls[name]


def test_an_ebs_restore_goes_to_an_allowed_zone_the_first_by_default(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "disks", SLOT)
    r = post(api, {"backup_id": DISKS_SNAPSHOT, "availability_zone": "us-east-1c"})
    assert r.status_code == 403 and "us-east-1a, us-east-1b" in json.loads(r.body)["message"], r.body
    rid = restore_id(post(api, {"backup_id": DISKS_SNAPSHOT}))
    work(api)
    volumes = status(api, rid, "disks")["result"]["volumes"]
    described = boto3.client("ec2").describe_volumes(VolumeIds=[v["volume_id"] for v in volumes])["Volumes"]
    assert {v["AvailabilityZone"] for v in described} == {"us-east-1a"}


# --- A: point-in-time sources are opted in ---------------------------------------------------------------------
def test_point_in_time_of_a_source_not_opted_in_is_409_and_creates_nothing(api: Any) -> None:
    r = post(api, {"point_in_time": "latest", "new_id": "lifeboat-ledger-pit"}, target="ledger")
    assert r.status_code == 409, r.body
    message = json.loads(r.body)["message"]
    assert "ledger-db" in message and "lifeboat:pitr-source=true" in message, message
    # opted in when asked, opted out before the worker ran: the worker checks again and creates nothing
    rid = restore_id(post(api, {"point_in_time": "latest", "new_id": "lifeboat-orders-late"}, target="orders"))
    rds = boto3.client("rds")
    arn = rds.describe_db_instances(DBInstanceIdentifier="orders-db")["DBInstances"][0]["DBInstanceArn"]
    rds.remove_tags_from_resource(ResourceName=arn, TagKeys=["lifeboat:pitr-source"])
    work(api)
    done = status(api, rid, "orders")
    assert done["status"] == "FAILED" and "lifeboat:pitr-source=true" in done["error"]["message"], done
    assert (
        rds.describe_db_instances(Filters=[{"Name": "db-instance-id", "Values": ["lifeboat-orders-late"]}])[
            "DBInstances"
        ]
        == []
    )


def test_new_ids_are_lifeboat_names_short_enough_for_the_aurora_instance(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "billing", SLOT)
    for new_id, expected in (
        ("billing-copy", "must start with 'lifeboat-'"),
        ("lifeboat-" + "x" * 46, "new_id"),
        ("lifeboat-drill-0123456789abcdef", "reserved for restore drills"),  # the sweeper deletes those
        ("Lifeboat-Drill-x", "reserved for restore drills"),
    ):
        r = post(api, {"backup_id": BILLING_SNAPSHOT, "new_id": new_id})
        assert r.status_code == 400 and expected in json.loads(r.body)["message"], r.body


# --- C: the Aurora instance is the restore's own ---------------------------------------------------------------
def standalone_instance(name: str) -> None:
    boto3.client("rds").create_db_instance(
        DBInstanceIdentifier=name,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
    )


def test_an_aurora_restore_never_reports_someone_elses_instance(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "billing", SLOT)
    standalone_instance("lifeboat-reporting-1")  # what the old `<new_id>-1` took for the restore's instance
    rid = restore_id(post(api, {"backup_id": BILLING_SNAPSHOT, "new_id": "lifeboat-reporting"}))
    work(api)
    done = status(api, rid, "billing")
    assert done["status"] == "SUCCEEDED" and done["result"]["instance_id"] == f"lifeboat-reporting-{rid[2:10]}"
    members = boto3.client("rds").describe_db_clusters(DBClusterIdentifier="lifeboat-reporting")["DBClusters"][0]
    assert [m["DBInstanceIdentifier"] for m in members["DBClusterMembers"]] == [done["result"]["instance_id"]]
    # An instance that already has the restore's instance name, but is not in its cluster: the job fails.
    rid = restore_id(post(api, {"backup_id": BILLING_SNAPSHOT, "new_id": "lifeboat-clash"}))
    standalone_instance(f"lifeboat-clash-{rid[2:10]}")
    work(api)
    done = status(api, rid, "billing")
    assert done["status"] == "FAILED", done
    assert (
        "does not carry this restore's tag" in done["error"]["message"]
        and "nothing was done" in done["error"]["message"]
    ), done
    clash = boto3.client("rds").describe_db_clusters(DBClusterIdentifier="lifeboat-clash")["DBClusters"][0]
    assert not clash.get("DBClusterMembers")


# --- B: the record is not proof --------------------------------------------------------------------------------
def forge(target: str, request: dict[str, Any], result: dict[str, Any], kind: str = "snapshot") -> str:
    """A RUNNING job written straight into the jobs table, as any role with PutItem on it could."""
    now = datetime.now(UTC)
    jobs = wiring.api_services().jobs
    job = RestoreJob(
        restore_id="r-" + secrets.token_hex(8),
        kind=kind,  # type: ignore[arg-type]
        target=target,
        request=request,
        created_at=now,
        updated_at=now,
    )
    jobs.create(job)
    running = jobs.start(job, timedelta(minutes=15))
    assert running is not None
    jobs.save(running.model_copy(update={"result": result}))
    return job.restore_id


def test_the_sweeper_refuses_forged_and_inconsistent_jobs(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "billing", SLOT)
    rds = boto3.client("rds")
    rds.create_db_cluster(
        DBClusterIdentifier="lifeboat-stolen",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
        Tags=[{"Key": "lifeboat:restore-id", "Value": "r-0123456789abcdef"}],  # another restore's
    )
    big = {"region": "us-east-1", "engine": "aurora-postgresql", "instance_class": "db.r6g.16xlarge"}
    forged = [
        # the review's PoC: no request at all, a production cluster in the result
        forge("billing", {}, {**big, "cluster_id": "billing", "instance_id": "billing-attacker"}),
        # a valid request, but a result that names another cluster and class
        forge(
            "billing",
            {"backup_id": BILLING_SNAPSHOT, "new_id": "lifeboat-mine"},
            {**big, "cluster_id": "billing", "instance_id": "billing-attacker"},
        ),
        # consistent with its request, but the cluster is not this restore's
        forge("billing", {"backup_id": BILLING_SNAPSHOT, "new_id": "lifeboat-stolen"}, {"region": "us-east-1"}),
    ]
    expected = ["not a snapshot restore", "stored result disagrees", "does not carry this restore's tag"]
    assert sorted(sweep(api)) == sorted(forged)
    for rid, why in zip(forged, expected, strict=True):
        done = status(api, rid, "billing")
        assert done["status"] == "FAILED" and why in done["error"]["message"], done
    created = rds.describe_db_instances(Filters=[{"Name": "db-cluster-id", "Values": ["billing", "lifeboat-stolen"]}])
    assert created["DBInstances"] == [], "nothing was added to a cluster"


def test_the_sweeper_attaches_only_the_restores_own_volumes(api: Any) -> None:
    ec2 = boto3.client("ec2")
    production = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10)["VolumeId"]
    request = {"backup_id": DISKS_SNAPSHOT, "availability_zone": "us-east-1a", "attach_to_instance": api.instance}
    rid = forge("disks", request, {"region": "us-east-1", "volumes": [{"volume_id": production}]})
    assert sweep(api) == [rid]
    done = status(api, rid, "disks")
    assert done["status"] == "FAILED" and "does not carry this restore's tag" in done["error"]["message"], done
    assert ec2.describe_volumes(VolumeIds=[production])["Volumes"][0]["State"] == "available"


def test_the_worker_checks_the_allow_list_again_before_any_aws_write(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "orders", SLOT)
    body = {"backup_id": ORDERS_SNAPSHOT, "new_id": "lifeboat-orders-big", "instance_class": "db.t3.small"}
    rid = restore_id(post(api, body))
    api.configure([])  # the operator narrows the allow-list before the worker runs
    work(api)
    done = status(api, rid, "orders")
    assert done["status"] == "FAILED" and done["error"]["code"] == "forbidden", done
    assert (
        boto3.client("rds").describe_db_instances(
            Filters=[{"Name": "db-instance-id", "Values": ["lifeboat-orders-big"]}]
        )["DBInstances"]
        == []
    )


# --- E: device names, and restores that cannot advance ----------------------------------------------------------
def real_ec2_attachment_points(ec2: Any, fail_always: bool = False) -> Any:
    """What EC2 does and moto does not: one volume per attachment point (or, with fail_always, every attach fails)."""
    used: dict[str, set[str]] = {}

    def rule(params: dict[str, Any], **_: Any) -> None:
        devices = used.setdefault(params["InstanceId"], set())
        if fail_always or params["Device"] in devices:
            message = f"Attachment point {params['Device']} is already in use"
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message": message}}, "AttachVolume")
        devices.add(params["Device"])

    ec2.meta.events.register("provide-client-params.ec2.AttachVolume", rule)
    return lambda: ec2.meta.events.unregister("provide-client-params.ec2.AttachVolume", rule)


def test_a_second_ebs_restore_to_the_same_instance_gets_free_device_names(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "disks", SLOT)
    body = {"backup_id": DISKS_SNAPSHOT, "availability_zone": "us-east-1a", "attach_to_instance": api.instance}
    ids = []
    for _ in range(2):
        ids.append(restore_id(post(api, body)))
        work(api)
    stop = real_ec2_attachment_points(wiring.regional_client("ec2", "us-east-1"))
    try:
        sweep(api)
    finally:
        stop()
    done = [status(api, rid, "disks") for rid in ids]
    assert [d["status"] for d in done] == ["SUCCEEDED", "SUCCEEDED"], done
    assert sorted(v["device"] for d in done for v in d["result"]["volumes"]) == ["/dev/sdf", "/dev/sdg"]


@pytest.mark.parametrize("limit", ["deadline", "sweeps"])
def test_a_restore_that_cannot_advance_fails_and_frees_its_quota_slot(
    api: Any, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    start_snapshot(wiring.snapshot_services(), "disks", SLOT)
    body = {"backup_id": DISKS_SNAPSHOT, "availability_zone": "us-east-1a", "attach_to_instance": api.instance}
    rid = restore_id(post(api, body))
    work(api)
    stop = real_ec2_attachment_points(wiring.regional_client("ec2", "us-east-1"), fail_always=True)
    try:
        assert sweep(api) == [rid]
        stuck = status(api, rid, "disks")
        assert stuck["status"] == "RUNNING" and stuck["progress"]["check_errors"] == 1, stuck
        assert "already in use" in stuck["progress"]["last_check_error"]
        if limit == "deadline":
            monkeypatch.setattr(snapshot_restores, "STUCK_AFTER", timedelta(0))
        else:
            monkeypatch.setattr(snapshot_restores, "MAX_CHECK_ERRORS", 3)
            assert sweep(api) == [rid] and status(api, rid, "disks")["status"] == "RUNNING"
        assert sweep(api) == [rid]
    finally:
        stop()
    done = status(api, rid, "disks")
    assert done["status"] == "FAILED" and done["error"]["code"] == "restore_stuck", done
    assert "could not advance" in done["error"]["message"] and "already in use" in done["error"]["message"]
    assert rid not in [j.restore_id for j in wiring.api_services().jobs.active()]
    assert sweep(api) == []
