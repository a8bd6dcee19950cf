"""The optional second-account vault (stack/template/vault.py): with VaultBucketArn, VaultAccountId and VaultKmsKeyArn
the backup bucket replicates every object of its prefix to the vault bucket (Object Lock retention and tags with it,
SSE-KMS objects encrypted again with the vault's key, replicas owned by the vault account, no delete markers), through
a role that may do that and nothing else; without them the template has neither. The template is one document for
both: the parameters decide through the condition HasVault, evaluated here as CloudFormation would."""

from __future__ import annotations

import copy
import fnmatch
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.stack.conftest import REPO, Packaged, packaging_env
from tests.stack.test_immutable import FORBIDDEN, grants
from tests.stack.test_template import as_list, cfn_lint, statements

VAULT = {
    "VaultBucketArn": "arn:aws:s3:::acme-lifeboat-vault",
    "VaultAccountId": "999988887777",
    "VaultKmsKeyArn": "arn:aws:kms:eu-central-1:999988887777:key/1234abcd-12ab-34cd-56ef-1234567890ab",
}
ROLE = "VaultReplicationRole"
SOURCE = "arn:aws:s3:::pg-lifeboat-prod-123456789012-eu-west-1"
STACK_KEY = "arn:aws:kms:eu-west-1:123456789012:key/stack-key"
PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": "123456789012", "AWS::Region": "eu-west-1", "Stage": "prod"}
NO_VALUE = object()


