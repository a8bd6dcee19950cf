"""The Fargate worker in the packaged template: opt-in, wired like the functions, and least-privilege."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stack import capabilities, names, policies
from stack.template.monitoring import ANY_SUCCESS_METRIC
from tests.stack.conftest import REPO, Packaged
from tests.stack.test_template import as_list, chalice_name, functions, statements

WORKER = (
    "WorkerCluster",
    "WorkerLogGroup",
    "WorkerTaskRole",
    "WorkerExecutionRole",
    "WorkerTaskDefinition",
    "FargateLaunchPolicy",
    "WorkerBackupSucceededFilter",
    "WorkerTaskStoppedRule",
    "AlarmTopicPolicy",
)
FARGATE_ENV = (
    "LIFEBOAT_FARGATE_CLUSTER",
    "LIFEBOAT_FARGATE_TASK_DEFINITION",
    "LIFEBOAT_FARGATE_SUBNETS",
    "LIFEBOAT_FARGATE_SECURITY_GROUPS",
    "LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP",
)


def container(p: Packaged) -> dict[str, Any]:
    [c] = p.resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    return c


def test_fargate_is_opt_in_by_image_and_vpc(packaged: Packaged) -> None:
    params, conds = packaged.template["Parameters"], packaged.template["Conditions"]
    assert params["FargateImageUri"]["Default"] == ""
    assert conds["HasFargate"] == {
        "Fn::And": [{"Condition": "HasVpc"}, {"Fn::Not": [{"Fn::Equals": [{"Ref": "FargateImageUri"}, ""]}]}]
    }
    for name in WORKER:
        assert packaged.resources[name].get("Condition") == "HasFargate", name
    pattern = re.compile(params["FargateImageUri"]["AllowedPattern"])
    for good in (
        "",
        "111122223333.dkr.ecr.eu-west-1.amazonaws.com/pg-lifeboat:1.4.0",
        "111122223333.dkr.ecr.eu-west-1.amazonaws.com/team/pg-lifeboat@sha256:" + "a" * 64,
    ):
        assert pattern.fullmatch(good), good
    for bad in ("pg-lifeboat", "111122223333.dkr.ecr.eu-west-1.amazonaws.com/pg-lifeboat", "x/y:"):
        assert not pattern.fullmatch(bad), bad


def test_task_definition(packaged: Packaged) -> None:
    props = packaged.resources["WorkerTaskDefinition"]["Properties"]
    assert props["RequiresCompatibilities"] == ["FARGATE"] and props["NetworkMode"] == "awsvpc"
    assert props["RuntimePlatform"] == {
        "CpuArchitecture": {"x86_64": "X86_64", "arm64": "ARM64"}[packaged.variant.arch],
        "OperatingSystemFamily": "LINUX",
    }
    assert props["Cpu"] == {"Ref": "FargateCpu"} and props["Memory"] == {"Ref": "FargateMemory"}
    assert props["EphemeralStorage"] == {"SizeInGiB": {"Ref": "FargateEphemeralStorageGiB"}}
    storage = packaged.template["Parameters"]["FargateEphemeralStorageGiB"]
    assert (storage["MinValue"], storage["MaxValue"]) == (21, 200)
    assert props["TaskRoleArn"] == {"Fn::GetAtt": ["WorkerTaskRole", "Arn"]}
    assert props["ExecutionRoleArn"] == {"Fn::GetAtt": ["WorkerExecutionRole", "Arn"]}
    assert props["Family"] == {"Fn::Sub": names.task_family("${Stage}")}
    c = container(packaged)
    from chalicelib.fargate import DEFAULT_CONTAINER

    assert c["Name"] == names.TASK_CONTAINER == DEFAULT_CONTAINER
    assert c["Image"] == {"Ref": "FargateImageUri"} and c["Essential"] is True
    assert "Command" not in c, "the image's ENTRYPOINT lifeboat; each run_task gives the command"
    logs = c["LogConfiguration"]
    assert logs["LogDriver"] == "awslogs" and logs["Options"]["awslogs-group"] == {"Ref": "WorkerLogGroup"}
    group = packaged.resources["WorkerLogGroup"]["Properties"]
    assert group["LogGroupName"] == {"Fn::Sub": names.task_log_group("${Stage}")}
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_task_sees_what_the_workers_see(packaged: Packaged) -> None:
    env = {e["Name"]: e["Value"] for e in container(packaged)["Environment"]}
    worker = packaged.resources["BackupWorker"]["Properties"]["Environment"]["Variables"]
    for key in (
        "LIFEBOAT_CONFIG",
        "LIFEBOAT_JOBS_TABLE",
        "LIFEBOAT_BACKUP_QUEUE_URL",
        "LIFEBOAT_RESTORE_QUEUE_URL",
        "LIFEBOAT_PG_ROOTS",
        "LIFEBOAT_CA_BUNDLE",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
    ):
        assert env[key] == worker[key], key
    # The CLI turns metrics off unless told: the task's EMF lines feed the alarms like the workers'.
    assert env["POWERTOOLS_METRICS_DISABLED"] == "false"
    assert not [k for k in env if k.startswith("LIFEBOAT_FARGATE_")], "the task never delegates further"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"LIFEBOAT_PG_ROOTS={env['LIFEBOAT_PG_ROOTS']}" in dockerfile


def test_only_the_two_workers_may_launch_and_learn_where(packaged: Packaged) -> None:
    env_source = (REPO / "chalicelib" / "env.py").read_text()
    launchers = set()
    for name, fn in functions(packaged).items():
        function = chalice_name(fn)
        env = fn["Properties"]["Environment"]["Variables"]
        role = packaged.resources[fn["Properties"]["Role"]["Fn::GetAtt"][0]]
        managed = role["Properties"].get("ManagedPolicyArns", [])
        attached = {"Fn::If": ["HasFargate", {"Ref": "FargateLaunchPolicy"}, {"Ref": "AWS::NoValue"}]} in managed
        has_env = all(key in env for key in FARGATE_ENV)
        assert attached == has_env == policies.needs(function, "fargate:run"), name
        if attached:
            launchers.add(function)
            for key in FARGATE_ENV:
                assert env[key]["Fn::If"][0] == "HasFargate", key
                assert f'"{key}"' in env_source, f"chalicelib/env.py does not read {key}"
    assert launchers == {"backup_worker", "restore_worker"}


def test_launch_policy_is_scoped_to_the_stacks_task(packaged: Packaged) -> None:
    doc = packaged.resources["FargateLaunchPolicy"]["Properties"]["PolicyDocument"]
    found = {st["Sid"]: st for st in statements(doc)}
    assert set(found) == {"RunWorkerTask", "TagWorkerTask", "PassWorkerRoles"}
    run = found["RunWorkerTask"]
    assert run["Action"] == "ecs:RunTask" and run["Resource"] == {"Ref": "WorkerTaskDefinition"}
    assert run["Condition"] == {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["WorkerCluster", "Arn"]}}}
    tag = found["TagWorkerTask"]
    assert tag["Action"] == "ecs:TagResource" and tag["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}
    assert tag["Resource"]["Fn::Sub"].endswith(":task/${WorkerCluster}/*")
    passing = found["PassWorkerRoles"]
    assert passing["Action"] == "iam:PassRole"
    assert passing["Resource"] == [
        {"Fn::GetAtt": ["WorkerTaskRole", "Arn"]},
        {"Fn::GetAtt": ["WorkerExecutionRole", "Arn"]},
    ], "exactly the two roles"
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    for st in statements(doc):
        assert "*" not in as_list(st["Resource"]) and "*" not in json.dumps(st["Action"])


def _comparable(st: dict[str, Any]) -> tuple[frozenset[str], str]:
    return frozenset(as_list(st["Action"])), json.dumps(st["Resource"], sort_keys=True)


def test_task_role_holds_no_more_than_the_two_workers(packaged: Packaged) -> None:
    stage = packaged.variant.stage
    role = packaged.resources["WorkerTaskRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "ecs-tasks.amazonaws.com"}]
    assert trust[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert role["ManagedPolicyArns"] == [{"Ref": "DatabaseAccessPolicy"}]
    assert policies.needs("backup_worker", "database") and policies.needs("restore_worker", "database")
    workers: set[tuple[frozenset[str], str]] = set()
    for function in ("backup_worker", "restore_worker"):
        doc = json.loads((REPO / ".chalice" / policies.expected_file(function, stage)).read_text())
        workers |= {_comparable(st) for st in statements(doc)}
    [inline] = role["Policies"]
    task = list(statements(inline["PolicyDocument"]))
    assert task
    for st in task:
        if st == capabilities.archive_guard():  # a Deny (the backup worker's too): never the point-in-time archive
            continue
        assert st["Effect"] == "Allow"
        assert "*" not in as_list(st["Resource"]), st
        actions, resource = _comparable(st)
        assert any(actions <= a and resource == r for a, r in workers), f"the workers do not hold {st}"


def test_execution_role_pulls_and_logs_only(packaged: Packaged) -> None:
    role = packaged.resources["WorkerExecutionRole"]["Properties"]
    assert "ManagedPolicyArns" not in role, "no AWS managed policy with Resource *"
    [inline] = role["Policies"]
    found = {st["Sid"]: st for st in statements(inline["PolicyDocument"])}
    assert found["EcrLogin"] == {
        "Sid": "EcrLogin",
        "Effect": "Allow",
        "Action": "ecr:GetAuthorizationToken",
        "Resource": "*",
    }, "the one action IAM cannot scope"
    assert found["PullImage"]["Resource"]["Fn::Sub"].endswith(":${AWS::AccountId}:repository/*")
    assert found["TaskLogs"]["Resource"]["Fn::Sub"].endswith(":log-group:${WorkerLogGroup}:*")
    for st in found.values():
        if st["Sid"] != "EcrLogin":
            assert "*" not in as_list(st["Resource"])


def test_worker_successes_and_failures_reach_the_alarms(packaged: Packaged) -> None:
    filters = packaged.resources["WorkerBackupSucceededFilter"]["Properties"]
    assert filters["LogGroupName"] == {"Ref": "WorkerLogGroup"}
    assert filters["FilterPattern"] == "{ $.BackupSucceeded[0] >= 1 }"
    [transform] = filters["MetricTransformations"]
    assert transform["MetricName"] == ANY_SUCCESS_METRIC
    assert transform["MetricName"] == packaged.resources["NoBackupAlarm"]["Properties"]["MetricName"]
    rule = packaged.resources["WorkerTaskStoppedRule"]["Properties"]
    pattern = rule["EventPattern"]
    assert pattern["source"] == ["aws.ecs"] and pattern["detail"]["lastStatus"] == ["STOPPED"]
    assert pattern["detail"]["clusterArn"] == [{"Fn::GetAtt": ["WorkerCluster", "Arn"]}]
    [target] = rule["Targets"]
    assert target["Arn"] == {"Ref": "AlarmTopic"}
    policy = packaged.resources["AlarmTopicPolicy"]["Properties"]
    assert policy["Topics"] == [{"Ref": "AlarmTopic"}]
    principals = {st["Principal"]["Service"]: st for st in statements(policy["PolicyDocument"])}
    assert set(principals) == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}
    assert principals["events.amazonaws.com"]["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["WorkerTaskStoppedRule", "Arn"]}}
    }
    assert all(st["Action"] == "sns:Publish" for st in principals.values())


def test_outputs_name_the_worker(packaged: Packaged) -> None:
    out = packaged.template["Outputs"]
    for key in ("WorkerClusterName", "WorkerTaskDefinitionArn", "WorkerLogGroupName"):
        assert out[key]["Condition"] == "HasFargate", key


def test_resources_only_template_has_no_worker(resources_only: Path) -> None:
    template = json.loads(resources_only.read_text())
    assert not set(WORKER) & set(template["Resources"])
    assert not [p for p in template["Parameters"] if p.startswith("Fargate")]
