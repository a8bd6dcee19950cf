"""The generated IAM policies (.chalice/policy-<stage>-<function>.json) evaluated, not just read: a small
evaluator of Allow and Deny statements (actions, resources, the condition operators the files use, the policy variable
${aws:PrincipalAccount}) answers whether a call is authorized, the way IAM does for each resource a call touches.

Restores may attach volumes only to instances the operator tagged lifeboat:restore-target=true, only volumes a
restore created, and only from the restore sweeper; they restore only the stack's managed snapshots; the API
can start, advance or attach nothing.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chalicelib.physical.names import BACKUP_SOURCE_TAG
from chalicelib.restore import plan
from stack import capabilities, policies

REPO = Path(__file__).resolve().parents[2]
STAGES = ("dev", "prod")
REGION, ACCOUNT = "eu-west-1", "123456789012"
WRITES = (
    "ec2:AttachVolume",
    "ec2:CreateVolume",
    "rds:RestoreDBInstanceFromDBSnapshot",
    "rds:RestoreDBClusterFromSnapshot",
    "rds:RestoreDBInstanceToPointInTime",
    "rds:RestoreDBClusterToPointInTime",
    "rds:CreateDBInstance",
)


@dataclass
class Resource:
    arn: str
    tags: dict[str, str] = field(default_factory=dict)
    account: str = ACCOUNT  # aws:ResourceAccount: the owner (S3 ARNs do not say it)


def policy(stage: str, function: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((REPO / ".chalice" / f"policy-{stage}-{function}.json").read_text())
    return doc


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


POLICY_VARIABLE = re.compile(r"\$\{(aws:[A-Za-z]+)\}")


def _substituted(value: Any, context: dict[str, Any]) -> Any:
    """Policy variables (${aws:PrincipalAccount}) replaced by the request's values (`${*}`: _resource_matches)."""
    if isinstance(value, list):
        return [_substituted(v, context) for v in value]
    if isinstance(value, str):
        return POLICY_VARIABLE.sub(lambda m: str(context[m.group(1)]), value)
    return value


def _condition_holds(operator: str, key: str, wanted: Any, context: dict[str, Any]) -> bool:
    wanted = _substituted(wanted, context)
    if operator == "StringNotEquals":  # a negated operator holds when the key is absent
        return key not in context or context[key] not in _list(wanted)
    if operator == "Null":  # "true": the key is absent; "false": present
        return (key not in context) == (str(wanted).lower() == "true")
    if operator == "ForAllValues:StringEquals":  # every value of a multivalued key is listed (absent: true)
        return all(v in _list(wanted) for v in _list(context.get(key, [])))
    if operator == "ForAnyValue:StringEquals":  # some value of a multivalued key is listed (absent: false)
        return any(v in _list(wanted) for v in _list(context.get(key, [])))
    if key not in context:
        return False  # no ...IfExists operators in the files: a missing key fails the condition
    actual = context[key]
    if operator == "StringEquals":
        return actual in _list(wanted)
    if operator == "StringLike":
        return any(fnmatch.fnmatchcase(actual, pattern) for pattern in _list(wanted))
    if operator == "Bool":
        return actual.lower() in [str(w).lower() for w in _list(wanted)]
    if operator == "NumericGreaterThanEquals":
        return any(float(actual) >= float(w) for w in _list(wanted))
    if operator == "NumericLessThanEquals":
        return any(float(actual) <= float(w) for w in _list(wanted))
    raise AssertionError(f"the evaluator does not know condition operator {operator}")


def _resource_matches(pattern: str, arn: str) -> bool:
    """IAM's wildcards; `${*}` is a literal `*` (what EC2 names a snapshot or volume a call creates)."""
    return fnmatch.fnmatchcase(arn, pattern.replace("[", "[[]").replace("${*}", "[*]"))


def statement_allows(statement: dict[str, Any], action: str, resource: Resource, context: dict[str, Any]) -> bool:
    return statement["Effect"] == "Allow" and statement_applies(statement, action, resource, context)


def statement_applies(statement: dict[str, Any], action: str, resource: Resource, context: dict[str, Any]) -> bool:
    """The statement names the action and the resource, and its conditions hold (whatever its Effect)."""
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _list(statement["Action"])):
        return False
    if not any(_resource_matches(_substituted(r, context), resource.arn) for r in _list(statement["Resource"])):
        return False
    return all(
        _condition_holds(op, key, wanted, context)
        for op, pairs in statement.get("Condition", {}).items()
        for key, wanted in pairs.items()
    )