class Deployed:
    """The template as CloudFormation would create it for given parameter values: conditions evaluated, Fn::If
    resolved, Refs to parameters and Fn::Sub/Fn::Join replaced by their values (the stack's key: STACK_KEY)."""

    def __init__(self, template: dict[str, Any], **overrides: str) -> None:
        self.values = {name: p.get("Default", "") for name, p in template["Parameters"].items()}
        self.values.update(PSEUDO, **overrides)
        self.conditions: dict[str, bool] = {}
        for name in template["Conditions"]:
            self.condition(template, name)
        self.resources = {
            name: self.resolve(copy.deepcopy(r))
            for name, r in template["Resources"].items()
            if self.conditions.get(r.get("Condition", ""), True)
        }

    def condition(self, template: dict[str, Any], name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.resolve(template["Conditions"][name], template))
        return self.conditions[name]

    def resolve(self, node: Any, template: dict[str, Any] | None = None) -> Any:
        if isinstance(node, list):
            return [v for v in (self.resolve(x, template) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        fn = next(iter(node), "")
        if len(node) != 1 or not (fn in ("Ref", "Condition") or fn.startswith("Fn::")):
            return {k: v for k, v in ((k, self.resolve(v, template)) for k, v in node.items()) if v is not NO_VALUE}
        arg = node[fn]
        if fn == "Ref":
            if arg == "AWS::NoValue":
                return NO_VALUE
            return self.values.get(arg, node)  # a resource's Ref stays as it is
        if fn == "Condition":
            assert template is not None
            return self.condition(template, arg)
        if fn == "Fn::Equals":
            left, right = (self.resolve(a, template) for a in arg)
            return str(left) == str(right)
        if fn == "Fn::Not":
            return not self.resolve(arg[0], template)
        if fn == "Fn::And":
            return all(self.resolve(a, template) for a in arg)
        if fn == "Fn::Or":
            return any(self.resolve(a, template) for a in arg)
        if fn == "Fn::If":
            return self.resolve(arg[1] if self.conditions[arg[0]] else arg[2], template)
        if fn == "Fn::Sub" and isinstance(arg, str):
            for name, value in self.values.items():
                arg = arg.replace("${" + name + "}", str(value))
            return arg
        if fn == "Fn::Join":
            parts = self.resolve(arg[1], template)
            return arg[0].join(str(p) for p in parts) if all(isinstance(p, str) for p in parts) else node
        if fn == "Fn::GetAtt" and arg == ["BackupKey", "Arn"]:
            return STACK_KEY
        return {fn: self.resolve(arg, template)}


def _build(out: Path, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "stack.build_template", "--stage", "prod", "--resources-only", "--out", str(out)]
    subprocess.run([*cmd, *extra], cwd=REPO, env=packaging_env(), check=True, capture_output=True, timeout=120)
    template: dict[str, Any] = json.loads(out.read_text())
    return template


@pytest.fixture(scope="module")
def template(resources_only: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(resources_only.read_text())
    return loaded


def _rule(deployed: Deployed) -> dict[str, Any]:
    config = deployed.resources["BackupBucket"]["Properties"]["ReplicationConfiguration"]
    assert len(config["Rules"]) == 1
    rule: dict[str, Any] = config["Rules"][0]
    return rule


def test_without_the_vault_parameters_there_is_no_replication(template: dict[str, Any]) -> None:
    for name in VAULT:
        assert template["Parameters"][name]["Default"] == ""
    off = Deployed(template)
    assert off.conditions["HasVault"] is False
    assert ROLE not in off.resources
    assert "ReplicationConfiguration" not in off.resources["BackupBucket"]["Properties"]
    # All three or none: a bucket without its account or key is no vault (and no half-made replication rule).
    for missing in VAULT:
        partial = Deployed(template, **{**VAULT, missing: ""})
        assert partial.conditions["HasVault"] is False and ROLE not in partial.resources, missing


def test_with_the_vault_every_object_of_the_prefix_is_replicated_as_the_brief_says(template: dict[str, Any]) -> None:
    on = Deployed(template, **VAULT)
    assert on.conditions["HasVault"] is True and ROLE in on.resources
    config = on.resources["BackupBucket"]["Properties"]["ReplicationConfiguration"]
    assert config["Role"] == {"Fn::GetAtt": [ROLE, "Arn"]}
    rule = _rule(on)
    assert rule["Status"] == "Enabled" and rule["Filter"] == {"Prefix": ""}  # no settings prefix: the whole bucket
    assert rule["DeleteMarkerReplication"] == {"Status": "Disabled"}
    assert rule["SourceSelectionCriteria"] == {"SseKmsEncryptedObjects": {"Status": "Enabled"}}
    assert rule["Destination"] == {
        "Bucket": VAULT["VaultBucketArn"],
        "Account": VAULT["VaultAccountId"],
        "AccessControlTranslation": {"Owner": "Destination"},
        "EncryptionConfiguration": {"ReplicaKmsKeyID": VAULT["VaultKmsKeyArn"]},
    }
    # Object Lock and versioning stay what they are: replication needs versioning, the vault gets the locks.
    props = on.resources["BackupBucket"]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["ObjectLockConfiguration"] == {"ObjectLockEnabled": "Enabled"}


def test_the_settings_prefix_is_what_is_replicated(tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"bucket": "pg-lifeboat-prod-123456789012-eu-west-1", "prefix": "pg/"}))
    built = _build(tmp_path / "stack.json", "--settings", str(settings))
    assert _rule(Deployed(built, **VAULT))["Filter"] == {"Prefix": "pg/"}


def _allowed(deployed: Deployed) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(action, resources, condition) for every action the replication role may use."""
    role = deployed.resources[ROLE]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]
    found = []
    for st in statements(role["Policies"]):
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st, st
        for action in as_list(st["Action"]):
            found.append((action, as_list(st["Resource"]), st.get("Condition", {})))
    return found


def test_the_replication_role_has_least_privilege(template: dict[str, Any]) -> None:
    allowed = _allowed(Deployed(template, **VAULT))
    by_action = {action: (resources, condition) for action, resources, condition in allowed}
    assert len(by_action) == len(allowed), "each action granted once"
    source_objects = [f"{SOURCE}/*"]
    vault_objects = [f"{VAULT['VaultBucketArn']}/*"]
    expected = {
        "s3:GetReplicationConfiguration": [SOURCE],
        "s3:ListBucket": [SOURCE],
        "s3:GetObjectVersionForReplication": source_objects,
        "s3:GetObjectVersionAcl": source_objects,
        "s3:GetObjectVersionTagging": source_objects,
        "s3:GetObjectRetention": source_objects,
        "s3:GetObjectLegalHold": source_objects,
        "s3:ReplicateObject": vault_objects,
        "s3:ReplicateTags": vault_objects,
        "s3:ObjectOwnerOverrideToBucketOwner": vault_objects,
        "kms:Decrypt": [STACK_KEY],
        "kms:Encrypt": [VAULT["VaultKmsKeyArn"]],
    }
    assert {a: r for a, (r, _) in by_action.items()} == expected
    assert all("*" not in action for action in by_action)
    # The keys only through S3, for the two buckets (their ARN, or an object's, is the encryption context).
    assert by_action["kms:Decrypt"][1] == {
        "StringLike": {
            "kms:ViaService": "s3.eu-west-1.amazonaws.com",
            "kms:EncryptionContext:aws:s3:arn": [SOURCE, f"{SOURCE}/*"],
        }
    }
    vault = VAULT["VaultBucketArn"]
    assert by_action["kms:Encrypt"][1] == {
        "StringLike": {
            "kms:ViaService": "s3.*.amazonaws.com",
            "kms:EncryptionContext:aws:s3:arn": [vault, f"{vault}/*"],
        }
    }


@pytest.mark.parametrize(
    "action",
    [
        *FORBIDDEN,
        "s3:ReplicateDelete",
        "s3:DeleteObject",
        "s3:PutObject",
        "s3:GetObject",
        "s3:PutObjectRetention",
        "kms:GenerateDataKey",
        "kms:ReEncryptFrom",
        "s3:PutReplicationConfiguration",
    ],
)
def test_the_replication_role_cannot(template: dict[str, Any], action: str) -> None:
    """Not delete a replica (nor replicate a deletion), not write to nor read the data of the backup bucket as a
    client would, not change a lock, not use the keys beyond one direction each."""
    on = Deployed(template, **VAULT)
    granted = [st for st in statements(on.resources[ROLE]["Properties"]["Policies"]) if grants(st, action)]
    assert granted == [], f"{action}: {granted}"
    assert not any(fnmatch.fnmatchcase(action, a) for a, _, _ in _allowed(on))


def test_the_template_with_the_vault_is_cfn_lint_clean(template: dict[str, Any], tmp_path: Path) -> None:
    """cfn-lint evaluates each parameter's default: with the vault's values as defaults it checks the HasVault branch
    (the replication rule, the role, its policy's ARNs) as deployed. Neither errors nor warnings."""
    with_vault = copy.deepcopy(template)
    for name, value in VAULT.items():
        with_vault["Parameters"][name]["Default"] = value
    path = tmp_path / "with-vault.json"
    path.write_text(json.dumps(with_vault))
    matches = cfn_lint(path)
    assert [m for m in matches if m["Level"] in ("Error", "Warning")] == [], matches


def test_the_parameters_refuse_malformed_values(template: dict[str, Any]) -> None:
    import re

    good_and_bad = {
        "VaultBucketArn": (VAULT["VaultBucketArn"], ["acme-lifeboat-vault", "arn:aws:s3:::Acme", "arn:aws:s3:::b/x"]),
        "VaultAccountId": (VAULT["VaultAccountId"], ["99998888777", "arn:aws:iam::999988887777:root"]),
        "VaultKmsKeyArn": (VAULT["VaultKmsKeyArn"], ["alias/vault", "1234abcd-12ab-34cd-56ef-1234567890ab"]),
    }
    for name, (good, bad) in good_and_bad.items():
        pattern = template["Parameters"][name]["AllowedPattern"]
        assert re.fullmatch(pattern, good) and re.fullmatch(pattern, "")
        assert not [b for b in bad if re.fullmatch(pattern, b)], name


def test_the_packaged_stack_carries_the_vault(packaged: Packaged) -> None:
    """Chalice's merge keeps the parameters, the condition, the role and the bucket's replication rule."""
    assert set(VAULT) <= set(packaged.template["Parameters"])
    assert "HasVault" in packaged.template["Conditions"]
    assert packaged.resources[ROLE]["Condition"] == "HasVault"
    on = Deployed(packaged.template, **VAULT)
    assert _rule(on)["Destination"]["Account"] == VAULT["VaultAccountId"]
