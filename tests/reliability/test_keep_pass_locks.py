"""The keep pass (chalicelib.logical.protect) and what the catalog believes, against moto's Object Lock (in-process,
its clock driven by the test): the review13 findings F1-F5 as regressions. Backups are made the way the worker makes
them once pg_dump finished (objects with the class tags, the manifest last, then protect()), without PostgreSQL.

- F1: a backup whose own pass never finished is locked by the next pass;
- F8: each object is judged by its own lock, and locked by the version the manifest recorded;
- F2: on-demand backups do not push the month's representative out of the window;
- F3: a backup slot in the future takes neither `keep` nor `latest`;
- F4: a manifest is believed only for the key it sits at (not empty, not another backup's, not FAILED).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from chalicelib.adapters.s3 import S3Store
from chalicelib.config import Config, Connection, Logical, RetentionPolicy, Settings, Target
from chalicelib.errors import NotFoundError
from chalicelib.logical.catalog import BackupId, Catalog, Layout, Manifest, ManifestObject
from chalicelib.logical.protect import protect
from chalicelib.scheduling.retention import POLICY_TAG, RETENTION_TAG, backup_class

BUCKET = "lifeboat-keep-pass"
DAILY = "cron(0 3 * * ? *)"
TAGS = {RETENTION_TAG: "keep", POLICY_TAG: "default", "target": "shop"}


def at(y: int, m: int, d: int, h: int = 3, mi: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Bucket:
    def __init__(self, s3: Any, store: S3Store, catalog: Catalog, config: Config, clock: Clock) -> None:
        self.s3, self.store, self.catalog, self.config, self.clock = s3, store, catalog, config, clock

    def backup(self, slot: datetime, trigger: str = "schedule", run_protect: bool = True) -> Manifest:
        """What the worker does once pg_dump finished, an hour after the slot."""
        self.clock.now = slot + timedelta(hours=1)
        bid = BackupId("shop", slot)
        policy = self.config.policy_for(self.config.target("shop"))
        cls = backup_class(slot, trigger, DAILY, policy)
        tags = {RETENTION_TAG: cls.value, POLICY_TAG: "default", "target": "shop"}
        body = f"dump of {slot}".encode()
        put = self.store.put_bytes(self.catalog.layout.dump_key(bid), body, tags=tags)
        assert put.version_id, "a versioned bucket says which version was written"
        obj = ManifestObject(
            role="dump", key=put.key, size=put.size, sha256=hashlib.sha256(body).hexdigest(), version_id=put.version_id
        )
        m = manifest(bid, [obj], trigger=trigger, retention_class=cls.value, finished=self.clock.now)
        self.catalog.write_manifest(m, tags)
        if run_protect:
            protect(self.store, self.catalog, self.config, m, self.clock())
        return m

    def state(self, m: Manifest, key: str | None = None, version_id: str | None = None) -> tuple[str, datetime | None]:
        """(retention tag of the manifest, lock of `key`'s version; default: the manifest)."""
        mkey = self.catalog.layout.manifest_key(BackupId.parse(m.backup_id))
        tags = {t["Key"]: t["Value"] for t in self.s3.get_object_tagging(Bucket=BUCKET, Key=mkey)["TagSet"]}
        extra = {"VersionId": version_id} if version_id else {}
        head = self.s3.head_object(Bucket=BUCKET, Key=key or mkey, **extra)
        return tags.get(RETENTION_TAG, ""), head.get("ObjectLockRetainUntilDate")


def manifest(
    bid: BackupId,
    objects: list[ManifestObject],
    trigger: str = "schedule",
    retention_class: str = "daily",
    finished: datetime | None = None,
    **fields: Any,
) -> Manifest:
    done = finished or bid.stamp
    values: dict[str, Any] = {
        "backup_id": str(bid),
        "target": bid.target,
        "slot": bid.stamp,
        "trigger": trigger,
        "host": "db.example",
        "database": "shop",
        "server_version": "17.0",
        "server_version_num": 170000,
        "pg_dump_version": 17,
        "format": "custom",
        "compression": "zstd:1",
        "objects": objects,
        "size": sum(o.size for o in objects),
        "started_at": done,
        "finished_at": done,
        "retention_class": retention_class,
        "retention_policy": "default",
    }
    return Manifest(**(values | fields))


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    import moto.s3.models
    from moto import mock_aws

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    clock = Clock(at(2026, 11, 1))
    monkeypatch.setattr(moto.s3.models, "utcnow", lambda: clock.now.astimezone(UTC).replace(tzinfo=None))
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        settings = Settings(
            bucket=BUCKET, object_lock_mode="GOVERNANCE", retention_policies={"default": RetentionPolicy()}
        )
        shop = Target(
            name="shop",
            connection=Connection(host="db.example", user="backup", password_secret="x"),
            logical=Logical(schedule=DAILY),
        )
        store = S3Store(s3, BUCKET)
        yield Bucket(s3, store, Catalog(store, Layout("")), Config(settings=settings, targets=[shop]), clock)


def purge(b: Bucket, key: str, version_id: str) -> None:
    """What lifecycle expiry does to a version: refused while it is locked."""
    b.s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version_id)


