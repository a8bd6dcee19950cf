"""Least-privilege IAM for each Lambda function, written to .chalice/policy-<stage>-<function>.json.

    .venv/bin/python -m stack.policies --check     # exit 1 if a committed file differs from ACCESS
    .venv/bin/python -m stack.policies --write     # rewrite the files from ACCESS

ACCESS below says what each function may do; the files are generated from it for every stage that
has an `iam_policy_file` in .chalice/config.json, so dev and prod cannot drift apart. Chalice gives
every function its own role (`autogen_policy: false`) and reads the file named by
`stages.<stage>.lambda_functions.<function>.iam_policy_file`; the stage's own `iam_policy_file` (logs
only) is what a function without an entry would get, and the template (stack/template) refuses to package
such a function.

Files hold what the stack names itself (stack/names.py), scoped by name. Grants on resources the
operator owns (database password secrets, RDS IAM users) depend on stack parameters, so the template
adds them as the DatabaseAccessPolicy managed policy (`database` below; see stack/template/functions.py).

`fargate:run` (the workers that hand long runs to the ECS Fargate task) is granted by the template too: it
names the stack's task definition, cluster and roles (fargate_launch_policy). The task's own role holds
TASK_ACCESS, a subset of the two workers' capabilities (task_policy).

Snapshot and restore capabilities scope by what chalicelib.physical and chalicelib.restore.snapshot do: RDS
snapshot ids start with `lifeboat-`, deletion and restores need the `lifeboat:managed=true` tag on the
snapshot, restores create resources only when tagged `lifeboat:restore-id`, and volumes are attached only to
instances the operator tagged `lifeboat:restore-target=true` (by the sweeper alone). Describe calls that IAM
cannot scope are the only actions on Resource "*" (capabilities.UNSCOPED_ACTIONS; the tests hold the files to
that). What each capability grants is stack/capabilities.py; restore drills' (`drills:*`) and the WAL stream task's
are stack/recovery_capabilities.py (drills delete only lifeboat-drill-* resources tagged lifeboat:drill).

Adding a function is one line in ACCESS, e.g. a scheduled job that reads the catalog:
    "catalog_report": ("config", "bucket:read"),
then `python -m stack.policies --write` and its `iam_policy_file` entry in .chalice/config.json
(`stages.<stage>.lambda_functions.catalog_report.iam_policy_file: policy-<stage>-catalog_report.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from stack import names
from stack.capabilities import logs_statement
from stack.recovery_capabilities import statements as capability_statements
from stack.recovery_capabilities import wal_stream_policy

REPO = Path(__file__).resolve().parent.parent
CHALICE_DIR = REPO / ".chalice"

ACCESS: dict[str, tuple[str, ...]] = {
    "dispatcher": ("config", "jobs", "send:backups", "bucket:list"),  # bucket:list: the backup-age gauge
    # Logical backups, and the start of physical ones (RDS/EBS snapshots, a backup label in the bucket).
    # A whole-server run queues one backup per database (send:backups).
    # A backup that will not fit the invocation is handed to the Fargate task (fargate:run, chalicelib.fargate).
    "backup_worker": (
        "config",
        "jobs",
        "bucket:write",
        "consume:backups",
        "send:backups",
        "database",
        "snapshots:read",
        "snapshots:take",
        "fargate:run",
        "manifests:sign",  # kms:GenerateMac on the signing key only: it signs, it never verifies nor administers
        # Restore drills (chalicelib.drills, message kind `drill`): a logical drill restores through the one restore
        # path (it checks the manifest's signature), a snapshot drill restores a managed snapshot into a temporary
        # lifeboat-drill-* instance and deletes it when it fails or is done (stack/recovery_capabilities.py).
        "manifests:verify",
        "snapshots:keys",
        "drills:restore",
        "drills:instances",
    ),
    # Logical restores (pg_restore), and the first AWS call of snapshot and point-in-time restores.
    "restore_worker": (
        "config",
        "jobs",
        "bucket:read",
        "consume:restores",
        "database",
        "snapshots:read",
        "restores:run",
        "snapshots:keys",
        "fargate:run",
        "manifests:verify",  # a restore checks the manifest's signature (kms:VerifyMac) before it creates anything
    ),
    # The REST API checks the target database exists, lists restore jobs (Query on an index), deduplicates requests with
    # Powertools Idempotency (which deletes its record when a request fails), and checks snapshot and
    # point-in-time restore requests (describe calls only: it starts, advances and attaches nothing).
    "api_handler": (
        "config",
        "jobs:api",
        "bucket:read",
        "send:backups",
        "send:restores",
        "database",
        "snapshots:read",
        "restores:check",
        "restores:plan",  # WAL recovery plans: base manifests' versions, volumes from an app-consistent snapshot set
        "manifests:verify",  # a logical restore request is refused at once when the manifest's signature fails
        "drills:read",  # GET /targets/{target}/drills reads each evidence document by version and verifies it
        "archive:list",  # GET /targets/{target}/backups: a streaming target's base manifests, at their first version
    ),
    # With drills configured the sweeper also finishes them (chalicelib.drills.sweep): their records (jobs:list: Get,
    # Put, a Query on the indexes), the checks of a restored copy and the scratch database's drop (database), the
    # evidence documents (drills:evidence), deleting what a drill left (drills:instances).
    "snapshot_sweeper": (
        "config",
        "snapshots:read",
        "snapshots:sweep",
        "snapshots:keys",
        "jobs:list",
        "database",
        "drills:evidence",  # includes drills:read: the overdue check verifies the finished drills' documents
        "drills:instances",
        "manifests:sign",  # a finished drill's evidence document is signed (kms:GenerateMac)
        "manifests:verify",  # and checked before a drill counts (kms:VerifyMac)
    ),
    # Daily: managed snapshots (and their backup labels), then every streaming target's bases and WAL
    # (chalicelib.pitr.prune_runs: archive:prune, plain deletes under wal/ and base/ only; manifests:verify, only
    # signed bases count).
    "snapshot_pruner": (
        "config",
        "bucket:prune",
        "snapshots:read",
        "snapshots:prune",
        "archive:prune",
        "manifests:verify",
    ),
    # Advances snapshot restores: an Aurora cluster's first instance, EBS volumes attached to tagged instances only.
    "restore_sweeper": ("config", "jobs:list", "snapshots:read", "restores:advance", "snapshots:keys"),
}
TEMPLATE_CAPABILITIES = frozenset({"database", "fargate:run"})  # granted by the template, not by the policy files


def function_policy(stage: str, function: str) -> dict[str, Any]:
    """The policy file of one function: its logs plus the name-scoped statements of ACCESS."""
    statements = [logs_statement(names.log_group(stage, function))]
    for capability in ACCESS[function]:
        if capability not in TEMPLATE_CAPABILITIES:
            statements.extend(capability_statements(stage, capability))
    sids = [s["Sid"] for s in statements]
    if len(sids) != len(set(sids)):  # IAM rejects a policy with duplicate Sids
        raise ValueError(
            f"{function}: overlapping capabilities {ACCESS[function]} (bucket:write includes"
            " bucket:read, jobs:api includes jobs)"
        )
    return {"Version": "2012-10-17", "Statement": statements}


def stage_default_policy(stage: str) -> dict[str, Any]:
    """The stage-wide file: logs only, for a function that has no policy of its own yet."""
    return {"Version": "2012-10-17", "Statement": [logs_statement(names.log_group(stage, "*"))]}


# The policy files allow a lock in either mode (capabilities.lock_statement): which one the stack chose is its
# ObjectLockMode parameter, known to the template only. Every role that locks (backup worker, snapshot sweeper, the
# Fargate and WAL stream tasks) also connects to PostgreSQL, so this Deny rides on the DatabaseAccessPolicy they all
# carry: no function can lock in COMPLIANCE mode a stack that chose GOVERNANCE (nor at all with NONE). A lock set by
# PutObject's own x-amz-object-lock-* headers is authorized as s3:PutObjectRetention too.
LOCK_IN_THE_STACKS_MODE_ONLY = {
    "Sid": "LockOnlyInTheStacksMode",
    "Effect": "Deny",
    "Action": "s3:PutObjectRetention",
    "Resource": "arn:aws:s3:::*/*",
    "Condition": {"StringNotEquals": {"s3:object-lock-mode": {"Ref": "ObjectLockMode"}}},
}


# The database password secrets: those whose names start with the stack's SecretsPrefix parameter.
DATABASE_PASSWORDS = {
    "Sid": "DatabasePasswords",
    "Effect": "Allow",
    "Action": "secretsmanager:GetSecretValue",
    "Resource": {
        "Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${SecretsPrefix}*"
    },
}


def database_policy() -> dict[str, Any]:
    """Template-side grants (CloudFormation intrinsics): parameters name what the operator owns; and the lock mode
    (LOCK_IN_THE_STACKS_MODE_ONLY)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            DATABASE_PASSWORDS,
            LOCK_IN_THE_STACKS_MODE_ONLY,
            {
                "Fn::If": [
                    "HasRdsIamUsers",
                    {
                        "Sid": "RdsIamLogin",
                        "Effect": "Allow",
                        "Action": "rds-db:connect",
                        "Resource": {"Ref": "RdsDbUserArns"},
                    },
                    {"Ref": "AWS::NoValue"},
                ]
            },
        ],
    }


