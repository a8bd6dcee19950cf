"""The catalog's view of the point-in-time archive (chalicelib.pitr.catalog: `lifeboat list`, `status`, GET
/targets/{t}/backups) and `wal-status`'s replication login, against their IAM: the calls recorded on moto (a signed
base, WAL, a gap) are allowed to the API's role (`archive:list` + bucket:read) and to the operator's
OperatorRecoveryPolicy, and moved to another folder they are refused; the operator reads the database secrets under
the stack's SecretsPrefix and no other secret."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import boto3
import pytest

from chalicelib.adapters.kms import KmsMacKey
from chalicelib.adapters.s3 import S3Store
from chalicelib.pitr.catalog import read_wal_listing
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import Gap, WalLayout
from devstack.aws import MotoServer
from stack import names, policies
from stack.template.operators import operator_recovery_document
from tests.reliability.test_restore_iam import ACCOUNT, STAGES, Resource, authorized, policy
from tests.stack.test_integrity_iam import MODE, NOW, Call, CallRecorder, _as, allowed, put_base, resolved, seg

REGION = "eu-west-1"
PREFIX = "pg-lifeboat/prod/"  # the template's SecretsPrefix, as a deployment sets it


@pytest.fixture(scope="module", params=STAGES)
def listed(request: pytest.FixtureRequest, moto_server: MotoServer) -> tuple[str, set[Call]]:
    stage: str = request.param
    moto_server.reset()
    s3, kms = boto3.client("s3"), boto3.client("kms")
    bucket = f"{names.bucket_prefix(stage)}{ACCOUNT}-{s3.meta.region_name}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    store, sealer = S3Store(s3, bucket), Sealer(KmsMacKey(lambda: kms, key))
    put_base(store, sealer, NOW - timedelta(days=1), 1)
    archive = WalArchive(store, WalLayout("", "shop"), sealer=sealer)
    for number in (1, 2, 3):
        archive.put_segment(seg(number), bytes([number]) * 1024 * 1024)
    archive.record_gap(Gap(seg(3).name, seg(5).name, "slot dropped"))
    recorder = CallRecorder()
    for client in (s3, kms):
        client.meta.events.register("before-parameter-build", recorder.on_params)
    with _as(recorder, "listing"):
        listing = read_wal_listing(store, "", "shop", sealer)
    assert len(listing.bases) == 1 and listing.window["broken"] is True
    return stage, recorder.calls["listing"]


def roles(stage: str) -> dict[str, dict[str, Any]]:
    return {"api_handler": policy(stage, "api_handler"), "operator": resolved(operator_recovery_document(stage), MODE)}


def test_the_api_and_the_operator_may_list_the_archive(listed: tuple[str, set[Call]]) -> None:
    stage, calls = listed
    actions = {c.action for c in calls}
    assert {"s3:ListBucket", "s3:ListBucketVersions", "s3:GetObjectVersion", "kms:VerifyMac"} <= actions, actions
    for role, doc in roles(stage).items():
        refused = [c for c in calls if not allowed(doc, c, names.signing_key_alias(stage))]
        assert refused == [], f"{role} ({stage}) may not make these calls: {refused}"


def test_the_api_lists_versions_of_base_manifests_only(listed: tuple[str, set[Call]]) -> None:
    stage, calls = listed
    api = roles(stage)["api_handler"]
    versions = [c for c in calls if c.action == "s3:ListBucketVersions"]
    assert versions and all(dict(c.context)["s3:prefix"].startswith("base/shop/") for c in versions)
    for call in versions:
        assert allowed(api, call.moved("base/shop/", "team/base/billing/"))  # any target, under a settings.prefix
        for elsewhere in ("wal/shop/", "drills/shop/", "check/shop/"):  # (logical/, snapshots/: other grants)
            assert not allowed(api, call.moved("base/shop/", elsewhere)), elsewhere
    # Nobody else gained it but the pruner, which reads base manifests at their first version too (archive:prune).
    for function in set(policies.ACCESS) - {"api_handler", "snapshot_pruner"}:
        doc = policy(stage, function)
        assert not any(allowed(doc, c) for c in versions if "base/" in dict(c.context)["s3:prefix"]), function


def _secret_allowed(doc: dict[str, Any], arn: str) -> bool:
    account = arn.split(":")[4]
    return authorized(doc, "secretsmanager:GetSecretValue", [Resource(arn, account=account)], None)


def _with_prefix(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The template's policy with its intrinsics resolved as CloudFormation would in REGION and ACCOUNT."""
    text = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{prefix}*"

    def sub(value: Any) -> Any:
        if isinstance(value, dict) and "Fn::Sub" in value and "secretsmanager" in str(value["Fn::Sub"]):
            return text
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return [sub(v) for v in value] if isinstance(value, list) else value

    return dict(sub(doc))


@pytest.mark.parametrize("stage", STAGES)
def test_wal_status_may_read_the_database_secrets_and_no_other(stage: str) -> None:
    doc = _with_prefix(resolved(operator_recovery_document(stage), MODE), PREFIX)
    secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{PREFIX}shop-replication-AbCdEf"
    assert _secret_allowed(doc, secret)
    assert not _secret_allowed(doc, f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:other/shop-AbCdEf")
    assert not _secret_allowed(doc, f"arn:aws:secretsmanager:{REGION}:999999999999:secret:{PREFIX}shop-AbCdEf")
    grants = [s for s in doc["Statement"] if "secretsmanager:GetSecretValue" in str(s.get("Action"))]
    assert [s["Sid"] for s in grants] == ["ReplicationPasswords"]
    assert grants[0]["Action"] == "secretsmanager:GetSecretValue"  # nothing else of Secrets Manager
    assert policies.DATABASE_PASSWORDS in policies.database_policy()["Statement"]  # the functions' same pattern
