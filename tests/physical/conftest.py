"""Fixtures for physical backups: clean moto state per test, regional clients, a fixed clock, captured metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from chalicelib.adapters.s3 import S3Store
from chalicelib.config import Config, parse_config
from chalicelib.physical.model import SnapshotServices
from chalicelib.physical.names import SLOT_TAG, parse_slot_tag
from devstack.aws import MotoServer

SOURCE = "us-east-1"
DEST = "eu-west-1"
BUCKET = "lifeboat-physical-test"
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


# Where each describe call names a snapshot's id and AWS's creation time.
_CREATED_FIELDS = {
    "DescribeDBSnapshots": ("DBSnapshots", "DBSnapshotIdentifier", "SnapshotCreateTime"),
    "DescribeDBClusterSnapshots": ("DBClusterSnapshots", "DBClusterSnapshotIdentifier", "SnapshotCreateTime"),
    "DescribeSnapshots": ("Snapshots", "SnapshotId", "StartTime"),
}


class Clients:
    """`client_for(service, region)`: one boto3 client per (service, region), like the runtime's cache.

    moto stamps a snapshot with the real time, while the tests' snapshots stand for slots on a fixed clock: the
    creation time each describe call returns is moved to the snapshot's slot tag plus a minute (as a scheduled run
    would create it), except for the ids in `real_created`, which keep moto's time (a snapshot made now with a
    forged slot tag), and those in `created_at`, which get the time given there."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}
        self.real_created: set[str] = set()
        self.created_at: dict[str, datetime] = {}

    def __call__(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._cache:
            client = boto3.client(service, region_name=region)
            for operation in _CREATED_FIELDS if service in ("rds", "ec2") else ():
                after_call(client, operation, self._created_at_slot(operation))
            self._cache[key] = client
        return self._cache[key]

    def _created_at_slot(self, operation: str) -> Callable[[dict[str, Any]], None]:
        items_key, id_key, time_key = _CREATED_FIELDS[operation]

        def edit(parsed: dict[str, Any]) -> None:
            for item in parsed.get(items_key, []):
                tags = {t["Key"]: t["Value"] for t in item.get("Tags", item.get("TagList", []))}
                slot = parse_slot_tag(tags.get(SLOT_TAG))
                if item.get(id_key) in self.created_at:
                    item[time_key] = self.created_at[item[id_key]]
                elif slot is not None and item.get(id_key) not in self.real_created and time_key in item:
                    item[time_key] = slot + timedelta(minutes=1)

        return edit


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Metrics:
    calls: list[tuple[str, float, str, str | None]] = field(default_factory=list)

    def __call__(self, name: str, value: float, unit: str, target: str | None = None) -> None:
        self.calls.append((name, value, unit, target))

    def named(self, name: str) -> list[tuple[str, float, str, str | None]]:
        return [c for c in self.calls if c[0] == name]


@dataclass
class Env:
    clients: Clients
    clock: Clock
    metrics: Metrics
    store: S3Store

    def config(
        self, targets: list[dict[str, Any]], *, extra_settings: dict[str, Any] | None = None, **policy: int
    ) -> Config:
        """A configuration of `targets`; `extra_settings` adds settings, `policy` sets the default retention policy."""
        settings: dict[str, Any] = {"bucket": BUCKET, **(extra_settings or {})}
        if policy:
            settings["retention_policies"] = {"default": policy}
        return parse_config({"settings": settings, "targets": targets}, "test configuration")

    def services(self, config: Config, **kw: Any) -> SnapshotServices:
        return SnapshotServices(
            config=config, client_for=self.clients, region=SOURCE, store=self.store, clock=self.clock, **kw
        )

    def rds(self, region: str = SOURCE) -> Any:
        return self.clients("rds", region)

    def ec2(self, region: str = SOURCE) -> Any:
        return self.clients("ec2", region)

    def kms_key(self, region: str) -> str:
        return str(self.clients("kms", region).create_key(Description=f"lifeboat {region}")["KeyMetadata"]["Arn"])

    def db_instance(self, name: str = "shop-db", *, retention_days: int = 0, kms_key: str | None = None) -> None:
        extra: dict[str, Any] = {"StorageEncrypted": True, "KmsKeyId": kms_key} if kms_key else {}
        self.rds().create_db_instance(
            DBInstanceIdentifier=name,
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            AllocatedStorage=20,
            MasterUsername="postgres",
            MasterUserPassword="not-a-real-password",
            BackupRetentionPeriod=retention_days,
            **extra,
        )

    def db_cluster(self, name: str = "shop-cluster", *, kms_key: str | None = None) -> None:
        extra: dict[str, Any] = {"StorageEncrypted": True, "KmsKeyId": kms_key} if kms_key else {}
        self.rds().create_db_cluster(
            DBClusterIdentifier=name,
            Engine="aurora-postgresql",
            MasterUsername="postgres",
            MasterUserPassword="not-a-real-password",
            **extra,
        )

    def ec2_instance(self, data_volumes: tuple[int, ...] = (100, 50)) -> tuple[str, str, list[str]]:
        """An instance from a registered AMI (none exist with MOTO_EC2_LOAD_DEFAULT_AMIS=false) with a boot
        volume and data volumes. Returns (instance id, boot volume id, data volume ids)."""
        ec2 = self.ec2()
        ami = ec2.register_image(Name="postgres-on-ec2")["ImageId"]  # moto: root device /dev/sda1
        devices = [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}]
        devices += [
            {"DeviceName": f"/dev/sd{chr(ord('f') + i)}", "Ebs": {"VolumeSize": size}}
            for i, size in enumerate(data_volumes)
        ]
        inst = ec2.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro", BlockDeviceMappings=devices
        )["Instances"][0]
        volumes = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]}
        boot = volumes.pop("/dev/sda1")
        return inst["InstanceId"], boot, [volumes[d] for d in sorted(volumes)]

    def rds_tags(self, identifier: str, region: str = SOURCE) -> dict[str, str]:
        snap = self.rds(region).describe_db_snapshots(DBSnapshotIdentifier=identifier)["DBSnapshots"][0]
        return {t["Key"]: t["Value"] for t in snap.get("TagList", [])}

    def managed_ebs(self, region: str = SOURCE) -> list[dict[str, Any]]:
        return list(
            self.ec2(region).describe_snapshots(
                OwnerIds=["self"], Filters=[{"Name": "tag:lifeboat:managed", "Values": ["true"]}]
            )["Snapshots"]
        )


def tags_of(item: dict[str, Any], key: str = "Tags") -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get(key, [])}


@pytest.fixture
def env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    moto_server.reset()
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    clients = Clients()
    clients("s3", SOURCE).create_bucket(Bucket=BUCKET)
    metrics = Metrics()
    monkeypatch.setattr("chalicelib.observability.record", metrics)
    yield Env(clients, Clock(), metrics, S3Store(clients("s3", SOURCE), BUCKET))


def after_call(client: Any, operation: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    """Edit the parsed response of one operation on one client, in-process (moto answers the real call).

    Returns a function that removes the hook.
    """
    event = f"after-call.{client.meta.service_model.service_id.hyphenize()}.{operation}"

    def handler(parsed: dict[str, Any], **_: Any) -> None:
        edit(parsed)

    client.meta.events.register(event, handler)
    return lambda: client.meta.events.unregister(event, handler)
