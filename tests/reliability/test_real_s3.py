"""The S3 paths against a real S3 server (SeaweedFS), not moto: moto accepts what S3 refuses.

Every other AWS API (Secrets Manager, DynamoDB, SQS) stays on moto; only `AWS_ENDPOINT_URL_S3` moves.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from chalicelib import wiring
from chalicelib.adapters.pgtools import child_processes
from chalicelib.config import parse_config
from chalicelib.errors import ConfigError, IntegrityError, PgToolError
from chalicelib.logical.catalog import ManifestObject
from chalicelib.logical.digests import PartVerifier
from chalicelib.logical.dump import run_logical_backup
from chalicelib.logical.restore import RestoreOptions, restore_logical
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from tests.reliability import flows
from tests.reliability.conftest import ConfigWriter
from tests.reliability.support import SeaweedFS, bucket_state, emf_metrics

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
PREFIX = "logical/shop/2026/11/29/20261129T030000Z/"


def _children(name: str) -> list[int]:
    return [pid for pid, comm in child_processes(os.getpid()).items() if comm == name]


def test_the_s3_client_talks_to_seaweedfs_and_the_rest_to_moto(
    real_s3: LocalStack, seaweed: SeaweedFS, moto_server: object
) -> None:
    s3 = wiring.client("s3")
    assert s3.meta.endpoint_url == seaweed.endpoint
    assert wiring.client("sqs").meta.endpoint_url == moto_server.endpoint  # type: ignore[attr-defined]
    assert wiring.client("secretsmanager").meta.endpoint_url == moto_server.endpoint  # type: ignore[attr-defined]
    seaweed.client().head_bucket(Bucket=real_s3.bucket)


def test_scheduled_backup_round_trip(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    pg: PostgresServer,
    write_lifeboat_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Dispatcher → SQS (moto) → backup worker → SeaweedFS: object, globals and manifest, tagged and encrypted."""
    write_lifeboat_config(real_s3, globals=True)
    with flows.lambda_client() as c:
        results = flows.run_schedule(c, SLOT)
    assert [r["status"] for r in results] == ["SUCCEEDED"], results
    s3 = seaweed.client()
    keys, uploads = bucket_state(s3, real_s3.bucket)
    assert keys == [PREFIX + "database.dump", PREFIX + "globals.sql", PREFIX + "manifest.json"]
    assert uploads == []
    manifest = json.loads(s3.get_object(Bucket=real_s3.bucket, Key=PREFIX + "manifest.json")["Body"].read())
    assert manifest["status"] == "SUCCEEDED" and manifest["row_counts"]["sales.orders"] == 4000
    for obj in manifest["objects"]:
        body = s3.get_object(Bucket=real_s3.bucket, Key=obj["key"])["Body"].read()
        verifier = PartVerifier(ManifestObject.model_validate(obj))  # per part when it was sent in parts
        verifier.update(body)
        verifier.finish()
    for key in keys:  # the target's newest backup: `keep` (keep_last), which no lifecycle rule expires
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=real_s3.bucket, Key=key)["TagSet"]}
        assert tags == {"retention": "keep", "retention-policy": "default", "target": "shop"}, (key, tags)
        assert s3.head_object(Bucket=real_s3.bucket, Key=key)["ServerSideEncryption"] == "AES256"
    assert manifest["retention_class"] == "weekly"  # Sunday: the newest of its ISO week
    assert "BackupSucceeded" in emf_metrics(capsys.readouterr().out)
    # Nothing went to moto's S3.
    moto_s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert moto_s3.list_objects_v2(Bucket="lifeboat-test-backups").get("KeyCount", 0) == 0


