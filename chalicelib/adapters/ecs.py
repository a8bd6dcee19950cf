"""ECS: the one place that starts a task (chalicelib.fargate decides what runs, and where).

A refusal is a FargateError saying why: a ClientError (a missing cluster or task definition, a role that
may not be passed), a transport failure, or a 200 answer whose `failures` explain why no task was placed
(no capacity). Any of them leaves the SQS message to be retried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.aws_errors import error_code
from chalicelib.errors import FargateError

if TYPE_CHECKING:
    from types_boto3_ecs import ECSClient


class EcsTasks:
    def __init__(self, client: ECSClient) -> None:
        self.client = client

    def run_fargate_task(
        self,
        *,
        cluster: str,
        task_definition: str,
        subnets: Sequence[str],
        security_groups: Sequence[str],
        assign_public_ip: bool,
        container: str,
        command: Sequence[str],
        started_by: str,
        tags: Mapping[str, str],
        what: str,
    ) -> str:
        """Start one Fargate task of `task_definition` with `command` overriding `container`'s; its ARN.
        `what` names the run in error messages ("backup shop")."""
        try:
            resp = self.client.run_task(
                cluster=cluster,
                taskDefinition=task_definition,
                launchType="FARGATE",
                count=1,
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": list(subnets),
                        "securityGroups": list(security_groups),
                        "assignPublicIp": "ENABLED" if assign_public_ip else "DISABLED",
                    }
                },
                overrides={"containerOverrides": [{"name": container, "command": list(command)}]},
                startedBy=started_by,
                enableECSManagedTags=True,
                tags=[{"key": k, "value": v} for k, v in tags.items()],
            )
        except ClientError as exc:
            message = exc.response.get("Error", {}).get("Message", str(exc))
            raise FargateError(
                f"ECS refused to start the {what} task in cluster {cluster}"
                f" ({error_code(exc) or 'error'}: {message}): check the task definition, the"
                " subnets and security groups, and that the launching role may pass the task's"
                " roles"
            ) from exc
        except BotoCoreError as exc:
            raise FargateError(f"cannot reach ECS to start the {what} task: {exc}") from exc
        failures = resp.get("failures") or []
        tasks = resp.get("tasks") or []
        if failures or not tasks or "taskArn" not in tasks[0]:
            reasons = (
                "; ".join(
                    f"{f.get('reason', 'unknown')}" + (f" ({f['detail']})" if f.get("detail") else "") for f in failures
                )
                or "ECS returned neither a task nor a reason"
            )
            raise FargateError(
                f"Fargate did not start the {what} task in cluster {cluster}: {reasons}."
                " Capacity shortages pass: the message is retried"
            )
        return tasks[0]["taskArn"]
