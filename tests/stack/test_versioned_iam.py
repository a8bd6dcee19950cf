"""Versioned S3 calls, bounded locks and this account's resources, against the generated IAM policies.

The calls are real (S3Store against moto with a versioned, Object Lock bucket), recorded and mapped to IAM actions the
way tests/reliability/support.py maps them for the least-privilege test (a versionId makes a HEAD/GET
s3:GetObjectVersion and a tagging s3:PutObjectVersionTagging), then evaluated per role with the evaluator of
tests/reliability/test_restore_iam.py, which knows Deny, StringNotEquals, NumericLessThanEquals and
${aws:PrincipalAccount}.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from chalicelib.adapters.s3 import S3Store
from chalicelib.config import RetentionPolicy
from chalicelib.drills.evidence import EVIDENCE_LOCK_DAYS
from chalicelib.scheduling.retention import KEEP_LOCK_DAYS, class_days
from devstack.aws import MotoServer
from stack import capabilities, policies
from stack.recovery_capabilities import wal_stream_policy
from tests.reliability.support import OperationRecorder, iam_actions, names_a_version
from tests.reliability.test_restore_iam import ACCOUNT, REGION, STAGES, Resource, arn, authorized, policy

KEY = "logical/shop/2026/11/29/20261129T030000Z/database.dump"
UNTIL = datetime(2027, 1, 1, tzinfo=UTC)  # moto checks nothing of it against its clock


def bucket_object(stage: str, key: str = KEY, account: str = ACCOUNT, name: str | None = None) -> Resource:
    bucket = name or f"pg-lifeboat-{stage}-{account}-{REGION}"
    return Resource(f"arn:aws:s3:::{bucket}/{key}", account=account)


@pytest.fixture(scope="module")
def recorded(moto_server: MotoServer) -> dict[str, set[str]]:
    """The IAM actions of the keep pass's and a restore's calls on one version (S3Store, as the app makes them)."""
    moto_server.reset()
    client = boto3.client("s3")
    region = client.meta.region_name
    bucket = "lifeboat-versioned"
    where: Any = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True, **where)
    version = client.put_object(Bucket=bucket, Key=KEY, Body=b"dump")["VersionId"]
    client.put_object(Bucket=bucket, Key=KEY, Body=b"a newer version")  # the manifest's is no longer the current one
    recorder = OperationRecorder()
    client.meta.events.register("before-call", recorder.on_call)
    store = S3Store(client, bucket)
    with recorder.handler("keep"):  # chalicelib.logical.protect: HEAD, tag and lock the manifest's version
        assert store.head(KEY, version_id=version) is not None
        store.put_tags(KEY, {"retention": "keep"}, version_id=version)
        store.lock(KEY, "GOVERNANCE", UNTIL, version_id=version)
    with recorder.handler("restore"):  # chalicelib.logical.restore and verify: HEAD and read the manifest's version
        assert store.head(KEY, version_id=version) is not None
        body, _ = store.open_stream(KEY, version)
        assert body.read() == b"dump"
    return recorder.actions


def test_versioned_calls_map_to_the_version_actions(recorded: dict[str, set[str]]) -> None:
    assert recorded["keep"] == {"s3:GetObjectVersion", "s3:PutObjectVersionTagging", "s3:PutObjectRetention"}
    assert recorded["restore"] == {"s3:GetObjectVersion"}
    assert iam_actions("s3", "HeadObject", {}) == {"s3:GetObject"}
    assert iam_actions("s3", "DeleteObject", {}, versioned=True) == {"s3:DeleteObjectVersion"}
    assert iam_actions("s3", "PutObject", {"x-amz-object-lock-mode": "COMPLIANCE"}) == {
        "s3:PutObject",
        "s3:PutObjectRetention",
    }
    assert names_a_version({"query_string": {"versionId": "v1"}})
    assert names_a_version({"url": "https://b.s3.amazonaws.com/k?tagging&versionId=v1"})
    assert not names_a_version({"query_string": {}, "url": "https://b.s3.amazonaws.com/k?tagging"})


def roles(stage: str) -> dict[str, dict[str, Any]]:
    return {
        "backup_worker": policy(stage, "backup_worker"),
        "restore_worker": policy(stage, "restore_worker"),
        "api_handler": policy(stage, "api_handler"),
        "fargate_task": policies.task_policy(stage),
    }


@pytest.mark.parametrize("stage", STAGES)
def test_each_role_may_make_its_versioned_calls(recorded: dict[str, set[str]], stage: str) -> None:
    docs, obj = roles(stage), bucket_object(stage)
    # The keep pass runs where backups complete: the backup worker and the Fargate task.
    for role in ("backup_worker", "fargate_task"):
        for action in recorded["keep"]:
            assert authorized(docs[role], action, [obj]), (role, action)
    # Restores, verify and logical drills read by version: the restore worker, the task, the backup worker (drills),
    # and the API (it may read a manifest's objects when it checks a request).
    for role in docs:
        for action in recorded["restore"]:
            assert authorized(docs[role], action, [obj]), (role, action)
    for role in ("restore_worker", "api_handler"):  # readers tag and lock nothing
        for action in ("s3:PutObjectVersionTagging", "s3:PutObjectRetention", "s3:DeleteObjectVersion"):
            assert not authorized(docs[role], action, [obj]), (role, action)
    for role in docs:  # no role removes a version
        assert not authorized(docs[role], "s3:DeleteObjectVersion", [obj]), role


@pytest.mark.parametrize("stage", STAGES)
def test_only_this_accounts_buckets_of_this_stage(stage: str) -> None:
    worker = policy(stage, "backup_worker")
    assert authorized(worker, "s3:PutObject", [bucket_object(stage)])
    other_account = "999988887777"
    # a bucket named for this account, created by another one (bucket names are global), and one named for another
    assert not authorized(worker, "s3:PutObject", [bucket_object(stage, account=other_account)])
    squatted = bucket_object(stage, name=f"pg-lifeboat-{stage}-{ACCOUNT}-us-east-2")
    squatted.account = other_account
    assert not authorized(worker, "s3:PutObject", [squatted])
    assert not authorized(worker, "s3:GetObject", [bucket_object(f"{stage}-eu")]), "another stage's bucket"
    key = Resource(f"arn:aws:kms:{REGION}:{other_account}:key/k", account=other_account)
    context = {
        "kms:ViaService": f"s3.{REGION}.amazonaws.com",
        "kms:EncryptionContext:aws:s3:arn": bucket_object(stage).arn,
    }
    assert authorized(
        worker, "kms:GenerateDataKey", [Resource(f"arn:aws:kms:{REGION}:{ACCOUNT}:key/k")], None, **context
    )
    assert not authorized(worker, "kms:GenerateDataKey", [key], None, **context)


def lock(days: float, mode: str = "GOVERNANCE") -> dict[str, str]:
    return {"s3:object-lock-mode": mode, "s3:object-lock-remaining-retention-days": str(days)}


def with_stack_mode(doc: dict[str, Any], mode: str) -> dict[str, Any]:
    """The role's policy plus the template's lock-mode Deny (policies.database_policy), ObjectLockMode = mode."""
    deny = {**policies.LOCK_IN_THE_STACKS_MODE_ONLY, "Condition": {"StringNotEquals": {"s3:object-lock-mode": mode}}}
    return {**doc, "Statement": [*doc["Statement"], deny]}


@pytest.mark.parametrize("stage", STAGES)
def test_locks_are_bounded_in_length_and_mode(stage: str) -> None:
    century = 100 * 366
    lockers = {
        "backup_worker": (policy(stage, "backup_worker"), bucket_object(stage)),
        "fargate_task": (policies.task_policy(stage), bucket_object(stage)),
        "wal_task": (
            wal_stream_policy(stage, "shop"),
            bucket_object(stage, "wal/shop/00000001/0000000100000000000000A1"),
        ),
        "snapshot_sweeper": (policy(stage, "snapshot_sweeper"), bucket_object(stage, "drills/shop/2026/x_d-1.json")),
    }
    assert "LockOnlyInTheStacksMode" in {st.get("Sid") for st in policies.database_policy()["Statement"]}
    for role, (doc, obj) in lockers.items():
        assert policies.needs(role, "database") or role.endswith("_task"), f"{role} lacks the lock-mode Deny"
        assert authorized(doc, "s3:PutObjectRetention", [obj], None, **lock(30)), role
        assert authorized(
            doc, "s3:PutObjectRetention", [obj], None, **lock(capabilities.MAX_LOCK_DAYS, "COMPLIANCE")
        ), role
        assert not authorized(doc, "s3:PutObjectRetention", [obj], None, **lock(capabilities.MAX_LOCK_DAYS + 1)), role
        assert not authorized(doc, "s3:PutObjectRetention", [obj], None, **lock(10 * century, "COMPLIANCE")), role
        governed = with_stack_mode(doc, "GOVERNANCE")
        assert authorized(governed, "s3:PutObjectRetention", [obj], None, **lock(30)), role
        assert not authorized(governed, "s3:PutObjectRetention", [obj], None, **lock(30, "COMPLIANCE")), role
        assert not authorized(with_stack_mode(doc, "NONE"), "s3:PutObjectRetention", [obj], None, **lock(30)), role
    sweeper = policy(stage, "snapshot_sweeper")
    snapshot = Resource(arn("ec2", "snapshot", "snap-0a"), {"lifeboat:managed": "true"})
    for days, allowed in ((30, True), (capabilities.MAX_LOCK_DAYS, True), (10 * century, False), (29, False)):
        ok = authorized(sweeper, "ec2:LockSnapshot", [snapshot], None, **{"ec2:SnapshotLockDuration": str(days)})
        assert ok is allowed, days


def test_the_bound_is_the_longest_lock_the_configuration_can_ask_for() -> None:
    """MAX_LOCK_DAYS: RetentionPolicy at every field's upper limit, its longest class, plus two days of rounding."""
    limits: dict[str, Any] = {}
    for name in ("daily_days", "weekly_weeks", "monthly_months", "yearly_years", "ondemand_days"):
        limits[name] = next(m.le for m in RetentionPolicy.model_fields[name].metadata if hasattr(m, "le"))
    longest = max([*class_days(RetentionPolicy(**limits)).values(), KEEP_LOCK_DAYS, EVIDENCE_LOCK_DAYS])
    assert longest + 2 == capabilities.MAX_LOCK_DAYS