def test_multipart_dump_of_more_than_two_parts(
    real_s3: LocalStack, seaweed: SeaweedFS, big_db: str, write_lifeboat_config: ConfigWriter
) -> None:
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:6")
    outcome = run_logical_backup(wiring.backup_services(), "shop", SLOT)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    dump = outcome.manifest.object("dump")
    s3 = seaweed.client()
    head = s3.head_object(Bucket=real_s3.bucket, Key=dump.key)
    parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])  # a multipart object's ETag ends in -<parts>
    assert parts > 2 and dump.size > 12 * 1024 * 1024, (parts, dump.size)
    assert head["ContentLength"] == dump.size and head["ServerSideEncryption"] == "AES256"
    # Tagging sent on CreateMultipartUpload lands on the completed object.
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=real_s3.bucket, Key=dump.key)["TagSet"]}
    assert tags["retention"] == "keep" and tags["target"] == "shop"
    verifier = PartVerifier(dump)
    for chunk in s3.get_object(Bucket=real_s3.bucket, Key=dump.key)["Body"].iter_chunks(1024 * 1024):
        verifier.update(chunk)
    verifier.finish()
    assert len(dump.parts) == parts
    # S3's own checksum of the object is the composite the manifest records: S3 checked every part on arrival.
    stored = s3.head_object(Bucket=real_s3.bucket, Key=dump.key, ChecksumMode="ENABLED")["ChecksumSHA256"]
    assert stored == f"{base64.b64encode(bytes.fromhex(dump.sha256)).decode()}-{parts}"
    assert bucket_state(s3, real_s3.bucket)[1] == []


def test_abort_leaves_no_open_multipart_upload(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    big_db: str,
    write_lifeboat_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:6")
    svc = wiring.backup_services()
    seen: list[int] = []

    def kill_pg_dump_after_the_first_part(done: int) -> None:
        seen.append(done)
        if len(seen) == 1:
            for pid in _children("pg_dump"):
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(PgToolError, match=r"pg_dump \d+ exited with signal 9"):
        run_logical_backup(svc, "shop", SLOT, on_progress=kill_pg_dump_after_the_first_part)
    keys, uploads = bucket_state(seaweed.client(), real_s3.bucket)
    assert uploads == [], "an open multipart upload was left on the real server"
    assert [k for k in keys if k.startswith("logical/")] == []
    assert len(keys) == 1 and keys[0].startswith("failed/shop/20261129T030000Z_@_"), keys
    assert "BackupFailed" in emf_metrics(capsys.readouterr().out)


def test_restore_verifies_the_checksum_streaming_and_downloaded(
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    pg: PostgresServer,
    write_lifeboat_config: ConfigWriter,
    stray_databases: object,
    tmp_path: Path,
) -> None:
    write_lifeboat_config(real_s3)
    svc = wiring.backup_services()
    bid = run_logical_backup(svc, "shop", SLOT).backup_id
    login = svc.credentials.login(svc.config.target("shop").connection)  # type: ignore[arg-type]
    for name, jobs in (("shop_rel_stream", 1), ("shop_rel_parallel", 2)):
        result = restore_logical(
            svc.store, svc.catalog, svc.toolbox, bid, login, name, RestoreOptions(jobs=jobs), workdir=tmp_path
        )
        assert result.verified and result.verification["tables_checked"] == 4, result.verification
        assert pg.psql("SELECT count(*) FROM sales.orders", dbname=name) == "4000"
    # One byte changed on the real server: both paths refuse it and leave no database.
    key = PREFIX + "database.dump"
    s3 = seaweed.client()
    data = bytearray(s3.get_object(Bucket=real_s3.bucket, Key=key)["Body"].read())
    data[len(data) // 3] ^= 0x01
    s3.put_object(Bucket=real_s3.bucket, Key=key, Body=bytes(data))
    for name, jobs in (("shop_rel_bad_stream", 1), ("shop_rel_bad_parallel", 2)):
        with pytest.raises(IntegrityError, match="SHA-256"):
            restore_logical(
                svc.store, svc.catalog, svc.toolbox, bid, login, name, RestoreOptions(jobs=jobs), workdir=tmp_path
            )
        assert pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'") == "0"


@pytest.mark.parametrize(
    "bucket",
    ["Lifeboat_Backups", "lifeboat..backups", "192.168.10.1", "xn--lifeboat", "lb", "-lifeboat", "lifeboat-backups-"],
)
def test_bucket_names_real_s3_rejects(seaweed: SeaweedFS, bucket: str) -> None:
    """The configuration refuses what real S3 refuses, and the real server agrees (moto creates most of them)."""
    with pytest.raises(ConfigError, match=r"settings\.bucket: .*not a valid S3 bucket name"):
        parse_config({"settings": {"bucket": bucket}, "targets": []})
    from botocore.exceptions import ClientError, ParamValidationError

    with pytest.raises((ClientError, ParamValidationError)) as info:
        seaweed.client(retries={"max_attempts": 1}).create_bucket(Bucket=bucket)
    if isinstance(info.value, ClientError):
        assert info.value.response["Error"]["Code"] == "InvalidBucketName"
