"""A complete backup can be neither swapped nor hidden with the backup worker's credentials (PutObject, DeleteObject,
kms:GenerateMac), on moto with a versioned, Object Lock bucket as the stack makes it:

- swap: a new, signed manifest version over an old backup, recording a new dump version: the first version is read,
  so restores and `lifeboat verify` still read the original data (ManifestOverwritten is recorded);
- hide: a delete marker on the manifest leaves the backup listed (`hidden`) and kept (its lock extended by the next
  keep pass); a delete marker on one dump object and a redelivery neither remove the manifest nor redo the slot;
- a manifest is written once: a second one for the same key is refused and nothing is removed.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import cli, wiring
from chalicelib.config import RetentionPolicy
from chalicelib.errors import StorageError
from chalicelib.logical.catalog import BackupId, Manifest, ManifestConflict, ManifestObject
from chalicelib.logical.dump import BackupServices, _existing, run_logical_backup
from chalicelib.logical.restore import RestoreOptions, restore_logical
from devstack.postgres import PostgresServer
from tests.reliability import test_exact_versions as exact
from tests.reliability import test_keep_pass_locks as keep
from tests.reliability.support import emf_metrics

BUCKET = exact.BUCKET
clock = exact.clock  # fixtures: the worker's and moto's clock, and a complete, signed, locked backup of `shop`
backed_up = exact.backed_up
bucket = keep.bucket  # fixture: an in-process moto bucket with Object Lock, no PostgreSQL


def _versions(s3: Any, bucket_name: str, key: str) -> tuple[list[str], list[str]]:
    """(versions, delete markers) of exactly `key`."""
    page = s3.list_object_versions(Bucket=bucket_name, Prefix=key)
    return (
        [v["VersionId"] for v in page.get("Versions", []) if v["Key"] == key],
        [m["VersionId"] for m in page.get("DeleteMarkers", []) if m["Key"] == key],
    )


def _restore_rows(name: str, backup_id: str, pg: PostgresServer, tmp_path: Path) -> str:
    cfg = wiring.load_config()
    login = wiring.credentials().restore_login(cfg.target("shop").connection)  # type: ignore[arg-type]
    result = restore_logical(
        wiring.store(cfg), wiring.catalog(cfg), wiring.toolbox(), backup_id, login, name, RestoreOptions(jobs=1),
        workdir=tmp_path,
    )  # fmt: skip
    assert result.verified, result.verification
    return pg.psql("SELECT count(*) FROM sales.orders", dbname=name)


def test_a_signed_manifest_version_over_an_old_backup_is_ignored(
    backed_up: Manifest,
    clock: exact.Clock,
    pg: PostgresServer,
    stray_databases: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The attacker holds the worker's rights: a new dump version (a valid archive of their choosing: here an empty
    one's bytes stand for it) and a manifest recording it, signed with the worker's GenerateMac, PUT as new versions."""
    clock.now += timedelta(days=1)  # moto dates versions by this clock: the attack comes later than the backup
    s3, cfg = boto3.client("s3"), wiring.load_config()
    catalog = wiring.catalog(cfg)
    bid = BackupId.parse(backed_up.backup_id)
    dump = backed_up.object("dump")
    planted = b"PGDMP planted data"
    new_version = s3.put_object(Bucket=BUCKET, Key=dump.key, Body=planted)["VersionId"]
    forged = backed_up.model_copy(deep=True)
    forged.objects = [
        ManifestObject(
            role="dump",
            key=dump.key,
            size=len(planted),
            sha256=hashlib.sha256(planted).hexdigest(),
            version_id=new_version,
        )
        if o.role == "dump"
        else o
        for o in forged.objects
    ]
    assert catalog.signing is not None
    catalog.signing.seal(forged)  # a valid signature: the worker may sign
    manifest_key = catalog.layout.manifest_key(bid)
    s3.put_object(Bucket=BUCKET, Key=manifest_key, Body=forged.model_dump_json(indent=2).encode())
    assert len(_versions(s3, BUCKET, manifest_key)[0]) == 2
    capsys.readouterr()

    read = catalog.manifest(bid)
    assert read.object("dump").version_id == dump.version_id != new_version
    assert "ManifestOverwritten" in emf_metrics(capsys.readouterr().out)
    out = io.StringIO()
    assert cli.main(["verify", backed_up.backup_id, "--json"], out=out) == 0
    report = json.loads(out.getvalue())
    assert report["status"] == "VERIFIED"
    assert {(o["key"], o["version_id"]) for o in report["objects"]} == {
        (o.key, o.version_id) for o in backed_up.objects
    }
    assert _restore_rows("shop_swapped", backed_up.backup_id, pg, tmp_path) == "4000"
    assert stray_databases() == {"shop_swapped"}


