"""The point-in-time archive (`<prefix>wal/<target>/`, `<prefix>base/<target>/`) is written only by its target's WAL
stream task: the backup worker and the Fargate task (`bucket:write`) and the snapshot sweeper (`drills:evidence`) may
write their own roots only (stack/capabilities.py WORKER_ROOTS, archive_guard), with or without a settings.prefix. KMS
grants are for keys of this account only: snapshot copies under another account's key, the signing key's alias in
another account. Evaluated with the IAM evaluator of tests/reliability/test_restore_iam.py on keys the code makes."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.config import parse_config
from chalicelib.drills import model as drill_model
from chalicelib.drills.evidence import EvidenceStore
from chalicelib.errors import LifeboatError
from chalicelib.logical.catalog import Layout
from chalicelib.logical.ids import BackupId
from chalicelib.physical.names import label_key
from chalicelib.pitr.basebackup import MANIFEST, BaseLayout
from chalicelib.pitr.walnames import Gap, Segment, WalLayout
from stack import capabilities, names, policies
from stack.recovery_capabilities import wal_stream_policy
from tests.reliability.test_restore_iam import ACCOUNT, REGION, STAGES, Resource, authorized, policy

PREFIXES = ("", "pg/")
SLOT = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
ARCHIVE_WRITES = ("s3:PutObject", "s3:DeleteObject", "s3:PutObjectTagging", "s3:PutObjectRetention")
WORKER_WRITES = (*ARCHIVE_WRITES, "s3:PutObjectVersionTagging")
OTHER_ACCOUNT = "999999999999"
IAM_ROLE_POLICY_LIMIT = 10_240  # characters, whitespace not counted: a role's inline policies together


def bucket(stage: str) -> str:
    return f"{names.bucket_prefix(stage)}{ACCOUNT}-{REGION}"


def obj(stage: str, key: str) -> Resource:
    return Resource(f"arn:aws:s3:::{bucket(stage)}/{key}")


def writers(stage: str) -> dict[str, dict[str, Any]]:
    """The roles holding bucket:write: the backup worker's policy file and the Fargate task's role."""
    return {"backup_worker": policy(stage, "backup_worker"), "fargate_task": policies.task_policy(stage)}


def drill_record() -> drill_model.DrillRecord:
    drill_id = drill_model.new_drill_id(random.Random(7))  # noqa: S311 (a fixed id for the test)
    return drill_model.DrillRecord(drill_id=drill_id, target="shop", kind="logical", pick="latest", started_at=SLOT)


def worker_keys(prefix: str) -> list[str]:
    """What the backup worker and the Fargate task write, as chalicelib names it."""
    layout, bid = Layout(prefix), BackupId("shop", SLOT)
    whole_server = BackupId("shop", SLOT, database="wal")  # a database named like an archive root
    return [
        layout.dump_key(bid),
        layout.manifest_key(bid),
        layout.globals_key(bid),
        layout.dump_key(whole_server),
        layout.dump_key(whole_server, "directory") + "toc.dat",
        layout.failed_key(bid, SLOT),
        EvidenceStore(None, None, prefix).key(drill_record()),  # type: ignore[arg-type]
        label_key(prefix, "shop", SLOT),
    ]


def archive_keys(prefix: str) -> list[str]:
    """What a WAL stream task writes for target `shop`, and keys planted below its folders that a pattern naming a
    worker root would match (a gap record, a base whose id is a worker root's name)."""
    wal, base, segment = WalLayout(prefix, "shop"), BaseLayout(prefix, "shop"), Segment(1, 5, 16 * 1024 * 1024)
    return [
        wal.segment_key(segment),
        wal.partial_key(segment),
        wal.history_key(2),
        wal.gap_key(Gap(None, segment.name, "test")),
        base.folder("20261129T030000Z") + MANIFEST,
        base.folder("20261129T030000Z") + "base.tar.zst",
        f"{wal.gaps_prefix}logical/forged.json",
        f"{wal.root}00000001/logical/{segment.name}",
        base.folder("logical") + MANIFEST,
        base.folder("x/snapshots/y") + MANIFEST,
        base.folder("drills/a") + f"b_{drill_record().drill_id}.json",
        f"{base.root}failed/x.json",
    ]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("stage", STAGES)
def test_the_workers_write_their_own_roots(stage: str, prefix: str) -> None:
    for role, doc in writers(stage).items():
        for key in worker_keys(prefix):
            for action in WORKER_WRITES:
                assert authorized(doc, action, [obj(stage, key)]), f"{role} {action} {key}"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("stage", STAGES)
def test_the_workers_never_write_the_archive(stage: str, prefix: str) -> None:
    for role, doc in writers(stage).items():
        for key in archive_keys(prefix):
            for action in WORKER_WRITES:
                assert not authorized(doc, action, [obj(stage, key)]), f"{role} may {action} {key}"
            assert authorized(doc, "s3:GetObject", [obj(stage, key)]), f"{role} reads {key}"  # reads stay open


@pytest.mark.parametrize("stage", STAGES)
def test_only_the_worker_roots_are_writable(stage: str) -> None:
    """The roots by name, under both prefixes (the brief's list), and nothing outside them."""
    for role, doc in writers(stage).items():
        for key in ("logical/x", "pg/logical/x", "failed/x", "drills/x", "snapshots/x", "pg/snapshots/x"):
            for action in ARCHIVE_WRITES:
                assert authorized(doc, action, [obj(stage, key)]), f"{role} {action} {key}"
        for key in ("wal/shop/x", "pg/wal/shop/x", "base/shop/x", "pg/base/shop/x", "check/x", "x", "pg/x"):
            for action in ARCHIVE_WRITES:
                assert not authorized(doc, action, [obj(stage, key)]), f"{role} may {action} {key}"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("stage", STAGES)
def test_the_wal_task_still_writes_its_archive_and_the_sweeper_its_evidence(stage: str, prefix: str) -> None:
    task = wal_stream_policy(stage, "shop")
    for key in archive_keys(prefix)[:6]:
        assert authorized(task, "s3:PutObject", [obj(stage, key)]), key
    sweeper = policy(stage, "snapshot_sweeper")
    evidence = EvidenceStore(None, None, prefix).key(drill_record())  # type: ignore[arg-type]
    assert authorized(sweeper, "s3:PutObject", [obj(stage, evidence)])
    for key in archive_keys(prefix):  # `*drills/*_d-*.json` alone would reach base/shop/drills/a/b_d-....json
        assert not authorized(sweeper, "s3:PutObject", [obj(stage, key)]), key


def test_the_worker_roots_are_where_chalicelib_writes() -> None:
    for prefix in PREFIXES:
        roots = {key.removeprefix(prefix).split("/")[0] for key in worker_keys(prefix)}
        assert roots == set(capabilities.WORKER_ROOTS)
        assert {k.removeprefix(prefix).split("/")[0] for k in archive_keys(prefix)} == set(capabilities.ARCHIVE_ROOTS)
    assert set(capabilities.RESERVED_NAMES) == {"logical", "failed", "drills", "snapshots", "wal", "base", "check"}


def config_error(target: str = "shop", prefix: str = "") -> str | None:
    doc = {
        "settings": {"bucket": "acme-pg-backups", "prefix": prefix},
        "targets": [{"name": target, "connection": {"host": "db.internal", "user": "backup"}}],
    }
    try:
        parse_config(doc)
    except LifeboatError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("name", capabilities.RESERVED_NAMES)
def test_the_configuration_refuses_reserved_names(name: str) -> None:
    """The IAM patterns rely on it (capabilities.worker_objects): a target named `logical` would stream its WAL to
    wal/logical/..., a prefix `pg/logical/` would put the archive under a worker root."""
    assert config_error() is None
    assert config_error(target=name) is not None, f"a target named {name!r} is accepted"
    assert config_error(prefix=f"{name}/") is not None, f"prefix {name}/ is accepted"
    assert config_error(prefix=f"team/{name}/") is not None, f"prefix team/{name}/ is accepted"


def kms_key(account: str) -> Resource:
    return Resource(f"arn:aws:kms:{REGION}:{account}:key/1234abcd-12ab-34cd-56ef-1234567890ab", account=account)


SNAPSHOT_KEY_CALLS = (
    ("kms:GenerateDataKeyWithoutPlaintext", {"kms:ViaService": f"ec2.{REGION}.amazonaws.com"}),
    ("kms:ReEncryptTo", {"kms:ViaService": f"rds.{REGION}.amazonaws.com"}),
    ("kms:DescribeKey", {"kms:ViaService": f"rds.{REGION}.amazonaws.com"}),
    ("kms:CreateGrant", {"kms:GrantIsForAWSResource": "true"}),
)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("function", ["snapshot_sweeper", "restore_worker", "restore_sweeper", "backup_worker"])
def test_snapshot_keys_are_this_accounts_only(stage: str, function: str) -> None:
    """A copy under an attacker account's key (KmsKeyId), then shared to that account, is refused."""
    doc = policy(stage, function)
    for action, context in SNAPSHOT_KEY_CALLS:
        assert authorized(doc, action, [kms_key(ACCOUNT)], None, **context), action
        assert not authorized(doc, action, [kms_key(OTHER_ACCOUNT)], None, **context), action
        assert not authorized(doc, action, [kms_key(ACCOUNT)]), f"{action} without EC2/RDS"


@pytest.mark.parametrize("stage", STAGES)
def test_the_signing_key_is_this_accounts_only(stage: str) -> None:
    alias = {"kms:ResourceAliases": names.signing_key_alias(stage)}
    roles = {**writers(stage), "wal_task": wal_stream_policy(stage, "shop"), "api": policy(stage, "api_handler")}
    for role, doc in roles.items():
        action = "kms:VerifyMac" if role == "api" else "kms:GenerateMac"
        assert authorized(doc, action, [kms_key(ACCOUNT)], None, **alias), role
        assert not authorized(doc, action, [kms_key(OTHER_ACCOUNT)], None, **alias), f"{role}: another account's key"


def _size(doc: dict[str, Any]) -> int:
    return len(re.sub(r"\s", "", json.dumps(doc)))


@pytest.mark.parametrize("stage", STAGES)
def test_every_role_policy_fits_iam(stage: str) -> None:
    """IAM refuses a role whose inline policies exceed IAM_ROLE_POLICY_LIMIT characters (whitespace not counted):
    the deployment, not a test, would fail. Chalice attaches each file as its role's inline policy."""
    docs = {f: policy(stage, f) for f in policies.ACCESS}
    docs |= {"fargate_task": policies.task_policy(stage), "wal_task": wal_stream_policy(stage, "a" * 48)}
    sizes = {role: _size(doc) for role, doc in docs.items()}
    assert max(sizes.values()) <= IAM_ROLE_POLICY_LIMIT, sizes
    assert _size({"Statement": [capabilities.archive_guard()]}) < 1000


def test_the_configuration_names_the_same_reserved_names_as_the_policies() -> None:
    from chalicelib.config import RESERVED_NAMES

    assert set(RESERVED_NAMES) == set(capabilities.RESERVED_NAMES)