# Request keys S3 always sends with an action, as a normal call of the app sets them (a lock in governance mode for a
# month); a test of the bounds passes its own values.
ALWAYS_SENT = {
    "s3:putobjectretention": {"s3:object-lock-mode": "GOVERNANCE", "s3:object-lock-remaining-retention-days": "30"}
}


def authorized(
    doc: dict[str, Any],
    action: str,
    resources: list[Resource],
    request_tags: dict[str, str] | None = None,
    **context: str,
) -> bool:
    """IAM authorizes a call when every resource it touches is allowed by some statement and denied by none. A
    resource being created has no resource tags; request tags are in every resource's context (and aws:TagKeys). The
    caller is in ACCOUNT (aws:PrincipalAccount, unless the context says otherwise)."""
    for resource in resources:
        keys: dict[str, Any] = {
            "aws:PrincipalAccount": ACCOUNT,
            "aws:ResourceAccount": resource.account,
            **ALWAYS_SENT.get(action.lower(), {}),
            **{f"aws:ResourceTag/{k}": v for k, v in resource.tags.items()},
            **{f"aws:RequestTag/{k}": v for k, v in (request_tags or {}).items()},
            **({"aws:TagKeys": list(request_tags)} if request_tags else {}),
            **context,
        }
        if not any(statement_allows(st, action, resource, keys) for st in doc["Statement"]):
            return False
        if any(st["Effect"] == "Deny" and statement_applies(st, action, resource, keys) for st in doc["Statement"]):
            return False
    return True


def arn(service: str, kind: str, name: str) -> str:
    if service == "ec2":
        return f"arn:aws:ec2:{REGION}:{'' if kind == 'snapshot' else ACCOUNT}:{kind}/{name}"
    return f"arn:aws:rds:{REGION}:{ACCOUNT}:{kind}:{name}"


RESTORED_VOLUME = Resource(arn("ec2", "volume", "vol-0restored"), {"lifeboat:restore-id": "r-1"})
OTHER_VOLUME = Resource(arn("ec2", "volume", "vol-0production"), {"Name": "prod-data"})
TAGGED_INSTANCE = Resource(arn("ec2", "instance", "i-0scratch"), {"lifeboat:restore-target": "true"})
UNTAGGED_INSTANCE = Resource(arn("ec2", "instance", "i-0unrelated"), {"Name": "web-1"})
NOT_TRUE_INSTANCE = Resource(arn("ec2", "instance", "i-0maybe"), {"lifeboat:restore-target": "false"})
MANAGED = {"lifeboat:managed": "true"}
RESTORE_TAGS = {"lifeboat:restore-id": "r-1", "lifeboat:target": "orders"}
PITR_SOURCE = {"lifeboat:pitr-source": "true"}
BACKUP_SOURCE = {"lifeboat:backup-source": "true"}


@pytest.mark.parametrize("stage", STAGES)
def test_attaching_to_an_untagged_instance_is_denied_by_the_generated_policy(stage: str) -> None:
    sweeper = policy(stage, "restore_sweeper")
    assert authorized(sweeper, "ec2:AttachVolume", [RESTORED_VOLUME, TAGGED_INSTANCE])
    assert not authorized(sweeper, "ec2:AttachVolume", [RESTORED_VOLUME, UNTAGGED_INSTANCE])
    assert not authorized(sweeper, "ec2:AttachVolume", [RESTORED_VOLUME, NOT_TRUE_INSTANCE])
    assert not authorized(sweeper, "ec2:AttachVolume", [OTHER_VOLUME, TAGGED_INSTANCE])


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("function", sorted(set(policies.ACCESS) - {"restore_sweeper"}))
def test_only_the_sweeper_attaches_volumes(stage: str, function: str) -> None:
    doc = policy(stage, function)
    assert not authorized(doc, "ec2:AttachVolume", [RESTORED_VOLUME, TAGGED_INSTANCE])
    assert not any("ec2:AttachVolume" in _list(st["Action"]) for st in doc["Statement"])


@pytest.mark.parametrize("stage", STAGES)
def test_the_api_starts_advances_and_attaches_nothing(stage: str) -> None:
    """GET no longer advances a restore: the API's role has no AWS write of a restore at all."""
    api = policy(stage, "api_handler")
    granted = {a for st in api["Statement"] for a in _list(st["Action"])}
    assert granted.isdisjoint(WRITES), sorted(granted & set(WRITES))
    assert {"rds:DescribeDBInstances", "rds:DescribeDBClusters"} <= granted  # what its checks read


