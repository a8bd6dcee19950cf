"""Snapshot and point-in-time restores through the API against moto: the right RDS/Aurora/EBS calls,
new resources only (409 on a taken identifier), the Aurora instance step and EBS attachment by the restore
sweeper (a GET never writes), the restorable window, and the target's allow-lists (physical.restore)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.physical.start import start_snapshot
from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack, write_config

REPO = Path(__file__).resolve().parents[2]
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)


def physical_target(name: str, physical: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "physical": physical}


def write_targets(aws: LocalStack, path: Path, volumes: list[str], attach_to: list[str] | None = None) -> Path:
    targets = [
        physical_target(
            "orders",
            {
                "method": "rds_instance",
                "db_instance_id": "orders-db",
                "restore": {"instance_classes": ["db.t3.small", "db.t3.medium"]},
            },
        ),
        physical_target("billing", {"method": "aurora_cluster", "db_cluster_id": "billing"}),
        physical_target(
            "selfhosted", {"method": "ebs", "volume_ids": volumes, "restore": {"attach_to_instances": attach_to or []}}
        ),
        physical_target("gone", {"method": "rds_instance", "db_instance_id": "deleted-db"}),
        physical_target("gone-cluster", {"method": "aurora_cluster", "db_cluster_id": "deleted-cluster"}),
    ]
    return write_config(path, aws.bucket, targets)


@pytest.fixture
def api(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    rds = boto3.client("rds")
    # The operator opts sources in to point-in-time restores (and to snapshots) with tags.
    opted_in = [{"Key": "lifeboat:pitr-source", "Value": "true"}, {"Key": "lifeboat:backup-source", "Value": "true"}]
    rds.create_db_instance(
        DBInstanceIdentifier="orders-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
        BackupRetentionPeriod=7,
        Tags=opted_in,
    )
    rds.create_db_cluster(
        DBClusterIdentifier="billing",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
        Tags=opted_in,
    )
    ec2 = boto3.client("ec2")
    volumes = [ec2.create_volume(AvailabilityZone="us-east-1a", Size=10)["VolumeId"] for _ in range(2)]
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_targets(aws, tmp_path / "c.json", volumes)))
    import app as lambda_app

    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        c.volumes = volumes
        yield c


def post(c: Any, body: Any, target: str | None = None) -> Any:
    target = target or body.get("target") or body["backup_id"].split(":")[1]
    return c.http.post(
        f"/targets/{target}/restores", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )


def work(c: Any) -> None:
    sqs = boto3.client("sqs")
    url = os.environ["LIFEBOAT_RESTORE_QUEUE_URL"]
    for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        c.lambda_.invoke("restore_worker", c.events.generate_sqs_event(message_bodies=[message["Body"]]))
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def status(c: Any, restore_id: str, target: str) -> dict[str, Any]:
    return json.loads(c.http.get(f"/targets/{target}/restores/{restore_id}").body)  # type: ignore[no-any-return]


def sweep(c: Any) -> list[str]:
    """One run of the restore sweeper (what advances snapshot restores)."""
    event = c.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event", detail={}, resources=[])
    advanced: list[str] = c.lambda_.invoke("restore_sweeper", event).payload["advanced"]
    return advanced


def test_rds_snapshot_restore_creates_a_new_instance(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "orders", SLOT)
    r = post(
        api,
        {
            "backup_id": "snapshot:orders:20261129T030000Z",
            "new_id": "lifeboat-orders-restored",
            "instance_class": "db.t3.small",
        },
    )
    assert r.status_code == 202, r.body
    assert r.headers["Location"] == f"/targets/orders/restores/{json.loads(r.body)['restore_id']}"
    work(api)
    done = status(api, json.loads(r.body)["restore_id"], "orders")
    assert done["status"] == "SUCCEEDED", done
    assert done["result"]["instance_id"] == "lifeboat-orders-restored" and done["result"]["endpoint"]
    instance = boto3.client("rds").describe_db_instances(DBInstanceIdentifier="lifeboat-orders-restored")[
        "DBInstances"
    ][0]
    assert instance["DBInstanceClass"] == "db.t3.small"
    tags = {t["Key"]: t["Value"] for t in instance["TagList"]}
    assert tags["lifeboat:restore-id"] == done["restore_id"]
    # RDS never reuses an identifier: the one just restored is a 409; a new id not named lifeboat-… is a 400 (the
    # restore functions' IAM policies create and tag nothing else, so the source's own id is refused as well).
    again = post(api, {"backup_id": "snapshot:orders:20261129T030000Z", "new_id": "lifeboat-orders-restored"})
    assert again.status_code == 409, again.body
    again = post(api, {"backup_id": "snapshot:orders:20261129T030000Z", "new_id": "orders-db"})
    assert again.status_code == 400 and "must start with 'lifeboat-'" in json.loads(again.body)["message"]


def test_unknown_snapshot_is_404_and_missing_new_id_is_400(api: Any) -> None:
    assert post(api, {"backup_id": "snapshot:orders:20200101T000000Z", "new_id": "lifeboat-x1"}).status_code == 404
    start_snapshot(wiring.snapshot_services(), "orders", SLOT)
    r = post(api, {"backup_id": "snapshot:orders:20261129T030000Z"})
    assert r.status_code == 400 and "new_id" in json.loads(r.body)["message"]
    r = post(api, {"backup_id": "snapshot:orders:20261129T030000Z", "new_id": "lifeboat-x2"}, target="billing")
    assert r.status_code == 400 and "/targets/orders/restores" in json.loads(r.body)["message"]


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("instance_class", "db.r5.24xlarge", "db.t3.small, db.t3.medium"),
        ("subnet_group", "default-vpc-public", "none (leave it out"),
        ("security_group_ids", ["sg-0123456789abcdef0"], "none (leave it out"),
        ("parameter_group", "logging-everything", "none (leave it out"),
    ],
)
def test_settings_outside_the_allow_list_are_403_with_the_allowed_values(
    api: Any, field: str, value: Any, allowed: str
) -> None:
    start_snapshot(wiring.snapshot_services(), "orders", SLOT)
    for body in (
        {"backup_id": "snapshot:orders:20261129T030000Z", "new_id": "lifeboat-orders-x", field: value},
        {"point_in_time": "latest", "new_id": "lifeboat-orders-y", field: value},
    ):
        r = post(api, body, target="orders")
        assert r.status_code == 403, r.body
        doc = json.loads(r.body)
        assert doc["error"] == "forbidden" and allowed in doc["message"] and "physical.restore" in doc["message"]
    assert (
        boto3.client("rds").describe_db_instances(
            Filters=[{"Name": "db-instance-id", "Values": ["lifeboat-orders-x", "lifeboat-orders-y"]}]
        )["DBInstances"]
        == []
    )


def test_aurora_restore_is_advanced_by_the_sweeper_never_by_a_get(api: Any) -> None:
    start_snapshot(wiring.snapshot_services(), "billing", SLOT)
    rds = wiring.regional_client("rds", "us-east-1")
    # The new cluster is still "creating" at the first look: no instance may be created yet.
    state = {"creating": True}

    def cluster_creating(parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if model.name == "DescribeDBClusters" and state["creating"]:
            for cluster in parsed.get("DBClusters", []):
                if cluster["DBClusterIdentifier"] == "lifeboat-billing-restored":
                    cluster["Status"] = "creating"

    def members() -> list[Any]:
        return list(
            boto3.client("rds").describe_db_instances(
                Filters=[{"Name": "db-cluster-id", "Values": ["lifeboat-billing-restored"]}]
            )["DBInstances"]
        )

    rds.meta.events.register("after-call.rds.DescribeDBClusters", cluster_creating)
    try:
        r = post(api, {"backup_id": "snapshot:billing:20261129T030000Z", "new_id": "lifeboat-billing-restored"})
        assert r.status_code == 202, r.body
        work(api)
        restore_id = json.loads(r.body)["restore_id"]
        first = status(api, restore_id, "billing")
        assert first["status"] == "RUNNING" and first["result"]["cluster_status"] == "creating"
        assert members() == []
        state["creating"] = False
        for _ in range(3):  # reading changes nothing, however often
            assert status(api, restore_id, "billing") == first
        assert members() == []
        assert sweep(api) == [restore_id]
        done = status(api, restore_id, "billing")
    finally:
        rds.meta.events.unregister("after-call.rds.DescribeDBClusters", cluster_creating)
    assert done["status"] == "SUCCEEDED", done
    # The cluster's instance is named after the restore (never an instance that happened to exist already).
    assert done["result"]["instance_id"] == f"lifeboat-billing-restored-{restore_id[2:10]}"
    instance = boto3.client("rds").describe_db_instances(DBInstanceIdentifier=done["result"]["instance_id"])[
        "DBInstances"
    ][0]
    assert instance["DBClusterIdentifier"] == "lifeboat-billing-restored"
    assert {"Key": "lifeboat:restore-id", "Value": restore_id} in instance["TagList"]
    assert instance["DBInstanceClass"] == "db.r6g.large"
    assert sweep(api) == []  # finished jobs are left alone


def test_point_in_time_restore_of_an_instance(api: Any) -> None:
    r = post(api, {"point_in_time": "latest", "new_id": "lifeboat-orders-pitr"}, target="orders")
    assert r.status_code == 202, r.body
    work(api)
    done = status(api, json.loads(r.body)["restore_id"], "orders")
    assert done["status"] == "SUCCEEDED", done
    assert done["target"] == "orders" and done["request"]["target"] == "orders"
    assert boto3.client("rds").describe_db_instances(DBInstanceIdentifier="lifeboat-orders-pitr")["DBInstances"]


def test_point_in_time_outside_the_window_is_400_with_the_window(api: Any) -> None:
    future = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = post(api, {"target": "orders", "point_in_time": future, "new_id": "lifeboat-orders-pitr2"})
    assert r.status_code == 400, r.body
    assert "outside the restorable window" in json.loads(r.body)["message"]


@pytest.mark.parametrize("target", ["gone", "gone-cluster"])
@pytest.mark.parametrize("when", ["latest", "2026-11-29T03:00:00Z"])
def test_point_in_time_of_a_source_that_is_gone_is_404_not_500(api: Any, target: str, when: str) -> None:
    r = post(api, {"point_in_time": when, "new_id": "lifeboat-from-nothing"}, target=target)
    assert r.status_code == 404, r.body
    message = json.loads(r.body)["message"]
    assert "does not exist" in message and "restore one of its snapshots instead" in message, message


def test_point_in_time_restore_of_aurora_creates_cluster_then_instance(api: Any) -> None:
    when = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = post(api, {"target": "billing", "point_in_time": when, "new_id": "lifeboat-billing-pitr"})
    if r.status_code == 400:  # moto may report no restorable window for a new cluster: use latest then
        r = post(api, {"target": "billing", "point_in_time": "latest", "new_id": "lifeboat-billing-pitr"})
    assert r.status_code == 202, r.body
    work(api)
    done = status(api, json.loads(r.body)["restore_id"], "billing")
    assert done["status"] == "SUCCEEDED", done
    rds = boto3.client("rds")
    assert rds.describe_db_clusters(DBClusterIdentifier="lifeboat-billing-pitr")["DBClusters"]
    instance = rds.describe_db_instances(DBInstanceIdentifier=done["result"]["instance_id"])["DBInstances"][0]
    assert instance["DBClusterIdentifier"] == "lifeboat-billing-pitr"


def ec2_instance() -> str:
    ec2 = boto3.client("ec2")
    image = ec2.register_image(
        Name="lifeboat-test",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=[{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}],
    )
    return str(
        ec2.run_instances(
            ImageId=image["ImageId"], MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1a"}
        )["Instances"][0]["InstanceId"]
    )


def test_ebs_restore_makes_tagged_volumes_and_the_sweeper_attaches_them(
    api: Any, aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_snapshot(wiring.snapshot_services(), "selfhosted", SLOT)
    ec2 = boto3.client("ec2")
    instance, unrelated = ec2_instance(), ec2_instance()
    path = write_targets(aws, tmp_path / "attach.json", api.volumes, attach_to=[instance])
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    backup_id = "snapshot:selfhosted:20261129T030000Z"
    assert post(api, {"backup_id": backup_id}).status_code == 400  # no AZ
    # An instance the operator did not list: refused at the request, nothing is created.
    r = post(api, {"backup_id": backup_id, "availability_zone": "us-east-1a", "attach_to_instance": unrelated})
    assert r.status_code == 403 and instance in json.loads(r.body)["message"], r.body
    assert ec2.describe_volumes(Filters=[{"Name": "tag-key", "Values": ["lifeboat:restore-id"]}])["Volumes"] == []
    r = post(api, {"backup_id": backup_id, "availability_zone": "us-east-1a", "attach_to_instance": instance})
    assert r.status_code == 202, r.body
    work(api)
    restore_id = json.loads(r.body)["restore_id"]
    created = status(api, restore_id, "selfhosted")
    assert created["status"] == "RUNNING" and not any(v.get("device") for v in created["result"]["volumes"])
    assert status(api, restore_id, "selfhosted") == created  # a GET attaches nothing
    assert sweep(api) == [restore_id]
    done = status(api, restore_id, "selfhosted")
    assert done["status"] == "SUCCEEDED", done
    volumes = done["result"]["volumes"]
    assert len(volumes) == 2 and {v["device"] for v in volumes} == {"/dev/sdf", "/dev/sdg"}
    described = ec2.describe_volumes(VolumeIds=[v["volume_id"] for v in volumes])["Volumes"]
    assert all(v["State"] == "in-use" and v["Attachments"][0]["InstanceId"] == instance for v in described)
    assert all({"Key": "lifeboat:restore-id", "Value": done["restore_id"]} in v["Tags"] for v in described)
