"""FargateLauncher against moto's ECS: what run_task is asked, and how ECS refusals become errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from chalicelib import wiring
from chalicelib.adapters.ecs import EcsTasks
from chalicelib.errors import FargateError
from chalicelib.fargate import STARTED_BY, FargateLauncher
from chalicelib.scheduling.dispatch import DueBackup
from tests.fargate.conftest import Ecs, tasks

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)


def launcher(ecs: Ecs, client: Any = None) -> FargateLauncher:
    return FargateLauncher(
        EcsTasks(client or wiring.client("ecs")), ecs.cluster, ecs.task_definition, [ecs.subnet], [ecs.security_group]
    )


def test_run_backup_starts_one_fargate_task_with_the_backup_command(
    ecs: Ecs, run_task_calls: list[dict[str, Any]]
) -> None:
    arn = launcher(ecs).run_backup(DueBackup("shop", "logical", SLOT))
    [call] = run_task_calls
    assert call["launchType"] == "FARGATE" and call["count"] == 1 and call["startedBy"] == STARTED_BY
    assert call["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": [ecs.subnet],
            "securityGroups": [ecs.security_group],
            "assignPublicIp": "DISABLED",
        }
    }
    command = ["-v", "backup", "shop", "--slot", "2026-11-29T03:00:00+00:00", "--trigger", "schedule", "--json"]
    assert call["overrides"] == {"containerOverrides": [{"name": "lifeboat", "command": command}]}
    # What ECS recorded: moto's view of the task.
    [task] = tasks(ecs)
    assert task["taskArn"] == arn
    assert task["launchType"] == "FARGATE" and task["startedBy"] == STARTED_BY
    assert task["taskDefinitionArn"] == ecs.task_definition
    assert task["overrides"]["containerOverrides"] == [{"name": "lifeboat", "command": command}]
    tags = {t["key"]: t["value"] for t in task["tags"]}
    assert tags == {
        "pg-lifeboat:kind": "backup",
        "pg-lifeboat:target": "shop",
        "pg-lifeboat:slot": "2026-11-29T03:00:00+00:00",
    }
    eni = [d["value"] for a in task["attachments"] for d in a["details"] if d["name"] == "subnetId"]
    assert eni == [ecs.subnet]


def test_one_database_of_a_whole_server_target(ecs: Ecs, run_task_calls: list[dict[str, Any]]) -> None:
    launcher(ecs).run_backup(DueBackup("server", "logical", SLOT, "sales db"))
    command = run_task_calls[0]["overrides"]["containerOverrides"][0]["command"]
    assert command[-2:] == ["--database", "sales db"]
    [task] = tasks(ecs)
    assert {"key": "pg-lifeboat:database", "value": "sales db"} in task["tags"]


def test_run_restore(ecs: Ecs, run_task_calls: list[dict[str, Any]]) -> None:
    launcher(ecs).run_restore("r-0123456789abcdef", "shop")
    assert run_task_calls[0]["overrides"]["containerOverrides"][0]["command"] == [
        "-v",
        "run-restore",
        "r-0123456789abcdef",
    ]
    [task] = tasks(ecs)
    assert {"key": "pg-lifeboat:restore-id", "value": "r-0123456789abcdef"} in task["tags"]


def test_tag_values_are_made_legal() -> None:
    from chalicelib.fargate import _tag_value

    assert _tag_value('we"ird;db*') == "we_ird_db_"
    assert len(_tag_value("x" * 300)) == 256


def test_no_capacity_is_an_error_with_ecs_reason(ecs: Ecs) -> None:
    """ECS answers 200 with a failures list when it cannot place a task: moto never does, so the
    answer is injected before the request is sent."""
    client = boto3.client("ecs")
    failures = {
        "tasks": [],
        "failures": [
            {
                "arn": ecs.task_definition,
                "reason": "Capacity is unavailable at this"
                " time. Please try again later or in a different availability zone",
            }
        ],
    }

    def no_capacity(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://ecs", 200, {}, None), failures  # type: ignore[arg-type]

    client.meta.events.register("before-call.ecs.RunTask", no_capacity)
    with pytest.raises(FargateError, match="Capacity is unavailable") as info:
        launcher(ecs, client).run_backup(DueBackup("shop", "logical", SLOT))
    assert "retried" in str(info.value) and info.value.code == "fargate_failed"
    assert tasks(ecs) == []


def test_ecs_refusal_is_an_error_naming_the_cluster(ecs: Ecs) -> None:
    gone = FargateLauncher(EcsTasks(boto3.client("ecs")), "no-such-cluster", ecs.task_definition, [ecs.subnet], [])
    with pytest.raises(FargateError, match=r"no-such-cluster.*ClusterNotFoundException"):
        gone.run_backup(DueBackup("shop", "logical", SLOT))


def test_runtime_builds_the_launcher_from_the_stacks_variables(
    fargate_env: Ecs, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = wiring.fargate_launcher()
    assert made is not None
    assert (made.cluster, made.task_definition, made.subnets, made.security_groups, made.container) == (
        fargate_env.cluster,
        fargate_env.task_definition,
        [fargate_env.subnet],
        [fargate_env.security_group],
        "lifeboat",
    )
    assert made.assign_public_ip is False
    monkeypatch.setenv("LIFEBOAT_FARGATE_SUBNETS", "subnet-a, subnet-b")
    monkeypatch.setenv("LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP", "ENABLED")
    made = wiring.fargate_launcher()
    assert made is not None and made.subnets == ["subnet-a", "subnet-b"] and made.assign_public_ip is True
    monkeypatch.setenv("LIFEBOAT_FARGATE_SUBNETS", "")
    from chalicelib.errors import ConfigError

    with pytest.raises(ConfigError, match="SUBNETS"):
        wiring.fargate_launcher()
    monkeypatch.delenv("LIFEBOAT_FARGATE_CLUSTER")
    assert wiring.fargate_launcher() is None