def test_a_delete_marker_on_a_dump_object_and_a_redelivery_remove_nothing(
    backed_up: Manifest, clock: exact.Clock, pg: PostgresServer, stray_databases: Any, tmp_path: Path
) -> None:
    s3 = boto3.client("s3")
    svc = wiring.backup_services()
    svc.clock = clock
    bid = BackupId.parse(backed_up.backup_id)
    manifest_key = svc.catalog.layout.manifest_key(bid)
    clock.now += timedelta(minutes=10)
    s3.delete_object(Bucket=BUCKET, Key=backed_up.object("dump").key)  # a plain delete: a delete marker

    outcome = run_logical_backup(svc, "shop", exact.SLOT)  # the redelivery
    assert (outcome.status, outcome.reason) == ("SKIPPED", "already complete")
    versions, markers = _versions(s3, BUCKET, manifest_key)
    assert markers == [] and len(versions) == 1, "the manifest is neither removed nor written again"
    assert [m.backup_id for m in svc.catalog.list_backups("shop")] == [backed_up.backup_id]
    assert _restore_rows("shop_marked", backed_up.backup_id, pg, tmp_path) == "4000"
    assert stray_databases() == {"shop_marked"}


def test_a_hidden_manifest_is_still_listed_and_its_lock_extended(bucket: keep.Bucket) -> None:
    policies = {"default": RetentionPolicy(keep_last=2)}
    bucket.config = bucket.config.model_copy(
        update={"settings": bucket.config.settings.model_copy(update={"retention_policies": policies})}
    )
    first = bucket.backup(keep.at(2026, 11, 29))
    key = bucket.catalog.layout.manifest_key(BackupId.parse(first.backup_id))
    (version,) = _versions(bucket.s3, keep.BUCKET, key)[0]
    dump = first.object("dump")
    before = bucket.s3.head_object(Bucket=keep.BUCKET, Key=key, VersionId=version)["ObjectLockRetainUntilDate"]
    bucket.clock.now += timedelta(days=1)  # moto dates the delete markers by this clock
    bucket.s3.delete_object(Bucket=keep.BUCKET, Key=key)  # hidden from a plain listing
    bucket.s3.delete_object(Bucket=keep.BUCKET, Key=dump.key)

    listed = {m.backup_id: m.hidden for m in bucket.catalog.list_backups("shop")}
    assert listed == {first.backup_id: True}
    assert bucket.catalog.latest("shop", now=bucket.clock.now).backup_id == first.backup_id  # type: ignore[union-attr]

    bucket.backup(keep.at(2026, 12, 20))  # its keep pass: the hidden backup is still among the newest keep_last
    for k, v in ((key, version), (dump.key, dump.version_id)):
        head = bucket.s3.head_object(Bucket=keep.BUCKET, Key=k, VersionId=v)
        assert head["ObjectLockRetainUntilDate"] > before, k
        assert head["ObjectLockRetainUntilDate"] >= bucket.clock.now + timedelta(days=29), k
    tagging = bucket.s3.get_object_tagging(Bucket=keep.BUCKET, Key=key, VersionId=version)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tagging}[keep.RETENTION_TAG] == "keep"