def test_a_backup_whose_own_pass_never_finished_is_locked_by_the_next(bucket: Bucket) -> None:
    bucket.backup(at(2026, 11, 29))
    nov30 = bucket.backup(at(2026, 11, 30), run_protect=False)  # its protect() was interrupted
    assert nov30.retention_class == "monthly" and bucket.state(nov30)[1] is None
    for day in range(1, 6):
        bucket.backup(at(2026, 12, day))
    year = nov30.finished_at + timedelta(days=372)
    tag, lock = bucket.state(nov30)
    assert tag == "monthly" and lock is not None and lock >= year - timedelta(seconds=1)
    dump = nov30.objects[0]
    assert bucket.state(nov30, dump.key)[1] == lock
    bucket.clock.now = at(2027, 2, 1)
    assert dump.version_id
    with pytest.raises(ClientError, match="AccessDenied"):
        purge(bucket, dump.key, dump.version_id)


@pytest.mark.parametrize("variant", ["pin-manifest-lock", "overwrite-dump"])
def test_each_object_is_locked_by_its_own_recorded_version(bucket: Bucket, variant: str) -> None:
    jan30 = bucket.backup(at(2027, 1, 30))  # `keep`, locked 30 days
    mkey = bucket.catalog.layout.manifest_key(BackupId.parse(jan30.backup_id))
    dump = jan30.objects[0]
    real = bucket.s3.head_object(Bucket=BUCKET, Key=dump.key)["VersionId"]
    assert dump.version_id == real  # recorded at write time
    if variant == "pin-manifest-lock":  # s3:PutObjectRetention on the manifest alone
        far = {"Mode": "GOVERNANCE", "RetainUntilDate": datetime(2100, 1, 1, tzinfo=UTC)}
        bucket.s3.put_object_retention(Bucket=BUCKET, Key=mkey, Retention=far)
    else:  # a new current version over the dump
        bucket.store.put_bytes(dump.key, b"garbage", tags=TAGS)
    bucket.backup(at(2027, 2, 1))  # Jan 31 failed: Jan 30 is the month's newest, raised to monthly
    tag, lock = bucket.state(jan30, dump.key, real)
    assert tag == "monthly"
    assert lock is not None and lock >= jan30.finished_at + timedelta(days=372) - timedelta(seconds=1)
    bucket.clock.now = at(2027, 4, 2)
    with pytest.raises(ClientError, match="AccessDenied"):
        purge(bucket, dump.key, real)


@pytest.mark.parametrize("on_demand", [0, 1, 2, 4])
def test_on_demand_backups_do_not_hide_the_months_newest(bucket: Bucket, on_demand: int) -> None:
    made = [bucket.backup(at(2027, 1, 29)), jan30 := bucket.backup(at(2027, 1, 30))]
    made += [bucket.backup(at(2027, 1, 31, 9, 10 * i), trigger="on-demand") for i in range(on_demand)]  # slot failed
    made += [bucket.backup(at(2027, 2, d)) for d in range(1, 4)]
    january = {m.backup_id: bucket.state(m)[0] for m in made if m.slot.month == 1}
    assert [k for k, tag in january.items() if tag in ("monthly", "yearly", "keep")] == [jan30.backup_id]
    assert bucket.state(jan30)[1] is not None and bucket.state(jan30)[1] >= jan30.finished_at + timedelta(days=371)


