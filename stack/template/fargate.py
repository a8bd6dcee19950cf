"""The long-running worker: an ECS Fargate task of the Dockerfile's image (chalicelib/fargate.py decides
which runs it takes).

It exists only with FargateImageUri and a VPC (condition HasFargate): an image is built and pushed outside
CloudFormation, and a task runs in subnets. Its roles are plain CloudFormation roles (no names, so
CAPABILITY_IAM suffices), which the launch policy names by GetAtt: RunTask, TagResource and PassRole are
granted by the template, not by the policy files. `--resources-only` has no Fargate worker.
"""

from __future__ import annotations

from stack import names, policies
from stack.template.app_model import AppModel, is_target_name
from stack.template.intrinsics import Json, camel, getatt, ref, sub
from stack.template.monitoring import WAL_SLOT_METRIC, success_filter, wal_log_group
from stack.template.queues import queue_url_variables
from stack.template.targets import SUCCESS

FARGATE_CPU = ("256", "512", "1024", "2048", "4096", "8192", "16384")
FARGATE_ARCH = {"x86_64": "X86_64", "arm64": "ARM64"}
# CloudFormation regex (Java): a repository URI with a tag or a digest; empty turns Fargate off.
IMAGE_URI = r"^$|^[a-z0-9][a-z0-9.-]*(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$"


def fargate_parameters() -> Json:
    return {
        "FargateImageUri": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": IMAGE_URI,
            "Description": "The worker image (Dockerfile; make image ARCH=<this template's arch>) in an"
            " ECR repository of this account and region, by tag or digest. Empty: no"
            " Fargate worker, every run stays on Lambda. Needs SubnetIds",
        },
        "FargateCpu": {
            "Type": "String",
            "Default": "1024",
            "AllowedValues": list(FARGATE_CPU),
            "Description": "CPU units of the Fargate worker task (1024 = 1 vCPU)",
        },
        "FargateMemory": {
            "Type": "String",
            "Default": "2048",
            "AllowedPattern": r"^[1-9][0-9]{2,5}$",
            "Description": "MiB of memory, valid with FargateCpu (1 vCPU: 2048 to 8192 in 1024 steps)",
        },
        "FargateEphemeralStorageGiB": {
            "Type": "Number",
            "Default": 50,
            "MinValue": 21,
            "MaxValue": 200,
            "Description": "Ephemeral storage of the task (GiB): parallel restores download"
            " the archive there; directory-format dumps stage files",
        },
        "WalStreamCpu": {
            "Type": "String",
            "Default": "256",
            "AllowedValues": list(FARGATE_CPU),
            "Description": "CPU units of each WAL stream task (`make package WAL_TARGETS=...`): pg_receivewal and"
            " zstd of one 16 MiB segment at a time",
        },
        "WalStreamMemory": {
            "Type": "String",
            "Default": "512",
            "AllowedPattern": r"^[1-9][0-9]{2,5}$",
            "Description": "MiB of memory of each WAL stream task, valid with WalStreamCpu (256: 512 to 2048)",
        },
        "FargateAssignPublicIp": {
            "Type": "String",
            "Default": "DISABLED",
            "AllowedValues": ["DISABLED", "ENABLED"],
            "Description": "ENABLED only in public subnets without a NAT gateway (the task"
            " pulls its image and reaches AWS APIs)",
        },
    }


def _when_fargate(type_name: str, properties: Json) -> Json:
    return {"Type": type_name, "Condition": "HasFargate", "Properties": properties}


STAGE_TAG = [{"Key": "pg-lifeboat:stage", "Value": ref("Stage")}]


