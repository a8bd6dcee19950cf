"""An ECS cluster and a Fargate task definition in moto, shaped like the stack's, and the workers' view of it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from devstack.local import LocalStack
from stack import names


@dataclass(frozen=True)
class Ecs:
    cluster: str
    task_definition: str
    subnet: str
    security_group: str

    def env(self) -> dict[str, str]:
        """What the stack sets on the backup and restore workers."""
        return {
            "LIFEBOAT_FARGATE_CLUSTER": self.cluster,
            "LIFEBOAT_FARGATE_TASK_DEFINITION": self.task_definition,
            "LIFEBOAT_FARGATE_SUBNETS": self.subnet,
            "LIFEBOAT_FARGATE_SECURITY_GROUPS": self.security_group,
            "LIFEBOAT_FARGATE_CONTAINER": names.TASK_CONTAINER,
        }


@pytest.fixture
def ecs(aws: LocalStack) -> Ecs:
    """A VPC subnet (moto gives each awsvpc task an ENI in it), the cluster and the task definition."""
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # as usual for tasks (moto needs it)
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="lifeboat-worker", Description="worker", VpcId=vpc)["GroupId"]
    client = boto3.client("ecs")
    cluster = client.create_cluster(clusterName=names.ecs_cluster("test"))["cluster"]["clusterName"]
    task_definition = client.register_task_definition(
        family=names.task_family("test"),
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="1024",
        memory="2048",
        runtimePlatform={"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
        containerDefinitions=[
            {
                "name": names.TASK_CONTAINER,
                "image": "111122223333.dkr.ecr.us-east-1.amazonaws.com/pg-lifeboat:1",
                "essential": True,
                "memory": 2048,
            }
        ],  # moto sums container memory even for Fargate: give it one
    )["taskDefinition"]["taskDefinitionArn"]
    return Ecs(cluster, task_definition, subnet, group)


@pytest.fixture
def fargate_env(ecs: Ecs, monkeypatch: pytest.MonkeyPatch) -> Ecs:
    for key, value in ecs.env().items():
        monkeypatch.setenv(key, value)
    return ecs


@pytest.fixture
def run_task_calls() -> Iterator[list[dict[str, Any]]]:
    """Every ecs.run_task request the runtime's ECS client makes, as the caller passed it."""
    from chalicelib import wiring

    calls: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    events = wiring.client("ecs").meta.events
    events.register("provide-client-params.ecs.RunTask", capture)
    yield calls
    events.unregister("provide-client-params.ecs.RunTask", capture)


def tasks(ecs: Ecs) -> list[dict[str, Any]]:
    client = boto3.client("ecs")
    arns = client.list_tasks(cluster=ecs.cluster)["taskArns"]
    found: list[dict[str, Any]] = (
        client.describe_tasks(cluster=ecs.cluster, tasks=arns, include=["TAGS"])["tasks"] if arns else []
    )
    return found
