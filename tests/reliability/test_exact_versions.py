"""Restores and `lifeboat verify` read the exact S3 version each manifest recorded (the version Object Lock protects),
so someone with PutObject on the bucket (the backup worker's credentials, a leaked key) cannot substitute a backup's
data by overwriting its keys: the new current versions are simply not what is read. On moto with a bucket set up as
the stack makes it (versioning, Object Lock in GOVERNANCE mode, SSE-KMS with the stack's key, signed manifests).

A manifest without versions (written before they were recorded, or in an unversioned bucket) reads the current
objects: tests/reliability/test_signed_manifests.py and tests/integration/test_restore_api.py overwrite objects of an
unversioned bucket and see them refused.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from chalicelib import cli, wiring
from chalicelib.errors import StorageError
from chalicelib.logical.catalog import Manifest
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import RestoreOptions, restore_logical
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from tests.reliability.conftest import ConfigWriter
from tests.reliability.test_immutable_backups import Clock

BUCKET = "lifeboat-versioned-backups"
SLOT = datetime(2026, 11, 27, 3, tzinfo=UTC)
SIGNING_ALIAS = "alias/pg-lifeboat-test-manifests"
EVIL_GLOBALS = b"CREATE ROLE lifeboat_planted SUPERUSER LOGIN PASSWORD 'x';\n"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The worker's clock and moto's (it judges the locks), fixed an hour after the slot."""
    import moto.s3.models

    clock = Clock(SLOT + timedelta(hours=1))
    monkeypatch.setattr(moto.s3.models, "utcnow", lambda: clock.now.astimezone(UTC).replace(tzinfo=None))
    return clock


@pytest.fixture
def backed_up(aws: LocalStack, write_lifeboat_config: ConfigWriter, clock: Clock) -> Manifest:
    """A complete, signed, locked backup of the sample database `shop` (with its globals)."""
    boto3.client("s3").create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    kms = boto3.client("kms")
    bucket_key = kms.create_key(Description="pg-lifeboat test")["KeyMetadata"]["Arn"]
    mac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=SIGNING_ALIAS, TargetKeyId=mac_key)
    settings = {"kms_key_id": bucket_key, "object_lock_mode": "GOVERNANCE", "signing_key_id": SIGNING_ALIAS}
    write_lifeboat_config(dataclasses.replace(aws, bucket=BUCKET), globals=True, settings=settings)
    svc = wiring.backup_services()
    svc.clock = clock
    outcome = run_logical_backup(svc, "shop", SLOT)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    assert {o.role for o in outcome.manifest.objects} == {"dump", "globals"}
    assert all(o.version_id for o in outcome.manifest.objects), "the manifest records each object's version"
    return outcome.manifest


def _overwrite_every_object(manifest: Manifest) -> dict[str, str]:
    """What someone with PutObject can do: a new current version of every object of the backup, the dump replaced
    by bytes of the same size, the globals by a planted superuser. Returns key -> the new current version."""
    s3 = boto3.client("s3")
    current = {}
    for obj in manifest.objects:
        body = EVIL_GLOBALS if obj.role == "globals" else b"\x00" * obj.size
        current[obj.key] = s3.put_object(Bucket=BUCKET, Key=obj.key, Body=body)["VersionId"]
        assert current[obj.key] != obj.version_id
        assert s3.get_object(Bucket=BUCKET, Key=obj.key)["Body"].read() == body  # a plain GET now reads the fake
    return current


def _verify(backup_id: str) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    code = cli.main(["verify", backup_id, "--json"], out=out)
    report: dict[str, object] = json.loads(out.getvalue())
    return code, report


def test_an_overwritten_backup_still_verifies_and_restores_the_original(
    backed_up: Manifest, pg: PostgresServer, stray_databases: Callable[[], set[str]], tmp_path: Path
) -> None:
    manifest = backed_up
    _overwrite_every_object(manifest)

    code, report = _verify(manifest.backup_id)
    assert code == 0 and report["status"] == "VERIFIED", report
    objects = report["objects"]
    assert isinstance(objects, list)
    assert {(o["key"], o["version_id"]) for o in objects} == {(o.key, o.version_id) for o in manifest.objects}
    assert all(o["ok"] and o["sha256_read"] == o["sha256"] for o in objects)

    cfg = wiring.load_config()
    store, catalog = wiring.store(cfg), wiring.catalog(cfg)
    login = wiring.credentials().restore_login(cfg.target("shop").connection)  # type: ignore[arg-type]
    restores = {
        "shop_version_stream": RestoreOptions(jobs=1),  # streamed into pg_restore
        "shop_version_download": RestoreOptions(jobs=2),  # downloaded, then pg_restore -j
        "shop_version_schema": RestoreOptions(jobs=1, schemas=("sales",)),  # the TOC's head streamed first
    }
    for name, opts in restores.items():
        result = restore_logical(
            store, catalog, wiring.toolbox(), manifest.backup_id, login, name, opts, workdir=tmp_path
        )
        assert result.verified, (name, result.verification)
        assert pg.psql("SELECT count(*) FROM sales.orders", dbname=name) == "4000", name
    assert stray_databases() == set(restores)
    assert pg.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'lifeboat_planted'") == "0"


def test_the_recorded_version_gone_is_a_clear_error_not_the_current_one(backed_up: Manifest) -> None:
    """Reading by version never falls back to the current object: a version that is not there (a manifest of another
    bucket, or a version deleted by someone allowed to bypass the lock) is said, by version, to be missing."""
    store = wiring.store(wiring.load_config())
    dump = backed_up.object("dump")
    current = _overwrite_every_object(backed_up)
    assert store.get_bytes(dump.key, current[dump.key]) == b"\x00" * dump.size
    assert store.get_bytes(dump.key) == b"\x00" * dump.size  # no version: the current one, as before
    assert store.head(dump.key, version_id="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd") is None
    gone = "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd"
    with pytest.raises(StorageError, match=rf"version {gone} of s3://\S+ \(the one its manifest recorded\) is not in"):
        store.get_bytes(dump.key, gone)