@pytest.mark.parametrize("stage", STAGES)
def test_rds_restores_only_from_managed_snapshots(stage: str) -> None:
    worker = policy(stage, "restore_worker")
    new_db = Resource(arn("rds", "db", "lifeboat-orders-restored"))
    managed = Resource(arn("rds", "snapshot", "lifeboat-orders-20261129-030000"), MANAGED)
    unmanaged = Resource(arn("rds", "snapshot", "lifeboat-orders-20261129-030000"))
    foreign = Resource(arn("rds", "snapshot", "prod-before-migration"), MANAGED)
    call = "rds:RestoreDBInstanceFromDBSnapshot"
    assert authorized(worker, call, [new_db, managed], RESTORE_TAGS)
    assert not authorized(worker, call, [new_db, unmanaged], RESTORE_TAGS), "a snapshot without lifeboat:managed"
    assert not authorized(worker, call, [new_db, foreign], RESTORE_TAGS), "a snapshot the stack did not name"
    assert not authorized(worker, call, [new_db, managed]), "a new instance without lifeboat:restore-id"
    cluster = Resource(arn("rds", "cluster", "lifeboat-billing-restored"))
    cluster_snapshot = Resource(arn("rds", "cluster-snapshot", "lifeboat-billing-20261129-030000"), MANAGED)
    untagged_cluster_snapshot = Resource(cluster_snapshot.arn)
    call = "rds:RestoreDBClusterFromSnapshot"
    assert authorized(worker, call, [cluster, cluster_snapshot], RESTORE_TAGS)
    assert not authorized(worker, call, [cluster, untagged_cluster_snapshot], RESTORE_TAGS)
    # Point in time: the source is the operator's opted-in instance; the new one must carry the restore's tag.
    source = Resource(arn("rds", "db", "orders-db"), PITR_SOURCE)
    pitr = Resource(arn("rds", "db", "lifeboat-o-pitr"))
    assert authorized(worker, "rds:RestoreDBInstanceToPointInTime", [pitr, source], RESTORE_TAGS)
    assert not authorized(worker, "rds:RestoreDBInstanceToPointInTime", [pitr, source])


@pytest.mark.parametrize("stage", STAGES)
def test_ebs_volumes_come_only_from_managed_snapshots(stage: str) -> None:
    worker = policy(stage, "restore_worker")
    new_volume = Resource(arn("ec2", "volume", "*new*"))
    managed = Resource(arn("ec2", "snapshot", "snap-0managed"), MANAGED)
    foreign = Resource(arn("ec2", "snapshot", "snap-0foreign"), {"Name": "someone else's"})
    assert authorized(worker, "ec2:CreateVolume", [new_volume, managed], RESTORE_TAGS)
    assert not authorized(worker, "ec2:CreateVolume", [new_volume, foreign], RESTORE_TAGS)
    assert not authorized(worker, "ec2:CreateVolume", [new_volume, managed]), "an untagged new volume"
    assert authorized(worker, "ec2:CreateTags", [new_volume], RESTORE_TAGS, **{"ec2:CreateAction": "CreateVolume"})
    assert not authorized(worker, "ec2:CreateTags", [OTHER_VOLUME], {"lifeboat:restore-id": "x"})


def test_the_evaluator_knows_every_condition_operator_the_files_use() -> None:
    used = {
        op
        for path in (REPO / ".chalice").glob("policy-*.json")
        for st in json.loads(path.read_text())["Statement"]
        for op in st.get("Condition", {})
    }
    assert used <= {
        "StringEquals",
        "StringLike",
        "Bool",
        "Null",
        "ForAllValues:StringEquals",
        "ForAnyValue:StringEquals",
        "NumericGreaterThanEquals",
        "NumericLessThanEquals",
        "StringNotEquals",
    }, used


