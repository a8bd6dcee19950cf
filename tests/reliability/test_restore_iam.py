"""The generated IAM policies (.chalice/policy-<stage>-<function>.json) evaluated, not just read: a small
evaluator of Allow statements (actions, resources, the condition operators the files use) answers whether a
call is authorized, the way IAM does for each resource a call touches.

Restores may attach volumes only to instances the operator tagged lifeboat:restore-target=true, only volumes a
restore created, and only from the restore sweeper; they restore only the stack's managed snapshots; the API
can start, advance or attach nothing.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stack import policies

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


def policy(stage: str, function: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((REPO / ".chalice" / f"policy-{stage}-{function}.json").read_text())
    return doc


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _condition_holds(operator: str, key: str, wanted: Any, context: dict[str, str]) -> bool:
    if key not in context:
        return False  # no ...IfExists operators in the files: a missing key fails the condition
    actual = context[key]
    if operator == "StringEquals":
        return actual in _list(wanted)
    if operator == "StringLike":
        return any(fnmatch.fnmatchcase(actual, pattern) for pattern in _list(wanted))
    if operator == "Bool":
        return actual.lower() in [str(w).lower() for w in _list(wanted)]
    raise AssertionError(f"the evaluator does not know condition operator {operator}")


def statement_allows(statement: dict[str, Any], action: str, resource: Resource, context: dict[str, str]) -> bool:
    if statement["Effect"] != "Allow":
        return False
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in _list(statement["Action"])):
        return False
    if not any(fnmatch.fnmatchcase(resource.arn, r) for r in _list(statement["Resource"])):
        return False
    return all(
        _condition_holds(op, key, wanted, context)
        for op, pairs in statement.get("Condition", {}).items()
        for key, wanted in pairs.items()
    )


def authorized(
    doc: dict[str, Any],
    action: str,
    resources: list[Resource],
    request_tags: dict[str, str] | None = None,
    **context: str,
) -> bool:
    """IAM authorizes a call when every resource it touches is allowed by some statement (no Deny here)."""
    for resource in resources:
        keys = {
            **{f"aws:ResourceTag/{k}": v for k, v in resource.tags.items()},
            **{f"aws:RequestTag/{k}": v for k, v in (request_tags or {}).items()},
            **context,
        }
        if not any(statement_allows(st, action, resource, keys) for st in doc["Statement"]):
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
    new_db = Resource(arn("rds", "db", "orders-restored"))
    managed = Resource(arn("rds", "snapshot", "lifeboat-orders-20261129-030000"), MANAGED)
    unmanaged = Resource(arn("rds", "snapshot", "lifeboat-orders-20261129-030000"))
    foreign = Resource(arn("rds", "snapshot", "prod-before-migration"), MANAGED)
    call = "rds:RestoreDBInstanceFromDBSnapshot"
    assert authorized(worker, call, [new_db, managed], RESTORE_TAGS)
    assert not authorized(worker, call, [new_db, unmanaged], RESTORE_TAGS), "a snapshot without lifeboat:managed"
    assert not authorized(worker, call, [new_db, foreign], RESTORE_TAGS), "a snapshot the stack did not name"
    assert not authorized(worker, call, [new_db, managed]), "a new instance without lifeboat:restore-id"
    cluster = Resource(arn("rds", "cluster", "billing-restored"))
    cluster_snapshot = Resource(arn("rds", "cluster-snapshot", "lifeboat-billing-20261129-030000"), MANAGED)
    untagged_cluster_snapshot = Resource(cluster_snapshot.arn)
    call = "rds:RestoreDBClusterFromSnapshot"
    assert authorized(worker, call, [cluster, cluster_snapshot], RESTORE_TAGS)
    assert not authorized(worker, call, [cluster, untagged_cluster_snapshot], RESTORE_TAGS)
    # Point in time: the source is the operator's instance; the new one must carry the restore's tag.
    source = Resource(arn("rds", "db", "orders-db"))
    assert authorized(
        worker, "rds:RestoreDBInstanceToPointInTime", [Resource(arn("rds", "db", "o-pitr")), source], RESTORE_TAGS
    )
    assert not authorized(worker, "rds:RestoreDBInstanceToPointInTime", [Resource(arn("rds", "db", "o-pitr")), source])


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
    assert used <= {"StringEquals", "StringLike", "Bool"}, used
