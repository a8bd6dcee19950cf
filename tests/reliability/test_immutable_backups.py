"""Every object of a backup written with the stack's KMS key, and a complete backup locked (S3 Object Lock) so that
the worker's own permissions can neither delete nor shorten it. On moto, which supports SSE-KMS and Object Lock
(SeaweedFS answers 500 to SSE-KMS): the bucket is created with Object Lock, the settings carry the key and the mode
as the stack's SettingsJson output does.

What moto enforces and what it does not (moto 5.2.5, measured):
- enforced: a DeleteObject (or DeleteObjects) naming the VersionId of a locked version is refused (AccessDenied)
  without BypassGovernanceRetention, and in COMPLIANCE mode even with it; a plain DeleteObject only adds a delete
  marker; the lock is judged against moto's clock, which these tests drive (moto.s3.models.utcnow);
- lenient: put_object_retention that *shortens* a lock is accepted without BypassGovernanceRetention (real S3 refuses
  it in GOVERNANCE mode and always in COMPLIANCE mode). The proof that the functions cannot shorten a lock is their
  policies: none grants s3:BypassGovernanceRetention (tests/stack/test_immutable.py);
- not modelled: IAM and bucket policies (moto allows every call), and lifecycle rules (stored, never run). A
  lifecycle purge is played here as the calls it makes: expiration adds a delete marker, noncurrent-version
  expiration deletes the version by its VersionId, which the lock refuses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib import wiring
from chalicelib.errors import StorageError
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.dump import BackupServices, run_logical_backup
from devstack.local import LocalStack
from tests.reliability.conftest import ConfigWriter

LOCKED_BUCKET = "lifeboat-locked-backups"
FIRST, SECOND = datetime(2026, 11, 27, 3, tzinfo=UTC), datetime(2026, 11, 28, 3, tzinfo=UTC)  # Friday, Saturday
KEPT_LOCK = timedelta(days=30)  # a `keep` backup of the daily class: at least the rolling 30 days (lock_days)


@dataclasses.dataclass
class Clock:
    """The worker's clock and moto's (server time for the lock checks), driven together."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    import moto.s3.models

    clock = Clock(FIRST + timedelta(hours=1))
    monkeypatch.setattr(moto.s3.models, "utcnow", lambda: clock.now.astimezone(UTC).replace(tzinfo=None))
    return clock


@pytest.fixture
def locked(
    aws: LocalStack, big_db: str, write_lifeboat_config: ConfigWriter, clock: Clock
) -> Iterator[tuple[BackupServices, str]]:
    """A bucket with Object Lock, a KMS key, and the settings the stack's SettingsJson output gives."""
    boto3.client("s3").create_bucket(Bucket=LOCKED_BUCKET, ObjectLockEnabledForBucket=True)
    key = boto3.client("kms").create_key(Description="pg-lifeboat test")["KeyMetadata"]["Arn"]
    write_lifeboat_config(
        dataclasses.replace(aws, bucket=LOCKED_BUCKET),
        database=big_db,
        compression="gzip:1",
        globals=True,
        settings={"kms_key_id": key, "object_lock_mode": "GOVERNANCE"},
    )
    svc = wiring.backup_services()
    svc.clock = clock
    yield svc, key


def backup(svc: BackupServices, clock: Clock, slot: datetime) -> list[str]:
    """Run the slot's backup at slot + 1 h; the keys of its objects and manifest."""
    clock.now = slot + timedelta(hours=1)
    outcome = run_logical_backup(svc, "shop", slot)
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    keys = [o.key for o in outcome.manifest.objects]
    assert len(keys) == 2 and outcome.manifest.size > 12 * 1024 * 1024, "a dump of several parts, and globals"
    # Each object's version is recorded, so its lock (and a restore) concerns that version, not a later overwrite.
    s3 = boto3.client("s3")
    for o in outcome.manifest.objects:
        assert o.version_id and o.version_id == s3.head_object(Bucket=LOCKED_BUCKET, Key=o.key)["VersionId"], o
    return [*keys, svc.catalog.layout.manifest_key(BackupId.parse(outcome.backup_id))]


def tags(s3: Any, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=LOCKED_BUCKET, Key=key)["TagSet"]}


def test_every_object_is_kms_encrypted_and_a_complete_backup_locked(
    locked: tuple[BackupServices, str], clock: Clock
) -> None:
    svc, key = locked
    s3 = boto3.client("s3")
    first = backup(svc, clock, FIRST)
    second = backup(svc, clock, SECOND)
    everything = [o["Key"] for o in s3.list_objects_v2(Bucket=LOCKED_BUCKET)["Contents"]]
    assert sorted(everything) == sorted(first + second)
    for k in everything:
        head = s3.head_object(Bucket=LOCKED_BUCKET, Key=k)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key), k
        assert head["ObjectLockMode"] == "GOVERNANCE", k
    # The newest is `keep` and locked for the rolling 30 days; the one before got its class back (Friday,
    # followed by Saturday in the same ISO week: daily) but keeps the lock it had: a lock is never shortened.
    for k in second:
        assert tags(s3, k)["retention"] == "keep"
        assert (
            s3.head_object(Bucket=LOCKED_BUCKET, Key=k)["ObjectLockRetainUntilDate"]
            == SECOND + timedelta(hours=1) + KEPT_LOCK
        )
    for k in first:
        assert tags(s3, k)["retention"] == "daily"
        assert (
            s3.head_object(Bucket=LOCKED_BUCKET, Key=k)["ObjectLockRetainUntilDate"]
            == FIRST + timedelta(hours=1) + KEPT_LOCK
        )
    # A late redelivery of the older slot is skipped, and its pass never asks for a shorter lock (moto would accept
    # one: the lock is read back first).
    clock.now = SECOND + timedelta(days=3)
    assert run_logical_backup(svc, "shop", FIRST).status == "SKIPPED"
    for k in first:
        assert tags(s3, k)["retention"] == "daily"
        assert (
            s3.head_object(Bucket=LOCKED_BUCKET, Key=k)["ObjectLockRetainUntilDate"]
            == FIRST + timedelta(hours=1) + KEPT_LOCK
        )