def test_a_future_slot_takes_neither_keep_nor_latest(bucket: Bucket) -> None:
    bucket.backup(at(2026, 12, 1))
    skewed = bucket.backup(at(2027, 12, 2, 10), trigger="on-demand")  # a clock a year ahead
    real = [bucket.backup(at(2026, 12, d)) for d in range(2, 9)]
    newest = real[-1]
    tag, lock = bucket.state(newest)
    assert tag == "keep" and lock == newest.finished_at + timedelta(days=30)
    latest = bucket.catalog.latest("shop", now=bucket.clock.now)
    assert latest is not None and latest.backup_id == newest.backup_id
    assert bucket.catalog.latest("shop", now=skewed.slot) is not None  # once its time has come, it is believed
    assert bucket.catalog.latest("shop", now=skewed.slot).backup_id == skewed.backup_id  # type: ignore[union-attr]


def forge(b: Bucket, bid: BackupId, m: Manifest) -> None:
    """A manifest written with the worker's s3:PutObject, not by a backup."""
    b.store.put_bytes(b.catalog.layout.manifest_key(bid), m.model_dump_json().encode(), tags=TAGS)


def test_forged_manifests_are_not_backups(bucket: Bucket) -> None:
    real = bucket.backup(at(2026, 12, 1))
    dump = real.objects[0]
    empty = BackupId("shop", at(2026, 12, 2))
    forge(bucket, empty, manifest(empty, []))
    failed = BackupId("shop", at(2026, 12, 3))
    forge(bucket, failed, manifest(failed, [dump], status="FAILED"))
    elsewhere = BackupId("shop", at(2026, 12, 4))  # lists another backup's dump: outside its own folder
    forge(bucket, elsewhere, manifest(elsewhere, [dump]))
    hr = BackupId("hr", at(2026, 12, 3))  # at target hr's key, naming shop's backup
    forge(bucket, hr, real.model_copy())
    catalog = bucket.catalog
    assert [m.backup_id for m in catalog.list_backups("shop")] == [real.backup_id]
    assert catalog.latest("shop", now=at(2026, 12, 5)).backup_id == real.backup_id  # type: ignore[union-attr]
    assert catalog.list_backups("hr") == [] and catalog.latest("hr") is None
    for bid, problem in [
        (empty, "lists no dump"),
        (failed, "status is FAILED"),
        (elsewhere, "outside logical/shop/2026/12/04/"),
        (hr, "backup_id is 'logical:shop:20261201T030000Z', not 'logical:hr:20261203T030000Z'"),
    ]:
        with pytest.raises(NotFoundError, match="is not a backup: invalid manifest at") as raised:
            catalog.manifest(bid)
        assert problem in str(raised.value)
        found = catalog.read_manifest(bid)
        assert found is not None and catalog.missing_objects(found)  # the worker's "already complete?" says no
    # the keep pass never counts them: the real backup stays `keep` when the newest manifests are forged
    bucket.clock.now = at(2026, 12, 5)
    protect(bucket.store, catalog, bucket.config, real, bucket.clock())
    assert bucket.state(real)[0] == "keep"


def test_failed_records_of_each_database_and_attempt_are_all_read(bucket: Bucket) -> None:
    run = BackupId("shop", at(2026, 11, 29))
    for bid, started in [
        (run.for_database("orders"), at(2026, 11, 29, 3, 1)),
        (run.for_database("hr"), at(2026, 11, 29, 3, 1)),
        (run.for_database("hr"), at(2026, 11, 29, 4, 1)),  # the retry
    ]:
        failure = manifest(bid, [], status="FAILED", started_at=started, error=f"{bid.database} at {started}")
        bucket.catalog.write_failure(failure)
    errors = sorted(m.error or "" for m in bucket.catalog.failures("shop"))
    assert errors == [
        "hr at 2026-11-29 03:01:00+00:00",
        "hr at 2026-11-29 04:01:00+00:00",
        "orders at 2026-11-29 03:01:00+00:00",
    ]
