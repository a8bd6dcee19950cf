"""The operators' access: two managed policies the stack attaches to nothing; an operator's role, user or group gets
them.

- OperatorApiPolicy: execute-api:Invoke on every route of the stage (`OperatorApiPolicyArn` output; README "Calling
  the API"). The routes come from the OpenAPI document (chalicelib.openapi), which a test holds to app.py's routes,
  so a new route is in the policy without editing the stack. For one target only, copy the document and put the
  target's name where the path has `*`.
- OperatorRecoveryPolicy: what `lifeboat recover`, `wal-fetch` (PostgreSQL's restore_command on the recovering
  machine), `wal-window` and `wal-prune` call (stack.recovery_capabilities.operator_recovery_statements), plus the
  stack's lock-mode Deny (policies.LOCK_IN_THE_STACKS_MODE_ONLY: wal-prune's lock pass never locks in another mode).
  The same reads serve the WAL part of `lifeboat list` and `status` (base manifests at their first version, the WAL
  listing, the gap records). `wal-status` also logs in with the replication login: ReplicationPasswords, GetSecretValue
  on the secrets under the stack's SecretsPrefix (wal.replication_password_secret, else the connection's
  password_secret), as DatabaseAccessPolicy grants the functions. A machine that only recovers needs the same minus
  PruneWalAndBases, LockWalAndBases and ReplicationPasswords.
"""

from __future__ import annotations

import re

from stack import policies
from stack.recovery_capabilities import operator_recovery_statements
from stack.template.intrinsics import Json, sub

DEFAULT_API_STAGE = "api"  # Chalice's default api_gateway_stage


def api_stage(stage: str) -> str:
    """The API Gateway stage (the URL's first path segment) of a Chalice stage."""
    chalice_stage = policies.load_chalice_config().get("stages", {}).get(stage, {})
    return str(chalice_stage.get("api_gateway_stage", DEFAULT_API_STAGE))


def route_resources(base_path: str) -> list[str]:
    """`<base path>/<METHOD>/<path>` for every operation, path parameters as `*` (execute-api's ARN form)."""
    from chalicelib.openapi import build  # chalicelib only when a template is built (as app_model.py does)

    found = []
    for path, operations in build()["paths"].items():
        for method in operations:
            found.append(f"{base_path}/{method.upper()}{re.sub(r'\{[^}]+\}', '*', path)}")
    return sorted(found)


def operator_policy_document(stage: str) -> Json:
    arn = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${RestAPI}/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CallTheBackupApi",
                "Effect": "Allow",
                "Action": "execute-api:Invoke",
                "Resource": [sub(arn + route) for route in route_resources(api_stage(stage))],
            }
        ],
    }


def operator_recovery_document(stage: str) -> Json:
    secrets = {**policies.DATABASE_PASSWORDS, "Sid": "ReplicationPasswords"}  # wal-status's replication login
    statements = [*operator_recovery_statements(stage), secrets, policies.LOCK_IN_THE_STACKS_MODE_ONLY]
    return {"Version": "2012-10-17", "Statement": statements}


def operator_resources(stage: str) -> Json:
    return {
        "OperatorApiPolicy": {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "Description": sub("pg-lifeboat ${Stage}: call every route of the backup and restore API (SigV4)"),
                "PolicyDocument": operator_policy_document(stage),
            },
        },
        "OperatorRecoveryPolicy": {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "Description": sub(
                    "pg-lifeboat ${Stage}: lifeboat recover, wal-fetch, wal-window, wal-status and wal-prune (WAL and"
                    " base backups)"
                ),
                "PolicyDocument": operator_recovery_document(stage),
            },
        },
    }