def fargate_resources(model: AppModel, arch: str, wal_targets: list[str] | None = None) -> Json:
    """Cluster, task definition, roles, log group and the launch policy of the workers, and one service per WAL
    stream target (all HasFargate)."""
    return {
        **{k: v for t in wal_targets or [] for k, v in wal_stream_resources(model, arch, t).items()},
        "WorkerCluster": _when_fargate(
            "AWS::ECS::Cluster",
            {
                "ClusterName": sub(names.ecs_cluster("${Stage}")),
                "ClusterSettings": [{"Name": "containerInsights", "Value": "disabled"}],
                "Tags": STAGE_TAG,
            },
        ),
        "WorkerLogGroup": _when_fargate(
            "AWS::Logs::LogGroup",
            {"LogGroupName": sub(names.task_log_group("${Stage}")), "RetentionInDays": ref("LogRetentionDays")},
        ),
        **_roles(model),
        "WorkerTaskDefinition": _when_fargate("AWS::ECS::TaskDefinition", _task_definition(model, arch)),
        "FargateLaunchPolicy": _when_fargate(
            "AWS::IAM::ManagedPolicy",
            {
                "Description": sub("pg-lifeboat ${Stage}: start the Fargate worker task"),
                "PolicyDocument": policies.fargate_launch_policy(
                    "WorkerCluster", "WorkerTaskDefinition", "WorkerTaskRole", "WorkerExecutionRole"
                ),
            },
        ),
        # The stack-wide dead-man's switch counts the task's successes too.
        f"Worker{SUCCESS['logical'][0]}Filter": _when_fargate(
            "AWS::Logs::MetricFilter",
            success_filter(ref("WorkerLogGroup"), SUCCESS["logical"][0], model.metrics_namespace),
        ),
        # A task that could not start or did not exit 0 (a crash, an OOM kill, a failed run) is reported on
        # the alarm topic: nothing else would notice a run that never started.
        "WorkerTaskStoppedRule": _stopped_task_rule(),
        # A topic policy replaces SNS's default one: CloudWatch alarms keep publishing, and the rule may.
        "AlarmTopicPolicy": _alarm_topic_policy(),
    }


def _roles(model: AppModel) -> Json:
    """The task's own role (what a backup and a restore need) and ECS's role to start it."""
    return {
        "WorkerTaskRole": _when_fargate(
            "AWS::IAM::Role",
            {
                "Description": sub("pg-lifeboat ${Stage}: the Fargate worker (logical backups and restores)"),
                "AssumeRolePolicyDocument": policies.task_assume_role_policy(),
                "Policies": [{"PolicyName": "lifeboat-worker", "PolicyDocument": policies.task_policy(model.stage)}],
                "ManagedPolicyArns": [ref("DatabaseAccessPolicy")],
            },
        ),
        "WorkerExecutionRole": _when_fargate(
            "AWS::IAM::Role",
            {
                "Description": sub("pg-lifeboat ${Stage}: ECS starts the Fargate worker (image pull, logs)"),
                "AssumeRolePolicyDocument": policies.task_assume_role_policy(),
                "Policies": [
                    {
                        "PolicyName": "ecs-task-execution",
                        "PolicyDocument": policies.task_execution_policy("WorkerLogGroup"),
                    }
                ],
            },
        ),
    }


def _task_definition(model: AppModel, arch: str) -> Json:
    """The worker's task definition: every run passes its command (chalicelib.fargate)."""
    # The functions' environment, the stack's table and queues, and metrics on: the CLI turns them off
    # by default, the task's EMF lines become BackupSucceeded/BackupFailed like the workers'.
    env: Json = {
        **model.environment,
        "LIFEBOAT_JOBS_TABLE": ref("JobsTable"),
        **queue_url_variables(),
        "POWERTOOLS_METRICS_DISABLED": "false",
    }
    return {
        "Family": sub(names.task_family("${Stage}")),
        "RequiresCompatibilities": ["FARGATE"],
        "NetworkMode": "awsvpc",
        "Cpu": ref("FargateCpu"),
        "Memory": ref("FargateMemory"),
        "RuntimePlatform": {"CpuArchitecture": FARGATE_ARCH[arch], "OperatingSystemFamily": "LINUX"},
        "EphemeralStorage": {"SizeInGiB": ref("FargateEphemeralStorageGiB")},
        "TaskRoleArn": getatt("WorkerTaskRole", "Arn"),
        "ExecutionRoleArn": getatt("WorkerExecutionRole", "Arn"),
        "ContainerDefinitions": [
            {
                "Name": names.TASK_CONTAINER,
                "Image": ref("FargateImageUri"),
                "Essential": True,
                "Environment": [{"Name": k, "Value": v} for k, v in sorted(env.items())],
                "LogConfiguration": {
                    "LogDriver": "awslogs",
                    "Options": {
                        "awslogs-group": ref("WorkerLogGroup"),
                        "awslogs-region": ref("AWS::Region"),
                        "awslogs-stream-prefix": "lifeboat",
                    },
                },
            }
        ],
        "Tags": STAGE_TAG,
    }