def test_a_locked_backup_cannot_be_deleted_with_the_workers_permissions(
    locked: tuple[BackupServices, str], clock: Clock
) -> None:
    svc, _ = locked
    s3 = boto3.client("s3")
    keys = backup(svc, clock, FIRST)
    versions = {k: s3.head_object(Bucket=LOCKED_BUCKET, Key=k)["VersionId"] for k in keys}
    for k, version in versions.items():
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.delete_object(Bucket=LOCKED_BUCKET, Key=k, VersionId=version)
    refused = s3.delete_objects(
        Bucket=LOCKED_BUCKET, Delete={"Objects": [{"Key": k, "VersionId": v} for k, v in versions.items()]}
    )
    assert sorted(e["Key"] for e in refused.get("Errors", [])) == sorted(keys)
    assert all(e["Code"] == "AccessDenied" for e in refused["Errors"])
    # Shortening: moto accepts put_object_retention with an earlier date (lenient, see the module docstring); real
    # S3 refuses it without s3:BypassGovernanceRetention, which no function is granted (tests/stack/test_immutable.py).

    # A lifecycle purge, three weeks later (a retagged `daily` backup would be due): expiration adds delete markers
    clock.now = FIRST + timedelta(days=21)
    svc.store.delete(keys)  # what the worker's own s3:DeleteObject can do: markers only
    assert s3.list_objects_v2(Bucket=LOCKED_BUCKET).get("KeyCount", 0) == 0
    # ... and noncurrent-version expiration cannot remove a locked version.
    for k, version in versions.items():
        with pytest.raises(ClientError, match="AccessDenied"):
            s3.delete_object(Bucket=LOCKED_BUCKET, Key=k, VersionId=version)
        assert s3.head_object(Bucket=LOCKED_BUCKET, Key=k, VersionId=version)["ContentLength"] > 0
    # Once the lock has ended, the same call goes through: the lock is what refused it.
    clock.now = FIRST + KEPT_LOCK + timedelta(days=2)
    s3.delete_object(Bucket=LOCKED_BUCKET, Key=keys[0], VersionId=versions[keys[0]])


def test_a_failed_attempt_is_cleaned_up_without_deleting_versions(
    locked: tuple[BackupServices, str], clock: Clock
) -> None:
    """The manifest PUT is refused (403): the attempt's objects were never locked; its clean-up's plain deletes
    leave delete markers, and the data stays a noncurrent, unlocked version that the lifecycle's noncurrent-version
    rule expires."""
    from botocore.awsrequest import AWSResponse

    svc, key = locked
    s3 = boto3.client("s3")

    class _Raw:
        def stream(self, **_: object) -> Iterator[bytes]:
            yield b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"

    def refuse_manifest(request: Any, **_: object) -> AWSResponse | None:
        if request.url.split("?")[0].endswith("/manifest.json"):
            return AWSResponse(request.url, 403, {}, _Raw())  # type: ignore[arg-type]
        return None

    events = svc.store.client.meta.events  # type: ignore[attr-defined]
    events.register("before-send.s3.PutObject", refuse_manifest)
    clock.now = FIRST + timedelta(hours=1)
    try:
        with pytest.raises(StorageError, match="it is not in the bucket: the backup is not complete"):
            run_logical_backup(svc, "shop", FIRST)
    finally:
        events.unregister("before-send.s3.PutObject", refuse_manifest)
    current = [o["Key"] for o in s3.list_objects_v2(Bucket=LOCKED_BUCKET)["Contents"]]
    assert len(current) == 1 and current[0].startswith("failed/shop/20261127T030000Z_@_"), current
    head = s3.head_object(Bucket=LOCKED_BUCKET, Key=current[0])
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key)
    listing = s3.list_object_versions(Bucket=LOCKED_BUCKET, Prefix="logical/")
    markers = {m["Key"] for m in listing.get("DeleteMarkers", [])}
    noncurrent = [(v["Key"], v["VersionId"]) for v in listing.get("Versions", [])]
    assert markers == {k for k, _ in noncurrent} and len(noncurrent) == 2  # the dump and globals.sql
    for k, version in noncurrent:
        assert "ObjectLockMode" not in s3.head_object(Bucket=LOCKED_BUCKET, Key=k, VersionId=version), k
