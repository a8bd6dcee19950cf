"""No phantom backups, on a real S3 server (SeaweedFS): when the manifest PUT lands but its acknowledgement is lost,
the attempt ends as a complete backup or as nothing, never as a listed backup without its objects.

The lost acknowledgement is a botocore `after-call` handler on the product's S3 client: it runs after the PUT's
response came back, so the manifest is in the bucket, and raises the timeout a lost response would have raised.
What the handler does first (deleting an object) stands for what else can go wrong before the worker reads back.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

from chalicelib import wiring
from chalicelib.errors import NotFoundError, StorageError
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.digests import PartVerifier
from chalicelib.logical.dump import BackupServices, run_logical_backup
from devstack.local import LocalStack
from tests.reliability.conftest import ConfigWriter
from tests.reliability.support import Fault, FaultProxy, SeaweedFS, Seen, bucket_state, emf_metrics

GOOD = datetime(2026, 11, 28, 3, tzinfo=UTC)
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
SLOT_ID = "logical:shop:20261129T030000Z"
PREFIX = "logical/shop/2026/11/29/20261129T030000Z/"
NEXT, NEXT_ID = datetime(2026, 11, 30, 3, tzinfo=UTC), "logical:shop:20261130T030000Z"


@contextmanager
def lost_acknowledgement(svc: BackupServices, before: Callable[[], None] = lambda: None) -> Iterator[list[str]]:
    """Every manifest PUT lands, then its answer is 'lost' (after `before` ran): a read timeout, as botocore raises
    when the response never arrives. Yields the keys whose acknowledgement was lost."""
    lost: list[str] = []

    def handler(http_response: Any, parsed: Any, model: Any, context: Any, **_: Any) -> None:
        key = context.get("lifeboat_key", "")
        if key.endswith("/manifest.json"):
            lost.append(key)
            before()
            raise ReadTimeoutError(endpoint_url=f"{svc.store.client.meta.endpoint_url}/{key}")

    def remember_key(params: Any, context: Any, **_: Any) -> None:
        context["lifeboat_key"] = params.get("Key", "")

    events = svc.store.client.meta.events  # type: ignore[attr-defined]
    events.register("before-parameter-build.s3.PutObject", remember_key)
    events.register("after-call.s3.PutObject", handler)
    try:
        yield lost
    finally:
        events.unregister("after-call.s3.PutObject", handler)
        events.unregister("before-parameter-build.s3.PutObject", remember_key)


def assert_no_phantom(svc: BackupServices, s3: Any, bucket: str) -> list[str]:
    """Every backup the catalog lists has every object its manifest lists, byte for byte. Returns the listed ids."""
    listed = svc.catalog.list_backups("shop")
    for manifest in listed:
        for obj in manifest.objects:
            body = s3.get_object(Bucket=bucket, Key=obj.key)["Body"].read()
            verifier = PartVerifier(obj)  # per part when it was sent in parts; IntegrityError names the object
            verifier.update(body)
            verifier.finish()
    return [m.backup_id for m in listed]


@pytest.fixture
def svc(real_s3: LocalStack, big_db: str, write_lifeboat_config: ConfigWriter) -> BackupServices:
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:1", globals=True)
    services = wiring.backup_services()
    assert run_logical_backup(services, "shop", GOOD).status == "SUCCEEDED"
    return services


def test_lost_acknowledgement_of_a_landed_manifest_is_a_complete_backup(
    svc: BackupServices,
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    capsys: pytest.CaptureFixture[str],
    product_log: io.StringIO,
) -> None:
    capsys.readouterr()
    with lost_acknowledgement(svc) as lost:
        outcome = run_logical_backup(svc, "shop", SLOT)
    assert lost == [PREFIX + "manifest.json"]
    assert outcome.status == "SUCCEEDED" and outcome.manifest is not None
    assert outcome.manifest.size > 12 * 1024 * 1024, "the dump must span several parts"
    s3 = seaweed.client()
    assert assert_no_phantom(svc, s3, real_s3.bucket)[0] == SLOT_ID
    keys, uploads = bucket_state(s3, real_s3.bucket)
    assert uploads == [] and not [k for k in keys if k.startswith("failed/shop/20261129T030000Z_")]
    assert "the backup is complete" in product_log.getvalue()
    assert "BackupSucceeded" in emf_metrics(capsys.readouterr().out)
    assert run_logical_backup(svc, "shop", SLOT).status == "SKIPPED"  # the redelivery: complete, so skipped


def test_lost_acknowledgement_and_an_object_gone_leaves_nothing(
    svc: BackupServices, real_s3: LocalStack, seaweed: SeaweedFS, capsys: pytest.CaptureFixture[str]
) -> None:
    s3 = seaweed.client()
    deletes: list[list[str]] = []

    def record_delete(params: Any, **_: Any) -> None:
        deletes.append([o["Key"] for o in params["Delete"]["Objects"]])

    events = svc.store.client.meta.events  # type: ignore[attr-defined]
    events.register("before-parameter-build.s3.DeleteObjects", record_delete)
    try:
        with (
            lost_acknowledgement(svc, lambda: s3.delete_object(Bucket=real_s3.bucket, Key=PREFIX + "database.dump")),
            pytest.raises(
                StorageError,
                match=r"reading back found the backup not complete .*database\.dump \(missing\)"
                r".*the manifest was removed",
            ),
        ):
            run_logical_backup(svc, "shop", SLOT)
    finally:
        events.unregister("before-parameter-build.s3.DeleteObjects", record_delete)
    assert deletes == [[PREFIX + "manifest.json"], [PREFIX + "database.dump", PREFIX + "globals.sql"]]  # manifest first
    keys, uploads = bucket_state(s3, real_s3.bucket)
    assert [k for k in keys if k.startswith(PREFIX)] == [], keys
    assert uploads == []
    (failed,) = [k for k in keys if k.startswith("failed/shop/20261129T030000Z_@_")]
    record = json.loads(s3.get_object(Bucket=real_s3.bucket, Key=failed)["Body"].read())
    assert record["status"] == "FAILED" and "not complete" in record["error"]
    assert "BackupFailed" in emf_metrics(capsys.readouterr().out)
    assert assert_no_phantom(svc, s3, real_s3.bucket) == ["logical:shop:20261128T030000Z"]
    # The redelivery is not SKIPPED: nothing says the slot is complete, so it is backed up.
    assert run_logical_backup(svc, "shop", SLOT).status == "SUCCEEDED"
    assert assert_no_phantom(svc, s3, real_s3.bucket)[0] == SLOT_ID


def test_a_manifest_that_cannot_be_removed_keeps_its_objects_and_is_never_listed(
    svc: BackupServices,
    real_s3: LocalStack,
    seaweed: SeaweedFS,
    s3_proxy: FaultProxy,
    write_lifeboat_config: ConfigWriter,
    big_db: str,
) -> None:
    """The worst case: the acknowledgement is lost, an object is gone, and S3 refuses to delete the manifest. The
    objects stay with it (never a manifest without its objects); the catalog does not list it, a restore says it is
    not complete, and the redelivery does not skip it: it removes the manifest and backs the slot up again."""
    svc = wiring.backup_services()  # through the proxy
    s3 = seaweed.client()

    def refuse_deletes(seen: Seen) -> Fault | None:
        return Fault(status=403, code="AccessDenied") if seen.operation == "DeleteObjects" else None

    def object_gone_and_deletes_refused() -> None:
        s3.delete_object(Bucket=real_s3.bucket, Key=PREFIX + "globals.sql")
        s3_proxy.rules = [refuse_deletes]

    with (
        lost_acknowledgement(svc, object_gone_and_deletes_refused),
        pytest.raises(StorageError, match=r"removing the manifest failed too .*its objects are kept"),
    ):
        run_logical_backup(svc, "shop", SLOT)
    s3_proxy.rules = []
    keys, _ = bucket_state(s3, real_s3.bucket)
    assert {PREFIX + "manifest.json", PREFIX + "database.dump"} <= set(keys)  # the dump stayed with its manifest
    assert assert_no_phantom(svc, s3, real_s3.bucket) == ["logical:shop:20261128T030000Z"]  # not listed
    with pytest.raises(
        NotFoundError,
        match=r"is not complete: its manifest lists objects that are not in the bucket: "
        r".*globals\.sql \(missing\)",
    ):
        svc.catalog.manifest(BackupId.parse(SLOT_ID))
    assert svc.catalog.latest("shop").backup_id == "logical:shop:20261128T030000Z"  # type: ignore[union-attr]
    # The next slot's backup is not disturbed by it (its keep pass leaves a manifest without its objects alone).
    assert run_logical_backup(svc, "shop", NEXT).status == "SUCCEEDED"
    assert assert_no_phantom(svc, s3, real_s3.bucket) == [NEXT_ID, "logical:shop:20261128T030000Z"]
    outcome = run_logical_backup(svc, "shop", SLOT)  # the redelivery
    assert outcome.status == "SUCCEEDED", outcome
    assert assert_no_phantom(svc, s3, real_s3.bucket) == [NEXT_ID, SLOT_ID, "logical:shop:20261128T030000Z"]
