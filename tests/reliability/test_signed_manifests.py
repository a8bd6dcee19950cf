"""Signed manifests (chalicelib.logical.signing) against the moto server: a backup of the ~26 MB database is signed
with a KMS HMAC key as it is written; `lifeboat verify` re-reads it and passes; a forged dump with a matching forged
manifest, written with nothing but the backup worker's ordinary S3 rights, is refused by a restore (before any
database is created) and by `lifeboat verify`; an unsigned manifest is believed only when it was stored before
settings.accept_unsigned_before."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from chalicelib import cli, wiring
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack
from devstack.postgres import PostgresServer
from tests.reliability.conftest import ConfigWriter

SLOT = datetime(2026, 11, 27, 3, tzinfo=UTC)
ALIAS = "alias/pg-lifeboat-test-manifests"


def _signing_key() -> str:
    kms = boto3.client("kms")
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=ALIAS, TargetKeyId=key)
    return key


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


@pytest.fixture
def signed(aws: LocalStack, big_db: str, write_lifeboat_config: ConfigWriter) -> Callable[..., str]:
    """configure(**settings) -> the id of a signed backup of the big database (written once, on the first call)."""
    made: list[str] = []

    def configure(**settings: object) -> str:
        settings = {"signing_key_id": ALIAS, **settings}
        write_lifeboat_config(aws, database=big_db, compression="gzip:1", settings=settings)
        if not made:
            outcome = run_logical_backup(wiring.backup_services(), "shop", SLOT)
            made.append(outcome.manifest.backup_id)
        return made[0]

    _signing_key()
    return configure


def _manifest_key(backup_id: str) -> str:
    return wiring.catalog(wiring.load_config()).layout.manifest_key(BackupId.parse(backup_id))


def _read_json(key: str) -> dict:
    store = wiring.catalog(wiring.load_config()).store
    return json.loads(store.get_bytes(key))


def _write_json(key: str, document: dict) -> None:
    """As the worker would: its own S3Store (PutObject, its ordinary rights), a new current version."""
    store = wiring.catalog(wiring.load_config()).store
    store.put_bytes(key, json.dumps(document, indent=2).encode(), content_type="application/json")


def _restore_refused(pg: PostgresServer, backup_id: str, database: str) -> str:
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stderr", err)
        code = cli.main(["restore", backup_id, "--database", database], out=io.StringIO())
    assert code == 1, err.getvalue()
    assert pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{database}'") == "0"  # nothing created
    return err.getvalue()


def test_a_backup_is_signed_when_written_and_verifies(signed: Callable[..., str]) -> None:
    backup_id = signed()
    manifest = _read_json(_manifest_key(backup_id))
    sig = manifest["signature"]
    assert sig["algorithm"] == "HMAC_SHA_256" and sig["canonicalization"] == "json-sorted-keys-compact"
    assert sig["value"] and sig["key_id"]
    assert manifest["size"] > 5 * 1024 * 1024  # multi-MiB, multipart with 6 MiB parts

    code, text = _run("verify", backup_id)
    assert code == 0, text
    assert text.count("OK ") == len(manifest["objects"])
    assert text.splitlines()[-1].startswith(f"VERIFIED {backup_id}")

    code, text = _run("verify", backup_id, "--json")
    report = json.loads(text)
    assert code == 0
    assert report["status"] == "VERIFIED" and report["backup_id"] == backup_id
    assert report["signature"]["status"] == "VALID"
    assert {o["key"] for o in report["objects"]} == {o["key"] for o in manifest["objects"]}
    assert all(o["ok"] and o["sha256_read"] == o["sha256"] for o in report["objects"])


def test_a_forged_dump_with_a_matching_manifest_is_refused(signed: Callable[..., str], pg: PostgresServer) -> None:
    backup_id = signed()
    key = _manifest_key(backup_id)
    manifest = _read_json(key)
    dump = next(o for o in manifest["objects"] if o["role"] == "dump")
    forged_body = b"PGDMP forged by someone with the worker's S3 rights" * 100_000  # ~5 MB
    store = wiring.catalog(wiring.load_config()).store
    store.put_bytes(dump["key"], forged_body)
    # One PUT: a plain SHA-256 and no parts (the real dump's part digests would give the forgery away).
    dump.update(size=len(forged_body), sha256=hashlib.sha256(forged_body).hexdigest(), version_id=None, parts=[])
    _write_json(key, manifest)  # the old signature block kept: it no longer matches

    message = _restore_refused(pg, backup_id, "forged_restore")
    assert "manifest signature does not verify: the manifest was forged or altered" in message

    code, text = _run("verify", backup_id, "--json")
    report = json.loads(text)
    assert code == 1
    assert report["status"] == "FAILED" and report["signature"]["status"] == "INVALID"
    assert all(o["ok"] for o in report["objects"])  # sizes and SHA-256 agree: only the signature tells
    code, text = _run("verify", backup_id)
    assert code == 1 and text.splitlines()[-1].startswith(f"FAILED {backup_id}")


def test_a_changed_object_fails_verify_line_by_line(signed: Callable[..., str]) -> None:
    backup_id = signed()
    dump = next(o for o in _read_json(_manifest_key(backup_id))["objects"] if o["role"] == "dump")
    wiring.catalog(wiring.load_config()).store.put_bytes(dump["key"], b"x" * dump["size"])  # same size
    code, text = _run("verify", backup_id)
    assert code == 1
    assert f"FAILED dump     {dump['key']}" in text and "SHA-256 differs" in text


def test_an_unsigned_manifest_is_refused_unless_stored_before_the_cutoff(
    signed: Callable[..., str], pg: PostgresServer
) -> None:
    backup_id = signed()
    key = _manifest_key(backup_id)
    manifest = _read_json(key)
    del manifest["signature"]
    _write_json(key, manifest)  # as a manifest written before signing existed

    message = _restore_refused(pg, backup_id, "unsigned_restore")
    assert "has no signature" in message and "accept_unsigned_before is not set" in message
    assert _run("verify", backup_id)[0] == 1

    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    signed(accept_unsigned_before=past)  # the cutoff is before it was stored: refused
    code, text = _run("verify", backup_id, "--json")
    assert code == 1 and json.loads(text)["signature"]["status"] == "INVALID"

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    signed(accept_unsigned_before=future)  # stored (and finished) before the cutoff: believed
    code, text = _run("verify", backup_id, "--json")
    assert code == 0, text
    assert json.loads(text)["signature"]["status"] == "UNSIGNED_ACCEPTED"


def test_bad_input_exits_2(signed: Callable[..., str]) -> None:
    signed()
    assert _run("verify", "not-an-id")[0] == 2
    assert _run("verify", "logical:shop:20200101T000000Z")[0] == 2
