"""How the stack names what it creates: one place, shared by the IAM policy files and the template.

The policy files in .chalice/ are static JSON (Chalice reads them as they are), so they can only scope
by name. Every resource a function touches is therefore named after the stage: the policy for stage
`dev` reaches `pg-lifeboat-dev-*` and nothing of `prod`.
"""

from __future__ import annotations

APP = "pg-lifeboat"
QUEUE_KINDS = ("backups", "restores")  # every queue has a dead-letter queue named <queue>-dlq
# The backup queue is FIFO: message groups bound the concurrent dumps per server (chalicelib.scheduling.dispatch).
FIFO_KINDS = ("backups",)


def function_name(stage: str, function: str) -> str:
    """The Lambda function name, as `chalice deploy` names it (the API handler has no suffix)."""
    return f"{APP}-{stage}" if function == "api_handler" else f"{APP}-{stage}-{function}"


def log_group(stage: str, function: str) -> str:
    return f"/aws/lambda/{function_name(stage, function)}"


def bucket_prefix(stage: str) -> str:
    """Backup buckets are `pg-lifeboat-<stage>-<account>-<region>`; policies match this prefix."""
    return f"{APP}-{stage}-"


def signing_key_alias(stage: str) -> str:
    """The alias of the KMS HMAC key that signs manifests: IAM grants its use by this alias (kms:ResourceAliases)."""
    return f"alias/pg-lifeboat-{stage}-manifests"


def jobs_table(stage: str) -> str:
    return f"{APP}-{stage}-jobs"


def queue(stage: str, kind: str) -> str:
    if kind not in QUEUE_KINDS:
        raise ValueError(f"unknown queue kind {kind!r} (known: {', '.join(QUEUE_KINDS)})")
    return f"{APP}-{stage}-{kind}" + (".fifo" if kind in FIFO_KINDS else "")


def dead_letter_queue(stage: str, kind: str) -> str:
    """A FIFO queue's dead-letter queue must be FIFO too."""
    return f"{APP}-{stage}-{kind}-dlq" + (".fifo" if kind in FIFO_KINDS else "")


# RDS snapshot identifiers chalicelib.physical.snapshots.snapshot_identifier gives (lifeboat-<target>-<slot>), and
# the tag it puts on every snapshot it creates: deletion is allowed only for snapshots carrying it.
SNAPSHOT_ID_PREFIX = "lifeboat-"
MANAGED_TAG = ("lifeboat:managed", "true")
RESTORE_TAG = "lifeboat:restore-id"  # on everything a snapshot or point-in-time restore creates


def config_path(stage: str) -> str:
    """SSM parameters: <path>/settings and <path>/targets/<name> (LIFEBOAT_CONFIG=ssm:<path>)."""
    return f"/{APP}/{stage}"


def secrets_prefix(stage: str) -> str:
    """Default name prefix of the Secrets Manager secrets holding database passwords."""
    return f"{APP}/{stage}/"


# The long-running worker (chalicelib.fargate, the Dockerfile's image): one ECS cluster and task definition
# per stage, created when the stack is given FargateImageUri (and subnets).
TASK_CONTAINER = "lifeboat"  # chalicelib.fargate.DEFAULT_CONTAINER


def ecs_cluster(stage: str) -> str:
    return f"{APP}-{stage}"


def task_family(stage: str) -> str:
    return f"{APP}-{stage}-worker"


def task_log_group(stage: str) -> str:
    return f"/ecs/{task_family(stage)}"
