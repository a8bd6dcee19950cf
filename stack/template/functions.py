"""Patches of the functions Chalice generates, their log groups, the PostgreSQL client layer and the
database access policy.

Chalice merges the template as a deep dict merge (chalice/package.py TemplateDeepMerger: dicts merge key
by key, anything else, lists included, replaces), so a patch names only the keys it sets: Layers,
VpcConfig, FunctionName, extra environment variables, DependsOn, and the roles' ManagedPolicyArns.
(Chalice's own values are never intrinsic functions, so no dict-valued intrinsic is ever merged into
another.)

VPC: subnets and security groups are stack parameters injected here as VpcConfig, not
`subnet_ids`/`security_group_ids` in .chalice/config.json: they are per-account deployment inputs,
the same packaged template deploys anywhere, and leaving them empty deploys outside a VPC.

Function names are set to what `chalice deploy` uses (pg-lifeboat-<stage>-<function>), so the policy
files can scope the log groups, which the stack creates (with retention) before the functions.
"""

from __future__ import annotations

from stack import names, policies
from stack.template.app_model import AppModel, Function
from stack.template.intrinsics import Json, if_, ref, sub
from stack.template.operators import operator_resources
from stack.template.queues import queue_name_variables, queue_url_variables

ARCHES = ("x86_64", "arm64")
LAYER_RUNTIME = "python3.12"


def layer_zip_name(arch: str) -> str:
    return f"pg-clients-{arch}.zip"


def function_resources(model: AppModel, arch: str | None) -> Json:
    """Log groups for every function; with an arch, the layer and the patches of Chalice's resources."""
    resources: Json = {}
    for fn in model.functions:
        # Chalice creates the same logical id when log_retention_in_days is set: the merge then only
        # pins its name and retention.
        resources[f"{fn.logical_id}LogGroup"] = {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {
                "LogGroupName": sub(names.log_group("${Stage}", fn.name)),
                "RetentionInDays": ref("LogRetentionDays"),
            },
        }
        if arch is None:
            continue
        # The log group first: the function must not create its own (unretained, unfiltered) one. The
        # queue a function consumes, which Chalice's event source names without a reference, comes first
        # too: its environment refers to every queue.
        resources[fn.logical_id] = {"Properties": _function_patch(fn), "DependsOn": [f"{fn.logical_id}LogGroup"]}
        if fn.manage_role:
            resources[fn.role_id] = {"Properties": {"ManagedPolicyArns": _managed_policies(fn)}}
    if arch is not None:
        resources["PgClientsLayer"] = _layer(arch)
        if any(fn.name == "api_handler" for fn in model.functions):  # Chalice's RestAPI exists
            resources.update(operator_resources(model.stage))
    connects = any(fn.manage_role and policies.needs(fn.name, "database") for fn in model.functions)
    if connects or arch is None:
        resources["DatabaseAccessPolicy"] = {
            "Type": "AWS::IAM::ManagedPolicy",
            "Properties": {
                "Description": sub("pg-lifeboat ${Stage}: database passwords and IAM database logins"),
                "PolicyDocument": policies.database_policy(),
            },
        }
    return resources


def _function_patch(fn: Function) -> Json:
    env = {"LIFEBOAT_JOBS_TABLE": ref("JobsTable"), **queue_url_variables(), **queue_name_variables()}
    return {
        "FunctionName": sub(names.function_name("${Stage}", fn.name)),
        "Layers": [*fn.layers, ref("PgClientsLayer")],
        "VpcConfig": if_("HasVpc", {"SubnetIds": ref("SubnetIds"), "SecurityGroupIds": ref("SecurityGroupIds")}),
        "Environment": {
            "Variables": {**env, **(_launcher_environment() if policies.needs(fn.name, "fargate:run") else {})}
        },
    }


def _launcher_environment() -> Json:
    """The workers that hand long runs to the Fargate task (fargate:run) learn where it is; without the
    task (HasFargate false) the variables are absent and every run stays on Lambda."""
    return {
        "LIFEBOAT_FARGATE_CLUSTER": if_("HasFargate", ref("WorkerCluster")),
        "LIFEBOAT_FARGATE_TASK_DEFINITION": if_("HasFargate", ref("WorkerTaskDefinition")),
        "LIFEBOAT_FARGATE_SUBNETS": if_("HasFargate", {"Fn::Join": [",", ref("SubnetIds")]}),
        "LIFEBOAT_FARGATE_SECURITY_GROUPS": if_("HasFargate", {"Fn::Join": [",", ref("SecurityGroupIds")]}),
        "LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP": if_("HasFargate", ref("FargateAssignPublicIp")),
        "LIFEBOAT_FARGATE_CONTAINER": names.TASK_CONTAINER,
    }


def _managed_policies(fn: Function) -> list[Json]:
    """The role's managed policies: VPC access in a VPC, database access, launching the Fargate task."""
    managed = [if_("HasVpc", sub("arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"))]
    if policies.needs(fn.name, "database"):
        managed.insert(0, ref("DatabaseAccessPolicy"))
    if policies.needs(fn.name, "fargate:run"):
        managed.append(if_("HasFargate", ref("FargateLaunchPolicy")))
    return managed


def _layer(arch: str) -> Json:
    return {
        "Type": "AWS::Serverless::LayerVersion",
        "Properties": {
            "LayerName": sub(f"pg-lifeboat-${{Stage}}-pg-clients-{arch.replace('_', '-')}"),
            "Description": "PostgreSQL client programs (pg_dump, pg_restore, psql) and libpq, under /opt/pg",
            # A path next to the packaged template: `aws cloudformation package` uploads it.
            "ContentUri": f"./{layer_zip_name(arch)}",
            "CompatibleRuntimes": [LAYER_RUNTIME],
            "CompatibleArchitectures": [arch],
            "RetentionPolicy": "Delete",
        },
    }