# --- Review 12: sources are the operator's to opt in, and "managed" cannot be forged ---------------------------
PAYROLL_DB = Resource(arn("rds", "db", "payroll-prod"), {"team": "hr"})  # not a pg-lifeboat source
UNTAGGED_DB = Resource(arn("rds", "db", "reporting"))
PROD_CLUSTER = Resource(arn("rds", "cluster", "billing"), {"env": "prod"})
NEW_DB = Resource(arn("rds", "db", "lifeboat-exfil-copy"))
NEW_CLUSTER = Resource(arn("rds", "cluster", "lifeboat-exfil-cluster"))
LIFEBOAT_SUBNETS = Resource(arn("rds", "subgrp", "lifeboat-private"))
FORGED = {
    "lifeboat:managed": "true",
    "lifeboat:target": "orders",
    "lifeboat:slot": "2026-11-29T03:00:00Z",
    "lifeboat:set": "snapshot:orders:20261129T030000Z",
}
NEW_EBS_SNAPSHOT = Resource("arn:aws:ec2:eu-west-1::snapshot/*")  # EC2's ARN of a snapshot being created


def test_the_stack_and_the_code_agree_on_names_and_tags() -> None:
    assert capabilities.RESTORED_RDS_PREFIX == plan.NEW_ID_PREFIX
    assert capabilities.PITR_SOURCE_TAG == plan.PITR_SOURCE_TAG
    assert capabilities.BACKUP_SOURCE_TAG == (BACKUP_SOURCE_TAG, "true")
    assert [t["Key"] for t in plan.tags("r-1", "orders")] == capabilities.RESTORE_TAG_KEYS


@pytest.mark.parametrize("stage", STAGES)
def test_point_in_time_restores_read_only_opted_in_sources(stage: str) -> None:
    worker = policy(stage, "restore_worker")
    call = "rds:RestoreDBInstanceToPointInTime"
    for source in (PAYROLL_DB, UNTAGGED_DB, Resource(arn("rds", "db", "orders-db"), {"lifeboat:pitr-source": "no"})):
        assert not authorized(worker, call, [NEW_DB, source, LIFEBOAT_SUBNETS], RESTORE_TAGS), source
    opted_in = Resource(arn("rds", "db", "orders-db"), PITR_SOURCE)
    assert authorized(worker, call, [NEW_DB, opted_in, LIFEBOAT_SUBNETS], RESTORE_TAGS)
    # the new instance: named lifeboat-*, tagged by the restore and nothing else; groups: lifeboat-*
    assert not authorized(worker, call, [Resource(arn("rds", "db", "exfil-copy")), opted_in], RESTORE_TAGS)
    assert not authorized(worker, call, [NEW_DB, opted_in], {**RESTORE_TAGS, "lifeboat:pitr-source": "true"})
    public = Resource(arn("rds", "subgrp", "default-vpc-public"))
    assert not authorized(worker, call, [NEW_DB, opted_in, public], RESTORE_TAGS)
    call = "rds:RestoreDBClusterToPointInTime"
    assert not authorized(worker, call, [NEW_CLUSTER, PROD_CLUSTER], RESTORE_TAGS)
    assert authorized(worker, call, [NEW_CLUSTER, Resource(PROD_CLUSTER.arn, PITR_SOURCE)], RESTORE_TAGS)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("function", ["restore_worker", "restore_sweeper"])
def test_restores_neither_retag_nor_extend_the_operators_resources(stage: str, function: str) -> None:
    doc = policy(stage, function)
    for existing in (PAYROLL_DB, UNTAGGED_DB, PROD_CLUSTER):
        assert not authorized(doc, "rds:AddTagsToResource", [existing], RESTORE_TAGS), existing
    # an instance joins only a restore's own cluster (a lifeboat-* cluster tagged with a restore id)
    instance = Resource(arn("rds", "db", "lifeboat-billing-copy-0123abcd"))
    assert not authorized(doc, "rds:CreateDBInstance", [instance, PROD_CLUSTER], RESTORE_TAGS)
    assert not authorized(doc, "rds:CreateDBInstance", [instance, NEW_CLUSTER], RESTORE_TAGS)
    restored = Resource(arn("rds", "cluster", "lifeboat-billing-copy"), {"lifeboat:restore-id": "r-1"})
    assert authorized(doc, "rds:CreateDBInstance", [instance, restored], RESTORE_TAGS)
    assert authorized(doc, "rds:AddTagsToResource", [instance], RESTORE_TAGS)
    assert not authorized(doc, "rds:AddTagsToResource", [instance], {**RESTORE_TAGS, "lifeboat:managed": "true"})