def _stopped_task_rule() -> Json:
    return _when_fargate(
        "AWS::Events::Rule",
        {
            "Description": sub("pg-lifeboat ${Stage}: a Fargate worker task failed to start or exited non-zero"),
            "State": "ENABLED",
            "EventPattern": {
                "source": ["aws.ecs"],
                "detail-type": ["ECS Task State Change"],
                "detail": {
                    "clusterArn": [getatt("WorkerCluster", "Arn")],
                    "lastStatus": ["STOPPED"],
                    "$or": [
                        {"stopCode": ["TaskFailedToStart"]},
                        {"containers": {"exitCode": [{"anything-but": 0}]}},
                    ],
                },
            },
            "Targets": [
                {
                    "Id": "AlarmTopic",
                    "Arn": ref("AlarmTopic"),
                    "InputTransformer": {
                        "InputPathsMap": {
                            "task": "$.detail.taskArn",
                            "stop": "$.detail.stopCode",
                            "reason": "$.detail.stoppedReason",
                            "exit": "$.detail.containers[0].exitCode",
                        },
                        "InputTemplate": sub(
                            '"pg-lifeboat ${Stage}: the Fargate worker task <task> stopped (<stop>: <reason>; exit'
                            f' code <exit>). Its output is in the log group {names.task_log_group("${Stage}")}."'
                        ),
                    },
                }
            ],
        },
    )


def _alarm_topic_policy() -> Json:
    return _when_fargate(
        "AWS::SNS::TopicPolicy",
        {
            "Topics": [ref("AlarmTopic")],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    _publish(
                        "CloudWatchAlarms",
                        "cloudwatch.amazonaws.com",
                        "StringEquals",
                        "aws:SourceAccount",
                        ref("AWS::AccountId"),
                    ),
                    _publish(
                        "WorkerTaskStopped",
                        "events.amazonaws.com",
                        "ArnEquals",
                        "aws:SourceArn",
                        getatt("WorkerTaskStoppedRule", "Arn"),
                    ),
                ],
            },
        },
    )