def test_a_manifest_is_written_once(bucket: keep.Bucket) -> None:
    first = bucket.backup(keep.at(2026, 11, 29))
    key = bucket.catalog.layout.manifest_key(BackupId.parse(first.backup_id))
    other = first.model_copy(update={"trigger": "api"})
    with pytest.raises(ManifestConflict, match="written once"):
        bucket.catalog.write_manifest(other, keep.TAGS)
    assert len(_versions(bucket.s3, keep.BUCKET, key)[0]) == 1
    bucket.catalog.write_manifest(first.model_copy(), keep.TAGS)  # the same body (a retried PUT): no error
    assert len(_versions(bucket.s3, keep.BUCKET, key)[0]) == 1


def test_a_phantom_in_a_versioned_bucket_is_reported_not_removed(bucket: keep.Bucket) -> None:
    """A manifest whose recorded version is gone (deleted by someone who may bypass the lock) is not complete; the
    worker never removes or rewrites a manifest it did not write in this attempt: it says so."""
    first = bucket.backup(keep.at(2026, 11, 29), run_protect=False)
    dump = first.object("dump")
    bucket.s3.delete_object(Bucket=keep.BUCKET, Key=dump.key, VersionId=dump.version_id)
    assert bucket.catalog.list_backups("shop") == []
    services = BackupServices(bucket.config, bucket.store, bucket.catalog, None, None)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="written once, so the slot is not backed up again"):
        _existing(services, BackupId.parse(first.backup_id))
    key = bucket.catalog.layout.manifest_key(BackupId.parse(first.backup_id))
    assert _versions(bucket.s3, keep.BUCKET, key)[1] == []


def test_a_backup_redone_before_manifests_were_written_once_reads_its_complete_version(
    backed_up: Manifest, clock: exact.Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before manifests were written once, a phantom (a manifest whose objects never completed) was hidden with a
    delete marker and the slot redone, writing a second version at the same key: the first complete version is
    read, not the phantom (which no one could have made out of a complete backup: no role deletes a version)."""
    s3, cfg = boto3.client("s3"), wiring.load_config()
    catalog = wiring.catalog(cfg)
    assert catalog.signing is not None
    old = BackupId.parse(backed_up.backup_id)
    redone = BackupId(old.target, old.stamp + timedelta(days=1), old.kind)
    old_prefix, new_prefix = catalog.layout.backup_prefix(old), catalog.layout.backup_prefix(redone)
    phantom = backed_up.model_copy(deep=True, update={"backup_id": str(redone), "slot": redone.stamp})
    for o in phantom.objects:
        o.key = o.key.replace(old_prefix, new_prefix)
        o.version_id = "never-written"
    catalog.signing.seal(phantom)
    key = catalog.layout.manifest_key(redone)
    clock.now += timedelta(days=1)
    s3.put_object(Bucket=BUCKET, Key=key, Body=phantom.model_dump_json(indent=2).encode())
    clock.now += timedelta(minutes=5)
    s3.delete_object(Bucket=BUCKET, Key=key)  # the old cleanup's plain delete
    complete = phantom.model_copy(deep=True)
    for o, source in zip(complete.objects, backed_up.objects, strict=True):  # the redo's objects
        copied = s3.copy_object(Bucket=BUCKET, Key=o.key, CopySource={"Bucket": BUCKET, "Key": source.key})
        o.version_id = copied["VersionId"]
    catalog.signing.seal(complete)
    clock.now += timedelta(minutes=5)
    s3.put_object(Bucket=BUCKET, Key=key, Body=complete.model_dump_json(indent=2).encode())

    read = catalog.manifest(redone)
    assert [o.version_id for o in read.objects] == [o.version_id for o in complete.objects]
    out = io.StringIO()
    assert cli.main(["verify", str(redone), "--json"], out=out) == 0, out.getvalue()