# --- the long-running worker (chalicelib.fargate): its task role, execution role, and who may launch it ------

# The ECS task runs `lifeboat backup` and `lifeboat run-restore` for the backup and restore workers:
# logical backups (whole-server runs stay on Lambda, so it queues nothing) and logical restores.
# The task runs backups (signs manifests) and restores (checks them).
TASK_ACCESS: tuple[str, ...] = ("config", "jobs", "bucket:write", "database", "manifests:sign", "manifests:verify")
ECS_TASKS_PRINCIPAL = "ecs-tasks.amazonaws.com"


def task_policy(stage: str) -> dict[str, Any]:
    """The task role's own policy: the name-scoped statements of TASK_ACCESS (the template attaches the
    DatabaseAccessPolicy for `database`), a subset of what the two workers hold."""
    statements = [
        st
        for capability in TASK_ACCESS
        if capability not in TEMPLATE_CAPABILITIES
        for st in capability_statements(stage, capability)
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def task_assume_role_policy() -> dict[str, Any]:
    """ECS tasks of this account only (confused-deputy guard)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ECS_TASKS_PRINCIPAL},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
            }
        ],
    }


def task_execution_policy(log_group: str) -> dict[str, Any]:
    """What ECS itself needs to start the container: pull the image from an ECR repository of the stack's
    account and region, and write the container's output to the task's log group (logical ids given)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            # ecr:GetAuthorizationToken has no resource to scope to.
            {"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
            {
                "Sid": "PullImage",
                "Effect": "Allow",
                "Action": ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
                "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"},
            },
            {
                "Sid": "TaskLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": {
                    "Fn::Sub": f"arn:${{AWS::Partition}}:logs:${{AWS::Region}}:${{AWS::AccountId}}:log-group:"
                    f"${{{log_group}}}:*"
                },
            },
        ],
    }