def _publish(sid: str, service: str, operator: str, key: str, value: Json) -> Json:
    """A topic policy statement: `service` may publish to the alarm topic under one condition."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sns:Publish",
        "Resource": ref("AlarmTopic"),
        "Condition": {operator: {key: value}},
    }


# --- WAL streams (chalicelib.pitr, README "Point-in-time recovery without an agent") ---------------------------
#
# One ECS service per streaming target, named at packaging (`stack.package --wal-target NAME`, WAL_TARGETS=): each
# runs `lifeboat wal-stream NAME` with the worker's image, desired count 1, restarted by ECS when it exits. One
# service per target rather than one task streaming every target in SSM: a receiver is one slot and one
# connection, and a target whose server is down restarts alone; each gets its own role (its own wal/ and base/
# prefixes only), its own log group and its own alarms with a target dimension, missing data breaching, which a
# list read from SSM at run time could not give. Adding a streaming target is a repackage, as the replication
# login and pg_hba.conf line it needs are a deliberate step too. The deployment never runs two tasks of a service
# (maximum 100 %, minimum 0 %): two receivers on one slot would fight over it.
WAL_SLOT_MESSAGES = (  # the receiver's error lines about its slot (chalicelib.pitr.receiver)
    "the replication slot*",
    "the server no longer has the WAL to resume from*",
)


def check_wal_targets(targets: list[str]) -> list[str]:
    """The `--wal-target` names, checked: target names (stack.template.app_model), each once, distinct logical ids."""
    seen: dict[str, str] = {}
    for target in targets:
        if not is_target_name(target) or len(target) > 40:
            raise ValueError(f"--wal-target {target!r}: not a target name (letters, digits, '-', '_'; at most 40)")
        logical = camel(target)
        if logical in seen:
            raise ValueError(f"--wal-target {seen[logical]!r} and {target!r}: given twice or the same logical id")
        seen[logical] = target
    return list(targets)


def wal_stream_resources(model: AppModel, arch: str, target: str) -> Json:
    """Log group, slot-trouble metric filter, roles, task definition and service of one target's WAL stream."""
    logical = f"WalStream{camel(target)}"
    pattern = " || ".join(f'($.message = "{m}")' for m in WAL_SLOT_MESSAGES)
    return {
        f"{logical}LogGroup": _when_fargate(
            "AWS::Logs::LogGroup",
            {"LogGroupName": sub(wal_log_group("${Stage}", target)), "RetentionInDays": ref("LogRetentionDays")},
        ),
        f"{logical}SlotFilter": _when_fargate(
            "AWS::Logs::MetricFilter",
            {
                "LogGroupName": ref(f"{logical}LogGroup"),
                "FilterPattern": f"{{ {pattern} }}",
                "MetricTransformations": [
                    {
                        "MetricNamespace": model.metrics_namespace,
                        "MetricName": WAL_SLOT_METRIC,
                        "MetricValue": "1",
                        "Unit": "Count",
                        "Dimensions": [{"Key": "target", "Value": "$.target"}],
                    }
                ],
            },
        ),
        f"{logical}TaskRole": _when_fargate(
            "AWS::IAM::Role",
            {
                "Description": sub(f"pg-lifeboat ${{Stage}}: the WAL stream of {target}"),
                "AssumeRolePolicyDocument": policies.task_assume_role_policy(),
                "Policies": [
                    {
                        "PolicyName": "lifeboat-wal-stream",
                        "PolicyDocument": policies.wal_stream_task_policy(model.stage, target),
                    }
                ],
                "ManagedPolicyArns": [ref("DatabaseAccessPolicy")],
            },
        ),
        f"{logical}ExecutionRole": _when_fargate(
            "AWS::IAM::Role",
            {
                "Description": sub(f"pg-lifeboat ${{Stage}}: ECS starts the WAL stream of {target}"),
                "AssumeRolePolicyDocument": policies.task_assume_role_policy(),
                "Policies": [
                    {
                        "PolicyName": "ecs-task-execution",
                        "PolicyDocument": policies.task_execution_policy(f"{logical}LogGroup"),
                    }
                ],
            },
        ),
        f"{logical}TaskDefinition": _when_fargate("AWS::ECS::TaskDefinition", _wal_task(model, arch, target)),
        f"{logical}Service": _when_fargate(
            "AWS::ECS::Service",
            {
                "ServiceName": f"wal-{target}",
                "Cluster": ref("WorkerCluster"),
                "TaskDefinition": ref(f"{logical}TaskDefinition"),
                "LaunchType": "FARGATE",
                "DesiredCount": 1,
                "DeploymentConfiguration": {"MaximumPercent": 100, "MinimumHealthyPercent": 0},
                "NetworkConfiguration": {
                    "AwsvpcConfiguration": {
                        "Subnets": ref("SubnetIds"),
                        "SecurityGroups": ref("SecurityGroupIds"),
                        "AssignPublicIp": ref("FargateAssignPublicIp"),
                    }
                },
                "PropagateTags": "SERVICE",
                "Tags": [*STAGE_TAG, {"Key": "lifeboat:target", "Value": target}],
            },
        ),
    }


def _wal_task(model: AppModel, arch: str, target: str) -> Json:
    """`lifeboat wal-stream TARGET` (SIGTERM: a last upload, then exit 0); metrics on, as the worker's."""
    env: Json = {**model.environment, "POWERTOOLS_METRICS_DISABLED": "false"}
    logical = f"WalStream{camel(target)}"
    return {
        "Family": sub(f"pg-lifeboat-${{Stage}}-wal-{target}"),
        "RequiresCompatibilities": ["FARGATE"],
        "NetworkMode": "awsvpc",
        "Cpu": ref("WalStreamCpu"),
        "Memory": ref("WalStreamMemory"),
        "RuntimePlatform": {"CpuArchitecture": FARGATE_ARCH[arch], "OperatingSystemFamily": "LINUX"},
        "TaskRoleArn": getatt(f"{logical}TaskRole", "Arn"),
        "ExecutionRoleArn": getatt(f"{logical}ExecutionRole", "Arn"),
        "ContainerDefinitions": [
            {
                "Name": names.TASK_CONTAINER,
                "Image": ref("FargateImageUri"),
                "Essential": True,
                "Command": ["wal-stream", target],
                "StopTimeout": 60,  # the last upload of the open segment after SIGTERM
                "Environment": [{"Name": k, "Value": v} for k, v in sorted(env.items())],
                "LogConfiguration": {
                    "LogDriver": "awslogs",
                    "Options": {
                        "awslogs-group": ref(f"{logical}LogGroup"),
                        "awslogs-region": ref("AWS::Region"),
                        "awslogs-stream-prefix": "wal",
                    },
                },
            }
        ],
        "Tags": STAGE_TAG,
    }
