"""EBS snapshots against moto, and the pg_backup_start/stop bracket against a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError

from chalicelib.adapters.postgres import CredentialResolver
from chalicelib.errors import SnapshotError
from chalicelib.physical.catalog import list_snapshots
from chalicelib.physical.ebs import EBS
from chalicelib.physical.inventory import Inventory
from chalicelib.physical.start import start_snapshot
from chalicelib.physical.sweep import sweep
from devstack import pgbin
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer
from devstack.sample import BACKUP_PASSWORD, BACKUP_ROLE

from .conftest import BUCKET, DEST, NOW, SOURCE, Env, after_call, tags_of


def ebs_target(name: str = "vm", **physical: Any) -> dict[str, Any]:
    return {"name": name, "physical": {"method": "ebs", **physical}}


def test_instance_volumes_in_one_crash_consistent_request(env: Env) -> None:
    instance, boot, data = env.ec2_instance()
    svc = env.services(env.config([ebs_target(ec2_instance_id=instance)]))
    outcome = start_snapshot(svc, "vm", NOW)
    assert outcome.status == "STARTED" and len(outcome.resource_ids) == 2
    snaps = env.managed_ebs()
    assert sorted(s["VolumeId"] for s in snaps) == sorted(data)
    assert boot not in {s["VolumeId"] for s in snaps}  # excluded by default
    for snap in snaps:
        tags = tags_of(snap)
        assert tags["lifeboat:set"] == "snapshot:vm:20261129T030000Z"
        assert tags["lifeboat:slot"] == "2026-11-29T03:00:00Z" and tags["Name"] == "lifeboat-vm-20261129-030000"
        assert tags["retention"] == "yearly" and tags["lifeboat:target"] == "vm"
    [entry] = list_snapshots(svc, "vm")
    assert entry.size_gib == 150 and sorted(entry.resource_ids) == sorted(outcome.resource_ids)

    with_boot = env.services(env.config([ebs_target(ec2_instance_id=instance, exclude_boot_volume=False)]))
    assert len(start_snapshot(with_boot, "vm", NOW + timedelta(days=1)).resource_ids) == 3


def test_duplicate_delivery_is_found_by_slot_tag(env: Env) -> None:
    instance, _, _ = env.ec2_instance()
    svc = env.services(env.config([ebs_target(ec2_instance_id=instance)]))
    start_snapshot(svc, "vm", NOW)
    again = start_snapshot(svc, "vm", NOW)
    assert (again.status, again.reason) == ("SKIPPED", "already exists (available)")
    assert len(again.resource_ids) == 2 and len(env.managed_ebs()) == 2


def test_volume_list_shares_a_set_id_and_cleans_up_a_partial_set(env: Env) -> None:
    _, _, data = env.ec2_instance()
    svc = env.services(env.config([ebs_target(volume_ids=data)]))
    outcome = start_snapshot(svc, "vm", NOW)
    assert len(outcome.resource_ids) == 2
    assert {tags_of(s)["lifeboat:set"] for s in env.managed_ebs()} == {"snapshot:vm:20261129T030000Z"}

    broken = env.services(env.config([ebs_target(volume_ids=[data[0], "vol-0123456789abcdef0"])]))
    with pytest.raises(SnapshotError, match="vol-0123456789abcdef0"):
        start_snapshot(broken, "vm", NOW + timedelta(days=1))
    # the snapshot of the first volume was deleted again: no half set remains to block a retry
    assert {tags_of(s)["lifeboat:slot"] for s in env.managed_ebs()} == {"2026-11-29T03:00:00Z"}


def test_sweep_and_cross_region_copy_of_a_set(env: Env) -> None:
    instance, _, _ = env.ec2_instance()
    key = env.kms_key(DEST)
    svc = env.services(env.config([ebs_target(ec2_instance_id=instance, copy_to_region=DEST, copy_kms_key_id=key)]))
    start_snapshot(svc, "vm", NOW)
    pending = after_call(
        env.ec2(), "DescribeSnapshots", lambda parsed: parsed["Snapshots"][0].update(State="pending", Progress="40%")
    )
    report = sweep(svc)
    pending()
    assert report.pending == ["snapshot:vm:20261129T030000Z@us-east-1"] and report.copies_started == []

    report = sweep(svc)
    assert report.completed == ["snapshot:vm:20261129T030000Z@us-east-1"] and len(report.copies_started) == 2
    copies = env.managed_ebs(DEST)
    assert len(copies) == 2 and all(c["KmsKeyId"] == key and c["Encrypted"] for c in copies)
    sources = {s["SnapshotId"] for s in env.managed_ebs()}
    assert {tags_of(c)["lifeboat:copy-of"] for c in copies} == sources
    assert all(tags_of(s)["lifeboat:observed"] == "done" for s in env.managed_ebs())
    [source_set] = [s for s in _sets(svc, SOURCE) if s.copy_of is None]
    assert EBS.copy(svc, source_set, DEST, key) == []  # copying again finds the copies by tag
    assert len(env.managed_ebs(DEST)) == 2


def _sets(svc: Any, region: str) -> Any:
    return Inventory(svc).sets(EBS, region, "vm")


# --- app-consistent: pg_backup_start / pg_backup_stop -------------------------------------------------------------


@pytest.fixture(scope="module")
def pg14() -> Iterator[PostgresServer]:
    """PostgreSQL 14, for the pre-15 function names (pg_start_backup / pg_stop_backup)."""
    server = PostgresServer(pgbin.server_bin(14)).start()
    yield server
    server.destroy()


SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg-lifeboat'"


def secret(name: str, password: str) -> str:
    return str(
        boto3.client("secretsmanager").create_secret(
            Name=name, SecretString=json.dumps({"username": SUPERUSER, "password": password})
        )["ARN"]
    )


def app_consistent(
    env: Env, server: PostgresServer, instance: str, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD
) -> Any:
    target = ebs_target(ec2_instance_id=instance, app_consistent=True)
    target["connection"] = {
        "host": "127.0.0.1",
        "port": server.port,
        "database": "postgres",
        "user": user,
        "password_secret": secret(f"lifeboat/{user}", password),
        "sslmode": "verify-full",
        "sslrootcert": str(server.ca_file),
    }
    cfg = env.config([target])
    return env.services(cfg, credentials=CredentialResolver(secrets_client=env.clients("secretsmanager", SOURCE)))


@pytest.mark.parametrize("server_fixture", ["pg", "pg14"])
def test_app_consistent_bracket_stores_the_label(env: Env, server_fixture: str, request: pytest.FixtureRequest) -> None:
    server: PostgresServer = request.getfixturevalue(server_fixture)
    instance, _, _ = env.ec2_instance()
    svc = app_consistent(env, server, instance)
    seen_during: list[str] = []

    def during(parsed: dict[str, Any], **_: Any) -> None:  # runs while the bracket is open
        seen_during.append(server.psql(SESSIONS))

    env.ec2().meta.events.register("after-call.ec2.CreateSnapshots", during)
    outcome = start_snapshot(svc, "vm", NOW)
    key = "snapshots/vm/20261129T030000Z/backup_label.json"
    assert outcome.label_uri == f"s3://{BUCKET}/{key}"
    doc = json.loads(env.store.get_bytes(key))
    assert doc["function"] == ("pg_backup_start" if server.major >= 15 else "pg_start_backup")
    assert doc["server_version_num"] // 10000 == server.major
    assert "LABEL: pg-lifeboat snapshot:vm:20261129T030000Z" in doc["labelfile"]
    assert f"START WAL LOCATION: {doc['start_lsn']}" in doc["labelfile"]
    assert doc["stop_lsn"] and doc["backup_id"] == "snapshot:vm:20261129T030000Z"
    assert set(doc["snapshot_ids"]) == set(outcome.resource_ids)
    assert {tags_of(s)["lifeboat:backup-label"] for s in env.managed_ebs()} == {outcome.label_uri}
    assert seen_during == ["1"]  # the session that started the backup was still open while EC2 was called
    assert server.psql(SESSIONS) == "0"  # and is closed now
    # the session is gone afterwards: another backup can start and stop at once
    again = start_snapshot(svc, "vm", NOW + timedelta(hours=1))
    assert again.status == "STARTED"


def test_app_consistent_failure_leaves_nothing(env: Env, pg: PostgresServer) -> None:
    instance, _, _ = env.ec2_instance()
    svc = app_consistent(env, pg, instance)
    lost = ConnectionClosedError(endpoint_url="https://ec2.us-east-1.amazonaws.com/")  # EC2 acted, the reply is lost
    fail = after_call(env.ec2(), "CreateSnapshots", lambda parsed: (_ for _ in ()).throw(lost))
    with pytest.raises(SnapshotError, match="ConnectionClosedError: Connection was closed"):
        start_snapshot(svc, "vm", NOW)
    fail()
    assert env.managed_ebs() == []  # EC2 made them, the response was lost: found by tag and deleted
    assert env.store.head("snapshots/vm/20261129T030000Z/backup_label.json") is None
    assert start_snapshot(svc, "vm", NOW).status == "STARTED"  # a retry of the slot works


def test_app_consistent_needs_the_backup_privilege(env: Env, pg: PostgresServer) -> None:
    instance, _, _ = env.ec2_instance()
    svc = app_consistent(env, pg, instance, user=BACKUP_ROLE, password=BACKUP_PASSWORD)
    with pytest.raises(SnapshotError, match=r"permission denied.*GRANT EXECUTE ON FUNCTION pg_backup_start"):
        start_snapshot(svc, "vm", NOW)
    assert env.managed_ebs() == []


def test_label_pointer_survives_listing(env: Env, pg: PostgresServer) -> None:
    instance, _, _ = env.ec2_instance()
    svc = app_consistent(env, pg, instance)
    start_snapshot(svc, "vm", NOW)
    [entry] = list_snapshots(svc, "vm")
    assert entry.label_uri == f"s3://{BUCKET}/snapshots/vm/20261129T030000Z/backup_label.json"
    assert sweep(svc).completed == ["snapshot:vm:20261129T030000Z@us-east-1"]


def test_ebs_quota_error(env: Env) -> None:
    """EC2's snapshot quota, stubbed in-process for this one call (moto has no EBS snapshot limit)."""
    from types import SimpleNamespace

    instance, _, _ = env.ec2_instance()
    svc = env.services(env.config([ebs_target(ec2_instance_id=instance)]))

    def refuse(**_: Any) -> tuple[Any, dict[str, Any]]:
        return SimpleNamespace(status_code=400), {
            "Error": {"Code": "SnapshotLimitExceeded", "Message": "The maximum number of snapshots has been reached."},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    env.ec2().meta.events.register("before-call.ec2.CreateSnapshots", refuse)
    with pytest.raises(SnapshotError, match=r"EBS snapshot quota is used up \(by default 100,000 per region\)"):
        start_snapshot(svc, "vm", NOW)