def fargate_launch_policy(cluster: str, task_definition: str, task_role: str, execution_role: str) -> dict[str, Any]:
    """Template-side grant of `fargate:run` (logical ids given): run exactly the stack's task definition in
    the stack's cluster, tag the task while starting it, and pass exactly its two roles to ECS tasks."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RunWorkerTask",
                "Effect": "Allow",
                "Action": "ecs:RunTask",
                "Resource": {"Ref": task_definition},
                "Condition": {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": [cluster, "Arn"]}}},
            },
            {
                "Sid": "TagWorkerTask",
                "Effect": "Allow",
                "Action": "ecs:TagResource",
                "Resource": {
                    "Fn::Sub": f"arn:${{AWS::Partition}}:ecs:${{AWS::Region}}:${{AWS::AccountId}}:task/${{{cluster}}}/*"
                },
                "Condition": {"StringEquals": {"ecs:CreateAction": "RunTask"}},
            },
            {
                "Sid": "PassWorkerRoles",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": [{"Fn::GetAtt": [task_role, "Arn"]}, {"Fn::GetAtt": [execution_role, "Arn"]}],
                "Condition": {"StringEquals": {"iam:PassedToService": ECS_TASKS_PRINCIPAL}},
            },
        ],
    }


def wal_stream_task_policy(stage: str, target: str) -> dict[str, Any]:
    """The role of `lifeboat wal-stream TARGET`'s task (one per streaming target, stack/template/fargate.py): its own
    prefixes only; the template attaches the DatabaseAccessPolicy for the replication login's secret."""
    return wal_stream_policy(stage, target)


def needs(function: str, capability: str) -> bool:
    return capability in ACCESS.get(function, ())


def policy_stages(config: dict[str, Any]) -> list[str]:
    """Stages deployed with hand-off IAM: those naming an iam_policy_file."""
    return [name for name, stage in config.get("stages", {}).items() if stage.get("iam_policy_file")]


def expected_file(function: str, stage: str) -> str:
    return f"policy-{stage}-{function}.json"


def wiring_problems(config: dict[str, Any], stage: str, functions: list[str] | None = None) -> list[str]:
    """What .chalice/config.json lacks for the functions of ACCESS (or the ones given) in a stage."""
    problems = []
    stage_cfg = config.get("stages", {}).get(stage, {})
    if not stage_cfg.get("iam_policy_file"):
        problems.append(f"stages.{stage}.iam_policy_file is not set")
    for function in functions if functions is not None else sorted(ACCESS):
        if function not in ACCESS:
            problems.append(
                f"function {function!r} has no entry in stack/policies.py ACCESS: say what it may"
                " do there, run `python -m stack.policies --write` and wire its file in"
                " .chalice/config.json"
            )
            continue
        wired = stage_cfg.get("lambda_functions", {}).get(function, {}).get("iam_policy_file")
        if wired != expected_file(function, stage):
            problems.append(
                f"stages.{stage}.lambda_functions.{function}.iam_policy_file should be"
                f" {expected_file(function, stage)!r} (is {wired!r})"
            )
    return problems


def rendered(config: dict[str, Any]) -> dict[Path, str]:
    """Every policy file, as text, for every stage that uses policy files."""
    files = {}
    for stage in policy_stages(config):
        files[CHALICE_DIR / config["stages"][stage]["iam_policy_file"]] = _dump(stage_default_policy(stage))
        for function in sorted(ACCESS):
            files[CHALICE_DIR / expected_file(function, stage)] = _dump(function_policy(stage, function))
    return files


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def load_chalice_config() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CHALICE_DIR / "config.json").read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the policy files")
    mode.add_argument("--check", action="store_true", help="fail if a policy file is missing or stale")
    args = parser.parse_args(argv)
    config = load_chalice_config()
    problems = [p for stage in policy_stages(config) for p in wiring_problems(config, stage)]
    stale = []
    for path, text in rendered(config).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.write:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
        else:
            stale.append(str(path.relative_to(REPO)))
    if stale:
        problems.append(f"stale or missing (run `python -m stack.policies --write`): {', '.join(stale)}")
    for problem in problems:
        print(f"policies: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
