"""POST /targets/{target}/restores checks the manifest's signature before a job exists (chalicelib.restore.service
.check_manifest): a forged or altered manifest, or an unsigned one without settings.accept_unsigned_before, is a 409
`integrity_failed` that says what is wrong; nothing is recorded or queued. The restore worker checks again
(tests/reliability/test_signed_manifests.py). Chalice's test client against moto server (KMS HMAC) and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.dump import run_logical_backup
from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from tests.integration.test_restore_api import get_json, post, run_restore_worker

REPO = Path(__file__).resolve().parents[2]
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
BACKUP_ID = "logical:shop:20261129T030000Z"
RESTORES = "/targets/shop/restores"
ALIAS = "alias/pg-lifeboat-test-manifests"


@pytest.fixture
def api(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A signed backup of `shop`, and the API with the same settings (signing_key_id) as the workers."""
    import app as lambda_app

    kms = boto3.client("kms")
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=ALIAS, TargetKeyId=key)
    path = write_config(
        tmp_path / "lifeboat.json", aws.bucket, [target("shop", pg.port, aws.secret_arn)], signing_key_id=ALIAS
    )
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        yield c


def _manifest() -> tuple[str, dict[str, Any]]:
    cfg = wiring.load_config()
    key = wiring.catalog(cfg).layout.manifest_key(BackupId.parse(BACKUP_ID))
    return key, json.loads(wiring.store(cfg).get_bytes(key))


def _put(key: str, body: bytes) -> None:
    """With nothing but PutObject (the backup worker's rights): a new current version."""
    wiring.store(wiring.load_config()).put_bytes(key, body, content_type="application/json")


def _refused(c: Any, database: str) -> str:
    r = post(c, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": database}})
    assert r.status_code == 409, r.body
    doc = json.loads(r.body)
    assert doc["error"] == "integrity_failed", doc
    assert get_json(c, RESTORES) == (200, {"restores": []})  # no job recorded
    assert run_restore_worker(c) == []  # and none queued
    message: str = doc["message"]
    assert message.startswith(f"backup {BACKUP_ID} cannot be restored: ")
    return message


def test_a_forged_dump_with_a_matching_manifest_is_refused_before_a_job_exists(api: Any) -> None:
    key, manifest = _manifest()
    dump = next(o for o in manifest["objects"] if o["role"] == "dump")
    forged = b"PGDMP forged by someone with the worker's S3 rights" * 1000
    _put(dump["key"], forged)
    dump.update(size=len(forged), sha256=hashlib.sha256(forged).hexdigest(), version_id=None)
    _put(key, json.dumps(manifest).encode())  # the old signature block kept: it no longer matches

    message = _refused(api, "shop_forged")
    assert "manifest signature does not verify: the manifest was forged or altered" in message
    assert "GET /targets/shop/backups" in message  # what to do instead


def test_an_altered_manifest_is_refused(api: Any) -> None:
    key, manifest = _manifest()
    manifest["row_counts"] = {table: 0 for table in manifest["row_counts"]}  # anything changed breaks the MAC
    _put(key, json.dumps(manifest).encode())
    assert "forged or altered" in _refused(api, "shop_altered")


def test_an_unsigned_manifest_is_refused_without_accept_unsigned_before(api: Any) -> None:
    key, manifest = _manifest()
    del manifest["signature"]
    _put(key, json.dumps(manifest).encode())
    message = _refused(api, "shop_unsigned")
    assert "has no signature" in message and "accept_unsigned_before is not set" in message


def test_a_genuine_signed_backup_is_accepted_and_restored(api: Any, pg: PostgresServer) -> None:
    """The check passes a manifest as the worker signed it (the same request the tests above refuse)."""
    try:
        r = post(api, RESTORES, {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "shop_signed"}})
        assert r.status_code == 202, r.body
        job = json.loads(r.body)
        assert run_restore_worker(api) == [{"restore_id": job["restore_id"], "status": "SUCCEEDED"}]
        assert pg.psql("SELECT count(*) FROM sales.orders", dbname="shop_signed") == "4000"
    finally:
        pg.psql('DROP DATABASE IF EXISTS "shop_signed" WITH (FORCE)')