@pytest.mark.parametrize("stage", STAGES)
def test_the_backup_worker_snapshots_only_opted_in_sources_as_new_managed_snapshots(stage: str) -> None:
    worker = policy(stage, "backup_worker")
    snap = Resource(arn("rds", "snapshot", "lifeboat-orders-20261129-030000"))
    assert not authorized(worker, "rds:CreateDBSnapshot", [PAYROLL_DB, snap], FORGED)
    opted_in = Resource(arn("rds", "db", "orders-db"), BACKUP_SOURCE)
    assert authorized(worker, "rds:CreateDBSnapshot", [opted_in, snap], FORGED)
    assert authorized(worker, "rds:AddTagsToResource", [snap], FORGED)
    cluster_snap = Resource(arn("rds", "cluster-snapshot", "lifeboat-billing-20261129-030000"))
    assert not authorized(worker, "rds:CreateDBClusterSnapshot", [PROD_CLUSTER, cluster_snap], FORGED)
    billing = Resource(PROD_CLUSTER.arn, BACKUP_SOURCE)
    assert authorized(worker, "rds:CreateDBClusterSnapshot", [billing, cluster_snap], FORGED)
    # an existing managed snapshot cannot be re-tagged (as another target's, say)
    hr = Resource(snap.arn, {"lifeboat:managed": "true", "lifeboat:target": "hr"})
    assert not authorized(worker, "rds:AddTagsToResource", [hr], FORGED)
    volume = Resource(arn("ec2", "volume", "vol-0payroll"), {"team": "hr"})
    assert not authorized(worker, "ec2:CreateSnapshot", [volume, NEW_EBS_SNAPSHOT], FORGED)
    assert authorized(worker, "ec2:CreateSnapshot", [Resource(volume.arn, BACKUP_SOURCE), NEW_EBS_SNAPSHOT], FORGED)
    instance = Resource(arn("ec2", "instance", "i-0db"))
    assert not authorized(worker, "ec2:CreateSnapshots", [instance, volume, NEW_EBS_SNAPSHOT], FORGED)
    assert authorized(
        worker, "ec2:CreateSnapshots", [Resource(instance.arn, BACKUP_SOURCE), volume, NEW_EBS_SNAPSHOT], FORGED
    )


@pytest.mark.parametrize("stage", STAGES)
def test_the_snapshot_sweeper_cannot_move_snapshots_between_targets(stage: str) -> None:
    sweeper = policy(stage, "snapshot_sweeper")
    hr_snap = Resource(
        arn("rds", "snapshot", "lifeboat-hr-20261129-030000"), {"lifeboat:managed": "true", "lifeboat:target": "hr"}
    )
    assert not authorized(sweeper, "rds:AddTagsToResource", [hr_snap], {"lifeboat:target": "orders"})
    assert authorized(sweeper, "rds:AddTagsToResource", [hr_snap], {"lifeboat:observed": "done"})
    foreign = Resource("arn:aws:ec2:eu-west-1::snapshot/snap-0foreign", {"team": "hr"})
    assert not authorized(sweeper, "ec2:CopySnapshot", [foreign, NEW_EBS_SNAPSHOT], FORGED)
    managed = Resource("arn:aws:ec2:eu-west-1::snapshot/snap-0managed", {"lifeboat:managed": "true"})
    ebs_copy = {**FORGED, "lifeboat:copy-of": "snap-0managed"}  # a copy is always tagged with its source
    assert authorized(sweeper, "ec2:CopySnapshot", [managed, NEW_EBS_SNAPSHOT], ebs_copy)
    assert not authorized(sweeper, "ec2:CopySnapshot", [managed, NEW_EBS_SNAPSHOT], {"lifeboat:target": "x"})
    assert authorized(sweeper, "ec2:CreateTags", [NEW_EBS_SNAPSHOT], ebs_copy, **{"ec2:CreateAction": "CopySnapshot"})
    hr_ebs = Resource("arn:aws:ec2:eu-west-1::snapshot/snap-0hr", {"lifeboat:managed": "true"})
    assert not authorized(sweeper, "ec2:CreateTags", [hr_ebs], {"lifeboat:target": "orders"})
    assert authorized(sweeper, "ec2:CreateTags", [hr_ebs], {"lifeboat:observed": "done"})
    # RDS copies: from a managed snapshot into a new (not yet tagged) lifeboat-* snapshot, as managed
    copy = Resource(arn("rds", "snapshot", "lifeboat-hr-20261129-030000").replace(REGION, "us-west-2"))
    copy_tags = {**FORGED, "lifeboat:copy-of": hr_snap.arn}
    assert authorized(sweeper, "rds:CopyDBSnapshot", [hr_snap, copy], copy_tags)
    assert not authorized(sweeper, "rds:CopyDBSnapshot", [hr_snap, copy], {"lifeboat:target": "orders"})
