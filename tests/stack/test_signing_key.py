"""The manifest signing key (chalicelib.logical.signing): an HMAC key the stack creates, retained, administered only
through the account's IAM; the backup worker may only GenerateMac with it, the restore worker and the API only
VerifyMac, the Fargate task (which runs both) those two; nobody any other action on it, and no function any key
administration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stack import names
from stack.policies import ACCESS, function_policy, task_policy
from tests.stack.conftest import Packaged
from tests.stack.test_immutable import grants, role_statements
from tests.stack.test_template import as_list, policy_files, statements

KEY_ADMIN = (
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:DisableKey",
    "kms:EnableKey",
    "kms:PutKeyPolicy",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:CreateGrant",
    "kms:RetireGrant",
    "kms:RevokeGrant",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateKeyDescription",
    "kms:ImportKeyMaterial",
    "kms:DeleteImportedKeyMaterial",
)
MAC = ("kms:GenerateMac", "kms:VerifyMac")


def _signing(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [st for st in statements(policy) if any(a in MAC for a in as_list(st["Action"]))]


def _mac_actions(policy: dict[str, Any]) -> set[str]:
    return {a for st in _signing(policy) for a in as_list(st["Action"])}


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_who_signs_and_who_verifies(stage: str) -> None:
    # The backup worker signs, and verifies too since it runs restore drills through the one restore path:
    # verifying gives it nothing it lacks (it can already make a valid signature).
    assert _mac_actions(function_policy(stage, "backup_worker")) == set(MAC)
    assert _mac_actions(function_policy(stage, "restore_worker")) == {"kms:VerifyMac"}
    assert _mac_actions(function_policy(stage, "api_handler")) == {"kms:VerifyMac"}  # refuses a forged one at once
    assert _mac_actions(task_policy(stage)) == set(MAC)
    # The snapshot sweeper signs the evidence of the drills it finishes and checks it (the overdue check).
    assert _mac_actions(function_policy(stage, "snapshot_sweeper")) == set(MAC)
    # The pruner believes only signed bases when it prunes the point-in-time archive (a forged newer one must not push
    # a real one out of keep_last): it verifies, never signs.
    assert _mac_actions(function_policy(stage, "snapshot_pruner")) == {"kms:VerifyMac"}
    verifiers = {"backup_worker", "restore_worker", "api_handler", "snapshot_sweeper", "snapshot_pruner"}
    for function in set(ACCESS) - verifiers:
        assert not _mac_actions(function_policy(stage, function)), function
    for st in _signing(function_policy(stage, "backup_worker")) + _signing(task_policy(stage)):
        assert st["Condition"] == {  # the alias, in this account only (an alias names a key only in its account)
            "ForAnyValue:StringEquals": {"kms:ResourceAliases": names.signing_key_alias(stage)},
            "StringEquals": {"aws:ResourceAccount": "${aws:PrincipalAccount}"},
        }


@pytest.mark.parametrize("action", KEY_ADMIN)
def test_no_function_administers_a_key(action: str) -> None:
    for path in policy_files():
        for st in statements(json.loads(path.read_text())):
            if st["Sid"].startswith("SnapshotKey") and action == "kms:CreateGrant":
                continue  # EBS/RDS copies and restores: grants for AWS resources only (tests/stack/test_template.py)
            assert not grants(st, action), f"{path.name}: {st['Sid']} grants {action}"
    for stage in ("dev", "prod"):
        for st in statements(task_policy(stage)):
            assert not grants(st, action), f"task: {st['Sid']} grants {action}"


@pytest.mark.parametrize("action", KEY_ADMIN)
def test_the_backup_worker_administers_no_key(action: str) -> None:
    for stage in ("dev", "prod"):
        for st in statements(function_policy(stage, "backup_worker")):
            if st["Sid"].startswith("SnapshotKey") and action == "kms:CreateGrant":
                continue  # snapshot drills restore encrypted snapshots: grants for AWS resources only
            assert not grants(st, action), f"{st['Sid']} grants {action}"


def test_no_role_of_the_template_administers_the_signing_key(packaged: Packaged) -> None:
    for name, st in role_statements(packaged):
        for action in KEY_ADMIN:
            if st.get("Sid", "").startswith("SnapshotKey") and action == "kms:CreateGrant":
                continue
            assert not grants(st, action), f"{name}: {st.get('Sid')} grants {action}"


def test_the_stack_creates_the_signing_key(packaged: Packaged) -> None:
    resources = packaged.template["Resources"]
    key = resources["ManifestSigningKey"]
    props = key["Properties"]
    assert (props["KeySpec"], props["KeyUsage"]) == ("HMAC_256", "GENERATE_VERIFY_MAC")
    assert key["DeletionPolicy"] == "Retain" and key["UpdateReplacePolicy"] == "Retain"
    assert props["KeyPolicy"] == resources["BackupKey"]["Properties"]["KeyPolicy"]  # the account, through IAM
    alias = resources["ManifestSigningKeyAlias"]["Properties"]
    assert alias["TargetKeyId"] == {"Ref": "ManifestSigningKey"}
    assert alias["AliasName"] == {"Fn::Sub": names.signing_key_alias("${Stage}")}
    assert packaged.template["Outputs"]["SigningKeyArn"]["Value"] == {"Fn::GetAtt": ["ManifestSigningKey", "Arn"]}
